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

The stability guard (:mod:`maskpot.md.guard`) checks every ``check_every`` steps and every
frame before it is written, so files end at the last good frame; on failure
:class:`~maskpot.md.guard.MDInstabilityError` is raised after the outputs are closed.

Units: the user-facing arguments are Å, fs, K, 1/ps; conversions use ``openmm.unit`` and
``ase.units`` only.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from maskpot.data.tip3p import kj_per_mol_to_ev
from maskpot.md.guard import GuardSettings, MDInstabilityError, StabilityGuard, model_failure_reason, topology_bonds
from maskpot.utils import PathLike, atomic_path, atomic_write_json, versions

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

CSV_COLUMNS = [
    "step", "time_ps", "potential_eV", "kinetic_eV", "total_eV",
    "potential_kJmol", "kinetic_kJmol", "total_kJmol", "temperature_K", "speed_ns_per_day",
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


class _Log:
    def __init__(self, path: Path, echo: bool = False):
        self.path = path
        self.echo = echo

    def __call__(self, msg: str) -> None:
        line = f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {msg}"
        with open(self.path, "a") as fh:
            fh.write(line + "\n")
        if self.echo:
            print(msg, flush=True)


def _dof(system) -> int:
    import openmm

    from openmm import unit

    n = sum(1 for i in range(system.getNumParticles()) if system.getParticleMass(i).value_in_unit(unit.dalton) > 0)
    dof = 3 * n - system.getNumConstraints()
    if any(isinstance(system.getForce(i), openmm.CMMotionRemover) for i in range(system.getNumForces())):
        dof -= 3
    return max(dof, 1)


def _box_angstrom(topology) -> Optional[np.ndarray]:
    from openmm import unit

    vecs = topology.getPeriodicBoxVectors()
    if vecs is None:
        return None
    return np.asarray([list(v.value_in_unit(unit.angstrom)) for v in vecs], dtype=np.float64)


def open_csv_log(path: Path, resuming: bool):
    """Open the MD log CSV for appending (header written only when starting a new file).

    Returns (file handle, csv writer); shared by the OpenMM and ASE runners.
    """
    new = not (resuming and path.exists())
    fh = open(path, "a", newline="")
    writer = csv.writer(fh)
    if new:
        writer.writerow(CSV_COLUMNS)
        fh.flush()
    return fh, writer


def _truncate_csv(path: Path, last_step: int) -> int:
    """Keep rows with step <= last_step; return how many rows remain."""
    if not path.exists():
        return 0
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return 0
    header, body = rows[0], [r for r in rows[1:] if r and int(float(r[0])) <= last_step]
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            w.writerows(body)
    return len(body)


def _truncate_dcd(path: Path, topology, n_keep: int, dt_ps: float, interval: int) -> int:
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


def _platform(name: Optional[str], threads: Optional[int]):
    from maskpot.data.tip3p import select_platform

    plat = select_platform(name)
    props = {}
    if threads is not None and plat.getName() == "CPU":
        props["Threads"] = str(int(threads))
    return plat, props


def run_openmm(
    topology,
    system,
    positions: np.ndarray,
    out: PathLike,
    settings: Optional[MDSettings] = None,
    resume: bool = False,
    metadata: Optional[Dict[str, Any]] = None,
    echo: bool = True,
) -> Dict[str, Any]:
    """Minimise (fresh runs), then run NVT (LangevinMiddle) or NVE (Verlet) MD with reports.

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
    import openmm
    from openmm import app, unit
    from tqdm.auto import tqdm

    from maskpot.utils import progress_wanted

    s = settings or MDSettings()
    s.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / v for k, v in dict(traj="traj.dcd", csv="md.csv", chk="checkpoint.chk", run="run.json",
                                          result="result.json", log="md.log", top="topology.pdb",
                                          final="final.pdb").items()}
    ckpt_every = s.checkpoint_every or 10 * s.report_every
    ev = kj_per_mol_to_ev()
    dt = s.timestep * unit.femtosecond
    dt_ps = dt.value_in_unit(unit.picosecond)
    frame_ps = s.report_every * dt_ps
    n_atoms = topology.getNumAtoms()
    positions = np.asarray(positions, dtype=np.float64).reshape(n_atoms, 3)

    resuming = resume and paths["chk"].exists()
    if not resuming:
        for key in ("traj", "csv", "chk", "result", "log", "final"):
            if paths[key].exists():
                paths[key].unlink()
    log = _Log(paths["log"], echo)

    run_info = {
        "settings": {**{k: v for k, v in asdict(s).items() if k != "guard"}, "guard": asdict(s.guard)},
        "n_atoms": n_atoms,
        "frame_interval_ps": frame_ps,
        "first_frame_time_ps": 0.0,
        "timestep_ps": dt_ps,
        "periodic": topology.getPeriodicBoxVectors() is not None,
        "forces": [system.getForce(i).getName() for i in range(system.getNumForces())],
        "trajectory": paths["traj"].name,
        "topology": paths["top"].name,
        "positions_wrapped": False,
        "versions": versions(),
        **(metadata or {}),
    }
    if resuming and paths["run"].exists():
        old = json.loads(paths["run"].read_text())
        for key in ("n_atoms", "frame_interval_ps"):
            if old.get(key) != run_info[key]:
                raise ValueError(f"--resume: {key} = {run_info[key]} differs from the run in {out} ({old.get(key)}); "
                                 "use the same settings or a new --out")
        for key in ("timestep", "report_every", "ensemble"):
            if old["settings"].get(key) != run_info["settings"][key]:
                raise ValueError(f"--resume: {key} = {run_info['settings'][key]} differs from the run in {out} "
                                 f"({old['settings'].get(key)}); use the same settings or a new --out")
    atomic_write_json(paths["run"], run_info)

    if s.ensemble == "nvt":
        integrator = openmm.LangevinMiddleIntegrator(s.temperature * unit.kelvin, s.friction / unit.picosecond, dt)
        integrator.setRandomNumberSeed(int(np.random.SeedSequence([s.seed, 17]).generate_state(1)[0] % (2**31 - 2)) + 1)
    else:
        integrator = openmm.VerletIntegrator(dt)
    plat, props = _platform(s.platform, s.threads)
    sim = app.Simulation(topology, system, integrator, plat, props)
    dof = _dof(system)
    gas = unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin)
    periodic = topology.getPeriodicBoxVectors() is not None
    symbols = [a.element.symbol if a.element is not None else a.name for a in topology.atoms()]
    bonds = topology_bonds(topology)

    def snapshot(step: int):
        st = sim.context.getState(getPositions=True, getEnergy=True, enforcePeriodicBox=False)
        pos = np.asarray(st.getPositions(asNumpy=True).value_in_unit(unit.angstrom))
        pe = st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        ke = st.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
        cell = np.asarray(st.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.angstrom)) if periodic else None
        temp = 2.0 * ke / (dof * gas)
        return st, pos, pe, ke, cell, temp

    t_start = time.perf_counter()
    result: Dict[str, Any] = {"status": "running", "out": str(out)}
    if resuming:
        sim.loadCheckpoint(str(paths["chk"]))
        step0 = int(round(sim.context.getTime().value_in_unit(unit.picosecond) / dt_ps))
        sim.currentStep = step0
        rows = _truncate_csv(paths["csv"], step0)
        n_frames = _truncate_dcd(paths["traj"], topology, step0 // s.report_every + 1, dt_ps, s.report_every)
        log(f"resumed from {paths['chk']} at step {step0} ({rows} log rows, {n_frames} frames kept)")
        result["resumed_from_step"] = step0
    else:
        step0 = 0
        sim.context.setPositions(positions * unit.angstrom)
        e_init = sim.context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        log(f"{n_atoms} atoms, forces {run_info['forces']}, platform {plat.getName()}; "
            f"initial E_pot = {e_init * ev:.4f} eV")
        phase = "minimisation"
        try:
            if s.minimize_iterations > 0:
                t0 = time.perf_counter()
                openmm.LocalEnergyMinimizer.minimize(
                    sim.context, s.minimize_tolerance * unit.kilojoule_per_mole / unit.nanometer, s.minimize_iterations)
                e_min = sim.context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
                log(f"minimised ({s.minimize_iterations} iterations max) in {time.perf_counter() - t0:.1f} s: "
                    f"E_pot = {e_min * ev:.4f} eV")
            sim.context.setVelocitiesToTemperature(s.temperature * unit.kelvin, s.seed + 1)
            phase = "equilibration"
            if s.equilibration_steps > 0:
                log(f"equilibrating {s.equilibration_steps} steps (not recorded)")
                sim.step(s.equilibration_steps)
        except Exception as exc:  # the model failed before production: the run is unstable
            reason = model_failure_reason(exc)
            if reason is None:
                raise
            reason = f"{reason} (during {phase})"
            result.update(status="unstable", failed_step=0, failed_time_ps=0.0, reason=reason, last_good_step=None,
                          steps_done=0, message=reason, wall_seconds=time.perf_counter() - t_start)
            log(f"STOPPED: {reason}")
            atomic_write_json(paths["result"], result)
            raise MDInstabilityError(0, reason) from exc
            sim.context.setTime(0.0)
            sim.context.setStepCount(0)
            sim.currentStep = 0
        st = sim.context.getState(getPositions=True, enforcePeriodicBox=False)
        with open(paths["top"], "w") as fh:
            app.PDBFile.writeFile(topology, st.getPositions(), fh, keepIds=True)

    # reference bond lengths from the starting structure (same topology on resume)
    guard = StabilityGuard(bonds=bonds, reference_positions=positions, target_temperature=s.temperature,
                           settings=s.guard, symbols=symbols,
                           cell=_box_angstrom(topology), pbc=np.ones(3, bool) if periodic else None)

    traj_fh = open(paths["traj"], "r+b" if resuming and paths["traj"].exists() else "wb")
    dcd = app.DCDFile(traj_fh, topology, dt, 0, s.report_every, append=resuming and paths["traj"].stat().st_size > 0)
    csv_fh, writer = open_csv_log(paths["csv"], resuming)

    last = {"wall": time.perf_counter(), "step": step0, "good_step": step0 if resuming else None}

    def record(step: int, write: bool) -> None:
        st, pos, pe, ke, cell, temp = snapshot(step)
        guard.check(step, pos, cell, np.ones(3, bool) if periodic else None, pe * ev, temp, step * dt_ps)
        last["good_step"] = step
        if write:
            now = time.perf_counter()
            steps_done = step - last["step"]
            speed = (steps_done * dt.value_in_unit(unit.nanosecond)) / ((now - last["wall"]) / 86400.0) if steps_done > 0 and now > last["wall"] else float("nan")
            last["wall"], last["step"] = now, step
            dcd.writeModel(pos * unit.angstrom, periodicBoxVectors=(cell * unit.angstrom) if cell is not None else None)
            traj_fh.flush()
            writer.writerow([step, f"{step * dt_ps:.6f}", f"{pe * ev:.8f}", f"{ke * ev:.8f}", f"{(pe + ke) * ev:.8f}",
                             f"{pe:.6f}", f"{ke:.6f}", f"{pe + ke:.6f}", f"{temp:.4f}", f"{speed:.4f}"])
            csv_fh.flush()

    def checkpoint() -> None:
        with atomic_path(paths["chk"]) as tmp:
            with open(tmp, "wb") as fh:
                sim.saveCheckpoint(fh)

    step = step0
    bar = tqdm(total=s.steps, initial=step0, desc=f"MD {out.name}", unit="step", disable=not progress_wanted(s.progress),
               dynamic_ncols=True)
    try:
        if not resuming:
            record(0, True)
            if s.steps > 0:
                checkpoint()
        check_every = s.guard.check_every
        while step < s.steps:
            nxt = min(s.steps, (step // check_every + 1) * check_every, (step // s.report_every + 1) * s.report_every,
                      (step // ckpt_every + 1) * ckpt_every)
            try:
                sim.step(nxt - step)
            except Exception as exc:  # the model failed between two guard checks
                reason = model_failure_reason(exc)
                if reason is None:
                    raise
                raise MDInstabilityError(nxt, reason, nxt * dt_ps) from exc
            bar.update(nxt - step)
            step = nxt
            report = step % s.report_every == 0 or step == s.steps
            if report or step % check_every == 0 or step % ckpt_every == 0:
                record(step, report and step % s.report_every == 0)
            if step % ckpt_every == 0 or step == s.steps:
                checkpoint()
            if report and s.progress:
                bar.set_postfix_str(f"T={_last_temp(paths['csv'])}")
    except MDInstabilityError as exc:
        bar.close()
        dcd_frames = (last["good_step"] // s.report_every + 1) if last["good_step"] is not None else 0
        result.update(status="unstable", failed_step=exc.step, failed_time_ps=exc.step * dt_ps, reason=exc.reason,
                      last_good_step=last["good_step"], steps_done=last["good_step"] or 0,
                      message=str(exc), wall_seconds=time.perf_counter() - t_start)
        good = (last["good_step"] or 0) - step0
        if good > 0:
            result["speed_ns_per_day"] = good * dt.value_in_unit(unit.nanosecond) / (result["wall_seconds"] / 86400.0)
        log(f"STOPPED: {exc}; trajectory kept up to step {last['good_step']} (frame {dcd_frames - 1})")
        traj_fh.close()
        csv_fh.close()
        atomic_write_json(paths["result"], result)
        raise
    except BaseException:
        bar.close()
        traj_fh.close()
        csv_fh.close()
        raise
    bar.close()
    traj_fh.close()
    csv_fh.close()
    st = sim.context.getState(getPositions=True, enforcePeriodicBox=False)
    with atomic_path(paths["final"]) as tmp:
        with open(tmp, "w") as fh:
            app.PDBFile.writeFile(topology, st.getPositions(), fh, keepIds=True)
    wall = time.perf_counter() - t_start
    done = s.steps - step0
    result.update(status="ok", steps_done=s.steps, wall_seconds=wall,
                  speed_ns_per_day=(done * dt.value_in_unit(unit.nanosecond)) / (wall / 86400.0) if done > 0 and wall > 0 else None)
    log(f"finished {s.steps} steps ({s.steps * dt_ps:.3f} ps) in {wall:.1f} s")
    atomic_write_json(paths["result"], result)
    return result


def _last_temp(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.path.getsize(path) - 400))
            line = fh.read().decode().strip().splitlines()[-1]
        return f"{float(line.split(',')[8]):.0f}K"
    except Exception:
        return "?"
