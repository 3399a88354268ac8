"""Tests of the pretraining transforms (maskpot.data.transforms)."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import molecule as ase_molecule

from maskpot.data.sample import Sample, collate
from maskpot.data.transforms import (
    Denoise,
    Identity,
    MaskElements,
    MaskElementsReference,
    MaskWater,
    build_transform,
)

# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------
CUBIC = np.diag([12.0, 12.0, 12.0])
TRICLINIC = np.array([[12.0, 0.0, 0.0], [3.0, 12.0, 0.0], [2.0, -2.0, 12.0]])


def _water(o: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """O, H, H positions (Å) of a randomly oriented rigid water with its O at ``o``."""
    r, theta = 0.9572, np.deg2rad(104.52)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    h1 = r * q[0]
    h2 = r * (np.cos(theta) * q[0] + np.sin(theta) * q[1])
    return np.stack([o, o + h1, o + h2])


def water_box(cell: np.ndarray = CUBIC, n_side: int = 3, seed: int = 0, with_molecule: bool = False,
              shuffle: bool = False) -> Sample:
    """n_side^3 waters on a grid starting 0.1 Å from the cell faces, wrapped into the cell, so
    molecules whose H point outwards are split across the boundary."""
    rng = np.random.default_rng(seed)
    frac = (np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3) + 0.01) / n_side
    pos = np.concatenate([_water(f @ cell, rng) for f in frac])
    f = pos @ np.linalg.inv(cell)
    pos = (f - np.floor(f)) @ cell  # wrap into the cell
    numbers = np.tile([8, 1, 1], len(frac))
    mol = np.repeat(np.arange(len(frac)) * 7 + 3, 3)  # non-contiguous ids on purpose
    if shuffle:
        perm = rng.permutation(len(numbers))
        pos, numbers, mol = pos[perm], numbers[perm], mol[perm]
    forces = rng.normal(size=pos.shape)
    return Sample(positions=pos, numbers=numbers, cell=cell, pbc=True, energy=-12.3, forces=forces,
                  molecule=mol if with_molecule else None, info={"source": "box.xyz", "frame": 4})


def _snapshot(s: Sample) -> dict:
    return {k: (None if getattr(s, k) is None else np.array(getattr(s, k), copy=True))
            for k in ("positions", "numbers", "cell", "pbc", "forces", "molecule")} | {"energy": s.energy}


def _assert_unchanged(s: Sample, snap: dict) -> None:
    for k, v in snap.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(getattr(s, k), v)
        else:
            assert getattr(s, k) == v


def _kept_indices(orig: Sample, new: Sample) -> np.ndarray:
    """Original index of every atom of ``new`` (positions are copied bit-exactly, order kept)."""
    idx = []
    for p in new.positions:
        hit = np.flatnonzero((orig.positions == p).all(axis=1))
        assert hit.size == 1
        idx.append(int(hit[0]))
    idx = np.array(idx)
    assert (np.diff(idx) > 0).all()
    return idx


def _molecule_of(orig: Sample) -> np.ndarray:
    """Ground-truth molecule of each atom of an unshuffled water_box (atoms come as O,H,H)."""
    return np.repeat(np.arange(orig.n_atoms // 3), 3)


# --------------------------------------------------------------------------------------------
# MaskWater
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", [CUBIC, TRICLINIC], ids=["cubic", "triclinic"])
def test_mask_water_protocol_under_pbc(cell):
    sample = water_box(cell)
    atoms = sample.to_ase()
    # the fixture really splits molecules across the boundary
    raw = np.linalg.norm(sample.positions[1::3] - sample.positions[0::3], axis=1)
    assert (raw > 2.0).sum() >= 3
    snap = _snapshot(sample)

    ratio = 0.3
    n_water = sample.n_atoms // 3
    new, extras = MaskWater(ratio=ratio)(sample, np.random.default_rng(1))
    _assert_unchanged(sample, snap)

    k = round(ratio * n_water)
    assert new.n_atoms == sample.n_atoms - k
    kept = _kept_indices(sample, new)
    removed = np.setdiff1d(np.arange(sample.n_atoms), kept)
    assert (sample.numbers[removed] == 1).all()
    mol = _molecule_of(sample)
    assert len(np.unique(mol[removed])) == k  # one H per masked molecule

    masked_mols = set(mol[removed].tolist())
    expected_flags = np.array([mol[i] in masked_mols for i in kept], dtype=np.float32)
    for key in ("mask", "target_vectors", "target_weight"):
        assert extras[key].shape[0] == new.n_atoms
    assert extras["mask"].dtype == np.float32
    np.testing.assert_array_equal(extras["mask"], expected_flags)
    np.testing.assert_array_equal(extras["target_weight"], expected_flags)
    assert expected_flags.sum() == 2 * k

    removed_of_mol = {int(mol[r]): int(r) for r in removed}
    t = extras["target_vectors"]
    for j, i in enumerate(kept):
        if expected_flags[j]:
            ref = atoms.get_distance(i, removed_of_mol[int(mol[i])], mic=True, vector=True)
            np.testing.assert_allclose(t[j], ref / np.linalg.norm(ref), atol=1e-10)
            assert abs(np.linalg.norm(t[j]) - 1.0) < 1e-12
        else:
            np.testing.assert_array_equal(t[j], 0.0)

    assert new.energy is None and new.forces is None
    np.testing.assert_array_equal(new.cell, sample.cell)
    assert new.info["source"] == "box.xyz"
    # the returned molecule index groups the kept atoms like the ground truth
    assert new.molecule is not None
    for m in np.unique(mol[kept]):
        assert len(np.unique(new.molecule[mol[kept] == m])) == 1


def test_mask_water_no_leak():
    sample = water_box()
    new, extras = MaskWater(ratio=0.5)(sample, np.random.default_rng(3))
    kept = _kept_indices(sample, new)
    removed = np.setdiff1d(np.arange(sample.n_atoms), kept)
    for r in removed:
        # neither the removed atom's position nor any of its coordinates survive
        assert not np.isclose(new.positions, sample.positions[r], atol=1e-9).all(axis=1).any()
        for value in (new.positions, new.cell):
            assert not np.isin(sample.positions[r], value).any()
    assert new.forces is None and new.energy is None


def test_mask_water_redrawn_and_reproducible():
    sample = water_box()
    t = MaskWater(ratio=0.5)
    a = t(sample, np.random.default_rng(7))
    b = t(sample, np.random.default_rng(7))
    np.testing.assert_array_equal(a[0].positions, b[0].positions)
    for key in a[1]:
        np.testing.assert_array_equal(a[1][key], b[1][key])
    rng = np.random.default_rng(7)
    draws = {t(sample, rng)[0].positions.tobytes() for _ in range(5)}
    assert len(draws) == 5
    c = t(sample, np.random.default_rng(8))
    assert not np.array_equal(a[0].positions, c[0].positions)


def test_mask_water_uses_given_molecule_index_any_atom_order():
    sample = water_box(TRICLINIC, with_molecule=True, shuffle=True)
    atoms = sample.to_ase()
    new, extras = MaskWater(ratio=0.5)(sample, np.random.default_rng(0))
    kept = _kept_indices(sample, new)
    removed = np.setdiff1d(np.arange(sample.n_atoms), kept)
    mol = sample.molecule
    assert len(removed) == round(0.5 * 27) == len(set(mol[removed].tolist()))
    np.testing.assert_array_equal(new.molecule, mol[kept])
    removed_of_mol = {int(mol[r]): int(r) for r in removed}
    flagged = np.flatnonzero(extras["mask"] == 1)
    assert set(mol[kept[flagged]].tolist()) == set(removed_of_mol)
    for j in flagged:
        i = kept[j]
        ref = atoms.get_distance(i, removed_of_mol[int(mol[i])], mic=True, vector=True)
        np.testing.assert_allclose(extras["target_vectors"][j], ref / np.linalg.norm(ref), atol=1e-10)


def test_mask_water_count_rule():
    assert MaskWater(ratio=0.3).n_masked(27) == 8
    assert MaskWater(ratio=0.5).n_masked(27) == 14  # half rounds up
    assert MaskWater(ratio=0.1).n_masked(3) == 1  # at least one molecule per frame by default
    assert MaskWater(ratio=0.1, min_masked=0).n_masked(3) == 0
    assert MaskWater(ratio=1.0).n_masked(5) == 5 and MaskWater().n_masked(0) == 0
    with pytest.raises(ValueError, match="ratio"):
        MaskWater(ratio=0.0)


def test_mask_water_open_boundaries_and_collate():
    w = Sample(positions=_water(np.zeros(3), np.random.default_rng(0)), numbers=[8, 1, 1])
    t = MaskWater(ratio=0.5)
    s1, e1 = t(w, np.random.default_rng(0))  # 1 molecule: at least one is masked
    assert s1.n_atoms == 2 and e1["mask"].tolist() == [1.0, 1.0]
    box = water_box()
    s2, e2 = t(box, np.random.default_rng(0))
    batch = collate([s1, s2], extra={k: [e1[k], e2[k]] for k in e1})
    assert batch["mask"].shape == (s1.n_atoms + s2.n_atoms,)
    assert batch["target_vectors"].shape == (s1.n_atoms + s2.n_atoms, 3)
    assert "energy" not in batch and "forces" not in batch


@pytest.mark.parametrize(
    "mutate, words",
    [
        ("three_h", ["box.xyz", "frame 4"]),
        ("far_h", ["box.xyz", "frame 4", "1.3"]),
        ("bad_molecule", ["box.xyz", "frame 4", "molecule"]),
        ("far_molecule_h", ["box.xyz", "frame 4", "O-H"]),
        ("not_water", ["box.xyz", "frame 4"]),
    ],
)
def test_mask_water_identification_errors(mutate, words):
    s = water_box(CUBIC)
    pos, z, mol = s.positions.copy(), s.numbers.copy(), None
    if mutate == "three_h":  # an H of molecule 1 moved next to O 0: O 0 has 3 H within 1.2 Å
        pos[4] = pos[0] + np.array([0.0, 0.0, 1.0])
    elif mutate == "far_h":  # an H in the middle of nowhere
        pos[4] = pos[0] + np.array([2.0, 0.0, 0.0])
    elif mutate == "bad_molecule":
        mol = np.repeat(np.arange(27), 3)
        mol[1] = 1  # molecule 0 = O + H, molecule 1 = O + 3 H
    elif mutate == "far_molecule_h":
        mol = np.repeat(np.arange(27), 3)
        mol[[1, 4]] = mol[[4, 1]]  # swap two H between molecules: O-H distances ~4 Å
    elif mutate == "not_water":
        z[0] = 7
    bad = Sample(positions=pos, numbers=z, cell=s.cell, pbc=s.pbc, molecule=mol, info=dict(s.info))
    with pytest.raises(ValueError) as err:
        MaskWater()(bad, np.random.default_rng(0))
    for w in words:
        assert w in str(err.value)


# --------------------------------------------------------------------------------------------
# MaskElements
# --------------------------------------------------------------------------------------------
def _ethanol() -> Sample:
    atoms = ase_molecule("CH3CH2OH")
    return Sample.from_ase(atoms, energy=-5.0, forces=np.ones((len(atoms), 3)))


def test_mask_elements_hydrogen_on_ethanol():
    sample = _ethanol()
    snap = _snapshot(sample)
    t = MaskElements(elements=(1,), ratio=0.5, radius=1.6)
    for seed in range(10):
        new, ex = t(sample, np.random.default_rng(seed))
        _assert_unchanged(sample, snap)
        kept = _kept_indices(sample, new)
        removed = np.setdiff1d(np.arange(sample.n_atoms), kept)
        assert removed.size >= 1 and (sample.numbers[removed] == 1).all()
        assert new.energy is None and new.forces is None
        for j, i in enumerate(kept):
            d = sample.positions[removed] - sample.positions[i]
            r = np.linalg.norm(d, axis=1)
            nearest = int(np.argmin(r))
            if r[nearest] <= 1.6:
                assert ex["mask"][j] == 1 and ex["target_weight"][j] == 1
                np.testing.assert_allclose(ex["target_vectors"][j], d[nearest] / r[nearest], atol=1e-12)
            else:
                assert ex["mask"][j] == 0 and ex["target_weight"][j] == 0
                np.testing.assert_array_equal(ex["target_vectors"][j], 0.0)
        # every removed H's bonded heavy atom (C or O, < 1.2 Å) is flagged
        for r_ in removed:
            dist = np.linalg.norm(sample.positions[kept] - sample.positions[r_], axis=1)
            heavy = (sample.numbers[kept] > 1) & (dist < 1.2)
            assert heavy.sum() == 1 and ex["mask"][heavy].item() == 1


def test_mask_elements_at_least_one_and_all_radius():
    sample = _ethanol()
    t = MaskElements(elements=["H"], ratio=1e-9, radius=None)
    new, ex = t(sample, np.random.default_rng(0))
    assert new.n_atoms == sample.n_atoms - 1
    assert ex["mask"].sum() == new.n_atoms  # radius=None flags every remaining atom
    np.testing.assert_allclose(np.linalg.norm(ex["target_vectors"], axis=1), 1.0)


def test_mask_elements_oxygen_and_no_candidate():
    sample = _ethanol()
    new, ex = MaskElements(elements=(8,), ratio=0.15)(sample, np.random.default_rng(0))
    assert new.n_atoms == sample.n_atoms - 1 and 8 not in new.numbers
    o = sample.positions[sample.numbers == 8][0]
    flagged = new.positions[ex["mask"] == 1]
    # the C and the hydroxyl H bonded to the O are flagged, and point at it
    assert sorted(new.numbers[ex["mask"] == 1].tolist()) == [1, 6]
    d = o - flagged
    np.testing.assert_allclose(ex["target_vectors"][ex["mask"] == 1], d / np.linalg.norm(d, axis=1)[:, None])
    # a frame without candidates passes through unmasked
    new, ex = MaskElements(elements=(17,), ratio=0.5)(sample, np.random.default_rng(0))
    assert new.n_atoms == sample.n_atoms and ex["mask"].sum() == 0 and ex["target_weight"].sum() == 0


def test_mask_elements_periodic_minimum_image():
    # an H sitting across the boundary from its O
    s = Sample(positions=[[0.2, 5.0, 5.0], [9.5, 5.0, 5.0]], numbers=[8, 1], cell=np.diag([10.0] * 3), pbc=True)
    new, ex = MaskElements(elements=(1,), ratio=1.0)(s, np.random.default_rng(0))
    assert new.n_atoms == 1
    np.testing.assert_allclose(ex["target_vectors"][0], [-1.0, 0.0, 0.0], atol=1e-12)
    assert ex["mask"][0] == 1


def test_mask_elements_on_water_matches_mask_water_flags():
    sample = water_box()
    new, ex = MaskElements(elements=(1,), ratio=0.2, radius=1.6)(sample, np.random.default_rng(2))
    kept = _kept_indices(sample, new)
    removed = np.setdiff1d(np.arange(sample.n_atoms), kept)
    mol = _molecule_of(sample)
    expected = np.isin(mol[kept], mol[removed])
    # molecules with both H removed have only the O left
    np.testing.assert_array_equal(ex["mask"] == 1, expected)


# --------------------------------------------------------------------------------------------
# MaskElementsReference (mask_variant: reference)
# --------------------------------------------------------------------------------------------
def test_mask_elements_reference_targets_every_atom_from_farthest_hole():
    sample = _ethanol()
    snap = _snapshot(sample)
    t = MaskElementsReference(elements=(1,), ratio=0.5)
    n_masked = []
    for seed in range(10):
        new, ex = t(sample, np.random.default_rng(seed))
        _assert_unchanged(sample, snap)
        assert set(ex) == {"target_vectors", "target_weight"}  # no mask flag: nothing tells the model where
        assert ex["target_vectors"].shape == (new.n_atoms, 3) and ex["target_vectors"].dtype == np.float64
        assert ex["target_weight"].shape == (new.n_atoms,) and ex["target_weight"].dtype == np.float32
        assert new.energy is None and new.forces is None
        kept = _kept_indices(sample, new)
        removed = np.setdiff1d(np.arange(sample.n_atoms), kept)
        assert (sample.numbers[removed] == 1).all()
        n_masked.append(removed.size)
        if removed.size == 0:
            assert ex["target_weight"].sum() == 0
            continue
        np.testing.assert_array_equal(ex["target_weight"], 1.0)  # every kept atom is a target
        for j, i in enumerate(kept):
            d = sample.positions[i] - sample.positions[removed]  # from each removed H to the atom
            far = d[np.argmax(np.linalg.norm(d, axis=1))]
            np.testing.assert_allclose(ex["target_vectors"][j], far / np.linalg.norm(far), atol=1e-12)
    assert len(set(n_masked)) > 1  # independent draws, not a fixed count


def test_mask_elements_reference_deterministic_and_no_minimum():
    sample = _ethanol()
    t = MaskElementsReference(elements=["H"], ratio=0.3)
    a = t(sample, np.random.default_rng(7))
    b = t(sample, np.random.default_rng(7))
    np.testing.assert_array_equal(a[0].positions, b[0].positions)
    for key in a[1]:
        np.testing.assert_array_equal(a[1][key], b[1][key])
    # a tiny ratio: most frames lose nothing and have no target (no at-least-one rule)
    rng = np.random.default_rng(0)
    outs = [MaskElementsReference(ratio=1e-6)(sample, rng) for _ in range(5)]
    for new, ex in outs:
        assert new.n_atoms == sample.n_atoms and ex["target_weight"].sum() == 0
        np.testing.assert_array_equal(ex["target_vectors"], 0.0)
    # ratio 1: every H removed, the heavy atoms remain
    new, ex = MaskElementsReference(ratio=1.0)(sample, np.random.default_rng(0))
    assert (new.numbers != 1).all() and ex["target_weight"].sum() == new.n_atoms


def test_mask_elements_reference_periodic_and_collate():
    # O at x=0.2, its H across the boundary at 9.5 (minimum image 0.7 Å away, -x side)
    s = Sample(positions=[[0.2, 5.0, 5.0], [9.5, 5.0, 5.0]], numbers=[8, 1], cell=np.diag([10.0] * 3), pbc=True)
    new, ex = MaskElementsReference(ratio=1.0)(s, np.random.default_rng(0))
    assert new.n_atoms == 1
    np.testing.assert_allclose(ex["target_vectors"][0], [1.0, 0.0, 0.0], atol=1e-12)  # away from the hole
    batch = collate([new, new], extra={k: [v, v] for k, v in ex.items()})
    assert "mask" not in batch and batch["target_weight"].shape == (2,)


def test_build_transform_mask_variant():
    assert isinstance(build_transform("mask", {"mask_elements": [1]}), MaskElements)
    t = build_transform("mask", {"mask_elements": ["H"], "mask_variant": "reference", "mask_ratio": 0.5})
    assert isinstance(t, MaskElementsReference) and t.elements == (1,) and t.ratio == 0.5
    assert isinstance(build_transform("mask", {"mask_elements": "water", "mask_variant": "reference"}), MaskWater)
    with pytest.raises(ValueError, match="mask_variant"):
        build_transform("mask", {"mask_elements": [1], "mask_variant": "farthest"})


# --------------------------------------------------------------------------------------------
# Denoise / Identity / factory
# --------------------------------------------------------------------------------------------
def test_denoise():
    sample = water_box()
    snap = _snapshot(sample)
    new, ex = Denoise(sigma=0.2)(sample, np.random.default_rng(0))
    _assert_unchanged(sample, snap)
    assert not np.isclose(new.positions, sample.positions).any()
    np.testing.assert_allclose(ex["target_vectors"], new.positions - sample.positions, atol=1e-12)
    assert abs(ex["target_vectors"].std() - 0.2) < 0.03
    assert (ex["target_weight"] == 1).all() and (ex["mask"] == 0).all()
    assert new.energy is None and new.forces is None
    np.testing.assert_array_equal(new.numbers, sample.numbers)
    new2, ex2 = Denoise(sigma=0.2, predict="scaled_noise")(sample, np.random.default_rng(0))
    np.testing.assert_allclose(ex2["target_vectors"] * 0.2, new2.positions - sample.positions, atol=1e-12)


def test_identity_keeps_labels():
    sample = water_box()
    new, ex = Identity()(sample, np.random.default_rng(0))
    assert ex == {}
    assert new is not sample and new.energy == sample.energy
    np.testing.assert_array_equal(new.forces, sample.forces)


def test_build_transform():
    assert isinstance(build_transform("mask", {}), MaskWater)
    assert build_transform("mask", {"mask_ratio": 0.25}).ratio == 0.25
    t = build_transform("mask", {"mask_elements": ["H", 8], "mask_radius": "all"})
    assert isinstance(t, MaskElements) and t.elements == (1, 8) and t.radius is None and t.ratio == 0.15
    assert build_transform("denoise", {"noise_sigma": 0.1}).sigma == 0.1
    assert isinstance(build_transform("energy_force", {}), Identity)
    for task, cfg, key in [
        ("mask", {"mask_ratio": 1.5}, "mask_ratio"),
        ("mask", {"mask_ratio": "half"}, "mask_ratio"),
        ("mask", {"mask_elements": ["Xx"]}, "mask_elements"),
        ("mask", {"mask_elements": [1], "mask_radius": -1}, "mask_radius"),
        ("denoise", {"noise_sigma": 0}, "noise_sigma"),
        ("denoise", {"denoise_target": "clean"}, "denoise_target"),
    ]:
        with pytest.raises(ValueError, match=key):
            build_transform(task, cfg)
    with pytest.raises(ValueError, match="task"):
        build_transform("pretrain", {})
