"""Dataset planning of ``compare_pretraining.py``: which frames, from where, split how.

One ``DatasetPlan`` (``grid.py``) per ``--dataset`` kind: rMD17 (``rmd17:<molecule>``; the
multi-molecule pretraining pool is in ``rmd17_sources.py``), water (``water-dft``, ``tip3p``),
separate TIP3P trajectories (``tip3p-traj``, ``water_sources.py``) and TIP3P -> DFT transfer
(``water-dft-transfer``, ``water_transfer.py``); plus the dataset-dependent argument defaults,
the unlabelled pretraining file and the maskpot splits files.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from experiments import rmd17_sources, water_sources, water_transfer
from experiments.grid import (ALL_STRATEGIES, CONFIGS, DEFAULT_TRANSFER_STRATEGIES, STRATEGIES,
                              TRANSFER_ONLY_STRATEGIES, DatasetPlan, parse_dataset)

log = logging.getLogger("compare_pretraining")


def resolve_defaults(args: argparse.Namespace) -> None:
    """Dataset-dependent defaults (strategies, TIP3P box) and the strategy check, in place."""
    kind = parse_dataset(args.dataset)[0]
    transfer = kind == "water-dft-transfer"
    if args.strategies is None:
        args.strategies = list(DEFAULT_TRANSFER_STRATEGIES if transfer else STRATEGIES)
    args.strategies = [s for s in ALL_STRATEGIES if s in args.strategies]
    extra = [s for s in args.strategies if s in TRANSFER_ONLY_STRATEGIES]
    if extra and not transfer:
        raise SystemExit(f"--strategies {' '.join(extra)}: only with --dataset water-dft-transfer")
    if "mask_reference" in args.strategies and kind != "rmd17":  # the reference's masking is of molecules
        raise SystemExit("--strategies mask_reference: only with --dataset rmd17:<molecule>")
    if args.tip3p_molecules is None:
        args.tip3p_molecules = 64 if transfer else 32
    if args.tip3p_box is None:
        args.tip3p_box = 12.4447 if transfer else 9.86


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
    if kind == "rmd17" and rmd17_sources.pretrain_molecules(args):
        rmd17_sources.add_multi_molecule_pool(args, out, plan, root)
        return plan
    if kind == "rmd17":
        plan.sources = {"pretrain_molecules": [mol], "target_molecule": mol,
                        "pretrain_frames_per_molecule": {mol: int(len(plan.pool_idx))},
                        "pretrain_val_frames_per_molecule": {mol: int(len(plan.val_idx))},
                        "pretrain_val": "the fine-tuning validation frames (unlabelled)"}
    plan.pretrain_file = write_unlabelled_pool(plan, out)
    return plan


def _add_transfer_sources(args: argparse.Namespace, out: Path, plan: DatasetPlan) -> None:
    """water-dft-transfer: the TIP3P pool (labelled + unlabelled copies) and the unlabelled DFT
    candidates as pretraining sets (experiments/water_transfer.py)."""
    src = water_transfer.build_sources(out, args, plan.labelled, plan.pool_idx)
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
    if max(args.labels) > args.labelled_pool:
        raise ValueError(f"--labels {max(args.labels)} exceeds --labelled-pool {args.labelled_pool}")
    src = water_sources.build_sources(out, args)
    pool, val = water_sources.labelled_split(args)
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


def write_unlabelled_pool(plan: DatasetPlan, out: Path) -> Path:
    """Pool + validation configurations WITHOUT energies/forces: the pretraining data file.

    Frame order: the pool (sorted indices), then the validation frames.
    """
    from maskpot.data import io

    path = out / "data" / "pretrain_unlabelled.npz"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    io.write_unlabelled_pool(path, [(plan.labelled, np.concatenate([plan.pool_idx, plan.val_idx]))],
                             metadata={"source": str(plan.labelled), "pool_indices": plan.pool_idx.tolist(),
                                       "val_indices": plan.val_idx.tolist()})
    return path


_HASHES: Dict[Tuple[str, Optional[str]], str] = {}


def file_data_hash(path: Path, fmt: Optional[str] = None) -> str:
    """The ``data_hash`` maskpot-train computes for ``path`` read with ``data.format`` ``fmt`` and
    default read options (the driver sets neither units nor strictness), cached per file."""
    from maskpot.data.dataset import AtomicDataset
    from maskpot.data.io import read_dataset

    key = (str(Path(path).resolve()), fmt)
    if key not in _HASHES:
        _HASHES[key] = AtomicDataset(read_dataset(path, format=fmt)).data_hash()
    return _HASHES[key]


def _write_splits(path: Path, n: int, train: np.ndarray, val: np.ndarray, test: np.ndarray, seed: int,
                  data_hash: Optional[str] = None) -> Dict[str, int]:
    """A maskpot splits file whose metadata matches ``data.splits`` (so maskpot reuses it silently),
    with the ``data_hash`` of the file it indexes (maskpot-train checks it). An existing file must
    hold the same splits; one written before hashes were stored gets the hash added."""
    from maskpot.data.dataset import load_splits, save_splits

    counts = {"train": int(len(train)), "val": int(len(val)), "test": int(len(test))}
    splits = {"train": np.sort(train).astype(np.int64), "val": np.sort(val).astype(np.int64),
              "test": np.sort(test).astype(np.int64)}
    if path.is_file():
        old = load_splits(path, n)
        if any(not np.array_equal(old[k], splits[k]) for k in splits):
            raise RuntimeError(f"{path} holds different splits than this experiment asks for: use another --out")
        with np.load(path, allow_pickle=False) as z:
            stored = str(z["data_hash"]) if "data_hash" in z.files else None
        if data_hash is None or stored == data_hash:
            return counts
        if stored is not None:
            load_splits(path, n, data_hash)  # raises: the file was made for other data
    path.parent.mkdir(parents=True, exist_ok=True)
    save_splits(path, splits, n, metadata={"seed": seed, "counts": counts, "sizes": counts}, data_hash=data_hash)
    return counts


def labelled_subset(plan: DatasetPlan, seed: int, n_label: int) -> np.ndarray:
    """The first ``n_label`` frames of a seed-dependent permutation of the pool (nested in N)."""
    order = np.random.default_rng([12345, seed]).permutation(len(plan.pool_idx))
    return plan.pool_idx[order[:n_label]]
