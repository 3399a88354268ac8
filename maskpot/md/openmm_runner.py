"""Run MD in OpenMM with a learned potential (or classical flexible TIP3P as the reference).

:func:`run_openmm` drives any ``(topology, system, positions)``; :func:`water_box` and
:func:`load_pdb` build the inputs; :func:`ml_system` puts the learned force (via
:func:`maskpot.deploy.openmm.create_force`) into a System that holds nothing else but the
masses (and a centre-of-mass motion remover); :func:`tip3p_system` is the classical reference
built with the same force field as :mod:`maskpot.data.tip3p`.

Outputs in ``out``:

=================  ===============================================================================
``traj.dcd``       frames every ``report_every`` steps, *unwrapped* positions (molecules whole,
                   continuous in time: ready for MSD); frame 0 is the start (after minimisation)
``topology.pdb``   the starting structure (topology for ``maskpot-analyze``/mdtraj/VMD)
``md.csv``         step, time_ps, potential/kinetic/total energy in eV and kJ/mol, temperature_K,
                   speed_ns_per_day (wall-clock speed since the previous row)
``checkpoint.chk`` OpenMM checkpoint (``Simulation.saveCheckpoint``), written atomically every
                   ``checkpoint_every`` steps and at the end; ``resume=True`` continues from it
``run.json``       resolved settings, frame interval, versions, model metadata
``result.json``    status ("ok" | "unstable"), steps done, failure step and reason, timings
``md.log``         human-readable log (also the failure message)
``final.pdb``      last good structure
=================  ===============================================================================

:func:`run_openmm` reads as its steps: ``_run_info`` → ``_simulation`` → ``_resume`` or ``_prepare``
→ ``_production`` (the OpenMM reporters of :mod:`maskpot.md.openmm_reporters` inside
``Simulation.step``) → ``final.pdb`` / ``result.json``; the files common to both engines
(``md.csv``, ``run.json``, ``result.json``, ``md.log``) are written by
:class:`maskpot.md.run_files.MDRunFiles`, as for the ASE runner.

The stability guard (:mod:`maskpot.md.guard`) checks every ``check_every`` steps and every
frame before it is written, so files end at the last good frame; on failure
:class:`~maskpot.md.guard.MDInstabilityError` is raised after the outputs are closed.

Units: the user-facing arguments are Å, fs, K, 1/ps; conversions use ``openmm.unit`` and
``ase.units`` only.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from maskpot.data.tip3p import kj_per_mol_to_ev
from maskpot.md.guard import GuardSettings, MDInstabilityError, StabilityGuard, model_failure_reason, topology_bonds
from maskpot.md.openmm_reporters import (CheckpointReporter, FrameReporter, GuardReporter, ProgressReporter,
                                         degrees_of_freedom)
from maskpot.md.run_files import CSV_COLUMNS, MDRunFiles, next_stop, settings_dict
from maskpot.utils import PathLike, atomic_path, versions

__all__ = [
    "MDSettings",
    "CSV_COLUMNS",
    "water_box",
    "default_water_box_size",
    "load_pdb",
    "ml_system",
    "tip3p_system",
    "run_openmm",
    "kj_per_mol_to_ev",
]

#: liquid water density used for default box sizes, g/cm³
WATER_DENSITY = 0.997


@dataclass
class MDSettings:
    """MD run settings (Å, fs, K, 1/ps)."""

    steps: int = 1000
    timestep: float = 0.5
    temperature: float = 300.0
    ensemble: str = "nvt"
    friction: float = 1.0
    report_every: int = 100
    checkpoint_every: Optional[int] = None
    minimize_iterations: int = 500
    minimize_tolerance: float = 10.0
    equilibration_steps: int = 0
    seed: int = 0
    platform: Optional[str] = None
    threads: Optional[int] = None
    remove_cm_motion: bool = True
    progress: bool = True
    guard: GuardSettings = field(default_factory=GuardSettings)

    def validate(self) -> None:
        if self.ensemble not in ("nvt", "nve"):
            raise ValueError(f"ensemble must be 'nvt' or 'nve', got {self.ensemble!r}")
        for name in ("steps", "report_every"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < (0 if name == "steps" else 1):
                raise ValueError(f"{name} must be an integer >= {0 if name == 'steps' else 1}, got {v!r}")
        if not (self.timestep > 0 and math.isfinite(self.timestep)):
            raise ValueError(f"timestep must be > 0 fs, got {self.timestep}")
        if not (self.temperature > 0):
            raise ValueError(f"temperature must be > 0 K, got {self.temperature}")
        if self.guard.check_every < 1:
            raise ValueError(f"check_every must be >= 1, got {self.guard.check_every}")


# --------------------------------------------------------------------------------------------
# building systems
# --------------------------------------------------------------------------------------------


def default_water_box_size(n_molecules: int, density: float = WATER_DENSITY) -> float:
    """Cubic box side (Å) holding ``n_molecules`` waters at ``density`` g/cm³."""
    from openmm import unit
    from openmm.app import element

    mass = n_molecules * (element.oxygen.mass + 2 * element.hydrogen.mass) / unit.AVOGADRO_CONSTANT_NA
    volume = (mass / (density * unit.gram / unit.centimeter**3)).value_in_unit(unit.angstrom**3)
    return float(volume ** (1.0 / 3.0))


def water_box(n_molecules: int, box: Optional[float] = None, seed: int = 0):
    """``(topology, positions Å [3n, 3], box Å)``: n waters (O, H, H) in a cubic box.

    Uses the lattice builder of :mod:`maskpot.data.tip3p` (random orientations on a simple-cubic
    lattice of oxygens); ``box`` defaults to the size giving 0.997 g/cm³.
    """
    from maskpot.data.tip3p import validate_box, water_lattice, water_topology

    if box is None:
        box = default_water_box_size(n_molecules)
    validate_box(n_molecules, box, 0.25 * box)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x3A7]))
    return water_topology(n_molecules, box), water_lattice(n_molecules, box, rng), float(box)


def load_pdb(path: PathLike, box: Optional[float] = None):
    """``(topology, positions Å [N, 3])`` from a PDB; ``box`` (Å, cubic) overrides its CRYST1."""
    from openmm import Vec3, unit
    from openmm.app import PDBFile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--pdb {path}: no such file")
    expected = "a PDB file with ATOM/HETATM records (and CRYST1 for a periodic box)"
    try:
        pdb = PDBFile(str(path))
    except (IndexError, AttributeError) as exc:  # openmm's parser: no MODEL with atoms in the file
        raise ValueError(f"--pdb {path}: expected {expected}, found no atom records (not a PDB file?)") from exc
    except (ValueError, KeyError, UnicodeDecodeError) as exc:  # openmm's messages name no file
        raise ValueError(f"--pdb {path}: expected {expected}, found a file it cannot parse "
                         f"({type(exc).__name__}: {exc})") from exc
    top = pdb.topology
    if top.getNumAtoms() == 0:
        raise ValueError(f"--pdb {path}: expected {expected}, found no atoms")
    if box is not None:
        nm = (box * unit.angstrom).value_in_unit(unit.nanometer)
        top.setPeriodicBoxVectors([Vec3(nm, 0, 0), Vec3(0, nm, 0), Vec3(0, 0, nm)])
    pos = np.asarray(pdb.getPositions(asNumpy=True).value_in_unit(unit.angstrom), dtype=np.float64)
    return top, pos


def _empty_system(topology, remove_cm_motion: bool = True):
    import openmm

    system = openmm.System()
    for atom in topology.atoms():
        if atom.element is None:
            raise ValueError(f"atom {atom.index} ({atom.name}) has no element: cannot assign a mass")
        system.addParticle(atom.element.mass)
    vectors = topology.getPeriodicBoxVectors()
    if vectors is not None:
        system.setDefaultPeriodicBoxVectors(*vectors)
    if remove_cm_motion:
        system.addForce(openmm.CMMotionRemover())
    return system


def ml_system(topology, model_path: PathLike, backend: str = "python", remove_cm_motion: bool = True):
    """A System with the masses of ``topology`` and only the learned force (+ CM motion remover)."""
    from maskpot.deploy.openmm import create_force

    system = _empty_system(topology, remove_cm_motion)
    system.addForce(create_force(model_path, topology, backend=backend))
    return system


def tip3p_system(topology, cutoff: Optional[float] = None):
    """Flexible TIP3P (the force field of :mod:`maskpot.data.tip3p`) for a water topology; PME.

    ``cutoff`` (Å) defaults to :func:`maskpot.data.tip3p.default_cutoff` of the box.
    """
    from openmm import app, unit

    from maskpot.data.tip3p import DEFAULT_FORCEFIELD, default_cutoff

    vectors = topology.getPeriodicBoxVectors()
    if vectors is None:
        raise ValueError("tip3p_system needs a periodic topology (a box)")
    box = min(v.value_in_unit(unit.angstrom) for v in (vectors[0][0], vectors[1][1], vectors[2][2]))
    if cutoff is None:
        cutoff = default_cutoff(box)
    ff = app.ForceField(DEFAULT_FORCEFIELD)
    return ff.createSystem(topology, nonbondedMethod=app.PME, nonbondedCutoff=cutoff * unit.angstrom,
                           constraints=None, rigidWater=False, ewaldErrorTolerance=5e-4)


# --------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------


#: output files of an OpenMM run besides md.csv / run.json / result.json / md.log
OPENMM_FILES = {"traj": "traj.dcd", "chk": "checkpoint.chk", "top": "topology.pdb", "final": "final.pdb"}


def _box_angstrom(topology: Any) -> Optional[np.ndarray]:
    """The topology's periodic box vectors as rows, Å [3, 3]; ``None`` without a box."""
    from openmm import unit

    vecs = topology.getPeriodicBoxVectors()
    if vecs is None:
        return None
    return np.asarray([list(v.value_in_unit(unit.angstrom)) for v in vecs], dtype=np.float64)


