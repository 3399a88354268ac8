"""What a comparison grid of ``compare_pretraining.py`` is made of: the constants of the
experiment (paths, arms, models, rMD17 molecules, the paired comparisons), the ``--dataset``
parser and ``DatasetPlan``, shared by every module of experiments/ (a leaf: it imports none of them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
DEFAULT_DATA_ROOT = REPO.parent / "shared" / "data"
STRATEGIES = ("scratch", "denoise", "mask")
#: Arms of --dataset water-dft-transfer only (experiments/water_transfer.py).
TRANSFER_STRATEGIES = ("supervised", "mask_supervised", "mask_dft")
#: Opt-in arms (issue 12), never in a default list: ``denoise_1A`` (denoising with σ = 1.0 Å, the
#: reference code's value), ``mask_denoise`` (a σ = 0.2 Å denoising stage started from the mask
#: checkpoint, in sequence) on any dataset; ``supervised_2x`` (supervised pretraining with twice
#: --pretrain-epochs, the equal-compute control of mask_supervised) with water-dft-transfer only;
#: ``mask_reference`` (the reference code's rMD17 masking, beside ``mask``'s --mask-variant) with rMD17 only.
#: ``mask_position`` (position masking: any element, element token, displacement targets) and ``joint``
#: (position masking + denoising in one step; issue 33) on any dataset.
EXTRA_STRATEGIES = ("denoise_1A", "mask_denoise", "supervised_2x", "mask_reference", "mask_position", "joint")
#: Arms that need --dataset water-dft-transfer (the TIP3P labels or the DFT candidates).
TRANSFER_ONLY_STRATEGIES = TRANSFER_STRATEGIES + ("supervised_2x",)
#: The default arms of water-dft-transfer (the original six).
DEFAULT_TRANSFER_STRATEGIES = STRATEGIES + TRANSFER_STRATEGIES
#: Every arm, in table / run order (the new arms last, so existing grids keep their order).
ALL_STRATEGIES = STRATEGIES + TRANSFER_STRATEGIES + EXTRA_STRATEGIES
MODELS = ("egnn", "gns", "painn", "tensornet")
RMD17_MOLECULES = ("aspirin", "azobenzene", "benzene", "ethanol", "malonaldehyde", "naphthalene",
                   "paracetamol", "salicylic", "toluene", "uracil")

#: (arm, reference) pairs compared by seed besides every arm against scratch (``vs_<reference>``)
PAIRED_ARMS = (("mask", "denoise"), ("mask", "denoise_1A"), ("denoise_1A", "denoise"),
               ("mask_denoise", "denoise"), ("mask_denoise", "mask"), ("mask_reference", "mask"),
               ("mask_reference", "denoise"), ("mask_position", "denoise"), ("joint", "denoise"),
               ("mask_position", "mask"), ("joint", "mask"))


@dataclass
class DatasetPlan:
    """Where the frames come from and how they are split (indices into ``labelled``)."""

    name: str
    kind: str  # "rmd17" | "water"
    labelled: Path  # file/folder with labelled frames (pool, val, and test unless test_path)
    test_path: Optional[Path]  # separate test file (rMD17), else test = ``test_idx`` of labelled
    n_frames: int
    pool_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray
    configs: Dict[str, Path]  # strategy stage -> repo config used as the base
    pretrain_file: Path = Path()
    mask_objective: List[str] = field(default_factory=list)
    n_test: int = 0
    # pretraining file layout when it does not come from pool + val of ``labelled`` (tip3p-traj)
    pretrain_n_train: Optional[int] = None
    pretrain_n_val: Optional[int] = None
    sources: Dict[str, Any] = field(default_factory=dict)
    # pretraining data sets by name ("unlabelled", "labelled", "dft": water-dft-transfer), each
    # {file, n_train, n_val, split}; empty: the one unlabelled set above (pretrain_file)
    pretrain_sets: Dict[str, Dict[str, Any]] = field(default_factory=dict)


def parse_dataset(spec: str) -> Tuple[str, str]:
    """``water-dft`` | ``tip3p`` | ``tip3p-traj`` | ``water-dft-transfer`` | ``rmd17:<molecule>`` -> (kind, name)."""
    if spec in ("water-dft", "tip3p"):
        return "water", spec
    if spec == "water-dft-transfer":
        return "water-dft-transfer", spec
    if spec == "tip3p-traj":
        return "water-traj", spec
    if spec.startswith("rmd17:"):
        mol = spec.split(":", 1)[1]
        if mol not in RMD17_MOLECULES:
            raise ValueError(f"--dataset {spec}: unknown rMD17 molecule {mol!r} (one of {', '.join(RMD17_MOLECULES)})")
        return "rmd17", spec
    raise ValueError(f"--dataset {spec!r}: expected water-dft, tip3p, tip3p-traj, water-dft-transfer or rmd17:<molecule>")
