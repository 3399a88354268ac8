"""compare_pretraining.py --dataset tip3p-traj (experiments/water_sources.py): the pretraining pool,
the labelled frames and the test frames come from different, independent TIP3P trajectories; the
pool holds no labels; validation is disjoint from the fine-tuning candidates; one shared
pretraining seed; the tables come from summary.json and update one marked block of RESULTS.md."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openmm")


TINY = [
    "--dataset", "tip3p-traj", "--model", "egnn", "--hidden", "8", "--layers", "1",
    "--tip3p-molecules", "16", "--tip3p-box", "7.83", "--tip3p-every", "10", "--tip3p-equilibration", "100",
    "--pool-trajectories", "2", "--pool-frames", "4", "--pool-val-frames", "2", "--labelled-pool", "6",
    "--val", "2", "--test-frames", "3", "--labels", "2", "4", "--seeds", "0", "1", "--pretrain-seeds", "0",
    "--pretrain-epochs", "1", "--finetune-steps", "4", "--batch-size", "2", "--patience", "1", "--no-progress",
]


@pytest.fixture(scope="module")
def cmp():
    return importlib.import_module("experiments.compare_pretraining")


@pytest.fixture(scope="module")
def grid(cmp, tmp_path_factory):
    out = tmp_path_factory.mktemp("wt")
    md = out / "RESULTS.md"
    md.write_text("# results\n")
    argv = [*TINY, "--out", str(out / "run"), "--results-md", str(md)]
    assert cmp.main(argv) == 0
    return out / "run", md, argv


def _positions(path: Path) -> np.ndarray:
    with np.load(path) as z:
        return np.asarray(z["positions"])


def test_sources_are_separate_trajectories(grid) -> None:
    out, _, _ = grid
    data = out / "data"
    summary = json.loads((out / "summary.json").read_text())
    src = summary["sources"]
    seeds = src["trajectory_seeds"]
    assert len(seeds["pool"]) == 2
    assert len({*seeds["pool"], seeds["labelled"], seeds["test"]}) == 4  # all independent trajectories
    pool_files = [Path(p) for p in src["pool_trajectories"]]
    lab, test = Path(src["labelled_trajectory"]), Path(src["test_trajectory"])
    assert len({*pool_files, lab, test}) == 4
    # the pretraining file: pool trajectories only, no labels, train frames then val frames
    with np.load(data / "pretrain_unlabelled.npz") as z:
        assert "energy" not in z.files and "forces" not in z.files
        pre = np.asarray(z["positions"])
        meta = json.loads(str(z["metadata"]))
    assert meta["n_train"] == 8 and meta["n_val"] == 4 and meta["pool_trajectory_seeds"] == seeds["pool"]
    pool_pos = np.concatenate([_positions(p) for p in pool_files])
    assert pre.shape[0] == 12 and pool_pos.shape[0] == 12
    # no frame of the labelled or test trajectory is in the pool (and labelled vs test disjoint)
    flat = lambda a: {a[i].tobytes() for i in range(a.shape[0])}  # noqa: E731
    lab_pos, test_pos = _positions(lab), _positions(test)
    assert flat(pre) == flat(pool_pos)
    assert not flat(pre) & flat(lab_pos) and not flat(pre) & flat(test_pos) and not flat(lab_pos) & flat(test_pos)
    assert lab_pos.shape[0] == 6 + 2 and test_pos.shape[0] == 3
    # per-trajectory provenance
    for p, s in zip(pool_files, seeds["pool"]):
        with np.load(p) as z:
            m = json.loads(str(z["metadata"]))
        assert m["seeds"] == [s] and m["role"] == "pool"
    assert summary["sizes"]["pretrain_train"] == 8 and summary["sizes"]["pretrain_val"] == 4


def test_finetuning_splits_and_shared_pretraining(grid) -> None:
    import yaml

    from maskpot.data.dataset import load_splits

    out, _, _ = grid
    for n in (2, 4):
        for seed in (0, 1):
            sp = load_splits(out / "splits" / f"finetune_n{n}_s{seed}.npz")
            assert len(sp["train"]) == n and set(sp["train"].tolist()) <= set(range(6))
            assert sp["val"].tolist() == [6, 7] and len(sp["test"]) == 0  # val: the trajectory's last frames
            for strat in ("scratch", "denoise", "mask"):
                cfg = yaml.safe_load((out / "runs" / f"ft_{strat}_n{n}_s{seed}" / "config.yaml").read_text())
                assert cfg["data"]["test_path"].endswith("traj_test_1600.npz")
                assert cfg["data"]["path"].endswith("traj_labelled_1500.npz")
                assert cfg["train"]["early_stopping_patience"] == 1
                assert cfg["train"]["epochs"] == {2: 4, 4: 2}[n]  # --finetune-steps 4 at batch 2
                if strat != "scratch":  # every fine-tuning seed starts from pretraining seed 0
                    assert cfg["init"]["checkpoint"].endswith(f"pretrain_{strat}_s0/best.pt")
    assert not (out / "runs" / "pretrain_mask_s1").exists()
    pre = load_splits(out / "splits" / "pretrain.npz")
    assert pre["train"].tolist() == list(range(8)) and pre["val"].tolist() == list(range(8, 12))


def test_tables_from_summary_replace_one_block(grid, cmp) -> None:
    out, md, argv = grid
    text = md.read_text()
    assert text.count("compare_pretraining tip3p-traj") == 2  # begin + end marker
    assert "| 4 | mask | 2 |" in text and "E RMSE, offset removed" in text and "Δ F (%)" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["results"]["4"]["mask"]["vs_scratch"]["force_mae_meV_per_A"]["n"] == 2
    # the paired arm tables come from the summary's vs_<reference> entries (compare_summary.PAIRED_ARMS)
    d = summary["results"]["4"]["mask"]["vs_denoise"]["force_mae_meV_per_A"]
    assert "Mask against denoise, paired by seed (negative = masking better)" in text
    assert f"| 4 | {d['mean']:+.1f} [" in text.split("Mask against denoise, paired by seed")[1]
    # a summary-only rerun trains nothing and rewrites the same block
    assert cmp.main([*argv, "--summary-only"]) == 0
    text2 = md.read_text()
    assert text2.count("compare_pretraining tip3p-traj") == 2 and "--summary-only" in text2
