"""Dataset statistics used to set up a model: per-species reference energies (E0), energy
per-atom mean/std after E0 removal, force RMS and the mean number of neighbours."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from maskpot.data.sample import Sample
from maskpot.data.validate import DataValidationError

__all__ = [
    "composition_matrix",
    "fit_species_energies",
    "fit_species_offsets",
    "energy_per_atom_stats",
    "force_rms",
    "mean_num_neighbors",
    "DatasetStatistics",
    "compute_statistics",
]

log = logging.getLogger(__name__)


def _species(samples: Sequence[Sample], species: Optional[Sequence[int]]) -> np.ndarray:
    if species is None:
        return np.unique(np.concatenate([s.numbers for s in samples]))
    return np.asarray(sorted(set(int(z) for z in species)), dtype=np.int64)


def composition_matrix(samples: Sequence[Sample], species: Sequence[int]) -> np.ndarray:
    """[F, S] count of each species (sorted ``species``) in each frame; errors on unknown Z."""
    sp = np.asarray(sorted(set(int(z) for z in species)), dtype=np.int64)
    out = np.zeros((len(samples), len(sp)))
    for f, s in enumerate(samples):
        pos = np.searchsorted(sp, s.numbers)
        ok = (pos < len(sp)) & (sp[np.minimum(pos, len(sp) - 1)] == s.numbers)
        if not ok.all():
            raise DataValidationError(
                s.info.get("source", f"<sample {f}>"),
                "numbers",
                f"expected only species {sp.tolist()}, found Z={sorted(set(s.numbers[~ok].tolist()))}",
            )
        out[f] = np.bincount(pos, minlength=len(sp))
    return out


def fit_species_energies(
    samples: Sequence[Sample], species: Optional[Sequence[int]] = None, ridge: float = 1e-12
) -> Dict[int, float]:
    """Per-species reference energies E0 (eV) with ``E_frame ≈ Σ_atoms E0[Z]``, by least squares.

    Solves ``min |A x - E|² + λ |x|²`` (``A`` = composition matrix) through ``np.linalg.lstsq`` on
    the ridge-augmented system, with ``λ = ridge · mean(diag AᵀA)``: the tiny ridge keeps nearly
    collinear compositions stable without visibly biasing well-determined fits.

    Rank-deficient data (e.g. rMD17 or a box of water of one size: a single composition) cannot
    separate the species. Then the result is (up to the tiny ridge) the *minimum-norm* solution:
    the composition-weighted sum reproduces the mean energy, but the per-species values are not
    physical atomic energies. That is fine for removing the mean energy; a warning is logged.
    Species listed but absent from the data get 0.

    Args:
        samples: frames with energies (frames without energy are skipped).
        species: atomic numbers to fit (default: all present).
        ridge: relative ridge strength.

    Returns:
        ``{Z: E0 in eV}`` for every species.
    """
    labelled = [s for s in samples if s.energy is not None]
    if not labelled:
        raise DataValidationError("<samples>", "energy", "expected frames with energies to fit E0, found none")
    sp = _species(labelled, species)
    A = composition_matrix(labelled, sp)
    E = np.array([s.energy for s in labelled], dtype=np.float64)
    return _solve_species(A, E, sp, ridge)


def fit_species_offsets(
    samples: Sequence[Sample], residuals: Sequence[float], species: Sequence[int], ridge: float = 1e-12
) -> Dict[int, float]:
    """Per-species energy offsets δ (eV) with ``residual_f ≈ Σ_atoms δ[Z]`` (least squares).

    The closed-form correction of a model's energy shift: ``residuals`` are reference minus
    predicted frame energies (eV) of ``samples``. Weighted least squares (weight 1/N per frame,
    as energy errors grow with size): the corrected model has zero mean signed error on
    ``samples`` for any mix of compositions, and per-species errors are removed as well.
    """
    if len(residuals) != len(samples) or not len(samples):
        raise ValueError(f"fit_species_offsets: {len(residuals)} residuals for {len(samples)} frames")
    sp = np.asarray(sorted(set(int(z) for z in species)), dtype=np.int64)
    A = composition_matrix(samples, sp)
    # Weights 1/N_f: the weighted normal equations then make sum_f (r_f - A_f δ) = 0, because the
    # atom counts N_f = sum_s A_fs lie in the column space; i.e. zero mean signed error.
    w = 1.0 / np.sqrt(np.maximum(A.sum(axis=1), 1.0))
    return _solve_species(A * w[:, None], np.asarray(residuals, dtype=np.float64) * w, sp, ridge)


def _solve_species(A: np.ndarray, E: np.ndarray, sp: np.ndarray, ridge: float) -> Dict[int, float]:
    """Ridge-stabilised least squares ``A x ≈ E`` (minimum-norm when rank deficient)."""
    lam = ridge * float(np.mean(np.einsum("fs,fs->s", A, A)))
    A_aug = np.vstack([A, np.sqrt(lam) * np.eye(len(sp))])
    E_aug = np.concatenate([E, np.zeros(len(sp))])
    x, *_ = np.linalg.lstsq(A_aug, E_aug, rcond=None)
    rank = np.linalg.matrix_rank(A[:, A.any(axis=0)]) if A.size else 0
    n_present = int(A.any(axis=0).sum())
    if rank < n_present:
        # Expected for fixed-composition data (one molecule, one water box): info, not a warning.
        single_composition = len(np.unique(A, axis=0)) == 1
        (log.info if single_composition else log.warning)(
            "fit_species_energies: composition matrix has rank %d for %d species present; "
            "E0 is the minimum-norm solution (only composition-weighted sums are meaningful)",
            rank,
            n_present,
        )
    return {int(z): float(v) for z, v in zip(sp, x)}


def _e0_sum(sample: Sample, e0: Dict[int, float]) -> float:
    """Σ_atoms E0[Z] (eV) for one frame; vectorised lookup, error on species missing from E0."""
    zs = np.asarray(sorted(e0), dtype=np.int64)
    vals = np.asarray([e0[int(z)] for z in zs], dtype=np.float64)
    pos = np.minimum(np.searchsorted(zs, sample.numbers), len(zs) - 1)
    missing = zs[pos] != sample.numbers
    if missing.any():
        raise DataValidationError(
            sample.info.get("source", "<sample>"),
            "numbers",
            f"expected species in E0 {zs.tolist()}, found Z={sorted(set(sample.numbers[missing].tolist()))}",
        )
    return float(vals[pos].sum())


def energy_per_atom_stats(samples: Sequence[Sample], e0: Optional[Dict[int, float]] = None) -> Tuple[float, float]:
    """Mean and standard deviation (eV/atom) of ``(E - Σ E0[Z]) / N`` over labelled frames."""
    vals = [(s.energy - (_e0_sum(s, e0) if e0 else 0.0)) / s.n_atoms for s in samples if s.energy is not None]
    if not vals:
        raise DataValidationError("<samples>", "energy", "expected frames with energies, found none")
    v = np.asarray(vals)
    return float(v.mean()), float(v.std())


def force_rms(samples: Sequence[Sample]) -> float:
    """Root mean square of force *components* (eV/Å) over all atoms of frames with forces."""
    forces = [s.forces for s in samples if s.forces is not None]
    if not forces:
        raise DataValidationError("<samples>", "forces", "expected frames with forces, found none")
    f = np.concatenate(forces)
    return float(np.sqrt(np.mean(f * f)))


def mean_num_neighbors(samples: Sequence[Sample], cutoff: float, max_frames: Optional[int] = None) -> float:
    """Mean number of neighbours within ``cutoff`` (Å) per atom (``ase.neighborlist``; all images).

    Uses the first ``max_frames`` frames if given (the statistic converges quickly).
    """
    from ase.neighborlist import neighbor_list

    frames = list(samples)[: max_frames if max_frames else None]
    n_pairs, n_atoms = 0, 0
    for s in frames:
        i = neighbor_list("i", s.to_ase(), float(cutoff))
        n_pairs += len(i)
        n_atoms += s.n_atoms
    return n_pairs / max(n_atoms, 1)


@dataclass
class DatasetStatistics:
    """Summary used to initialise a model (all in eV, eV/Å, Å)."""

    n_frames: int
    n_atoms_total: int
    species: list
    e0: Dict[int, float]
    energy_per_atom_mean: Optional[float] = None
    energy_per_atom_std: Optional[float] = None
    force_rms: Optional[float] = None
    cutoff: Optional[float] = None
    avg_num_neighbors: Optional[float] = None
    notes: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-friendly dict (E0 keys become strings)."""
        d = asdict(self)
        d["e0"] = {str(k): v for k, v in self.e0.items()}
        return d


