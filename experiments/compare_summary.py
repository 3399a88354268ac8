"""summary.json of ``compare_pretraining.py``: test errors per (N, strategy) over seeds, the paired
differences against scratch (``stats.py``), validation curves, and the pretraining stages' pretext
scores next to the geometry-only rule (per molecule for a multi-molecule rMD17 pool).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from experiments import stats
from experiments.compare_runs import Run, _pretrain_stage, finetune_epochs
from experiments.grid import PAIRED_ARMS, DatasetPlan
from experiments.stats import FORCE_COL

#: Pretraining arms on the unlabelled pool whose pretext score is shown next to the geometry-only rule.
GEOMETRY_BASELINE_ARMS = ("mask", "denoise", "denoise_1A", "mask_denoise", "mask_reference", "mask_position", "joint")

log = logging.getLogger("compare_pretraining")


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
              "supervised": FORCE_COL, "mask_supervised": FORCE_COL, "denoise_1A": "val_vector_rmse",
              "mask_denoise": "val_vector_rmse", "supervised_2x": FORCE_COL, "mask_reference": "val_mean_cosine",
              "mask_position": "val_mean_cosine", "joint": "val_mean_cosine"}
    for strat in metric:
        rs = [r for r in runs if r.stage == "pretrain" and r.strategy == strat and r.name in results]
        if not rs:
            continue
        key = metric[strat]
        first = [read_curve(r.dir, key)[0] for r in rs]
        last = [read_curve(r.dir, key)[-1] for r in rs]
        best = [_pretext_at_best(r, key) for r in rs]
        pre[strat] = {"metric": key, "first_epoch": first, "last_epoch": last, "best_epoch_value": best,
                      "curve_per_seed": [read_curve(r.dir, key) for r in rs], "seeds": [r.seed for r in rs],
                      "geometry_baseline": [_geometry_baseline(r) if strat in GEOMETRY_BASELINE_ARMS else None
                                            for r in rs],
                      "wall_s": [results[r.name].get("wall_s") for r in rs]}
        if _pretrain_stage(strat)[0] == "mask":
            pre[strat]["mask_variant"] = _mask_variant(rs[0])
        if strat in GEOMETRY_BASELINE_ARMS and len(plan.sources.get("pretrain_molecules") or []) > 1:
            pre[strat]["per_molecule"] = [_pretext_per_molecule(r, plan.sources) for r in rs]
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": command,
        "dataset": plan.name,
        # "egnn-reference": EGNN with the reference's coordinate updates and |r|² input (--egnn-reference),
        # named apart so the tables and plots never pass it off as maskpot's EGNN
        "model": {"name": "egnn-reference" if getattr(args, "egnn_reference", False) else args.model,
                  "hidden_channels": args.hidden, "num_layers": args.layers,
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
    from maskpot.checkpoint import model_from_checkpoint
    from maskpot.training.evaluate import evaluate
    from maskpot.training.objectives import build_objective
    from experiments.pretext_baseline import baseline_scores

    try:
        cfg = yaml.safe_load((run.dir / "config.yaml").read_text())
        d, seed = cfg["data"], int(cfg["train"]["seed"])
        samples = read_dataset(d["path"], format=d.get("format"))
        val = [samples[int(i)] for i in load_splits(Path(d["split_file"]), len(samples))["val"]]
        objective = build_objective(cfg["task"], cfg["objective"])
        model = model_from_checkpoint(run.dir / "best.pt")
        dtype = next(model.parameters()).dtype
        learned_key = "vector_rmse" if cfg["task"] == "denoise" else "mean_cosine"
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
    """Score of the geometry-only rule (experiments.pretext_baseline) on the pretraining
    run's validation frames, with the very targets its validation used (same objective, seed)."""
    import yaml

    from maskpot.data.dataset import load_splits
    from maskpot.data.io import read_dataset
    from maskpot.training.objectives import build_objective
    from experiments.pretext_baseline import baseline_scores

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
    st = stats
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
    # structure-only pretexts against each other: masking against denoising (issue 12's "below
    # denoising"), and mask_denoise against each of the two stages it chains (does the other add?)
    for arm, ref in PAIRED_ARMS:
        pairs = {s: (ft[(arm, s)], ft[(ref, s)]) for s in seeds if (arm, s) in ft and (ref, s) in ft}
        if arm in by_n and pairs:
            by_n[arm][f"vs_{ref}"] = {
                key: st.paired_differences({s: results[a.name][key] for s, (a, _) in pairs.items()},
                                           {s: results[r.name][key] for s, (_, r) in pairs.items()})
                for key in ("force_mae_meV_per_A", "energy_mae_meV_per_atom")}
