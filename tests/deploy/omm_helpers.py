"""OpenMM helpers shared by the deploy tests (eV / Å in and out)."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import openmm
from openmm import unit

from maskpot.deploy.openmm import KJ_PER_MOL_PER_EV


def platform(name: str) -> Tuple[openmm.Platform, dict]:
    props = {"Threads": "1"} if name == "CPU" else {}
    return openmm.Platform.getPlatformByName(name), props


def ml_system(atoms, force: openmm.Force) -> openmm.System:
    """A System of the atoms' masses, the atoms' box (if periodic) and ``force``."""
    system = openmm.System()
    for mass in atoms.get_masses():
        system.addParticle(float(mass))
    if atoms.pbc.all():
        system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) * unit.angstrom for row in np.asarray(atoms.cell)])
    system.addForce(force)
    return system


def evaluate(system: openmm.System, positions_angstrom: np.ndarray, platform_name: str = "Reference",
             box_angstrom: Optional[np.ndarray] = None, groups: int = -1) -> Tuple[float, np.ndarray]:
    """(energy eV, forces eV/Å) of a System at given positions (Å)."""
    plat, props = platform(platform_name)
    context = openmm.Context(system, openmm.VerletIntegrator(0.0005), plat, props)
    if box_angstrom is not None:
        context.setPeriodicBoxVectors(*[openmm.Vec3(*row) * unit.angstrom for row in box_angstrom])
    context.setPositions(positions_angstrom * unit.angstrom)
    state = context.getState(getEnergy=True, getForces=True, groups=groups)
    energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / KJ_PER_MOL_PER_EV
    forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.angstrom) / KJ_PER_MOL_PER_EV
    return float(energy), np.asarray(forces)
