"""Statistics helpers of the experiments driver (experiments/stats.py), on synthetic numbers."""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import pytest



@pytest.fixture(scope="module")
def st():
    return importlib.import_module("experiments.stats")


def test_t_quantile_and_mean_ci(st):
    assert st.t_quantile(0.95, 2) == pytest.approx(4.302652729911275, rel=1e-9)
    assert st.t_quantile(0.95, 4) == pytest.approx(2.7764451051977987, rel=1e-9)
    assert st.t_quantile(0.90, 10**6) == pytest.approx(1.6448536, rel=1e-5)  # -> normal
    r = st.mean_ci([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)
    assert (r["n"], r["mean"], r["std"]) == (3, 2.0, 1.0)
    assert r["half_width"] == pytest.approx(half) and r["low"] == pytest.approx(2 - half) and r["high"] == pytest.approx(2 + half)
    one = st.mean_ci([5.0, float("nan")])  # NaN (a failed run) is left out
    assert one["n"] == 1 and one["mean"] == 5.0 and math.isnan(one["half_width"])
    assert st.mean_ci([])["n"] == 0
    with pytest.raises(ValueError, match="confidence"):
        st.t_quantile(95, 3)


def test_paired_differences(st):
    mask = {0: 10.0, 1: 12.0, 2: 9.0}
    scratch = {2: 12.0, 0: 12.0, 1: 13.0}  # paired by seed, whatever the order
    r = st.paired_differences(mask, scratch)
    half = 4.302652729911275 / math.sqrt(3)  # diffs -2, -1, -3: mean -2, std 1
    assert r["seeds"] == [0, 1, 2] and r["diff_per_seed"] == [-2.0, -1.0, -3.0]
    assert r["mean"] == pytest.approx(-2.0) and r["std"] == pytest.approx(1.0)
    assert r["low"] == pytest.approx(-2.0 - half) and r["high"] == pytest.approx(-2.0 + half)
    assert r["n_lower"] == 3 and r["reference_mean"] == pytest.approx(37 / 3)
    assert r["relative_mean"] == pytest.approx(-2.0 / (37 / 3))
    # sequences in the same seed order give the same numbers
    s = st.paired_differences([10.0, 12.0, 9.0], [12.0, 13.0, 12.0])
    assert s["mean"] == r["mean"] and s["half_width"] == pytest.approx(r["half_width"])
    # the pairing matters: the unpaired spread is far wider than the paired one
    assert st.mean_ci([10.0, 12.0, 9.0])["half_width"] > r["half_width"]
    # a wider confidence gives a wider interval
    assert st.paired_differences(mask, scratch, 0.99)["half_width"] > r["half_width"]
    # a missing value drops its pair only
    m = st.paired_differences([10.0, float("nan"), 9.0], [12.0, 13.0, 12.0])
    assert m["n"] == 2 and m["mean"] == pytest.approx(-2.5) and math.isnan(m["diff_per_seed"][1])
    with pytest.raises(ValueError, match="seeds differ"):
        st.paired_differences({0: 1.0, 1: 2.0}, {0: 1.0, 2: 2.0})
    with pytest.raises(ValueError, match="3 treated values vs 2"):
        st.paired_differences([1.0, 2.0, 3.0], [1.0, 2.0])
    assert st.format_ci(r) == f"-2.0 [{-2 - half:+.1f}, {-2 + half:+.1f}]"
    assert st.format_ci(st.paired_differences([3.0], [1.0])) == "+2.0 (1 seed)"
    assert st.format_ci({"n": 0}) == "n/a"


def _write_csv(path: Path, values, column="val_force_mae_meV_per_A", extra=True) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    lines = ["epoch,step,lr,train_loss," + column + ("" if not extra else ",val_loss")]
    for k, v in enumerate(values, start=1):
        cell = "" if v is None else repr(float(v))
        lines.append(f"{k},{10 * k},0.001,1.0,{cell}" + ("" if not extra else ",2.0"))
    (path / "metrics.csv").write_text("\n".join(lines) + "\n")
    return path


def test_epochs_to_reach(st):
    assert st.epochs_to_reach([100, 80, 60, 50], 60) == 3
    assert st.epochs_to_reach([100, 80, 60, 50], 10) is None
    assert st.epochs_to_reach([100, float("nan"), 60], 90) == 3
    assert st.epochs_to_reach([5, 4], 4.5, epochs=[11, 12]) == 12
    assert st.epochs_to_reach([5, 4], float("nan")) is None
    with pytest.raises(ValueError):
        st.epochs_to_reach([1, 2], 1, epochs=[1])


def test_epochs_to_scratch_final_from_metrics_csv(st, tmp_path):
    scratch = _write_csv(tmp_path / "ft_scratch", [100, 40, 60, 50])
    mask = _write_csv(tmp_path / "ft_mask", [70, 55, 49, 45])
    slow = _write_csv(tmp_path / "ft_slow", [300, 200, 120, None])
    epochs, values = st.read_metric(scratch)
    assert epochs == [1, 2, 3, 4] and values == [100, 40, 60, 50]
    assert math.isnan(st.read_metric(slow / "metrics.csv")[1][3])
    assert st.epochs_to_scratch_final(mask, scratch) == 3  # 49 <= 50 (scratch's last)
    assert st.epochs_to_scratch_final(mask, scratch, target="best") is None  # never <= 40
    assert st.epochs_to_scratch_final(scratch, scratch) == 2  # scratch got there early and went back up
    assert st.epochs_to_scratch_final(slow, scratch) is None
    with pytest.raises(KeyError, match="val_loss_x"):
        st.read_metric(scratch, "val_loss_x")
    with pytest.raises(ValueError, match="target"):
        st.epochs_to_scratch_final(mask, scratch, target="first")
