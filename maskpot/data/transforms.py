"""Pretraining transforms: pure functions ``Sample -> (model-input Sample, per-atom targets)``.

Every transform is a callable object::

    new_sample, extras = transform(sample, rng)

* ``sample`` is never modified (all outputs are fresh copies);
* ``new_sample`` holds *only model inputs*: a masked atom is removed from it entirely (no
  placeholder), clean positions are never stored in it, and ``energy`` / ``forces`` are dropped
  (``None``) by the pretraining transforms because they describe the original, unperturbed
  system;
* ``extras`` maps a key to one array per atom of ``new_sample`` (leading dimension
  ``new_sample.n_atoms``), ready for ``collate(samples, extra={key: [arrays...]})``:

  ==================  ==============  =====================================================
  key                 shape / dtype   meaning
  ==================  ==============  =====================================================
  ``mask``            [N'] float32    1 for atoms flagged as neighbours of a removed atom
                                      (a model *input*, see ``maskpot.data.sample``)
  ``target_vectors``  [N', 3] float64 target for the model's per-atom vector output
                                      (unit vectors for masking, Å for denoising); zeros
                                      where ``target_weight`` is 0
  ``target_weight``   [N'] float32    per-atom loss weight (0 = not part of the loss)
  ==================  ==============  =====================================================

``Identity`` (fine-tuning) returns an empty extras dict.

Randomness comes only from the ``rng`` argument (``np.random.Generator``): the same generator
state gives the same output, and a dataset that draws from a per-epoch generator gets a new
masking every epoch (the paper redraws masks every time a frame is seen).

Masking protocol (Zhang, Li, Barati Farimani, AIP Advances 14, 095023 (2024); reference code
StevenZhang904/Masked_Pretrain, ``dataset/dataset_water.py``): in each frame a fraction
``ratio`` of the water molecules is chosen; in each chosen molecule one of the two H atoms is
removed at random; the remaining O and H of that molecule are flagged and must predict the
direction (unit vector, minimum image) from themselves to the removed H.

rMD17-style molecules (``mask_elements``) have two variants (``mask_variant``):
:class:`MaskElements` (``"local"``, maskpot's default: only atoms near a removed atom are
targets, flagged, pointing to the nearest hole) and :class:`MaskElementsReference`
(``"reference"``, the reference code's ``dataset/dataset_md17.py``: every kept atom is a target,
pointing away from the farthest removed atom, no flag).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from maskpot.data.sample import Sample
from maskpot.data.validate import MAX_Z

__all__ = [
    "MASK_KEY",
    "TARGET_VECTORS_KEY",
    "TARGET_WEIGHT_KEY",
    "EXTRA_KEYS",
    "TRANSFORM_CONFIG_KEYS",
    "Transform",
    "Identity",
    "MaskWater",
    "MaskElements",
    "MaskElementsReference",
    "MaskPositions",
    "MaskAndNoise",
    "MASK_NUMBERS_KEY",
    "NOISE_VECTORS_KEY",
    "NOISE_WEIGHT_KEY",
    "PRETEXT_TASKS",
    "JOINT_MASKS",
    "MASK_VARIANTS",
    "Denoise",
    "build_transform",
    "parse_elements",
]

MASK_KEY = "mask"
TARGET_VECTORS_KEY = "target_vectors"
TARGET_WEIGHT_KEY = "target_weight"
#: Atomic number of the removed atom each flagged atom points at (0 = none): position masking
#: keeps the masked atom's element as a token (a model input, like ``mask``).
MASK_NUMBERS_KEY = "mask_numbers"
#: Denoising targets of the joint objective (beside the masking targets of the same frame).
NOISE_VECTORS_KEY = "noise_vectors"
NOISE_WEIGHT_KEY = "noise_weight"
#: Keys of the extras dict returned by the pretraining transforms.
EXTRA_KEYS: Tuple[str, ...] = (MASK_KEY, TARGET_VECTORS_KEY, TARGET_WEIGHT_KEY)

#: Config keys read by :func:`build_transform`.
TRANSFORM_CONFIG_KEYS: Tuple[str, ...] = (
    "mask_ratio", "mask_elements", "mask_radius", "mask_variant", "noise_sigma", "denoise_target",
    "joint_mask",
)
#: Tasks :func:`build_transform` knows (``identity`` / ``finetune`` are aliases of energy_force).
PRETEXT_TASKS: Tuple[str, ...] = ("mask", "mask_position", "denoise", "joint")
#: Masking tasks the joint objective can pair with denoising (``joint_mask``).
JOINT_MASKS: Tuple[str, ...] = ("mask_position", "mask")
#: Values of ``mask_variant``: element masking with local flagged targets (:class:`MaskElements`)
#: or the reference code's every-atom, farthest-hole targets (:class:`MaskElementsReference`).
MASK_VARIANTS: Tuple[str, ...] = ("local", "reference")

_Z_O, _Z_H = 8, 1
# Below this length (Å) a displacement has no direction.
_MIN_LENGTH = 1e-8
# Rows processed at once in the nearest-removed-atom search (bounds the [chunk, n_removed, 3] array).
_CHUNK_ELEMENTS = 4_000_000

Extras = Dict[str, np.ndarray]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _frame_name(sample: Sample) -> str:
    """``'<source> [frame k]'`` from ``sample.info`` (for error messages)."""
    info = sample.info or {}
    src = info.get("source", "<sample>")
    frame = info.get("frame", info.get("index", "?"))
    return f"{src} [frame {frame}]"


def _rng(rng: Optional[np.random.Generator]) -> np.random.Generator:
    if rng is None:
        return np.random.default_rng()
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return rng


def _draw_removed(cand: np.ndarray, n: int, ratio: float, rng: np.random.Generator,
                  at_least_one: bool = True) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(removed indices, keep mask, kept indices) of a masking draw: each candidate is removed with probability
    ``ratio``; with ``at_least_one``, one random candidate when the draw removed none; never all
    ``n`` atoms (one removed atom, drawn at random, is put back)."""
    draw = rng.random(cand.size) < ratio
    if at_least_one and cand.size and not draw.any():
        draw[rng.integers(cand.size)] = True
    removed = cand[draw]
    if removed.size and removed.size == n:
        removed = np.delete(removed, rng.integers(removed.size))
    keep = np.ones(n, dtype=bool)
    keep[removed] = False
    return removed, keep, np.flatnonzero(keep)


