"""Validation of raw arrays and ``Sample`` objects, with errors that say where and what.

Every error is a :class:`DataValidationError` (a ``ValueError``) whose message has the form::

    <source>: key '<key>': expected <what was expected>, found <what was found>

so that a user reading a traceback knows which file, which array and what to fix.

``check_cutoff`` / ``perpendicular_widths`` are pure numpy functions shared with the models and
the deploy adapters (a cutoff above half the shortest perpendicular cell width would make an atom
see two images of the same neighbour, which minimum-image neighbour lists silently miss).
"""

from __future__ import annotations

from typing import Any, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "DataValidationError",
    "MAX_Z",
    "require_key",
    "check_shape",
    "check_finite",
    "check_numbers",
    "check_cell",
    "perpendicular_widths",
    "check_cutoff",
    "check_box_cutoff",
    "validate_sample",
    "validate_samples",
    "MIN_DISTANCE",
    "close_pairs",
    "check_min_distance",
    "overlap_message",
    "DataPlausibilityWarning",
    "check_plausibility",
    "periodicity_of",
    "check_periodicity",
]

#: Largest atomic number accepted (oganesson).
MAX_Z = 118

# Below this (Å) a periodic lattice vector / perpendicular width counts as degenerate.
_DEGENERATE_TOL = 1e-6

#: Default closest allowed distance (Å) between two atoms of a frame: closer is an error at
#: load and in the engine adapters (two atoms on top of each other give NaN energies/forces).
MIN_DISTANCE = 0.1

# Rounding allowance (Å) of the cutoff check: a cutoff of exactly half the width passes even when
# the width comes out of the QR one ulp short (same allowance as maskpot.data.neighbors).
_CUTOFF_TOL = 1e-9

Shape = Sequence[Optional[int]]


class DataValidationError(ValueError):
    """Invalid input data; the message names the file, the key and what was expected/found."""

    def __init__(self, source: Any, key: str, message: str) -> None:
        self.source = str(source)
        self.key = key
        self.detail = message
        super().__init__(f"{source}: key '{key}': {message}")


def require_key(mapping: Mapping[str, Any] | Iterable[str], key: str, source: Any) -> None:
    """Raise if ``key`` is missing from ``mapping`` (a dict, an ``NpzFile`` or a list of names)."""
    keys = list(mapping.keys()) if hasattr(mapping, "keys") else list(mapping)
    if key not in keys:
        raise DataValidationError(source, key, f"expected this key to be present, found only {sorted(keys)}")


def _shape_str(shape: Shape) -> str:
    return "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"


def check_shape(array: np.ndarray, expected: Shape, key: str, source: Any) -> np.ndarray:
    """Check ``array.shape`` against ``expected`` (``None`` = any length); return the array."""
    array = np.asarray(array)
    ok = array.ndim == len(expected) and all(e is None or e == s for e, s in zip(expected, array.shape))
    if not ok:
        raise DataValidationError(source, key, f"expected shape {_shape_str(expected)}, found {array.shape}")
    return array


def check_finite(array: np.ndarray, key: str, source: Any) -> None:
    """Raise if a floating array has NaN or inf values (reports how many and the first index)."""
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.number):
        raise DataValidationError(source, key, f"expected numeric values, found dtype {array.dtype}")
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DataValidationError(
            source, key, f"expected finite values, found {int(bad.sum())} NaN/inf (first at index {first})"
        )


