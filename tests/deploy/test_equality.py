"""Eager model == TorchScript file == ASE calculator == OpenMM PythonForce (Reference, CPU).

For every model (the toys and every registered model), float32 and float64, on a periodic
water box and an open rMD17-like molecule.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deploy_models import MODEL_NAMES, molecule, water_box
from omm_helpers import evaluate, ml_system

from maskpot.data.sample import Sample, collate
from maskpot.deploy.ase import MaskpotCalculator
from maskpot.deploy.export import load_exported
from maskpot.deploy.openmm import create_force

# (energy relative tolerance, force absolute tolerance relative to the largest force)
TOL = {"float64": (1e-10, 1e-9), "float32": (2e-5, 2e-4)}


def _eager(model, atoms, dtype):
    batch = collate([Sample.from_ase(atoms)], dtype=dtype)
    out = model(batch)
    return float(out["energy"][0].detach()), out["forces"].detach().double().numpy()


def _close(name, ref, other, dtype):
    e_rel, f_rel = TOL[dtype]
    e_ref, f_ref = ref
    e, f = other
    scale = max(np.abs(f_ref).max(), 1e-3)
    assert abs(e - e_ref) <= e_rel * max(abs(e_ref), 1.0), f"{name}: energy {e} != {e_ref}"
    assert np.abs(f - f_ref).max() <= f_rel * scale, f"{name}: forces differ by {np.abs(f - f_ref).max()}"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_eager_script_ase_openmm_agree(exported, name, dtype):
    path, model = exported(name, dtype)
    torch_dtype = getattr(torch, dtype)
    module, meta = load_exported(path)
    assert meta["dtype"] == dtype and meta["kind"] == model.kind
    for atoms in (water_box(), molecule()):
        ref = _eager(model, atoms, torch_dtype)
        assert np.abs(ref[1]).max() > 1e-4, "test system has vanishing forces"
        # the TorchScript file, called directly
        cell = np.asarray(atoms.cell) if atoms.pbc.all() else np.zeros((3, 3))
        e, f = module(torch.tensor(atoms.positions), torch.tensor(atoms.numbers), torch.tensor(cell),
                      torch.tensor(atoms.pbc))
        assert e.dtype == torch_dtype and f.shape == (len(atoms), 3)
        _close("script", ref, (float(e.detach()), f.detach().double().numpy()), dtype)
        # ASE
        atoms.calc = MaskpotCalculator(path)
        _close("ase", ref, (atoms.get_potential_energy(), atoms.get_forces()), dtype)
        assert atoms.get_potential_energy() == atoms.calc.results["free_energy"]
        # OpenMM PythonForce, both CPU-side platforms
        system = ml_system(atoms, create_force(path, atoms.numbers, periodic=bool(atoms.pbc.all())))
        for platform in ("Reference", "CPU"):
            _close(f"openmm-{platform}", ref, evaluate(system, atoms.positions, platform), dtype)


@pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:DeprecationWarning")
def test_plain_torch_jit_load_and_metadata(exported):
    """The file needs nothing from maskpot: plain torch.jit.load with the extra file."""
    path, model = exported("toy-energy", "float64")
    extra = {"metadata.json": ""}
    module = torch.jit.load(str(path), _extra_files=extra)
    meta = json.loads(extra["metadata.json"])
    assert meta["format"] == "maskpot-export"
    assert meta["units"] == {"length": "angstrom", "energy": "eV", "forces": "eV/angstrom"}
    assert meta["cutoff"] == pytest.approx(model.cutoff)
    assert meta["species"] == list(model.species)
    assert meta["kind"] == "energy" and meta["dtype"] == "float64"
    assert meta["versions"]["torch"] == torch.__version__ and "maskpot" in meta["versions"]
    assert meta["user"] == {"test": "toy-energy"}
    assert meta["model_config"]["name"] == "toypair" and meta["model"] == "toypair"
    assert "export_time" in meta
    atoms = molecule()
    e, f = module(torch.tensor(atoms.positions), torch.tensor(atoms.numbers), torch.zeros(3, 3),
                  torch.zeros(3, dtype=torch.bool))
    assert e.shape == () and f.shape == (len(atoms), 3)
    # float32 inputs are cast to the export dtype
    e32, _ = module(torch.tensor(atoms.positions, dtype=torch.float32), torch.tensor(atoms.numbers),
                    torch.zeros(3, 3), torch.zeros(3, dtype=torch.bool))
    assert e32.dtype == torch.float64 and float(e32.detach()) == pytest.approx(float(e.detach()), rel=1e-4)
