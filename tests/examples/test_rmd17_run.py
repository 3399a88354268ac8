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
