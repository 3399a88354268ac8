#!/usr/bin/env python
"""Water box, end to end, in one command: TIP3P data → masked pretraining → fine-tuning (vs
scratch, optionally vs denoising) → export → MD in OpenMM → comparison with the TIP3P teacher.

    python examples/water_box/run.py [--out runs/water_box] [--full] [--denoise]

Stages (each is skipped when its output already exists, so an interrupted run continues):

1. ``data/``       flexible-TIP3P frames with OpenMM (:func:`maskpot.data.tip3p.generate_tip3p`):
                   unlabelled pretraining trajectories and an independent labelled trajectory
                   (different seeds) split into train/val/test for fine-tuning.
2. ``train/``      ``maskpot-train`` entry points: ``mask`` (pretraining), ``finetune`` (from it),
                   ``scratch`` (same fine-tuning config, random init), ``denoise`` + ``finetune_denoise``
                   with ``--denoise``.
3. ``model.pt``    export of the fine-tuned model (:func:`maskpot.deploy.export.export_model`).
4. ``md_tip3p/``   classical flexible-TIP3P MD (minimise, equilibrate, NVT production); its
                   equilibrated start ``topology.pdb`` is also the learned model's start.
   ``md_learned/`` NVT MD of the learned potential in OpenMM (same box, start, thermostat).
   ``md_learned_nve/``, ``md_tip3p_nve/``  short NVE runs from the NVT ends: energy drift.
5. ``analysis/`` + ``report.md``: RDFs (learned vs TIP3P), learning curves, a table of numbers.

Small defaults finish in about 15 minutes on 2 CPU cores; ``--full`` uses the paper's sizes
(258 molecules in a 20 Å box, 10 trajectories x 1000 frames, the configs' epochs and model).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"

SMALL = dict(
    n_molecules=64, box=12.42, pretrain_seeds=[1, 2], pretrain_frames=60, label_seed=3, label_frames=200,
    # labelled frames 50 fs apart: less correlated than the paper's 25 fs, so 120 of them cover more
    every=50, label_every=100, equilibration_steps=2000, label_splits="{train: 120, val: 20, test: 60}",
    # PaiNN, small and fast: 64 channels, 2 layers, 3.5 Å (the box allows up to 6.2 Å). Measured on
    # this data: ~45 meV/Å force MAE after 20-25 epochs from scratch, stable NVT MD.
    model=["model.name=painn", "model.hidden_channels=64", "model.num_layers=2", "model.cutoff=3.5"],
    pretrain_epochs=6, finetune_epochs=20, batch_size=4, lr=["train.lr=3e-3", "train.min_lr=1e-5"],
    md_equilibrate=2000, md_equilibrate_learned=500, md_steps=1500, md_report=25, nve_steps=400, friction=5.0,
)
FULL = dict(
    n_molecules=258, box=20.0, pretrain_seeds=list(range(1, 10)), pretrain_frames=1000, label_seed=10,
    label_frames=1000, every=50, label_every=50, equilibration_steps=None, label_splits="{train: 0.8, val: 0.1, test: 0.1}",
    model=[], pretrain_epochs=None, finetune_epochs=None, batch_size=None, lr=[],
    md_equilibrate=10000, md_equilibrate_learned=2000, md_steps=20000, md_report=100, nve_steps=4000, friction=1.0,
)


def banner(msg: str) -> None:
    print(f"\n=== {msg} [{time.strftime('%H:%M:%S')}]", flush=True)


def stage_data(out: Path, p: Dict[str, Any]) -> Dict[str, Path]:
    from maskpot.data.tip3p import generate_tip3p, save_tip3p_npz

    paths = {"pretrain": out / "data" / "tip3p_pretrain.npz", "labelled": out / "data" / "tip3p_labelled.npz"}
    for key, seeds, frames, every in (("pretrain", p["pretrain_seeds"], p["pretrain_frames"], p["every"]),
                                      ("labelled", [p["label_seed"]], p["label_frames"], p["label_every"])):
        if paths[key].exists():
            print(f"  {paths[key]} exists, skipping")
            continue
        banner(f"generating {key} TIP3P data: {p['n_molecules']} molecules, {p['box']} Å, seeds {seeds}, {frames} frames each")
        data = generate_tip3p(n_molecules=p["n_molecules"], box=p["box"], n_frames=frames, every=every, seed=seeds,
                              equilibration_steps=p["equilibration_steps"], progress=True,
                              checkpoint=paths[key].with_suffix(".partial.npz"))
        save_tip3p_npz(paths[key], data)
        paths[key].with_suffix(".partial.npz").unlink(missing_ok=True)
    return paths


def train(name: str, config: str, out: Path, overrides: List[str], init: Optional[Path] = None) -> Path:
    from maskpot.training.cli import train_main

    run = out / "train" / name
    if (run / "test_metrics.json").exists() or (run / "run.json").exists() and json.loads((run / "run.json").read_text()).get("status") == "finished":
        print(f"  {run} finished, skipping")
        return run
    argv = [str(CONFIGS / config), "--output", str(run)]
    for o in overrides:
        argv += ["--set", o]
    if init is not None:
        argv += ["--init", str(init)]
    if (run / "last.pt").exists():
        argv = ["--resume", "--output", str(run)]
    banner(f"training {name}: maskpot-train {' '.join(argv)}")
    rc = train_main(argv)
    if rc != 0:
        raise SystemExit(f"training {name} failed (exit {rc})")
    return run


def stage_train(out: Path, p: Dict[str, Any], data: Dict[str, Path], denoise: bool) -> Dict[str, Path]:
    common = [f"train.num_threads={p['threads']}", "output.tensorboard=false"]
    common += list(p["lr"])
    arch = list(p["model"])  # fine-tuning takes the architecture from the pretrained checkpoint
    if p["batch_size"]:
        common.append(f"train.batch_size={p['batch_size']}")
    pre_epochs = [f"train.epochs={p['pretrain_epochs']}"] if p["pretrain_epochs"] else []
    ft_epochs = [f"train.epochs={p['finetune_epochs']}", "train.early_stopping_patience=0"] if p["finetune_epochs"] else []
    ft_data = [f"data.path={data['labelled']}", f"data.splits={p['label_splits']}", "data.seed=0"]
    runs: Dict[str, Path] = {}
    runs["mask"] = train("mask", "water_pretrain_mask.yaml", out, common + arch + pre_epochs + [f"data.path={data['pretrain']}"])
    runs["finetune"] = train("finetune", "water_finetune.yaml", out, common + ft_epochs + ft_data, init=runs["mask"] / "best.pt")
    runs["scratch"] = train("scratch", "water_scratch.yaml", out,
                            common + arch + ft_epochs + ft_data + ["objective.per_atom_energy=true"])
    if denoise:
        runs["denoise"] = train("denoise", "water_pretrain_denoise.yaml", out, common + arch + pre_epochs + [f"data.path={data['pretrain']}"])
        runs["finetune_denoise"] = train("finetune_denoise", "water_finetune.yaml", out, common + ft_epochs + ft_data,
                                         init=runs["denoise"] / "best.pt")
    return runs


def stage_export(out: Path, run: Path) -> Path:
    from maskpot.deploy.export import export_model

    path = out / "model.pt"
    if not path.exists():
        banner(f"exporting {run / 'best.pt'} -> {path}")
        from maskpot.data.neighbors import vesin_available

        # vesin's C++ cell list is ~5x faster than the pure-torch one (benchmarks/RESULTS.md)
        backend = "vesin" if vesin_available() else "torch"
        meta = export_model(run / "best.pt", path, dtype="float32", neighbor_backend=backend)
        print(f"  {meta['model']} ({meta['kind']}-centric), cutoff {meta['cutoff']} Å, species {meta['species']}")
    return path


def md(args: List[str], out_dir: Path) -> Dict[str, Any]:
    """Run ``maskpot-md``; return its result.json (status 'ok' or 'unstable' — never raises on instability)."""
    from maskpot.md.cli import md_main

    res_path = out_dir / "result.json"
    if res_path.exists() and json.loads(res_path.read_text()).get("status") in ("ok", "unstable"):
        print(f"  {out_dir} done, skipping")
        return json.loads(res_path.read_text())
    argv = args + ["--out", str(out_dir), "--resume"]
    banner("maskpot-md " + " ".join(argv))
    rc = md_main(argv)
    if rc not in (0, 2):
        raise SystemExit(f"maskpot-md failed (exit {rc})")
    return json.loads(res_path.read_text())


def stage_md(out: Path, p: Dict[str, Any], model: Path) -> Dict[str, Dict[str, Any]]:
    # friction 5/ps: these runs last ~1 ps, so the thermostat must bring T to 300 K quickly
    cond = ["--temperature", "300", "--timestep", "0.5", "--friction", str(p["friction"]),
            "--report-every", str(p["md_report"])]
    res: Dict[str, Dict[str, Any]] = {}
    res["tip3p"] = md(["openmm", "--tip3p", "--water", str(p["n_molecules"]), "--box", str(p["box"]),
                       "--equilibrate", str(p["md_equilibrate"]), "--steps", str(p["md_steps"]), "--seed", "7"] + cond,
                      out / "md_tip3p")
    start = out / "md_tip3p" / "topology.pdb"
    res["learned"] = md(["openmm", "--model", str(model), "--pdb", str(start), "--steps", str(p["md_steps"]),
                         "--minimize", "100", "--equilibrate", str(p["md_equilibrate_learned"]), "--seed", "7"] + cond,
                        out / "md_learned")
    # NVE from the end of each NVT run: energy conservation / drift
    for name, src in (("learned_nve", "md_learned"), ("tip3p_nve", "md_tip3p")):
        final = out / src / "final.pdb"
        if not final.exists():
            print(f"  no {final} (the NVT run did not finish): skipping {name}")
            continue
        pot = ["--model", str(model)] if name.startswith("learned") else ["--tip3p"]
        nve = ["--report-every", "10", "--steps", str(p["nve_steps"]), "--minimize", "0", "--ensemble", "nve",
               "--timestep", "0.5", "--temperature", "300", "--seed", "8"]
        res[name] = md(["openmm"] + pot + ["--pdb", str(final)] + nve, out / f"md_{name}")
    return res


# ------------------------------------------------------------------------------------------
# report


def _read_csv(path: Path) -> Dict[str, np.ndarray]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    out: Dict[str, np.ndarray] = {}
    for k in rows[0] if rows else []:
        vals = []
        for r in rows:
            try:
                vals.append(float(r[k]))
            except (TypeError, ValueError):
                vals.append(np.nan)
        out[k] = np.array(vals)
    return out


def plot_learning_curves(runs: Dict[str, Path], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for name, run in runs.items():
        f = run / "metrics.csv"
        if not f.exists():
            continue
        m = _read_csv(f)
        ax = axes[0] if name in ("mask", "denoise") else axes[1]
        ax.plot(m["epoch"], m["val_loss"], label=f"{name} val")
        ax.plot(m["epoch"], m["train_loss"], "--", alpha=0.6, label=f"{name} train")
    axes[0].set_title("pretraining")
    axes[1].set_title("fine-tuning on TIP3P labels")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _metric(d: Dict[str, Any], *words: str) -> Optional[float]:
    """First numeric value whose key contains all ``words`` (test_metrics.json keys vary by task)."""
    for k, v in d.items():
        if all(w in k.lower() for w in words) and isinstance(v, (int, float)):
            return float(v)
    return None


def stage_report(out: Path, p: Dict[str, Any], runs: Dict[str, Path], md_res: Dict[str, Dict[str, Any]],
                 timings: Dict[str, float]) -> Path:
    from maskpot.md.analysis import analyze_run
    from maskpot.md.report import markdown_table
    from maskpot.utils import atomic_write_json, atomic_write_text

    banner("analysis and report")
    ana: Dict[str, Any] = {}
    learned_traj = out / "md_learned" / "traj.dcd"
    n_good = (md_res.get("learned", {}).get("steps_done") or 0) // p["md_report"] + 1
    if learned_traj.exists() and n_good >= 5:
        ana = analyze_run(learned_traj, out / "md_learned" / "topology.pdb", out / "md_tip3p" / "traj.dcd",
                          out / "md_tip3p" / "topology.pdb", out=out / "analysis", label="learned (fine-tuned)",
                          reference_label="TIP3P", skip_fraction=0.1)
    drift = {}
    for name in ("learned_nve", "tip3p_nve"):
        d = out / f"md_{name}"
        if (d / "md.csv").exists():
            from maskpot.md.analysis import log_statistics, read_log

            lg = read_log(d / "md.csv")
            drift[name] = log_statistics(lg, 3 * p["n_molecules"])
    plot_learning_curves(runs, out / "learning_curves.png")
    if (out / "analysis" / "rdf.png").exists():
        shutil.copy(out / "analysis" / "rdf.png", out / "rdf.png")

    rows = []
    for name, run in runs.items():
        tm_path = run / "test_metrics.json"
        if name in ("mask", "denoise") or not tm_path.exists():
            continue
        tm = json.loads(tm_path.read_text())
        rows.append((name, tm.get("energy_mae_meV_per_atom", _metric(tm, "energy", "mae")),
                     tm.get("force_mae_meV_per_A", _metric(tm, "force", "mae")),
                     tm.get("energy_rmse_meV_per_atom", _metric(tm, "energy", "rmse")),
                     tm.get("force_rmse_meV_per_A", _metric(tm, "force", "rmse")), tm.get("n_frames")))
    lines = ["# Water box: masked pretraining → fine-tuning → MD vs the TIP3P teacher", ""]
    lines.append(f"{p['n_molecules']} water molecules in a {p['box']} Å cubic box (flexible TIP3P, OpenMM, 300 K). "
                 f"Pretraining: {len(p['pretrain_seeds'])} trajectories x {p['pretrain_frames']} frames (positions only, "
                 f"masked-H task); fine-tuning: an independent trajectory of {p['label_frames']} labelled frames, "
                 f"split {p['label_splits']}.\n")
    lines.append("## Test errors (energy_force fine-tuning; test frames of the labelled trajectory)\n")
    lines.append(markdown_table(["run", "energy MAE (meV/atom)", "force MAE (meV/Å)", "energy RMSE (meV/atom)",
                                 "force RMSE (meV/Å)", "test frames"], rows))
    lines.append("![learning curves](learning_curves.png)\n")
    lines.append("## MD in OpenMM (learned = fine-tuned model, exported, PythonForce)\n")
    mrows = []
    for name in ("learned", "tip3p", "learned_nve", "tip3p_nve"):
        r = md_res.get(name)
        if not r:
            continue
        st = drift.get(name, {})
        status = r["status"] if r["status"] == "ok" else f"UNSTABLE at step {r.get('failed_step')}: {r.get('reason')}"
        mrows.append((name, status, r.get("steps_done"), r.get("speed_ns_per_day"),
                      st.get("drift_meV_per_atom_per_ps"), st.get("total_energy_fluctuation_meV_per_atom")))
    lines.append(markdown_table(["run", "status", "steps", "speed (ns/day)", "NVE drift (meV/atom/ps)",
                                 "E_tot std (meV/atom)"], mrows))
    if ana:
        lines.append("\n## Structure and dynamics (NVT, first 10 % discarded)\n")
        st, rst = ana.get("stats", {}), ana.get("reference_stats", {})
        srows = [("T mean (K)", st.get("temperature_K_mean"), rst.get("temperature_K_mean")),
                 ("O–H mean (Å)", ana.get("oh_mean"), ana.get("reference_oh_mean")),
                 ("H–O–H mean (°)", ana.get("hoh_mean"), ana.get("reference_hoh_mean")),
                 ("D (1e-5 cm²/s)", ana.get("D_1e-5_cm2_s"), ana.get("reference_D_1e-5_cm2_s"))]
        lines.append(markdown_table(["quantity", "learned", "TIP3P"], srows))
        if "rdf_distance" in ana:
            lines.append("\nRDF distance learned vs TIP3P: rmse = sqrt(mean_r (g - g_TIP3P)²) (dimensionless), "
                         "iae = ∫|g - g_TIP3P| dr (Å).\n")
            lines.append(markdown_table(["pair", "rmse", "iae (Å)"],
                                        [(k, v["rmse"], v["iae"]) for k, v in ana["rdf_distance"].items()]))
        lines.append("\n![RDFs](rdf.png)\n")
        lines.append("More plots (energies, geometry, MSD): [analysis/report.md](analysis/report.md).\n")
    lines.append("## Timings (s)\n")
    lines.append(markdown_table(["stage", "seconds"], list(timings.items())))
    lines.append("\nShort runs on few CPU cores: numbers are indicative (diffusion from a few ps is noisy).")
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    atomic_write_json(out / "summary.json", {"test": {r[0]: {"energy_mae": r[1], "force_mae": r[2]} for r in rows},
                                             "md": md_res, "analysis": ana, "nve": drift, "timings": timings})
    return path


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/water_box", help="output folder (default runs/water_box)")
    ap.add_argument("--full", action="store_true", help="the paper's sizes (hours on a CPU; use a GPU)")
    ap.add_argument("--denoise", action="store_true", help="also pretrain by denoising and fine-tune from it")
    ap.add_argument("--md-steps", type=int, default=None, help="override the NVT MD length (steps of 0.5 fs)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for training and MD (default 1: fastest for these small models on a "
                         "shared CPU; raise it on a dedicated machine)")
    args = ap.parse_args(argv)
    p = dict(FULL if args.full else SMALL)
    if args.md_steps:
        p["md_steps"] = args.md_steps
    p["threads"] = args.threads
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: Dict[str, float] = {}
    t0 = time.perf_counter()
    data = stage_data(out, p)
    timings["data"] = time.perf_counter() - t0
    t = time.perf_counter()
    runs = stage_train(out, p, data, args.denoise)
    timings["training"] = time.perf_counter() - t
    model = stage_export(out, runs["finetune"])
    t = time.perf_counter()
    md_res = stage_md(out, p, model)
    timings["md"] = time.perf_counter() - t
    t = time.perf_counter()
    timings["total (before report)"] = time.perf_counter() - t0
    report = stage_report(out, p, runs, md_res, timings)
    timings["total"] = time.perf_counter() - t0
    print(f"\nreport: {report}  (total {timings['total']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
