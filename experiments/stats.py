"""Statistics of pretraining comparisons: paired differences against scratch with t confidence
intervals, and how many fine-tuning epochs a run needs to reach scratch's final validation error.

Used by ``compare_pretraining.py``; plain functions on numbers and ``metrics.csv`` files (one row
per epoch, the ``epoch`` column 1-based, as written by :mod:`maskpot.training.metrics_log`).

Why paired: every seed fixes the labelled subset, the splits and the fine-tuning randomness for
scratch, denoise and mask alike, so seed-to-seed variation is shared; the per-seed difference
``treated - scratch`` removes it, and its mean ± t_{n-1} s / sqrt(n) is the honest interval for
"how much better than scratch" (a negative error difference is an improvement).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "FORCE_COL",
    "t_quantile",
    "mean_ci",
    "paired_differences",
    "read_metric",
    "epochs_to_reach",
    "epochs_to_scratch_final",
    "format_ci",
    "format_mean_std",
    "arm_table",
]

#: Validation force error column of ``metrics.csv``.
FORCE_COL = "val_force_mae_meV_per_A"

Values = Union[Sequence[float], Mapping[int, float]]


def t_quantile(confidence: float, dof: int) -> float:
    """Two-sided Student-t quantile: ``t`` with ``P(|T| <= t) = confidence`` for ``dof`` degrees
    of freedom (``dof >= 1``)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: expected a number in (0, 1), got {confidence!r}")
    if dof < 1:
        raise ValueError(f"dof: expected >= 1, got {dof!r}")
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2.0, dof))


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Dict[str, float]:
    """Mean and its t confidence interval over the finite ``values``.

    Returns ``n``, ``mean``, ``std`` (sample, ddof=1), ``half_width`` (``t_{n-1} std / sqrt(n)``),
    ``low``, ``high``; ``std`` and the interval are NaN with fewer than two values, everything is
    NaN with none.
    """
    a = np.asarray([float(v) for v in values], dtype=float)
    a = a[np.isfinite(a)]
    n = int(a.size)
    nan = float("nan")
    if n == 0:
        return {"n": 0, "mean": nan, "std": nan, "half_width": nan, "low": nan, "high": nan}
    mean = float(a.mean())
    if n < 2:
        return {"n": 1, "mean": mean, "std": nan, "half_width": nan, "low": nan, "high": nan}
    std = float(a.std(ddof=1))
    half = t_quantile(confidence, n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "half_width": half, "low": mean - half, "high": mean + half}


def _pairs(treated: Values, reference: Values) -> Tuple[List[int], np.ndarray, np.ndarray]:
    if isinstance(treated, Mapping) != isinstance(reference, Mapping):
        raise TypeError("paired_differences: give both as {seed: value} mappings or both as sequences")
    if isinstance(treated, Mapping):
        if set(treated) != set(reference):
            raise ValueError(
                f"paired_differences: the seeds differ: {sorted(treated)} vs {sorted(reference)} (pairs need both runs)"
            )
        seeds = sorted(treated)
        return seeds, np.array([treated[s] for s in seeds], float), np.array([reference[s] for s in seeds], float)
    if len(treated) != len(reference):
        raise ValueError(f"paired_differences: {len(treated)} treated values vs {len(reference)} reference values")
    return list(range(len(treated))), np.asarray(treated, float), np.asarray(reference, float)


def paired_differences(treated: Values, reference: Values, confidence: float = 0.95) -> Dict[str, object]:
    """Per-seed differences ``treated - reference`` and the t interval of their mean.

    Args:
        treated, reference: one value per seed, either two ``{seed: value}`` mappings (paired by
            seed; the seed sets must agree) or two sequences in the same seed order.
        confidence: of the interval (0.95 = 95 %).

    Returns:
        ``mean_ci`` of the differences (``n``, ``mean``, ``std``, ``half_width``, ``low``,
        ``high``) plus ``seeds``, ``diff_per_seed`` (NaN where either value is missing),
        ``reference_mean``, ``relative_mean`` (mean difference / mean reference over the same
        pairs) and ``n_lower`` (seeds where treated < reference: better, for an error).
    """
    seeds, t, r = _pairs(treated, reference)
    d = t - r
    ok = np.isfinite(d)
    out: Dict[str, object] = dict(mean_ci(d[ok].tolist(), confidence))
    ref_mean = float(r[ok].mean()) if ok.any() else float("nan")
    out.update(
        seeds=seeds,
        diff_per_seed=[float(x) if np.isfinite(x) else float("nan") for x in d],
        reference_mean=ref_mean,
        relative_mean=float(out["mean"]) / ref_mean if ok.any() and ref_mean != 0 else float("nan"),
        n_lower=int((d[ok] < 0).sum()),
        confidence=confidence,
    )
    return out


