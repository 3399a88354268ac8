"""Smoke test of the benchmark functions on tiny water boxes (no timing asserts, no MACE)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import peers  # noqa: E402
from benchmarks.common import Case, interleave, ratio  # noqa: E402

FAST = {"egnn 64x3 3.5 Å": {"name": "egnn", "hidden_channels": 8, "num_layers": 1, "cutoff": 3.5, "num_rbf": 4}}


def tiny_box(n_atoms: int) -> peers.WaterBox:
    return peers.small_water_box(n_molecules=n_atoms // 3, box=9.0)


@pytest.fixture(autouse=True)
def one_warmup_call(monkeypatch):
    """Keep the smoke test short: one warm-up call per case."""
    import benchmarks.common as common

    monkeypatch.setattr(common, "settle", lambda case, tol=0.15: case.warmup_ms.append(common._one_call(case)[0]))


def test_interleave_and_ratio():
    calls = []
    a = Case("a", lambda: calls.append("a"), inner=2, warm_min=1, warm_max=1)
    b = Case("b", lambda: calls.append("b"), warm_min=1, warm_max=1)
    interleave([a, b], rounds=2)
    # warm-up a, warm-up b, then rounds: a a b, a a b
    assert calls[2:] == ["a", "a", "b", "a", "a", "b"]
    assert len(a.wall) == len(b.wall) == 2
    med, lo, hi = ratio(a, b)
    assert lo <= med <= hi


def test_peers_smoke(monkeypatch):
    from benchmarks.bench_peers import run_peers, summary_table, verdict

    monkeypatch.setattr(peers, "SMALL", tuple(FAST))
    res = run_peers(sizes=(24, 81), rounds=1, models=FAST, mace=False, box_factory=tiny_box, log=lambda m: None)
    per = res["cases"]["egnn 64x3 3.5 Å"]
    assert per[24]["ms"] > 0 and per[81]["ms"] > 0 and per["scaling"][0] > 0
    assert peers.OPENMM_LABEL in res["cases"]
    table = summary_table(res)
    assert "egnn 64x3 3.5 Å" in table and "ms @81" in table
    assert verdict(res)  # one line per small model


def test_breakdown_training_levers_smoke(monkeypatch):
    from benchmarks import bench_breakdown, bench_levers

    monkeypatch.setattr(peers, "MODELS", FAST)
    water = tiny_box(81)
    bd = bench_breakdown.run_breakdown(rounds=1, models=tuple(FAST), water=water, log=lambda m: None)
    names = [r[0] for r in bd["rows"]["egnn 64x3 3.5 Å"]]
    assert names[0] == "neighbour list" and any("OpenMM" in n for n in names) and any("null" in n for n in names)
    samples = bench_breakdown.tip3p_samples(n_molecules=27, box=9.5, n_frames=4, every=2)
    tr = bench_breakdown.run_training(rounds=1, batch_size=2, models=tuple(FAST), samples=samples, log=lambda m: None)
    assert len(tr["rows"]) == 2 and all(float(r[2]) > 0 for r in tr["rows"])
    lv = bench_levers.run_levers(rounds=1, models=tuple(FAST), water=water, log=lambda m: None)
    variants = [r[1] for r in lv["rows"]]
    assert variants[0] == "baseline" and "float64" in variants
    for row in lv["rows"]:
        assert float(row[4].split(" ")[0]) < 1e-3  # forces agree with the baseline's


def test_replace_blocks():
    from benchmarks.run import SUMMARY_TITLE, replace_blocks

    text = "# Benchmark results\n\nintro\n\n## Old section\n\nold\n"
    new = replace_blocks(text, {"peers": "PEERS 1"})
    assert new.index(SUMMARY_TITLE) < new.index("## Old section") and "PEERS 1" in new
    newer = replace_blocks(new, {"peers": "PEERS 2", "levers": "LEVERS"})
    assert "PEERS 1" not in newer and "PEERS 2" in newer and "LEVERS" in newer and "old" in newer
    assert newer.count(SUMMARY_TITLE) == 1
