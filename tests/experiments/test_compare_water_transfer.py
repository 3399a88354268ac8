"""compare_pretraining.py --dataset water-dft-transfer (experiments/water_transfer.py): a TIP3P pool
in the DFT box (kept with its labels for the supervised arms, without for mask/denoise), DFT
fine-tuning on nested subsets, every arm (scratch, denoise, mask, supervised, mask_supervised,
mask_dft, and the opt-in mask_denoise) run end to end; mask_dft pretrains on unlabelled DFT candidates
only (never a val/test frame); the tables come from summary.json and update one marked block of
RESULTS.md. The opt-in arms denoise_1A, mask_denoise and supervised_2x are also checked at the plan
level (their overrides, without training)."""

from __future__ import annotations

import importlib
import json
import warnings

import numpy as np
import pytest

from experiments.compare_datasets import resolve_defaults
from experiments.compare_runs import check_identical_budgets, cli_line, plan_runs, resolve
from experiments.grid import CONFIGS, DatasetPlan

pytest.importorskip("openmm")

ARMS = ("scratch", "denoise", "mask", "supervised", "mask_supervised", "mask_dft", "mask_denoise")

TINY = [
    "--dataset", "water-dft-transfer", "--model", "egnn", "--hidden", "8", "--layers", "1",
    "--tip3p-every", "10", "--tip3p-equilibration", "100",
    "--pool-trajectories", "2", "--pool-frames", "3", "--pool-val-frames", "1",
    "--val", "3", "--test-frames", "3", "--pool", "10", "--labels", "2", "4", "--seeds", "0", "1",
    "--pretrain-seeds", "0", "--pretrain-epochs", "1", "--pretrain-batch-size", "4", "--finetune-steps", "2",
    "--batch-size", "2", "--eval-batch-size", "4", "--patience", "1", "--no-progress", "--strategies", *ARMS,
]


