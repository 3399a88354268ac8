"""Plots and the markdown table of ``compare_pretraining.py`` for rMD17 / water-dft / tip3p (the
tip3p-traj and water-dft-transfer tables are in ``water_sources.py`` / ``water_transfer.py``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np


from experiments import stats
from experiments.grid import PAIRED_ARMS


def plot(summary: Dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    colors = {"scratch": "tab:gray", "denoise": "tab:blue", "mask": "tab:red", "supervised": "tab:green",
              "mask_supervised": "tab:purple", "mask_dft": "tab:orange", "denoise_1A": "tab:cyan",
              "mask_denoise": "tab:pink", "supervised_2x": "tab:olive", "mask_reference": "tab:brown",
              "mask_position": "tab:red", "joint": "black"}
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


def _out_tail(command: str) -> Optional[str]:
    """The last two components of a command line's ``--out`` folder (None without one)."""
    m = re.search(r"--out\s+(\S+)", command or "")
    return "/".join(Path(m.group(1).strip("'\"")).parts[-2:]) if m else None


def write_results_block(md: Path, summary: Dict[str, Any], table: str, markers: Tuple[str, str]) -> None:
    """Replace this experiment's block of ``md`` (or append it). Block keys name only the output
    folder's basename, so two grids whose ``--out`` share it (``a/ethanol``, ``b/ethanol``) would
    overwrite each other's tables: refuse when the stored block's ``--out`` is another folder."""
    from maskpot.utils import upsert_marked_block

    begin, end = markers
    text = md.read_text() if md.is_file() else ""
    if begin in text:
        stored = re.search(r"Command: `([^`]*)`", text.split(begin, 1)[1].split(end, 1)[0])
        old, new = _out_tail(stored.group(1) if stored else ""), _out_tail(summary.get("command", ""))
        if old and new and old != new:
            raise SystemExit(f"{md}: its block {begin!r} holds the tables of --out .../{old}, not of this grid "
                             f"(--out .../{new}): give this grid an --out folder of another name, or pass "
                             "--results-md another file")
    upsert_marked_block(md, begin, end, table)  # creates md's folder when it appends


#: What the opt-in arms (issue 12) are, for the tables' text (only the arms of a grid are named).
EXTRA_ARM_TEXT = {
    "denoise_1A": "denoise_1A = denoising with σ = 1.0 Å (the reference code's value; denoise: 0.2 Å)",
    "mask_denoise": "mask_denoise = a denoising stage (σ = 0.2 Å, the same epochs/lr) started from the mask "
                    "checkpoint (in sequence: the pretraining of both; the same output, no head reset)",
    "supervised_2x": "supervised_2x = supervised pretraining with twice the epochs (the equal-compute control of "
                     "mask_supervised)",
    "mask_reference": "mask_reference = masking with the reference code's rMD17 variant (every kept atom a target, "
                      "from the farthest removed H, no flag; loss cosine_form mean) on the same pool and budget as mask",
    "mask_position": "mask_position = position masking (15 % of the atoms of any element removed; their element kept "
                     "as a token on the neighbours within 3 Å, which predict the displacement to the removed atom; "
                     "loss 1 - global cosine + squared length error in Å²) on the same pool and budget",
    "joint": "joint = position masking (bonded neighbours, 1.6 Å) and denoising (σ = 0.2 Å, the other atoms) "
             "in one step, loss sum with weights 1 and 1, on the same pool and budget",
}


def extra_arms_text(summary: Dict[str, Any]) -> str:
    """'Arms: ...' sentence for the opt-in arms of this grid ('' when it has none)."""
    parts = [EXTRA_ARM_TEXT[s] for s in summary.get("strategies", []) if s in EXTRA_ARM_TEXT]
    return ("Opt-in arms: " + "; ".join(parts) + ".") if parts else ""


def finetune_budget_text(budgets: Dict[str, Any]) -> str:
    """The fine-tuning budget in words: epochs, or (``--finetune-steps``) the step budget shared
    by every N and the epochs it makes at each N."""
    steps, per_n = int(budgets.get("finetune_steps") or 0), budgets.get("finetune_epochs_per_n") or {}
    if steps and per_n:
        return f"{steps} optimiser steps for every N (" + ", ".join(
            f"N = {n}: {e} epochs" for n, e in per_n.items()) + ")"
    return f"{budgets['finetune_epochs']} epochs"


def block_markers(summary: Dict[str, Any], key: Optional[str] = None) -> Tuple[str, str]:
    """Markers of an experiment's generated block in RESULTS.md (the one format of every dataset;
    ``key`` defaults to dataset + output folder + lr): a rerun or ``--summary-only`` replaces its
    block instead of appending a copy."""
    if key is None:
        key = f"{summary['dataset']} {summary.get('out_name', '')}:lr{summary['budgets']['finetune_lr']:g}"
    return (f"<!-- compare_pretraining {key} begin (generated from summary.json) -->",
            f"<!-- compare_pretraining {key} end -->")


