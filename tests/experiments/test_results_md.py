"""experiments/RESULTS.md stays readable: every heading unique (generated blocks name their output
folder and date), the decision table at the top at most 15 rows."""

from __future__ import annotations

import collections
from pathlib import Path

from experiments.compare_report import block_title

RESULTS = Path(__file__).resolve().parents[2] / "experiments" / "RESULTS.md"


def test_headings_are_unique() -> None:
    headings = [line for line in RESULTS.read_text().splitlines() if line.startswith("#")]
    repeated = [h for h, n in collections.Counter(headings).items() if n > 1]
    assert not repeated


def test_decision_table_first_and_short() -> None:
    lines = RESULTS.read_text().splitlines()
    sections = [i for i, line in enumerate(lines) if line.startswith("## ")]
    assert "decision table" in lines[sections[0]]
    rows = [line for line in lines[sections[0]: sections[1]] if line.startswith("|")][2:]  # minus header, rule
    assert 0 < len(rows) <= 15


def test_block_titles_name_folder_and_date() -> None:
    summary = {"date": "2026-12-07 08:24:14"}
    assert block_title("TIP3P water", summary, Path("/runs/a/grid1")) == "TIP3P water, `grid1` (2026-12-07)"
    assert block_title("TIP3P water", summary, Path("/runs/b/grid2")) != block_title("TIP3P water", summary, Path("/runs/a/grid1"))
