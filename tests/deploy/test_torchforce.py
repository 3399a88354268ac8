"""openmm-torch TorchForce backend (run in the second CI environment, .ci/openmm_torch_env.sh).

In the default environment openmm-torch is not importable (its wheels are built for one torch
version); these tests then skip with the import error as the reason. With
MASKPOT_REQUIRE_OPENMM_TORCH=1 (set by the CI script) they fail instead of skipping.
"""

from __future__ import annotations

import os

import numpy as np
import openmm
import pytest
from openmm import unit

from deploy_models import MODEL_NAMES, molecule, water_box, water_topology
from omm_helpers import evaluate, ml_system, platform

from maskpot.deploy.openmm import create_force, import_openmmtorch

try:
    import_openmmtorch()
    OMT_ERROR = None
except ImportError as exc:  # message names the real cause (missing, or built for another torch)
    OMT_ERROR = str(exc)

REQUIRED = os.environ.get("MASKPOT_REQUIRE_OPENMM_TORCH") == "1"
pytestmark = [
    pytest.mark.openmm_torch,
    pytest.mark.skipif(OMT_ERROR is not None and not REQUIRED, reason=f"openmm-torch unavailable: {OMT_ERROR}"),
]

TOL = {"float64": (1e-10, 1e-9), "float32": (1e-5, 1e-4)}


def _compare(a, b, dtype, what):
    e_rel, f_rel = TOL[dtype]
    assert abs(a[0] - b[0]) <= e_rel * max(abs(b[0]), 1.0), f"{what}: energy {a[0]} != {b[0]}"
    scale = max(np.abs(b[1]).max(), 1e-3)
    assert np.abs(a[1] - b[1]).max() <= f_rel * scale, f"{what}: forces differ by {np.abs(a[1] - b[1]).max()}"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_torchforce_equals_pythonforce(exported, name, dtype):
    path, _ = exported(name, dtype)
    for atoms in (water_box(), molecule()):
        periodic = bool(atoms.pbc.all())
        force = create_force(path, atoms.numbers, backend="torch", periodic=periodic)
        assert type(force).__name__ == "TorchForce" and force.getOutputsForces()
        assert force.usesPeriodicBoundaryConditions() == periodic
        torch_sys = ml_system(atoms, force)
        py_sys = ml_system(atoms, create_force(path, atoms.numbers, backend="python", periodic=periodic))
        for plat in ("Reference", "CPU"):
            _compare(evaluate(torch_sys, atoms.positions, plat), evaluate(py_sys, atoms.positions, plat), dtype,
                     f"{name} {dtype} {plat} periodic={periodic}")


def test_torchforce_box_change_and_subset(exported):
    path, _ = exported("toy-energy", "float64")
    atoms = water_box()
    topology = water_topology(atoms)
    ml = list(range(9))
    torch_sys = ml_system(atoms, create_force(path, topology, backend="torch", atoms=ml))
    py_sys = ml_system(atoms, create_force(path, topology, backend="python", atoms=ml))
    box = np.asarray(atoms.cell) * 1.05
    a = evaluate(torch_sys, atoms.positions * 1.05, "CPU", box_angstrom=box)
    b = evaluate(py_sys, atoms.positions * 1.05, "CPU", box_angstrom=box)
    _compare(a, b, "float64", "subset + box change")
    assert np.all(a[1][9:] == 0.0)


def test_torchforce_refuses_small_box(exported):
    path, _ = exported("toy-energy", "float64")
    with pytest.raises(ValueError, match="larger than half"):
        create_force(path, water_topology(water_box(n_side=2, spacing=3.1)), backend="torch")
    atoms = water_box()
    system = ml_system(atoms, create_force(path, water_topology(atoms), backend="torch"))
    with pytest.raises(Exception, match="larger than half"):
        evaluate(system, atoms.positions, "Reference", box_angstrom=np.eye(3) * 7.0)


def test_torchforce_nve_runs(exported):
    path, _ = exported("toy-energy", "float64")
    atoms = molecule()
    system = ml_system(atoms, create_force(path, atoms.numbers, backend="torch", periodic=False))
    integrator = openmm.VerletIntegrator(0.5 * unit.femtosecond)
    context = openmm.Context(system, integrator, *platform("CPU"))
    context.setPositions(atoms.positions * unit.angstrom)
    context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    e0 = None
    for _ in range(10):
        integrator.step(10)
        s = context.getState(getEnergy=True)
        e = (s.getPotentialEnergy() + s.getKineticEnergy()).value_in_unit(unit.kilojoule_per_mole)
        e0 = e if e0 is None else e0
    assert abs(e - e0) / len(atoms) < 0.05  # kJ/mol/atom
