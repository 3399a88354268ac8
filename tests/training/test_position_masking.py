"""Position masking (task mask_position) and joint masking + denoising (task joint)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from experiments.pretext_baseline import baseline_scores
from maskpot.data.sample import Sample
from maskpot.data.transforms import (
    MASK_KEY,
    MASK_NUMBERS_KEY,
    NOISE_VECTORS_KEY,
    NOISE_WEIGHT_KEY,
    TARGET_VECTORS_KEY,
    TARGET_WEIGHT_KEY,
    MaskAndNoise,
    MaskPositions,
    build_transform,
)
from maskpot.training.objectives import build_objective, position_loss


def _ethanol(seed: int = 0, jitter: float = 0.05) -> Sample:
    from ase.build import molecule

    atoms = molecule("CH3CH2OH")
    rng = np.random.default_rng(seed)
    pos = atoms.positions + rng.normal(0.0, jitter, atoms.positions.shape)
    return Sample(positions=pos, numbers=atoms.numbers.copy(), cell=np.zeros((3, 3)), pbc=np.zeros(3, dtype=bool))


def _water_box(seed: int = 0) -> Sample:
    """8 water molecules on a grid in a 6.2 Å periodic box, some split across the boundary."""
    rng = np.random.default_rng(seed)
    pos, z = [], []
    for ix in range(2):
        for iy in range(2):
            for iz in range(2):
                o = np.array([ix, iy, iz]) * 3.1 + rng.normal(0, 0.05, 3) - 0.3  # some O outside the cell
                pos += [o, o + [0.96, 0.0, 0.0], o + [-0.24, 0.93, 0.0]]
                z += [8, 1, 1]
    return Sample(positions=np.array(pos), numbers=np.array(z), cell=np.eye(3) * 6.2, pbc=np.ones(3, dtype=bool))


def _removed_positions(sample: Sample, new: Sample) -> np.ndarray:
    kept = {tuple(np.round(p, 9)) for p in new.positions}
    return np.array([p for p in sample.positions if tuple(np.round(p, 9)) not in kept])


def test_targets_point_at_the_removed_atom_and_carry_its_element():
    s = _ethanol()
    t = MaskPositions(ratio=0.3, radius=3.0)
    new, ex = t(s, np.random.default_rng(1))
    removed = _removed_positions(s, new)
    assert 1 <= len(removed) < s.n_atoms
    assert set(ex) == {MASK_KEY, MASK_NUMBERS_KEY, TARGET_VECTORS_KEY, TARGET_WEIGHT_KEY}
    for key in ex:
        assert len(ex[key]) == new.n_atoms
    flagged = np.flatnonzero(ex[TARGET_WEIGHT_KEY] > 0)
    assert flagged.size > 0
    assert np.array_equal(ex[MASK_KEY], ex[TARGET_WEIGHT_KEY])
    holes = new.positions[flagged] + ex[TARGET_VECTORS_KEY][flagged]
    # every predicted hole is a removed atom, the nearest one, within the flag radius
    d_all = np.linalg.norm(new.positions[flagged][:, None] - removed[None], axis=-1)
    nearest = removed[np.argmin(d_all, axis=1)]
    assert np.allclose(holes, nearest)
    assert (np.linalg.norm(ex[TARGET_VECTORS_KEY][flagged], axis=1) <= 3.0 + 1e-9).all()
    z_removed = {tuple(np.round(p, 9)): z for p, z in zip(s.positions, s.numbers)}
    assert [z_removed[tuple(np.round(h, 9))] for h in nearest] == ex[MASK_NUMBERS_KEY][flagged].tolist()
    unflagged = ex[TARGET_WEIGHT_KEY] == 0
    assert (ex[MASK_NUMBERS_KEY][unflagged] == 0).all() and not ex[TARGET_VECTORS_KEY][unflagged].any()
    assert s.n_atoms == 9 and new.energy is None and new.forces is None  # input untouched, labels dropped


def test_heavy_atoms_are_masked_too():
    s = _ethanol()
    t = MaskPositions(ratio=0.5)
    removed_z = set()
    for k in range(20):
        new, ex = t(s, np.random.default_rng(k))
        removed_z |= set(ex[MASK_NUMBERS_KEY][ex[MASK_NUMBERS_KEY] > 0].tolist())
    assert {1, 6, 8} <= removed_z
    only_o = MaskPositions(elements=["O"], ratio=0.5)
    new, ex = only_o(s, np.random.default_rng(0))
    assert 8 not in new.numbers.tolist() and set(ex[MASK_NUMBERS_KEY].tolist()) <= {0, 8}


def test_periodic_targets_use_the_minimum_image():
    s = _water_box()
    new, ex = MaskPositions(elements=["O"], ratio=0.5, radius=2.0)(s, np.random.default_rng(3))
    flagged = ex[TARGET_WEIGHT_KEY] > 0
    lengths = np.linalg.norm(ex[TARGET_VECTORS_KEY][flagged], axis=1)
    assert flagged.sum() >= 2 and (lengths < 1.2).all()  # the molecule's own H, not images a box away


def test_target_rotates_with_the_frame_and_lengths_are_invariant():
    s = _ethanol()
    q, _ = np.linalg.qr(np.random.default_rng(5).normal(size=(3, 3)))
    rot = Sample(positions=s.positions @ q.T + 3.0, numbers=s.numbers, cell=s.cell, pbc=s.pbc)
    t = MaskPositions(ratio=0.3)
    _, a = t(s, np.random.default_rng(7))
    _, b = t(rot, np.random.default_rng(7))
    assert np.allclose(a[TARGET_VECTORS_KEY] @ q.T, b[TARGET_VECTORS_KEY])
    assert np.array_equal(a[MASK_NUMBERS_KEY], b[MASK_NUMBERS_KEY])


def test_joint_transform_noises_kept_atoms_and_splits_the_targets():
    s = _ethanol()
    t = MaskAndNoise(MaskPositions(ratio=0.3, radius=1.6), sigma=0.2)
    new, ex = t(s, np.random.default_rng(2))
    clean, mex = MaskPositions(ratio=0.3, radius=1.6)(s, np.random.default_rng(2))  # same draws first
    noise = new.positions - clean.positions
    assert 0.1 < noise.std() < 0.3
    flagged = mex[TARGET_WEIGHT_KEY] > 0
    assert np.array_equal(ex[NOISE_WEIGHT_KEY], (~flagged).astype(np.float32))
    assert np.allclose(ex[NOISE_VECTORS_KEY][~flagged], noise[~flagged])
    assert not ex[NOISE_VECTORS_KEY][flagged].any()
    # the hole did not move: the noisy position plus the target is still the removed atom
    assert np.allclose(new.positions[flagged] + ex[TARGET_VECTORS_KEY][flagged],
                       clean.positions[flagged] + mex[TARGET_VECTORS_KEY][flagged])


def test_position_loss_scores_direction_and_distance():
    t = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    w = torch.ones(2)
    perfect, r2 = position_loss(t.clone(), t, w)
    assert float(perfect) == pytest.approx(0.0, abs=1e-6) and float(r2) == pytest.approx(0.0, abs=1e-6)
    short, r2 = position_loss(0.5 * t, t, w)  # right direction, half the length
    assert float(r2) == pytest.approx((0.25 + 1.0) / 2, rel=1e-5)
    assert float(short) == pytest.approx(float(r2), rel=1e-5)
    flipped, _ = position_loss(-t, t, w)
    assert float(flipped) == pytest.approx(2.0, rel=1e-5)
    none, _ = position_loss(t, t, torch.zeros(2))
    assert float(none) == 0.0


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="mask_elements"):
        build_transform("mask_position", {"mask_elements": "water"})
    with pytest.raises(ValueError, match="joint_mask"):
        build_transform("joint", {"joint_mask": "denoise"})
    with pytest.raises(ValueError, match="mask_variant"):
        build_transform("joint", {"joint_mask": "mask", "mask_elements": [1], "mask_variant": "reference"})
    with pytest.raises(ValueError, match="mask_weight"):
        build_objective("joint", {"mask_weight": 0, "denoise_weight": 0})
    assert isinstance(build_transform("joint", {}).masking, MaskPositions)
    assert build_transform("joint", {}).masking.radius == 1.6
    assert build_transform("mask_position", {}).radius == 3.0


@pytest.mark.parametrize("task", ["mask_position", "joint"])
def test_loss_falls_on_a_toy_set(task):
    from maskpot.models import build_model
    from maskpot.training.evaluate import make_batch

    torch.manual_seed(0)
    samples = [_ethanol(k) for k in range(8)]
    obj = build_objective(task, {"mask_ratio": 0.3})
    model = build_model({"name": "painn", "species": [1, 6, 8], "cutoff": 4.0, "hidden_channels": 16, "num_layers": 1})
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    fixed = make_batch(samples, range(8), obj, 0, None, torch.float32)
    first = float(obj.loss(model(dict(fixed)), fixed)[0].detach())
    for step in range(60):
        batch = make_batch(samples, range(8), obj, 0, step, torch.float32)
        loss, metrics = obj.loss(model(batch), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = float(obj.loss(model(dict(fixed)), fixed)[0].detach())
    assert last < 0.7 * first
    assert "radius_rmse" in metrics and ("vector_rmse" in metrics) == (task == "joint")


def test_element_token_reaches_the_model():
    from maskpot.models import build_model
    from maskpot.training.evaluate import make_batch

    obj = build_objective("mask_position", {"mask_ratio": 0.3})
    batch = make_batch([_ethanol()], [0], obj, 0, 0, torch.float32)
    model = build_model({"name": "painn", "species": [1, 6, 8], "cutoff": 4.0, "hidden_channels": 16, "num_layers": 1})
    a = model(dict(batch))["forces"]
    other = dict(batch)
    swap = torch.zeros(9, dtype=torch.long)
    swap[1], swap[6], swap[8] = 8, 1, 6  # another element for every removed atom
    other[MASK_NUMBERS_KEY] = swap[batch[MASK_NUMBERS_KEY]]
    b = model(other)["forces"]
    assert not torch.allclose(a, b)
    scripted = torch.jit.script(model)
    assert torch.allclose(scripted(dict(batch))["forces"], a, atol=1e-5)


def test_geometry_baseline_scores_position_masking():
    samples = [_ethanol(k) for k in range(20)]
    near = baseline_scores(samples, build_objective("mask_position", {"mask_radius": 1.6}))
    wide = baseline_scores(samples, build_objective("mask_position", {}))
    assert near["n_targets"] < wide["n_targets"]
    # bonded neighbours' open valence finds the hole; atoms up to 3 Å away are much harder
    assert near["mean_cosine"] > wide["mean_cosine"]
    assert 0.0 < near["radius_rmse"] < wide["radius_rmse"]
    joint = baseline_scores(samples, build_objective("joint", {}))
    assert 0.0 < joint["vector_rmse"] < 0.2 * np.sqrt(3) and "radius_rmse" in joint
