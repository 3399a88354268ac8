"""Stability guard for MD with learned potentials (used by the OpenMM and ASE runners).

A learned potential can send a simulation into regions it never saw in training: atoms fuse,
bonds break, the temperature runs away, or numbers become NaN. :class:`StabilityGuard` checks a
configuration (every ``check_every`` steps, chosen by the runner) and raises
:class:`MDInstabilityError` with the step and a readable reason as soon as one of these holds:

* non-finite potential energy, positions or temperature;
* two atoms closer than ``min_distance`` (default 0.5 Å) — a vectorised, periodic-aware
  neighbour search (``ase.neighborlist.primitive_neighbor_list``, minimum image, triclinic cells);
* a bond of the reference topology longer than its limit: ``max(max_bond, bond_stretch *
  reference length)`` (defaults 1.5 Å and 1.5; for water this is O–H > 1.5 Å);
* the temperature above ``temperature_factor`` × the target (default 3 ×).

Runners check a frame *before* writing it, so trajectory files end with the last good frame.

All lengths Å, energies eV, temperatures K.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

__all__ = ["MDInstabilityError", "StabilityGuard", "GuardSettings", "min_pair_distance", "bond_lengths",
           "model_failure_reason"]


class MDInstabilityError(RuntimeError):
    """The simulation became unstable at ``step`` for ``reason`` (a sentence)."""

    def __init__(self, step: int, reason: str, time_ps: Optional[float] = None):
        self.step = int(step)
        self.reason = str(reason)
        self.time_ps = time_ps
        when = f"step {self.step}" + (f" (t = {time_ps:.4f} ps)" if time_ps is not None else "")
        super().__init__(f"MD unstable at {when}: {self.reason}")


#: Prefixes of the errors the engine adapters raise when the *model* fails (atoms on top of each
#: other, non-finite energy or forces): inside an MD run these mean the simulation blew up.
MODEL_FAILURE_PREFIXES = ("maskpot PythonForce", "maskpot TorchForce", "MaskpotCalculator")


def model_failure_reason(exc: BaseException) -> Optional[str]:
    """The reason, when ``exc`` (possibly wrapped by OpenMM or ASE) is a model failure raised by a
    maskpot engine adapter; ``None`` for any other error."""
    text = str(exc)
    for prefix in MODEL_FAILURE_PREFIXES:
        if prefix in text:
            return text[text.index(prefix):].splitlines()[0].strip()
    return None


@dataclass
class GuardSettings:
    """Thresholds of the stability guard (Å, K factors). ``None`` disables a check explicitly.

    Nonsense is refused with a ``ValueError`` when the settings are made: 0, negative or
    non-finite limits (0 used to switch a check off without a word, and a run went on to
    "finish" at 7e7 K), a temperature factor <= 1 (the thermostat's own fluctuations would stop
    the run), a bond stretch < 1, ``min_distance >= max_bond`` and ``check_every < 1``.
    """

    min_distance: Optional[float] = 0.5
    max_bond: Optional[float] = 1.5
    bond_stretch: float = 1.5
    temperature_factor: Optional[float] = 3.0
    check_every: int = 10

    def __post_init__(self) -> None:
        off = "to switch the check off, pass None explicitly ('off' on the command line)"
        for name, unit in (("min_distance", " Å"), ("max_bond", " Å"), ("temperature_factor", "")):
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise ValueError(f"stability guard: {name} must be a number or None, got {v!r}")
            if not math.isfinite(float(v)) or float(v) <= 0:
                raise ValueError(f"stability guard: {name} = {v}{unit} is not a usable limit (expected a finite "
                                 f"number > 0); {off}")
        if self.temperature_factor is not None and self.temperature_factor <= 1.0:
            raise ValueError(f"stability guard: temperature_factor = {self.temperature_factor} would stop a run at or "
                             "below its target temperature; expected a factor > 1 (default 3)")
        b = self.bond_stretch
        if isinstance(b, bool) or not isinstance(b, (int, float, np.integer, np.floating)) or not (
                math.isfinite(float(b)) and float(b) >= 1.0):
            raise ValueError(f"stability guard: bond_stretch = {b!r} must be a finite factor >= 1 (default 1.5)")
        if self.min_distance is not None and self.max_bond is not None and self.min_distance >= self.max_bond:
            raise ValueError(f"stability guard: min_distance = {self.min_distance} Å must be below max_bond = "
                             f"{self.max_bond} Å (every bond would trip one of the two checks)")
        c = self.check_every
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 1:
            raise ValueError(f"stability guard: check_every must be an integer >= 1, got {c!r}")

    def disabled(self) -> list:
        """Names of the checks switched off (None)."""
        return [n for n in ("min_distance", "max_bond", "temperature_factor") if getattr(self, n) is None]


def _cell_pbc(cell: Optional[np.ndarray], pbc) -> tuple:
    if cell is None:
        return np.zeros((3, 3)), np.zeros(3, dtype=bool)
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    pbc = np.asarray(pbc if pbc is not None else np.abs(cell).sum(1) > 0, dtype=bool).reshape(-1)
    if pbc.size == 1:
        pbc = np.repeat(pbc, 3)
    return cell, pbc


def min_pair_distance(positions: np.ndarray, cell: Optional[np.ndarray] = None, pbc=None,
                      cutoff: float = 0.5):
    """Closest pair closer than ``cutoff`` Å (minimum image), as ``(distance, i, j)``; None if none.

    Uses ASE's vectorised cell-list neighbour search, so it scales linearly with the atom count
    and handles triclinic cells and atoms outside the cell.
    """
    from ase.neighborlist import primitive_neighbor_list

    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    cell, pbc = _cell_pbc(cell, pbc)
    if len(positions) < 2:
        return None
    if not pbc.any():
        cell = np.zeros((3, 3))
    i, j, d = primitive_neighbor_list("ijd", pbc, cell, positions, float(cutoff), self_interaction=False)
    if len(d) == 0:
        return None
    k = int(np.argmin(d))
    return float(d[k]), int(i[k]), int(j[k])


def bond_lengths(positions: np.ndarray, bonds: np.ndarray, cell: Optional[np.ndarray] = None, pbc=None) -> np.ndarray:
    """Lengths (Å) of ``bonds`` [B, 2] under the minimum-image convention."""
    from maskpot.data.molecules import minimum_image

    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    cell, pbc = _cell_pbc(cell, pbc)
    vec = positions[bonds[:, 1]] - positions[bonds[:, 0]]
    if pbc.any():
        vec = minimum_image(vec, cell, pbc)
    return np.linalg.norm(vec, axis=1)


class StabilityGuard:
    """Checks configurations and raises :class:`MDInstabilityError` at the first problem.

    Args:
        bonds: [B, 2] atom pairs that must stay bonded (e.g. O–H of each water), or None.
        reference_positions: positions (Å) giving the reference bond lengths (default: the
            bond check uses ``max_bond`` alone).
        target_temperature: thermostat (or initial) temperature, K; None disables the check.
        settings: thresholds, see :class:`GuardSettings`.
        symbols: element symbols per atom, only used to name atoms in messages.
    """

    def __init__(
        self,
        bonds: Optional[np.ndarray] = None,
        reference_positions: Optional[np.ndarray] = None,
        target_temperature: Optional[float] = None,
        settings: Optional[GuardSettings] = None,
        symbols: Optional[Sequence[str]] = None,
        cell: Optional[np.ndarray] = None,
        pbc=None,
    ):
        self.settings = settings or GuardSettings()
        off = self.settings.disabled()
        if off:
            import warnings

            warnings.warn(f"stability guard: check(s) {off} switched off; only non-finite values stop the run",
                          stacklevel=2)
        self.bonds = None if bonds is None or len(bonds) == 0 else np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
        self.target_temperature = target_temperature
        self.symbols = list(symbols) if symbols is not None else None
        self.bond_limits: Optional[np.ndarray] = None
        s = self.settings
        if self.bonds is not None and s.max_bond:
            limits = np.full(len(self.bonds), float(s.max_bond))
            if reference_positions is not None and s.bond_stretch:
                ref = bond_lengths(reference_positions, self.bonds, cell, pbc)
                limits = np.maximum(limits, s.bond_stretch * ref)
            self.bond_limits = limits

    def _name(self, i: int) -> str:
        return f"{self.symbols[i]}{i}" if self.symbols is not None else f"atom {i}"

    def problem(self, positions: np.ndarray, cell: Optional[np.ndarray] = None, pbc=None,
                energy: Optional[float] = None, temperature: Optional[float] = None) -> Optional[str]:
        """The reason the configuration is unacceptable, or None when it passes every check."""
        s = self.settings
        if energy is not None and not math.isfinite(float(energy)):
            return f"non-finite potential energy ({energy})"
        positions = np.asarray(positions, dtype=np.float64)
        if not np.isfinite(positions).all():
            bad = np.flatnonzero(~np.isfinite(positions).all(axis=1))
            return f"non-finite positions for {len(bad)} atom(s) (first: {self._name(int(bad[0]))})"
        if temperature is not None and not math.isfinite(float(temperature)):
            return f"non-finite temperature ({temperature})"
        if s.min_distance:
            close = min_pair_distance(positions, cell, pbc, s.min_distance)
            if close is not None:
                d, i, j = close
                return (f"atoms {self._name(i)} and {self._name(j)} are {d:.3f} Å apart "
                        f"(closer than min_distance = {s.min_distance} Å)")
        if self.bond_limits is not None:
            lengths = bond_lengths(positions, self.bonds, cell, pbc)
            over = lengths > self.bond_limits
            if over.any():
                k = int(np.argmax(np.where(over, lengths - self.bond_limits, -np.inf)))
                i, j = self.bonds[k]
                return (f"bond {self._name(int(i))}-{self._name(int(j))} stretched to {lengths[k]:.3f} Å "
                        f"(limit {self.bond_limits[k]:.3f} Å; {int(over.sum())} bond(s) over the limit)")
        if (s.temperature_factor and self.target_temperature and temperature is not None
                and temperature > s.temperature_factor * self.target_temperature):
            return (f"temperature runaway: T = {temperature:.1f} K > {s.temperature_factor} x "
                    f"target {self.target_temperature:.1f} K")
        return None

    def check(self, step: int, positions: np.ndarray, cell: Optional[np.ndarray] = None, pbc=None,
              energy: Optional[float] = None, temperature: Optional[float] = None,
              time_ps: Optional[float] = None) -> None:
        """Raise :class:`MDInstabilityError` if :meth:`problem` finds one."""
        reason = self.problem(positions, cell, pbc, energy, temperature)
        if reason is not None:
            raise MDInstabilityError(step, reason, time_ps)


def topology_bonds(topology) -> np.ndarray:
    """[B, 2] bonded atom indices of an OpenMM ``Topology`` (empty when it has no bonds)."""
    pairs = [(b[0].index, b[1].index) for b in topology.bonds()]
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def water_bonds(numbers: np.ndarray) -> Optional[np.ndarray]:
    """O–H bonds for atoms ordered O, H, H per molecule; None if the order is not that."""
    numbers = np.asarray(numbers).reshape(-1)
    if len(numbers) == 0 or len(numbers) % 3 or not (
        (numbers[0::3] == 8).all() and (numbers[1::3] == 1).all() and (numbers[2::3] == 1).all()
    ):
        return None
    o = np.arange(0, len(numbers), 3)
    return np.concatenate([np.stack([o, o + 1], 1), np.stack([o, o + 2], 1)])


def covalent_bonds(numbers: np.ndarray, positions: np.ndarray, cell=None, pbc=None, mult: float = 1.2) -> np.ndarray:
    """Bonds detected from covalent radii (ASE ``natural_cutoffs`` × ``mult``) in a reference frame."""
    from ase.data import covalent_radii
    from ase.neighborlist import primitive_neighbor_list

    numbers = np.asarray(numbers).reshape(-1)
    cell, pbc = _cell_pbc(cell, pbc)
    radii = covalent_radii[numbers] * mult
    i, j = primitive_neighbor_list("ij", pbc, cell if pbc.any() else np.zeros((3, 3)),
                                   np.asarray(positions, dtype=np.float64), radii, self_interaction=False)
    keep = i < j
    return np.stack([i[keep], j[keep]], 1).astype(np.int64)
