#!/usr/bin/env python
"""Scratch vs denoising pretraining vs masked pretraining, with identical fine-tuning budgets.

    python experiments/compare_pretraining.py                      # default: rMD17 aspirin, PaiNN, 50 labels, 3 seeds
    python experiments/compare_pretraining.py --dataset rmd17:ethanol --labels 25 50 100
    python experiments/compare_pretraining.py --dataset water-dft --model egnn --seeds 0 1
    python experiments/compare_pretraining.py --dataset tip3p-traj --model egnn --layers 3 --pretrain-seeds 0 \
        --finetune-steps 400 --patience 20 --labels 16 64     # separate trajectories (water_sources.py)
    python experiments/compare_pretraining.py --dataset water-dft-transfer --model egnn --layers 3 \
        --pool-trajectories 4 --pool-frames 500 --labels 8 32 128   # TIP3P pool -> DFT labels (water_transfer.py)

For one dataset, one model and several seeds, every seed runs:

* ``pretrain_mask`` and ``pretrain_denoise``: self-supervised pretraining on the *unlabelled*
  configurations of the training pool (the pool's frames are written to
  ``OUT/data/pretrain_unlabelled.npz`` without energies and forces, so no label can reach the
  pretraining stage; the pretraining transforms drop labels as well);
* for every ``N`` in ``--labels``: fine-tuning on ``N`` labelled frames drawn from the same pool
  (nested subsets: the first ``N`` of a seed-dependent permutation), (a) from scratch, (b) from
  the denoising checkpoint, (c) from the masking checkpoint. The three fine-tuning runs share one
  config (epochs, batch size, learning-rate schedule, loss weights, seed, splits); only
  ``init.checkpoint`` differs (and the architecture, which comes from the checkpoint, is the
  same by construction).

Validation frames (fixed over seeds) select ``best.pt``; test errors are measured on frames that
are neither in the pool nor in the validation set (rMD17: the separate ``test_01`` file).

Everything goes through maskpot's public training API: each run is
``load_config(<repo config>, overrides)`` + ``run_training(cfg)``, i.e. exactly
``maskpot-train <repo config> --set ...`` (the equivalent command lines are written to
``OUT/commands.sh``; each run folder holds its resolved ``config.yaml``).

Outputs under ``--out``: ``data/`` (unlabelled pretraining file, generated TIP3P data, test
subset), ``splits/``, ``runs/<run>/`` (maskpot run folders), ``configs/<run>.yaml``,
``commands.sh``, ``summary.json``, ``convergence.png`` (validation force MAE per epoch, mean ±
std over seeds, one panel per label count), ``accuracy_vs_labels.png``; a markdown table is
appended to ``experiments/RESULTS.md`` (``--results-md``).

``--dataset rmd17:<molecule> --pretrain-molecules all`` (or a list of molecules) pretrains on
several rMD17 molecules' train_01 frames (labels removed; never the target's fine-tuning validation
frames nor any test_01 frame), with the pretext validation set held out of that pool
(``--pretrain-val-per-molecule``) and an optional cap ``--pretrain-frames-per-molecule``; the model's
species are every element of the pool, for scratch as well (one architecture). ``--pretrain-only``
runs the pretraining stages alone (pretext score vs the geometry-only rule, per molecule too).

``--dataset water-dft-transfer`` (experiments/water_transfer.py) pretrains on independent TIP3P
trajectories in the DFT box and fine-tunes on the DFT frames, with three more arms: ``supervised``
(TIP3P energies/forces), ``mask_supervised`` (supervised pretraining started from the mask
checkpoint) and ``mask_dft`` (masking on the unlabelled DFT fine-tuning candidates).

Resumable: a run whose ``test_metrics.json`` exists is skipped, an interrupted one (``last.pt``
without ``test_metrics.json``) is resumed exactly; a run folder whose stored config differs from
the requested one is an error (use another ``--out``).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import logging
import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
DEFAULT_DATA_ROOT = REPO.parent / "shared" / "data"
STRATEGIES = ("scratch", "denoise", "mask")
#: Arms of --dataset water-dft-transfer only (experiments/water_transfer.py).
TRANSFER_STRATEGIES = ("supervised", "mask_supervised", "mask_dft")
ALL_STRATEGIES = STRATEGIES + TRANSFER_STRATEGIES
MODELS = ("egnn", "gns", "painn", "tensornet")
RMD17_MOLECULES = ("aspirin", "azobenzene", "benzene", "ethanol", "malonaldehyde", "naphthalene",
                   "paracetamol", "salicylic", "toluene", "uracil")
FORCE_COL = "val_force_mae_meV_per_A"

log = logging.getLogger("compare_pretraining")


# ------------------------------------------------------------------------------------------
# datasets
# ------------------------------------------------------------------------------------------
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


def _generate_tip3p(out: Path, args: argparse.Namespace) -> Path:
    """A small flexible-TIP3P trajectory (maskpot's OpenMM generator), cached in ``out/data``."""
    from maskpot.data.tip3p import generate_tip3p, save_tip3p_npz

    path = out / "data" / "tip3p.npz"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    n_frames = args.tip3p_frames
    log.info("generating TIP3P data: %d molecules, %.2f Å box, %d frames", args.tip3p_molecules, args.tip3p_box, n_frames)
    data = generate_tip3p(n_molecules=args.tip3p_molecules, box=args.tip3p_box, n_frames=n_frames, every=50,
                          seed=args.data_seed, equilibration_steps=2000, platform="CPU", threads=1,
                          deterministic=True, progress=False)
    save_tip3p_npz(path, data)
    return path


def plan_dataset(args: argparse.Namespace, out: Path) -> DatasetPlan:
    """Resolve the dataset, write the test subset / TIP3P file if needed, and split the frames.

    Split rule (deterministic in ``--data-seed``): a permutation of the labelled frames gives
    test (water datasets only), then validation, then the pool (capped at ``--pool``).
    """
    from maskpot.data.io import read_dataset, write_npz

    resolve_defaults(args)
    kind, name = parse_dataset(args.dataset)
    root = Path(args.data_root)
    rng = np.random.default_rng(args.data_seed)
    if kind == "water-traj":
        return _plan_water_traj(args, out, name)
    if kind == "rmd17":
        mol = name.split(":", 1)[1]
        labelled = root / "rmd17" / f"rmd17_{mol}_train_01.npz"
        test_path: Optional[Path] = root / "rmd17" / f"rmd17_{mol}_test_01.npz"
        configs = {"scratch": CONFIGS / "rmd17_scratch.yaml", "finetune": CONFIGS / "rmd17_finetune.yaml",
                   "mask": CONFIGS / "rmd17_pretrain_mask.yaml", "denoise": CONFIGS / "water_pretrain_denoise.yaml"}
        for p in (labelled, test_path):
            if not p.is_file():
                raise FileNotFoundError(f"{p}: rMD17 file not found (--data-root {root})")
        n = len(read_dataset(labelled))
        perm = rng.permutation(n)
        test_idx = np.zeros(0, dtype=np.int64)
        val_idx, rest = perm[: args.val], perm[args.val:]
        n_test_total = len(read_dataset(test_path))
        if args.test_frames and args.test_frames < n_test_total:
            # a fixed random subset of test_01 (same for every run), to shorten evaluation
            sub = out / "data" / f"test_subset_{args.test_frames}.npz"
            if not sub.is_file():
                test_all = read_dataset(test_path)
                pick = np.sort(np.random.default_rng([args.data_seed, 1]).permutation(n_test_total)[: args.test_frames])
                sub.parent.mkdir(parents=True, exist_ok=True)
                write_npz(sub, [test_all[int(i)] for i in pick], metadata={"source": str(test_path), "indices": pick.tolist()})
            test_path = sub
            n_test = args.test_frames
        else:
            n_test = n_test_total
    else:
        if name in ("water-dft", "water-dft-transfer"):
            labelled = root / "water_dft" / "deepmd_water"
            if not labelled.is_dir():
                raise FileNotFoundError(f"{labelled}: DFT water folder not found (--data-root {root})")
        else:
            labelled = _generate_tip3p(out, args)
        test_path = None
        configs = {"scratch": CONFIGS / "water_scratch.yaml", "finetune": CONFIGS / "water_finetune.yaml",
                   "mask": CONFIGS / "water_pretrain_mask.yaml", "denoise": CONFIGS / "water_pretrain_denoise.yaml"}
        n = len(read_dataset(labelled))
        perm = rng.permutation(n)
        n_test = args.test_frames or max(1, n // 10)
        test_idx, val_idx, rest = perm[:n_test], perm[n_test: n_test + args.val], perm[n_test + args.val:]
    pool = rest[: args.pool] if args.pool else rest
    if max(args.labels) > len(pool):
        raise ValueError(f"--labels {max(args.labels)} exceeds the training pool ({len(pool)} frames)")
    plan = DatasetPlan(name=name, kind=kind, labelled=labelled, test_path=test_path, n_frames=n,
                       pool_idx=np.sort(pool), val_idx=np.sort(val_idx), test_idx=np.sort(test_idx),
                       configs=configs, n_test=n_test)
    assert not set(plan.pool_idx) & set(plan.val_idx) and not set(plan.pool_idx) & set(plan.test_idx)
    if kind == "water-dft-transfer":
        _add_transfer_sources(args, out, plan)
        return plan
    if kind == "rmd17" and pretrain_molecules(args):
        _add_multi_molecule_pool(args, out, plan, root)
        return plan
    if kind == "rmd17":
        plan.sources = {"pretrain_molecules": [mol], "target_molecule": mol,
                        "pretrain_frames_per_molecule": {mol: int(len(plan.pool_idx))},
                        "pretrain_val_frames_per_molecule": {mol: int(len(plan.val_idx))},
                        "pretrain_val": "the fine-tuning validation frames (unlabelled)"}
    plan.pretrain_file = write_unlabelled_pool(plan, out)
    return plan


def pretrain_molecules(args: argparse.Namespace) -> List[str]:
    """--pretrain-molecules resolved (``all`` = the ten rMD17 molecules, in RMD17_MOLECULES
    order); empty: the default, the target molecule's own fine-tuning pool."""
    spec = list(getattr(args, "pretrain_molecules", None) or [])
    if not spec:
        return []
    if parse_dataset(args.dataset)[0] != "rmd17":
        raise ValueError(f"--pretrain-molecules: only with --dataset rmd17:<molecule> (got {args.dataset})")
    if spec == ["all"]:
        return list(RMD17_MOLECULES)
    bad = [m for m in spec if m not in RMD17_MOLECULES]
    if bad or "all" in spec:
        raise ValueError(f"--pretrain-molecules {' '.join(spec)}: expected 'all' or rMD17 molecules "
                         f"({', '.join(RMD17_MOLECULES)})")
    return [m for m in RMD17_MOLECULES if m in spec]  # canonical order, no duplicates


def multi_molecule_selection(args: argparse.Namespace, plan: DatasetPlan, molecules: Sequence[str],
                             n_frames: Dict[str, int]) -> Dict[str, Dict[str, np.ndarray]]:
    """train_01 indices of every pretraining molecule: {mol: {"train": ..., "val": ...}}.

    Candidates: every train_01 frame, except, for the target molecule, its fine-tuning validation
    frames (test_01 is never read). A permutation per molecule (seed ``[--data-seed, 2, index of
    the molecule in RMD17_MOLECULES]``, so a molecule's frames do not depend on the other
    molecules of the list) gives first ``--pretrain-val-per-molecule`` pretext-validation frames,
    then up to ``--pretrain-frames-per-molecule`` pretraining frames (0 = all the rest); the
    validation frames are thus the same for every cap.
    """
    target = plan.name.split(":", 1)[1]
    k = int(getattr(args, "pretrain_frames_per_molecule", 0) or 0)
    v = int(getattr(args, "pretrain_val_per_molecule", 20))
    sel: Dict[str, Dict[str, np.ndarray]] = {}
    for m in molecules:
        cand = np.arange(n_frames[m])
        if m == target:
            cand = np.setdiff1d(cand, plan.val_idx)
        perm = cand[np.random.default_rng([args.data_seed, 2, RMD17_MOLECULES.index(m)]).permutation(len(cand))]
        if v >= len(perm):
            raise ValueError(f"--pretrain-val-per-molecule {v}: {m} has only {len(perm)} candidate frames")
        val, rest = perm[:v], perm[v:]
        sel[m] = {"train": np.sort(rest[:k] if k else rest), "val": np.sort(val)}
    return sel


def _add_multi_molecule_pool(args: argparse.Namespace, out: Path, plan: DatasetPlan, root: Path) -> None:
    """--pretrain-molecules: the unlabelled pretraining file from several rMD17 molecules'
    train_01 frames (``multi_molecule_selection``). Layout: the pretraining frames of every
    molecule (in RMD17_MOLECULES order), then every molecule's pretext-validation frames; the
    pretext validation set is held out of the pool itself, never a fine-tuning validation frame."""
    from maskpot.data.io import read_dataset, write_npz

    molecules = pretrain_molecules(args)
    target = plan.name.split(":", 1)[1]
    paths = {m: root / "rmd17" / f"rmd17_{m}_train_01.npz" for m in molecules}
    for m, p in paths.items():
        if not p.is_file():
            raise FileNotFoundError(f"{p}: rMD17 file of pretraining molecule {m} not found (--data-root {root})")
    path = out / "data" / "pretrain_unlabelled.npz"
    meta_want = {"pretrain_molecules": molecules, "target_molecule": target,
                 "frames_per_molecule_cap": int(getattr(args, "pretrain_frames_per_molecule", 0) or 0),
                 "val_per_molecule": int(getattr(args, "pretrain_val_per_molecule", 20)),
                 "data_seed": int(args.data_seed), "finetune_val_indices": plan.val_idx.tolist()}
    if path.is_file():
        with np.load(path) as z:
            meta = json.loads(str(z["metadata"]))
        if any(meta.get(key) != val for key, val in meta_want.items()):
            raise RuntimeError(f"{path} was written for other --pretrain-molecules / frame options: use another --out")
        sel = {m: {k: np.asarray(v, dtype=np.int64) for k, v in d.items()} for m, d in meta["indices"].items()}
    else:
        data = {m: read_dataset(p) for m, p in paths.items()}
        sel = multi_molecule_selection(args, plan, molecules, {m: len(d) for m, d in data.items()})
        frames = [data[m][int(i)].copy(energy=None, forces=None) for part in ("train", "val") for m in molecules
                  for i in sel[m][part]]
        assert all(s.energy is None and s.forces is None for s in frames)
        if target in sel:  # the target's fine-tuning validation frames never reach pretraining
            assert not set(np.concatenate([sel[target]["train"], sel[target]["val"]]).tolist()) & set(plan.val_idx.tolist())
        path.parent.mkdir(parents=True, exist_ok=True)
        write_npz(path, frames, metadata={
            **meta_want, "labels": "removed (pretraining input)",
            "sources": {m: str(p) for m, p in paths.items()},
            "layout": "train frames of every molecule (pretrain_molecules order), then val frames likewise",
            "indices": {m: {k: v.tolist() for k, v in d.items()} for m, d in sel.items()}})
    n_tr = sum(len(sel[m]["train"]) for m in molecules)
    n_va = sum(len(sel[m]["val"]) for m in molecules)
    plan.pretrain_file, plan.pretrain_n_train, plan.pretrain_n_val = path, n_tr, n_va
    # every element of the pool and of the target: the model's species (model_overrides), so that
    # a checkpoint pretrained on the pool loads for any target and scratch has the same architecture
    species = {int(z) for f in read_dataset(path) for z in np.unique(f.numbers)}
    species |= {int(z) for z in np.unique(read_dataset(plan.labelled, index=[0])[0].numbers)}
    plan.sources = {"pretrain_molecules": molecules, "target_molecule": target,
                    "pretrain_frames_per_molecule": {m: int(len(sel[m]["train"])) for m in molecules},
                    "pretrain_val_frames_per_molecule": {m: int(len(sel[m]["val"])) for m in molecules},
                    "pretrain_val": "held-out frames of the pool (per molecule), no fine-tuning validation frame",
                    "species": sorted(species)}


def _add_transfer_sources(args: argparse.Namespace, out: Path, plan: DatasetPlan) -> None:
    """water-dft-transfer: the TIP3P pool (labelled + unlabelled copies) and the unlabelled DFT
    candidates as pretraining sets (experiments/water_transfer.py)."""
    src = _load_sibling("water_transfer").build_sources(out, args, _load_sibling("water_sources"), plan.labelled,
                                                        plan.pool_idx)
    plan.pretrain_sets = src["sets"]
    unl = src["sets"]["unlabelled"]
    plan.pretrain_file, plan.pretrain_n_train, plan.pretrain_n_val = unl["file"], unl["n_train"], unl["n_val"]
    plan.sources = {"pool_trajectories": [str(p) for p in src["pool_paths"]], "trajectory_seeds": src["seeds"],
                    "frame_spacing_ps": args.tip3p_every * 0.5e-3, "molecules": args.tip3p_molecules,
                    "box_A": args.tip3p_box, "dft_path": str(plan.labelled), "dft_frames": plan.n_frames,
                    "pretrain_files": {k: str(v["file"]) for k, v in src["sets"].items()},
                    "dft_pretrain_train": src["sets"]["dft"]["n_train"], "dft_pretrain_val": src["sets"]["dft"]["n_val"]}


def _plan_water_traj(args: argparse.Namespace, out: Path, name: str) -> DatasetPlan:
    """tip3p-traj: pool, labelled and test frames from different TIP3P trajectories
    (experiments/water_sources.py); validation = the labelled trajectory's last ``--val`` frames."""
    ws = _load_sibling("water_sources")
    if max(args.labels) > args.labelled_pool:
        raise ValueError(f"--labels {max(args.labels)} exceeds --labelled-pool {args.labelled_pool}")
    src = ws.build_sources(out, args)
    pool, val = ws.labelled_split(args)
    configs = {"scratch": CONFIGS / "water_scratch.yaml", "finetune": CONFIGS / "water_finetune.yaml",
               "mask": CONFIGS / "water_pretrain_mask.yaml", "denoise": CONFIGS / "water_pretrain_denoise.yaml"}
    n_test = args.test_frames or 100
    plan = DatasetPlan(name=name, kind="water-traj", labelled=src["labelled"], test_path=src["test"],
                       n_frames=args.labelled_pool + args.val, pool_idx=pool, val_idx=val,
                       test_idx=np.zeros(0, dtype=np.int64), configs=configs, n_test=n_test,
                       pretrain_n_train=src["n_pretrain_train"], pretrain_n_val=src["n_pretrain_val"],
                       sources={"pool_trajectories": [str(p) for p in src["pool_paths"]],
                                "labelled_trajectory": str(src["labelled"]), "test_trajectory": str(src["test"]),
                                "trajectory_seeds": src["seeds"],
                                "frame_spacing_ps": args.tip3p_every * 0.5e-3,
                                "molecules": args.tip3p_molecules, "box_A": args.tip3p_box})
    plan.pretrain_file = src["pretrain_file"]
    return plan


def _load_sibling(name: str) -> Any:
    """Another module of experiments/, loaded by path (this script runs as a file)."""
    key = f"maskpot_experiments_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, Path(__file__).resolve().with_name(f"{name}.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[key] = mod
        spec.loader.exec_module(mod)
    return sys.modules[key]


def write_unlabelled_pool(plan: DatasetPlan, out: Path) -> Path:
    """Pool + validation configurations WITHOUT energies/forces: the pretraining data file.

    Frame order: the pool (sorted indices), then the validation frames.
    """
    from maskpot.data.io import read_dataset, write_npz

    path = out / "data" / "pretrain_unlabelled.npz"
    if path.is_file():
        return path
    samples = read_dataset(plan.labelled)
    frames = [samples[int(i)].copy(energy=None, forces=None) for i in np.concatenate([plan.pool_idx, plan.val_idx])]
    assert all(s.energy is None and s.forces is None for s in frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_npz(path, frames, metadata={"source": str(plan.labelled), "labels": "removed (pretraining input)",
                                      "pool_indices": plan.pool_idx.tolist(), "val_indices": plan.val_idx.tolist()})
    return path


def _write_splits(path: Path, n: int, train: np.ndarray, val: np.ndarray, test: np.ndarray, seed: int) -> Dict[str, int]:
    """A maskpot splits file whose metadata matches ``data.splits`` (so maskpot reuses it silently)."""
    from maskpot.data.dataset import load_splits, save_splits

    counts = {"train": int(len(train)), "val": int(len(val)), "test": int(len(test))}
    splits = {"train": np.sort(train).astype(np.int64), "val": np.sort(val).astype(np.int64),
              "test": np.sort(test).astype(np.int64)}
    if path.is_file():
        old = load_splits(path, n)
        if any(not np.array_equal(old[k], splits[k]) for k in splits):
            raise RuntimeError(f"{path} holds different splits than this experiment asks for: use another --out")
        return counts
    path.parent.mkdir(parents=True, exist_ok=True)
    save_splits(path, splits, n, metadata={"seed": seed, "counts": counts, "sizes": counts})
    return counts


def labelled_subset(plan: DatasetPlan, seed: int, n_label: int) -> np.ndarray:
    """The first ``n_label`` frames of a seed-dependent permutation of the pool (nested in N)."""
    order = np.random.default_rng([12345, seed]).permutation(len(plan.pool_idx))
    return plan.pool_idx[order[:n_label]]


# ------------------------------------------------------------------------------------------
# run configs
# ------------------------------------------------------------------------------------------
@dataclass
class Run:
    name: str
    stage: str  # "pretrain" | "finetune"
    strategy: str  # mask | denoise | scratch
    seed: int
    n_label: Optional[int]
    base_config: Path
    overrides: List[str]
    dir: Path
    depends: Optional[str] = None


def _yaml_flow(d: Dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in d.items()) + "}"


def model_overrides(args: argparse.Namespace, plan: DatasetPlan) -> List[str]:
    cutoff = args.cutoff if args.cutoff is not None else (5.0 if plan.kind == "rmd17" else 3.5)
    extra = ["model.coord_updates=true", "model.distance_input=squared"] if getattr(args, "egnn_reference", False) else []
    if plan.sources.get("species") and pretrain_molecules(args):  # multi-molecule pool: every element of it
        extra.append(f"model.species=[{', '.join(str(z) for z in plan.sources['species'])}]")
    return [f"model.name={args.model}", f"model.hidden_channels={args.hidden}",
            f"model.num_layers={args.layers}", f"model.cutoff={cutoff}", *extra]


def pretrain_seed_for(args: argparse.Namespace, seed: int) -> int:
    """The pretraining run a fine-tuning seed starts from (its own, or the one shared seed)."""
    pseeds = list(getattr(args, "pretrain_seeds", None) or args.seeds)
    if len(pseeds) == 1:
        return pseeds[0]
    if seed not in pseeds:
        raise ValueError(f"fine-tuning seed {seed} has no pretraining run (--pretrain-seeds {pseeds})")
    return seed


def finetune_epochs(args: argparse.Namespace, n_label: int) -> int:
    """--finetune-epochs, or with --finetune-steps S the epochs that give about S optimiser steps
    at N labels (ceil(S / ceil(N / batch)))."""
    steps = int(getattr(args, "finetune_steps", 0) or 0)
    if steps <= 0:
        return int(args.finetune_epochs)
    return max(1, math.ceil(steps / math.ceil(n_label / args.batch_size)))


def plan_runs(args: argparse.Namespace, plan: DatasetPlan, out: Path) -> List[Run]:
    """Pretraining runs first, then fine-tuning ordered by N, seed, strategy (so that an
    interrupted grid holds complete seeds of the smallest N first)."""
    runs: List[Run] = []
    sets = plan.pretrain_sets or {"unlabelled": {
        "file": plan.pretrain_file, "split": "pretrain.npz",
        "n_train": plan.pretrain_n_train if plan.pretrain_n_train is not None else len(plan.pool_idx),
        "n_val": plan.pretrain_n_val if plan.pretrain_n_val is not None else len(plan.val_idx)}}
    set_counts: Dict[str, Tuple[Dict[str, int], Path]] = {}
    for key, ds in sets.items():
        n_tr, n_va = int(ds["n_train"]), int(ds["n_val"])
        split = out / "splits" / ds["split"]
        set_counts[key] = (_write_splits(split, n_tr + n_va, np.arange(n_tr), np.arange(n_tr, n_tr + n_va),
                                         np.zeros(0, dtype=np.int64), args.data_seed), split)
    common_model = model_overrides(args, plan)
    threads = [f"train.num_threads={args.threads}"] if args.threads else []
    patience = int(getattr(args, "patience", 0) or 0)
    pseeds = list(getattr(args, "pretrain_seeds", None) or args.seeds)
    # the fine-tuning loss (also the supervised pretraining loss on TIP3P labels)
    ef_objective = ["objective.energy_weight=1.0", "objective.force_weight=500.0", "objective.loss_kind=l1",
                    "objective.per_atom_energy=true"]
    # pretraining stages: mask_supervised continues the mask run, so mask runs when it is asked for
    pre_strats = [s for s in ("denoise", "mask", "supervised", "mask_supervised", "mask_dft")
                  if s in args.strategies or (s == "mask" and "mask_supervised" in args.strategies)]
    for seed in pseeds:
        pre_train = [
            f"train.epochs={args.pretrain_epochs}", f"train.batch_size={args.pretrain_batch_size}",
            f"train.eval_batch_size={args.eval_batch_size}", f"train.lr={args.pretrain_lr}",
            f"train.min_lr={args.pretrain_lr / 100}", "train.scheduler=cosine",
            f"train.warmup_epochs={1 if args.pretrain_epochs > 1 else 0}", "train.ema_decay=0.0",
            "train.early_stopping_patience=0", f"train.seed={seed}", *threads,
        ]
        for strat in pre_strats:
            task, set_key = _pretrain_stage(strat)
            if set_key not in sets:
                raise ValueError(f"--strategies {strat}: needs --dataset water-dft-transfer")
            counts, split = set_counts[set_key]
            data = [f"data.path={sets[set_key]['file']}", "data.format=npz", "data.test_path=null",
                    f"data.splits={_yaml_flow(counts)}", f"data.split_file={split}", f"data.seed={args.data_seed}"]
            obj = ["objective={noise_sigma: 0.2, denoise_target: noise}"] if strat == "denoise" else []
            if task == "mask" and getattr(args, "mask_variant", None):
                obj = [f"objective.mask_variant={args.mask_variant}"]
                obj += ["objective.cosine_form=mean"] if args.mask_variant == "reference" else []
            name = f"pretrain_{strat}_s{seed}"
            dep = None
            if task == "energy_force":  # supervised pretraining on the TIP3P labels
                obj = ef_objective
                if strat == "mask_supervised":  # in sequence: from the mask checkpoint, architecture from it
                    dep = f"pretrain_mask_s{seed}"
                    model = [f"init.checkpoint={out / 'runs' / dep / 'best.pt'}", "init.use_ema=true",
                             "init.reset_heads=false", "init.freeze_encoder=false"]
                else:
                    model = [*common_model, "init.checkpoint=null"]
                base = plan.configs["finetune"] if dep else plan.configs["scratch"]
            else:
                model, base = common_model, plan.configs[strat if strat in plan.configs else task]
            runs.append(Run(name, "pretrain", strat, seed, None, base,
                            [f"task={task}", *obj, *data, *model, *pre_train,
                             "output.progress=false", "output.plot=false", f"output.dir={out / 'runs' / name}"],
                            out / "runs" / name, dep))
    for n_label in ([] if getattr(args, "pretrain_only", False) else args.labels):
        for seed in args.seeds:
            train_idx = labelled_subset(plan, seed, n_label)
            split = out / "splits" / f"finetune_n{n_label}_s{seed}.npz"
            counts = _write_splits(split, plan.n_frames, train_idx, plan.val_idx, plan.test_idx, args.data_seed)
            # One fine-tuning config for the three strategies: only init.checkpoint differs.
            ft = [
                "task=energy_force", f"data.path={plan.labelled}",
                f"data.test_path={plan.test_path if plan.test_path else 'null'}",
                f"data.splits={_yaml_flow(counts)}", f"data.split_file={split}", f"data.seed={args.data_seed}",
                *ef_objective,
                f"train.epochs={finetune_epochs(args, n_label)}", f"train.batch_size={args.batch_size}",
                f"train.eval_batch_size={args.eval_batch_size}", f"train.lr={args.lr}", f"train.min_lr={args.lr / 100}",
                "train.scheduler=cosine", "train.warmup_epochs=0", f"train.ema_decay={args.ema}",
                f"train.early_stopping_patience={patience}", f"train.seed={seed}", *threads,
                "init.reset_heads=false", "init.freeze_encoder=false", "init.use_ema=true",
                "output.progress=false", "output.plot=false",
            ]
            for strat in args.strategies:
                name = f"ft_{strat}_n{n_label}_s{seed}"
                if strat == "scratch":
                    ov = [*ft, *common_model, "init.checkpoint=null"]
                    dep = None
                else:
                    dep = f"pretrain_{strat}_s{pretrain_seed_for(args, seed)}"
                    ov = [*ft, f"init.checkpoint={out / 'runs' / dep / 'best.pt'}"]
                runs.append(Run(name, "finetune", strat, seed, n_label, plan.configs["finetune"],
                                [*ov, f"output.dir={out / 'runs' / name}"], out / "runs" / name, dep))
    return runs


def _pretrain_stage(strat: str) -> Tuple[str, str]:
    """(task, pretraining data set) of a pretraining arm."""
    return {"denoise": ("denoise", "unlabelled"), "mask": ("mask", "unlabelled"),
            "supervised": ("energy_force", "labelled"), "mask_supervised": ("energy_force", "labelled"),
            "mask_dft": ("mask", "dft")}[strat]


def resolve(run: Run) -> Dict[str, Any]:
    from maskpot.training.config import load_config

    cfg = load_config(run.base_config, run.overrides)
    if run.depends is not None:
        cfg["model"] = {}  # the architecture comes from the checkpoint (identical model keys)
    return cfg


def check_identical_budgets(cfgs: Dict[str, Dict[str, Any]], runs: Sequence[Run]) -> None:
    """Fine-tuning configs of one (seed, N) may differ only in init.checkpoint / output.dir / model."""
    groups: Dict[Tuple[int, int], List[Run]] = {}
    for r in runs:
        if r.stage == "finetune":
            groups.setdefault((r.seed, int(r.n_label)), []).append(r)
    for key, rs in groups.items():
        ref = None
        for r in rs:
            c = {k: v for k, v in cfgs[r.name].items() if k not in ("model", "output", "init")}
            c["init"] = {k: v for k, v in cfgs[r.name]["init"].items() if k != "checkpoint"}
            if ref is None:
                ref = c
            elif c != ref:
                raise AssertionError(f"fine-tuning configs of seed/N {key} differ beyond init/output/model: {r.name}")


def _comparable(cfg: Dict[str, Any]) -> Dict[str, Any]:
    out = {k: v for k, v in cfg.items() if k in ("task", "data", "objective", "train", "init")}
    out["train"] = {k: v for k, v in out["train"].items() if k not in ("epochs", "num_threads", "device")}
    return json.loads(json.dumps(out, default=str))


def check_existing(run: Run, cfg: Dict[str, Any]) -> None:
    """A run folder from an earlier invocation must hold the same run (else: stale results)."""
    import yaml

    stored = run.dir / "config.yaml"
    if not stored.is_file():
        return
    old = yaml.safe_load(stored.read_text())
    a, b = _comparable(old), _comparable(cfg)
    if a != b:
        diffs = [k for k in b if a.get(k) != b.get(k)]
        raise RuntimeError(f"{run.dir} holds a run with a different config (sections {diffs}): use another --out")


def cli_line(run: Run) -> str:
    rel = run.base_config.relative_to(REPO) if run.base_config.is_relative_to(REPO) else run.base_config
    parts = ["maskpot-train", str(rel)] + [x for o in run.overrides for x in ("--set", o)]
    return " ".join(shlex.quote(p) for p in parts)


def execute(run: Run, cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Run (or resume, or skip) one maskpot training; returns its test metrics."""
    from maskpot.training.cli import run_training

    tm = run.dir / "test_metrics.json"
    if tm.is_file():
        return {"skipped": True, **json.loads(tm.read_text())}
    check_existing(run, cfg)
    resume = (run.dir / "last.pt").is_file()
    t0 = time.time()
    argv = [str(run.base_config)] + [x for o in run.overrides for x in ("--set", o)]
    run_training(cfg, resume=resume, argv=argv)
    res = json.loads(tm.read_text())
    res["wall_s"] = time.time() - t0
    res["resumed"] = resume
    (run.dir / "wall_time.json").write_text(json.dumps({"wall_s": res["wall_s"], "resumed": resume}))
    return res


# ------------------------------------------------------------------------------------------
# results
# ------------------------------------------------------------------------------------------
def read_curve(run_dir: Path, column: str = FORCE_COL) -> List[float]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [float(r[column]) if r.get(column) not in (None, "") else math.nan for r in csv.DictReader(fh)]


def _last_row(run_dir: Path) -> Dict[str, float]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = {}
    for k, v in (rows[-1] if rows else {}).items():
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            pass
    return out


def _ms(values: Sequence[float]) -> Tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def summarise(args: argparse.Namespace, plan: DatasetPlan, runs: Sequence[Run], results: Dict[str, Dict[str, Any]],
              wall_s: float, command: str) -> Dict[str, Any]:
    by: Dict[str, Dict[str, Any]] = {}
    for n_label in args.labels:
        for strat in args.strategies:
            rs = [r for r in runs if r.stage == "finetune" and r.n_label == n_label and r.strategy == strat
                  and r.name in results]  # --summary-only: the finished runs only
            if not rs:
                continue
            em = [results[r.name]["energy_mae_meV_per_atom"] for r in rs]
            fm = [results[r.name]["force_mae_meV_per_A"] for r in rs]
            curves = [read_curve(r.dir) for r in rs]
            L = min(len(c) for c in curves)
            arr = np.array([c[:L] for c in curves])
            run_json = [json.loads((r.dir / "run.json").read_text()) for r in rs]
            by.setdefault(str(n_label), {})[strat] = {
                "energy_mae_meV_per_atom": dict(zip(("mean", "std"), _ms(em))),
                "force_mae_meV_per_A": dict(zip(("mean", "std"), _ms(fm))),
                "energy_mae_meV_per_atom_per_seed": em,
                "force_mae_meV_per_A_per_seed": fm,
                "energy_rmse_meV_per_atom_per_seed": [results[r.name].get("energy_rmse_meV_per_atom") for r in rs],
                "force_rmse_meV_per_A_per_seed": [results[r.name].get("force_rmse_meV_per_A") for r in rs],
                "best_epoch_per_seed": [rj.get("summary", {}).get("best_epoch") for rj in run_json],
                "epochs_done_per_seed": [rj.get("summary", {}).get("epochs_done") for rj in run_json],
                "stop_reason_per_seed": [rj.get("summary", {}).get("stop_reason") for rj in run_json],
                "seeds": [r.seed for r in rs],
                # energy offset (mean error) and the error with it removed, per atom
                "energy_mean_error_meV_per_atom_per_seed": [_per_atom(results[r.name], "energy_mean_error_meV") for r in rs],
                "energy_rmse_centred_meV_per_atom_per_seed": [_per_atom(results[r.name], "energy_rmse_centred_meV")
                                                              for r in rs],
                "wall_s_per_seed": [results[r.name].get("wall_s") for r in rs],
                "val_force_mae_curve_mean": arr.mean(0).tolist(),
                "val_force_mae_curve_std": (arr.std(0, ddof=1) if len(arr) > 1 else np.zeros(L)).tolist(),
                "runs": [r.name for r in rs],
            }
        if str(n_label) in by:
            _add_vs_scratch(args, runs, results, n_label, by[str(n_label)])
    pre = {}
    metric = {"mask": "val_mean_cosine", "mask_dft": "val_mean_cosine", "denoise": "val_vector_rmse",
              "supervised": FORCE_COL, "mask_supervised": FORCE_COL}
    for strat in ("mask", "denoise", "supervised", "mask_supervised", "mask_dft"):
        rs = [r for r in runs if r.stage == "pretrain" and r.strategy == strat and r.name in results]
        if not rs:
            continue
        key = metric[strat]
        first = [read_curve(r.dir, key)[0] for r in rs]
        last = [read_curve(r.dir, key)[-1] for r in rs]
        best = [_pretext_at_best(r, key) for r in rs]
        pre[strat] = {"metric": key, "first_epoch": first, "last_epoch": last, "best_epoch_value": best,
                      "curve_per_seed": [read_curve(r.dir, key) for r in rs], "seeds": [r.seed for r in rs],
                      "geometry_baseline": [_geometry_baseline(r) if strat in ("mask", "denoise") else None
                                            for r in rs],
                      "wall_s": [results[r.name].get("wall_s") for r in rs]}
        if _pretrain_stage(strat)[0] == "mask":
            pre[strat]["mask_variant"] = _mask_variant(rs[0])
        if strat in ("mask", "denoise") and len(plan.sources.get("pretrain_molecules") or []) > 1:
            pre[strat]["per_molecule"] = [_pretext_per_molecule(r, plan.sources) for r in rs]
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": command,
        "dataset": plan.name,
        "model": {"name": args.model, "hidden_channels": args.hidden, "num_layers": args.layers,
                  "cutoff": args.cutoff if args.cutoff is not None else (5.0 if plan.kind == "rmd17" else 3.5)},
        "seeds": list(args.seeds),
        "labels": list(args.labels),
        "strategies": list(args.strategies),
        "pretrain_only": bool(getattr(args, "pretrain_only", False)),
        "mask_variant": getattr(args, "mask_variant", None),
        "out_name": Path(args.out).name if args.out else "",
        "sizes": {"pool_unlabelled": int(len(plan.pool_idx)), "val": int(len(plan.val_idx)), "test": int(plan.n_test),
                  "pretrain_train": plan.pretrain_n_train if plan.pretrain_n_train is not None else int(len(plan.pool_idx)),
                  "pretrain_val": plan.pretrain_n_val if plan.pretrain_n_val is not None else int(len(plan.val_idx)),
                  "test_source": str(plan.test_path) if plan.test_path else f"{len(plan.test_idx)} held-out frames of {plan.labelled}"},
        "budgets": {"pretrain_epochs": args.pretrain_epochs, "pretrain_batch_size": args.pretrain_batch_size,
                    "pretrain_lr": args.pretrain_lr, "finetune_epochs": args.finetune_epochs,
                    "finetune_epochs_per_n": {str(n): finetune_epochs(args, n) for n in args.labels},
                    "finetune_steps": int(getattr(args, "finetune_steps", 0) or 0),
                    "finetune_batch_size": args.batch_size, "finetune_lr": args.lr, "ema_decay": args.ema,
                    "threads": args.threads},
        "std": "sample standard deviation over seeds (ddof=1)",
        "results": by,
        "pretraining": pre,
        "pretrain_seeds": list(getattr(args, "pretrain_seeds", None) or args.seeds),
        "patience": int(getattr(args, "patience", 0) or 0),
        "sources": plan.sources,
        "wall_s": wall_s,
        "run_wall_s": {k: v.get("wall_s") for k, v in results.items()},
    }


def _pretext_at_best(run: Run, key: str) -> Optional[float]:
    """The validation pretext metric of the epoch ``best.pt`` was saved at (lowest validation loss)."""
    try:
        best = json.loads((run.dir / "run.json").read_text()).get("summary", {}).get("best_epoch")
        curve = read_curve(run.dir, key)
        return float(curve[int(best) - 1]) if best and 0 < int(best) <= len(curve) else None
    except (OSError, ValueError, TypeError):
        return None


def _pretext_per_molecule(run: Run, sources: Dict[str, Any]) -> Optional[Dict[str, Dict[str, float]]]:
    """Multi-molecule pool: ``best.pt``'s pretext score and the geometry-only rule's on each
    molecule's pretext-validation frames (both on the same targets: that subset, the run's seed)."""
    import yaml

    from maskpot.data.dataset import load_splits
    from maskpot.data.io import read_dataset
    from maskpot.training.checkpoint import model_from_checkpoint
    from maskpot.training.evaluate import evaluate
    from maskpot.training.objectives import build_objective
    from maskpot.training.pretext_baseline import baseline_scores

    try:
        cfg = yaml.safe_load((run.dir / "config.yaml").read_text())
        d, seed = cfg["data"], int(cfg["train"]["seed"])
        samples = read_dataset(d["path"], format=d.get("format"))
        val = [samples[int(i)] for i in load_splits(Path(d["split_file"]), len(samples))["val"]]
        objective = build_objective(cfg["task"], cfg["objective"])
        model = model_from_checkpoint(run.dir / "best.pt")
        dtype = next(model.parameters()).dtype
        learned_key = "mean_cosine" if cfg["task"] == "mask" else "vector_rmse"
        out: Dict[str, Dict[str, float]] = {}
        start = 0
        for m in sources["pretrain_molecules"]:  # validation layout: molecule by molecule
            n = int(sources["pretrain_val_frames_per_molecule"][m])
            sub = val[start: start + n]
            start += n
            learned = evaluate(model, sub, objective, batch_size=int(cfg["train"].get("eval_batch_size") or 16),
                               dtype=dtype, seed=seed)
            rule = baseline_scores(sub, objective, seed=seed)
            out[m] = {"learned": float(learned[learned_key]), "rule": float(rule[learned_key]), "n_frames": n}
        return out
    except Exception as exc:  # a missing breakdown must not lose the experiment's summary
        log.warning("per-molecule pretext scores of %s failed: %s", run.name, exc)
        return None


def _mask_variant(run: Run) -> str:
    """The masking variant a pretraining run used (its stored config; the objective's default: local)."""
    import yaml

    try:
        cfg = yaml.safe_load((run.dir / "config.yaml").read_text())
        return str((cfg.get("objective") or {}).get("mask_variant") or "local")
    except (OSError, ValueError, AttributeError):
        return "unknown"


def _per_atom(res: Dict[str, Any], key: str) -> Optional[float]:
    """A per-frame energy metric (meV) of test_metrics.json divided by the atoms per frame."""
    v, mae, mae_pa = res.get(key), res.get("energy_mae_meV"), res.get("energy_mae_meV_per_atom")
    if v is None or not mae or not mae_pa:
        return None
    return float(v) * float(mae_pa) / float(mae)


def _geometry_baseline(run: Run) -> Optional[Dict[str, float]]:
    """Score of the geometry-only rule (maskpot.training.pretext_baseline) on the pretraining
    run's validation frames, with the very targets its validation used (same objective, seed)."""
    import yaml

    from maskpot.data.dataset import load_splits
    from maskpot.data.io import read_dataset
    from maskpot.training.objectives import build_objective
    from maskpot.training.pretext_baseline import baseline_scores

    try:
        cfg = yaml.safe_load((run.dir / "config.yaml").read_text())
        d = cfg["data"]
        samples = read_dataset(d["path"], format=d.get("format"))
        splits = load_splits(Path(d.get("split_file") or run.dir / "splits.npz"), len(samples))
        val = [samples[int(i)] for i in splits["val"]]
        return baseline_scores(val, build_objective(cfg["task"], cfg["objective"]), seed=int(cfg["train"]["seed"]))
    except Exception as exc:  # a missing baseline must not lose the experiment's summary
        log.warning("geometry-only baseline of %s failed: %s", run.name, exc)
        return None


def _add_vs_scratch(args: argparse.Namespace, runs: Sequence[Run], results: Dict[str, Dict[str, Any]], n_label: int,
                    by_n: Dict[str, Any]) -> None:
    """Paired (same seed) differences of the test errors against scratch, with 95 % t intervals,
    and the epochs each fine-tuning run needs to reach its seed's scratch final validation force
    MAE (experiments/stats.py). Needs the scratch strategy."""
    if "scratch" not in args.strategies:
        return
    st = _load_sibling("stats")
    ft = {(r.strategy, r.seed): r for r in runs if r.stage == "finetune" and r.n_label == n_label and r.name in results}
    seeds = sorted(s for (strat, s) in ft if strat == "scratch")
    for strat in args.strategies:
        if strat not in by_n:
            continue
        rs = {s: ft[(strat, s)] for s in seeds if (strat, s) in ft}
        entry: Dict[str, Any] = {
            "epochs_to_scratch_final_val_force_per_seed": [
                st.epochs_to_scratch_final(rs[s].dir, ft[("scratch", s)].dir) for s in sorted(rs)
            ],
        }
        if strat != "scratch" and rs:
            for key in ("force_mae_meV_per_A", "energy_mae_meV_per_atom"):
                entry[key] = st.paired_differences({s: results[rs[s].name][key] for s in rs},
                                                   {s: results[ft[("scratch", s)].name][key] for s in rs})
            key = "energy_rmse_centred_meV"
            if all(results[x.name].get(key) is not None for x in [*rs.values(), *(ft[("scratch", s)] for s in rs)]):
                entry["energy_rmse_centred_meV_per_atom"] = st.paired_differences(
                    {s: _per_atom(results[rs[s].name], key) for s in rs},
                    {s: _per_atom(results[ft[("scratch", s)].name], key) for s in rs})
        by_n[strat]["vs_scratch"] = entry


def plot(summary: Dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    colors = {"scratch": "tab:gray", "denoise": "tab:blue", "mask": "tab:red", "supervised": "tab:green",
              "mask_supervised": "tab:purple", "mask_dft": "tab:orange"}
    labels = summary["labels"]
    fig, axes = plt.subplots(1, len(labels), figsize=(4.8 * len(labels), 3.8), squeeze=False)
    for ax, n in zip(axes[0], labels):
        for strat, res in summary["results"].get(str(n), {}).items():
            m, s = np.array(res["val_force_mae_curve_mean"]), np.array(res["val_force_mae_curve_std"])
            ep = np.arange(1, len(m) + 1)
            ax.plot(ep, m, color=colors.get(strat), label=strat)
            ax.fill_between(ep, m - s, m + s, color=colors.get(strat), alpha=0.2, lw=0)
        ax.set_yscale("log")
        ax.set_xlabel("fine-tuning epoch")
        ax.set_ylabel("validation force MAE (meV/Å)")
        ax.set_title(f"{summary['dataset']}, {summary['model']['name']}, N={n} labels")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "convergence.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.8))
    for ax, key, ylabel in ((axes[0], "energy_mae_meV_per_atom", "test energy MAE (meV/atom)"),
                            (axes[1], "force_mae_meV_per_A", "test force MAE (meV/Å)")):
        for strat in summary["strategies"]:
            ns = [n for n in labels if strat in summary["results"].get(str(n), {})]
            m = [summary["results"][str(n)][strat][key]["mean"] for n in ns]
            s = [summary["results"][str(n)][strat][key]["std"] for n in ns]
            ax.errorbar(ns, m, yerr=s, marker="o", capsize=3, color=colors.get(strat), label=strat)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(labels)
        ax.set_xticklabels([str(n) for n in labels])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("labelled frames N")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.suptitle(f"{summary['dataset']}, {summary['model']['name']}, seeds {summary['seeds']}")
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_labels.png", dpi=120)
    plt.close(fig)


def pretrain_pool_text(summary: Dict[str, Any]) -> str:
    """Which frames the pretraining used: molecules and frame counts (rMD17), or the pool size."""
    z, src = summary["sizes"], summary.get("sources") or {}
    mols = src.get("pretrain_molecules")
    if not mols:
        return f"pretraining pool {z['pool_unlabelled']} unlabelled frames"
    tr, va = src.get("pretrain_frames_per_molecule", {}), src.get("pretrain_val_frames_per_molecule", {})
    per = ", ".join(f"{m} {tr.get(m, '?')}" for m in mols)
    if len(mols) == 1 and mols[0] == src.get("target_molecule"):
        return (f"pretraining on {mols[0]} only: {z['pretrain_train']} unlabelled train_01 frames (the fine-tuning "
                f"pool), pretext validation = the {z['pretrain_val']} fine-tuning validation frames")
    return (f"pretraining on {len(mols)} rMD17 molecules ({', '.join(mols)}): {z['pretrain_train']} unlabelled "
            f"train_01 frames ({per}) + {z['pretrain_val']} pretext-validation frames held out of the pool "
            f"({', '.join(f'{m} {va.get(m, chr(63))}' for m in mols)}); no fine-tuning validation or test_01 frame; "
            f"model species {src.get('species')}")


def markdown(summary: Dict[str, Any]) -> str:
    m, b, z = summary["model"], summary["budgets"], summary["sizes"]
    E = b["finetune_epochs"]
    q = max(1, E // 4)
    variant = (summary.get("pretraining", {}).get("mask") or {}).get("mask_variant")
    ft_text = ("no fine-tuning (--pretrain-only)" if summary.get("pretrain_only") else
               f"fine-tuning {E} epochs, batch {b['finetune_batch_size']}, lr {b['finetune_lr']:g} cosine → "
               f"{b['finetune_lr'] / 100:g}, EMA {b['ema_decay']}; validation {z['val']} frames; "
               f"test {z['test']} frames ({z['test_source']})")
    lines = [
        f"### {summary['date']} — {summary['dataset']}, {m['name']} (hidden {m['hidden_channels']}, "
        f"{m['num_layers']} layers, cutoff {m['cutoff']} Å), seeds {summary['seeds']}"
        + (f", mask variant {variant}" if variant else ""),
        "",
        f"Command: `{summary['command']}`",
        "",
        f"Sizes: {pretrain_pool_text(summary)} ({b['pretrain_epochs']} epochs, batch "
        f"{b['pretrain_batch_size']}, lr {b['pretrain_lr']:g}); {ft_text}. Wall time {summary['wall_s'] / 60:.1f} min "
        f"({b['threads'] or 'default'} thread(s)). Mean ± sample std over {len(summary['seeds'])} seeds.",
    ]
    rows = [(n, strat) for n in summary["labels"] for strat in summary["strategies"]
            if strat in summary["results"].get(str(n), {})]
    if rows:
        lines += [
            "",
            f"| N labels | strategy | test E MAE (meV/atom) | test F MAE (meV/Å) | val F MAE @ epoch {q} (meV/Å) | best epoch |",
            "|---:|---|---:|---:|---:|---:|",
        ]
    for n, strat in rows:
        r = summary["results"][str(n)][strat]
        c = r["val_force_mae_curve_mean"]
        cs = r["val_force_mae_curve_std"]
        early = f"{c[q - 1]:.1f} ± {cs[q - 1]:.1f}" if len(c) >= q else "n/a"
        be = [x for x in r["best_epoch_per_seed"] if x is not None]
        lines.append(
            f"| {n} | {strat} | {r['energy_mae_meV_per_atom']['mean']:.2f} ± {r['energy_mae_meV_per_atom']['std']:.2f} "
            f"| {r['force_mae_meV_per_A']['mean']:.1f} ± {r['force_mae_meV_per_A']['std']:.1f} | {early} "
            f"| {', '.join(str(x) for x in be)} |"
        )
    if any("vs_scratch" in summary["results"].get(str(n), {}).get(strat, {}) for n in summary["labels"]
           for strat in summary["strategies"]):
        st = _load_sibling("stats")
        lines += [
            "",
            "Against scratch, paired by seed: mean test-error difference [95 % t interval] (negative = better "
            "than scratch), and the fine-tuning epochs each seed needs to reach its scratch run's final "
            f"validation force MAE (— = not within {E} epochs).",
            "",
            "| N labels | strategy | Δ test F MAE (meV/Å) | Δ test E MAE (meV/atom) | epochs to scratch's final val F MAE |",
            "|---:|---|---:|---:|---|",
        ]
        for n in summary["labels"]:
            for strat in summary["strategies"]:
                v = summary["results"].get(str(n), {}).get(strat, {}).get("vs_scratch")
                if v is None:
                    continue
                ep = ", ".join("—" if x is None else str(x) for x in v["epochs_to_scratch_final_val_force_per_seed"])
                df = st.format_ci(v["force_mae_meV_per_A"], 1) if "force_mae_meV_per_A" in v else "(reference)"
                de = st.format_ci(v["energy_mae_meV_per_atom"], 2) if "energy_mae_meV_per_atom" in v else "(reference)"
                lines.append(f"| {n} | {strat} | {df} | {de} | {ep} |")
    pre = summary.get("pretraining", {})
    if pre:
        lines.append("")
        parts = []
        for strat, p in pre.items():
            f = np.mean(p["first_epoch"])
            l_ = np.mean(p["last_epoch"])
            name = f"{strat} (variant {p['mask_variant']})" if p.get("mask_variant") else strat
            text = f"{name}: {p['metric']} {f:.3f} (epoch 1) → {l_:.3f} (last epoch)"
            best = [x for x in p.get("best_epoch_value") or [] if x is not None]
            if best:
                text += f", {np.mean(best):.3f} at best.pt"
            base = [b for b in p.get("geometry_baseline") or [] if b]
            bkey = "mean_cosine" if strat in ("mask", "mask_dft") else "vector_rmse"
            if base and all(bkey in b for b in base):
                rule = float(np.mean([b[bkey] for b in base]))
                text += f", geometry-only rule {rule:.3f}"
                if best:
                    text += f" (learned − rule {np.mean(best) - rule:+.3f})"
            parts.append(text)
        lines.append("Pretraining (validation, mean over seeds; the geometry-only rule of "
                     "maskpot.training.pretext_baseline on the same targets): " + "; ".join(parts) + ".")
        for strat, p in pre.items():
            per = [x for x in p.get("per_molecule") or [] if x]
            if not per:
                continue
            key = "mean_cosine" if strat == "mask" else "vector_rmse"
            cells = [f"{m} {np.mean([x[m]['learned'] for x in per]):.3f} / {np.mean([x[m]['rule'] for x in per]):.3f}"
                     for m in per[0]]
            name = f"{strat} (variant {p['mask_variant']})" if p.get("mask_variant") else strat
            lines.append(f"Per molecule, {name} {key} of best.pt / geometry-only rule on each molecule's held-out "
                         f"pretext-validation frames: " + ", ".join(cells) + ".")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="rmd17:aspirin",
                   help="water-dft | tip3p | tip3p-traj | water-dft-transfer | rmd17:<molecule>")
    p.add_argument("--model", default="painn", choices=MODELS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--labels", type=int, nargs="+", default=[50], help="labelled fine-tuning frames (sweep)")
    p.add_argument("--strategies", nargs="+", default=None, choices=ALL_STRATEGIES,
                   help=f"default: {' '.join(STRATEGIES)} (water-dft-transfer: all six; {', '.join(TRANSFER_STRATEGIES)} "
                        "need water-dft-transfer)")
    p.add_argument("--out", default=None, help="output folder (default: runs/compare/<dataset>_<model>)")
    p.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT), help="shared data folder")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the pool/val/test split (fixed over --seeds)")
    p.add_argument("--val", type=int, default=50, help="validation frames (fixed over seeds)")
    p.add_argument("--pool", type=int, default=0, help="cap on the training pool (0: every non-val/test frame)")
    p.add_argument("--test-frames", type=int, default=0,
                   help="test frames (rMD17: random subset of test_01, 0 = all 1000; water: held-out frames, 0 = 10%%)")
    p.add_argument("--mask-variant", default=None, choices=("local", "reference"),
                   help="rMD17 masking: local (flagged neighbours of the hole) or the reference code's (every atom, "
                        "from the farthest hole, no flag, with its loss: cosine_form mean); default: the config's")
    r = p.add_argument_group("rMD17 pretraining pool (--dataset rmd17:<molecule>)")
    r.add_argument("--pretrain-molecules", nargs="+", default=None, metavar="MOL",
                   help="pretrain on these molecules' train_01 frames (labels removed; 'all' = the ten), never the "
                        "target's fine-tuning validation frames nor any test_01 frame; pretext validation = held-out "
                        "frames of the pool. Default: the target's own fine-tuning pool (validation = its "
                        "fine-tuning validation frames)")
    r.add_argument("--pretrain-frames-per-molecule", type=int, default=0,
                   help="with --pretrain-molecules: random pretraining frames per molecule (seed --data-seed; 0 = all)")
    r.add_argument("--pretrain-val-per-molecule", type=int, default=20,
                   help="with --pretrain-molecules: pretext-validation frames per molecule (held out of the pool)")
    r.add_argument("--pretrain-only", action="store_true",
                   help="run the pretraining stages only (pretext scores vs the geometry-only rule; no fine-tuning)")
    p.add_argument("--egnn-reference", action="store_true",
                   help="EGNN with the reference's coordinate updates and squared-distance input (--model egnn)")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--cutoff", type=float, default=None, help="Å (default: 5.0 rMD17, 3.5 water)")
    p.add_argument("--pretrain-epochs", type=int, default=3)
    p.add_argument("--pretrain-batch-size", type=int, default=16)
    p.add_argument("--pretrain-lr", type=float, default=1e-3)
    p.add_argument("--finetune-epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=10, help="fine-tuning batch size")
    p.add_argument("--eval-batch-size", type=int, default=50)
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tuning peak lr (cosine to lr/100)")
    p.add_argument("--ema", type=float, default=0.0, help="fine-tuning EMA decay")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (0: torch default)")
    p.add_argument("--tip3p-molecules", type=int, default=None, help="default 32 (water-dft-transfer: 64, as the DFT set)")
    p.add_argument("--tip3p-box", type=float, default=None, help="Å; default 9.86 (water-dft-transfer: 12.4447, the DFT box)")
    p.add_argument("--tip3p-frames", type=int, default=200)
    w = p.add_argument_group("tip3p-traj (separate trajectories for pool / labelled / test; experiments/water_sources.py) "
                             "and water-dft-transfer (TIP3P pool trajectories; experiments/water_transfer.py)")
    w.add_argument("--tip3p-every", type=int, default=400, help="MD steps (0.5 fs) between saved frames")
    w.add_argument("--tip3p-equilibration", type=int, default=10000, help="MD steps before the first frame")
    w.add_argument("--pool-trajectories", type=int, default=4, help="independent pretraining-pool trajectories")
    w.add_argument("--pool-frames", type=int, default=256, help="pretraining frames per pool trajectory")
    w.add_argument("--pool-val-frames", type=int, default=16,
                   help="pretext-validation frames per pool trajectory (its last frames)")
    w.add_argument("--labelled-pool", type=int, default=256,
                   help="candidate fine-tuning frames of the labelled trajectory (the nested subsets' pool)")
    w.add_argument("--pretrain-seeds", type=int, nargs="+", default=None,
                   help="pretraining seeds (default: one pretraining run per fine-tuning seed); with one value, "
                        "every fine-tuning seed starts from that seed's checkpoint")
    w.add_argument("--finetune-steps", type=int, default=0,
                   help="fine-tuning budget in optimiser steps, the same for every N (epochs = steps / batches "
                        "per epoch); 0: --finetune-epochs for every N")
    w.add_argument("--patience", type=int, default=0,
                   help="fine-tuning early stopping: epochs without a lower validation loss (0 = off)")
    w.add_argument("--data-only", action="store_true", help="generate / check the data, then stop")
    p.add_argument("--summary-only", action="store_true",
                   help="train nothing: summary.json, plots and tables from the runs finished so far")
    p.add_argument("--results-md", default=str(REPO / "experiments" / "RESULTS.md"),
                   help="markdown file the results table is appended to ('' = none)")
    p.add_argument("--no-progress", action="store_true")
    return p


def resolve_defaults(args: argparse.Namespace) -> None:
    """Dataset-dependent defaults (strategies, TIP3P box) and the strategy check, in place."""
    transfer = parse_dataset(args.dataset)[0] == "water-dft-transfer"
    if args.strategies is None:
        args.strategies = list(ALL_STRATEGIES if transfer else STRATEGIES)
    args.strategies = [s for s in ALL_STRATEGIES if s in args.strategies]
    extra = [s for s in args.strategies if s in TRANSFER_STRATEGIES]
    if extra and not transfer:
        raise SystemExit(f"--strategies {' '.join(extra)}: only with --dataset water-dft-transfer")
    if args.tip3p_molecules is None:
        args.tip3p_molecules = 64 if transfer else 32
    if args.tip3p_box is None:
        args.tip3p_box = 12.4447 if transfer else 9.86


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.labels = sorted(set(args.labels))
    args.seeds = list(dict.fromkeys(args.seeds))
    resolve_defaults(args)
    if args.egnn_reference and args.model != "egnn":
        raise SystemExit(f"--egnn-reference needs --model egnn (got --model {args.model})")
    try:
        pretrain_molecules(args)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    if args.pretrain_only and not [s for s in args.strategies if s != "scratch"]:
        raise SystemExit("--pretrain-only: --strategies has no pretraining arm")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("maskpot").setLevel(logging.WARNING)
    t_start = time.time()
    kind, name = parse_dataset(args.dataset)
    out = Path(args.out) if args.out else REPO / "runs" / "compare" / f"{name.replace(':', '_')}_{args.model}"
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python experiments/compare_pretraining.py", *(shlex.quote(a) for a in argv)])

    plan = plan_dataset(args, out)
    if args.data_only:
        log.info("--data-only: data ready in %s", out / "data")
        return 0
    runs = plan_runs(args, plan, out)
    cfgs = {r.name: resolve(r) for r in runs}
    check_identical_budgets(cfgs, runs)
    from maskpot.training.config import save_config

    for r in runs:
        save_config(cfgs[r.name], out / "configs" / f"{r.name}.yaml")
    (out / "commands.sh").write_text(
        "# equivalent maskpot-train command lines (run from the repository root), in order\n"
        + "\n".join(cli_line(r) for r in runs) + "\n")
    log.info("%s: %d runs (%s), pool %d, val %d, test %d, pretraining %d + %d (pretext val) frames -> %s", plan.name,
             len(runs), ", ".join(args.strategies), len(plan.pool_idx), len(plan.val_idx), plan.n_test,
             plan.pretrain_n_train if plan.pretrain_n_train is not None else len(plan.pool_idx),
             plan.pretrain_n_val if plan.pretrain_n_val is not None else len(plan.val_idx), out)

    from tqdm.auto import tqdm

    from maskpot.utils import progress_wanted

    results: Dict[str, Dict[str, Any]] = {}
    bar = tqdm(runs, desc="runs", unit="run", disable=not progress_wanted(not args.no_progress), dynamic_ncols=True)
    if args.summary_only:  # tables from the finished runs' saved metrics; nothing is trained
        bar = []
        for r in runs:
            if (r.dir / "test_metrics.json").is_file():
                res = {"skipped": True, **json.loads((r.dir / "test_metrics.json").read_text())}
                if (r.dir / "wall_time.json").is_file():
                    res["wall_s"] = json.loads((r.dir / "wall_time.json").read_text())["wall_s"]
                results[r.name] = res
    for r in bar:
        bar.set_postfix_str(r.name)
        if r.depends and not (out / "runs" / r.depends / "best.pt").is_file():
            raise RuntimeError(f"{r.name}: pretraining checkpoint of {r.depends} missing")
        res = execute(r, cfgs[r.name])
        if "wall_s" not in res and (r.dir / "wall_time.json").is_file():
            res["wall_s"] = json.loads((r.dir / "wall_time.json").read_text())["wall_s"]
        results[r.name] = res
        if r.stage == "finetune":
            log.info("%s: E %.2f meV/atom, F %.1f meV/Å%s", r.name, res["energy_mae_meV_per_atom"],
                     res["force_mae_meV_per_A"], " (done earlier)" if res.get("skipped") else "")
    wall = time.time() - t_start
    summary = summarise(args, plan, runs, results, wall, command)
    summary["runs_planned"], summary["runs_finished"] = len(runs), len(results)
    summary["summary_only"] = bool(args.summary_only)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if summary["results"]:  # nothing fine-tuned yet (or --pretrain-only): no curves to plot
        plot(summary, out)
    if plan.kind == "water-dft-transfer":
        wt, st = _load_sibling("water_transfer"), _load_sibling("stats")
        wt.add_comparisons(summary, st)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        table = wt.markdown(summary, st, out)
        print("\n" + table)
        if args.results_md:
            wt.write_block(Path(args.results_md), summary, table)
        log.info("done in %.1f min: %s", wall / 60, out)
        return 0
    if plan.kind == "water-traj":
        ws = _load_sibling("water_sources")
        table = ws.markdown(summary, _load_sibling("stats"), out)
        print("\n" + table)
        if args.results_md:
            ws.write_block(Path(args.results_md), summary, table)
        log.info("done in %.1f min: %s", wall / 60, out)
        return 0
    table = markdown(summary)
    print("\n" + table)
    if args.results_md:
        md = Path(args.results_md)
        md.parent.mkdir(parents=True, exist_ok=True)
        with open(md, "a") as fh:
            fh.write("\n" + table)
    log.info("done in %.1f min: %s", wall / 60, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
