"""Smoke test of experiments/compare_pretraining.py: a tiny rMD17-ethanol comparison (few frames,
one epoch per stage) must give test metrics for scratch / denoise / mask, the summary and plots;
the pretraining stage must never see labels; the three fine-tuning runs must share one budget."""

from __future__ import annotations

import importlib
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from experiments.compare_datasets import _write_splits, plan_dataset
from experiments.compare_runs import plan_runs, resolve
from experiments.compare_summary import summarise

STRATEGIES = ("scratch", "denoise", "mask")


def _load_script():
    return importlib.import_module("experiments.compare_pretraining")


@pytest.fixture(scope="module")
def cmp():
    return _load_script()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, shared_data, cmp):
    out = tmp_path_factory.mktemp("compare")
    argv = [
        "--dataset", "rmd17:ethanol", "--model", "painn", "--seeds", "0", "--labels", "8",
        "--pool", "16", "--val", "4", "--test-frames", "8", "--hidden", "8", "--layers", "1",
        "--pretrain-epochs", "1", "--finetune-epochs", "2", "--batch-size", "4", "--pretrain-batch-size", "8",
        "--out", str(out / "run"), "--data-root", str(shared_data), "--results-md", str(out / "RESULTS.md"),
        "--no-progress", "--strategies", *STRATEGIES, "mask_denoise", "denoise_1A",
    ]
    assert cmp.main(argv) == 0
    return out / "run", out / "RESULTS.md", argv


