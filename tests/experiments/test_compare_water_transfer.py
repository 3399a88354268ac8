"""compare_pretraining.py --dataset water-dft-transfer (experiments/water_transfer.py): a TIP3P pool
in the DFT box (kept with its labels for the supervised arms, without for mask/denoise), DFT
fine-tuning on nested subsets, every arm (scratch, denoise, mask, supervised, mask_supervised,
mask_dft) run end to end; mask_dft pretrains on unlabelled DFT candidates only (never a val/test
frame); the tables come from summary.json and update one marked block of RESULTS.md."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openmm")

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "experiments" / "compare_pretraining.py"
ARMS = ("scratch", "denoise", "mask", "supervised", "mask_supervised", "mask_dft")

TINY = [
    "--dataset", "water-dft-transfer", "--model", "egnn", "--hidden", "8", "--layers", "1",
    "--tip3p-every", "10", "--tip3p-equilibration", "100",
    "--pool-trajectories", "2", "--pool-frames", "3", "--pool-val-frames", "1",
    "--val", "3", "--test-frames", "3", "--pool", "10", "--labels", "2", "4", "--seeds", "0", "1",
    "--pretrain-seeds", "0", "--pretrain-epochs", "1", "--pretrain-batch-size", "4", "--finetune-steps", "2",
    "--batch-size", "2", "--eval-batch-size", "4", "--patience", "1", "--no-progress",
]


@pytest.fixture(scope="module")
def cmp():
    spec = importlib.util.spec_from_file_location("compare_pretraining_wdt", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def grid(cmp, shared_data, tmp_path_factory):
    if not (shared_data / "water_dft" / "deepmd_water").is_dir():
        pytest.skip("DFT water set not found")
    out = tmp_path_factory.mktemp("wdt")
    md = out / "RESULTS.md"
    md.write_text("# results\n")
    argv = [*TINY, "--data-root", str(shared_data), "--out", str(out / "run"), "--results-md", str(md)]
    assert cmp.main(argv) == 0
    return out / "run", md, argv, shared_data


def _flat(a: np.ndarray) -> set:
    return {np.round(a[i].astype(np.float64), 4).tobytes() for i in range(a.shape[0])}


def test_every_arm_runs_from_its_own_checkpoint(grid) -> None:
    import yaml

    out, _, _, _ = grid
    for name in ("pretrain_denoise_s0", "pretrain_mask_s0", "pretrain_supervised_s0", "pretrain_mask_supervised_s0",
                 "pretrain_mask_dft_s0"):
        assert (out / "runs" / name / "best.pt").is_file(), name
    tasks = {n: yaml.safe_load((out / "runs" / f"pretrain_{n}_s0" / "config.yaml").read_text())
             for n in ("mask", "supervised", "mask_supervised", "mask_dft", "denoise")}
    assert tasks["supervised"]["task"] == "energy_force" and tasks["mask_supervised"]["task"] == "energy_force"
    assert tasks["mask_dft"]["task"] == "mask" and tasks["denoise"]["task"] == "denoise"
    assert tasks["mask_supervised"]["init"]["checkpoint"].endswith("pretrain_mask_s0/best.pt")  # in sequence
    assert not tasks["supervised"]["init"]["checkpoint"]
    assert tasks["supervised"]["data"]["path"].endswith("pretrain_tip3p_labelled.npz")
    assert tasks["mask"]["data"]["path"].endswith("pretrain_unlabelled.npz")
    assert tasks["mask_dft"]["data"]["path"].endswith("pretrain_dft_unlabelled.npz")
    for n in (2, 4):
        for seed in (0, 1):
            ref = None
            for arm in ARMS:
                d = out / "runs" / f"ft_{arm}_n{n}_s{seed}"
                assert (d / "test_metrics.json").is_file(), d
                cfg = yaml.safe_load((d / "config.yaml").read_text())
                assert cfg["data"]["path"].endswith("deepmd_water")
                ck = cfg["init"]["checkpoint"]
                assert (ck is None) if arm == "scratch" else ck.endswith(f"pretrain_{arm}_s0/best.pt")
                same = {k: cfg[k] for k in ("task", "data", "objective")} | {"train": cfg["train"]}
                ref = ref or same
                assert same == ref  # one fine-tuning budget for every arm
                # energy shifts refit on the DFT frames: no TIP3P-sized energy offset survives
                tm = json.loads((d / "test_metrics.json").read_text())
                assert tm["energy_mae_meV_per_atom"] < 1000.0, (arm, tm["energy_mae_meV_per_atom"])


def test_pretraining_files(grid) -> None:
    from maskpot.data.dataset import load_splits
    from maskpot.data.io import read_dataset

    out, _, _, shared = grid
    data = out / "data"
    # supervised pool: TIP3P energies/forces kept; the mask/denoise copy: same frames, no labels
    with np.load(data / "pretrain_tip3p_labelled.npz") as z:
        assert "energy" in z.files and "forces" in z.files
        lab_pos, e, f = np.asarray(z["positions"]), np.asarray(z["energy"]), np.asarray(z["forces"])
        meta = json.loads(str(z["metadata"]))
    assert lab_pos.shape == (8, 192, 3) and np.all(np.isfinite(e)) and f.shape == lab_pos.shape
    assert meta["n_train"] == 6 and meta["n_val"] == 2 and meta["box_A"] == pytest.approx(12.4447)
    with np.load(data / "pretrain_unlabelled.npz") as z:
        assert "energy" not in z.files and "forces" not in z.files
        assert np.array_equal(np.asarray(z["positions"]), lab_pos)
    # mask_dft: DFT candidates only, no labels, no val/test frame
    with np.load(data / "pretrain_dft_unlabelled.npz") as z:
        assert "energy" not in z.files and "forces" not in z.files
        dft_pos = np.asarray(z["positions"])
        dmeta = json.loads(str(z["metadata"]))
    assert dft_pos.shape[0] == 10 and dmeta["n_train"] == 9 and dmeta["n_val"] == 1
    allf = read_dataset(shared / "water_dft" / "deepmd_water")
    sp = load_splits(out / "splits" / "finetune_n4_s0.npz", len(allf))
    held = np.stack([allf[int(i)].positions for i in np.concatenate([sp["val"], sp["test"]])])
    assert len(sp["val"]) == 3 and len(sp["test"]) == 3
    assert not _flat(dft_pos) & _flat(held)
    assert set(dmeta["dft_indices"]).isdisjoint(set(sp["val"].tolist()) | set(sp["test"].tolist()))
    for n in (2, 4):  # fine-tuning frames are DFT candidates
        assert set(load_splits(out / "splits" / f"finetune_n{n}_s1.npz", len(allf))["train"].tolist()) <= set(
            dmeta["dft_indices"])
    pre = load_splits(out / "splits" / "pretrain_dft.npz")
    assert pre["train"].tolist() == list(range(9)) and pre["val"].tolist() == [9]
    # the TIP3P frames are not DFT frames
    assert not _flat(lab_pos) & _flat(np.stack([s.positions for s in allf]))


def test_tables_from_summary(grid, cmp) -> None:
    out, md, argv, _ = grid
    summary = json.loads((out / "summary.json").read_text())
    assert summary["strategies"] == list(ARMS)
    r4 = summary["results"]["4"]
    assert r4["mask_supervised"]["vs_scratch"]["force_mae_meV_per_A"]["n"] == 2
    assert r4["mask_supervised"]["vs_supervised"]["force_mae_meV_per_A"]["n"] == 2
    assert r4["mask_supervised"]["vs_mask"]["force_mae_meV_per_A"]["n"] == 2
    assert set(summary["pretraining"]) == {"denoise", "mask", "supervised", "mask_supervised", "mask_dft"}
    text = md.read_text()
    assert text.count("compare_pretraining water-dft-transfer") == 2
    for s in ("| 4 | mask_dft | 2 |", "| 2 | mask_supervised | supervised |", "E RMSE, offset removed",
              "Where masking adds to supervised", "lr 0.001"):
        assert s in text, s
    assert (out / "accuracy_vs_labels.png").is_file() and (out / "convergence.png").is_file()
    # a summary-only rerun trains nothing and rewrites the same block
    assert cmp.main([*argv, "--summary-only"]) == 0
    text2 = md.read_text()
    assert text2.count("compare_pretraining water-dft-transfer") == 2 and "--summary-only" in text2


def test_transfer_arms_need_the_transfer_dataset(cmp, tmp_path) -> None:
    with pytest.raises(SystemExit, match="only with --dataset water-dft-transfer"):
        cmp.main(["--dataset", "water-dft", "--strategies", "scratch", "supervised", "--out", str(tmp_path)])
