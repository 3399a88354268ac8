"""ASE calculator: finite-difference forces and stress, conventions, refused inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_stress

from conftest import MODEL_NAMES
from deploy_models import make_model, molecule, water_box

from maskpot.deploy.ase import MaskpotCalculator

ENERGY_MODELS = [n for n in MODEL_NAMES if make_model(n).kind == "energy"]
FORCE_MODELS = [n for n in MODEL_NAMES if make_model(n).kind == "force"]


def _fd_forces(atoms, indices, h=1e-4):
    out = []
    for i in indices:
        for c in range(3):
            e = []
            for sign in (1, -1):
                a = atoms.copy()
                a.calc = atoms.calc
                a.positions[i, c] += sign * h
                e.append(a.get_potential_energy())
            out.append(-(e[0] - e[1]) / (2 * h))
    return np.array(out).reshape(len(indices), 3)


@pytest.mark.parametrize("name", ENERGY_MODELS)
def test_forces_match_finite_differences(exported, name):
    path, _ = exported(name, "float64")
    for atoms in (molecule(), water_box()):
        atoms.calc = MaskpotCalculator(path)
        forces = atoms.get_forces()
        idx = [0, 5, len(atoms) - 1]
        fd = _fd_forces(atoms, idx)
        np.testing.assert_allclose(forces[idx], fd, atol=1e-6 * max(1.0, np.abs(fd).max()), rtol=1e-5)


@pytest.mark.parametrize("name", ENERGY_MODELS)
def test_stress_matches_finite_differences(exported, name):
    path, _ = exported(name, "float64")
    atoms = water_box()
    atoms.set_cell(atoms.cell.array @ np.array([[1.0, 0.02, 0.0], [0.0, 1.0, 0.01], [0.0, 0.0, 1.03]]),
                   scale_atoms=True)  # a triclinic cell, still wide enough for the cutoff
    atoms.calc = MaskpotCalculator(path)
    stress = atoms.get_stress()
    assert stress.shape == (6,)
    numerical = calculate_numerical_stress(atoms, eps=1e-5)  # ASE's own convention
    np.testing.assert_allclose(stress, numerical, atol=1e-7 * max(1.0, np.abs(numerical).max() * 1e3), rtol=1e-5)
    full = atoms.get_stress(voigt=False)
    np.testing.assert_allclose(full, full.T)


def test_calculator_accepts_module_and_dtype():
    model = make_model("toy-energy", dtype=torch.float64)
    atoms = molecule()
    atoms.calc = MaskpotCalculator(model)
    e64 = atoms.get_potential_energy()
    atoms.calc = MaskpotCalculator(model, dtype="float32")
    assert atoms.calc.dtype == torch.float32
    assert atoms.get_potential_energy() == pytest.approx(e64, rel=1e-5)


@pytest.mark.parametrize("name", FORCE_MODELS)
def test_force_centric_stress_is_refused(exported, name):
    path, _ = exported(name, "float64")
    atoms = water_box()
    atoms.calc = MaskpotCalculator(path)
    with pytest.raises(PropertyNotImplementedError, match="energy-centric"):
        atoms.get_stress()
    assert atoms.get_forces().shape == (len(atoms), 3)


def test_open_system_stress_is_refused(exported):
    path, _ = exported("toy-energy", "float64")
    atoms = molecule()
    atoms.calc = MaskpotCalculator(path)
    with pytest.raises(PropertyNotImplementedError, match="periodic"):
        atoms.get_stress()


def test_refused_inputs(exported):
    path, _ = exported("toy-energy", "float64")
    atoms = molecule()
    atoms.numbers[3] = 17  # Cl: not in the model species
    atoms.calc = MaskpotCalculator(path)
    with pytest.raises(ValueError, match=r"unknown element.*\[17\]"):
        atoms.get_potential_energy()
    small = water_box(n_side=2, spacing=3.1)  # 6.2 A box: half width 3.1 A < cutoff 4 A
    small.calc = MaskpotCalculator(path)
    with pytest.raises(ValueError, match="larger than half"):
        small.get_potential_energy()
    with pytest.raises(FileNotFoundError):
        MaskpotCalculator(path.parent / "missing.pt")