@pytest.fixture(scope="module")
def cmp():
    return importlib.import_module("experiments.compare_pretraining")


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
                 "pretrain_mask_dft_s0", "pretrain_mask_denoise_s0"):
        assert (out / "runs" / name / "best.pt").is_file(), name
    tasks = {n: yaml.safe_load((out / "runs" / f"pretrain_{n}_s0" / "config.yaml").read_text())
             for n in ("mask", "supervised", "mask_supervised", "mask_dft", "denoise", "mask_denoise")}
    # mask_denoise: a sigma 0.2 denoising stage in sequence after mask, every mask tensor loaded
    md = tasks["mask_denoise"]
    assert md["task"] == "denoise" and md["objective"]["noise_sigma"] == pytest.approx(0.2)
    assert md["init"]["checkpoint"].endswith("pretrain_mask_s0/best.pt") and md["init"]["reset_heads"] is False
    assert md["model"] == tasks["mask"]["model"] and md["data"]["path"] == tasks["mask"]["data"]["path"]
    init = json.loads((out / "runs" / "pretrain_mask_denoise_s0" / "run.json").read_text())["init"]
    assert init["source_task"] == "mask" and init["loaded"] > 0
    assert init["not_in_checkpoint"] == [] and init["ignored_from_checkpoint"] == []
    assert tasks["supervised"]["task"] == "energy_force" and tasks["mask_supervised"]["task"] == "energy_force"
    assert tasks["mask_dft"]["task"] == "mask" and tasks["denoise"]["task"] == "denoise"
    assert tasks["mask_supervised"]["init"]["checkpoint"].endswith("pretrain_mask_s0/best.pt")  # in sequence
    assert not tasks["supervised"]["init"]["checkpoint"]
    assert tasks["supervised"]["data"]["path"].endswith("pretrain_tip3p_labelled.npz")
    assert tasks["supervised"]["data"]["split_file"].endswith("pretrain_labelled.npz")
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
    from maskpot.data.dataset import AtomicDataset, load_splits
    from maskpot.data.io import read_dataset
    from maskpot.data.validate import DataValidationError

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
    # every pretraining splits file carries the hash of the file it indexes (no "hash missing" warning)
    for split, file in (("pretrain.npz", "pretrain_unlabelled.npz"), ("pretrain_labelled.npz",
                        "pretrain_tip3p_labelled.npz"), ("pretrain_dft.npz", "pretrain_dft_unlabelled.npz")):
        frames = read_dataset(data / file)
        n = len(frames)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            load_splits(out / "splits" / split, n, AtomicDataset(frames).data_hash())
        with pytest.raises(DataValidationError, match="data_hash"):  # and only that file's
            load_splits(out / "splits" / split, n, "another file")
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
    assert r4["mask_denoise"]["vs_mask"]["force_mae_meV_per_A"]["n"] == 2
    assert r4["mask_denoise"]["vs_denoise"]["force_mae_meV_per_A"]["n"] == 2
    # masking against denoising (the compass's "below denoising"), never the reverse
    assert r4["mask"]["vs_denoise"]["force_mae_meV_per_A"]["n"] == 2 and "vs_mask" not in r4["denoise"]
    assert set(summary["pretraining"]) == {"denoise", "mask", "supervised", "mask_supervised", "mask_dft",
                                           "mask_denoise"}
    assert summary["pretraining"]["mask_denoise"]["metric"] == "val_vector_rmse"
    # the convergence criterion is reported against scratch: one epoch (or —) per seed
    reach = r4["mask"]["vs_scratch"]["epochs_to_scratch_final_val_force_per_seed"]
    assert len(reach) == 2
    text = md.read_text()
    assert "epochs to scratch's final val F |" in text
    cells = ", ".join("—" if x is None else str(x) for x in reach)
    assert any(l.startswith("| 4 | mask | scratch |") and l.endswith(f"| {cells} |") for l in text.splitlines())
    assert text.count("compare_pretraining water-dft-transfer") == 2
    for s in ("| 4 | mask_dft | 2 |", "| 2 | mask_supervised | supervised |", "E RMSE, offset removed",
              "Where masking adds to supervised", "lr 0.001", "| 4 | mask_denoise | denoise |",
              "| 2 | mask_denoise | mask |", "mask_denoise = a denoising stage"):
        assert s in text, s
    assert (out / "accuracy_vs_labels.png").is_file() and (out / "convergence.png").is_file()
    # a summary-only rerun trains nothing and rewrites the same block
    assert cmp.main([*argv, "--summary-only"]) == 0
    text2 = md.read_text()
    assert text2.count("compare_pretraining water-dft-transfer") == 2 and "--summary-only" in text2


def test_transfer_arms_need_the_transfer_dataset(cmp, tmp_path) -> None:
    with pytest.raises(SystemExit, match="only with --dataset water-dft-transfer"):
        cmp.main(["--dataset", "water-dft", "--strategies", "scratch", "supervised", "--out", str(tmp_path)])


# ------------------------------------------------------------------------------------------
# the opt-in arms at the plan level (no data generated, nothing trained)
# ------------------------------------------------------------------------------------------
def _stand_in_files(folder, frames):
    """Tiny water-dimer npz files (the planner hashes the files its splits index)."""
    from maskpot.data.io import write_npz
    from maskpot.data.sample import Sample

    rng = np.random.default_rng(0)
    base = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0],
                     [3.0, 0.0, 0.0], [3.96, 0.0, 0.0], [2.76, 0.93, 0.0]])
    for name, n in frames.items():
        write_npz(folder / name, [Sample(positions=base + rng.normal(0, 0.02, base.shape), numbers=[8, 1, 1, 8, 1, 1])
                                  for _ in range(n)])