def compute_statistics(
    samples: Sequence[Sample],
    species: Optional[Sequence[int]] = None,
    cutoff: Optional[float] = None,
    max_frames_neighbors: Optional[int] = 100,
    ridge: float = 1e-12,
) -> DatasetStatistics:
    """All statistics at once (E0 by :func:`fit_species_energies`; neighbours if ``cutoff``)."""
    sp = _species(samples, species).tolist()
    has_e = any(s.energy is not None for s in samples)
    has_f = any(s.forces is not None for s in samples)
    e0 = fit_species_energies(samples, sp, ridge) if has_e else {z: 0.0 for z in sp}
    mean, std = energy_per_atom_stats(samples, e0) if has_e else (None, None)
    notes: Dict[str, Any] = {}
    if has_e:
        A = composition_matrix([s for s in samples if s.energy is not None], sp)
        present = A.any(axis=0)
        notes["e0_rank_deficient"] = bool(np.linalg.matrix_rank(A[:, present]) < int(present.sum()))
    return DatasetStatistics(
        n_frames=len(samples),
        n_atoms_total=int(sum(s.n_atoms for s in samples)),
        species=sp,
        e0=e0,
        energy_per_atom_mean=mean,
        energy_per_atom_std=std,
        force_rms=force_rms(samples) if has_f else None,
        cutoff=cutoff,
        avg_num_neighbors=None if cutoff is None else mean_num_neighbors(samples, cutoff, max_frames_neighbors),
        notes=notes,
    )