def read_metric(path: Union[str, Path], column: str = FORCE_COL) -> Tuple[List[int], List[float]]:
    """``(epochs, values)`` of one column of a ``metrics.csv`` (a run folder or the file itself);
    empty cells are NaN; rows without an ``epoch`` column are numbered 1, 2, ...

    Raises:
        FileNotFoundError: no such file; KeyError: the file has no ``column``.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.csv"
    with open(p, newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        fields = reader.fieldnames or []
    if column not in fields:
        raise KeyError(f"{p}: no column {column!r} (columns: {fields})")
    epochs = [int(float(r["epoch"])) if r.get("epoch") not in (None, "") else k + 1 for k, r in enumerate(rows)]
    values = [float(r[column]) if r.get(column) not in (None, "") else float("nan") for r in rows]
    return epochs, values


def epochs_to_reach(values: Sequence[float], target: float, epochs: Optional[Sequence[int]] = None) -> Optional[int]:
    """First epoch whose value is <= ``target`` (an error: lower is better), None if none is.

    ``epochs`` labels the values (default 1, 2, ...). A NaN target gives None.
    """
    if epochs is None:
        epochs = list(range(1, len(values) + 1))
    if len(epochs) != len(values):
        raise ValueError(f"epochs_to_reach: {len(epochs)} epochs for {len(values)} values")
    if not math.isfinite(float(target)):
        return None
    for e, v in zip(epochs, values):
        if math.isfinite(float(v)) and float(v) <= float(target):
            return int(e)
    return None


def epochs_to_scratch_final(
    run: Union[str, Path],
    scratch: Union[str, Path],
    column: str = FORCE_COL,
    target: str = "last",
) -> Optional[int]:
    """Epochs the run (a run folder or its ``metrics.csv``) needs to reach the scratch run's
    final validation error: ``target="last"`` is scratch's last epoch's value, ``"best"`` its
    lowest. None when the run never gets there (or scratch has no finite value).

    With ``run == scratch`` it is scratch's own count (at most its number of epochs for "last").
    """
    if target not in ("last", "best"):
        raise ValueError(f"target: expected 'last' or 'best', got {target!r}")
    _, sv = read_metric(scratch, column)
    finite = [v for v in sv if math.isfinite(v)]
    if not finite:
        return None
    goal = finite[-1] if target == "last" else min(finite)
    epochs, values = read_metric(run, column)
    return epochs_to_reach(values, goal, epochs)


def format_ci(stats: Mapping[str, object], digits: int = 1) -> str:
    """``'-3.2 [-5.0, -1.4]'`` (signed mean and interval), ``'-3.2 (1 seed)'`` without an
    interval, ``'n/a'`` without data."""
    n = int(stats.get("n", 0))  # type: ignore[arg-type]
    if n == 0:
        return "n/a"
    mean = float(stats["mean"])  # type: ignore[arg-type]
    if n < 2 or not math.isfinite(float(stats["half_width"])):  # type: ignore[arg-type]
        return f"{mean:+.{digits}f} ({n} seed)"
    return f"{mean:+.{digits}f} [{float(stats['low']):+.{digits}f}, {float(stats['high']):+.{digits}f}]"  # type: ignore[arg-type]


def format_epochs(epochs: Optional[Sequence[Optional[int]]]) -> str:
    """Per-seed epochs as ``'10, 12, —'`` (``—``: never reached); ``''`` without data."""
    return ", ".join("—" if x is None else str(x) for x in epochs) if epochs else ""


def format_mean_std(values: Sequence[Optional[float]], digits: int) -> str:
    """``'mean ± std'`` over seeds (sample std), the value alone for one seed, ``'n/a'`` for none."""
    a = np.array([float(v) for v in values if v is not None], dtype=float)
    if a.size == 0:
        return "n/a"
    if a.size == 1:
        return f"{a[0]:.{digits}f}"
    return f"{a.mean():.{digits}f} ± {a.std(ddof=1):.{digits}f}"


def arm_table(summary: Mapping[str, object]) -> List[str]:
    """Markdown rows (header included) of test errors per label count and arm, mean ± std over
    seeds, from a ``compare_pretraining`` ``summary.json``."""
    lines = [
        "| N labels | arm | seeds | test F MAE (meV/Å) | test E MAE (meV/atom) | E mean offset (meV/atom) "
        "| E RMSE, offset removed (meV/atom) | best epoch / epochs run | wall per run (s) |",
        "|---:|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    results: Mapping[str, Mapping[str, Mapping[str, list]]] = summary["results"]  # type: ignore[assignment]
    for n in summary["labels"]:  # type: ignore[union-attr]
        for arm in summary["strategies"]:  # type: ignore[union-attr]
            r = results.get(str(n), {}).get(arm)
            if r is None:
                continue
            be = ", ".join(f"{x}/{y}" for x, y in zip(r["best_epoch_per_seed"], r.get("epochs_done_per_seed", [])))
            lines.append(
                f"| {n} | {arm} | {len(r['force_mae_meV_per_A_per_seed'])} "
                f"| {format_mean_std(r['force_mae_meV_per_A_per_seed'], 1)} "
                f"| {format_mean_std(r['energy_mae_meV_per_atom_per_seed'], 3)} "
                f"| {format_mean_std(r.get('energy_mean_error_meV_per_atom_per_seed', []), 3)} "
                f"| {format_mean_std(r.get('energy_rmse_centred_meV_per_atom_per_seed', []), 3)} | {be} "
                f"| {format_mean_std(r.get('wall_s_per_seed', []), 0)} |")
    return lines