def _plan(cmp, tmp_path, strategies, dataset="water-dft-transfer"):
    """(args, {run name: Run}) of a tiny water-dft-transfer grid on a stand-in dataset plan."""
    args = cmp.build_parser().parse_args([
        "--dataset", dataset, "--model", "egnn", "--hidden", "8", "--layers", "1", "--labels", "4",
        "--seeds", "0", "1", "--pretrain-seeds", "0", "--pretrain-epochs", "3", "--threads", "1",
        "--out", str(tmp_path), *(["--strategies", *strategies] if strategies else [])])
    resolve_defaults(args)
    c = CONFIGS
    _stand_in_files(tmp_path, {"dft_labelled.npz": 20, "unl.npz": 8, "lab.npz": 8, "dft.npz": 10})
    plan = DatasetPlan(
        name=dataset, kind="water-dft-transfer", labelled=tmp_path / "dft_labelled.npz", test_path=None, n_frames=20,
        pool_idx=np.arange(10), val_idx=np.arange(10, 14), test_idx=np.arange(14, 20),
        configs={"scratch": c / "water_scratch.yaml", "finetune": c / "water_finetune.yaml",
                 "mask": c / "water_pretrain_mask.yaml", "denoise": c / "water_pretrain_denoise.yaml"},
        pretrain_sets={"unlabelled": {"file": tmp_path / "unl.npz", "split": "pretrain.npz", "n_train": 6, "n_val": 2},
                       "labelled": {"file": tmp_path / "lab.npz", "split": "pretrain_labelled.npz", "n_train": 6,
                                    "n_val": 2},
                       "dft": {"file": tmp_path / "dft.npz", "split": "pretrain_dft.npz", "n_train": 9, "n_val": 1}})
    return args, {r.name: r for r in plan_runs(args, plan, tmp_path)}


def _without(cfg, *keys):
    """The resolved config without ``output`` and the dotted ``keys``."""
    import copy

    c = copy.deepcopy({k: v for k, v in cfg.items() if k != "output"})
    for key in keys:
        sec, name = key.split(".")
        c[sec].pop(name, None)
    return c


def test_pretraining_sets_sharing_a_splits_file_are_refused(cmp, tmp_path) -> None:
    """A splits file carries the hash of one data file, so two pretraining sets cannot share one."""
    args, _ = _plan(cmp, tmp_path, ["scratch", "mask"])
    plan = DatasetPlan(
        name="water-dft-transfer", kind="water-dft-transfer", labelled=tmp_path / "dft_labelled.npz", test_path=None,
        n_frames=20, pool_idx=np.arange(10), val_idx=np.arange(10, 14), test_idx=np.arange(14, 20), configs={},
        pretrain_sets={"unlabelled": {"file": tmp_path / "unl.npz", "split": "pretrain.npz", "n_train": 6, "n_val": 2},
                       "labelled": {"file": tmp_path / "lab.npz", "split": "pretrain.npz", "n_train": 6, "n_val": 2}})
    with pytest.raises(ValueError, match=r"shared: \['pretrain.npz'\]"):
        plan_runs(args, plan, tmp_path / "other")


