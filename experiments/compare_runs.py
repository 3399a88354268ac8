"""Run planning and execution of ``compare_pretraining.py``: the pretraining and fine-tuning runs
(``Run``: base config + ``--set`` overrides), their resolved configs, the identical-budget check,
and running / resuming / skipping each one through maskpot's public training API.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from experiments.compare_datasets import _write_splits, file_data_hash, labelled_subset
from experiments.grid import REPO, DatasetPlan
from experiments.rmd17_sources import pretrain_molecules


@dataclass
class Run:
    name: str
    stage: str  # "pretrain" | "finetune"
    strategy: str  # an arm of --strategies (compare_datasets.ALL_STRATEGIES)
    seed: int
    n_label: Optional[int]
    base_config: Path
    overrides: List[str]
    dir: Path
    depends: Optional[str] = None


#: Opt-in pretraining arms (issue 12), planned after the original five.
EXTRA_PRETRAIN = ("denoise_1A", "mask_denoise", "supervised_2x", "mask_reference", "mask_position", "joint")
#: Objective sections of the issue-33 arms (on the denoise base config, whose task is overridden):
#: every element masked at ratio 0.15 (mask_position: neighbours within 3 Å; joint: bonded
#: neighbours, 1.6 Å, the rest denoised with σ = 0.2 Å, both losses weighted 1).
POSITION_OBJECTIVES = {
    "mask_position": "{mask_elements: all, mask_ratio: 0.15, mask_radius: 3.0, radius_weight: 1.0}",
    "joint": "{joint_mask: mask_position, mask_elements: all, mask_ratio: 0.15, mask_radius: 1.6, radius_weight: 1.0, noise_sigma: 0.2, mask_weight: 1.0, denoise_weight: 1.0}",
}
#: Non-supervised stages started from ``pretrain_mask_s<seed>`` (mask_supervised is handled with the
#: energy/force stages); requesting any of FROM_MASK or mask_supervised runs the mask stage.
SEQUENCE_FROM_MASK = ("mask_denoise",)
FROM_MASK = ("mask_supervised", *SEQUENCE_FROM_MASK)
#: Gaussian position noise (Å) of the denoising arms.
NOISE_SIGMA = {"denoise": 0.2, "denoise_1A": 1.0, "mask_denoise": 0.2}
#: Pretraining epochs in units of --pretrain-epochs.
EPOCH_FACTOR = {"supervised_2x": 2}


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
    names = [ds["split"] for ds in sets.values()]
    shared = sorted({n for n in names if names.count(n) > 1})
    if shared:  # a splits file carries the hash of the one file it indexes, which maskpot-train checks
        raise ValueError(f"every pretraining set needs its own splits file; shared: {shared}")
    for key, ds in sets.items():
        n_tr, n_va = int(ds["n_train"]), int(ds["n_val"])
        split = out / "splits" / ds["split"]
        set_counts[key] = (_write_splits(split, n_tr + n_va, np.arange(n_tr), np.arange(n_tr, n_tr + n_va),
                                         np.zeros(0, dtype=np.int64), args.data_seed,
                                         data_hash=file_data_hash(ds["file"], "npz")), split)
    common_model = model_overrides(args, plan)
    threads = [f"train.num_threads={args.threads}"] if args.threads else []
    patience = int(getattr(args, "patience", 0) or 0)
    pseeds = list(getattr(args, "pretrain_seeds", None) or args.seeds)
    # the fine-tuning loss (also the supervised pretraining loss on TIP3P labels)
    ef_objective = ["objective.energy_weight=1.0", "objective.force_weight=500.0", "objective.loss_kind=l1",
                    "objective.per_atom_energy=true"]
    # pretraining stages: mask_supervised and mask_denoise continue the mask run (in sequence), so
    # mask runs when either is asked for; the opt-in arms come last (mask before mask_denoise)
    pre_strats = [s for s in ("denoise", "mask", "supervised", "mask_supervised", "mask_dft", *EXTRA_PRETRAIN)
                  if s in args.strategies or (s == "mask" and any(a in args.strategies for a in FROM_MASK))]
    for seed in pseeds:
        for strat in pre_strats:
            # every stage: --pretrain-epochs (supervised_2x: twice that, the equal-compute control of
            # mask_supervised = mask + supervised), the same batch, lr schedule and warm-up
            pre_train = [
                f"train.epochs={args.pretrain_epochs * EPOCH_FACTOR.get(strat, 1)}",
                f"train.batch_size={args.pretrain_batch_size}",
                f"train.eval_batch_size={args.eval_batch_size}", f"train.lr={args.pretrain_lr}",
                f"train.min_lr={args.pretrain_lr / 100}", "train.scheduler=cosine",
                f"train.warmup_epochs={1 if args.pretrain_epochs > 1 else 0}", "train.ema_decay=0.0",
                "train.early_stopping_patience=0", f"train.seed={seed}", *threads,
            ]
            task, set_key = _pretrain_stage(strat)
            if set_key not in sets:
                raise ValueError(f"--strategies {strat}: needs --dataset water-dft-transfer")
            counts, split = set_counts[set_key]
            data = [f"data.path={sets[set_key]['file']}", "data.format=npz", "data.test_path=null",
                    f"data.splits={_yaml_flow(counts)}", f"data.split_file={split}", f"data.seed={args.data_seed}"]
            obj = ([f"objective={{noise_sigma: {NOISE_SIGMA[strat]}, denoise_target: noise}}"]
                   if strat in NOISE_SIGMA else [])
            if strat in POSITION_OBJECTIVES:
                obj = [f"objective={POSITION_OBJECTIVES[strat]}"]
            variant = "reference" if strat == "mask_reference" else getattr(args, "mask_variant", None)
            if task == "mask" and variant:  # the reference variant comes with the reference's loss
                obj = [f"objective.mask_variant={variant}"]
                obj += ["objective.cosine_form=mean"] if variant == "reference" else []
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
            elif strat in SEQUENCE_FROM_MASK:  # mask_denoise: denoising from the mask checkpoint (in sequence)
                # Masking and denoising train the same output (the ``forces`` of the energy head; no
                # separate pretext head unless objective.use_vector_head), so nothing is created or
                # reset: every tensor of the mask checkpoint is loaded, the architecture comes from it
                # (resolve() drops the model keys; in commands.sh they override the base config's
                # model section with the mask stage's own, which the checkpoint check accepts).
                dep = f"pretrain_mask_s{seed}"
                model = [*common_model, f"init.checkpoint={out / 'runs' / dep / 'best.pt'}", "init.use_ema=true",
                         "init.reset_heads=false", "init.freeze_encoder=false"]
                base = plan.configs[task]
            else:
                # the issue-33 tasks have no config of their own: the denoise one, task overridden
                base_key = strat if strat in plan.configs else ("denoise" if strat in POSITION_OBJECTIVES else task)
                model, base = common_model, plan.configs[base_key]
            runs.append(Run(name, "pretrain", strat, seed, None, base,
                            [f"task={task}", *obj, *data, *model, *pre_train,
                             "output.progress=false", "output.plot=false", f"output.dir={out / 'runs' / name}"],
                            out / "runs" / name, dep))
    for n_label in ([] if getattr(args, "pretrain_only", False) else args.labels):
        for seed in args.seeds:
            train_idx = labelled_subset(plan, seed, n_label)
            split = out / "splits" / f"finetune_n{n_label}_s{seed}.npz"
            counts = _write_splits(split, plan.n_frames, train_idx, plan.val_idx, plan.test_idx, args.data_seed,
                                   data_hash=file_data_hash(plan.labelled))
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
            "mask_dft": ("mask", "dft"), "denoise_1A": ("denoise", "unlabelled"),
            "mask_denoise": ("denoise", "unlabelled"), "supervised_2x": ("energy_force", "labelled"),
            "mask_reference": ("mask", "unlabelled"), "mask_position": ("mask_position", "unlabelled"),
            "joint": ("joint", "unlabelled")}[strat]


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
