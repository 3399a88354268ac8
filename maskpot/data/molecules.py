"""Molecule index assignment (for molecule-level masking and analysis).

Only water is handled: each H is assigned to its nearest O under the minimum-image convention.
"""

from __future__ import annotations

import numpy as np

from maskpot.data.sample import Sample
from maskpot.data.validate import DataValidationError

__all__ = ["minimum_image", "assign_water_molecules"]

# Rows of H processed at once: bounds the [chunk, n_O, 3] displacement array (~ 50 MB at 10k O).
_CHUNK = 2048


def minimum_image(vectors: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """Wrap displacement vectors (Å, [..., 3]) to the minimum image through fractional coordinates.

    Rounding fractional components is exact for vectors shorter than half the shortest
    perpendicular cell width (then every fractional component is below 1/2 in magnitude), which
    is all that bonded-neighbour searches need; it works for triclinic cells. Open directions
    are left untouched.
    """
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    if not pbc.any():
        return vectors
    cell = _full_rank_cell(np.asarray(cell, dtype=np.float64), pbc)
    frac = vectors @ np.linalg.inv(cell)
    frac = frac - np.where(pbc, np.round(frac), 0.0)
    return frac @ cell


def _full_rank_cell(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """Replace open-direction lattice rows by unit vectors orthogonal to the others if the cell
    is singular (e.g. zeros along a non-periodic direction), so fractional coordinates exist."""
    if abs(np.linalg.det(cell)) > 1e-12:
        return cell
    out = cell.copy()
    basis = [cell[i] for i in np.flatnonzero(pbc)]
    for i in np.flatnonzero(~pbc):
        v = np.linalg.svd(np.array(basis))[2][-1] if basis else np.eye(3)[i]
        out[i] = v
        basis.append(v)
    return out


def assign_water_molecules(sample: Sample, max_oh: float = 1.3, source: str | None = None) -> Sample:
    """Return a copy of ``sample`` with ``molecule`` set: one index per O, each H on its nearest O.

    Molecule ``k`` is the k-th O atom in atom order. Periodic boundaries use the minimum image, so
    molecules split across the box are found.

    Args:
        sample: a frame containing only O and H (Å).
        max_oh: largest accepted O-H distance, Å.
        source: name for error messages (defaults to ``sample.info["source"]`` and frame).

    Raises:
        DataValidationError: other elements present, an O without exactly 2 H, or an O-H
            distance above ``max_oh``.
    """
    src = source or f"{sample.info.get('source', '<sample>')} [frame {sample.info.get('frame', '?')}]"
    z = sample.numbers
    other = ~np.isin(z, (1, 8))
    if other.any():
        raise DataValidationError(
            src, "numbers", f"expected only O (8) and H (1) for water, found Z={sorted(set(z[other].tolist()))}"
        )
    o_idx, h_idx = np.flatnonzero(z == 8), np.flatnonzero(z == 1)
    if len(o_idx) == 0 or len(h_idx) != 2 * len(o_idx):
        raise DataValidationError(src, "numbers", f"expected 2 H per O, found {len(o_idx)} O and {len(h_idx)} H")
    pos_o = sample.positions[o_idx]
    nearest = np.empty(len(h_idx), dtype=np.int64)
    dist = np.empty(len(h_idx))
    for start in range(0, len(h_idx), _CHUNK):
        d = sample.positions[h_idx[start : start + _CHUNK], None, :] - pos_o[None, :, :]
        d = minimum_image(d, sample.cell, sample.pbc)
        r2 = np.einsum("hoi,hoi->ho", d, d)
        k = np.argmin(r2, axis=1)
        nearest[start : start + _CHUNK] = k
        dist[start : start + _CHUNK] = np.sqrt(r2[np.arange(len(k)), k])
    far = dist > max_oh
    if far.any():
        h = int(np.argmax(dist))
        raise DataValidationError(
            src,
            "positions",
            f"expected every H within {max_oh} Å of an O, found {int(far.sum())} H beyond it "
            f"(atom {int(h_idx[h])} is {dist[h]:.3f} Å from O atom {int(o_idx[nearest[h]])})",
        )
    count = np.bincount(nearest, minlength=len(o_idx))
    bad = np.flatnonzero(count != 2)
    if bad.size:
        raise DataValidationError(
            src,
            "positions",
            f"expected exactly 2 H per O, found {count[bad].tolist()} H on O atom(s) {o_idx[bad].tolist()}",
        )
    molecule = np.empty(len(z), dtype=np.int64)
    molecule[o_idx] = np.arange(len(o_idx))
    molecule[h_idx] = nearest
    return sample.copy(molecule=molecule)
