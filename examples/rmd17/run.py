#!/usr/bin/env python
"""rMD17 molecule, end to end: masked pretraining → fine-tuning (vs scratch) → export → ASE MD.

    python examples/rmd17/run.py [--molecule ethanol] [--data ../shared/data/rmd17] [--out runs/rmd17]

Uses the revised MD17 files ``rmd17_<molecule>_train_01.npz`` (training/validation frames;
also the unlabelled pretraining set) and ``rmd17_<molecule>_test_01.npz`` (test set) from
``../shared/data/rmd17`` (relative to the repository root; ``--data`` overrides). Small
defaults (a few hundred training frames, a small PaiNN, short MD) run in minutes on a CPU;
``--full`` is the accuracy protocol of ``configs/rmd17_accurate.yaml`` (950/50 frames, TensorNet
64x2, MSE energy+forces, cosine schedule, EMA; from scratch, or ``--pretrain`` for pretraining
first (``--pretrain-task``: denoising by default, or masking), by default on the unlabelled train_01 frames of every rMD17 molecule in
``--data``, done once under ``--out`` for every molecule) followed by 10 ps of ASE Langevin NVT at 300 K and an NVE run for the drift.

Outputs (under ``--out/<molecule>``): ``train/{mask,finetune,scratch}/`` or, with ``--full``,
``train/accurate/`` (maskpot-train runs; ``--full --pretrain``'s shared pretraining is
``--out/train/<task>_all_molecules`` on ``--out/pretrain_pool.npz``), ``model.pt``,
``start.xyz``, ``md/`` (maskpot-md ase: traj.extxyz, md.csv, result.json), ``nve/`` (a short NVE
run for the energy drift), ``analysis/`` and ``report.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "rmd17"

SMALL = dict(splits="{train: 200, val: 50, test: 0}", model=["model.name=painn", "model.hidden_channels=32",
             "model.num_layers=2", "model.cutoff=5.0"], pretrain_epochs=5, finetune_epochs=30, batch_size=16,
             lr=["train.lr=1e-3", "train.min_lr=1e-5"], md_steps=2000, nve_steps=1000, report_every=20)
FULL = dict(splits="{train: 950, val: 50, test: 0}", model=[], pretrain_epochs=None, finetune_epochs=None,
            batch_size=None, lr=[], md_steps=20000, nve_steps=4000, report_every=50)


def _accurate_model(channels: Optional[int] = None, layers: Optional[int] = None) -> Dict[str, Any]:
    """The model block of ``configs/rmd17_accurate.yaml`` with ``--channels`` / ``--layers`` applied
    (so pretraining builds the same network as fine-tuning)."""
    import yaml

    model = dict(yaml.safe_load((CONFIGS / "rmd17_accurate.yaml").read_text())["model"])
    if channels:
        model["hidden_channels"] = channels
    if layers:
        model["num_layers"] = layers
    return model


def check_same_model(run: Path, overrides: List[str]) -> None:
    """Refuse to reuse a run (a shared pretraining, a half-done fine-tuning) whose stored network size
    differs from the ``model.*`` overrides asked for now: its weights would not load, or the table
    would mix two models in one row."""
    import yaml

    cfg_file = run / "config.yaml"
    if not cfg_file.exists():
        return
    stored = (yaml.safe_load(cfg_file.read_text()) or {}).get("model", {})
    asked = dict(o[len("model."):].split("=", 1) for o in overrides if o.startswith("model."))
    for key in ("name", "hidden_channels", "num_layers"):
        if key in stored and key in asked and str(stored[key]) != asked[key]:
            raise SystemExit(f"{cfg_file}: model.{key} is {stored[key]!r}, this command asks for {asked[key]!r} "
                             f"(--channels / --layers); use another --out for another model size")


#: Pretraining on the ten-molecule pool (~9.8k frames): 10 epochs, batch 16, lr 1e-3 cosine
#: (experiments/RESULTS.md item 3 used 15 epochs with PaiNN 64x2); masking uses the `local` variant.
POOL_PRETRAIN = ("train.epochs=10", "train.batch_size=16", "train.lr=1e-3", "train.min_lr=1e-5")
TASK_OVERRIDES = {"mask": ["objective.mask_variant=local"], "denoise": []}


def molecule_pool(data: Path, out: Path, splits: Dict[str, int], seed: int) -> Tuple[Path, List[int]]:
    """(pool file, species): the unlabelled ``train_01`` frames of every rMD17 molecule in ``data``,
    less each molecule's fine-tuning validation frames, written once to ``out/pretrain_pool.npz``.

    The validation frames are those maskpot-train draws for that molecule (``make_splits`` with the
    fine-tuning ``splits`` sizes and ``seed``), so one pool, and one pretraining on it, serves the
    fine-tuning of every molecule under ``out`` without any of them validating on frames it was
    pretrained on. test_01 files are never read."""
    import numpy as np

    from maskpot.data.dataset import make_splits
    from maskpot.data.io import read_npz, write_unlabelled_pool

    pool = out / "pretrain_pool.npz"
    files = sorted(data.glob("rmd17_*_train_01.npz"))
    if not files:
        raise SystemExit(f"{data}: no rMD17 train_01 files (rmd17_<molecule>_train_01.npz) for the pretraining pool")
    want = {"molecule_files": [f.name for f in files], "left_out": "each molecule's fine-tuning validation frames",
            "finetune_splits": dict(splits), "finetune_seed": int(seed)}
    if pool.exists():
        with np.load(pool, allow_pickle=False) as z:
            meta = json.loads(str(z["metadata"])) if "metadata" in z.files else {}
        if any(meta.get(k) != v for k, v in want.items()):
            raise SystemExit(f"{pool} was written for other molecules or fine-tuning splits "
                             f"(stored {({k: meta.get(k) for k in want})}, wanted {want}): use another --out")
    else:
        def keep(n: int) -> np.ndarray:
            return np.setdiff1d(np.arange(n), make_splits(n, splits, seed)["val"])

        out.mkdir(parents=True, exist_ok=True)
        n = write_unlabelled_pool(pool, [(f, keep) for f in files], metadata=want)
        print(f"  pretraining pool: {n} unlabelled frames of {len(files)} molecules -> {pool}")
    species = sorted({int(z) for s in read_npz(pool) for z in np.unique(s.numbers)})
    return pool, species


def check_pool_splits(run: Path, n: int, splits: Dict[str, int], seed: int) -> None:
    """An existing fine-tuning splits file must hold the validation frames the pool left out
    (else that run would validate on pretraining frames): a clear error, not a silent leak."""
    import numpy as np

    from maskpot.data.dataset import load_splits, make_splits

    f = run / "splits.npz"
    if f.exists() and not np.array_equal(load_splits(f, n)["val"], make_splits(n, splits, seed)["val"]):
        raise SystemExit(f"{f}: its validation frames are not the ones the shared pretraining pool left out "
                         f"(made with other sizes or seed): use another --out")


def banner(msg: str) -> None:
    print(f"\n=== {msg} [{time.strftime('%H:%M:%S')}]", flush=True)


def train(name: str, config: str, out: Path, overrides: List[str], init: Optional[Path] = None) -> Path:
    from maskpot.training.cli import train_stage

    run = out / "train" / name
    check_same_model(run, overrides)
    return train_stage(CONFIGS / config, run, overrides, init, announce=banner)


def md(argv: List[str], out_dir: Path) -> Dict[str, Any]:
    from maskpot.md.cli import EXIT_UNSTABLE, md_main

    res = out_dir / "result.json"
    if not (res.exists() and json.loads(res.read_text()).get("status") in ("ok", "unstable")):
        banner("maskpot-md " + " ".join(argv + ["--out", str(out_dir)]))
        rc = md_main(argv + ["--out", str(out_dir), "--resume"])
        if rc not in (0, EXIT_UNSTABLE):
            raise SystemExit(f"maskpot-md failed (exit {rc})")
    return json.loads(res.read_text())


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--molecule", default="ethanol", help="rMD17 molecule (default ethanol)")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help=f"rMD17 folder (default {DEFAULT_DATA})")
    ap.add_argument("--out", default="runs/rmd17", help="output folder")
    ap.add_argument("--full", action="store_true", help="the configs' full protocol (hours on a CPU)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--epochs", type=int, default=None, help="override the fine-tuning / --full epochs")
    ap.add_argument("--pretrain", action="store_true", help="--full: pretrain (--pretrain-task), then fine-tune "
                    "with the accurate protocol (default: from scratch)")
    ap.add_argument("--pretrain-task", choices=("denoise", "mask"), default="denoise",
                    help="--full --pretrain: denoising (default; sigma 0.2 A, it beat masking on rMD17 at every "
                    "training-set size, experiments/RESULTS.md) or masked-H pretraining")
    ap.add_argument("--pretrain-pool", choices=("all", "own"), default="all",
                    help="--full --pretrain: pretrain on the unlabelled train_01 frames of every rMD17 molecule in "
                    "--data (all, default; the setting where masking helped, experiments/RESULTS.md) or of the "
                    "target molecule only (own)")
    ap.add_argument("--channels", type=int, default=None,
                    help="--full: TensorNet channels (default: configs/rmd17_accurate.yaml's, 64); use its own --out")
    ap.add_argument("--layers", type=int, default=None,
                    help="--full: TensorNet interaction layers (default: the config's, 2); use its own --out")
    ap.add_argument("--weight-decay", type=float, default=None,
                    help="--full: AdamW weight decay of the fine-tuning (default: the config's, 0). 0.01 lowered "
                    "ethanol's test forces 4 %% at 300 epochs (examples/rmd17/README.md); 0.1 was worse")
    ap.add_argument("--seed", type=int, default=0,
                    help="fine-tuning seed (new layers' initial weights, batch order); the splits and the shared "
                    "pretraining stay. Seed N > 0 writes <out>/<molecule>_seed<N> (one folder per seed, for the "
                    "spread over seeds)")
    args = ap.parse_args(argv)
    if args.seed < 0:
        ap.error(f"--seed {args.seed}: expected a seed >= 0")
    for flag, value in (("--channels", args.channels), ("--layers", args.layers)):
        if value is not None and (value < 1 or not args.full):
            ap.error(f"{flag} {value}: expected a positive integer, with --full")
    if args.weight_decay is not None and (args.weight_decay < 0 or not args.full):
        ap.error(f"--weight-decay {args.weight_decay}: expected a number >= 0, with --full")
    p = dict(FULL if args.full else SMALL)
    import torch

    torch.set_num_threads(args.threads)
    data = Path(args.data)
    train_file = data / f"rmd17_{args.molecule}_train_01.npz"
    test_file = data / f"rmd17_{args.molecule}_test_01.npz"
    for f in (train_file, test_file):
        if not f.exists():
            raise SystemExit(f"rMD17 file not found: {f} (use --data / --molecule)")
    out = Path(args.out) / (args.molecule if args.seed == 0 else f"{args.molecule}_seed{args.seed}")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    common = [f"train.num_threads={args.threads}", "output.tensorboard=false"] + list(p["lr"])
    if p["batch_size"]:
        common.append(f"train.batch_size={p['batch_size']}")
    pre = [f"train.epochs={p['pretrain_epochs']}"] if p["pretrain_epochs"] else []
    ft = [f"train.epochs={p['finetune_epochs']}", "train.early_stopping_patience=0"] if p["finetune_epochs"] else []
    if args.epochs:
        ft = [f"train.epochs={args.epochs}"]
    ft.append(f"train.seed={args.seed}")
    if args.weight_decay is not None:
        ft.append(f"train.weight_decay={args.weight_decay:g}")
    dat = [f"data.path={train_file}", f"data.test_path={test_file}", f"data.splits={p['splits']}"]
    runs: Dict[str, Path] = {}
    if args.full:
        model_keys = [f"model.{k}={v}" for k, v in _accurate_model(args.channels, args.layers).items()]
        if args.pretrain:
            task = args.pretrain_task
            pre_config = f"rmd17_pretrain_{task}.yaml"
            if args.pretrain_pool == "all":
                # one pretraining under --out for every molecule: the pool leaves out each one's
                # fine-tuning validation frames (the splits below: sizes of FULL, the config's seed)
                import yaml

                from maskpot.data.io import read_dataset

                sizes = yaml.safe_load(p["splits"])
                seed = int(yaml.safe_load((CONFIGS / "rmd17_accurate.yaml").read_text())["data"]["seed"])
                check_pool_splits(out / "train" / "accurate", len(read_dataset(train_file)), sizes, seed)
                pool, species = molecule_pool(data, Path(args.out), sizes, seed)
                pre_data = [f"data.path={pool}", "data.splits={train: 0.98, val: 0.02, test: 0.0}",
                            f"model.species={species}"] + list(POOL_PRETRAIN) + TASK_OVERRIDES[task]
                dat = dat + [f"model.species={species}"]
                runs["pretrain"] = train(f"{task}_all_molecules", pre_config, Path(args.out),
                                         common + pre_data + model_keys)
            else:
                runs["pretrain"] = train(task, pre_config, out, common + [f"data.path={train_file}"] + model_keys)
            runs["accurate"] = train("accurate", "rmd17_accurate.yaml", out, common + ft + dat + model_keys,
                                     init=runs["pretrain"] / "best.pt")
        else:
            runs["accurate"] = train("accurate", "rmd17_accurate.yaml", out, common + ft + dat + model_keys)
        deployed = runs["accurate"]
    else:
        runs["mask"] = train("mask", "rmd17_pretrain_mask.yaml", out, common + p["model"] + pre + [f"data.path={train_file}"])
        runs["finetune"] = train("finetune", "rmd17_finetune.yaml", out, common + ft + dat, init=runs["mask"] / "best.pt")
        runs["scratch"] = train("scratch", "rmd17_scratch.yaml", out, common + p["model"] + ft + dat)
        deployed = runs["finetune"]
    t_train = time.perf_counter() - t0

    from maskpot.deploy.export import export_model

    model = out / "model.pt"
    if not model.exists():
        banner(f"exporting {deployed / 'best.pt'}")
        export_model(deployed / "best.pt", model, dtype="float64")

    import ase.io

    from maskpot.data.io import read_rmd17

    start = out / "start.xyz"
    if not start.exists():
        ase.io.write(start, read_rmd17(test_file, index=0)[0].to_ase(), format="extxyz")
    cond = ["--model", str(model), "--structure", str(start), "--timestep", "0.5", "--temperature", "300",
            "--report-every", str(p["report_every"]), "--minimize", "0"]
    t1 = time.perf_counter()
    res = {"nvt": md(["ase"] + cond + ["--steps", str(p["md_steps"]), "--ensemble", "nvt", "--friction", "1"], out / "md")}
    res["nve"] = md(["ase"] + cond + ["--steps", str(p["nve_steps"]), "--ensemble", "nve", "--report-every", "5"], out / "nve")
    t_md = time.perf_counter() - t1

    from maskpot.md.analysis import analyze_run
    from maskpot.md.report import markdown_table
    from maskpot.utils import atomic_write_text

    ana = {k: analyze_run(out / d / "traj.extxyz", out=out / "analysis" / d) for k, d in (("nvt", "md"), ("nve", "nve"))
           if (out / d / "traj.extxyz").exists()}
    rows = []
    for name in runs:
        f = runs[name] / "test_metrics.json"
        if name not in ("mask", "pretrain") and f.exists():
            tm = json.loads(f.read_text())
            rows.append((name, tm.get("energy_mae_meV_per_atom"), tm.get("energy_mae_meV"), tm.get("force_mae_meV_per_A"),
                         tm.get("n_frames")))
    stages = ("scratch" if not args.pretrain else f"{args.pretrain_task} pretraining → fine-tuning") if args.full \
        else "masked pretraining → fine-tuning (vs scratch)"
    lines = [f"# rMD17 {args.molecule}: {stages} → ASE MD", "",
             f"Training frames: {p['splits']} of `{train_file.name}`; test: all of `{test_file.name}`.", "",
             markdown_table(["run", "energy MAE (meV/atom)", "energy MAE (meV)", "force MAE (meV/Å)", "test frames"], rows)]
    mrows = []
    for k, r in res.items():
        st = ana.get(k, {}).get("stats", {})
        status = r["status"] if r["status"] == "ok" else f"UNSTABLE at step {r.get('failed_step')}: {r.get('reason')}"
        mrows.append((k, status, r.get("steps_done"), st.get("temperature_K_mean"), st.get("drift_meV_per_atom_per_ps"),
                      r.get("speed_ns_per_day")))
    lines += [f"## ASE MD ({deployed.name} model, 300 K, 0.5 fs)", "",
              markdown_table(["run", "status", "steps", "T mean (K)", "drift (meV/atom/ps)", "speed (ns/day)"], mrows),
              "Plots: [analysis/md/report.md](analysis/md/report.md), [analysis/nve/report.md](analysis/nve/report.md)", "",
              f"Timings: training {t_train:.0f} s, MD {t_md:.0f} s, total {time.perf_counter() - t0:.0f} s."]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    print(f"\nreport: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
