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


def test_molecule_pool_leaves_out_the_target_validation_frames(tmp_path: Path) -> None:
    """--pretrain --pretrain-pool all: every molecule's train_01 frames, labels dropped, minus the
    target's fine-tuning validation frames (the splits file maskpot-train then reuses)."""
    import numpy as np

    from maskpot.data.dataset import load_splits
    from maskpot.data.io import read_dataset, read_npz

    data = tmp_path / "rmd17"
    data.mkdir()
    target = data / "rmd17_ethanol_train_01.npz"
    _fake_rmd17(target, 1000, [6, 8, 1], seed=0)
    _fake_rmd17(data / "rmd17_uracil_train_01.npz", 30, [7, 6, 1, 1], seed=1)
    (data / "rmd17_ethanol_test_01.npz").write_bytes(b"never read")
    mod = _run_module()
    pool, species = mod.molecule_pool(data, target, tmp_path / "out")
    assert species == [1, 6, 7, 8]
    frames = read_npz(pool)
    assert len(frames) == 950 + 30 and all(f.energy is None and f.forces is None for f in frames)
    split = load_splits(tmp_path / "out" / "train" / "accurate" / "splits.npz")
    assert len(split["train"]) == 950 and len(split["val"]) == 50
    src = read_dataset(target)
    pooled = {f.positions.tobytes() for f in frames}
    assert not any(src[int(i)].positions.tobytes() in pooled for i in split["val"])
    assert all(src[int(i)].positions.tobytes() in pooled for i in split["train"])
    with np.load(tmp_path / "out" / "train" / "accurate" / "splits.npz") as z:
        assert "data_hash" in z.files
    stamp = pool.stat().st_mtime_ns
    mod.molecule_pool(data, target, tmp_path / "out")  # a rerun reuses the pool
    assert pool.stat().st_mtime_ns == stamp
