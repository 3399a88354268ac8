"""Separate-source TIP3P water for ``compare_pretraining.py --dataset tip3p-traj`` (issue 12, item 2).

Three kinds of independent flexible-TIP3P OpenMM trajectories (maskpot.data.tip3p; each seed has
its own lattice, orientations, velocities and Langevin noise), frames ``--tip3p-every`` MD steps
apart (default 400 x 0.5 fs = 0.2 ps):

* **pretraining pool**: ``--pool-trajectories`` trajectories of ``--pool-frames`` frames each
  (+ ``--pool-val-frames`` more per trajectory, the last ones, for the pretext validation);
  written WITHOUT energies/forces to ``OUT/data/pretrain_unlabelled.npz``;
* **labelled**: one more trajectory of ``--labelled-pool + --val`` frames: the first
  ``--labelled-pool`` frames are the candidates of the nested fine-tuning subsets (a
  seed-dependent permutation, first N), the last ``--val`` frames (a contiguous block later in
  time) are the fine-tuning validation set;
* **test**: a third kind, one trajectory of ``--test-frames`` frames.

Every trajectory is cached as ``OUT/data/traj_<role>_<seed>.npz`` (with its generation parameters;
a cached file made with other parameters is an error), so an interrupted generation resumes at
trajectory granularity.

Trajectory seeds (OpenMM / lattice seeds): pool ``1000 * (data_seed + 1) + k`` (k = 0..K-1),
labelled ``1000 * (data_seed + 1) + 500``, test ``1000 * (data_seed + 1) + 600``: all distinct.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from experiments import compare_report

log = logging.getLogger("compare_pretraining")


def trajectory_seeds(data_seed: int, n_pool: int) -> Dict[str, Any]:
    base = 1000 * (int(data_seed) + 1)
    if n_pool > 500:
        raise ValueError(f"--pool-trajectories {n_pool}: at most 500")
    return {"pool": [base + k for k in range(n_pool)], "labelled": base + 500, "test": base + 600}


def _gen_params(args: Any, n_frames: int) -> Dict[str, Any]:
    return {"n_molecules": int(args.tip3p_molecules), "box": float(args.tip3p_box), "n_frames": int(n_frames),
            "every": int(args.tip3p_every), "equilibration_steps": int(args.tip3p_equilibration),
            "temperature": 300.0, "flexible": True}


def trajectory(out: Path, args: Any, role: str, seed: int, n_frames: int) -> Path:
    """One cached TIP3P trajectory (labelled frames, Å / eV / eV/Å)."""
    from maskpot.data.tip3p import generate_tip3p, save_tip3p_npz

    path = out / "data" / f"traj_{role}_{seed}.npz"
    params = _gen_params(args, n_frames)
    if path.is_file():
        with np.load(path) as z:
            meta = json.loads(str(z["metadata"]))
        if meta.get("experiment_params") != params:
            raise RuntimeError(f"{path} was generated with {meta.get('experiment_params')}, not {params}: use another --out")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("generating TIP3P %s trajectory (seed %d): %d molecules, %.2f Å, %d frames every %d steps",
             role, seed, args.tip3p_molecules, args.tip3p_box, n_frames, args.tip3p_every)
    data = generate_tip3p(n_molecules=args.tip3p_molecules, box=args.tip3p_box, n_frames=n_frames,
                          every=args.tip3p_every, seed=seed, equilibration_steps=args.tip3p_equilibration,
                          platform="CPU", threads=1, deterministic=True, progress=False)
    data["metadata"] = dict(data["metadata"], experiment_params=params, role=role)
    save_tip3p_npz(path, data)
    return path


def build_sources(out: Path, args: Any) -> Dict[str, Any]:
    """Generate (or reuse) every trajectory and write the three experiment files:
    ``pretrain_unlabelled.npz`` (pool train frames then pool val frames, no labels),
    ``labelled.npz`` (the labelled trajectory), ``test.npz`` (the test trajectory).

    Returns paths, sizes, and the trajectory seeds."""
    from maskpot.data.io import read_dataset, write_npz

    seeds = trajectory_seeds(args.data_seed, args.pool_trajectories)
    per = args.pool_frames + args.pool_val_frames
    pool_paths = [trajectory(out, args, "pool", s, per) for s in seeds["pool"]]
    lab_path = trajectory(out, args, "labelled", seeds["labelled"], args.labelled_pool + args.val)
    test_path = trajectory(out, args, "test", seeds["test"], args.test_frames or 100)

    pre = out / "data" / "pretrain_unlabelled.npz"
    if not pre.is_file():
        train: List[Any] = []
        val: List[Any] = []
        for p in pool_paths:
            frames = read_dataset(p)
            train += [s.copy(energy=None, forces=None) for s in frames[: args.pool_frames]]
            val += [s.copy(energy=None, forces=None) for s in frames[args.pool_frames:]]
        assert all(s.energy is None and s.forces is None for s in train + val)
        write_npz(pre, train + val, metadata={
            "labels": "removed (pretraining input)", "pool_trajectory_seeds": seeds["pool"],
            "sources": [str(p) for p in pool_paths], "n_train": len(train), "n_val": len(val),
            "frames_per_trajectory": {"train": args.pool_frames, "val": args.pool_val_frames},
        })
    return {"pool_paths": pool_paths, "labelled": lab_path, "test": test_path, "pretrain_file": pre,
            "seeds": seeds, "n_pretrain_train": args.pool_frames * args.pool_trajectories,
            "n_pretrain_val": args.pool_val_frames * args.pool_trajectories}


def labelled_split(args: Any) -> Tuple[np.ndarray, np.ndarray]:
    """(pool, val) indices into the labelled trajectory: the first ``--labelled-pool`` frames, the
    last ``--val`` frames."""
    pool = np.arange(args.labelled_pool, dtype=np.int64)
    val = np.arange(args.labelled_pool, args.labelled_pool + args.val, dtype=np.int64)
    return pool, val


# ------------------------------------------------------------------------------------------
# tables (from summary.json only)
# ------------------------------------------------------------------------------------------
def block_markers(summary: Dict[str, Any]) -> Tuple[str, str]:
    key = f"tip3p-traj {summary['out_name']}:lr{summary['budgets']['finetune_lr']:g}"
    return compare_report.block_markers(summary, key)


def markdown(summary: Dict[str, Any], st: Any, out: Path) -> str:
    m, b, z, src = summary["model"], summary["budgets"], summary["sizes"], summary.get("sources", {})
    seeds = summary["seeds"]
    lines = [
        f"### {compare_report.block_title('TIP3P water, separate trajectories', summary, out)} — {m['name']} {m['hidden_channels']}x{m['num_layers']}, cutoff "
        f"{m['cutoff']} Å, fine-tuning lr {b['finetune_lr']:g} (seeds {seeds})",
        "",
        compare_report.generated_text(summary, out),
        "",
        f"Data (flexible TIP3P, OpenMM, 300 K, {src.get('molecules')} H2O in a {src.get('box_A')} Å box, frames "
        f"{src.get('frame_spacing_ps', float('nan')):.2f} ps apart): pretraining pool "
        f"{z.get('pretrain_train', '?')} unlabelled frames from {len(src.get('pool_trajectories', []))} independent "
        f"trajectories (+ {z.get('pretrain_val', '?')} pretext-validation frames, the last of each); labelled "
        f"frames from a different trajectory (nested random subsets of its first {z['pool_unlabelled']} frames); "
        f"validation {z['val']} frames (the same trajectory's last frames, disjoint); test {z['test']} frames from a "
        f"third trajectory. Trajectory seeds {src.get('trajectory_seeds')}.",
        "",
        f"Pretraining: {b['pretrain_epochs']} epochs, batch {b['pretrain_batch_size']}, lr {b['pretrain_lr']:g} cosine → "
        f"{b['pretrain_lr'] / 100:g}, pretraining seed(s) {summary.get('pretrain_seeds')} (shared by every fine-tuning "
        f"seed when one); denoise σ = 0.2 Å (predict the noise), mask = one H removed in half of the molecules. "
        f"Fine-tuning: at most "
        + (", ".join(f"{e} epochs at N = {n}" for n, e in b.get("finetune_epochs_per_n", {}).items())
           + f" (about {b['finetune_steps']} optimiser steps)" if b.get("finetune_steps") else
           f"{b['finetune_epochs']} epochs")
        + f", batch {b['finetune_batch_size']}, lr {b['finetune_lr']:g} "
        f"cosine → {b['finetune_lr'] / 100:g}, EMA {b['ema_decay']}, early stopping after {summary.get('patience')} epochs "
        f"without a lower validation loss (L1, energy/atom weight 1 + forces weight 500: force-dominated); test errors "
        f"of `best.pt` (lowest validation loss). {b['threads'] or 'default'} torch thread per run on a shared 2-core "
        f"CPU. Total wall time of the runs: {sum(v for v in summary.get('run_wall_s', {}).values() if v) / 60:.1f} min.",
        "",
    ]
    lines += st.arm_table(summary)
    lines += [
        "",
        "Paired by seed against scratch (same labelled subset, splits and fine-tuning seed): mean difference "
        "[95 % t interval] (negative = lower error than scratch), relative to scratch's mean, seeds better than "
        "scratch; epochs each seed needs to reach its scratch run's final (last-epoch) validation force MAE "
        "(— = never).",
        "",
        "| N labels | arm | Δ test F MAE (meV/Å) | Δ F (%) | seeds better | Δ test E MAE (meV/atom) "
        "| Δ E RMSE offset removed (meV/atom) | epochs to scratch's final val F | scratch's epochs run |",
        "|---:|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for n in summary["labels"]:
        res = summary["results"].get(str(n), {})
        sc = res.get("scratch")
        for strat in summary["strategies"]:
            v = res.get(strat, {}).get("vs_scratch")
            if v is None or strat == "scratch" or "force_mae_meV_per_A" not in v:
                continue
            f = v["force_mae_meV_per_A"]
            rel = 100 * f["relative_mean"]
            rel_lo = 100 * f["low"] / f["reference_mean"] if f["n"] > 1 else float("nan")
            rel_hi = 100 * f["high"] / f["reference_mean"] if f["n"] > 1 else float("nan")
            ec = v.get("energy_rmse_centred_meV_per_atom")
            ep = st.format_epochs(v["epochs_to_scratch_final_val_force_per_seed"])
            lines.append(
                f"| {n} | {strat} | {st.format_ci(f, 1)} | {rel:+.1f} [{rel_lo:+.1f}, {rel_hi:+.1f}] "
                f"| {f['n_lower']}/{f['n']} | {st.format_ci(v['energy_mae_meV_per_atom'], 3)} "
                f"| {st.format_ci(ec, 3) if ec else 'n/a'} | {ep} "
                f"| {', '.join(str(x) for x in (sc or {}).get('epochs_done_per_seed', []))} |")
    lines += compare_report.paired_arms_lines(summary, st)
    lines += compare_report.pretraining_curve_lines(summary, average=np.mean, rule=True, wall_minutes=True)
    return "\n".join(lines) + "\n"
