"""Geometry-only baselines of the pretext tasks: how well a fixed rule, with no learning, predicts
the targets of a masking or denoising transform.

A learned pretext score means little alone: on rMD17 with ``mask_variant: local`` the flagged
atom's open valence already points at the hole. Report both: ``learned mean_cosine`` from
:func:`maskpot.training.evaluate.evaluate` and ``geometry-only mean_cosine`` from
:func:`baseline_scores` on the same frames with the same seed (both draw every frame's mask
or noise from :func:`~maskpot.training.evaluate.sample_rng` ``(seed, None, index)``, so they
score the very same targets).

The rules see exactly what the model sees: the transformed sample (positions, numbers, cell,
pbc) and, for the transforms that give one, the ``mask`` flag; never the targets. Bonds are
pairs closer than ``scale * (r_cov,i + r_cov,j)`` (ASE covalent radii, minimum image).

* ``mask``, :class:`~maskpot.data.transforms.MaskWater` and
  :class:`~maskpot.data.transforms.MaskElements` (flagged atoms point to a nearby hole):

  1. the *open valence* of an atom X is ``v_X = -sum_j u_Xj`` over its bonds (unit vectors to
     the bonded atoms): where a tetrahedral / trigonal atom lost a neighbour, it points at the
     gap;
  2. a flagged heavy atom (Z != 1) with ``v_X != 0`` predicts ``v_X / |v_X|``, except that
     when H atoms are masked and X is N, O or F with an acceptor in reach (N/O/F, 2.4-3.3 Å,
     not within two bonds of X, >= 90 degrees from every bond of X, not donating one of its own
     H to X), it predicts the direction to the acceptor whose angles to X's bonds are closest
     to tetrahedral (the missing H was most likely donating a hydrogen bond);
  3. the predicted hole of X is ``x_X + (r_cov,X + r_cov,masked) d_X``; every other flagged
     atom (an H, or a heavy atom with no direction) predicts the direction to the hole of a
     flagged bonded neighbour, else to the nearest predicted hole; zero when there is none.

* ``mask``, :class:`~maskpot.data.transforms.MaskElementsReference` (every atom, pointing away
  from the farthest hole, no flag): candidate holes at every heavy atom with an open valence
  ``|v_X| > 0.5`` (a lost neighbour, but also lone pairs of O/N), each at
  ``x_X + (r_cov,X + r_cov,masked) v_X / |v_X|``; atom i predicts ``x_i - (its farthest candidate
  hole)``, or ``x_i - centroid`` when there is no candidate.

* ``mask_position``, :class:`~maskpot.data.transforms.MaskPositions` (flagged atoms within 3 Å
  give the displacement to the nearest removed atom, whose element ``mask_numbers`` names):
  every flagged atom X with an open valence ``|v_X| > 0.5`` (it lost a bond) proposes a hole at
  ``x_X + (r_cov,X + r_cov,token) v_X / |v_X|``; proposals closer than 0.8 Å are averaged into
  one hole; every flagged atom predicts the displacement to its nearest hole, or to the centroid
  of the flagged atoms within the flag radius when no atom proposed one.

* ``joint``, :class:`~maskpot.data.transforms.MaskAndNoise`: the masking rule on the flagged atoms
  and the denoising rule (below) on the others, both on the noisy frame.

* ``denoise``, :class:`~maskpot.data.transforms.Denoise`: bond restoring. For every bond of the
  noisy frame (scale 1.3, noise stretches bonds), half the stretch beyond the covalent length is
  undone on each end: ``eps_i = -1/2 sum_j (r_ij - r_cov,i - r_cov,j) u_ij``. The zero
  prediction's RMSE (the RMS of the noise) is reported next to it as ``zero_rmse``.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from maskpot.data.sample import Sample
from maskpot.data.transforms import (
    MASK_KEY,
    MASK_NUMBERS_KEY,
    NOISE_VECTORS_KEY,
    NOISE_WEIGHT_KEY,
    TARGET_VECTORS_KEY,
    TARGET_WEIGHT_KEY,
    Denoise,
    MaskElements,
    MaskElementsReference,
    MaskAndNoise,
    MaskPositions,
    MaskWater,
    Transform,
)

__all__ = ["baseline_vectors", "baseline_scores", "BOND_SCALE", "DENOISE_BOND_SCALE"]

#: Bond if r < BOND_SCALE * (sum of covalent radii) (masking rules, clean geometry).
BOND_SCALE = 1.2
#: Same for the noisy geometry of the denoising rule.
DENOISE_BOND_SCALE = 1.3
# Open valence above which an atom of a reference-variant frame is a candidate hole.
_OPEN_VALENCE = 0.5
# Hydrogen-bond acceptor search (Å) and elements.
_HB_MIN, _HB_MAX = 2.4, 3.3
_HB_ELEMENTS = (7, 8, 9)
_COS_TET = -1.0 / 3.0
_EPS = 1e-8


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.where(n > _EPS, v / np.maximum(n, _EPS), 0.0)


def _covalent(numbers: np.ndarray) -> np.ndarray:
    from ase.data import covalent_radii

    return np.asarray(covalent_radii)[np.asarray(numbers)]


def _pairs(sample: Sample, cutoffs: Any) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, D = x_j - x_i minimum image) for pairs within ``cutoffs`` (ASE neighbour list:
    a float in Å or per-atom radii whose sums are the bond cutoffs)."""
    from ase.neighborlist import neighbor_list

    if sample.n_atoms == 0:
        return np.zeros(0, dtype=int), np.zeros(0, dtype=int), np.zeros((0, 3))
    i, j, d = neighbor_list("ijD", sample.to_ase(), cutoffs, self_interaction=False)
    return i, j, d


