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

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from maskpot.md.guard import MDInstabilityError, StabilityGuard, covalent_bonds, water_bonds
from maskpot.md.openmm_runner import MDSettings, _Log, _truncate_csv, kj_per_mol_to_ev, open_csv_log
from maskpot.utils import PathLike, atomic_path, atomic_write_json, versions

__all__ = ["run_ase", "read_structure"]


def read_structure(path: PathLike, index: int = 0):
    """Read one frame (``ase.Atoms``) from any format ASE understands (xyz, extxyz, pdb, ...)."""
    import ase.io

    return ase.io.read(str(path), index=index)


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

    ``settings.minimize_iterations`` > 0 runs BFGS (fmax 0.05 eV/Å) before MD on fresh runs.
    Raises :class:`MDInstabilityError` (after writing outputs up to the last good frame).
    """
    import ase.io
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
    from ase.md.verlet import VelocityVerlet
    from tqdm.auto import tqdm

    from maskpot.utils import progress_wanted

    s = settings or MDSettings()
    s.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / v for k, v in dict(traj="traj.extxyz", csv="md.csv", chk="checkpoint.extxyz", run="run.json",
                                          result="result.json", log="md.log", final="final.extxyz").items()}
    ckpt_every = s.checkpoint_every or 10 * s.report_every
    kjmol = 1.0 / kj_per_mol_to_ev()
    dt_ps = (s.timestep * units.fs) / (1000.0 * units.fs)
    resuming = resume and paths["chk"].exists()
    if not resuming:
        for key in ("traj", "csv", "chk", "result", "log", "final"):
            if paths[key].exists():
                paths[key].unlink()
    log = _Log(paths["log"], echo)
    atoms = atoms.copy()
    n_atoms = len(atoms)
    run_info = {
        "engine": "ase",
        "settings": {**{k: v for k, v in asdict(s).items() if k != "guard"}, "guard": asdict(s.guard)},
        "n_atoms": n_atoms,
        "frame_interval_ps": s.report_every * dt_ps,
        "first_frame_time_ps": 0.0,
        "timestep_ps": dt_ps,
        "periodic": bool(atoms.pbc.any()),
        "trajectory": paths["traj"].name,
        "versions": versions(),
        **(metadata or {}),
    }
    if resuming and paths["run"].exists():
        old = json.loads(paths["run"].read_text())
        for key in ("timestep", "report_every", "ensemble"):
            if old["settings"].get(key) != run_info["settings"][key]:
                raise ValueError(f"--resume: {key} = {run_info['settings'][key]} differs from the run in {out} "
                                 f"({old['settings'].get(key)}); use the same settings or a new --out")
    atomic_write_json(paths["run"], run_info)

    numbers = atoms.get_atomic_numbers()
    bonds = water_bonds(numbers)
    if bonds is None:
        bonds = covalent_bonds(numbers, atoms.get_positions(), atoms.get_cell(), atoms.pbc)
    guard = StabilityGuard(bonds=bonds, reference_positions=atoms.get_positions(), target_temperature=s.temperature,
                           settings=s.guard, symbols=atoms.get_chemical_symbols(),
                           cell=np.asarray(atoms.get_cell()), pbc=atoms.pbc)

    t_start = time.perf_counter()
    result: Dict[str, Any] = {"status": "running", "out": str(out)}
    if resuming:
        chk = ase.io.read(str(paths["chk"]))
        step0 = int(chk.info["step"])
        atoms.set_positions(chk.get_positions())
        atoms.set_momenta(chk.get_momenta())
        atoms.set_cell(chk.get_cell())
        rows = _truncate_csv(paths["csv"], step0)
        n_keep = step0 // s.report_every + 1
        if paths["traj"].exists():
            frames = ase.io.read(str(paths["traj"]), index=":")
            if len(frames) > n_keep:
                with atomic_path(paths["traj"]) as tmp:
                    ase.io.write(str(tmp), frames[:n_keep], format="extxyz")
        log(f"resumed from {paths['chk']} at step {step0} ({rows} log rows kept)")
        result["resumed_from_step"] = step0
    else:
        step0 = 0
        atoms.calc = calculator
        log(f"{n_atoms} atoms ({atoms.get_chemical_formula()}); initial E_pot = {atoms.get_potential_energy():.4f} eV")
        if s.minimize_iterations > 0:
            from ase.optimize import BFGS

            opt = BFGS(atoms, logfile=None)
            opt.run(fmax=0.05, steps=s.minimize_iterations)
            log(f"minimised (BFGS, {opt.get_number_of_steps()} steps): E_pot = {atoms.get_potential_energy():.4f} eV")
        rng = np.random.default_rng(np.random.SeedSequence([s.seed, 29]))
        try:  # ASE >= 3.29
            from ase.md.velocitydistribution import thermalize_momenta

            thermalize_momenta(atoms, s.temperature, rng=rng)
        except ImportError:
            MaxwellBoltzmannDistribution(atoms, temperature_K=s.temperature, rng=rng)
        Stationary(atoms)
        if not atoms.pbc.any():
            ZeroRotation(atoms)
    atoms.calc = calculator

    def make_dyn(step: int):
        if s.ensemble == "nvt":
            rng = np.random.default_rng(np.random.SeedSequence([s.seed, 31, step]))
            return Langevin(atoms, s.timestep * units.fs, temperature_K=s.temperature,
                            friction=s.friction / (1000.0 * units.fs), fixcm=False, rng=rng)
        return VelocityVerlet(atoms, s.timestep * units.fs)

    dyn = make_dyn(step0)
    csv_fh, writer = open_csv_log(paths["csv"], resuming)
    last = {"wall": time.perf_counter(), "step": step0, "good_step": step0 if resuming else None}
    # temperature with ASE's convention: 3N degrees of freedom (the COM is not constrained;
    # its momentum is zeroed at the start)
    dof = 3 * n_atoms

    def record(step: int, write: bool) -> None:
        pos = atoms.get_positions()
        pe = float(atoms.get_potential_energy())
        ke = float(atoms.get_kinetic_energy())
        temp = 2.0 * ke / (max(dof, 1) * units.kB)
        guard.check(step, pos, np.asarray(atoms.get_cell()), atoms.pbc, pe, temp, step * dt_ps)
        last["good_step"] = step
        if write:
            now = time.perf_counter()
            done = step - last["step"]
            speed = (done * dt_ps / 1000.0) / ((now - last["wall"]) / 86400.0) if done > 0 and now > last["wall"] else float("nan")
            last["wall"], last["step"] = now, step
            frame = atoms.copy()
            frame.calc = None
            frame.info.update(step=step, time_ps=step * dt_ps, energy=pe)
            frame.arrays["forces"] = atoms.get_forces().copy()
            ase.io.write(str(paths["traj"]), frame, format="extxyz", append=True)
            writer.writerow([step, f"{step * dt_ps:.6f}", f"{pe:.8f}", f"{ke:.8f}", f"{pe + ke:.8f}",
                             f"{pe * kjmol:.6f}", f"{ke * kjmol:.6f}", f"{(pe + ke) * kjmol:.6f}", f"{temp:.4f}", f"{speed:.4f}"])
            csv_fh.flush()

    def checkpoint(step: int) -> None:
        frame = atoms.copy()
        frame.calc = None
        frame.info["step"] = step
        with atomic_path(paths["chk"]) as tmp:
            ase.io.write(str(tmp), frame, format="extxyz")

    step = step0
    bar = tqdm(total=s.steps, initial=step0, desc=f"MD {out.name}", unit="step", disable=not progress_wanted(s.progress),
               dynamic_ncols=True)
    try:
        if not resuming:
            record(0, True)
            checkpoint(0)
        check_every = s.guard.check_every
        while step < s.steps:
            nxt = min(s.steps, (step // check_every + 1) * check_every, (step // s.report_every + 1) * s.report_every,
                      (step // ckpt_every + 1) * ckpt_every)
            dyn.run(nxt - step)
            bar.update(nxt - step)
            step = nxt
            record(step, step % s.report_every == 0)
            if step % ckpt_every == 0 or step == s.steps:
                checkpoint(step)
    except MDInstabilityError as exc:
        bar.close()
        csv_fh.close()
        result.update(status="unstable", failed_step=exc.step, failed_time_ps=exc.step * dt_ps, reason=exc.reason,
                      last_good_step=last["good_step"], steps_done=last["good_step"] or 0, message=str(exc),
                      wall_seconds=time.perf_counter() - t_start)
        good = (last["good_step"] or 0) - step0
        if good > 0:
            result["speed_ns_per_day"] = good * dt_ps / 1000.0 / (result["wall_seconds"] / 86400.0)
        log(f"STOPPED: {exc}; trajectory kept up to step {last['good_step']}")
        atomic_write_json(paths["result"], result)
        raise
    except BaseException:
        bar.close()
        csv_fh.close()
        raise
    bar.close()
    csv_fh.close()
    frame = atoms.copy()
    frame.calc = None
    with atomic_path(paths["final"]) as tmp:
        ase.io.write(str(tmp), frame, format="extxyz")
    wall = time.perf_counter() - t_start
    done = s.steps - step0
    result.update(status="ok", steps_done=s.steps, wall_seconds=wall,
                  speed_ns_per_day=(done * dt_ps / 1000.0) / (wall / 86400.0) if done > 0 and wall > 0 else None)
    log(f"finished {s.steps} steps ({s.steps * dt_ps:.3f} ps) in {wall:.1f} s")
    atomic_write_json(paths["result"], result)
    return result
