"""Issue 14, "One-line errors and other defects": defects that are not error messages."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from maskpot.data import validate
from maskpot.data.validate import DataValidationError, check_cutoff


# ---- atomically written files honour the umask ---------------------------------------------
def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_honour_the_umask(tmp_path: Path, umask: int) -> None:
    import torch

    from maskpot.training.checkpoint import save_checkpoint
    from maskpot.utils import atomic_write_json, atomic_write_text

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_write_json(tmp_path / "run.json", {"a": 1})
        save_checkpoint(tmp_path / "c.pt", {"model_config": {"name": "painn"}, "model_state": {"w": torch.zeros(1)}})
        plain = tmp_path / "plain.txt"
        plain.write_text("x")  # what a normal write gives
    finally:
        os.umask(old)
    assert _mode(plain) == 0o666 & ~umask
    for name in ("a.txt", "run.json", "c.pt"):
        assert _mode(tmp_path / name) == 0o666 & ~umask, name


def test_atomic_rewrite_keeps_the_existing_mode(tmp_path: Path) -> None:
    from maskpot.utils import atomic_write_text

    path = tmp_path / "shared.txt"
    path.write_text("old")
    path.chmod(0o640)
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and _mode(path) == 0o640


def test_npz_data_file_is_world_readable_under_umask_022(tmp_path: Path) -> None:
    from maskpot.data.io import write_npz
    from maskpot.data.sample import Sample

    old = os.umask(0o022)
    try:
        write_npz(tmp_path / "d.npz", [Sample(positions=np.zeros((1, 3)), numbers=np.array([1]))])
    finally:
        os.umask(old)
    assert _mode(tmp_path / "d.npz") == 0o644


# ---- check_cutoff at the exact boundary ----------------------------------------------------
def test_cutoff_of_exactly_half_the_width_passes_despite_rounding(monkeypatch) -> None:
    sheared = np.array([[10.0, 0, 0], [8.0, 6.0, 0], [0, 0, 10.0]])
    real = validate.perpendicular_widths
    # the QR of some BLAS builds gives 5.999999999999999 for the width 6 of this cell
    monkeypatch.setattr(validate, "perpendicular_widths",
                        lambda c, p=None: np.nextafter(real(c, p), 0.0))  # one ulp short
    check_cutoff(sheared, [True] * 3, 3.0)
    with pytest.raises(DataValidationError, match="3.01"):
        check_cutoff(sheared, [True] * 3, 3.01, source="sheared")


# ---- no carriage-return progress bars when stderr is not a terminal ------------------------
class _Stream:
    def __init__(self, tty: bool) -> None:
        self.tty, self.parts = tty, []

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> int:
        self.parts.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_progress_only_on_a_terminal(monkeypatch) -> None:
    import sys

    from maskpot.utils import progress_wanted

    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    monkeypatch.setattr(sys, "stderr", _Stream(tty=False))
    assert not progress_wanted(True)
    monkeypatch.setattr(sys, "stderr", _Stream(tty=True))
    assert progress_wanted(True) and not progress_wanted(False)


def _tiny_training(tmp_path: Path, progress: bool):
    from maskpot.data.io import write_npz
    from maskpot.data.sample import Sample
    from maskpot.training.cli import run_training
    from maskpot.training.config import load_config

    rng = np.random.default_rng(0)
    frames = [Sample(positions=rng.normal(size=(5, 3)) * 1.3, numbers=np.array([6, 1, 1, 1, 1]), energy=float(rng.normal()),
                     forces=rng.normal(size=(5, 3))) for _ in range(8)]
    write_npz(tmp_path / "d.npz", frames)
    cfg = load_config(None, [f"data.path={tmp_path / 'd.npz'}", "data.splits={train: 6, val: 2}", "train.epochs=2",
                             "train.batch_size=2", "model={name: painn, cutoff: 3.0, hidden_channels: 8, num_layers: 1}",
                             f"output.dir={tmp_path / 'run'}", f"output.progress={'true' if progress else 'false'}",
                             "output.plot=false", "train.num_threads=1"])
    run_training(cfg)


def test_training_log_without_progress_bars_when_redirected(tmp_path: Path, monkeypatch, caplog) -> None:
    import logging
    import sys

    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    redirected = _Stream(tty=False)  # `maskpot-train ... > log 2>&1`, CI
    monkeypatch.setattr(sys, "stderr", redirected)
    with caplog.at_level(logging.INFO, logger="maskpot"):
        _tiny_training(tmp_path, progress=True)
    assert "\r" not in "".join(redirected.parts)
    epoch_lines = [r for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(epoch_lines) >= 2  # the trainer's one line per epoch stays


def test_md_without_progress_bar_when_redirected(tmp_path: Path, monkeypatch) -> None:
    import sys

    from ase.build import molecule
    from ase.calculators.emt import EMT

    from maskpot.md.ase_runner import run_ase
    from maskpot.md.guard import GuardSettings
    from maskpot.md.openmm_runner import MDSettings

    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    redirected = _Stream(tty=False)
    monkeypatch.setattr(sys, "stderr", redirected)
    s = MDSettings(steps=20, timestep=0.5, report_every=5, minimize_iterations=0, progress=True,
                   guard=GuardSettings(min_distance=None, max_bond=None, temperature_factor=None))
    run_ase(molecule("CH4"), EMT(), tmp_path / "md", s, echo=False)
    assert "\r" not in "".join(redirected.parts)
