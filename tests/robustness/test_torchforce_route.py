"""Issue 14, the openmm-torch TorchForce route (runs in the second CI environment,
.ci/openmm_torch_env.sh; elsewhere it skips, with MASKPOT_REQUIRE_OPENMM_TORCH=1 it fails):

* the import order of openmm and torch does not matter (``import openmm`` first used to leave
  openmm-torch's kernel plugin unloaded: "does not support all required kernels");
* a model exported with the vesin neighbour list (what the main example writes when vesin-torch
  is installed) runs through TorchForce and matches PythonForce.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REQUIRED = os.environ.get("MASKPOT_REQUIRE_OPENMM_TORCH") == "1"
try:
    from maskpot.deploy.openmm import import_openmmtorch

    import_openmmtorch()
    OMT_ERROR = None
except ImportError as exc:
    OMT_ERROR = str(exc)

pytestmark = [
    pytest.mark.openmm_torch,
    pytest.mark.skipif(OMT_ERROR is not None and not REQUIRED, reason=f"openmm-torch unavailable: {OMT_ERROR}"),
]


def _export(path: Path, backend: str) -> Path:
    import torch

    from maskpot.deploy.export import export_model
    from maskpot.models import build_model

    torch.manual_seed(0)
    model = build_model({"name": "painn", "cutoff": 3.0, "hidden_channels": 8, "num_layers": 1, "species": [1, 6, 8]})
    export_model(model, path, dtype="float64", neighbor_backend=backend)
    return path


def _water_box():
    from ase import Atoms
    from ase.build import molecule

    water = molecule("H2O")
    atoms = Atoms(cell=np.eye(3) * 7.0, pbc=True)
    for i, shift in enumerate([(1, 1, 1), (4.5, 1.5, 2), (2, 4.5, 4), (5, 5, 5.5)]):
        w = water.copy()
        w.rotate(40 * i, "z")
        w.translate(shift)
        atoms += w
    return atoms


_SCRIPT = r"""
import sys
import openmm  # before torch, on purpose: the order that used to break TorchForce
from openmm import unit
import numpy as np
from ase.build import molecule
from maskpot.deploy.openmm import create_force

atoms = molecule("CH3OH")
out = []
for backend in ("torch", "python"):
    system = openmm.System()
    for m in atoms.get_masses():
        system.addParticle(float(m))
    system.addForce(create_force(sys.argv[1], atoms.numbers, backend=backend, periodic=False))
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(atoms.positions * unit.angstrom)
    out.append(context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
assert abs(out[0] - out[1]) < 1e-8 * max(1.0, abs(out[1])), out
print("OK", out)
"""


def test_import_order_of_openmm_and_torch_does_not_matter(tmp_path: Path) -> None:
    model = _export(tmp_path / "model.pt", "torch")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", _SCRIPT, str(model)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]


def test_vesin_export_runs_through_torchforce(tmp_path: Path) -> None:
    from ase.build import molecule

    from maskpot.data.neighbors import vesin_available

    if not vesin_available():
        if REQUIRED:
            pytest.fail("vesin-torch is not installed in the openmm-torch environment (.ci/openmm_torch_env.sh)")
        pytest.skip("vesin-torch not installed")
    import openmm
    from openmm import unit

    from maskpot.deploy.openmm import create_force

    path = _export(tmp_path / "vesin.pt", "vesin")
    for atoms in (molecule("CH3OH"), _water_box()):
        periodic = bool(atoms.pbc.all())
        results = {}
        for backend in ("torch", "python"):
            system = openmm.System()
            for m in atoms.get_masses():
                system.addParticle(float(m))
            if periodic:
                system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) * unit.angstrom for row in np.asarray(atoms.cell)])
            force = create_force(path, atoms.numbers, backend=backend, periodic=periodic)
            system.addForce(force)
            for plat in ("Reference", "CPU"):
                context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(plat))
                context.setPositions(atoms.positions * unit.angstrom)
                state = context.getState(getEnergy=True, getForces=True)
                results[backend, plat] = (state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
                                          state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))
        for plat in ("Reference", "CPU"):
            (et, ft), (ep, fp) = results["torch", plat], results["python", plat]
            assert abs(et - ep) <= 1e-9 * max(1.0, abs(ep)), (plat, periodic, et, ep)
            assert np.abs(np.asarray(ft) - np.asarray(fp)).max() <= 1e-8 * max(1.0, np.abs(fp).max()), (plat, periodic)
