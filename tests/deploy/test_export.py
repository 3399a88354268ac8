"""Export files: checkpoint → file (CLI and API), metadata, refused inputs, atomic writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deploy_models import MODEL_NAMES, Unscriptable, make_model, molecule, real_model_names, water_box

from maskpot.deploy.export import (
    ExportError,
    call_exported,
    export_model,
    load_exported,
    main,
    read_metadata,
)
from maskpot.training.checkpoint import CheckpointError, save_checkpoint

REAL = real_model_names()


def _args(atoms, dtype=torch.float64):
    cell = np.asarray(atoms.cell) if atoms.pbc.all() else np.zeros((3, 3))
    return (torch.tensor(atoms.positions, dtype=dtype), torch.tensor(atoms.numbers), torch.tensor(cell, dtype=dtype),
            torch.tensor(atoms.pbc))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real-model checkpoint whose EMA weights differ from the raw weights."""
    name = "painn" if "painn" in REAL else REAL[0]
    model = make_model(name, dtype=torch.float32)
    ema = {k: (v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp("ckpt") / "model.ckpt"
    save_checkpoint(path, {
        "model_config": model.config, "model_state": model.state_dict(), "ema_state": ema,
        "task": "energy_force", "train_config": {"lr": 1e-3, "epochs": 2}, "data_hash": "0123456789abcdef",
        "versions": {"maskpot": "0.1.0"}, "metrics": {"val_force_mae": 0.1},
    })
    return path, model, ema


def test_cli_export_and_info(checkpoint, tmp_path, capsys):
    path, model, ema = checkpoint
    out = tmp_path / "model.pt"
    assert main([str(path), "-o", str(out), "--dtype", "float64"]) == 0
    meta = read_metadata(out)
    assert meta["train_config"] == {"lr": 1e-3, "epochs": 2} and meta["data_hash"] == "0123456789abcdef"
    assert meta["weights"] == "ema" and meta["dtype"] == "float64" and meta["task"] == "energy_force"
    assert meta["model"] == model.config["name"] and meta["model_config"] == model.config
    assert meta["checkpoint_versions"] == {"maskpot": "0.1.0"}
    # EMA weights by default; --no-ema gives the raw ones
    module, _ = load_exported(out)
    atoms = molecule()
    model_ema = make_model(model.config["name"], dtype=torch.float32)
    model_ema.load_state_dict(ema)
    from maskpot.deploy.export import ExportedPotential

    e_ema = float(ExportedPotential(model_ema.double())(*_args(atoms))[0].detach())
    e_raw = float(ExportedPotential(model.double())(*_args(atoms))[0].detach())
    assert float(module(*_args(atoms))[0].detach()) == pytest.approx(e_ema, rel=1e-10)
    assert main([str(path), "-o", str(out), "--dtype", "float64", "--no-ema"]) == 0
    module, meta = load_exported(out)
    assert meta["weights"] == "model"
    assert float(module(*_args(atoms))[0].detach()) == pytest.approx(e_raw, rel=1e-10)
    capsys.readouterr()
    assert main(["--info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "cutoff" in text and "0123456789abcdef" in text and json.loads(text[text.index("\n{"):])["kind"] == meta["kind"]


def test_cli_errors(checkpoint, tmp_path, capsys):
    path, model, _ = checkpoint
    out = tmp_path / "model.pt"
    assert main([str(path), "-o", str(out), "--dtype", "float16"]) == 2
    assert "unsupported dtype 'float16'" in capsys.readouterr().err and not out.exists()
    # a checkpoint without its weights
    broken = tmp_path / "broken.ckpt"
    torch.save({"format": "maskpot-checkpoint", "format_version": 1, "model_config": model.config}, broken)
    assert main([str(broken), "-o", str(out)]) == 2
    assert "missing key 'model_state'" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="model_state"):
        export_model(broken, out)
    assert main([str(tmp_path / "nope.ckpt"), "-o", str(out)]) == 2
    assert "file not found" in capsys.readouterr().err
    assert main(["--info", str(path)]) == 2  # a checkpoint is not an export file
    assert "not a maskpot export file" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:DeprecationWarning")
def test_api_refused_inputs(tmp_path):
    model = make_model("toy-energy")
    with pytest.raises(ValueError, match="unsupported dtype"):
        export_model(model, tmp_path / "m.pt", dtype="bfloat16")
    with pytest.raises(ValueError, match="neighbour-list backend"):
        export_model(model, tmp_path / "m.pt", neighbor_backend="magic")
    text = tmp_path / "text.pt"
    text.write_text("not a model")
    with pytest.raises(ExportError, match="not a TorchScript export file"):
        load_exported(text)
    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(plain))
    with pytest.raises(ExportError, match="without metadata.json"):
        load_exported(plain)
    with pytest.raises(ExportError, match="not found"):
        load_exported(tmp_path / "missing.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.pt", "text.pt"]


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out" / "model.pt"
    with pytest.raises(ExportError, match="TorchScript"):
        export_model(Unscriptable(), target)
    assert not target.exists() and list(target.parent.glob("*")) == [] if target.parent.exists() else True
    # an existing file is replaced only on success
    export_model(make_model("toy-energy"), target)
    before = target.read_bytes()
    with pytest.raises(ExportError):
        export_model(Unscriptable(), target)
    assert target.read_bytes() == before and [p.name for p in target.parent.iterdir()] == ["model.pt"]


def test_wrapper_validates_inputs(exported):
    path, _ = exported("toy-energy", "float64")
    module, _ = load_exported(path)
    pos, num, cell, pbc = _args(molecule())
    bad_num = num.clone()
    bad_num[0] = 17
    with pytest.raises(torch.jit.Error, match=r"ValueError: unknown element.*\[17\]"):
        module(pos, bad_num, cell, pbc)
    with pytest.raises(ValueError, match=r"unknown element.*\[17\]"):
        call_exported(module, pos, bad_num, cell, pbc)
    with pytest.raises(ValueError, match=r"positions must have shape \[N, 3\]"):
        call_exported(module, pos[:, :2], num, cell, pbc)
    with pytest.raises(ValueError, match="atomic_numbers must have shape"):
        call_exported(module, pos, num[:-1], cell, pbc)
    with pytest.raises(ValueError, match="cell must have shape"):
        call_exported(module, pos, num, cell[:2], pbc)
    small = water_box(n_side=2, spacing=3.1)
    with pytest.raises(ValueError, match="larger than half"):
        call_exported(module, *_args(small))


def test_vesin_backend_matches_torch(tmp_path):
    pytest.importorskip("vesin_torch")
    model = make_model("toy-energy")
    export_model(model, tmp_path / "t.pt", dtype="float64", neighbor_backend="torch")
    export_model(model, tmp_path / "v.pt", dtype="float64", neighbor_backend="vesin")
    mt, _ = load_exported(tmp_path / "t.pt")
    mv, meta = load_exported(tmp_path / "v.pt")
    assert meta["neighbor_backend"] == "vesin"
    for atoms in (water_box(), molecule()):
        et, ft = mt(*_args(atoms))
        ev, fv = mv(*_args(atoms))
        assert float(ev.detach()) == pytest.approx(float(et.detach()), rel=1e-12)
        np.testing.assert_allclose(fv.detach().numpy(), ft.detach().numpy(), atol=1e-12)


@pytest.mark.parametrize("name", [n for n in MODEL_NAMES if not n.startswith("toy")])
def test_real_model_metadata(exported, name):
    path, model = exported(name, "float32")
    _, meta = load_exported(path)
    assert meta["model"] == name and meta["kind"] == model.kind
    assert meta["cutoff"] == pytest.approx(model.cutoff) and meta["species"] == model.species
    assert meta["model_config"]["name"] == name


def test_ase_calculator_from_checkpoint(checkpoint, tmp_path):
    from maskpot.deploy.ase import MaskpotCalculator

    path, model, _ = checkpoint
    out = tmp_path / "model.pt"
    export_model(path, out, dtype="float64")
    atoms = water_box()
    atoms.calc = MaskpotCalculator(path, dtype="float64")  # checkpoint, EMA weights
    e_ckpt, f_ckpt = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = MaskpotCalculator(out)
    assert atoms.get_potential_energy() == pytest.approx(e_ckpt, rel=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), f_ckpt, atol=1e-9)
    with pytest.raises(CheckpointError):
        bad = tmp_path / "text.ckpt"
        bad.write_text("nothing")
        MaskpotCalculator(bad)
