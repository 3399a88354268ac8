"""examples/rmd17/run.py: a rerun resumes an interrupted training and passes on what may change
on resume (``--epochs``), so extending or shortening a run is not silently ignored."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import List

import pytest

RUN = Path(__file__).parents[2] / "examples" / "rmd17" / "run.py"


def _run_module():
    spec = importlib.util.spec_from_file_location("rmd17_run", RUN)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_resume_passes_epochs_and_threads_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import maskpot.training.cli as cli

    seen: List[List[str]] = []
    monkeypatch.setattr(cli, "train_main", lambda argv: seen.append(list(argv)) or 0)
    mod = _run_module()
    overrides = ["train.num_threads=1", "train.epochs=200", "data.path=/x.npz", "model.cutoff=4.0"]
    run = tmp_path / "train" / "accurate"

    mod.train("accurate", "rmd17_accurate.yaml", tmp_path, overrides)  # fresh: every override
    assert seen[-1][0].endswith("rmd17_accurate.yaml") and "data.path=/x.npz" in seen[-1]

    run.mkdir(parents=True)
    (run / "last.pt").write_bytes(b"")
    mod.train("accurate", "rmd17_accurate.yaml", tmp_path, overrides)  # interrupted: resume
    argv = seen[-1]
    assert argv[:3] == ["--resume", "--output", str(run)]
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    assert sets == ["train.num_threads=1", "train.epochs=200"]


def _fake_rmd17(path: Path, n: int, numbers: List[int], seed: int) -> None:
    import numpy as np

    from maskpot.data.io import write_npz
    from maskpot.data.sample import Sample

    rng = np.random.default_rng(seed)
    base = np.arange(3 * len(numbers), dtype=float).reshape(-1, 3) * 0.7
    write_npz(path, [Sample(positions=base + rng.normal(0, 0.05, base.shape), numbers=numbers, energy=1e-3 * k,
                            forces=np.zeros(base.shape)) for k in range(n)])


def test_molecule_pool_leaves_out_every_molecules_validation_frames(tmp_path: Path) -> None:
    """--pretrain --pretrain-pool all: one pool (and pretraining) for every molecule under --out:
    every molecule's train_01 frames, labels dropped, minus the validation frames maskpot-train
    will draw when that molecule is fine-tuned (same sizes and seed)."""
    import numpy as np

    from maskpot.data.dataset import load_or_create_splits, save_splits
    from maskpot.data.io import read_dataset, read_npz

    data = tmp_path / "rmd17"
    data.mkdir()
    counts = {"ethanol": 60, "uracil": 40}
    _fake_rmd17(data / "rmd17_ethanol_train_01.npz", 60, [6, 8, 1], seed=0)
    _fake_rmd17(data / "rmd17_uracil_train_01.npz", 40, [7, 6, 1, 1], seed=1)
    (data / "rmd17_ethanol_test_01.npz").write_bytes(b"never read")
    mod = _run_module()
    sizes = {"train": 30, "val": 10, "test": 0}
    out = tmp_path / "out"
    pool, species = mod.molecule_pool(data, out, sizes, seed=3)
    assert species == [1, 6, 7, 8]
    frames = read_npz(pool)
    assert len(frames) == 50 + 30 and all(f.energy is None and f.forces is None for f in frames)
    pooled = {f.positions.tobytes() for f in frames}
    for mol, n in counts.items():
        # the splits maskpot-train makes for this molecule's fine-tuning (training/cli.py)
        split = load_or_create_splits(tmp_path / f"{mol}_splits.npz", n, sizes, seed=3)
        src = read_dataset(data / f"rmd17_{mol}_train_01.npz")
        assert not any(src[int(i)].positions.tobytes() in pooled for i in split["val"])
        assert all(src[int(i)].positions.tobytes() in pooled for i in split["train"])
    stamp = pool.stat().st_mtime_ns
    mod.molecule_pool(data, out, sizes, seed=3)  # a rerun reuses the pool
    assert pool.stat().st_mtime_ns == stamp
    with pytest.raises(SystemExit, match="other molecules or fine-tuning splits"):
        mod.molecule_pool(data, out, sizes, seed=4)  # another seed: other validation frames
    # a fine-tuning run whose stored splits hold other validation frames is refused
    run = out / "ethanol" / "train" / "accurate"
    run.mkdir(parents=True)
    mod.check_pool_splits(run, 60, sizes, seed=3)  # no splits file yet: fine
    other = load_or_create_splits(tmp_path / "other.npz", 60, sizes, seed=5)
    save_splits(run / "splits.npz", other, 60)
    with pytest.raises(SystemExit, match="not the ones the shared pretraining pool left out"):
        mod.check_pool_splits(run, 60, sizes, seed=3)
    assert np.array_equal(load_or_create_splits(tmp_path / "ethanol_splits.npz", 60, sizes, seed=3)["val"],
                          load_or_create_splits(tmp_path / "again.npz", 60, sizes, seed=3)["val"])


class _Stop(Exception):
    pass


def _ethanol_data(tmp_path: Path) -> Path:
    """An rMD17 folder with a fake ethanol train_01 (1100 frames) and a test_01 that must not be read."""
    data = tmp_path / "rmd17"
    data.mkdir()
    _fake_rmd17(data / "rmd17_ethanol_train_01.npz", 1100, [6, 8, 1], seed=0)
    (data / "rmd17_ethanol_test_01.npz").write_bytes(b"never read")
    return data


def _run_module_recording_training():
    """run.py with ``train`` replaced: each call checked against a run folder of another model size
    and recorded as (name, config, out, overrides, init); the fine-tuning call ("accurate") stops
    the run with _Stop."""
    mod = _run_module()
    calls = []
    check_same_model = mod.check_same_model

    def fake_train(name, config, out, overrides, init=None):
        check_same_model(out / "train" / name, overrides)  # what the real train() does before training
        calls.append((name, config, out, list(overrides), init))
        if name == "accurate":
            raise _Stop
        return out / "train" / name

    mod.train = fake_train
    return mod, calls


@pytest.mark.parametrize("task", ["denoise", "mask"])
def test_full_pretrain_runs_the_chosen_task_on_the_pool(tmp_path: Path, task: str) -> None:
    """--full --pretrain --pretrain-task T: one shared pretraining ``T_all_molecules`` with T's
    config on the pool (masking's local variant only for masking), then fine-tuning from its best.pt."""
    data = _ethanol_data(tmp_path)
    mod, calls = _run_module_recording_training()
    with pytest.raises(_Stop):
        mod.main(["--full", "--pretrain", "--pretrain-task", task, "--data", str(data), "--out", str(tmp_path / "o")])
    (pre_name, pre_cfg, _, pre_over, _), (_, ft_cfg, _, _, init) = calls
    assert pre_name == f"{task}_all_molecules" and pre_cfg == f"rmd17_pretrain_{task}.yaml"
    assert any(o.startswith("data.path=") and o.endswith("pretrain_pool.npz") for o in pre_over)
    assert ("objective.mask_variant=local" in pre_over) == (task == "mask")
    assert ft_cfg == "rmd17_accurate.yaml" and init == tmp_path / "o" / "train" / pre_name / "best.pt"


def test_seed_sets_the_fine_tuning_seed_in_its_own_folder(tmp_path: Path) -> None:
    """--seed N: the fine-tuning run gets train.seed=N in <out>/<molecule>_seed<N>, sharing the
    pretraining under --out (the same pretraining and splits, only the fine-tuning seed varies)."""
    data = _ethanol_data(tmp_path)
    mod, calls = _run_module_recording_training()
    for seed in (0, 2):
        with pytest.raises(_Stop):
            mod.main(["--full", "--pretrain", "--seed", str(seed), "--data", str(data), "--out", str(tmp_path / "o")])
    (_, _, pre0, _, _), (_, _, ft0, over0, init0), (_, _, pre2, _, _), (_, _, ft2, over2, init2) = calls
    assert pre0 == pre2 == tmp_path / "o" and init0 == init2  # one shared pretraining
    assert ft0 == tmp_path / "o" / "ethanol" and ft2 == tmp_path / "o" / "ethanol_seed2"
    assert "train.seed=0" in over0 and "train.seed=2" in over2
    with pytest.raises(SystemExit):
        mod.main(["--full", "--seed", "-1", "--data", str(data), "--out", str(tmp_path / "o")])


def test_channels_and_layers_reach_both_stages_and_a_mismatch_is_refused(tmp_path: Path) -> None:
    """--channels / --layers: pretraining and fine-tuning build the same resized network; a
    pretraining folder left by another size under the same --out is refused with its file named."""
    import yaml

    data = _ethanol_data(tmp_path)
    mod, calls = _run_module_recording_training()
    with pytest.raises(_Stop):
        mod.main(["--full", "--pretrain", "--channels", "96", "--layers", "3", "--data", str(data),
                  "--out", str(tmp_path / "o")])
    (_, _, _, pre_over, _), (_, _, _, ft_over, _) = calls
    for over in (pre_over, ft_over):
        assert "model.hidden_channels=96" in over and "model.num_layers=3" in over
    pre_run = tmp_path / "o" / "train" / "denoise_all_molecules"
    pre_run.mkdir(parents=True)
    (pre_run / "config.yaml").write_text(yaml.safe_dump({"model": {"name": "tensornet", "hidden_channels": 64}}))
    with pytest.raises(SystemExit, match="hidden_channels"):
        mod.main(["--full", "--pretrain", "--channels", "96", "--data", str(data), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit):
        mod.main(["--channels", "96", "--data", str(data), "--out", str(tmp_path / "o")])  # needs --full


def test_train_refuses_a_run_folder_of_another_model_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real train() checks the stored config before skipping, resuming or starting a run."""
    import yaml

    import maskpot.training.cli as cli

    monkeypatch.setattr(cli, "train_main", lambda argv: pytest.fail("trained despite the size mismatch"))
    run = tmp_path / "train" / "accurate"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"name": "tensornet", "num_layers": 2}}))
    with pytest.raises(SystemExit, match="num_layers"):
        _run_module().train("accurate", "rmd17_accurate.yaml", tmp_path, ["model.num_layers=3"])


def test_weight_decay_reaches_the_fine_tuning_only(tmp_path: Path) -> None:
    """--weight-decay regularises the fine-tuning; the shared pretraining (reused by every molecule
    and seed under --out) keeps its config's."""
    data = _ethanol_data(tmp_path)
    mod, calls = _run_module_recording_training()
    with pytest.raises(_Stop):
        mod.main(["--full", "--pretrain", "--weight-decay", "0.01", "--data", str(data), "--out", str(tmp_path / "o")])
    (_, pre_config, _, pre_over, _), (_, ft_config, _, ft_over, _) = calls
    assert ft_config == "rmd17_accurate.yaml" and "train.weight_decay=0.01" in ft_over
    assert not any(o.startswith("train.weight_decay") for o in pre_over)
    for bad in (["--weight-decay", "-1", "--full"], ["--weight-decay", "0.01"]):  # negative; needs --full
        with pytest.raises(SystemExit):
            mod.main(bad + ["--data", str(data), "--out", str(tmp_path / "o")])