def check_numbers(
    numbers: np.ndarray, key: str, source: Any, allowed_species: Optional[Iterable[int]] = None
) -> None:
    """Atomic numbers must be integers in 1..118 and, if given, in ``allowed_species``."""
    numbers = np.asarray(numbers)
    if numbers.size and not np.issubdtype(numbers.dtype, np.integer):
        as_int = np.rint(numbers)
        if not np.all(np.isfinite(numbers)) or np.any(as_int != numbers):
            raise DataValidationError(source, key, f"expected integer atomic numbers, found dtype {numbers.dtype}")
    bad = (numbers < 1) | (numbers > MAX_Z)
    if bad.any():
        raise DataValidationError(
            source, key, f"expected atomic numbers in 1..{MAX_Z}, found unknown element(s) Z={sorted(set(numbers[bad].tolist()))}"
        )
    if allowed_species is not None:
        allowed = np.asarray(sorted(set(int(z) for z in allowed_species)), dtype=np.int64)
        unknown = ~np.isin(numbers, allowed)
        if unknown.any():
            raise DataValidationError(
                source,
                key,
                f"expected only species {allowed.tolist()}, found unknown element(s) "
                f"Z={sorted(set(np.asarray(numbers)[unknown].astype(int).tolist()))}",
            )


def perpendicular_widths(cell: np.ndarray, pbc: Optional[np.ndarray] = None) -> np.ndarray:
    """Perpendicular widths (Å) of a cell along each lattice direction; ``inf`` if not periodic.

    For a fully periodic cell, ``width_i = V / |a_j x a_k|`` (distance between the two faces
    spanned by the other two lattice vectors). In general (some directions open) it is the length
    of the component of ``a_i`` orthogonal to the span of the *other periodic* vectors, which
    reduces to the formula above in 3D. Triclinic cells are fine.

    Args:
        cell: [3, 3] lattice vectors as rows, Å.
        pbc: [3] periodic flags (default: all periodic).

    Returns:
        [3] widths in Å (``inf`` for non-periodic directions).
    """
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    pbc = np.ones(3, dtype=bool) if pbc is None else np.broadcast_to(np.asarray(pbc, dtype=bool).reshape(-1), (3,))
    widths = np.full(3, np.inf)
    for i in np.flatnonzero(pbc):
        others = cell[[j for j in np.flatnonzero(pbc) if j != i]]
        a = cell[i]
        if len(others):
            # Orthonormal basis of the other periodic vectors; remove a's component in it.
            q, _ = np.linalg.qr(others.T)
            a = a - q @ (q.T @ a)
        widths[i] = float(np.linalg.norm(a))
    return widths


def check_cell(cell: np.ndarray, pbc: np.ndarray, source: Any, key: str = "cell") -> None:
    """A periodic cell must be finite and non-degenerate along its periodic directions (Å)."""
    cell = np.asarray(cell)
    check_shape(cell, (3, 3), key, source)
    check_finite(cell, key, source)
    pbc = np.asarray(pbc, dtype=bool).reshape(-1)
    if not pbc.any():
        return
    widths = perpendicular_widths(cell, pbc)
    bad = np.flatnonzero(pbc & (widths < _DEGENERATE_TOL))
    if bad.size:
        raise DataValidationError(
            source,
            key,
            f"expected a non-degenerate cell along periodic direction(s) {bad.tolist()}, found perpendicular "
            f"width(s) {widths[bad].tolist()} Å for lattice {cell.tolist()}",
        )


def check_cutoff(
    cell: np.ndarray, pbc: Union[np.ndarray, Sequence[bool]], cutoff: float, source: Any = "<cell>", key: str = "cell"
) -> None:
    """Raise if ``cutoff`` (Å) exceeds half the shortest perpendicular width of a periodic cell.

    Pure numpy, no side effects: models and engine adapters call it on every new box.

    Args:
        cell: [3, 3] or [F, 3, 3] lattice vectors as rows, Å.
        pbc: [3] or [F, 3] periodic flags (broadcast over frames).
        cutoff: interaction cutoff, Å.
        source: file / frame / object name used in the error message.
        key: key named in the error message.
    """
    cells = np.asarray(cell, dtype=np.float64).reshape(-1, 3, 3)
    pbcs = np.broadcast_to(np.asarray(pbc, dtype=bool).reshape(-1, 3), (len(cells), 3))
    for f, (c, p) in enumerate(zip(cells, pbcs)):
        if not p.any():
            continue
        widths = perpendicular_widths(c, p)
        wmin = float(widths.min())
        if cutoff > 0.5 * wmin + _CUTOFF_TOL:
            where = f" (frame {f})" if len(cells) > 1 else ""
            raise DataValidationError(
                source,
                key,
                f"expected cutoff <= half the shortest perpendicular cell width{where}, found cutoff "
                f"{cutoff:g} Å > {0.5 * wmin:g} Å (widths {np.round(widths, 6).tolist()} Å); "
                f"use a larger cell or a smaller cutoff",
            )