def _minimum_image(vectors: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """Minimum-image displacement (Å) through fractional coordinates (triclinic-safe)."""
    from maskpot.data.molecules import minimum_image

    return minimum_image(vectors, cell, pbc)


def _unit(vectors: np.ndarray, what: str, sample: Sample) -> np.ndarray:
    norm = np.linalg.norm(vectors, axis=-1, keepdims=True)
    if vectors.size and float(norm.min()) < _MIN_LENGTH:
        raise ValueError(f"{_frame_name(sample)}: {what}: two atoms coincide, the target direction is undefined")
    return vectors / norm


def _check_ratio(ratio: float, name: str) -> float:
    r = float(ratio)
    if not (0.0 < r <= 1.0) or math.isnan(r):
        raise ValueError(f"{name}: expected a ratio in (0, 1], got {ratio!r}")
    return r


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def parse_elements(elements: Union[int, str, Iterable[Union[int, str]]], key: str = "mask_elements") -> Tuple[int, ...]:
    """Atomic numbers from ints or chemical symbols (``(1,)``, ``["H", "O"]``, ``"H"``)."""
    from ase.data import atomic_numbers

    if isinstance(elements, (int, np.integer, str)):
        elements = [elements]
    out = []
    for e in elements:
        if isinstance(e, (int, np.integer)) and not isinstance(e, bool) and 1 <= int(e) <= MAX_Z:
            out.append(int(e))
        elif isinstance(e, str) and e in atomic_numbers and atomic_numbers[e] > 0:
            out.append(int(atomic_numbers[e]))
        elif isinstance(e, str) and e.isdigit() and 1 <= int(e) <= MAX_Z:
            out.append(int(e))
        else:
            raise ValueError(f"{key}: expected atomic numbers or chemical symbols, got {e!r}")
    if not out:
        raise ValueError(f"{key}: expected at least one element, got an empty list")
    return tuple(sorted(set(out)))


def _masking_extras(n: int, flagged: np.ndarray, vectors: np.ndarray) -> Extras:
    """Extras arrays for ``n`` atoms with unit ``vectors`` on the ``flagged`` indices."""
    mask = np.zeros(n, dtype=np.float32)
    mask[flagged] = 1.0
    target = np.zeros((n, 3), dtype=np.float64)
    target[flagged] = vectors
    return {MASK_KEY: mask, TARGET_VECTORS_KEY: target, TARGET_WEIGHT_KEY: mask.copy()}


# --------------------------------------------------------------------------------------------
# transforms
# --------------------------------------------------------------------------------------------
class Transform:
    """Base class: ``__call__(sample, rng) -> (Sample, extras)``; never mutates ``sample``."""

    #: Keys of the extras dict this transform returns (empty for Identity).
    extra_keys: Tuple[str, ...] = EXTRA_KEYS

    def __call__(self, sample: Sample, rng: Optional[np.random.Generator] = None) -> Tuple[Sample, Extras]:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Identity(Transform):
    """Fine-tuning: returns a copy of the sample (energy/forces kept) and no extras."""

    extra_keys: Tuple[str, ...] = ()

    def __call__(self, sample: Sample, rng: Optional[np.random.Generator] = None) -> Tuple[Sample, Extras]:
        return sample.copy(), {}


class MaskWater(Transform):
    """The paper's water masking: remove one H from ``round(ratio * n_water)`` molecules.

    Per call (i.e. redrawn every time the frame is used):

    1. water molecules are identified from ``sample.molecule`` when present (each molecule must
       be exactly one O and two H, every O-H within ``max_oh`` Å under minimum image), else from
       O-H distances (:func:`maskpot.data.molecules.assign_water_molecules`, PBC-aware);
    2. ``k = max(min_masked, floor(ratio * n_water + 0.5))`` molecules are drawn without
       replacement (``k`` capped at ``n_water``; ``min_masked=1`` by default so that a small
       frame always contributes a target);
    3. in each drawn molecule one of its two H atoms is chosen with probability 1/2 and removed
       from the sample;
    4. the molecule's remaining O and H get ``mask = 1`` and ``target_weight = 1``; their target
       is the unit vector from the atom to the removed H, minimum image under PBC (fractional
       coordinates, so triclinic cells are handled).

    The returned sample keeps atom order (minus the removed atoms), cell, pbc, info and the
    molecule index, and has ``energy = forces = None``.

    Raises:
        ValueError: when water molecules cannot be identified in the frame; the message names
            the frame (``info['source']`` and ``info['frame']``) and the problem.
    """

    def __init__(self, ratio: float = 0.5, min_masked: int = 1, max_oh: float = 1.3) -> None:
        self.ratio = _check_ratio(ratio, "MaskWater ratio")
        if int(min_masked) < 0:
            raise ValueError(f"MaskWater min_masked: expected >= 0, got {min_masked!r}")
        self.min_masked = int(min_masked)
        if not float(max_oh) > 0:
            raise ValueError(f"MaskWater max_oh: expected > 0 Å, got {max_oh!r}")
        self.max_oh = float(max_oh)

    def n_masked(self, n_water: int) -> int:
        """Number of molecules masked in a frame with ``n_water`` molecules."""
        if n_water <= 0:
            return 0
        return min(n_water, max(self.min_masked, _round_half_up(self.ratio * n_water)))

    def water_triples(self, sample: Sample) -> np.ndarray:
        """[n_water, 3] atom indices (O, H, H) of every molecule, ordered by molecule index."""
        name = _frame_name(sample)
        z = sample.numbers
        if sample.n_atoms == 0:
            raise ValueError(f"{name}: MaskWater: the frame has no atoms")
        if sample.molecule is None:
            from maskpot.data.molecules import assign_water_molecules

            try:
                molecule = assign_water_molecules(sample, max_oh=self.max_oh, source=name).molecule
            except ValueError as err:  # DataValidationError is a ValueError
                raise ValueError(f"MaskWater could not identify water molecules: {err}") from err
        else:
            molecule = sample.molecule
            ids, inverse = np.unique(molecule, return_inverse=True)
            n_o = np.bincount(inverse, weights=(z == _Z_O), minlength=len(ids))
            n_h = np.bincount(inverse, weights=(z == _Z_H), minlength=len(ids))
            n_all = np.bincount(inverse, minlength=len(ids))
            bad = np.flatnonzero((n_o != 1) | (n_h != 2) | (n_all != 3))
            if bad.size:
                m = int(bad[0])
                comp = sorted(z[inverse == m].tolist())
                raise ValueError(
                    f"{name}: MaskWater: key 'molecule': expected every molecule to be one O and two H, "
                    f"found {bad.size} molecule(s) that are not, e.g. molecule {int(ids[m])} with Z={comp}"
                )
        # sort by (molecule, -Z): each consecutive triple is (O, H, H)
        order = np.lexsort((-z, molecule))
        triples = order.reshape(-1, 3)
        d = _minimum_image(
            sample.positions[triples[:, 1:]] - sample.positions[triples[:, :1]], sample.cell, sample.pbc
        )
        r = np.linalg.norm(d, axis=-1)
        bad = (r > self.max_oh) | (r < _MIN_LENGTH)
        if bad.any():
            w = int(np.flatnonzero(bad.any(axis=1))[0])
            raise ValueError(
                f"{name}: MaskWater: key 'molecule': expected every O-H distance in (0, {self.max_oh}] Å "
                f"(minimum image), found {int(bad.any(axis=1).sum())} molecule(s) outside, e.g. O atom "
                f"{int(triples[w, 0])} with O-H distances {np.round(r[w], 3).tolist()} Å"
            )
        return triples

    def __call__(self, sample: Sample, rng: Optional[np.random.Generator] = None) -> Tuple[Sample, Extras]:
        rng = _rng(rng)
        triples = self.water_triples(sample)
        n_water = len(triples)
        k = self.n_masked(n_water)
        chosen = np.sort(rng.choice(n_water, size=k, replace=False)) if k else np.zeros(0, dtype=np.int64)
        side = rng.integers(0, 2, size=k)
        o_idx = triples[chosen, 0]
        removed = triples[chosen, 1 + side]
        kept_h = triples[chosen, 2 - side]

        pos = sample.positions
        to_removed_o = _minimum_image(pos[removed] - pos[o_idx], sample.cell, sample.pbc)
        to_removed_h = _minimum_image(pos[removed] - pos[kept_h], sample.cell, sample.pbc)
        n = sample.n_atoms
        flagged = np.concatenate([o_idx, kept_h])
        vectors = np.concatenate(
            [_unit(to_removed_o, "O -> removed H", sample), _unit(to_removed_h, "H -> removed H", sample)]
        )
        extras = _masking_extras(n, flagged, vectors)

        keep = np.ones(n, dtype=bool)
        keep[removed] = False
        molecule = sample.molecule
        if molecule is None:
            molecule = np.empty(n, dtype=np.int64)
            molecule[triples.reshape(-1)] = np.repeat(np.arange(n_water), 3)
        new = _subset(sample, keep, molecule)
        return new, {key: arr[keep] for key, arr in extras.items()}


class MaskElements(Transform):
    """Masking for general molecules (e.g. rMD17): remove random atoms of chosen elements.

    Per call:

    1. every atom whose atomic number is in ``elements`` is removed independently with
       probability ``ratio``; if candidates exist but none was drawn, one candidate is removed
       (every frame contributes a target); if every atom of the frame would go, one of them is
       kept (a frame needs atoms). Frames without candidates pass through unmasked (all flags
       and weights 0);
    2. for each remaining atom, the *nearest removed atom* is found (minimum image when
       periodic) and the target is the unit vector FROM the remaining atom TO that removed atom
       (same direction convention as :class:`MaskWater`);
    3. ``mask = target_weight = 1`` for remaining atoms whose nearest removed atom lies within
       ``radius`` Å; others get 0 and a zero target (their direction to a far-away hole is not
       a local property the model can infer). ``radius=None`` flags every remaining atom (the
       minimum image is then exact only for separations below half the shortest cell width,
       see ``maskpot.data.molecules``).

    This is maskpot's ``mask_variant: local``, not the reference code's rMD17 masking: that one
    (:class:`MaskElementsReference`) makes every kept atom a target, points from the *farthest*
    removed atom, has no flag and no at-least-one rule. The local task is close to trivial for
    a model that sees the flag: a geometry-only rule (the open valence of the flagged atom, see
    :mod:`experiments.pretext_baseline`) already scores a high mean cosine.

    Why ``radius = 1.6`` Å by default: it covers every covalent bond to H (C-H 1.09, N-H 1.01,
    O-H 0.96 Å) and the heavy-atom bonds to O/N (C-O 1.43, C=O 1.23, C-N 1.47 Å), and on a water
    frame it reproduces :class:`MaskWater`'s flag set (O at 0.96 Å and the sibling H at 1.51 Å
    of the removed H are flagged; hydrogen-bond partners, >= 1.7 Å, are not). It excludes
    geminal H (H-C-H, ~1.78 Å) and 1-3 heavy-atom neighbours. For masking heavy atoms bonded
    to each other (C-C 1.54 Å) raise it (e.g. 1.7).

    The returned sample has ``energy = forces = None``.
    """

    def __init__(self, elements: Union[int, str, Sequence[Union[int, str]]] = (1,), ratio: float = 0.15,
                 radius: Optional[float] = 1.6) -> None:
        self.elements = parse_elements(elements, "MaskElements elements")
        self.ratio = _check_ratio(ratio, "MaskElements ratio")
        if radius is not None and not (float(radius) > 0 and math.isfinite(float(radius))):
            raise ValueError(f"MaskElements radius: expected a positive length in Å or None, got {radius!r}")
        self.radius = None if radius is None else float(radius)

    def __call__(self, sample: Sample, rng: Optional[np.random.Generator] = None) -> Tuple[Sample, Extras]:
        rng = _rng(rng)
        n = sample.n_atoms
        cand = np.flatnonzero(np.isin(sample.numbers, self.elements))
        removed, keep, kept = _draw_removed(cand, n, self.ratio, rng)

        if removed.size == 0:
            extras = _masking_extras(n, np.zeros(0, dtype=np.int64), np.zeros((0, 3)))
        else:
            vec, dist = self._nearest(sample, kept, removed)
            close = np.ones(kept.size, dtype=bool) if self.radius is None else dist <= self.radius
            flagged = kept[close]
            extras = _masking_extras(n, flagged, _unit(vec[close], "atom -> nearest removed atom", sample))
        new = _subset(sample, keep, sample.molecule)
        return new, {key: arr[keep] for key, arr in extras.items()}

    @staticmethod
    def _nearest(sample: Sample, kept: np.ndarray, removed: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Displacement to, and distance of, the nearest removed atom for each kept atom."""
        return _to_removed(sample, kept, removed, farthest=False)


class MaskElementsReference(Transform):
    """The reference code's rMD17 masking (``mask_variant: reference``).

    StevenZhang904/Masked_Pretrain, ``dataset/dataset_md17.py`` (``MD17_masked.__getitem__`` and
    ``get_rel_disp``), with the loss of ``masked_pretrain_forcefield_noised.py``
    (``_masking_loss`` without ``cell_size``). Per call:

    1. every atom whose atomic number is in ``elements`` (the reference: H) is removed
       independently with probability ``ratio``. There is no at-least-one rule: a frame where
       none is drawn keeps all its atoms and has no target (``target_weight`` 0; the reference
       gives those atoms zero targets, i.e. cosine 0 and no gradient). If every atom of the frame
       would go, one of them is kept (a frame needs atoms; never the case for rMD17);
    2. *every* kept atom is a target (``target_weight = 1``): the unit vector FROM the
       *farthest* removed atom TO the kept atom, ``normalize(x_kept - x_farthest_removed)``
       (the reference stores the raw displacement and normalises it in the loss; note the sign:
       it points away from the hole, the opposite of :class:`MaskWater`'s convention). Minimum
       image when periodic (the reference has no cell for rMD17);
    3. no mask flag: the extras have no ``mask`` key, so the model input carries no hint of
       where atoms were removed (the reference's ``mask`` field for rMD17 holds the atomic
       numbers and its EGNN ignores it).

    The reference averages per-atom cosines (``cosine_form: mean``). The returned sample has
    ``energy = forces = None``.
    """

    extra_keys: Tuple[str, ...] = (TARGET_VECTORS_KEY, TARGET_WEIGHT_KEY)

    def __init__(self, elements: Union[int, str, Sequence[Union[int, str]]] = (1,), ratio: float = 0.15) -> None:
        self.elements = parse_elements(elements, "MaskElementsReference elements")
        self.ratio = _check_ratio(ratio, "MaskElementsReference ratio")

    def __call__(self, sample: Sample, rng: Optional[np.random.Generator] = None) -> Tuple[Sample, Extras]:
        rng = _rng(rng)
        n = sample.n_atoms
        cand = np.flatnonzero(np.isin(sample.numbers, self.elements))
        removed, keep, kept = _draw_removed(cand, n, self.ratio, rng, at_least_one=False)  # no at-least-one rule
        target = np.zeros((kept.size, 3), dtype=np.float64)
        weight = np.zeros(kept.size, dtype=np.float32)
        if removed.size:
            vec, _ = _to_removed(sample, kept, removed, farthest=True)
            target = _unit(-vec, "farthest removed atom -> atom", sample)
            weight[:] = 1.0
        new = _subset(sample, keep, sample.molecule)
        return new, {TARGET_VECTORS_KEY: target, TARGET_WEIGHT_KEY: weight}


class MaskPositions(Transform):
    """Position masking (``task: mask_position``): remove whole atoms of any element and let
    their neighbours recover *where* they were, direction and distance.

    Per call:

    1. every atom whose atomic number is in ``elements`` (``None`` = every element) is removed
       independently with probability ``ratio``; at least one is removed when candidates exist,
       never all atoms of the frame (as :class:`MaskElements`);
    2. each kept atom finds its nearest removed atom (minimum image when periodic); kept atoms
       within ``radius`` Å of it are flagged (``mask = 1``, ``target_weight = 1``);
    3. a flagged atom's target is the full displacement FROM it TO that removed atom, in Å (not a
       unit vector: the distance is part of the task), and ``mask_numbers`` carries the removed
       atom's atomic number — its element is kept as a token, its position is what is masked
       (EMPP, An et al., ICLR 2025). Unflagged atoms get 0 targets and ``mask_numbers = 0``.

    Why this target and not EMPP's distributions over a radial grid and sphere points: maskpot's
    pretext output is the model's own per-atom vector (``forces``; for energy-centric models
    -dE/dr), so what is learned lives in the energy network that fine-tuning keeps, and a vector
    is rotation-equivariant by construction. A grid/sphere classifier would need a new head that
    fine-tuning throws away. The distance is scored separately from the direction
    (:func:`maskpot.training.objectives.position_loss`: 1 - global cosine + weighted squared
    error of the length), which is the "equivariant vector + radial head" form: the vector's
    length is the radial prediction. The nearest-hole assignment keeps the target single-valued.

    Why it is harder than :class:`MaskElements` (whose direction a geometry rule reads off the
    open valence): heavy atoms are masked too (a C seen from its other neighbours), the flag
    radius (3 Å by default) reaches second neighbours and hydrogen-bond partners, which have no
    open valence pointing at the hole, and the distance must be right, not only the direction.

    The returned sample has ``energy = forces = None``.
    """

    extra_keys: Tuple[str, ...] = (MASK_KEY, MASK_NUMBERS_KEY, TARGET_VECTORS_KEY, TARGET_WEIGHT_KEY)

    def __init__(self, elements: Union[None, int, str, Sequence[Union[int, str]]] = None, ratio: float = 0.15,
                 radius: float = 3.0) -> None:
        self.elements = None if elements is None else parse_elements(elements, "MaskPositions elements")
        self.ratio = _check_ratio(ratio, "MaskPositions ratio")
        if not (float(radius) > 0 and math.isfinite(float(radius))):
            raise ValueError(f"MaskPositions radius: expected a positive length in Å, got {radius!r}")
        self.radius = float(radius)

    def __call__(self, sample: Sample, rng: Optional[np.random.Generator] = None) -> Tuple[Sample, Extras]:
        rng = _rng(rng)
        n = sample.n_atoms
        cand = np.arange(n) if self.elements is None else np.flatnonzero(np.isin(sample.numbers, self.elements))
        removed, keep, kept = _draw_removed(cand, n, self.ratio, rng)
        mask = np.zeros(kept.size, dtype=np.float32)
        numbers = np.zeros(kept.size, dtype=np.int64)
        target = np.zeros((kept.size, 3), dtype=np.float64)
        if removed.size:
            vec, dist, j = _to_removed(sample, kept, removed, farthest=False, with_index=True)
            close = dist <= self.radius
            if close.any() and float(dist[close].min()) < _MIN_LENGTH:
                raise ValueError(f"{_frame_name(sample)}: MaskPositions: two atoms coincide, the target is undefined")
            mask[close] = 1.0
            numbers[close] = sample.numbers[removed[j[close]]]
            target[close] = vec[close]
        new = _subset(sample, keep, sample.molecule)
        return new, {MASK_KEY: mask, MASK_NUMBERS_KEY: numbers, TARGET_VECTORS_KEY: target,
                     TARGET_WEIGHT_KEY: mask.copy()}


class MaskAndNoise(Transform):
    """Joint masking + denoising in one frame (``task: joint``): mask first, then noise.

    ``masking`` (a :class:`MaskPositions`, :class:`MaskWater` or :class:`MaskElements`) removes
    atoms and flags their neighbours; then every kept atom gets Gaussian noise
    ``eps ~ N(0, sigma^2)`` per component (Å). The flagged atoms keep their masking targets
    (``target_vectors`` / ``target_weight``); the other atoms get the denoising target
    ``noise_vectors = eps`` (Å) with ``noise_weight = 1``. The two sets are disjoint because both
    tasks train the same per-atom vector output, and the ``mask`` flag (a model input) tells the
    network which question an atom answers. The objective sums the two losses with weights
    (GPIP-style joint pretraining, Cui et al. 2023, in one step rather than in sequence).

    Masking targets that are displacements (:class:`MaskPositions`) are measured from the noisy
    position (``target - eps``: the hole did not move); unit directions (the seed's masking) are
    kept from the clean frame (at sigma = 0.2 Å against bonds of ~1 Å the direction barely
    changes, and a unit target cannot be re-measured without its length).
    """

    def __init__(self, masking: Transform, sigma: float = 0.2) -> None:
        if not isinstance(masking, (MaskPositions, MaskWater, MaskElements)):
            raise ValueError(f"MaskAndNoise masking: expected MaskPositions, MaskWater or MaskElements, "
                             f"got {type(masking).__name__}")
        s = float(sigma)
        if not (s > 0 and math.isfinite(s)):
            raise ValueError(f"MaskAndNoise sigma: expected a positive length in Å, got {sigma!r}")
        self.masking = masking
        self.sigma = s
        self.extra_keys = tuple(masking.extra_keys) + (NOISE_VECTORS_KEY, NOISE_WEIGHT_KEY)

    def __call__(self, sample: Sample, rng: Optional[np.random.Generator] = None) -> Tuple[Sample, Extras]:
        rng = _rng(rng)
        masked, extras = self.masking(sample, rng)
        n = masked.n_atoms
        noise = rng.normal(0.0, self.sigma, size=(n, 3))
        flagged = np.asarray(extras[TARGET_WEIGHT_KEY]) > 0
        extras = dict(extras)
        if isinstance(self.masking, MaskPositions):
            target = np.asarray(extras[TARGET_VECTORS_KEY], dtype=np.float64).copy()
            target[flagged] -= noise[flagged]
            extras[TARGET_VECTORS_KEY] = target
        noisy = masked.copy(positions=masked.positions + noise, energy=None, forces=None)
        extras[NOISE_VECTORS_KEY] = np.where(flagged[:, None], 0.0, noise)
        extras[NOISE_WEIGHT_KEY] = (~flagged).astype(np.float32)
        return noisy, extras


def _to_removed(sample: Sample, kept: np.ndarray, removed: np.ndarray, farthest: bool,
                with_index: bool = False) -> Any:
    """Displacement (minimum image) from each kept atom to its nearest (``farthest=False``) or
    farthest removed atom, and its length (and, ``with_index``, its position in ``removed``);
    first index on ties."""
    pos = sample.positions
    vec = np.zeros((kept.size, 3))
    dist = np.zeros(kept.size)
    which = np.zeros(kept.size, dtype=np.int64)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, removed.size))
    for start in range(0, kept.size, chunk):
        rows = kept[start : start + chunk]
        d = _minimum_image(pos[removed][None, :, :] - pos[rows][:, None, :], sample.cell, sample.pbc)
        r2 = np.einsum("kri,kri->kr", d, d)
        j = np.argmax(r2, axis=1) if farthest else np.argmin(r2, axis=1)
        vec[start : start + chunk] = d[np.arange(rows.size), j]
        dist[start : start + chunk] = np.sqrt(r2[np.arange(rows.size), j])
        which[start : start + chunk] = j
    return (vec, dist, which) if with_index else (vec, dist)


class Denoise(Transform):
    """Gaussian position noise: ``x' = x + eps``, ``eps ~ N(0, sigma^2 Å^2)`` per component.

    Positions are not wrapped back into the cell (so ``target == x' - x`` exactly; the neighbour
    list handles atoms outside the cell). Extras: ``mask`` = 0, ``target_weight`` = 1,
    ``target_vectors`` = ``eps`` in Å (``predict="noise"``, default) or ``eps / sigma``
    (``predict="scaled_noise"``, unit variance). Energy/forces are dropped.
    """

    PREDICT = ("noise", "scaled_noise")

    def __init__(self, sigma: float = 0.2, predict: str = "noise") -> None:
        s = float(sigma)
        if not (s > 0 and math.isfinite(s)):
            raise ValueError(f"Denoise sigma: expected a positive length in Å, got {sigma!r}")
        if predict not in self.PREDICT:
            raise ValueError(f"Denoise predict: expected one of {self.PREDICT}, got {predict!r}")
        self.sigma = s
        self.predict = predict

    def __call__(self, sample: Sample, rng: Optional[np.random.Generator] = None) -> Tuple[Sample, Extras]:
        rng = _rng(rng)
        n = sample.n_atoms
        noise = rng.normal(0.0, self.sigma, size=(n, 3))
        new = sample.copy(positions=sample.positions + noise, energy=None, forces=None)
        target = noise if self.predict == "noise" else noise / self.sigma
        return new, {
            MASK_KEY: np.zeros(n, dtype=np.float32),
            TARGET_VECTORS_KEY: target,
            TARGET_WEIGHT_KEY: np.ones(n, dtype=np.float32),
        }


def _subset(sample: Sample, keep: np.ndarray, molecule: Optional[np.ndarray]) -> Sample:
    """New sample with only the ``keep`` atoms; energy/forces dropped."""
    return Sample(
        positions=sample.positions[keep].copy(),
        numbers=sample.numbers[keep].copy(),
        cell=sample.cell.copy(),
        pbc=sample.pbc.copy(),
        energy=None,
        forces=None,
        molecule=None if molecule is None else np.asarray(molecule)[keep].copy(),
        info=dict(sample.info),
    )


# --------------------------------------------------------------------------------------------
# factory
# --------------------------------------------------------------------------------------------
_MISSING = object()


def build_transform(task: str, config: Optional[Mapping[str, Any]] = None) -> Transform:
    """Transform for a training task.

    Args:
        task: ``"mask"`` (MaskWater or MaskElements), ``"mask_position"`` (MaskPositions),
            ``"denoise"`` (Denoise), ``"joint"`` (MaskAndNoise: masking + denoising in one frame),
            or ``"energy_force"`` / ``"identity"`` (Identity, fine-tuning).
        config: optional keys (others are ignored here; :func:`maskpot.training.objectives.
            build_objective` rejects unknown keys):

            * ``mask_ratio`` (float in (0, 1]; default 0.5 for water, 0.15 for elements);
            * ``mask_elements``: ``"water"`` / ``None`` (default) -> :class:`MaskWater`; a list of
              atomic numbers or symbols (e.g. ``[1]``, ``["H"]``, ``[8]``) -> :class:`MaskElements`;
            * ``mask_radius``: flag radius in Å for MaskElements (default 1.6), ``None`` or
              ``"all"`` flags every remaining atom; not used by the reference variant;
            * ``mask_variant``: ``"local"`` (default) -> :class:`MaskElements`, ``"reference"``
              -> :class:`MaskElementsReference` (the reference code's rMD17 masking); water
              frames always use :class:`MaskWater`, which is the reference's water protocol;
            * for ``mask_position``: ``mask_elements`` ``"all"`` (default) or a list, ``mask_ratio``
              (default 0.15), ``mask_radius`` flag radius in Å (default 3.0);
            * ``joint_mask``: the masking of task ``joint``, ``"mask_position"`` (default; its
              ``mask_radius`` defaults to 1.6 Å there, bonded neighbours, so that the unflagged
              atoms left for denoising are many) or ``"mask"`` (with the keys above); its noise is
              ``noise_sigma``;
            * ``noise_sigma``: Denoise sigma, Å (default 0.2);
            * ``denoise_target``: ``"noise"`` (default) or ``"scaled_noise"``.

    Raises:
        ValueError: unknown task or invalid value (the message names the key).
    """
    cfg = dict(config or {})
    get = lambda key, default: default if cfg.get(key, _MISSING) is _MISSING else cfg[key]  # noqa: E731
    if task == "mask":
        elements = get("mask_elements", "water")
        ratio = get("mask_ratio", None)
        variant = get("mask_variant", "local")
        variant = "local" if variant is None else variant
        if not isinstance(variant, str) or variant.lower() not in MASK_VARIANTS:
            raise ValueError(f"config key 'mask_variant': expected one of {MASK_VARIANTS}, got {variant!r}")
        if elements is None or (isinstance(elements, str) and elements.lower() == "water"):
            return MaskWater(ratio=_key_float(cfg, "mask_ratio", 0.5 if ratio is None else ratio, ratio=True))
        try:
            parsed = parse_elements(elements)
        except ValueError as err:
            raise ValueError(f"config key 'mask_elements': {err}") from None
        radius = get("mask_radius", 1.6)
        if radius is None or (isinstance(radius, str) and radius.lower() in ("all", "none")):
            radius = None
        else:
            radius = _key_float(cfg, "mask_radius", radius, positive=True)
        if variant.lower() == "reference":
            return MaskElementsReference(
                elements=parsed, ratio=_key_float(cfg, "mask_ratio", 0.15 if ratio is None else ratio, ratio=True)
            )
        return MaskElements(
            elements=parsed, ratio=_key_float(cfg, "mask_ratio", 0.15 if ratio is None else ratio, ratio=True),
            radius=radius,
        )
    if task == "mask_position":
        elements = get("mask_elements", "all")
        if elements is None or (isinstance(elements, str) and elements.lower() == "all"):
            parsed_elements = None
        elif isinstance(elements, str) and elements.lower() == "water":
            raise ValueError("config key 'mask_elements': task mask_position masks elements, not water molecules: "
                             "expected 'all' or a list of atomic numbers / symbols, got 'water'")
        else:
            try:
                parsed_elements = parse_elements(elements)
            except ValueError as err:
                raise ValueError(f"config key 'mask_elements': {err}") from None
        ratio = get("mask_ratio", None)
        radius = get("mask_radius", None)
        return MaskPositions(
            elements=parsed_elements,
            ratio=_key_float(cfg, "mask_ratio", 0.15 if ratio is None else ratio, ratio=True),
            radius=_key_float(cfg, "mask_radius", 3.0 if radius is None else radius, positive=True),
        )
    if task == "joint":
        inner = get("joint_mask", "mask_position")
        inner = "mask_position" if inner is None else inner
        if not isinstance(inner, str) or inner not in JOINT_MASKS:
            raise ValueError(f"config key 'joint_mask': expected one of {JOINT_MASKS}, got {inner!r}")
        inner_cfg = dict(cfg)
        if inner == "mask_position" and get("mask_radius", None) is None:
            # joint: flag bonded neighbours only (1.6 Å, as MaskElements), so that most atoms of a
            # small molecule stay unflagged and answer the denoising question
            inner_cfg["mask_radius"] = 1.6
        masking = build_transform(inner, inner_cfg)
        if isinstance(masking, MaskElementsReference):
            raise ValueError("config key 'mask_variant': task joint needs flagged targets; the reference variant "
                             "has no flag (use mask_variant: local)")
        sigma = _key_float(cfg, "noise_sigma", get("noise_sigma", 0.2), positive=True)
        return MaskAndNoise(masking, sigma=sigma)
    if task == "denoise":
        sigma = _key_float(cfg, "noise_sigma", get("noise_sigma", 0.2), positive=True)
        predict = get("denoise_target", "noise")
        if predict not in Denoise.PREDICT:
            raise ValueError(f"config key 'denoise_target': expected one of {Denoise.PREDICT}, got {predict!r}")
        return Denoise(sigma=sigma, predict=predict)
    if task in ("energy_force", "identity", "finetune"):
        return Identity()
    raise ValueError(f"unknown task {task!r}: expected one of {PRETEXT_TASKS + ('energy_force',)}")


def _key_float(cfg: Mapping[str, Any], key: str, value: Any, ratio: bool = False, positive: bool = False) -> float:
    """``float(value)`` validated; ValueError naming the config key otherwise."""
    try:
        v = float(value)
        if isinstance(value, bool):
            raise TypeError
    except (TypeError, ValueError):
        raise ValueError(f"config key '{key}': expected a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"config key '{key}': expected a finite number, got {value!r}")
    if ratio and not (0.0 < v <= 1.0):
        raise ValueError(f"config key '{key}': expected a ratio in (0, 1], got {value!r}")
    if positive and not v > 0:
        raise ValueError(f"config key '{key}': expected a positive number, got {value!r}")
    return v
