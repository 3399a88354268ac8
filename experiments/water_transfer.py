"""TIP3P -> DFT water transfer for ``compare_pretraining.py --dataset water-dft-transfer`` (issue 12, item 3).

The practical use of pretraining: a cheap classical pool, a few expensive DFT labels.

* **labelled (DFT)**: ``../shared/data/water_dft/deepmd_water`` (320 frames of 64 H2O, cubic box
  12.4447 Å, eV / eV/Å), split exactly as ``--dataset water-dft``: a ``--data-seed`` permutation
  gives the test frames (``--test-frames``, default 10 %), then the validation frames (``--val``),
  then the fine-tuning candidates (the pool, capped at ``--pool``); the N labelled frames of a
  seed are the first N of a seed-dependent permutation of the candidates (nested in N).
* **pretraining pool (TIP3P)**: ``--pool-trajectories`` independent flexible-TIP3P trajectories
  (maskpot.data.tip3p via ``water_sources.trajectory``: cached, resumable per trajectory) of
  ``--tip3p-molecules`` (default 64) H2O in the DFT box (``--tip3p-box``, default 12.4447 Å) at
  300 K, ``--pool-frames`` training + ``--pool-val-frames`` pretext-validation frames each (the
  last frames of each trajectory). Two files with the same frames in the same order:
  ``OUT/data/pretrain_tip3p_labelled.npz`` (with the TIP3P energies/forces: the ``supervised`` and
  ``mask_supervised`` arms) and ``OUT/data/pretrain_unlabelled.npz`` (labels removed: ``mask`` and
  ``denoise``).
* **DFT structures for masking (``mask_dft``)**: the fine-tuning candidates only (never a
  validation or test frame), labels removed, ``OUT/data/pretrain_dft_unlabelled.npz``; its last
  ``max(1, len(pool) // 10)`` frames (pool order) are the pretext validation.

Arms (every fine-tuning run shares one config with scratch; only ``init.checkpoint`` differs):
``scratch``; ``mask`` / ``denoise`` (self-supervised on the TIP3P structures); ``supervised``
(energy/force training on the TIP3P labels, the loss of fine-tuning: L1, energy/atom weight 1,
forces weight 500); ``mask_supervised`` (in sequence: the supervised pretraining initialised from
the ``mask`` checkpoint, same epochs/lr as ``supervised``, so twice the pretraining compute of
either alone; multi-task training is not in the trainer); ``mask_dft`` (masking on the DFT
candidate structures). Opt-in (never in the default list): ``denoise_1A`` (denoising with
σ = 1.0 Å, the reference code's value), ``mask_denoise`` (in sequence: a σ = 0.2 Å denoising stage
started from the ``mask`` checkpoint, same epochs/lr; both tasks train the same ``forces`` output, so
every tensor is loaded and no head is reset) and ``supervised_2x`` (``supervised`` with twice the
pretraining epochs: the equal-compute control of ``mask_supervised``). TIP3P and DFT energies
differ by a large constant per species: every energy/force run (supervised pretraining included)
refits the per-species energy shifts in closed form on its own training frames when it starts
(``maskpot.training.setup.fit_normalization``: least-squares E0 + ``refit_energy_shift`` of the
network's residual), and the energy scale is reset to the new data's force RMS, so the DFT
fine-tuning never sees the TIP3P reference energy.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from experiments import compare_report
from experiments import water_sources as ws

log = logging.getLogger("compare_pretraining")


def build_sources(out: Path, args: Any, dft_path: Path, dft_pool_idx: np.ndarray) -> Dict[str, Any]:
    """Generate (or reuse) the TIP3P pool trajectories (experiments/water_sources.py);
    write the labelled and unlabelled TIP3P pretraining files and the unlabelled DFT-candidate
    file. Returns paths, sizes and seeds."""
    from maskpot.data.io import read_dataset, write_npz

    seeds = ws.trajectory_seeds(args.data_seed, args.pool_trajectories)["pool"]
    per = args.pool_frames + args.pool_val_frames
    pool_paths = [ws.trajectory(out, args, "pool", s, per) for s in seeds]
    data = out / "data"
    lab, unl, dft = data / "pretrain_tip3p_labelled.npz", data / "pretrain_unlabelled.npz", data / "pretrain_dft_unlabelled.npz"
    meta = {"pool_trajectory_seeds": seeds, "sources": [str(p) for p in pool_paths],
            "n_train": args.pool_frames * len(seeds), "n_val": args.pool_val_frames * len(seeds),
            "frames_per_trajectory": {"train": args.pool_frames, "val": args.pool_val_frames},
            "molecules": int(args.tip3p_molecules), "box_A": float(args.tip3p_box)}
    if not (lab.is_file() and unl.is_file()):
        train: List[Any] = []
        val: List[Any] = []
        for p in pool_paths:
            frames = read_dataset(p)
            train += frames[: args.pool_frames]
            val += frames[args.pool_frames:]
        frames = train + val
        assert all(s.energy is not None and s.forces is not None for s in frames)
        write_npz(lab, frames, metadata={**meta, "labels": "flexible TIP3P energies/forces (eV, eV/Å)"})
        bare = [s.copy(energy=None, forces=None) for s in frames]
        assert all(s.energy is None and s.forces is None for s in bare)
        write_npz(unl, bare, metadata={**meta, "labels": "removed (pretraining input)"})
    pool = np.sort(np.asarray(dft_pool_idx, dtype=np.int64))
    n_dft_val = max(1, len(pool) // 10)
    if len(pool) - n_dft_val < 1:
        raise ValueError(f"mask_dft: the DFT candidate pool ({len(pool)} frames) is too small to pretrain on")
    if not dft.is_file():
        samples = read_dataset(dft_path)
        frames = [samples[int(i)].copy(energy=None, forces=None) for i in pool]
        assert all(s.energy is None and s.forces is None for s in frames)
        write_npz(dft, frames, metadata={
            "source": str(dft_path), "labels": "removed (pretraining input)", "dft_indices": pool.tolist(),
            "n_train": int(len(pool) - n_dft_val), "n_val": int(n_dft_val),
            "note": "fine-tuning candidates only: no validation or test frame"})
    return {
        "pool_paths": pool_paths, "seeds": seeds,
        "sets": {
            "unlabelled": {"file": unl, "n_train": meta["n_train"], "n_val": meta["n_val"], "split": "pretrain.npz"},
            "labelled": {"file": lab, "n_train": meta["n_train"], "n_val": meta["n_val"],
                         "split": "pretrain_labelled.npz"},
            "dft": {"file": dft, "n_train": int(len(pool) - n_dft_val), "n_val": int(n_dft_val),
                    "split": "pretrain_dft.npz"},
        },
    }


# ------------------------------------------------------------------------------------------
# tables (from summary.json only)
# ------------------------------------------------------------------------------------------
#: Reference arm -> the arms paired against it (``vs_<reference>``; None: every other arm).
#: mask_supervised / mask_denoise against the stage they continue (mask) and the stage they add
#: (denoise); denoise_1A against denoise (σ); mask_supervised against supervised_2x (equal compute).
COMPARISONS: Dict[str, Any] = {
    "supervised": None,
    "mask": ("mask_supervised", "mask_denoise"),
    "denoise": ("denoise_1A", "mask_denoise", "mask_position", "joint"),
    "supervised_2x": ("mask_supervised",),
}


def add_comparisons(summary: Dict[str, Any], st: Any) -> None:
    """Paired (by seed) differences of every arm against ``supervised`` (as ``vs_supervised``),
    of ``mask_supervised`` and ``mask_denoise`` against ``mask``, of ``denoise_1A`` and
    ``mask_denoise`` against ``denoise`` and of ``mask_supervised`` against ``supervised_2x``
    (``COMPARISONS``), from the per-seed values of the summary."""
    for n, res in summary["results"].items():
        for ref, arms in COMPARISONS.items():
            r = res.get(ref)
            if r is None:
                continue
            for arm, a in res.items():
                if arm == ref or (arms is not None and arm not in arms):
                    continue
                entry = {}
                for key in ("force_mae_meV_per_A", "energy_mae_meV_per_atom", "energy_rmse_centred_meV_per_atom"):
                    va = dict(zip(a["seeds"], a[f"{key}_per_seed"]))
                    vr = dict(zip(r["seeds"], r[f"{key}_per_seed"]))
                    common = sorted(s for s in set(va) & set(vr) if va[s] is not None and vr[s] is not None)
                    if common:
                        entry[key] = st.paired_differences({s: va[s] for s in common}, {s: vr[s] for s in common})
                a[f"vs_{ref}"] = entry


def block_markers(summary: Dict[str, Any]) -> Tuple[str, str]:
    key = (f"water-dft-transfer {summary['out_name']}:pool{summary['sizes'].get('pretrain_train')}"
           f":lr{summary['budgets']['finetune_lr']:g}")
    return compare_report.block_markers(summary, key)


def _significant_lower(d: Dict[str, Any]) -> bool:
    """The whole 95 % interval of the paired difference lies below 0."""
    return bool(d) and int(d.get("n", 0)) > 1 and np.isfinite(float(d["high"])) and float(d["high"]) < 0


def findings(summary: Dict[str, Any]) -> List[str]:
    """Where masking adds to supervised pretraining or is the better choice (95 % intervals of
    the paired force-MAE differences entirely below 0), read off the summary."""
    out: List[str] = []
    for n in summary["labels"]:
        res = summary["results"].get(str(n), {})
        for arm in ("mask_supervised", "mask", "mask_dft", "mask_denoise"):
            f = res.get(arm, {}).get("vs_supervised", {}).get("force_mae_meV_per_A")
            if f and _significant_lower(f):
                out.append(f"N = {n}: {arm} beats supervised by {-float(f['mean']):.1f} meV/Å "
                           f"[95 % interval of the difference {float(f['low']):+.1f}, {float(f['high']):+.1f}]")
        f = res.get("mask_supervised", {}).get("vs_mask", {}).get("force_mae_meV_per_A")
        if f and _significant_lower(f):
            out.append(f"N = {n}: mask_supervised beats mask alone by {-float(f['mean']):.1f} meV/Å")
        f = res.get("mask_supervised", {}).get("vs_supervised_2x", {}).get("force_mae_meV_per_A")
        if f and _significant_lower(f):
            out.append(f"N = {n}: mask_supervised beats supervised_2x (equal pretraining compute) by "
                       f"{-float(f['mean']):.1f} meV/Å "
                       f"[95 % interval of the difference {float(f['low']):+.1f}, {float(f['high']):+.1f}]")
        for ref in ("mask", "denoise"):
            f = res.get("mask_denoise", {}).get(f"vs_{ref}", {}).get("force_mae_meV_per_A")
            if f and _significant_lower(f):
                out.append(f"N = {n}: mask_denoise beats {ref} alone by {-float(f['mean']):.1f} meV/Å")
    return out


def markdown(summary: Dict[str, Any], st: Any, out: Path) -> str:
    m, b, z, src = summary["model"], summary["budgets"], summary["sizes"], summary.get("sources", {})
    seeds = summary["seeds"]
    run_wall = summary.get("run_wall_s", {})
    pre_wall = sum(v for k, v in run_wall.items() if v and k.startswith("pretrain_"))
    ft_wall = sum(v for k, v in run_wall.items() if v and k.startswith("ft_"))
    lines = [
        f"### {compare_report.block_title('TIP3P → DFT water transfer', summary, out)} — {m['name']} {m['hidden_channels']}x{m['num_layers']}, cutoff {m['cutoff']} Å, "
        f"TIP3P pool {z.get('pretrain_train')} frames, fine-tuning lr {b['finetune_lr']:g} (seeds {seeds})",
        "",
        compare_report.generated_text(summary, out),
        "",
        f"Data. DFT (labelled): {src.get('dft_path')}, {src.get('dft_frames')} frames of 64 H2O; test {z['test']} "
        f"frames and validation {z['val']} frames held out (fixed, `--data-seed`), fine-tuning subsets nested in the "
        f"other {z['pool_unlabelled']} frames. TIP3P pool (flexible TIP3P, OpenMM, 300 K, {src.get('molecules')} H2O "
        f"in a {src.get('box_A')} Å box, frames {src.get('frame_spacing_ps', float('nan')):.2f} ps apart): "
        f"{z.get('pretrain_train')} pretraining frames from {len(src.get('pool_trajectories', []))} independent "
        f"trajectories (+ {z.get('pretrain_val')} pretext-validation frames), seeds {src.get('trajectory_seeds')}. "
        f"mask_dft: {src.get('dft_pretrain_train')} DFT candidate structures (+ {src.get('dft_pretrain_val')} for its "
        f"pretext validation), labels removed, no validation/test frame.",
        "",
        f"Pretraining (every arm, seed(s) {summary.get('pretrain_seeds')}): {b['pretrain_epochs']} epochs, batch "
        f"{b['pretrain_batch_size']}, lr {b['pretrain_lr']:g} cosine → {b['pretrain_lr'] / 100:g}; mask = one H removed "
        f"in half of the molecules (cosine loss); denoise σ = 0.2 Å; supervised = TIP3P energies/forces with the "
        f"fine-tuning loss (L1, energy/atom 1 + forces 500); mask_supervised = that supervised stage started from "
        f"the mask checkpoint (in sequence: the pretraining of both)."
        + (" " + compare_report.extra_arms_text(summary) if any(
            s in summary["strategies"] for s in ("denoise_1A", "mask_denoise", "supervised_2x")) else "")
        + " Fine-tuning (identical for every arm, only the initial weights differ): "
        "at most " + ", ".join(f"{e} epochs at N = {n}" for n, e in b.get("finetune_epochs_per_n", {}).items())
        + (f" (about {b['finetune_steps']} optimiser steps)" if b.get("finetune_steps") else "")
        + f", batch {b['finetune_batch_size']}, lr {b['finetune_lr']:g} cosine → {b['finetune_lr'] / 100:g}, EMA "
        f"{b['ema_decay']}, early stopping after {summary.get('patience')} epochs without a lower validation loss; "
        f"per-species energy shifts refit in closed form on the N frames when fine-tuning starts; test errors of "
        f"`best.pt`. {b['threads'] or 'default'} torch thread(s) per run. Wall time of the runs: pretraining "
        f"{pre_wall / 60:.1f} min, fine-tuning {ft_wall / 60:.1f} min.",
        "",
    ]
    lines += st.arm_table(summary)
    lines += [
        "",
        "Paired by seed (same labelled subset, splits and fine-tuning seed): mean difference [95 % t interval] of "
        "the test errors (negative = lower error than the reference arm), seeds with a lower error; against "
        "scratch also the epoch at which each seed's run first reaches its scratch run's final (last-epoch) "
        "validation force MAE (— = never; the compass's convergence criterion).",
        "",
        "| N labels | arm | reference | Δ test F MAE (meV/Å) | Δ F (%) | seeds lower | Δ test E MAE (meV/atom) "
        "| Δ E RMSE offset removed (meV/atom) | epochs to scratch's final val F |",
        "|---:|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for n in summary["labels"]:
        res = summary["results"].get(str(n), {})
        # every reference the summary paired against (vs_<ref>), in this order, any other after them
        paired = {k[len("vs_"):] for r in res.values() for k in r if k.startswith("vs_")}
        order = ("scratch", "supervised", "mask", "denoise", "supervised_2x")
        for ref in [r for r in order if r in paired] + sorted(paired - set(order)):
            key = f"vs_{ref}"
            for arm in summary["strategies"]:
                v = res.get(arm, {}).get(key)
                if not v or arm in (ref, "scratch") or "force_mae_meV_per_A" not in v:
                    continue
                f = v["force_mae_meV_per_A"]
                rel = 100 * float(f["relative_mean"])
                ok = int(f["n"]) > 1 and float(f["reference_mean"]) != 0
                rel_ci = (f" [{100 * float(f['low']) / float(f['reference_mean']):+.1f}, "
                          f"{100 * float(f['high']) / float(f['reference_mean']):+.1f}]") if ok else ""
                e = v.get("energy_mae_meV_per_atom")
                ec = v.get("energy_rmse_centred_meV_per_atom")
                lines.append(
                    f"| {n} | {arm} | {ref} | {st.format_ci(f, 1)} | {rel:+.1f}{rel_ci} | {f['n_lower']}/{f['n']} "
                    f"| {st.format_ci(e, 3) if e else 'n/a'} | {st.format_ci(ec, 3) if ec else 'n/a'} "
                    f"| {st.format_epochs(v.get('epochs_to_scratch_final_val_force_per_seed'))} |")
    found = findings(summary)
    lines += ["", "Where masking adds to supervised pretraining or is the better choice (95 % interval of the paired "
              "force-MAE difference entirely below 0): " + ("; ".join(found) + "." if found else
                                                             "nowhere in this grid.")]
    lines += compare_report.pretraining_curve_lines(summary)
    return "\n".join(lines) + "\n"
