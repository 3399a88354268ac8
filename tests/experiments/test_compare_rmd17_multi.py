"""Tiny end-to-end test of experiments/compare_pretraining.py with a multi-molecule rMD17
pretraining pool (--pretrain-molecules, issue 12): rmd17:ethanol fine-tuning from masking
pretrained on ethanol + aspirin + uracil (so N is in the pool although ethanol has none).

The pool must hold no labels, frames of all three molecules and no ethanol fine-tuning
validation frame; the pretext validation set is held out of the pool itself; scratch and the
pretrained model share one architecture whose species cover H, C, N, O; the summary and the
RESULTS.md block name the molecules, frame counts and mask variant and put the pretext score next
to the geometry-only rule. A --pretrain-only run with --mask-variant reference gives the other
variant's line; the opt-in arm mask_reference runs the reference variant beside mask in one grid,
paired by seed."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from experiments.grid import RMD17_MOLECULES
from experiments.rmd17_sources import pretrain_molecules

MOLS = ("aspirin", "ethanol", "uracil")  # canonical (RMD17_MOLECULES) order
N_ATOMS = {"aspirin": 21, "ethanol": 9, "uracil": 12}
K, V = 4, 2  # pretraining / pretext-validation frames per molecule


def _load_script():
    return importlib.import_module("experiments.compare_pretraining")


@pytest.fixture(scope="module")
def cmp():
    return _load_script()


def _argv(out: Path, shared_data: Path) -> list:
    return [
        "--dataset", "rmd17:ethanol", "--model", "painn", "--seeds", "0", "--labels", "4",
        "--pool", "8", "--val", "4", "--test-frames", "4", "--hidden", "8", "--layers", "1",
        "--pretrain-molecules", "ethanol", "aspirin", "uracil",
        "--pretrain-frames-per-molecule", str(K), "--pretrain-val-per-molecule", str(V),
        "--strategies", "scratch", "mask", "mask_reference", "--pretrain-epochs", "1", "--finetune-epochs", "1",
        "--batch-size", "4", "--pretrain-batch-size", "4", "--eval-batch-size", "8",
        "--out", str(out / "run"), "--data-root", str(shared_data), "--results-md", str(out / "RESULTS.md"),
        "--no-progress",
    ]


@pytest.fixture(scope="module")
def multi(tmp_path_factory, shared_data, cmp):
    out = tmp_path_factory.mktemp("compare_multi")
    argv = _argv(out, shared_data)
    assert cmp.main(argv) == 0
    return out / "run", out / "RESULTS.md", argv


def test_pool_is_unlabelled_multi_molecule_and_excludes_ethanol_validation(multi, shared_data) -> None:
    from maskpot.data.dataset import load_splits
    from maskpot.data.io import read_dataset

    out, _, _ = multi
    path = out / "data" / "pretrain_unlabelled.npz"
    with np.load(path) as z:
        assert "energy" not in z.files and "forces" not in z.files
        meta = json.loads(str(z["metadata"]))
    frames = read_dataset(path)
    assert len(frames) == len(MOLS) * (K + V)
    assert all(s.energy is None and s.forces is None for s in frames)
    assert meta["pretrain_molecules"] == list(MOLS) and meta["target_molecule"] == "ethanol"
    # layout: K pretraining frames per molecule, then V pretext-validation frames per molecule
    sizes = [s.n_atoms for s in frames]
    assert sizes == [N_ATOMS[m] for m in MOLS for _ in range(K)] + [N_ATOMS[m] for m in MOLS for _ in range(V)]
    assert {7} <= {int(z) for s in frames for z in s.numbers}  # uracil's N
    # the pretext validation split is the pool's own held-out frames (every molecule)
    pre = load_splits(out / "splits" / "pretrain.npz")
    assert pre["train"].tolist() == list(range(len(MOLS) * K))
    assert pre["val"].tolist() == list(range(len(MOLS) * K, len(MOLS) * (K + V)))
    assert sorted(frames[int(i)].n_atoms for i in pre["val"]) == sorted(N_ATOMS[m] for m in MOLS for _ in range(V))
    # no ethanol fine-tuning validation frame (by index and by coordinates), no test_01 frame
    ft = load_splits(out / "splits" / "finetune_n4_s0.npz")
    ft_val = set(ft["val"].tolist())
    eth = meta["indices"]["ethanol"]
    assert not ft_val & set(eth["train"] + eth["val"])
    train01 = read_dataset(shared_data / "rmd17" / "rmd17_ethanol_train_01.npz")
    test01 = read_dataset(shared_data / "rmd17" / "rmd17_ethanol_test_01.npz")
    pool_eth = [s.positions for s in frames if s.n_atoms == N_ATOMS["ethanol"]]
    assert len(pool_eth) == K + V
    for forbidden in [train01[i].positions for i in ft_val] + [s.positions for s in test01]:
        assert not any(np.allclose(forbidden, p) for p in pool_eth)
    for i, p in zip(eth["train"] + eth["val"], pool_eth):
        assert np.allclose(train01[i].positions, p)


def test_finetuning_from_the_multi_molecule_checkpoint(multi) -> None:
    out, _, _ = multi
    for strat in ("scratch", "mask"):
        tm = json.loads((out / "runs" / f"ft_{strat}_n4_s0" / "test_metrics.json").read_text())
        assert math.isfinite(tm["force_mae_meV_per_A"]) and math.isfinite(tm["energy_mae_meV_per_atom"])
    pre_cfg = yaml.safe_load((out / "runs" / "pretrain_mask_s0" / "config.yaml").read_text())
    scratch = yaml.safe_load((out / "runs" / "ft_scratch_n4_s0" / "config.yaml").read_text())
    mask = yaml.safe_load((out / "runs" / "ft_mask_n4_s0" / "config.yaml").read_text())
    assert pre_cfg["task"] == "mask" and sorted(pre_cfg["model"]["species"]) == [1, 6, 7, 8]
    assert mask["init"]["checkpoint"].endswith("pretrain_mask_s0/best.pt")
    # same architecture (species H, C, N, O) for scratch and the pretrained model
    assert scratch["model"] == mask["model"] and sorted(mask["model"]["species"]) == [1, 6, 7, 8]
    run = json.loads((out / "runs" / "ft_mask_n4_s0" / "run.json").read_text())
    assert run["init"]["loaded"] > 0 and run["init"]["source_task"] == "mask"


def test_summary_and_results_name_the_pool_and_the_variant(multi) -> None:
    out, md, _ = multi
    summary = json.loads((out / "summary.json").read_text())
    src = summary["sources"]
    assert src["pretrain_molecules"] == list(MOLS) and src["target_molecule"] == "ethanol"
    assert src["pretrain_frames_per_molecule"] == {m: K for m in MOLS}
    assert src["pretrain_val_frames_per_molecule"] == {m: V for m in MOLS}
    assert summary["sizes"]["pretrain_train"] == 3 * K and summary["sizes"]["pretrain_val"] == 3 * V
    p = summary["pretraining"]["mask"]
    assert p["mask_variant"] == "local"
    assert 0.0 < p["geometry_baseline"][0]["mean_cosine"] <= 1.0 and p["best_epoch_value"][0] is not None
    per = p["per_molecule"][0]  # best.pt and the rule on each molecule's held-out frames
    assert list(per) == list(MOLS) and all(per[m]["n_frames"] == V and -1 <= per[m]["learned"] <= 1
                                           and -1 <= per[m]["rule"] <= 1 for m in MOLS)
    text = md.read_text()
    assert "pretraining on 3 rMD17 molecules (aspirin, ethanol, uracil): 12 unlabelled train_01 frames" in text
    assert "mask variant local" in text and "mask (variant local): val_mean_cosine" in text
    assert "geometry-only rule 0." in text and "| 4 | mask |" in text
    assert "Per molecule, mask (variant local) mean_cosine of best.pt / geometry-only rule" in text


def test_mask_reference_arm_beside_mask(multi) -> None:
    """mask_reference: the same pool, budget and model as mask; only the variant (and the reference's
    loss form) differ; its fine-tuning starts from its own checkpoint; the report pairs it with mask."""
    out, md, _ = multi
    cfg = {a: yaml.safe_load((out / "runs" / f"pretrain_{a}_s0" / "config.yaml").read_text())
           for a in ("mask", "mask_reference")}
    assert cfg["mask"]["objective"].get("mask_variant", "local") == "local"  # the objective's default
    assert cfg["mask_reference"]["objective"]["mask_variant"] == "reference"
    assert cfg["mask_reference"]["objective"]["cosine_form"] == "mean"
    for c in cfg.values():  # everything but the variant, its loss form and the output folder agrees
        c["objective"].pop("mask_variant", None), c["objective"].pop("cosine_form", None), c.pop("output")
    assert cfg["mask"] == cfg["mask_reference"]
    ft = yaml.safe_load((out / "runs" / "ft_mask_reference_n4_s0" / "config.yaml").read_text())
    assert ft["init"]["checkpoint"].endswith("pretrain_mask_reference_s0/best.pt")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pretraining"]["mask_reference"]["mask_variant"] == "reference"
    assert summary["pretraining"]["mask"]["mask_variant"] == "local"
    assert "vs_mask" in summary["results"]["4"]["mask_reference"]
    text = md.read_text()
    assert "Reference masking variant against mask, paired by seed" in text
    assert "mask_reference = masking with the reference code's rMD17 variant" in text
    assert "Per molecule, mask_reference (variant reference) mean_cosine of best.pt" in text
    assert "mask_reference (variant reference): val_mean_cosine" in text


def test_summary_only_names_the_whole_grid(multi, cmp, tmp_path) -> None:
    """--summary-only keeps the training run's command when it trained the same arms; over arms that
    other processes trained (sharing --out) it states its own command, which names them all.
    (Runs last on the ``multi`` folder: it rewrites its summary.json.)"""
    out, _, argv = multi
    stored = json.loads((out / "summary.json").read_text())["command"]
    md = str(tmp_path / "R.md")
    assert cmp.main([*argv, "--summary-only", "--results-md", md]) == 0
    assert json.loads((out / "summary.json").read_text())["command"] == stored
    i = argv.index("--strategies")
    fewer = [*argv[:i + 1], "scratch", "mask", *argv[i + 4:]]
    assert cmp.main([*fewer, "--summary-only", "--results-md", md]) == 0
    command = json.loads((out / "summary.json").read_text())["command"]
    assert "--summary-only" in command and "mask_reference" not in command


def test_mask_reference_needs_rmd17(cmp, tmp_path) -> None:
    with pytest.raises(SystemExit, match="mask_reference: only with --dataset rmd17"):
        cmp.main(["--dataset", "water-dft", "--strategies", "scratch", "mask_reference", "--out", str(tmp_path / "a")])


def test_pretrain_only_reference_variant(cmp, shared_data, tmp_path) -> None:
    argv = _argv(tmp_path, shared_data)
    argv += ["--mask-variant", "reference", "--pretrain-only"]
    assert cmp.main(argv) == 0
    out = tmp_path / "run"
    assert not list((out / "runs").glob("ft_*"))
    summary = json.loads((out / "summary.json").read_text())
    p = summary["pretraining"]["mask"]
    assert p["mask_variant"] == "reference" and summary["results"] == {}
    assert "mean_cosine" in p["geometry_baseline"][0]
    text = (tmp_path / "RESULTS.md").read_text()
    assert "no fine-tuning (--pretrain-only)" in text and "mask (variant reference): val_mean_cosine" in text


def test_pretrain_molecules_options_are_checked(cmp, shared_data, tmp_path) -> None:
    with pytest.raises(SystemExit, match="only with --dataset rmd17"):
        cmp.main(["--dataset", "water-dft", "--pretrain-molecules", "all", "--out", str(tmp_path / "a")])
    with pytest.raises(SystemExit, match="expected 'all' or rMD17 molecules"):
        cmp.main(["--dataset", "rmd17:ethanol", "--pretrain-molecules", "ethanol", "caffeine",
                  "--out", str(tmp_path / "b")])
    args = cmp.build_parser().parse_args(["--dataset", "rmd17:aspirin", "--pretrain-molecules", "all"])
    assert pretrain_molecules(args) == list(RMD17_MOLECULES)