def _write_pdb(path: Path, topology: Any, sim: Any) -> None:
    """The simulation's current (unwrapped) structure as a PDB, atomically."""
    from openmm import app

    st = sim.context.getState(getPositions=True, enforcePeriodicBox=False)
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            app.PDBFile.writeFile(topology, st.getPositions(), fh, keepIds=True)


def _truncate_dcd(path: Path, topology: Any, n_keep: int, dt_ps: float, interval: int) -> int:
    """Keep the first ``n_keep`` frames of a DCD (rewritten atomically); return frames kept."""
    import mdtraj
    from openmm import unit
    from openmm.app import DCDFile

    if not path.exists():
        return 0
    t = mdtraj.load_dcd(str(path), top=mdtraj.Topology.from_openmm(topology))
    if t.n_frames <= n_keep:
        return t.n_frames
    t = t[:n_keep]
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            dcd = DCDFile(fh, topology, dt_ps * unit.picosecond, 0, interval)
            for k in range(t.n_frames):
                vecs = t.unitcell_vectors[k] * unit.nanometer if t.unitcell_vectors is not None else None
                dcd.writeModel(t.xyz[k] * unit.nanometer, periodicBoxVectors=vecs)
    return n_keep


@contextlib.contextmanager
def _dcd_trajectory(path: Path, topology: Any, dt_ps: float, interval: int, resuming: bool) -> Iterator[Tuple[Any, IO[bytes]]]:
    """``(openmm.app.DCDFile, file)`` writing ``path``: appended to when resuming a non-empty
    file, else started with a header (first step 0, ``interval`` steps between frames)."""
    from openmm import app, unit

    exists = resuming and path.exists()
    with open(path, "r+b" if exists else "wb") as fh:
        append = exists and path.stat().st_size > 0
        yield app.DCDFile(fh, topology, dt_ps * unit.picosecond, 0, interval, append=append), fh


