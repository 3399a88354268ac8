"""Issue 14, "One-line errors and other defects": bad input gives one line naming the file / key /
value and the CLI's bad-input exit status, never a traceback or a message naming nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List

import numpy as np
import pytest

from maskpot.data.io import write_npz
from maskpot.data.sample import Sample
from maskpot.training.cli import eval_main, train_main

CONFIGS = Path(__file__).parents[2] / "configs"
SMALL = "model={name: painn, cutoff: 3.0, hidden_channels: 8, num_layers: 1}"


def _water(n_frames: int, box: float, forces: bool = True, seed: int = 0) -> List[Sample]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_frames):
        pos = []
        for _m in range(8):
            o = rng.uniform(0, box, 3)
            pos += [o, o + [0.96, 0, 0], o + [-0.24, 0.93, 0]]
        pos = np.array(pos)
        out.append(Sample(positions=pos, numbers=np.array([8, 1, 1] * 8), cell=np.eye(3) * box,
                          pbc=np.ones(3, bool), energy=float(rng.normal()),
                          forces=rng.normal(size=pos.shape) if forces else None,
                          molecule=np.repeat(np.arange(8), 3)))
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("robust_data")
    write_npz(d / "water.npz", _water(12, 7.0))
    write_npz(d / "no_forces.npz", _water(12, 7.0, forces=False))
    write_npz(d / "small_box.npz", _water(12, 5.0))
    rng = np.random.default_rng(1)
    write_npz(d / "methane.npz", [Sample(positions=rng.normal(size=(5, 3)) * 1.2, numbers=np.array([6, 1, 1, 1, 1]),
                                         energy=0.0, forces=np.zeros((5, 3))) for _ in range(12)])
    good = (d / "water.npz").read_bytes()
    (d / "empty.npz").write_bytes(b"")
    (d / "truncated.npz").write_bytes(good[: len(good) // 3])
    return d


def _train(data_path: Path, out: Path, *extra: str) -> int:
    return train_main([
        str(CONFIGS / "water_scratch.yaml"), "--no-progress", "--set", f"data.path={data_path}",
        "--set", "data.splits={train: 6, val: 3, test: 3}", "--set", "train.epochs=1", "--set", "train.batch_size=4",
        "--set", SMALL, "-o", str(out), *extra,
    ])  # fmt: skip


def _one_line(err: str, *needles: str) -> None:
    """One error line (log lines of the run may precede it), no traceback, naming ``needles``."""
    lines = [ln for ln in err.strip().splitlines() if ": error: " in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])


# ---- maskpot-train -------------------------------------------------------------------------
@pytest.mark.parametrize("name, needles", [
    ("missing.npz", ("data.path", "missing.npz", "not found")),
    ("empty.npz", ("empty.npz", "empty file")),
    ("truncated.npz", ("truncated.npz", "truncated or corrupt")),
])
def test_missing_empty_truncated_npz(data: Path, tmp_path: Path, capsys, name: str, needles) -> None:
    assert _train(data / name, tmp_path / "run") == 2
    _one_line(capsys.readouterr().err, *needles)


def test_npz_errors_name_the_file_in_eval_and_the_reader(data: Path, tmp_path: Path, capsys) -> None:
    from maskpot.data.io import read_dataset
    from maskpot.data.validate import DataValidationError

    for name in ("empty.npz", "truncated.npz"):
        with pytest.raises(DataValidationError, match=name):
            read_dataset(data / name)
        with pytest.raises(DataValidationError, match=name):
            read_dataset(data / name, format="npz")
    assert eval_main([str(tmp_path / "x.pt"), str(data / "empty.npz")]) == 2
    _one_line(capsys.readouterr().err, "empty.npz")


def test_cutoff_above_half_the_box_is_refused_before_training(data: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    from maskpot.training import trainer

    def no_training(*a, **k):  # the check must come before the first step
        raise AssertionError("training started")

    monkeypatch.setattr(trainer.Trainer, "fit", no_training)
    assert _train(data / "small_box.npz", tmp_path / "run") == 2
    _one_line(capsys.readouterr().err, "model.cutoff", "small_box.npz", "frame 0", "2.5")


def test_force_training_on_data_without_forces(data: Path, tmp_path: Path, capsys) -> None:
    assert _train(data / "no_forces.npz", tmp_path / "run") == 2
    _one_line(capsys.readouterr().err, "no_forces.npz", "frame 0", "forces", "force_weight")


@pytest.mark.parametrize("override, needles", [
    ("model.hiden_channels=3", ("model", "hiden_channels")),
    ("model.num_layers=abc", ("model.num_layers", "abc")),
    ("model.name=foo", ("model", "foo")),
    ("objective.force_weight=abc", ("objective", "force_weight", "abc")),
])
def test_bad_model_key_or_value(data: Path, tmp_path: Path, capsys, override: str, needles) -> None:
    assert _train(data / "water.npz", tmp_path / "run", "--set", override) == 2
    _one_line(capsys.readouterr().err, *needles)


@pytest.mark.parametrize("splits", ["{train: 100, val: 3, test: 3}", "{train: 100, val: 0.1, test: 0.1}"])
def test_splits_larger_than_the_data(data: Path, tmp_path: Path, capsys, splits: str) -> None:
    assert _train(data / "water.npz", tmp_path / "run", "--set", f"data.splits={splits}") == 2
    _one_line(capsys.readouterr().err, "data.splits", "water.npz", "12 frames")


def test_init_from_a_checkpoint_with_other_species(data: Path, tmp_path: Path, capsys) -> None:
    from maskpot.models import build_model
    from maskpot.training.checkpoint import save_checkpoint

    model = build_model({"name": "painn", "cutoff": 3.0, "hidden_channels": 8, "num_layers": 1, "species": [1, 8]})
    ckpt = tmp_path / "water.pt"
    save_checkpoint(ckpt, {"model_config": model.config, "model_state": model.state_dict(), "task": "mask"})
    rc = train_main([str(CONFIGS / "water_finetune.yaml"), "--no-progress", "--set", f"data.path={data / 'methane.npz'}",
                     "--set", "train.epochs=1", "--init", str(ckpt), "-o", str(tmp_path / "ft")])
    assert rc == 2
    _one_line(capsys.readouterr().err, "methane.npz", "[6]", str(ckpt))


def test_output_inside_a_regular_file(data: Path, tmp_path: Path, capsys) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("x")
    assert _train(data / "water.npz", f / "run") == 2
    _one_line(capsys.readouterr().err, "output.dir", str(f))
    assert _train(data / "water.npz", f) == 2
    _one_line(capsys.readouterr().err, "output.dir", str(f))
    assert f.read_text() == "x"


def test_export_output_inside_a_regular_file(tmp_path: Path, capsys) -> None:
    from maskpot.deploy.export import main
    from maskpot.models import build_model
    from maskpot.training.checkpoint import save_checkpoint

    model = build_model({"name": "painn", "cutoff": 3.0, "hidden_channels": 8, "num_layers": 1, "species": [1, 8]})
    save_checkpoint(tmp_path / "best.pt", {"model_config": model.config, "model_state": model.state_dict()})
    f = tmp_path / "notes.txt"
    f.write_text("x")
    assert main([str(tmp_path / "best.pt"), "-o", str(f / "model.pt")]) == 2
    _one_line(capsys.readouterr().err, str(f), "regular file")


# ---- maskpot-export ------------------------------------------------------------------------
def test_exporting_an_export_file(tmp_path: Path, capsys) -> None:
    from maskpot.deploy.export import export_model, main
    from maskpot.models import build_model
    from maskpot.training.checkpoint import save_checkpoint

    model = build_model({"name": "painn", "cutoff": 3.0, "hidden_channels": 8, "num_layers": 1, "species": [1, 8]})
    ckpt = tmp_path / "best.pt"
    save_checkpoint(ckpt, {"model_config": model.config, "model_state": model.state_dict()})
    exported = tmp_path / "model.pt"
    assert main([str(ckpt), "-o", str(exported)]) == 0
    capsys.readouterr()
    assert main([str(exported), "-o", str(tmp_path / "again.pt")]) == 2
    err = capsys.readouterr().err
    _one_line(err, "model.pt", "export file", str(ckpt))
    assert "weights_only" not in err and not (tmp_path / "again.pt").exists()
    # the other commands that take a checkpoint say the same
    from maskpot.training.checkpoint import CheckpointError, load_checkpoint

    with pytest.raises(CheckpointError, match="export file"):
        load_checkpoint(exported)
    with pytest.raises(CheckpointError, match="export file"):
        export_model(exported, tmp_path / "again.pt")


# ---- maskpot-md / maskpot-analyze ----------------------------------------------------------
@pytest.mark.parametrize("content", ["1\n\nO 0 0 0\n", "", "REMARK nothing\nEND\n"])
def test_md_pdb_on_a_non_pdb_file(tmp_path: Path, capsys, content: str) -> None:
    from maskpot.md.cli import md_main

    bad = tmp_path / "start.xyz"
    bad.write_text(content)
    rc = md_main(["openmm", "--model", str(tmp_path / "model.pt"), "--pdb", str(bad), "--steps", "2",
                  "--out", str(tmp_path / "md")])
    assert rc == 2  # bad input, as every maskpot command (3 = the stability guard stopped the run)
    _one_line(capsys.readouterr().err, "--pdb", str(bad), "PDB")


def _xyz_traj(path: Path) -> Path:
    import ase.io

    frames = [s.to_ase() for s in _water(6, 7.0, seed=3)]
    ase.io.write(path, frames, format="extxyz")
    return path


@pytest.mark.parametrize("log, needles", [
    ("step,time_ps,total_eV\n0,0.0,1.0\n1,0.1,2.0,9\n", ("bad.csv", "line 3")),
    ("step,time_ps,total_eV\n0,0.0,abc\n", ("bad.csv", "line 2", "total_eV", "abc")),
])
def test_analyze_garbage_log(tmp_path: Path, capsys, log: str, needles) -> None:
    from maskpot.md.cli import analyze_main

    traj = _xyz_traj(tmp_path / "traj.extxyz")
    (tmp_path / "bad.csv").write_text(log)
    assert analyze_main([str(traj), "--log", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "ana")]) == 2
    _one_line(capsys.readouterr().err, *needles)


def test_analyze_missing_trajectory(tmp_path: Path, capsys) -> None:
    from maskpot.md.cli import analyze_main

    assert analyze_main([str(tmp_path / "traj.dcd"), "--out", str(tmp_path / "ana")]) == 2
    err = capsys.readouterr().err
    _one_line(err, "traj.dcd", "no such file")
    assert "--top" not in err
    (tmp_path / "topology.pdb").write_text("END\n")
    assert analyze_main([str(tmp_path / "traj.dcd"), "--out", str(tmp_path / "ana")]) == 2
    _one_line(capsys.readouterr().err, "traj.dcd", "no such file")
    traj = _xyz_traj(tmp_path / "t.extxyz")
    assert analyze_main([str(traj), "--log", str(tmp_path / "none.csv"), "--out", str(tmp_path / "ana")]) == 2
    _one_line(capsys.readouterr().err, "none.csv", "no such file")


# ---- resume with the run folder spelled differently ----------------------------------------
def test_resume_with_absolute_path_or_from_another_folder(data: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "water.npz").write_bytes((data / "water.npz").read_bytes())
    monkeypatch.chdir(work)
    assert _train(Path("water.npz"), Path("runs/a")) == 0  # relative data and run folder
    capsys.readouterr()
    run = work / "runs" / "a"
    assert train_main(["--resume", "-o", str(run), "--set", "train.epochs=2", "--no-progress"]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert train_main(["--resume", "-o", str(run), "--set", "train.epochs=3", "--no-progress"]) == 0
    assert json.loads((run / "run.json").read_text())["summary"]["epochs_done"] == 3
    # the same folder through a relative spelling from yet another place
    monkeypatch.chdir(work / "runs")
    assert train_main(["--resume", "-o", "a", "--set", "train.epochs=4", "--no-progress"]) == 0
    # a real change is still refused
    assert train_main(["--resume", "-o", "a", "--set", "train.lr=0.5", "--no-progress"]) == 2
    assert "train.lr" in capsys.readouterr().err
    assert os.path.isfile(run / "last.pt")
