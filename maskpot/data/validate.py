"""Validation of raw arrays and ``Sample`` objects, with errors that say where and what.

Every error is a :class:`DataValidationError` (a ``ValueError``) whose message has the form::

    <source>: key '<key>': expected <what was expected>, found <what was found>

so that a user reading a traceback knows which file, which array and what to fix.

``check_cutoff`` / ``perpendicular_widths`` are pure numpy functions shared with the models and
the deploy adapters (a cutoff above half the shortest perpendicular cell width would make an atom
see two images of the same neighbour, which minimum-image neighbour lists silently miss).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional, Sequence, Union

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
    "validate_sample",
    "validate_samples",
]

#: Largest atomic number accepted (oganesson).
MAX_Z = 118

# Below this (Å) a periodic lattice vector / perpendicular width counts as degenerate.
_DEGENERATE_TOL = 1e-6

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


def validate_sample(
    sample: Any,
    source: Any = "<sample>",
    *,
    require_energy: bool = False,
    require_forces: bool = False,
    allowed_species: Optional[Iterable[int]] = None,
    cutoff: Optional[float] = None,
) -> None:
    """Validate one :class:`~maskpot.data.sample.Sample` (Å / eV / eV/Å).

    Checks shapes, finiteness, atomic numbers, the cell (if periodic), that forces are present
    when required (an energy-only frame when forces are required is an error), and, if
    ``cutoff`` is given, the cutoff against the cell width.
    """
    n = sample.numbers.shape[0]
    check_shape(sample.positions, (n, 3), "positions", source)
    check_finite(sample.positions, "positions", source)
    check_numbers(sample.numbers, "numbers", source, allowed_species)
    check_shape(sample.pbc, (3,), "pbc", source)
    check_cell(sample.cell, sample.pbc, source)
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
    for i, s in enumerate(samples):
        validate_sample(s, f"{source} [frame {s.info.get('frame', i)}]", **kwargs)


def frame_range_error(source: Any, key: str, n: int, index: Any) -> DataValidationError:
    """Uniform error for a frame selection outside ``0..n-1``."""
    return DataValidationError(source, key, f"expected frame indices in 0..{n - 1}, found {index!r}")