def _bonds(sample: Sample, scale: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _pairs(sample, list(scale * _covalent(sample.numbers)))


def _open_valence(n: int, i: np.ndarray, d: np.ndarray) -> np.ndarray:
    v = np.zeros((n, 3))
    np.add.at(v, i, -_unit(d))
    return v


def _masked_radius(elements: Sequence[int]) -> float:
    """Covalent radius of the removed element (H when H is among the masked ones)."""
    z = 1 if 1 in elements else int(elements[0])
    return float(_covalent(np.array([z]))[0])


def _minimum_image(vectors: np.ndarray, sample: Sample) -> np.ndarray:
    from maskpot.data.molecules import minimum_image

    return minimum_image(vectors, sample.cell, sample.pbc)


def _local_rule(sample: Sample, flags: np.ndarray, elements: Sequence[int]) -> np.ndarray:
    n, z, x = sample.n_atoms, sample.numbers, sample.positions
    pred = np.zeros((n, 3))
    flagged = np.flatnonzero(flags > 0)
    if flagged.size == 0:
        return pred
    bi, bj, bd = _bonds(sample, BOND_SCALE)
    v = _open_valence(n, bi, bd)
    neighbours: List[set] = [set() for _ in range(n)]
    for a, b in zip(bi.tolist(), bj.tolist()):
        neighbours[a].add(b)
    hydrogen = 1 in elements
    heavy = [a for a in flagged.tolist() if z[a] != 1 and np.linalg.norm(v[a]) > _EPS]
    if hydrogen and any(z[a] in _HB_ELEMENTS for a in heavy):
        hi, hj, hd = _pairs(sample, _HB_MAX)
    direction: Dict[int, np.ndarray] = {}
    for a in heavy:
        d = _unit(v[a])
        if hydrogen and z[a] in _HB_ELEMENTS:
            acc = _acceptor(sample, a, neighbours, bi, bd, hi, hj, hd)
            if acc is not None:
                d = acc
        direction[a] = d
        pred[a] = d
    if not direction:
        return pred
    r_masked = _masked_radius(elements)
    owners = np.array(sorted(direction))
    holes = np.array([x[a] + (_covalent(z[a : a + 1])[0] + r_masked) * direction[a] for a in owners.tolist()])
    for a in flagged.tolist():
        if a in direction:
            continue
        own = [k for k, o in enumerate(owners.tolist()) if o in neighbours[a]]
        cand = np.array(own) if own else np.arange(len(owners))
        to_hole = _minimum_image(holes[cand] - x[a], sample)
        pred[a] = to_hole[int(np.argmin(np.linalg.norm(to_hole, axis=1)))]
    return pred


def _acceptor(sample: Sample, a: int, neighbours: List[set], bi: np.ndarray, bd: np.ndarray,
              hi: np.ndarray, hj: np.ndarray, hd: np.ndarray) -> Optional[np.ndarray]:
    """Unit vector from donor ``a`` to its likeliest hydrogen-bond acceptor, or None."""
    z, x = sample.numbers, sample.positions
    bonds = _unit(bd[bi == a])
    if bonds.shape[0] == 0:
        return None
    near = set(neighbours[a]) | {c for b in neighbours[a] for c in neighbours[b]} | {a}
    best: Optional[Tuple[float, np.ndarray]] = None
    sel = hi == a
    for b, d in zip(hj[sel].tolist(), hd[sel]):
        r = float(np.linalg.norm(d))
        if z[b] not in _HB_ELEMENTS or b in near or not (_HB_MIN <= r <= _HB_MAX):
            continue
        u = d / r
        c = bonds @ u
        if (c > 0).any():
            continue
        donated = [h for h in neighbours[b] if z[h] == 1]
        if donated and np.linalg.norm(_minimum_image(x[donated] - x[a], sample), axis=1).min() < _HB_MIN:
            continue  # b gives one of its H to a: a is its acceptor, not its donor
        score = float(((c - _COS_TET) ** 2).sum())
        if best is None or score < best[0]:
            best = (score, u)
    return None if best is None else best[1]


def _reference_rule(sample: Sample, elements: Sequence[int]) -> np.ndarray:
    n, z, x = sample.n_atoms, sample.numbers, sample.positions
    if n == 0:
        return np.zeros((0, 3))
    bi, _, bd = _bonds(sample, BOND_SCALE)
    v = _open_valence(n, bi, bd)
    cand = np.flatnonzero((z != 1) & (np.linalg.norm(v, axis=1) > _OPEN_VALENCE))
    if cand.size == 0:
        return _minimum_image(x - x.mean(axis=0), sample)
    holes = x[cand] + (_covalent(z[cand]) + _masked_radius(elements))[:, None] * _unit(v[cand])
    d = _minimum_image(x[:, None, :] - holes[None, :, :], sample)
    far = np.argmax(np.einsum("nki,nki->nk", d, d), axis=1)
    return d[np.arange(n), far]

# Proposed holes closer than this (Å) are one hole (two neighbours of the same removed atom).
_HOLE_MERGE = 0.8


def _position_rule(sample: Sample, flags: np.ndarray, tokens: np.ndarray, radius: float) -> np.ndarray:
    """Displacement (Å) from every flagged atom to its nearest proposed hole (module docstring)."""
    n, z, x = sample.n_atoms, sample.numbers, sample.positions
    pred = np.zeros((n, 3))
    flagged = np.flatnonzero(flags > 0)
    if flagged.size == 0:
        return pred
    bi, _, bd = _bonds(sample, BOND_SCALE)
    v = _open_valence(n, bi, bd)
    holes: List[np.ndarray] = []
    for a in flagged.tolist():
        if np.linalg.norm(v[a]) <= _OPEN_VALENCE or tokens[a] <= 0:
            continue
        h = x[a] + (_covalent(z[a : a + 1])[0] + _covalent(tokens[a : a + 1])[0]) * _unit(v[a])
        for k, other in enumerate(holes):  # merge proposals of the same hole (running mean)
            if np.linalg.norm(_minimum_image(h - other, sample)) < _HOLE_MERGE:
                holes[k] = 0.5 * (other + h)
                break
        else:
            holes.append(h)
    for a in flagged.tolist():
        if holes:
            to_hole = _minimum_image(np.array(holes) - x[a], sample)
            pred[a] = to_hole[int(np.argmin(np.linalg.norm(to_hole, axis=1)))]
        else:
            d = _minimum_image(x[flagged] - x[a], sample)
            near = np.linalg.norm(d, axis=1) <= radius
            pred[a] = d[near].mean(axis=0)
    return pred


def _denoise_rule(sample: Sample) -> np.ndarray:
    n = sample.n_atoms
    bi, bj, bd = _bonds(sample, DENOISE_BOND_SCALE)
    r = np.linalg.norm(bd, axis=1)
    stretch = r - _covalent(sample.numbers[bi]) - _covalent(sample.numbers[bj])
    eps = np.zeros((n, 3))
    # bd = x_j - x_i: a stretched bond (stretch > 0) had i pushed away from j, along -bd
    np.add.at(eps, bi, -0.5 * stretch[:, None] * _unit(bd))
    return eps


def baseline_vectors(sample: Sample, transform: Transform, mask: Optional[np.ndarray] = None,
                     mask_numbers: Optional[np.ndarray] = None) -> np.ndarray:
    """Geometry-only prediction [N, 3] of ``transform``'s target vectors for the transformed
    ``sample`` (the model input), given the ``mask`` flag (and the element token
    ``mask_numbers``) when the transform produces one. For :class:`MaskAndNoise` this is the
    masking rule's prediction on flagged atoms and the denoising rule's elsewhere.

    The rule follows the transform (see the module docstring); units follow its targets (unit
    directions for masking, only the direction counts; Å for ``Denoise(predict="noise")``, Å /
    sigma for ``"scaled_noise"``).

    Raises:
        TypeError: for a transform without a pretext target (Identity) or of an unknown kind.
    """
    n = sample.n_atoms
    flags = np.zeros(n) if mask is None else np.asarray(mask, dtype=float).reshape(n)
    tokens = np.zeros(n, dtype=np.int64) if mask_numbers is None else np.asarray(mask_numbers).astype(np.int64)
    if isinstance(transform, MaskAndNoise):
        masked = baseline_vectors(sample, transform.masking, mask, mask_numbers)
        return np.where(flags[:, None] > 0, masked, _denoise_rule(sample))
    if isinstance(transform, MaskPositions):
        return _position_rule(sample, flags, tokens, transform.radius)
    if isinstance(transform, MaskWater):
        return _local_rule(sample, flags, (1,))
    if isinstance(transform, MaskElements):
        return _local_rule(sample, flags, transform.elements)
    if isinstance(transform, MaskElementsReference):
        return _reference_rule(sample, transform.elements)
    if isinstance(transform, Denoise):
        eps = _denoise_rule(sample)
        return eps if transform.predict == "noise" else eps / transform.sigma
    raise TypeError(f"no geometry-only baseline for {type(transform).__name__}: expected a masking or denoising transform")


def baseline_scores(
    samples: Sequence[Sample],
    objective: Any,
    *,
    seed: int = 0,
    epoch: Optional[int] = None,
    indices: Optional[Iterable[int]] = None,
) -> Dict[str, float]:
    """Score of the geometry-only rule on ``samples`` transformed by ``objective`` (an
    :class:`~maskpot.training.objectives.Objective` or a bare transform).

    Frame ``i`` is transformed with ``sample_rng(seed, epoch, i)``: with ``epoch=None`` these are
    the targets :func:`~maskpot.training.evaluate.evaluate` scores the model on (same seed).

    Returns:
        ``mean_cosine`` (target-weighted mean per-atom cosine, as the learned metric),
        ``n_targets`` (sum of weights) and ``n_frames``; for position masking also
        ``radius_rmse`` (Å, length of the predicted vs true displacement); for joint also
        ``vector_rmse`` of its denoising part; for denoising also ``vector_mse``,
        ``vector_rmse`` (the rule) and ``zero_rmse`` (predicting no noise), in target units.
    """
    from maskpot.training.evaluate import sample_rng

    transform = getattr(objective, "transform", objective)
    idx = range(len(samples)) if indices is None else [int(i) for i in indices]
    w_sum = cos_sum = sq = sq0 = radius_sq = noise_sq = noise_n = 0.0
    n_frames = 0
    for i in idx:
        new, extras = transform(samples[i], sample_rng(seed, epoch, i))
        if TARGET_VECTORS_KEY not in extras:
            raise TypeError(f"{type(transform).__name__} has no pretext targets: nothing to compare a baseline with")
        target = np.asarray(extras[TARGET_VECTORS_KEY], dtype=float)
        weight = np.asarray(extras.get(TARGET_WEIGHT_KEY, np.ones(len(target))), dtype=float)
        pred = baseline_vectors(new, transform, extras.get(MASK_KEY), extras.get(MASK_NUMBERS_KEY))
        if NOISE_VECTORS_KEY in extras:  # joint: the denoising part on the unflagged atoms
            nw = np.asarray(extras[NOISE_WEIGHT_KEY], dtype=float)
            nt = np.asarray(extras[NOISE_VECTORS_KEY], dtype=float)
            noise_sq += float((nw * ((pred - nt) ** 2).sum(-1)).sum())
            noise_n += 3.0 * float(nw.sum())
        radius_sq += float((weight * (np.linalg.norm(pred, axis=-1) - np.linalg.norm(target, axis=-1)) ** 2).sum())
        dot = (pred * target).sum(-1)
        norm = np.sqrt(np.maximum((pred * pred).sum(-1) * (target * target).sum(-1), _EPS * _EPS))
        cos_sum += float((weight * dot / norm).sum())
        w_sum += float(weight.sum())
        sq += float((weight * ((pred - target) ** 2).sum(-1)).sum())
        sq0 += float((weight * (target * target).sum(-1)).sum())
        n_frames += 1
    out: Dict[str, float] = {
        "mean_cosine": cos_sum / w_sum if w_sum > 0 else float("nan"),
        "n_targets": w_sum,
        "n_frames": float(n_frames),
    }
    inner = transform.masking if isinstance(transform, MaskAndNoise) else transform
    if isinstance(inner, MaskPositions) and w_sum > 0:
        out["radius_rmse"] = float(np.sqrt(radius_sq / w_sum))
    if isinstance(transform, MaskAndNoise) and noise_n > 0:
        out["vector_rmse"] = float(np.sqrt(noise_sq / noise_n))
    if isinstance(transform, Denoise):
        mse = sq / (3.0 * w_sum) if w_sum > 0 else float("nan")
        out.update(vector_mse=mse, vector_rmse=float(np.sqrt(mse)),
                   zero_rmse=float(np.sqrt(sq0 / (3.0 * w_sum))) if w_sum > 0 else float("nan"))
    return out