#: wording of the paired comparisons between arms (grid.PAIRED_ARMS): (table title, who is "better")
PAIRED_TITLES = {("mask", "denoise"): ("Mask against denoise", "masking"),
                 ("mask", "denoise_1A"): ("Mask against denoise σ 1 Å", "masking"),
                 ("denoise_1A", "denoise"): ("Denoise σ 1 Å against σ 0.2 Å", "σ 1 Å"),
                 ("mask_denoise", "denoise"): ("Mask then denoise against denoise alone", "mask_denoise"),
                 ("mask_denoise", "mask"): ("Mask then denoise against mask alone", "mask_denoise"),
                 ("mask_reference", "mask"): ("Reference masking variant against mask", "mask_reference"),
                 ("mask_reference", "denoise"): ("Reference masking variant against denoise", "mask_reference"),
                 ("mask_position", "denoise"): ("Position masking against denoise", "mask_position"),
                 ("joint", "denoise"): ("Joint masking + denoising against denoise", "joint"),
                 ("mask_position", "mask"): ("Position masking against mask", "mask_position"),
                 ("joint", "mask"): ("Joint masking + denoising against mask", "joint")}


def _pretext_key(p: Dict[str, Any]) -> str:
    """The geometry-rule / per-molecule key of a pretraining stage: its validation metric without ``val_``
    (mean_cosine for the masking arms, vector_rmse for the denoising ones)."""
    return "mean_cosine" if p.get("metric") == "val_mean_cosine" else "vector_rmse"


def paired_arms_lines(summary: Dict[str, Any], st: Any) -> List[str]:
    """One markdown table per pair of grid.PAIRED_ARMS present in ``summary`` (its
    ``vs_<reference>`` entries): paired test-error differences by seed, for every report."""
    lines: List[str] = []
    for arm, ref in PAIRED_ARMS:
        vd = [(n, summary["results"][str(n)][arm][f"vs_{ref}"]) for n in summary["labels"]
              if f"vs_{ref}" in summary["results"].get(str(n), {}).get(arm, {})]
        if not vd:
            continue
        title, better = PAIRED_TITLES[(arm, ref)]
        lines += ["", f"{title}, paired by seed (negative = {better} better):", "",
                  f"| N labels | Δ test F MAE (meV/Å) | relative | Δ test E MAE (meV/atom) | seeds {better} better |",
                  "|---:|---:|---:|---:|---:|"]
        for n, v in vd:
            f = v["force_mae_meV_per_A"]
            lines.append(f"| {n} | {st.format_ci(f, 1)} | {100 * f['relative_mean']:+.1f} % | "
                         f"{st.format_ci(v['energy_mae_meV_per_atom'], 2)} | {f['n_lower']}/{f['n']} |")
    return lines


def wall_time_text(summary: Dict[str, Any]) -> str:
    """Wall time of the grid: the sum over its runs (a resumed grid's invocation covers only what was
    left), plus the last invocation's own time when it differs."""
    runs = [float(w) for w in (summary.get("run_wall_s") or {}).values() if w]
    total = sum(runs) / 60
    last = float(summary["wall_s"]) / 60
    if not runs or abs(total - last) < 0.05 * max(total, last, 1e-9):
        return f"Wall time {max(total, last):.1f} min"
    return f"Wall time of the runs {total:.1f} min in all (last invocation {last:.1f} min)"


def seed_count_text(summary: Dict[str, Any]) -> str:
    """The "mean ± sample std over N seeds" sentence, naming the cells that have fewer finished seeds than
    the grid (an arm run by another process or still running), so no row claims seeds it does not have."""
    n_grid = len(summary["seeds"])
    short = [f"{strat} at N = {n}: {len(r['seeds'])}"  # compare_summary.summarise writes every cell's seeds
             for n in summary["labels"] for strat, r in summary["results"].get(str(n), {}).items()
             if len(r["seeds"]) != n_grid]
    text = f"Mean ± sample std over {n_grid} seeds"
    return text + (f" (fewer where finished runs are missing — {'; '.join(short)})." if short else ".")


def block_title(what: str, summary: Dict[str, Any], out: Path) -> str:
    """``<what>, `<output folder>` (<date>)``: the start of a table's heading, unique in RESULTS.md
    (grids of the same model and budget differ by their folder; one folder's block is replaced in place)."""
    return f"{what}, `{Path(out).name}` ({str(summary['date'])[:10]})"


def generated_text(summary: Dict[str, Any], out: Path) -> str:
    """The "Generated <date> from <out>/summary.json by <command>; k of n runs finished." line of a table."""
    return (f"Generated {summary['date']} from `{out}/summary.json` by `{summary['command']}`"
            + (" (`--summary-only` over the runs finished so far)" if summary.get("summary_only") else "")
            + f"; {summary.get('runs_finished', '?')} of {summary.get('runs_planned', '?')} runs finished.")