def test_all_strategies_produce_metrics_summary_and_plots(smoke) -> None:
    out, md, argv = smoke
    for strat in STRATEGIES:
        tm = json.loads((out / "runs" / f"ft_{strat}_n8_s0" / "test_metrics.json").read_text())
        assert tm["n_frames"] == 8
        assert math.isfinite(tm["energy_mae_meV_per_atom"]) and math.isfinite(tm["force_mae_meV_per_A"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "rmd17:ethanol" and summary["seeds"] == [0] and summary["labels"] == [8]
    for strat in STRATEGIES:
        r = summary["results"]["8"][strat]
        assert set(r["force_mae_meV_per_A"]) == {"mean", "std"}
        assert len(r["val_force_mae_curve_mean"]) == 2  # one value per fine-tuning epoch
    assert summary["sizes"]["pool_unlabelled"] == 16 and summary["sizes"]["val"] == 4
    # paired differences against scratch (experiments/stats.py); one seed: no interval
    for strat in ("denoise", "mask"):
        v = summary["results"]["8"][strat]["vs_scratch"]
        assert v["force_mae_meV_per_A"]["n"] == 1 and v["force_mae_meV_per_A"]["seeds"] == [0]
        assert len(v["epochs_to_scratch_final_val_force_per_seed"]) == 1
    # masking against denoising, paired by seed: the difference of their own test errors
    vd = summary["results"]["8"]["mask"]["vs_denoise"]["force_mae_meV_per_A"]
    want = summary["results"]["8"]["mask"]["force_mae_meV_per_A"]["mean"] - summary["results"]["8"]["denoise"]["force_mae_meV_per_A"]["mean"]
    assert vd["seeds"] == [0] and vd["diff_per_seed"][0] == pytest.approx(want)
    assert "vs_denoise" not in summary["results"]["8"]["denoise"]
    # mask_denoise against each stage it chains: does the other stage add anything?
    r8 = summary["results"]["8"]
    for ref in ("denoise", "mask"):
        d = r8["mask_denoise"][f"vs_{ref}"]["force_mae_meV_per_A"]
        assert d["diff_per_seed"][0] == pytest.approx(r8["mask_denoise"]["force_mae_meV_per_A"]["mean"]
                                                       - r8[ref]["force_mae_meV_per_A"]["mean"])
    # masking against denoising at the reference's sigma (1 A), and the two sigmas against each other
    for arm, ref in (("mask", "denoise_1A"), ("denoise_1A", "denoise")):
        d = r8[arm][f"vs_{ref}"]["force_mae_meV_per_A"]
        assert d["diff_per_seed"][0] == pytest.approx(r8[arm]["force_mae_meV_per_A"]["mean"]
                                                       - r8[ref]["force_mae_meV_per_A"]["mean"])
    assert "Mask against denoise σ 1 Å, paired by seed" in md.read_text()
    # the geometry-only score of each pretext task, next to the learned one
    assert 0.0 < summary["pretraining"]["mask"]["geometry_baseline"][0]["mean_cosine"] <= 1.0
    assert summary["pretraining"]["denoise"]["geometry_baseline"][0]["vector_rmse"] > 0
    scratch_epochs = summary["results"]["8"]["scratch"]["vs_scratch"]["epochs_to_scratch_final_val_force_per_seed"]
    assert scratch_epochs[0] in (1, 2)
    for png in ("convergence.png", "accuracy_vs_labels.png"):
        assert (out / png).stat().st_size > 1000
    text = md.read_text()
    assert "rmd17:ethanol" in text and "| 8 | mask |" in text and "python experiments/compare_pretraining.py" in text
    assert "Against scratch, paired by seed" in text and "geometry-only rule 0." in text and "| 8 | scratch | (reference) | (reference) |" in text
    assert "fine-tuning 2 epochs, batch 4" in text
    assert "Mask against denoise, paired by seed" in text and text.count("| 8 | ") >= 7
    assert "Mask then denoise against denoise alone, paired by seed (negative = mask_denoise better)" in text
    # one marked block per experiment: regenerating it (--summary-only) replaces it, never appends a copy
    cmp_ = _load_script()
    assert cmp_.main([*argv, "--summary-only"]) == 0
    again = md.read_text()
    assert "--summary-only" not in again  # the command (and wall time) of the run that trained
    assert again.count("Against scratch, paired by seed") == 1 and again.count("compare_pretraining rmd17:ethanol run:lr0.001 begin") == 1
    lines = (out / "commands.sh").read_text().splitlines()
    assert sum(line.startswith("maskpot-train configs/") for line in lines) == 9  # 4 pretrainings (denoise, mask, mask_denoise, denoise_1A), 5 fine-tunings
    for name in ("pretrain_mask_s0", "pretrain_denoise_s0", "ft_scratch_n8_s0"):
        assert (out / "configs" / f"{name}.yaml").is_file()


def test_pretraining_never_sees_labels(smoke, shared_data) -> None:
    from maskpot.data.io import read_dataset
    from maskpot.training.evaluate import make_batch
    from maskpot.training.objectives import build_objective

    out, _, _ = smoke
    labelled = read_dataset(shared_data / "rmd17" / "rmd17_ethanol_train_01.npz", index=[0, 1])
    for strat in ("mask", "denoise"):
        cfg = yaml.safe_load((out / "runs" / f"pretrain_{strat}_s0" / "config.yaml").read_text())
        assert cfg["task"] == strat  # a pretext task, not energy_force
        assert cfg["data"]["test_path"] is None
        # the pretraining input file holds configurations only: no energy/forces arrays at all
        path = Path(cfg["data"]["path"])
        assert path.name == "pretrain_unlabelled.npz"
        with np.load(path) as z:
            assert "energy" not in z.files and "forces" not in z.files
        frames = read_dataset(path)
        assert len(frames) == 16 + 4
        assert all(s.energy is None and s.forces is None for s in frames)
        # and the pretraining transform drops labels even from labelled frames
        objective = build_objective(cfg["task"], cfg["objective"])
        for i, s in enumerate(labelled):
            new, extras = objective.transform(s, np.random.default_rng(i))
            assert new.energy is None and new.forces is None and "target_vectors" in extras
        batch = make_batch(labelled, [0, 1], objective, seed=0, epoch=0, dtype=torch.float32)
        assert "energy" not in batch and "forces" not in batch
    # pretraining frames = pool + val; test frames (separate test_01 subset) are not among them
    with np.load(out / "data" / "pretrain_unlabelled.npz") as z:
        meta = json.loads(str(z["metadata"]))
    assert len(meta["pool_indices"]) == 16 and len(meta["val_indices"]) == 4


def test_identical_finetuning_budgets(smoke) -> None:
    out, _, _ = smoke
    cfgs = {s: yaml.safe_load((out / "runs" / f"ft_{s}_n8_s0" / "config.yaml").read_text()) for s in STRATEGIES}
    strip = lambda c: {k: (v if k != "init" else {a: b for a, b in v.items() if a != "checkpoint"})  # noqa: E731
                       for k, v in c.items() if k not in ("output", "model")}
    assert strip(cfgs["scratch"]) == strip(cfgs["denoise"]) == strip(cfgs["mask"])
    assert cfgs["scratch"]["init"]["checkpoint"] is None
    assert cfgs["mask"]["init"]["checkpoint"].endswith("pretrain_mask_s0/best.pt")
    assert cfgs["denoise"]["init"]["checkpoint"].endswith("pretrain_denoise_s0/best.pt")
    # same architecture whether built from scratch or from a pretraining checkpoint
    assert cfgs["scratch"]["model"] == cfgs["mask"]["model"] == cfgs["denoise"]["model"]
    # the labelled subset is a subset of the pretraining pool and disjoint from validation
    from maskpot.data.dataset import load_splits

    ft = load_splits(out / "splits" / "finetune_n8_s0.npz")
    with np.load(out / "data" / "pretrain_unlabelled.npz") as z:
        meta = json.loads(str(z["metadata"]))
    assert set(ft["train"].tolist()) <= set(meta["pool_indices"])
    assert set(ft["val"].tolist()) == set(meta["val_indices"])


def test_splits_carry_the_hash_maskpot_train_checks(smoke) -> None:
    """Every splits file the driver writes stores the data hash maskpot-train computed for the run
    that used it (no "splits written by an older maskpot" warnings, mismatches are caught)."""
    out, _, _ = smoke
    checked = 0
    for run in sorted((out / "runs").iterdir()):
        info = json.loads((run / "run.json").read_text())
        split = Path(info["data_hash"]["split_file"])
        with np.load(split) as z:
            assert "data_hash" in z.files, split
            assert str(z["data_hash"]) == info["data_hash"]["data"], run.name
        checked += 1
    assert checked >= 5


def test_old_splits_files_get_the_hash_and_wrong_hashes_fail(cmp, tmp_path) -> None:
    from maskpot.data.dataset import save_splits
    from maskpot.data.validate import DataValidationError

    write = _write_splits
    path = tmp_path / "s.npz"
    idx = {"train": np.arange(3), "val": np.arange(3, 5), "test": np.zeros(0, dtype=np.int64)}
    save_splits(path, idx, 5)  # as written by an older driver: no hash
    write(path, 5, idx["train"], idx["val"], idx["test"], 0, data_hash="abc")
    with np.load(path) as z:
        assert str(z["data_hash"]) == "abc" and z["train"].tolist() == [0, 1, 2]
    with pytest.raises(DataValidationError, match="data_hash"):
        write(path, 5, idx["train"], idx["val"], idx["test"], 0, data_hash="other")


def test_rerun_skips_finished_runs(smoke, cmp) -> None:
    out, md, argv = smoke
    stamp = {s: os.stat(out / "runs" / f"ft_{s}_n8_s0" / "best.pt").st_mtime_ns for s in STRATEGIES}
    assert cmp.main(argv) == 0
    assert {s: os.stat(out / "runs" / f"ft_{s}_n8_s0" / "best.pt").st_mtime_ns for s in STRATEGIES} == stamp
    # a different config in the same --out is refused instead of silently reusing stale runs
    bad = list(argv)
    bad[bad.index("--batch-size") + 1] = "2"
    (out / "runs" / "ft_scratch_n8_s0" / "test_metrics.json").unlink()
    with pytest.raises(RuntimeError, match="different config"):
        cmp.main(bad)


def test_reference_options_reach_the_run_configs(cmp, shared_data, tmp_path) -> None:
    """--mask-variant reference and --egnn-reference end up in the resolved configs (no training)."""
    from maskpot.data.transforms import MaskElementsReference
    from maskpot.models import build_model
    from maskpot.training.objectives import build_objective

    args = cmp.build_parser().parse_args([
        "--dataset", "rmd17:ethanol", "--model", "egnn", "--egnn-reference", "--mask-variant", "reference",
        "--seeds", "0", "--labels", "8", "--pool", "16", "--val", "4", "--test-frames", "8",
        "--data-root", str(shared_data), "--out", str(tmp_path),
    ])
    args.strategies = list(STRATEGIES)
    plan = plan_dataset(args, tmp_path)
    runs = {r.name: r for r in plan_runs(args, plan, tmp_path)}
    mask = resolve(runs["pretrain_mask_s0"])
    assert mask["objective"]["mask_variant"] == "reference" and mask["objective"]["cosine_form"] == "mean"
    assert isinstance(build_objective(mask["task"], mask["objective"]).transform, MaskElementsReference)
    for name in ("pretrain_mask_s0", "pretrain_denoise_s0", "ft_scratch_n8_s0"):
        model = resolve(runs[name])["model"]
        assert model["coord_updates"] is True and model["distance_input"] == "squared"
    assert build_model({**model, "species": [1, 6, 8]}).coord_updates
    assert "mask_variant" not in resolve(runs["pretrain_denoise_s0"])["objective"]
    # the tables and plots name it apart from maskpot's EGNN
    assert summarise(args, plan, list(runs.values()), {}, 0.0, "cmd")["model"]["name"] == "egnn-reference"
    with pytest.raises(SystemExit, match="needs --model egnn"):
        cmp.main(["--model", "painn", "--egnn-reference", "--out", str(tmp_path / "x")])


def test_position_and_joint_arms_run_with_their_own_task_and_share_the_budget(tmp_path, shared_data, cmp) -> None:
    """The issue-33 arms: each pretrains with its own task/objective on the same pool and budget as
    denoise, the fine-tuning configs are identical, and the tables pair them against denoise."""
    out = tmp_path / "run"
    argv = [
        "--dataset", "rmd17:ethanol", "--model", "painn", "--seeds", "0", "--labels", "8",
        "--pool", "16", "--val", "4", "--test-frames", "8", "--hidden", "8", "--layers", "1",
        "--pretrain-epochs", "1", "--finetune-epochs", "1", "--batch-size", "4", "--pretrain-batch-size", "8",
        "--out", str(out), "--data-root", str(shared_data), "--results-md", str(tmp_path / "RESULTS.md"),
        "--no-progress", "--strategies", "scratch", "denoise", "mask_position", "joint",
    ]
    assert cmp.main(argv) == 0
    cfgs = {a: yaml.safe_load((out / "runs" / f"pretrain_{a}_s0" / "config.yaml").read_text())
            for a in ("denoise", "mask_position", "joint")}
    assert cfgs["mask_position"]["task"] == "mask_position" and cfgs["joint"]["task"] == "joint"
    assert cfgs["mask_position"]["objective"]["mask_elements"] == "all"
    assert cfgs["joint"]["objective"]["denoise_weight"] == 1.0
    for a in ("mask_position", "joint"):
        assert cfgs[a]["train"] == cfgs["denoise"]["train"] and cfgs[a]["data"] == cfgs["denoise"]["data"]
    summary = json.loads((out / "summary.json").read_text())
    assert {"mask_position", "joint"} <= set(summary["pretraining"])
    assert summary["pretraining"]["mask_position"]["metric"] == "val_mean_cosine"
    assert summary["pretraining"]["mask_position"]["geometry_baseline"][0]["mean_cosine"] is not None
    text = (tmp_path / "RESULTS.md").read_text()
    assert "Position masking against denoise" in text and "Joint masking + denoising against denoise" in text