def test_new_arms_plan(cmp, tmp_path) -> None:
    """denoise_1A: sigma 1.0, otherwise denoise's run; mask_denoise: a sigma 0.2 denoising stage that
    depends on (and is planned after) pretrain_mask, which runs although mask is not asked for;
    supervised_2x: supervised with twice --pretrain-epochs; every one fine-tuned from its own checkpoint
    with the one shared fine-tuning budget."""
    new = ["scratch", "denoise", "supervised", "mask_supervised", "denoise_1A", "mask_denoise", "supervised_2x"]
    args, runs = _plan(cmp, tmp_path, new)
    assert args.strategies == new  # canonical order: the opt-in arms last
    pre = [n for n, r in runs.items() if r.stage == "pretrain"]
    assert pre == ["pretrain_denoise_s0", "pretrain_mask_s0", "pretrain_supervised_s0", "pretrain_mask_supervised_s0",
                   "pretrain_denoise_1A_s0", "pretrain_mask_denoise_s0", "pretrain_supervised_2x_s0"]
    cfg = {n: resolve(r) for n, r in runs.items()}
    # denoise_1A
    d1 = cfg["pretrain_denoise_1A_s0"]
    assert "objective={noise_sigma: 1.0, denoise_target: noise}" in runs["pretrain_denoise_1A_s0"].overrides
    assert d1["task"] == "denoise" and d1["objective"]["noise_sigma"] == pytest.approx(1.0)
    assert cfg["pretrain_denoise_s0"]["objective"]["noise_sigma"] == pytest.approx(0.2)
    assert _without(d1, "objective.noise_sigma") == _without(cfg["pretrain_denoise_s0"], "objective.noise_sigma")
    assert runs["pretrain_denoise_1A_s0"].depends is None and d1["train"]["epochs"] == 3
    # mask_denoise: in sequence after mask
    md, mdr = cfg["pretrain_mask_denoise_s0"], runs["pretrain_mask_denoise_s0"]
    assert mdr.depends == "pretrain_mask_s0" and mdr.strategy == "mask_denoise"
    assert md["task"] == "denoise" and md["objective"]["noise_sigma"] == pytest.approx(0.2)
    assert md["objective"]["denoise_target"] == "noise"
    assert md["init"]["checkpoint"] == str(tmp_path / "runs" / "pretrain_mask_s0" / "best.pt")
    assert md["init"]["use_ema"] is True and md["init"]["reset_heads"] is False and md["init"]["freeze_encoder"] is False
    assert md["model"] == {}  # the architecture comes from the mask checkpoint
    # the same data, epochs and optimiser as the denoise stage; only init differs
    assert {k: md[k] for k in ("data", "train", "objective")} == {
        k: cfg["pretrain_denoise_s0"][k] for k in ("data", "train", "objective")}
    assert cfg["pretrain_mask_s0"]["task"] == "mask"
    # supervised_2x: twice the epochs of supervised, nothing else differs
    s2, s1 = cfg["pretrain_supervised_2x_s0"], cfg["pretrain_supervised_s0"]
    assert s2["task"] == "energy_force" and s2["train"]["epochs"] == 2 * args.pretrain_epochs == 6
    assert s1["train"]["epochs"] == 3 and runs["pretrain_supervised_2x_s0"].depends is None
    assert _without(s2, "train.epochs") == _without(s1, "train.epochs")
    assert s2["data"]["path"].endswith("lab.npz") and not s2["init"]["checkpoint"]
    # fine-tuning: each arm from its own checkpoint, one budget for all
    for arm in ("denoise_1A", "mask_denoise", "supervised_2x"):
        for seed in (0, 1):
            r = runs[f"ft_{arm}_n4_s{seed}"]
            assert r.depends == f"pretrain_{arm}_s0"
            assert cfg[r.name]["init"]["checkpoint"].endswith(f"pretrain_{arm}_s0/best.pt")
    check_identical_budgets(cfg, list(runs.values()))
    # the commands.sh line of mask_denoise overrides the base config's model with the mask stage's
    line = cli_line(mdr)
    assert "model.hidden_channels=8" in line and "pretrain_mask_s0/best.pt" in line


def test_new_arms_defaults_and_checks(cmp, tmp_path) -> None:
    """The opt-in arms are in no default list; supervised_2x needs water-dft-transfer; mask runs
    for mask_denoise alone; the existing arms' runs are unchanged by the new ones."""
    args, _ = _plan(cmp, tmp_path / "a", None)
    assert args.strategies == ["scratch", "denoise", "mask", "supervised", "mask_supervised", "mask_dft"]
    _, runs = _plan(cmp, tmp_path / "b", ["mask_denoise"])
    assert [n for n, r in runs.items() if r.stage == "pretrain"] == ["pretrain_mask_s0", "pretrain_mask_denoise_s0"]
    assert [n for n, r in runs.items() if r.stage == "finetune"] == ["ft_mask_denoise_n4_s0", "ft_mask_denoise_n4_s1"]
    old = ["scratch", "denoise", "mask", "supervised", "mask_supervised"]
    _, a = _plan(cmp, tmp_path / "c", old)
    _, b = _plan(cmp, tmp_path / "c", [*old, "denoise_1A", "mask_denoise", "supervised_2x"])
    assert all(b[n].overrides == r.overrides and b[n].depends == r.depends for n, r in a.items())
    with pytest.raises(SystemExit, match="only with --dataset water-dft-transfer"):
        cmp.main(["--dataset", "water-dft", "--strategies", "scratch", "supervised_2x", "--out", str(tmp_path / "x")])
    args = cmp.build_parser().parse_args(["--dataset", "water-dft", "--strategies", "denoise_1A", "mask_denoise"])
    resolve_defaults(args)  # the unlabelled-pool arms work on any dataset
    assert args.strategies == ["denoise_1A", "mask_denoise"]