def check_box_cutoff(cutoff: float, cell: np.ndarray, where: str) -> None:
    """ValueError when ``cutoff`` (Å) exceeds half the shortest perpendicular width of the fully
    periodic box ``cell`` ([3, 3], Å; a zero-volume box counts as width 0): the check the engine
    adapters (ASE calculator, OpenMM forces) run on every new box, ``where`` naming the caller.
    Data files get :func:`check_cutoff` (a :class:`DataValidationError`, any periodicity)."""
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    half = 0.5 * float(perpendicular_widths(cell).min()) if abs(np.linalg.det(cell)) > 0 else 0.0
    if cutoff > half + _CUTOFF_TOL:
        raise ValueError(
            f"{where}: model cutoff {cutoff:.4f} A is larger than half the shortest perpendicular width of the "
            f"periodic box ({half:.4f} A); use a larger box or a model with a smaller cutoff")


def validate_sample(
    sample: Any,
    source: Any = "<sample>",
    *,
    require_energy: bool = False,
    require_forces: bool = False,
    allowed_species: Optional[Iterable[int]] = None,
    cutoff: Optional[float] = None,
    min_distance: Optional[float] = MIN_DISTANCE,
) -> None:
    """Validate one :class:`~maskpot.data.sample.Sample` (Å / eV / eV/Å).

    Checks shapes, finiteness, atomic numbers, the cell (if periodic), that no two atoms are
    closer than ``min_distance`` Å (None/0: no check), that forces are present
    when required (an energy-only frame when forces are required is an error), and, if
    ``cutoff`` is given, the cutoff against the cell width.
    """
    n = sample.numbers.shape[0]
    check_shape(sample.positions, (n, 3), "positions", source)
    check_finite(sample.positions, "positions", source)
    check_numbers(sample.numbers, "numbers", source, allowed_species)
    check_shape(sample.pbc, (3,), "pbc", source)
    check_cell(sample.cell, sample.pbc, source)
    if min_distance:
        periodic = bool(np.all(sample.pbc))
        if periodic and 2 * min_distance >= perpendicular_widths(sample.cell).min():
            raise DataValidationError(source, "cell", f"expected a cell wider than twice the minimum "
                                      f"interatomic distance {min_distance:g} Å, found widths "
                                      f"{perpendicular_widths(sample.cell).tolist()} Å")
        check_min_distance(sample.positions, sample.cell, periodic, source, min_distance, sample.numbers)
    if sample.energy is not None:
        check_finite(np.asarray(sample.energy), "energy", source)
    elif require_energy:
        raise DataValidationError(source, "energy", "expected an energy label (eV), found none")
    if sample.forces is not None:
        check_shape(sample.forces, (n, 3), "forces", source)
        check_finite(sample.forces, "forces", source)
    elif require_forces:
        what = "an energy but no forces" if sample.energy is not None else "no forces"
        raise DataValidationError(source, "forces", f"expected forces (eV/Å) because forces are required, found {what}")
    if sample.molecule is not None:
        check_shape(sample.molecule, (n,), "molecule", source)
        if n and sample.molecule.min() < 0:
            raise DataValidationError(source, "molecule", f"expected indices >= 0, found {int(sample.molecule.min())}")
    if cutoff is not None:
        check_cutoff(sample.cell, sample.pbc, cutoff, source)


