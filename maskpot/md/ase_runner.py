"""Run MD in ASE with a learned potential (:class:`maskpot.deploy.ase.MaskpotCalculator`).

NVT: ``ase.md.langevin.Langevin``; NVE: ``ase.md.verlet.VelocityVerlet``. Outputs in ``out``
(the same CSV columns as the OpenMM runner):

=================  ===============================================================================
``traj.extxyz``    frames every ``report_every`` steps (positions Å, momenta, energy, forces);
                   unwrapped (ASE does not wrap during MD)
``md.csv``         step, time_ps, potential/kinetic/total energy (eV and kJ/mol), temperature_K,
                   speed_ns_per_day
``checkpoint.extxyz`` last checked state (positions, momenta, step) written atomically every
                   ``checkpoint_every`` steps; ``resume=True`` continues from it (the Langevin
                   random stream restarts from a seed derived from the step, so a resumed NVT run
                   is statistically, not bitwise, the same as an uninterrupted one)
``run.json`` / ``result.json`` / ``md.log`` / ``final.extxyz``  as for OpenMM
=================  ===============================================================================

Units: ``ase.units`` (fs, K, eV); friction given in 1/ps.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

from maskpot.md.guard import MDInstabilityError, StabilityGuard, covalent_bonds, water_bonds
from maskpot.md.openmm_runner import MDSettings
from maskpot.md.run_files import MDRunFiles, next_stop, settings_dict
from maskpot.utils import PathLike, atomic_path, versions

__all__ = ["run_ase", "read_structure"]

#: output files of an ASE run besides md.csv / run.json / result.json / md.log
ASE_FILES = {"traj": "traj.extxyz", "chk": "checkpoint.extxyz", "final": "final.extxyz"}


def read_structure(path: PathLike, index: int = 0):
    """Read one frame (``ase.Atoms``) from any format ASE understands (xyz, extxyz, pdb, ...)."""
    import ase.io

    return ase.io.read(str(path), index=index)


def _bare_copy(atoms: Any) -> Any:
    """``atoms`` without its calculator (what the trajectory and checkpoint files store)."""
    frame = atoms.copy()
    frame.calc = None
    return frame


def _run_info(atoms: Any, s: MDSettings, files: MDRunFiles, dt_ps: float,
              metadata: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The contents of ``run.json``: engine, settings, frame interval (ps), versions, metadata."""
    return {
        "engine": "ase",
        "settings": settings_dict(s),
        "n_atoms": len(atoms),
        "frame_interval_ps": s.report_every * dt_ps,
        "first_frame_time_ps": 0.0,
        "timestep_ps": dt_ps,
        "periodic": bool(atoms.pbc.any()),
        "trajectory": files.paths["traj"].name,
        "versions": versions(),
        **(metadata or {}),
    }


def _guard(atoms: Any, s: MDSettings) -> StabilityGuard:
    """The stability guard; bonds of water (O, H, H order) or covalent radii of the start."""
    numbers = atoms.get_atomic_numbers()
    bonds = water_bonds(numbers)
    if bonds is None:
        bonds = covalent_bonds(numbers, atoms.get_positions(), atoms.get_cell(), atoms.pbc)
    return StabilityGuard(bonds=bonds, reference_positions=atoms.get_positions(), target_temperature=s.temperature,
                          settings=s.guard, symbols=atoms.get_chemical_symbols(),
                          cell=np.asarray(atoms.get_cell()), pbc=atoms.pbc)


def _resume(atoms: Any, files: MDRunFiles, s: MDSettings) -> int:
    """Positions, momenta and cell from the checkpoint; ``md.csv`` and the trajectory cut back
    to its step; return that step."""
    import ase.io

    chk = ase.io.read(str(files.paths["chk"]))
    step0 = int(chk.info["step"])
    atoms.set_positions(chk.get_positions())
    atoms.set_momenta(chk.get_momenta())
    atoms.set_cell(chk.get_cell())
    rows = files.truncate_table(step0)
    n_keep = step0 // s.report_every + 1
    traj = files.paths["traj"]
    if traj.exists():
        frames = ase.io.read(str(traj), index=":")
        if len(frames) > n_keep:
            with atomic_path(traj) as tmp:
                ase.io.write(str(tmp), frames[:n_keep], format="extxyz")
    files.log(f"resumed from {files.paths['chk']} at step {step0} ({rows} log rows kept)")
    files.result["resumed_from_step"] = step0
    return step0


def _prepare(atoms: Any, calculator: Any, files: MDRunFiles, s: MDSettings) -> None:
    """A fresh run's step 0: minimise (BFGS, fmax 0.05 eV/Å) when asked, Maxwell–Boltzmann
    momenta at ``s.temperature`` (seeded), no centre-of-mass motion (nor rotation without pbc)."""
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation

    atoms.calc = calculator
    files.log(f"{len(atoms)} atoms ({atoms.get_chemical_formula()}); "
              f"initial E_pot = {atoms.get_potential_energy():.4f} eV")
    if s.minimize_iterations > 0:
        from ase.optimize import BFGS

        opt = BFGS(atoms, logfile=None)
        opt.run(fmax=0.05, steps=s.minimize_iterations)
        files.log(f"minimised (BFGS, {opt.get_number_of_steps()} steps): E_pot = {atoms.get_potential_energy():.4f} eV")
    rng = np.random.default_rng(np.random.SeedSequence([s.seed, 29]))
    try:  # ASE >= 3.29
        from ase.md.velocitydistribution import thermalize_momenta

        thermalize_momenta(atoms, s.temperature, rng=rng)
    except ImportError:
        MaxwellBoltzmannDistribution(atoms, temperature_K=s.temperature, rng=rng)
    Stationary(atoms)
    if not atoms.pbc.any():
        ZeroRotation(atoms)