def pretraining_curve_lines(summary: Dict[str, Any], average: Callable[..., Any] = np.nanmean,
                            rule: bool = False, wall_minutes: bool = False) -> List[str]:
    """One paragraph per pretraining arm: its validation pretext metric per epoch, ``average``d over
    seeds, with (``rule``) the geometry-only rule's score and the wall time per run (s, or min)."""
    lines: List[str] = []
    for arm, p in summary.get("pretraining", {}).items():
        curves = [c for c in p.get("curve_per_seed", []) if c]
        if not curves:
            continue
        L = min(len(c) for c in curves)
        mean = average([c[:L] for c in curves], axis=0)
        btxt = ""
        base = [x for x in p.get("geometry_baseline") or [] if x] if rule else []
        bkey = "mean_cosine" if arm == "mask" else "vector_rmse"
        if base and all(bkey in x for x in base):
            btxt = f"; geometry-only rule {np.mean([x[bkey] for x in base]):.3f}"
        wall = [w for w in p.get("wall_s", []) if w]
        wtxt = ((f"; wall {np.mean(wall) / 60:.1f} min per run." if wall_minutes else
                 f"; wall {np.mean(wall):.0f} s per run.") if wall else ".")
        lines += ["", f"Pretraining {arm}, validation {p['metric']} per epoch: "
                  + " → ".join(f"{x:.3f}" for x in mean) + btxt + wtxt]
    return lines


def markdown(summary: Dict[str, Any]) -> str:
    m, b, z = summary["model"], summary["budgets"], summary["sizes"]
    E = b["finetune_epochs"]
    q = max(1, E // 4)
    variant = (summary.get("pretraining", {}).get("mask") or {}).get("mask_variant")
    ft_text = ("no fine-tuning (--pretrain-only)" if summary.get("pretrain_only") else
               f"fine-tuning {finetune_budget_text(b)}, batch {b['finetune_batch_size']}, lr {b['finetune_lr']:g} cosine → "
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
        f"{b['pretrain_batch_size']}, lr {b['pretrain_lr']:g}); {ft_text}. {wall_time_text(summary)} "
        f"({b['threads'] or 'default'} thread(s) per run). {seed_count_text(summary)}"
        + (" " + extra_arms_text(summary) if extra_arms_text(summary) else ""),
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
        st = stats
        lines += [
            "",
            "Against scratch, paired by seed: mean test-error difference [95 % t interval] (negative = better "
            "than scratch), and the fine-tuning epochs each seed needs to reach its scratch run's final "
            "validation force MAE (— = not within its fine-tuning epochs).",
            "",
            "| N labels | strategy | Δ test F MAE (meV/Å) | Δ test E MAE (meV/atom) | epochs to scratch's final val F MAE |",
            "|---:|---|---:|---:|---|",
        ]
        for n in summary["labels"]:
            for strat in summary["strategies"]:
                v = summary["results"].get(str(n), {}).get(strat, {}).get("vs_scratch")
                if v is None:
                    continue
                ep = st.format_epochs(v["epochs_to_scratch_final_val_force_per_seed"])
                df = st.format_ci(v["force_mae_meV_per_A"], 1) if "force_mae_meV_per_A" in v else "(reference)"
                de = st.format_ci(v["energy_mae_meV_per_atom"], 2) if "energy_mae_meV_per_atom" in v else "(reference)"
                lines.append(f"| {n} | {strat} | {df} | {de} | {ep} |")
        lines += paired_arms_lines(summary, st)
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
            bkey = _pretext_key(p)
            if base and all(bkey in b for b in base):
                rule = float(np.mean([b[bkey] for b in base]))
                text += f", geometry-only rule {rule:.3f}"
                if best:
                    text += f" (learned − rule {np.mean(best) - rule:+.3f})"
            parts.append(text)
        lines.append("Pretraining (validation, mean over seeds; the geometry-only rule of "
                     "experiments.pretext_baseline on the same targets): " + "; ".join(parts) + ".")
        for strat, p in pre.items():
            per = [x for x in p.get("per_molecule") or [] if x]
            if not per:
                continue
            key = _pretext_key(p)
            cells = [f"{m} {np.mean([x[m]['learned'] for x in per]):.3f} / {np.mean([x[m]['rule'] for x in per]):.3f}"
                     for m in per[0]]
            name = f"{strat} (variant {p['mask_variant']})" if p.get("mask_variant") else strat
            lines.append(f"Per molecule, {name} {key} of best.pt / geometry-only rule on each molecule's held-out "
                         f"pretext-validation frames: " + ", ".join(cells) + ".")
    return "\n".join(lines) + "\n"
