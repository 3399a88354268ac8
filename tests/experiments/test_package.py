"""experiments/ is a package: its driver runs as a file and as a module from the repository root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("cmd", [["experiments/compare_pretraining.py"], ["-m", "experiments.compare_pretraining"]],
                         ids=["file", "module"])
def test_driver_runs_as_file_and_as_module(cmd) -> None:
    res = subprocess.run([sys.executable, *cmd, "--help"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "--dataset" in res.stdout
