"""The rMD17 multi-molecule pretraining pool of ``compare_pretraining.py --dataset rmd17:<molecule>
--pretrain-molecules all|MOL ...``: which molecules, which train_01 frames (never the target's
fine-tuning validation frames nor any test_01 frame), and the unlabelled pretraining file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from experiments.grid import RMD17_MOLECULES, DatasetPlan, parse_dataset


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


def add_multi_molecule_pool(args: argparse.Namespace, out: Path, plan: DatasetPlan, root: Path) -> None:
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
