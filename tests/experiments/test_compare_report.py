"""experiments/compare_report.py: the wall time a table states is the work of every run, not only
of the last (resumed) invocation of the driver."""

from __future__ import annotations

import importlib

import pytest



@pytest.fixture(scope="module")
def report():
    return importlib.import_module("experiments.compare_report")


def test_wall_time_sums_the_runs_of_a_resumed_grid(report) -> None:
    # a grid resumed once: the last invocation ran only the final 6 min of 3 runs worth 90 min
    summary = {"wall_s": 360.0, "run_wall_s": {"pretrain_mask_s0": 1800.0, "ft_scratch_n50_s0": 1800.0,
                                                "ft_mask_n50_s0": 1800.0}}
    assert report.wall_time_text(summary) == "Wall time of the runs 90.0 min in all (last invocation 6.0 min)"


def test_wall_time_of_one_uninterrupted_invocation(report) -> None:
    # runs sum to about the invocation's time (driver overhead < 5 %): one number
    assert report.wall_time_text({"wall_s": 610.0, "run_wall_s": {"a": 300.0, "b": 300.0}}) == "Wall time 10.2 min"
    # summaries written before run_wall_s existed
    assert report.wall_time_text({"wall_s": 120.0}) == "Wall time 2.0 min"
    assert report.wall_time_text({"wall_s": 120.0, "run_wall_s": {}}) == "Wall time 2.0 min"


def test_results_block_of_another_out_folder_is_not_overwritten(report, tmp_path) -> None:
    """Block keys hold the --out basename only: a grid in b/ethanol must not replace a/ethanol's tables;
    a regeneration of the same folder replaces its block in place."""
    md = tmp_path / "RESULTS.md"
    markers = ("<!-- compare_pretraining rmd17:ethanol ethanol:lr0.001 begin -->",
               "<!-- compare_pretraining rmd17:ethanol ethanol:lr0.001 end -->")
    cmd = "python experiments/compare_pretraining.py --dataset rmd17:ethanol --out {} --seeds 0"
    report.write_results_block(md, {"command": cmd.format("/runs/a/ethanol")}, f"Command: `{cmd.format('/runs/a/ethanol')}`\nv1", markers)
    report.write_results_block(md, {"command": cmd.format("/runs/a/ethanol")}, f"Command: `{cmd.format('/runs/a/ethanol')}`\nv2", markers)
    text = md.read_text()
    assert "v2" in text and "v1" not in text and text.count(markers[0]) == 1
    with pytest.raises(SystemExit, match=r"--out \.\.\./a/ethanol, not of this grid \(--out \.\.\./b/ethanol\)"):
        report.write_results_block(md, {"command": cmd.format("/runs/b/ethanol")}, "Command: `x`\nv3", markers)
    assert md.read_text() == text  # nothing written


def test_seed_count_names_the_cells_with_fewer_seeds(report) -> None:
    summary = {"seeds": [0, 1, 2, 3, 4], "labels": [16, 64],
               "results": {"16": {"scratch": {"seeds": [0, 1, 2, 3, 4]}, "denoise": {"seeds": [0, 1, 2]}},
                           "64": {"scratch": {"seeds": [0, 1, 2, 3, 4]}}}}
    text = report.seed_count_text(summary)
    assert text.startswith("Mean ± sample std over 5 seeds")
    assert "denoise at N = 16: 3" in text and "scratch" not in text
    summary["results"]["16"]["denoise"]["seeds"] = [0, 1, 2, 3, 4]
    assert report.seed_count_text(summary) == "Mean ± sample std over 5 seeds."
