#!/usr/bin/env python
"""Water box, end to end, in one command: TIP3P data → masked pretraining → fine-tuning →
export → MD in OpenMM → comparison with the TIP3P teacher.

    python examples/water_box/run.py [--out DIR] [--seed N] [--temperature K] [--long] [--compare] [--full]

Stages (each is skipped when its output already exists, so an interrupted run continues):

1. ``data/``       flexible-TIP3P frames with OpenMM (:func:`maskpot.data.tip3p.generate_tip3p`):
                   unlabelled pretraining trajectories (300 K); labelled trajectories at 300, 400
                   and 500 K plus rattled copies labelled by TIP3P (distorted geometries: closed
                   H–O–H angles, stretched bonds), for training; an independent 300 K trajectory
                   for testing. Every seed is derived from ``--seed``.
2. ``train/``      ``maskpot-train``: ``mask`` (pretraining), ``finetune`` (from it, early stopping
                   on validation). ``--compare`` adds ``scratch`` and ``denoise`` → ``finetune_denoise``.
3. ``model.pt``    export of the fine-tuned model (:func:`maskpot.deploy.export.export_model`).
4. ``md_tip3p/``   classical flexible-TIP3P MD (minimise, equilibrate, NVT production); its
                   equilibrated start ``topology.pdb`` is also the learned model's start.
   ``md_learned/`` NVT MD of the learned potential in OpenMM (same box, start, thermostat).
   ``md_learned_nve/``, ``md_tip3p_nve/``  short NVE runs from the NVT ends: energy drift.
5. ``analysis/`` + ``report.md`` + ``summary.json``: RDFs (learned vs TIP3P), geometry,
   temperature, drift, test errors, and pass/fail of the agreement checks.

Exit status: 0 when the learned MD ran to the end; 3 when the stability guard stopped it (one
line on stderr says where and why; the report marks the run as partial and omits structure).

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
EXIT_UNSTABLE = 3

SMALL = dict(
    n_molecules=64, box=12.42, n_pretrain_seeds=2, pretrain_frames=60, every=50,
    # labelled data: thermal frames at three temperatures (wider bond / angle distributions than
    # 300 K alone) and rattled copies (sigma 0.1 Å) labelled by TIP3P; test: an unseen 300 K run
    label_temperatures=[300.0, 400.0, 500.0], label_frames=40, label_every=100, rattle_sigma=0.1,
    rattle_fraction=0.5, test_frames=40, equilibration_steps=2000, label_splits="{train: 0.9, val: 0.1, test: 0}",
    # PaiNN, small and fast: 64 channels, 2 layers, 3.5 Å (the box allows up to 6.2 Å)
    model=["model.name=painn", "model.hidden_channels=64", "model.num_layers=2", "model.cutoff=3.5"],
    pretrain_epochs=6, finetune_epochs=20, patience=6, batch_size=4, lr=["train.lr=3e-3", "train.min_lr=1e-5"],
    md_equilibrate=2000, md_equilibrate_learned=500, md_steps=4000, md_report=25, nve_steps=400, friction=5.0,
)
FULL = dict(
    n_molecules=258, box=20.0, n_pretrain_seeds=9, pretrain_frames=1000, every=50,
    label_temperatures=[300.0, 400.0, 500.0], label_frames=400, label_every=50, rattle_sigma=0.1, rattle_fraction=1.0,
    test_frames=200, equilibration_steps=None, label_splits="{train: 0.9, val: 0.1, test: 0}",
    model=[], pretrain_epochs=None, finetune_epochs=None, patience=None, batch_size=None, lr=[],
    md_equilibrate=10000, md_equilibrate_learned=2000, md_steps=20000, md_report=100, nve_steps=4000, friction=1.0,
)
#: --long: at least 50 ps of learned NVT (0.5 fs steps)
LONG_STEPS = 100_000


def seeds_for(seed: int, p: Dict[str, Any]) -> Dict[str, Any]:
    """Every random seed of the example, derived from ``--seed`` (independent streams)."""
    base = 1000 * int(seed)
    return {
        "pretrain": [base + 1 + k for k in range(p["n_pretrain_seeds"])],
        "labelled": [base + 100 + k for k in range(len(p["label_temperatures"]))],
        "test": base + 200,
        "rattle": base + 300,
        "train": int(seed),
        "md": 7 + int(seed),
    }


def banner(msg: str) -> None:
    print(f"\n=== {msg} [{time.strftime('%H:%M:%S')}]", flush=True)


def stage_data(out: Path, p: Dict[str, Any]) -> Dict[str, Path]:
    from maskpot.data.tip3p import concat_frames, generate_tip3p, rattle_frames, save_tip3p_npz

    sd = p["seeds"]
    paths = {"pretrain": out / "data" / "tip3p_pretrain.npz", "labelled": out / "data" / "tip3p_labelled.npz",
             "test": out / "data" / "tip3p_test.npz"}
    gen = dict(n_molecules=p["n_molecules"], box=p["box"], equilibration_steps=p["equilibration_steps"],
               progress=p["progress"])

    def run(key: str, seeds: List[int], frames: int, every: int, temperature: float = 300.0) -> Dict[str, Any]:
        banner(f"generating {key} TIP3P data: {p['n_molecules']} molecules, {p['box']} Å, {temperature:.0f} K, "
               f"seeds {seeds}, {frames} frames each")
        part = out / "data" / f"{key}.partial.npz"
        data = generate_tip3p(n_frames=frames, every=every, seed=seeds, temperature=temperature, checkpoint=part, **gen)
        return data

    if not paths["pretrain"].exists():
        save_tip3p_npz(paths["pretrain"], run("pretrain", sd["pretrain"], p["pretrain_frames"], p["every"]))
    if not paths["labelled"].exists():
        parts = [run(f"labelled_{t:.0f}K", [s], p["label_frames"], p["label_every"], t)
                 for s, t in zip(sd["labelled"], p["label_temperatures"])]
        thermal = concat_frames(parts)
        # rattle an evenly spread subset of the thermal frames (every temperature represented)
        n = len(thermal["energy"])
        pick = np.unique(np.linspace(0, n - 1, int(round(p["rattle_fraction"] * n))).round().astype(int))
        subset = {**thermal, **{k: np.asarray(thermal[k])[pick] for k in ("positions", "cell", "energy", "forces")}}
        rattled = rattle_frames(subset, p["rattle_sigma"], sd["rattle"])
        print(f"  {n} thermal frames + {len(pick)} rattled (sigma {p['rattle_sigma']} Å) labelled by TIP3P")
        save_tip3p_npz(paths["labelled"], concat_frames([thermal, rattled]))
    if not paths["test"].exists():
        save_tip3p_npz(paths["test"], run("test", [sd["test"]], p["test_frames"], p["label_every"]))
    for f in (out / "data").glob("*.partial.npz"):
        f.unlink()
    return paths


def train(name: str, config: str, out: Path, overrides: List[str], init: Optional[Path] = None) -> Path:
    from maskpot.training.cli import train_stage

    return train_stage(CONFIGS / config, out / "train" / name, overrides, init, announce=banner)


def stage_train(out: Path, p: Dict[str, Any], data: Dict[str, Path], compare: bool) -> Dict[str, Path]:
    seed = p["seeds"]["train"]
    common = [f"train.num_threads={p['threads']}", "output.tensorboard=false", f"train.seed={seed}",
              f"output.progress={'true' if p['progress'] else 'false'}"]
    common += list(p["lr"])
    arch = list(p["model"])  # fine-tuning takes the architecture from the pretrained checkpoint
    if p["batch_size"]:
        common.append(f"train.batch_size={p['batch_size']}")
    pre = [f"train.epochs={p['pretrain_epochs']}"] if p["pretrain_epochs"] else []
    pre += [f"data.path={data['pretrain']}", f"data.seed={seed}"]
    ft = [f"train.epochs={p['finetune_epochs']}"] if p["finetune_epochs"] else []
    if p["patience"]:
        ft.append(f"train.early_stopping_patience={p['patience']}")
    ft += [f"data.path={data['labelled']}", f"data.test_path={data['test']}", f"data.splits={p['label_splits']}",
           f"data.seed={seed}"]
    runs: Dict[str, Path] = {}
    runs["mask"] = train("mask", "water_pretrain_mask.yaml", out, common + arch + pre)
    runs["finetune"] = train("finetune", "water_finetune.yaml", out, common + ft, init=runs["mask"] / "best.pt")
    if compare:
        runs["scratch"] = train("scratch", "water_scratch.yaml", out, common + arch + ft)
        runs["denoise"] = train("denoise", "water_pretrain_denoise.yaml", out, common + arch + pre)
        runs["finetune_denoise"] = train("finetune_denoise", "water_finetune.yaml", out, common + ft,
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
    from maskpot.md.cli import EXIT_UNSTABLE, md_main

    res_path = out_dir / "result.json"
    if res_path.exists() and json.loads(res_path.read_text()).get("status") in ("ok", "unstable"):
        print(f"  {out_dir} done, skipping")
        return json.loads(res_path.read_text())
    argv = args + ["--out", str(out_dir), "--resume"]
    banner("maskpot-md " + " ".join(argv))
    rc = md_main(argv)
    if rc not in (0, EXIT_UNSTABLE):
        raise SystemExit(f"maskpot-md failed (exit {rc})")
    return json.loads(res_path.read_text())


def stage_md(out: Path, p: Dict[str, Any], model: Path) -> Dict[str, Dict[str, Any]]:
    # friction 5/ps: short runs, so the thermostat must bring T to the target quickly
    T, seed = p["temperature"], p["seeds"]["md"]
    cond = ["--temperature", f"{T:g}", "--timestep", "0.5", "--friction", str(p["friction"]),
            "--report-every", str(p["md_report"])]
    quiet = [] if p["progress"] else ["--no-progress"]
    res: Dict[str, Dict[str, Any]] = {}
    res["tip3p"] = md(["openmm", "--tip3p", "--water", str(p["n_molecules"]), "--box", str(p["box"]),
                       "--equilibrate", str(p["md_equilibrate"]), "--steps", str(p["md_steps"]), "--seed", str(seed)]
                      + cond + quiet, out / "md_tip3p")
    start = out / "md_tip3p" / "topology.pdb"
    # No energy minimisation with the learned potential: the start is already the teacher's
    # equilibrated liquid, and a minimiser's long line searches can carry atoms into regions no
    # training frame covers (seen: an H pulled onto its O at 350 K), which MD at T would not visit.
    res["learned"] = md(["openmm", "--model", str(model), "--pdb", str(start), "--steps", str(p["md_steps"]),
                         "--minimize", "0", "--equilibrate", str(p["md_equilibrate_learned"]), "--seed", str(seed)]
                        + cond + quiet, out / "md_learned")
    # NVE from the end of each NVT run: energy conservation / drift
    for name, src in (("learned_nve", "md_learned"), ("tip3p_nve", "md_tip3p")):
        final = out / src / "final.pdb"
        if not final.exists():
            print(f"  no {final} (the NVT run did not finish): skipping {name}")
            continue
        pot = ["--model", str(model)] if name.startswith("learned") else ["--tip3p"]
        nve = ["--report-every", "10", "--steps", str(p["nve_steps"]), "--minimize", "0", "--ensemble", "nve",
               "--timestep", "0.5", "--temperature", f"{T:g}", "--seed", str(seed + 1)]
        res[name] = md(["openmm"] + pot + ["--pdb", str(final)] + nve + quiet, out / f"md_{name}")
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


#: Agreement with the teacher required by the example (issue: stable, TIP3P-like water).
CHECKS = {"rdf_oo_rmse": 0.05, "temperature_K": 5.0, "oh_rel": 0.01, "hoh_rel": 0.01}


def agreement(ana: Dict[str, Any], target_T: float) -> Dict[str, Any]:
    """The numbers compared with TIP3P and whether each is within :data:`CHECKS`."""
    st = ana.get("stats", {})
    out: Dict[str, Any] = {}
    rdf = ana.get("rdf_distance", {})
    oo = next((v["rmse"] for k, v in rdf.items() if k.replace("-", "").replace("–", "").upper() == "OO"), None)
    if oo is not None:
        out["rdf_oo_rmse"] = {"value": oo, "limit": CHECKS["rdf_oo_rmse"], "ok": oo <= CHECKS["rdf_oo_rmse"]}
    if st.get("temperature_K_mean") is not None:
        d = abs(st["temperature_K_mean"] - target_T)
        out["temperature_K"] = {"value": st["temperature_K_mean"], "deviation": d, "limit": CHECKS["temperature_K"],
                                "ok": d <= CHECKS["temperature_K"]}
    for key, mine, ref in (("oh_rel", "oh_mean", "reference_oh_mean"), ("hoh_rel", "hoh_mean", "reference_hoh_mean")):
        if ana.get(mine) is not None and ana.get(ref):
            rel = abs(ana[mine] / ana[ref] - 1.0)
            out[key] = {"value": ana[mine], "reference": ana[ref], "relative": rel, "limit": CHECKS[key],
                        "ok": rel <= CHECKS[key]}
    return out


def rdf_noise_floor(out: Path, p: Dict[str, Any]) -> Optional[float]:
    """O–O RDF rmse between the two halves of the TIP3P run (after the same 10 % skip): how much
    two samples of the *same* liquid differ at this run length, the floor for any comparison."""
    from maskpot.md.analysis import load_trajectory, rdf_distance, water_rdfs

    f = out / "md_tip3p" / "traj.dcd"
    if not f.exists():
        return None
    t = load_trajectory(f, out / "md_tip3p" / "topology.pdb")
    t = t[int(0.1 * t.n_frames):]
    if t.n_frames < 10:
        return None
    half = t.n_frames // 2
    rmax = min(8.0, 0.5 * p["box"] - 1e-6)
    a, b = water_rdfs(t[:half], rmax), water_rdfs(t[half:], rmax)
    return rdf_distance(a["O-O"][0], a["O-O"][1], b["O-O"][1])["rmse"]


def stage_report(out: Path, p: Dict[str, Any], runs: Dict[str, Path], md_res: Dict[str, Dict[str, Any]],
                 timings: Dict[str, float]) -> Path:
    from maskpot.md.analysis import analyze_run, log_statistics, read_log
    from maskpot.md.report import markdown_table
    from maskpot.utils import atomic_write_json, atomic_write_text

    banner("analysis and report")
    learned = md_res.get("learned", {})
    stable = learned.get("status") == "ok"
    ana: Dict[str, Any] = {}
    if stable:
        ana = analyze_run(out / "md_learned" / "traj.dcd", out / "md_learned" / "topology.pdb",
                          out / "md_tip3p" / "traj.dcd", out / "md_tip3p" / "topology.pdb", out=out / "analysis",
                          label="learned (fine-tuned)", reference_label="TIP3P", skip_fraction=0.1)
    drift = {}
    for name in ("learned_nve", "tip3p_nve"):
        d = out / f"md_{name}"
        if (d / "md.csv").exists() and md_res.get(name, {}).get("status") == "ok":
            drift[name] = log_statistics(read_log(d / "md.csv"), 3 * p["n_molecules"])
    plot_learning_curves(runs, out / "learning_curves.png")
    if stable and (out / "analysis" / "rdf.png").exists():
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
    T = p["temperature"]
    lines = ["# Water box: masked pretraining → fine-tuning → MD vs the TIP3P teacher", ""]
    lines.append(f"{p['n_molecules']} water molecules in a {p['box']} Å cubic box (flexible TIP3P, OpenMM). "
                 f"Seed {p['seed']}. Pretraining: {p['n_pretrain_seeds']} trajectories x {p['pretrain_frames']} frames "
                 f"(300 K, positions only, masked-H task); fine-tuning: {p['label_frames']} frames at each of "
                 f"{', '.join(f'{t:.0f}' for t in p['label_temperatures'])} K plus rattled copies of "
                 f"{p['rattle_fraction']:.0%} of them (σ = {p['rattle_sigma']} Å) labelled by TIP3P, split {p['label_splits']}; test: "
                 f"{p['test_frames']} frames of an independent 300 K trajectory. MD at {T:g} K.\n")
    lines.append("## Test errors (energy_force fine-tuning, independent 300 K test trajectory)\n")
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
    checks = agreement(ana, T) if stable else {}
    if "rdf_oo_rmse" in checks:
        checks["rdf_oo_rmse"]["tip3p_half_vs_half"] = rdf_noise_floor(out, p)
    if not stable:
        lines.append(f"\n**PARTIAL RUN**: the learned MD stopped at step {learned.get('failed_step')} of "
                     f"{p['md_steps']} ({learned.get('reason')}). Structure, geometry and diffusion are not reported "
                     "because they would describe a failed simulation.\n")
    else:
        lines.append(f"\n## Structure and dynamics (NVT at {T:g} K, first 10 % discarded)\n")
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
        floor = checks.get("rdf_oo_rmse", {}).get("tip3p_half_vs_half")
        if floor is not None:
            lines.append(f"\nNoise floor: the O–O RDF rmse between the two halves of the TIP3P run itself is "
                         f"{floor:.3f}.\n")
        lines.append("\n### Agreement checks\n")
        lines.append(markdown_table(["check", "value", "limit", "pass"],
                                    [(k, v.get("relative", v.get("deviation", v["value"])), v["limit"],
                                      "yes" if v["ok"] else "NO") for k, v in checks.items()]))
        lines.append("\n![RDFs](rdf.png)\n")
        lines.append("More plots (energies, geometry, MSD): [analysis/report.md](analysis/report.md).\n")
    lines.append("## Timings (s)\n")
    lines.append(markdown_table(["stage", "seconds"], list(timings.items())))
    lines.append("\nShort runs on few CPU cores: numbers are indicative (diffusion from a few ps is noisy).")
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    summary = {"seed": p["seed"], "temperature": T, "stable": stable,
               "test": {r[0]: {"energy_mae_meV_per_atom": r[1], "force_mae_meV_per_A": r[2]} for r in rows},
               "md": md_res, "checks": checks, "nve": drift, "timings": timings,
               "analysis": {k: v for k, v in ana.items() if not isinstance(v, (list, dict)) or k in
                            ("stats", "reference_stats", "rdf_distance")}}
    atomic_write_json(out / "summary.json", summary)
    return path


def model_overrides(base: List[str], items: List[str]) -> List[str]:
    """``base`` ("model.KEY=VALUE" strings) with each "KEY=VALUE" of ``items`` replacing or adding
    its key; ValueError for an item without "=" or key."""
    out = list(base)
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--model-set expects KEY=VALUE (a model config key), got {item!r}")
        out = [m for m in out if not m.startswith(f"model.{key}=")] + [f"model.{key}={value}"]
    return out


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/water_box", help="output folder (default runs/water_box)")
    ap.add_argument("--seed", type=int, default=0, help="one seed for data, training and MD (default 0)")
    ap.add_argument("--temperature", type=float, default=300.0, help="MD temperature, K (default 300)")
    ap.add_argument("--long", action="store_true", help=f"learned NVT of {LONG_STEPS} steps (50 ps at 0.5 fs)")
    ap.add_argument("--full", action="store_true", help="the paper's sizes (hours on a CPU; use a GPU)")
    ap.add_argument("--compare", action="store_true",
                    help="also train from scratch and with denoising pretraining (test errors side by side)")
    ap.add_argument("--denoise", action="store_true", help=argparse.SUPPRESS)  # old name of --compare
    ap.add_argument("--md-steps", type=int, default=None, help="override the NVT MD length (steps of 0.5 fs)")
    ap.add_argument("--model-set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a model key for every training stage, e.g. num_layers=1 (repeatable)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars (one line per epoch)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads for training and MD (default 1: on a shared 2-core machine 2 threads were 4x slower)")
    args = ap.parse_args(argv)

    import torch

    p = dict(FULL if args.full else SMALL)
    if args.md_steps:
        p["md_steps"] = args.md_steps
    try:
        p["model"] = model_overrides(p["model"], args.model_set)
    except ValueError as exc:
        ap.error(str(exc))
    if args.long:
        p["md_steps"] = max(p["md_steps"], LONG_STEPS)
    if not args.temperature > 0:
        ap.error(f"--temperature must be > 0 K, got {args.temperature}")
    p["threads"] = args.threads or 1
    p["seed"], p["temperature"], p["seeds"] = args.seed, args.temperature, seeds_for(args.seed, p)
    p["progress"] = not args.no_progress and sys.stderr.isatty()
    torch.set_num_threads(p["threads"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: Dict[str, float] = {}
    t0 = time.perf_counter()
    data = stage_data(out, p)
    timings["data"] = time.perf_counter() - t0
    t = time.perf_counter()
    runs = stage_train(out, p, data, args.compare or args.denoise)
    timings["training"] = time.perf_counter() - t
    model = stage_export(out, runs["finetune"])
    return finish(out, p, runs, model, timings, t0)


def finish(out: Path, p: Dict[str, Any], runs: Dict[str, Path], model: Path, timings: Dict[str, float],
           t0: float) -> int:
    """MD, analysis and report; the exit status (0, or :data:`EXIT_UNSTABLE` with one line on stderr)."""
    t = time.perf_counter()
    md_res = stage_md(out, p, model)
    timings["md"] = time.perf_counter() - t
    timings["total (before report)"] = time.perf_counter() - t0
    report = stage_report(out, p, runs, md_res, timings)
    print(f"\nreport: {report}  (total {time.perf_counter() - t0:.0f} s)")
    learned = md_res.get("learned", {})
    if learned.get("status") != "ok":
        print(f"water_box: learned MD UNSTABLE at step {learned.get('failed_step')} of {p['md_steps']}: "
              f"{learned.get('reason')} (report: {report})", file=sys.stderr)
        return EXIT_UNSTABLE
    return 0


if __name__ == "__main__":
    sys.exit(main())
