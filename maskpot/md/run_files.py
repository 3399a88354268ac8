"""The files of one MD run, written the same way by the OpenMM and the ASE runner.

:class:`MDRunFiles` owns an output folder: it clears stale outputs on a fresh start, keeps them
on ``resume`` (when a checkpoint exists), writes ``run.json`` (refusing a resume with different
settings), the log ``md.log``, and ``result.json`` when the run ends (``"ok"`` or
``"unstable"``). :class:`EnergyTable` is ``md.csv``, one row per recorded frame with the columns
:data:`CSV_COLUMNS`; it is a context manager (the file is open only inside ``with``).

Which trajectory / checkpoint / final-structure files exist depends on the engine; the runner
names them (keys ``traj``, ``chk``, ``final``) when it makes the :class:`MDRunFiles`.

Units: steps, ps, eV and kJ/mol, K; speeds in ns/day (wall clock).
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any, Dict, Iterable, Mapping, Optional, Sequence

from maskpot.data.tip3p import kj_per_mol_to_ev
from maskpot.md.guard import MDInstabilityError
from maskpot.utils import PathLike, atomic_path, atomic_write_json

__all__ = ["CSV_COLUMNS", "MDLog", "EnergyTable", "MDRunFiles", "next_stop", "steps_to_next", "settings_dict",
           "truncate_csv"]

CSV_COLUMNS = [
    "step", "time_ps", "potential_eV", "kinetic_eV", "total_eV",
    "potential_kJmol", "kinetic_kJmol", "total_kJmol", "temperature_K", "speed_ns_per_day",
]

#: files every runner writes (key -> name); the runner adds ``traj``, ``chk``, ``final`` (and more)
COMMON_FILES = {"csv": "md.csv", "run": "run.json", "result": "result.json", "log": "md.log"}
#: outputs deleted when a run starts fresh (``run.json`` is overwritten, ``topology.pdb`` rewritten)
_STALE_ON_FRESH_START = ("traj", "csv", "chk", "result", "log", "final")
#: settings a resumed run must share with the run it continues
_RESUME_SETTINGS = ("timestep", "report_every", "ensemble")


def settings_dict(settings: Any) -> Dict[str, Any]:
    """The JSON-able form of :class:`~maskpot.md.openmm_runner.MDSettings` (guard settings nested)."""
    return asdict(settings)


def steps_to_next(step: int, intervals: Iterable[int]) -> int:
    """Steps from ``step`` to the next multiple of any of ``intervals`` (each >= 1), at least 1."""
    return min(n - step % n for n in intervals)


def next_stop(step: int, end: int, intervals: Iterable[int]) -> int:
    """The first step after ``step`` that is a multiple of one of ``intervals``, at most ``end``."""
    return min(end, step + steps_to_next(step, intervals))


def truncate_csv(path: Path, last_step: int) -> int:
    """Keep the rows of the CSV at ``path`` with step <= ``last_step`` (rewritten atomically);
    return how many rows remain (0 when there is no file)."""
    if not path.exists():
        return 0
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return 0
    header, body = rows[0], [r for r in rows[1:] if r and int(float(r[0])) <= last_step]
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(body)
    return len(body)


class MDLog:
    """``md.log``: time-stamped lines appended to ``path`` (also printed when ``echo``)."""

    def __init__(self, path: Path, echo: bool = False):
        self.path = path
        self.echo = echo

    def __call__(self, msg: str) -> None:
        line = f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {msg}"
        with open(self.path, "a") as fh:
            fh.write(line + "\n")
        if self.echo:
            print(msg, flush=True)


class EnergyTable:
    """``md.csv`` (columns :data:`CSV_COLUMNS`), appended to row by row; use as ``with table:``.

    Args:
        path: the CSV file.
        resuming: append to an existing file (no second header); otherwise the header is written.
        energy_unit: the unit the engine gives energies in, ``"eV"`` (ASE) or ``"kJ/mol"``
            (OpenMM); the other unit's columns are converted from it.
        dt_ps: MD timestep, ps (for the time column and the speed).
        step0: the step the run starts from (speed of the first row counts from it).
    """

    def __init__(self, path: Path, resuming: bool, energy_unit: str, dt_ps: float, step0: int):
        if energy_unit not in ("eV", "kJ/mol"):
            raise ValueError(f"EnergyTable: energy_unit must be 'eV' or 'kJ/mol', got {energy_unit!r}")
        self.path = path
        self.resuming = resuming
        self.energy_unit = energy_unit
        self.dt_ps = dt_ps
        self.last_temperature: Optional[float] = None
        self._ev_per_kjmol = kj_per_mol_to_ev()
        self._kjmol_per_ev = 1.0 / self._ev_per_kjmol
        self._fh: Optional[IO[str]] = None
        self._writer: Any = None
        self._last_wall = time.perf_counter()
        self._last_step = step0

    def __enter__(self) -> "EnergyTable":
        new = not (self.resuming and self.path.exists())
        self._fh = open(self.path, "a", newline="")
        self._writer = csv.writer(self._fh)
        if new:
            self._writer.writerow(CSV_COLUMNS)
            self._fh.flush()
        self._last_wall = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def write(self, step: int, potential: float, kinetic: float, temperature: float) -> None:
        """One row: energies in the table's ``energy_unit``, temperature K; flushed at once."""
        if self._fh is None:
            raise RuntimeError(f"{self.path}: EnergyTable.write outside `with table:`")
        now = time.perf_counter()
        done = step - self._last_step
        speed = ((done * self.dt_ps / 1000.0) / ((now - self._last_wall) / 86400.0)
                 if done > 0 and now > self._last_wall else float("nan"))
        self._last_wall, self._last_step = now, step
        total = potential + kinetic
        native = [potential, kinetic, total]
        if self.energy_unit == "eV":
            ev, kjmol = native, [x * self._kjmol_per_ev for x in native]
        else:
            ev, kjmol = [x * self._ev_per_kjmol for x in native], native
        self._writer.writerow([step, f"{step * self.dt_ps:.6f}", *(f"{x:.8f}" for x in ev),
                               *(f"{x:.6f}" for x in kjmol), f"{temperature:.4f}", f"{speed:.4f}"])
        self._fh.flush()
        self.last_temperature = float(temperature)