def validate_samples(
    samples: Sequence[Any],
    source: Any = "<samples>",
    **kwargs: Any,
) -> None:
    """Validate every sample; messages name ``source`` and the frame index. See :func:`validate_sample`."""
    if len(samples) == 0:
        raise DataValidationError(source, "frames", "expected at least one frame, found none")
    min_distance = kwargs.pop("min_distance", MIN_DISTANCE)
    for i, s in enumerate(samples):
        validate_sample(s, f"{source} [frame {s.info.get('frame', i)}]", min_distance=None, **kwargs)
    if min_distance:
        check_min_distance_frames(samples, source, min_distance)


def check_min_distance_frames(samples: Sequence[Any], source: Any, min_distance: float = MIN_DISTANCE,
                              chunk_atoms: int = 2_000_000) -> None:
    """Overlapping atoms in any frame: :class:`DataValidationError` naming the file, the first such
    frame and the atoms. Frames of equal size and periodicity are checked together (vectorised)."""
    h = float(min_distance)
    groups: dict = {}
    for k, s in enumerate(samples):
        periodic = bool(np.all(s.pbc))
        if periodic and 2 * h >= perpendicular_widths(s.cell).min():
            raise DataValidationError(
                f"{source} [frame {s.info.get('frame', k)}]", "cell", f"expected a cell wider than twice the minimum "
                f"interatomic distance {h:g} Å, found widths {perpendicular_widths(s.cell).tolist()} Å")
        groups.setdefault((s.n_atoms, periodic), []).append(k)
    first = None
    for (n, periodic), idx in groups.items():
        step = max(1, chunk_atoms // max(n, 1))
        for c in range(0, len(idx), step):
            part = idx[c : c + step]
            pos = np.stack([samples[k].positions for k in part])
            cells = np.stack([samples[k].cell for k in part])
            frame, i, j, d = _close_pairs_frames(pos, cells, periodic, h)
            if frame.size:
                k = part[int(frame.min())]
                if first is None or k < first[0]:
                    sel = frame == frame.min()
                    first = (k, i[sel], j[sel], d[sel])
                break
    if first is not None:
        k, i, j, d = first
        s = samples[k]
        raise DataValidationError(
            f"{source} [frame {s.info.get('frame', k)}]", "positions",
            f"expected interatomic distances >= {h:g} Å, found " + overlap_message(i, j, d, h, s.numbers),
        )


def frame_range_error(source: Any, key: str, n: int, index: Any) -> DataValidationError:
    """Uniform error for a frame selection outside ``0..n-1``."""
    return DataValidationError(source, key, f"expected frame indices in 0..{n - 1}, found {index!r}")



# --------------------------------------------------------------------------------------------
# overlapping atoms
# --------------------------------------------------------------------------------------------

# The 13 "forward" bin offsets of the 26 neighbours (the other 13 are their negatives).
_HALF_OFFSETS = np.array(
    [o for o in np.ndindex(3, 3, 3) if tuple(np.array(o) - 1) > (0, 0, 0)], dtype=np.int64
) - 1


def _close_pairs_frames(
    pos: np.ndarray, cells: np.ndarray, periodic: bool, h: float
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pairs closer than ``h`` in F frames of N atoms at once: ``(frame, i, j, d)``, i < j.

    Spatial hashing: atoms are binned into cells of side >= ``h`` (fractional coordinates when
    periodic, Cartesian otherwise) and the frame index is part of the bin key, so one sort and 14
    ``np.searchsorted`` calls handle every frame; pairs are only formed between atoms of the same
    or adjacent bins (with a small ``h`` nearly every bin holds one atom).
    """
    F, n = pos.shape[:2]
    if n < 2 or F == 0:
        z = np.zeros(0, np.int64)
        return z, z, z, np.zeros(0)
    if periodic:
        inv = np.linalg.inv(cells)
        frac = np.einsum("fnk,fkl->fnl", pos, inv)
        frac -= np.floor(frac)
        widths = np.stack([perpendicular_widths(c) for c in cells]).min(axis=0)
        nbins = np.maximum(np.floor(widths / h), 1).astype(np.int64)
        coords = np.minimum(np.floor(frac * nbins).astype(np.int64), nbins - 1)
    else:
        rel = pos - pos.min(axis=1, keepdims=True)
        extent = float(rel.max()) if rel.size else 0.0
        size = max(h, extent / 2000.0)  # bins >= h stay exact; the cap keeps keys in int64
        coords = np.floor(rel / size).astype(np.int64) + 1
        nbins = coords.reshape(-1, 3).max(axis=0) + 2  # room for the -1 / +1 neighbours
    per_frame = int(np.prod(nbins))
    strides = np.array([nbins[1] * nbins[2], nbins[2], 1], dtype=np.int64)
    coords = coords.reshape(-1, 3)
    frame_key = np.repeat(np.arange(F, dtype=np.int64) * per_frame, n)
    keys = frame_key + coords @ strides
    order = np.argsort(keys, kind="stable")
    # Queries in sorted order make the binary searches cache-friendly (about 5x faster).
    coords, frame_key = coords[order], frame_key[order]
    uniq, start, count = np.unique(keys[order], return_index=True, return_counts=True)

    ii, jj = [], []
    for off in np.concatenate([np.zeros((1, 3), np.int64), _HALF_OFFSETS]):
        nb = coords + off
        if periodic:
            nb = np.mod(nb, nbins)
        nkeys = frame_key + nb @ strides
        slot = np.minimum(np.searchsorted(uniq, nkeys), len(uniq) - 1)
        c = np.where(uniq[slot] == nkeys, count[slot], 0)
        hit = np.flatnonzero(c > (1 if not off.any() else 0))
        if hit.size:
            c = c[hit]
            k = np.arange(c.sum()) - np.repeat(np.cumsum(c) - c, c)
            ii.append(order[np.repeat(hit, c)])
            jj.append(order[np.repeat(start[slot[hit]], c) + k])
    if not ii:
        z = np.zeros(0, np.int64)
        return z, z, z, np.zeros(0)
    a, b = np.concatenate(ii), np.concatenate(jj)  # global atom indices (frame * n + local)
    keep = a != b
    a, b = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
    if a.size:
        ab = np.unique(np.stack([a, b], 1), axis=0)
        a, b = ab[:, 0], ab[:, 1]
    flat = pos.reshape(-1, 3)
    vec = flat[b] - flat[a]
    frame = a // n
    if periodic and a.size:
        f = np.einsum("ek,ekl->el", vec, inv[frame])
        vec = np.einsum("ek,ekl->el", f - np.round(f), cells[frame])
    d = np.linalg.norm(vec, axis=1)
    close = d < h
    return frame[close], (a % n)[close], (b % n)[close], d[close]


def close_pairs(
    positions: np.ndarray, cell: Optional[np.ndarray] = None, pbc: Any = None, threshold: float = MIN_DISTANCE
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Atom pairs closer than ``threshold`` (Å), minimum image: ``(i, j, distance)`` with i < j.

    Vectorised spatial hashing (O(N log N), a few ms for thousands of atoms). Periodic means all
    three directions (``pbc`` all True); ``threshold`` must be below half the shortest
    perpendicular cell width.
    """
    pos = np.asarray(positions, dtype=np.float64).reshape(1, -1, 3)
    if not threshold or threshold <= 0:
        z = np.zeros(0, np.int64)
        return z, z, np.zeros(0)
    cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64).reshape(3, 3)
    periodic = bool(np.all(pbc)) if pbc is not None else False
    _, i, j, d = _close_pairs_frames(pos, cell[None], periodic, float(threshold))
    return i, j, d


def overlap_message(i: np.ndarray, j: np.ndarray, d: np.ndarray, threshold: float,
                    numbers: Optional[np.ndarray] = None, limit: int = 5) -> str:
    """``"atoms 3 (H) and 7 (O) are 0.000 Å apart, ..."`` for the closest ``limit`` pairs."""
    from ase.data import chemical_symbols

    order = np.argsort(d)[:limit]

    def name(a: int) -> str:
        if numbers is None:
            return str(a)
        z = int(np.asarray(numbers)[a])
        return f"{a} ({chemical_symbols[z] if 0 < z < len(chemical_symbols) else z})"

    parts = [f"atoms {name(int(i[k]))} and {name(int(j[k]))} are {float(d[k]):.3f} Å apart" for k in order]
    more = f" (and {len(d) - len(order)} more pair(s))" if len(d) > len(order) else ""
    return f"{'; '.join(parts)}{more}: closer than the minimum distance {threshold:g} Å (overlapping atoms)"


def check_min_distance(
    positions: np.ndarray,
    cell: Optional[np.ndarray],
    pbc: Any,
    source: Any,
    min_distance: Optional[float] = MIN_DISTANCE,
    numbers: Optional[np.ndarray] = None,
    key: str = "positions",
) -> None:
    """Raise :class:`DataValidationError` naming the atoms when two are closer than ``min_distance`` Å.

    ``None`` or 0 skips the check.
    """
    if not min_distance:
        return
    i, j, d = close_pairs(positions, cell, pbc, float(min_distance))
    if len(d):
        raise DataValidationError(
            source, key, f"expected interatomic distances >= {min_distance:g} Å, found "
            + overlap_message(i, j, d, float(min_distance), numbers)
        )


# --------------------------------------------------------------------------------------------
# plausibility of labels (wrong units)
# --------------------------------------------------------------------------------------------


class DataPlausibilityWarning(UserWarning):
    """Labels that are valid numbers but implausible (usually wrong units)."""


#: Force RMS (eV/Å) above which labels are implausible for atomistic data. rMD17 in eV/Å is
#: about 1.2 eV/Å; the same numbers read as kcal/mol/Å -> eV/Å would be 28.9.
MAX_FORCE_RMS = 10.0
#: Spread (std over frames) of the per-atom energy after E0 removal, eV/atom.
MAX_ENERGY_SPREAD = 2.0
#: Margin on the Thomas-Fermi estimate of a free atom's total (all-electron) energy.
_E0_MARGIN = 1.5


def atomic_energy_bound(numbers: np.ndarray) -> float:
    """Upper bound (eV) on |total energy| of a frame: margin × Σ Thomas-Fermi atomic energies.

    Thomas-Fermi ``0.7687 Z^(7/3)`` Hartree overestimates all-electron atomic energies (C: 50
    vs 37.8 Ha), so even all-electron totals stay below it; pseudopotential totals are far below.
    """
    from ase import units

    z = np.asarray(numbers, dtype=np.float64)
    return float(_E0_MARGIN * 0.7687 * np.sum(np.maximum(z, 1.0) ** (7.0 / 3.0)) * units.Hartree)


def check_plausibility(
    samples: Sequence[Any],
    source: Any = "<samples>",
    strict: bool = False,
    max_force_rms: float = MAX_FORCE_RMS,
    max_energy_spread: float = MAX_ENERGY_SPREAD,
) -> List[str]:
    """Warn (``strict``: raise) when labels look like the wrong units. Returns the problems found.

    Checks, in eV / eV/Å after the readers' conversion:

    * force RMS over all components <= ``max_force_rms`` (10 eV/Å);
    * |frame energy| <= Σ_atoms (1.5 × Thomas-Fermi energy of a free atom) — catches energies
      in kcal/mol or kJ/mol read as eV (rMD17 aspirin: -406,000 "eV" against a bound of ~35,000);
    * when the composition matrix has full rank, the same bound on each fitted E0[Z];
    * the spread (std over frames) of the per-atom energy after E0 removal
      <= ``max_energy_spread`` (2 eV/atom).
    """
    import warnings

    from maskpot.data import stats

    problems: List[Tuple[str, str]] = []
    hint = ("the file's units are probably wrong (kcal/mol or kJ/mol read as eV?): check its 'units' "
            "key or pass the units explicitly (read_dataset(..., units='angstrom,kcal/mol'), "
            "config key data.units)")
    with_f = [s for s in samples if s.forces is not None]
    if with_f:
        rms = stats.force_rms(with_f)
        if rms > max_force_rms:
            problems.append(("forces", f"expected a force RMS <= {max_force_rms:g} eV/Å, found {rms:.4g} eV/Å"))
    with_e = [s for s in samples if s.energy is not None]
    if with_e:
        ratio = np.array([abs(s.energy) / atomic_energy_bound(s.numbers) for s in with_e])
        k = int(np.argmax(ratio))
        if ratio[k] > 1.0:
            s = with_e[k]
            problems.append((
                "energy",
                f"expected |energy| <= {atomic_energy_bound(s.numbers):.6g} eV for frame "
                f"{s.info.get('frame', k)} ({s.n_atoms} atoms; the sum of free-atom total energies), "
                f"found {s.energy:.6g} eV ({ratio[k]:.3g} x the bound)",
            ))
        sp = sorted({int(z) for s in with_e for z in np.unique(s.numbers)})
        A = stats.composition_matrix(with_e, sp)
        if len(with_e) > 1:
            e0 = stats.fit_species_energies(with_e, sp)
            full_rank = np.linalg.matrix_rank(A) == len(sp)
            if full_rank:
                bad = [z for z in sp if abs(e0[z]) > atomic_energy_bound(np.array([z]))]
                if bad:
                    problems.append((
                        "energy", f"expected per-species reference energies |E0[Z]| within free-atom totals, "
                        f"found E0 = {', '.join(f'Z={z}: {e0[z]:.6g} eV' for z in bad)}",
                    ))
            _, spread = stats.energy_per_atom_stats(with_e, e0)
            if spread > max_energy_spread:
                problems.append((
                    "energy", f"expected a spread of the per-atom energy (after E0 removal) <= "
                    f"{max_energy_spread:g} eV/atom, found {spread:.4g} eV/atom",
                ))
    if problems and strict:
        key, text = problems[0]
        raise DataValidationError(source, key, f"{text}; {hint} (strict plausibility checks are on)")
    for key, text in problems:
        warnings.warn(f"{source}: key '{key}': implausible labels: {text}; {hint}", DataPlausibilityWarning,
                      stacklevel=2)
    return [f"{key}: {text}" for key, text in problems]


# --------------------------------------------------------------------------------------------
# periodicity of training data vs use
# --------------------------------------------------------------------------------------------


def periodicity_of(samples: Sequence[Any]) -> str:
    """``"periodic"`` (every frame fully periodic), ``"open"`` (none) or ``"mixed"``."""
    flags = {bool(np.all(s.pbc)) for s in samples}
    if flags == {True}:
        return "periodic"
    if flags == {False}:
        return "open"
    return "mixed"


def check_periodicity(trained: Optional[str], used: Union[bool, str], where: str, allow: bool = False) -> None:
    """Compare a model's training periodicity with how it is being used.

    A model trained on periodic frames evaluated without periodic boundaries sees surfaces it
    never saw (water: energies several eV off): ``ValueError`` unless ``allow`` (then a warning).
    A model trained on open (gas-phase) frames used in a periodic cell: a warning (legitimate for
    a molecule in a large box or an ML/MM region, wrong for condensed phases). Unknown or mixed
    training periodicity: no check.
    """
    import warnings

    if trained not in ("periodic", "open"):
        return
    used_s = used if isinstance(used, str) else ("periodic" if used else "open")
    if used_s == trained:
        return
    msg = (f"{where}: the model was trained on {trained} frames but is used on {used_s} ones; "
           f"its energies and forces are not meaningful there")
    if trained == "periodic" and not allow:
        raise ValueError(msg + " (pass allow_periodicity_mismatch=True / --allow-periodicity-mismatch to "
                               "evaluate anyway)")
    warnings.warn(msg, UserWarning, stacklevel=3)
