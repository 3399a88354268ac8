"""OpenMM reporters of :func:`maskpot.md.openmm_runner.run_openmm` (OpenMM's reporter protocol).

Each class has ``describeNextReport(simulation)`` and ``report(simulation, state)``; appended to
``Simulation.reporters`` they run inside ``Simulation.step``. OpenMM hands reporters due at the
same step one shared ``State`` in the order of that list, positions-reading reporters first, so
the runner's order is: :class:`GuardReporter` (raises :class:`~maskpot.md.guard.MDInstabilityError`
before anything of the frame is written), :class:`FrameReporter` (DCD frame + ``md.csv`` row),
:class:`CheckpointReporter`, :class:`ProgressReporter`.

The guard checks at every *stop*: every multiple of the check, report and checkpoint intervals
(the runner's ``stops``), so a checkpoint is only ever written of a checked state.

Units: positions Å (the DCD is written in OpenMM's nm through ``openmm.unit``), energies eV for
the guard and kJ/mol in ``md.csv``'s native columns, time ps, temperature K.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from maskpot.data.tip3p import kj_per_mol_to_ev
from maskpot.md.guard import StabilityGuard
from maskpot.md.run_files import EnergyTable, steps_to_next
from maskpot.utils import atomic_path

__all__ = ["Frame", "GuardReporter", "FrameReporter", "CheckpointReporter", "ProgressReporter", "degrees_of_freedom"]


def degrees_of_freedom(system: Any) -> int:
    """3 × (particles with mass) − constraints − 3 with a ``CMMotionRemover``; at least 1."""
    import openmm
    from openmm import unit

    n = sum(1 for i in range(system.getNumParticles()) if system.getParticleMass(i).value_in_unit(unit.dalton) > 0)
    dof = 3 * n - system.getNumConstraints()
    if any(isinstance(system.getForce(i), openmm.CMMotionRemover) for i in range(system.getNumForces())):
        dof -= 3
    return max(dof, 1)


@dataclass
class Frame:
    """What the guard and the outputs read from an OpenMM ``State``.

    ``positions`` Å [N, 3] (unwrapped), ``potential`` / ``kinetic`` kJ/mol, ``cell`` Å [3, 3]
    (``None`` without a box), ``temperature`` K.
    """

    positions: np.ndarray
    potential: float
    kinetic: float
    cell: Optional[np.ndarray]
    temperature: float

    @classmethod
    def of(cls, state: Any, dof: int, periodic: bool) -> "Frame":
        from openmm import unit

        gas = unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin)
        ke = state.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
        cell = np.asarray(state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.angstrom)) if periodic else None
        return cls(positions=np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.angstrom)),
                   potential=state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
                   kinetic=ke, cell=cell, temperature=2.0 * ke / (dof * gas))


def _request(steps: int, include: Sequence[str]) -> Dict[str, Any]:
    """A ``describeNextReport`` answer: ``steps`` ahead, unwrapped positions (molecules whole)."""
    return {"steps": steps, "periodic": False, "include": list(include)}


@dataclass
class GuardReporter:
    """Runs the :class:`~maskpot.md.guard.StabilityGuard` at every stop; remembers the last good step.

    Fields: ``guard`` (thresholds, reference bonds); ``stops``, intervals (steps) whose multiples
    are checked; ``dof``, degrees of freedom for the temperature; ``periodic``, whether the
    system has a box; ``dt_ps``, timestep (ps, for the time in the error); ``last_good_step``,
    the last step known good before this reporter runs (a resumed run's checkpoint step).
    """

    guard: StabilityGuard
    stops: Tuple[int, ...]
    dof: int
    periodic: bool
    dt_ps: float
    last_good_step: Optional[int] = None

    def describeNextReport(self, simulation: Any) -> Dict[str, Any]:
        return _request(steps_to_next(simulation.currentStep, self.stops), ("positions", "energy"))

    def report(self, simulation: Any, state: Any) -> None:
        step = simulation.currentStep
        f = Frame.of(state, self.dof, self.periodic)
        pbc = np.ones(3, bool) if self.periodic else None
        self.guard.check(step, f.positions, f.cell, pbc, f.potential * kj_per_mol_to_ev(), f.temperature,
                         step * self.dt_ps)
        self.last_good_step = step


@dataclass
class FrameReporter:
    """Every ``every`` steps: one DCD frame (unwrapped, with the box) and one ``md.csv`` row.

    Fields: ``dcd``, an ``openmm.app.DCDFile`` writing the open file ``dcd_file`` (flushed after
    each frame); ``table``, the open :class:`~maskpot.md.run_files.EnergyTable` (kJ/mol);
    ``every``, the report interval (steps); ``dof`` / ``periodic`` as for :class:`GuardReporter`.
    """

    dcd: Any
    dcd_file: Any
    table: EnergyTable
    every: int
    dof: int
    periodic: bool

    def describeNextReport(self, simulation: Any) -> Dict[str, Any]:
        return _request(steps_to_next(simulation.currentStep, (self.every,)), ("positions", "energy"))

    def report(self, simulation: Any, state: Any) -> None:
        from openmm import unit

        f = Frame.of(state, self.dof, self.periodic)
        box = (f.cell * unit.angstrom) if f.cell is not None else None
        self.dcd.writeModel(f.positions * unit.angstrom, periodicBoxVectors=box)
        self.dcd_file.flush()
        self.table.write(simulation.currentStep, f.potential, f.kinetic, f.temperature)


@dataclass
class CheckpointReporter:
    """Every ``every`` steps: ``Simulation.saveCheckpoint`` to ``path``, atomically."""

    path: Path
    every: int

    def describeNextReport(self, simulation: Any) -> Dict[str, Any]:
        return _request(steps_to_next(simulation.currentStep, (self.every,)), ())

    def report(self, simulation: Any, state: Any) -> None:
        self.save(simulation)

    def save(self, simulation: Any) -> None:
        with atomic_path(self.path) as tmp:
            with open(tmp, "wb") as fh:
                simulation.saveCheckpoint(fh)


@dataclass
class ProgressReporter:
    """Advances a ``tqdm`` bar at every stop; shows the last ``md.csv`` temperature on report steps.

    Fields: ``bar`` (its ``total`` is the run's last step ``end``); ``stops`` as for
    :class:`GuardReporter`; ``report_every``, steps between ``md.csv`` rows; ``table``, the run's
    energy table (for the temperature shown); ``show_temperature``, set the bar's postfix.
    """

    bar: Any
    stops: Tuple[int, ...]
    report_every: int
    end: int
    table: EnergyTable
    show_temperature: bool

    def describeNextReport(self, simulation: Any) -> Dict[str, Any]:
        return _request(steps_to_next(simulation.currentStep, self.stops), ())

    def report(self, simulation: Any, state: Any = None) -> None:
        step = simulation.currentStep
        self.bar.update(step - self.bar.n)
        if self.show_temperature and (step % self.report_every == 0 or step == self.end):
            t = self.table.last_temperature
            self.bar.set_postfix_str(f"T={t:.0f}K" if t is not None else "T=?")