class MDRunFiles:
    """The output folder of one MD run (see the runners' module docstrings for the files).

    Making it creates ``out``, decides whether the run resumes (``resume`` and the checkpoint
    ``files["chk"]`` exists) and, on a fresh start, deletes the outputs of an earlier run.

    Args:
        out: output folder.
        files: engine-specific file names by key (``traj``, ``chk``, ``final``, ...), added to
            :data:`COMMON_FILES`.
        resume: continue from the checkpoint when there is one.
        echo: print the log lines too.
    """

    def __init__(self, out: PathLike, files: Mapping[str, str], resume: bool, echo: bool):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.paths: Dict[str, Path] = {k: self.out / v for k, v in {**COMMON_FILES, **files}.items()}
        self.resuming = bool(resume and self.paths["chk"].exists())
        if not self.resuming:
            for key in _STALE_ON_FRESH_START:
                if self.paths[key].exists():
                    self.paths[key].unlink()
        self.log = MDLog(self.paths["log"], echo)
        self.result: Dict[str, Any] = {"status": "running", "out": str(self.out)}
        self._t_start = time.perf_counter()

    def start_clock(self) -> None:
        """Start the wall clock of ``wall_seconds`` / ``speed_ns_per_day`` in ``result.json``."""
        self._t_start = time.perf_counter()

    def wall_seconds(self) -> float:
        return time.perf_counter() - self._t_start

    def write_run_info(self, run_info: Dict[str, Any], resume_keys: Sequence[str] = ()) -> None:
        """Write ``run.json``; on resume first check that ``resume_keys`` (top level) and the
        timestep / report interval / ensemble equal those of the run being continued."""
        if self.resuming and self.paths["run"].exists():
            old = json.loads(self.paths["run"].read_text())
            for key in resume_keys:
                self._same_on_resume(key, run_info.get(key), old.get(key))
            for key in _RESUME_SETTINGS:
                self._same_on_resume(key, run_info["settings"][key], old["settings"].get(key))
        atomic_write_json(self.paths["run"], run_info)

    def _same_on_resume(self, key: str, new: Any, old: Any) -> None:
        if new != old:
            raise ValueError(f"--resume: {key} = {new} differs from the run in {self.out} ({old}); "
                             "use the same settings or a new --out")

    def energy_table(self, energy_unit: str, dt_ps: float, step0: int) -> EnergyTable:
        """``md.csv`` for this run (appended to when resuming); open it with ``with``."""
        return EnergyTable(self.paths["csv"], self.resuming, energy_unit, dt_ps, step0)

    def truncate_table(self, last_step: int) -> int:
        """Drop ``md.csv`` rows after ``last_step`` (a resumed run's checkpoint); rows kept."""
        return truncate_csv(self.paths["csv"], last_step)

    def fail_before_production(self, reason: str) -> MDInstabilityError:
        """Record a model failure before step 0 (minimisation, equilibration) in ``result.json``
        and the log; return the error for the runner to raise."""
        self.result.update(status="unstable", failed_step=0, failed_time_ps=0.0, reason=reason, last_good_step=None,
                           steps_done=0, message=reason, wall_seconds=self.wall_seconds())
        self.log(f"STOPPED: {reason}")
        atomic_write_json(self.paths["result"], self.result)
        return MDInstabilityError(0, reason)

    def fail(self, exc: MDInstabilityError, last_good_step: Optional[int], step0: int, dt_ps: float,
             frame_note: str = "") -> None:
        """Record an unstable run in ``result.json`` and the log (outputs end at ``last_good_step``).

        ``frame_note`` is appended to the log line (e.g. the index of the last frame kept)."""
        self.result.update(status="unstable", failed_step=exc.step, failed_time_ps=exc.step * dt_ps, reason=exc.reason,
                           last_good_step=last_good_step, steps_done=last_good_step or 0, message=str(exc),
                           wall_seconds=self.wall_seconds())
        good = (last_good_step or 0) - step0
        if good > 0:
            self.result["speed_ns_per_day"] = good * dt_ps / 1000.0 / (self.result["wall_seconds"] / 86400.0)
        self.log(f"STOPPED: {exc}; trajectory kept up to step {last_good_step}{frame_note}")
        atomic_write_json(self.paths["result"], self.result)

    def finish(self, steps: int, step0: int, dt_ps: float) -> Dict[str, Any]:
        """Record a run that reached ``steps`` (from ``step0``) in ``result.json``; return it."""
        wall = self.wall_seconds()
        done = steps - step0
        self.result.update(status="ok", steps_done=steps, wall_seconds=wall,
                           speed_ns_per_day=(done * dt_ps / 1000.0) / (wall / 86400.0) if done > 0 and wall > 0 else None)
        self.log(f"finished {steps} steps ({steps * dt_ps:.3f} ps) in {wall:.1f} s")
        atomic_write_json(self.paths["result"], self.result)
        return self.result