def _platform(name: Optional[str], threads: Optional[int]) -> Tuple[Any, Dict[str, str]]:
    """The OpenMM platform (by name, default the fastest) and its properties (CPU threads)."""
    from maskpot.data.tip3p import select_platform

    plat = select_platform(name)
    props = {}
    if threads is not None and plat.getName() == "CPU":
        props["Threads"] = str(int(threads))
    return plat, props


def _run_info(topology: Any, system: Any, s: MDSettings, files: MDRunFiles, dt_ps: float,
              metadata: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The contents of ``run.json``: settings, frame interval (ps), forces, file names, versions."""
    return {
        "settings": settings_dict(s),
        "n_atoms": topology.getNumAtoms(),
        "frame_interval_ps": s.report_every * dt_ps,
        "first_frame_time_ps": 0.0,
        "timestep_ps": dt_ps,
        "periodic": topology.getPeriodicBoxVectors() is not None,
        "forces": [system.getForce(i).getName() for i in range(system.getNumForces())],
        "trajectory": files.paths["traj"].name,
        "topology": files.paths["top"].name,
        "positions_wrapped": False,
        "versions": versions(),
        **(metadata or {}),
    }


def _simulation(topology: Any, system: Any, s: MDSettings) -> Tuple[Any, str]:
    """``(openmm.app.Simulation, platform name)``: LangevinMiddle (NVT, seeded) or Verlet (NVE)."""
    import openmm
    from openmm import app, unit

    dt = s.timestep * unit.femtosecond
    if s.ensemble == "nvt":
        integrator = openmm.LangevinMiddleIntegrator(s.temperature * unit.kelvin, s.friction / unit.picosecond, dt)
        integrator.setRandomNumberSeed(int(np.random.SeedSequence([s.seed, 17]).generate_state(1)[0] % (2**31 - 2)) + 1)
    else:
        integrator = openmm.VerletIntegrator(dt)
    plat, props = _platform(s.platform, s.threads)
    return app.Simulation(topology, system, integrator, plat, props), plat.getName()


def _resume(sim: Any, topology: Any, files: MDRunFiles, s: MDSettings, dt_ps: float) -> int:
    """Load the checkpoint, cut ``md.csv`` and the DCD back to its step; return that step."""
    from openmm import unit

    sim.loadCheckpoint(str(files.paths["chk"]))
    step0 = int(round(sim.context.getTime().value_in_unit(unit.picosecond) / dt_ps))
    sim.currentStep = step0
    rows = files.truncate_table(step0)
    n_frames = _truncate_dcd(files.paths["traj"], topology, step0 // s.report_every + 1, dt_ps, s.report_every)
    files.log(f"resumed from {files.paths['chk']} at step {step0} ({rows} log rows, {n_frames} frames kept)")
    files.result["resumed_from_step"] = step0
    return step0


def _prepare(sim: Any, topology: Any, positions: np.ndarray, files: MDRunFiles, s: MDSettings, platform: str,
             forces: List[str]) -> None:
    """A fresh run's step 0: set positions, minimise, draw velocities, equilibrate (not
    recorded), reset the clock to step 0 and write ``topology.pdb``.

    A model failure on the way is an unstable run (``result.json`` written, then raised)."""
    import openmm
    from openmm import unit

    ev = kj_per_mol_to_ev()

    def potential_ev() -> float:
        return sim.context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) * ev

    sim.context.setPositions(positions * unit.angstrom)
    files.log(f"{topology.getNumAtoms()} atoms, forces {forces}, platform {platform}; "
              f"initial E_pot = {potential_ev():.4f} eV")
    phase = "minimisation"
    try:
        if s.minimize_iterations > 0:
            t0 = time.perf_counter()
            openmm.LocalEnergyMinimizer.minimize(
                sim.context, s.minimize_tolerance * unit.kilojoule_per_mole / unit.nanometer, s.minimize_iterations)
            files.log(f"minimised ({s.minimize_iterations} iterations max) in {time.perf_counter() - t0:.1f} s: "
                      f"E_pot = {potential_ev():.4f} eV")
        sim.context.setVelocitiesToTemperature(s.temperature * unit.kelvin, s.seed + 1)
        phase = "equilibration"
        if s.equilibration_steps > 0:
            files.log(f"equilibrating {s.equilibration_steps} steps (not recorded)")
            sim.step(s.equilibration_steps)
    except Exception as exc:  # the model failed before production: the run is unstable
        reason = model_failure_reason(exc)
        if reason is None:
            raise
        raise files.fail_before_production(f"{reason} (during {phase})") from exc
    # production starts at step 0, t = 0 (the reporters and the checkpoint count from there)
    sim.context.setTime(0.0)
    sim.currentStep = 0
    _write_pdb(files.paths["top"], topology, sim)


def _guard(topology: Any, positions: np.ndarray, s: MDSettings) -> StabilityGuard:
    """The stability guard, reference bond lengths from the starting structure (also on resume)."""
    periodic = topology.getPeriodicBoxVectors() is not None
    symbols = [a.element.symbol if a.element is not None else a.name for a in topology.atoms()]
    return StabilityGuard(bonds=topology_bonds(topology), reference_positions=positions,
                          target_temperature=s.temperature, settings=s.guard, symbols=symbols,
                          cell=_box_angstrom(topology), pbc=np.ones(3, bool) if periodic else None)


def _production(sim: Any, topology: Any, system: Any, guard: StabilityGuard, files: MDRunFiles, s: MDSettings,
                step0: int, dt_ps: float) -> None:
    """Steps ``step0`` → ``s.steps`` with the reporters; frame 0 (and its checkpoint) on fresh runs.

    On instability the outputs are closed at the last good frame, ``result.json`` is written and
    :class:`MDInstabilityError` raised."""
    from tqdm.auto import tqdm

    from maskpot.utils import progress_wanted

    ckpt_every = s.checkpoint_every or 10 * s.report_every
    stops = (s.guard.check_every, s.report_every, ckpt_every)
    periodic = topology.getPeriodicBoxVectors() is not None
    dof = degrees_of_freedom(system)
    check = GuardReporter(guard, stops, dof, periodic, dt_ps, last_good_step=step0 if files.resuming else None)
    try:
        with _dcd_trajectory(files.paths["traj"], topology, dt_ps, s.report_every, files.resuming) as (dcd, dcd_fh), \
                files.energy_table("kJ/mol", dt_ps, step0) as table, \
                tqdm(total=s.steps, initial=step0, desc=f"MD {files.out.name}", unit="step",
                     disable=not progress_wanted(s.progress), dynamic_ncols=True) as bar:
            frames = FrameReporter(dcd, dcd_fh, table, s.report_every, dof, periodic)
            checkpoint = CheckpointReporter(files.paths["chk"], ckpt_every)
            progress = ProgressReporter(bar, stops, s.report_every, s.steps, table, s.progress)
            if not files.resuming:
                state = sim.context.getState(getPositions=True, getEnergy=True, enforcePeriodicBox=False)
                check.report(sim, state)
                frames.report(sim, state)
                if s.steps > 0:
                    checkpoint.save(sim)
            sim.reporters = [check, frames, checkpoint, progress]
            try:
                _advance(sim, s.steps, check, checkpoint, progress, stops, dt_ps)
            finally:
                sim.reporters = []
    except MDInstabilityError as exc:
        n_frames = (check.last_good_step // s.report_every + 1) if check.last_good_step is not None else 0
        files.fail(exc, check.last_good_step, step0, dt_ps, frame_note=f" (frame {n_frames - 1})")
        raise


def _advance(sim: Any, end: int, check: GuardReporter, checkpoint: CheckpointReporter, progress: ProgressReporter,
             stops: Sequence[int], dt_ps: float) -> None:
    """``Simulation.step`` up to ``end`` (the reporters run inside), then check and checkpoint
    ``end`` itself when it is not one of the stops. A model failure while stepping is an
    instability at the next stop after the last good one."""
    start = sim.currentStep
    if start >= end:
        return
    try:
        sim.step(end - start)
        if all(end % n for n in stops):  # the last step is not a stop: check it here
            state = sim.context.getState(getPositions=True, getEnergy=True, enforcePeriodicBox=False)
            check.report(sim, state)
            progress.report(sim, state)
    except MDInstabilityError:
        raise
    except Exception as exc:  # the model failed between two guard checks
        reason = model_failure_reason(exc)
        if reason is None:
            raise
        failed = next_stop(check.last_good_step if check.last_good_step is not None else start, end, stops)
        raise MDInstabilityError(failed, reason, failed * dt_ps) from exc
    if end % checkpoint.every:
        checkpoint.save(sim)


def run_openmm(
    topology: Any,
    system: Any,
    positions: np.ndarray,
    out: PathLike,
    settings: Optional[MDSettings] = None,
    resume: bool = False,
    metadata: Optional[Dict[str, Any]] = None,
    echo: bool = True,
) -> Dict[str, Any]:
    """Minimise (fresh runs), then run NVT (LangevinMiddle) or NVE (Verlet) MD with reports.

    The steps: check the settings; open the output folder (:class:`MDRunFiles`) and write
    ``run.json``; build the Simulation; resume from the checkpoint or prepare step 0
    (minimise, velocities, equilibration); run production with the reporters of
    :mod:`maskpot.md.openmm_reporters`; write ``final.pdb`` and ``result.json``.

    Args:
        topology: OpenMM Topology (its box, if any, is the periodic box).
        system: OpenMM System (learned force from :func:`ml_system` or classical).
        positions: starting positions, Å [N, 3].
        out: output folder (see the module docstring for the files).
        settings: :class:`MDSettings`.
        resume: continue from ``out/checkpoint.chk`` when it exists (outputs are truncated to
            the checkpoint's step, then appended to); otherwise start fresh.
        metadata: extra JSON-able information stored in ``run.json``.
        echo: print log lines.

    Returns:
        the ``result.json`` dict. Raises :class:`MDInstabilityError` (after writing the outputs
        up to the last good frame and ``result.json``) when the guard trips.
    """
    from openmm import unit

    s = settings or MDSettings()
    s.validate()
    dt_ps = (s.timestep * unit.femtosecond).value_in_unit(unit.picosecond)
    positions = np.asarray(positions, dtype=np.float64).reshape(topology.getNumAtoms(), 3)

    files = MDRunFiles(out, OPENMM_FILES, resume, echo)
    run_info = _run_info(topology, system, s, files, dt_ps, metadata)
    files.write_run_info(run_info, resume_keys=("n_atoms", "frame_interval_ps"))
    sim, platform = _simulation(topology, system, s)
    files.start_clock()
    if files.resuming:
        step0 = _resume(sim, topology, files, s, dt_ps)
    else:
        step0 = 0
        _prepare(sim, topology, positions, files, s, platform, run_info["forces"])
    _production(sim, topology, system, _guard(topology, positions, s), files, s, step0, dt_ps)
    _write_pdb(files.paths["final"], topology, sim)
    return files.finish(s.steps, step0, dt_ps)
