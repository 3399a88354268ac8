"""ASE calculator: finite-difference forces and stress, conventions, refused inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_stress

from deploy_models import MODEL_NAMES, make_model, molecule, water_box

from maskpot.deploy.ase import MaskpotCalculator

ENERGY_MODELS = [n for n in MODEL_NAMES if make_model(n).kind == "energy"]
FORCE_MODELS = [n for n in MODEL_NAMES if make_model(n).kind == "force"]


def _directional_fd(atoms, direction, h=1e-4):
    """-dE/dt of E(positions + t * direction) at t = 0, central difference."""
    e = []
    for sign in (1, -1):
        a = atoms.copy()
        a.calc = atoms.calc
        a.positions += sign * h * direction
        e.append(a.get_potential_energy())
    return -(e[0] - e[1]) / (2 * h)


@pytest.mark.parametrize("name", ENERGY_MODELS)
def test_forces_match_finite_differences(exported, name):
    """F . d == -dE/dt along random directions d moving every atom (and along one coordinate)."""
    path, _ = exported(name, "float64")
    rng = np.random.default_rng(0)
    for atoms in (molecule(), water_box()):
        atoms.calc = MaskpotCalculator(path)
        forces = atoms.get_forces()
        single = np.zeros_like(atoms.positions)
        single[3, 1] = 1.0
        for direction in (rng.normal(size=atoms.positions.shape), single):
            fd = _directional_fd(atoms, direction)
            analytic = float(np.sum(forces * direction))
            assert analytic == pytest.approx(fd, rel=1e-6, abs=1e-7), (name, analytic, fd)


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
    assert next(model.parameters()).dtype == torch.float64, "the caller's module was modified"
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