def _dynamics(atoms: Any, s: MDSettings, step: int) -> Any:
    """Langevin (NVT; random stream seeded from ``s.seed`` and ``step``) or VelocityVerlet (NVE)."""
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.verlet import VelocityVerlet

    if s.ensemble == "nvt":
        rng = np.random.default_rng(np.random.SeedSequence([s.seed, 31, step]))
        return Langevin(atoms, s.timestep * units.fs, temperature_K=s.temperature,
                        friction=s.friction / (1000.0 * units.fs), fixcm=False, rng=rng)
    return VelocityVerlet(atoms, s.timestep * units.fs)


def _production(atoms: Any, guard: StabilityGuard, files: MDRunFiles, s: MDSettings, step0: int,
                dt_ps: float) -> None:
    """Steps ``step0`` → ``s.steps``: the guard at every stop (multiples of the check, report and
    checkpoint intervals), a frame and an ``md.csv`` row every ``report_every`` steps, a
    checkpoint every ``checkpoint_every`` steps and at the end; frame 0 on fresh runs.

    On instability the outputs end at the last good frame, ``result.json`` is written and
    :class:`MDInstabilityError` raised."""
    import ase.io
    from ase import units
    from tqdm.auto import tqdm

    from maskpot.utils import progress_wanted

    ckpt_every = s.checkpoint_every or 10 * s.report_every
    stops = (s.guard.check_every, s.report_every, ckpt_every)
    # temperature with ASE's convention: 3N degrees of freedom (the COM is not constrained;
    # its momentum is zeroed at the start)
    dof = max(3 * len(atoms), 1)
    last_good: Dict[str, Optional[int]] = {"step": step0 if files.resuming else None}

    def record(step: int, table: Any, write: bool) -> None:
        pos = atoms.get_positions()
        pe = float(atoms.get_potential_energy())
        ke = float(atoms.get_kinetic_energy())
        temp = 2.0 * ke / (dof * units.kB)
        guard.check(step, pos, np.asarray(atoms.get_cell()), atoms.pbc, pe, temp, step * dt_ps)
        last_good["step"] = step
        if write:
            frame = _bare_copy(atoms)
            frame.info.update(step=step, time_ps=step * dt_ps, energy=pe)
            frame.arrays["forces"] = atoms.get_forces().copy()
            ase.io.write(str(files.paths["traj"]), frame, format="extxyz", append=True)
            table.write(step, pe, ke, temp)

    def checkpoint(step: int) -> None:
        frame = _bare_copy(atoms)
        frame.info["step"] = step
        with atomic_path(files.paths["chk"]) as tmp:
            ase.io.write(str(tmp), frame, format="extxyz")

    dyn = _dynamics(atoms, s, step0)
    try:
        with files.energy_table("eV", dt_ps, step0) as table, \
                tqdm(total=s.steps, initial=step0, desc=f"MD {files.out.name}", unit="step",
                     disable=not progress_wanted(s.progress), dynamic_ncols=True) as bar:
            if not files.resuming:
                record(0, table, True)
                checkpoint(0)
            step = step0
            while step < s.steps:
                nxt = next_stop(step, s.steps, stops)
                dyn.run(nxt - step)
                bar.update(nxt - step)
                step = nxt
                record(step, table, step % s.report_every == 0)
                if step % ckpt_every == 0 or step == s.steps:
                    checkpoint(step)
    except MDInstabilityError as exc:
        n_frames = (last_good["step"] // s.report_every + 1) if last_good["step"] is not None else 0
        files.fail(exc, last_good["step"], step0, dt_ps, frame_note=f" (frame {n_frames - 1})")
        raise


def run_ase(
    atoms,
    calculator,
    out: PathLike,
    settings: Optional[MDSettings] = None,
    resume: bool = False,
    metadata: Optional[Dict[str, Any]] = None,
    echo: bool = True,
) -> Dict[str, Any]:
    """Run MD on ``atoms`` with ``calculator``; see the module docstring for outputs.

    The steps mirror :func:`maskpot.md.openmm_runner.run_openmm`: settings; output folder and
    ``run.json``; resume from the checkpoint or prepare step 0; production; ``final.extxyz`` and
    ``result.json``. ``settings.minimize_iterations`` > 0 runs BFGS (fmax 0.05 eV/Å) before MD
    on fresh runs. Raises :class:`MDInstabilityError` (after writing outputs up to the last good
    frame).
    """
    import ase.io
    from ase import units

    s = settings or MDSettings()
    s.validate()
    dt_ps = (s.timestep * units.fs) / (1000.0 * units.fs)
    files = MDRunFiles(out, ASE_FILES, resume, echo)
    atoms = atoms.copy()
    files.write_run_info(_run_info(atoms, s, files, dt_ps, metadata))
    guard = _guard(atoms, s)
    files.start_clock()
    if files.resuming:
        step0 = _resume(atoms, files, s)
    else:
        step0 = 0
        _prepare(atoms, calculator, files, s)
    atoms.calc = calculator
    _production(atoms, guard, files, s, step0, dt_ps)
    with atomic_path(files.paths["final"]) as tmp:
        ase.io.write(str(tmp), _bare_copy(atoms), format="extxyz")
    return files.finish(s.steps, step0, dt_ps)
