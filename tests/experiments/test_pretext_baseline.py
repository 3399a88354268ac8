"""Geometry-only baselines of the pretext tasks (experiments/pretext_baseline.py)."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import molecule as ase_molecule

from experiments import pretext_baseline as pb
from maskpot.data.sample import Sample
from maskpot.data.transforms import Denoise, Identity, MaskElements, MaskElementsReference, MaskWater
from maskpot.training.objectives import build_objective


def _mol(name: str, seed: int = 0) -> Sample:
    atoms = ase_molecule(name)
    atoms.positions += np.random.default_rng(seed).normal(scale=0.02, size=atoms.positions.shape)
    return Sample.from_ase(atoms)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_local_rule_points_flagged_carbon_at_its_lost_hydrogen():
    sample = _mol("CH3CH2OH")
    t = MaskElements(elements=(1,), ratio=1e-9)  # exactly one H removed (at-least-one rule)
    for seed in range(6):
        new, ex = t(sample, np.random.default_rng(seed))
        pred = pb.baseline_vectors(new, t, ex["mask"])
        assert pred.shape == (new.n_atoms, 3)
        flagged = np.flatnonzero(ex["mask"] == 1)
        assert (np.linalg.norm(pred[ex["mask"] == 0], axis=1) == 0).all()  # only flagged atoms predict
        heavy = [a for a in flagged if new.numbers[a] != 1]
        assert len(heavy) == 1
        assert _cos(pred[heavy[0]], ex["target_vectors"][heavy[0]]) > 0.9


def _water_dimer() -> Sample:
    """Donor water (O0, H1 donating to O3, H2) and acceptor water (O3, H4, H5), O...O 2.9 Å."""
    oh, hoh = 0.96, np.radians(104.5)
    o0 = np.zeros(3)
    h1 = np.array([oh, 0.0, 0.0])
    h2 = oh * np.array([np.cos(hoh), np.sin(hoh), 0.0])
    o3 = np.array([2.9, 0.0, 0.0])
    h4 = o3 + oh * np.array([0.3, 0.0, 0.954])
    h5 = o3 + oh * np.array([0.3, -0.8, -0.52])
    return Sample(positions=np.stack([o0, h1, h2, o3, h4, h5]), numbers=[8, 1, 1, 8, 1, 1], molecule=[0, 0, 0, 1, 1, 1])


def test_local_rule_hydrogen_bond_for_water():
    sample = _water_dimer()
    # remove the donating H1 by hand, as MaskWater would: O0 and H2 flagged
    keep = np.array([True, False, True, True, True, True])
    new = Sample(positions=sample.positions[keep], numbers=sample.numbers[keep])
    mask = np.array([1.0, 1.0, 0.0, 0.0, 0.0])
    pred = pb.baseline_vectors(new, MaskWater(ratio=0.5), mask)
    true_o = sample.positions[1] - sample.positions[0]
    true_h = sample.positions[1] - sample.positions[2]
    assert _cos(pred[0], true_o) > 0.99  # towards the acceptor, where the H was
    assert _cos(pred[1], true_h) > 0.95
    assert (pred[2:] == 0).all()
    # without an acceptor the O falls back on its open valence (the cone axis, cos 0.25)
    lone = Sample(positions=new.positions[:2], numbers=[8, 1])
    p = pb.baseline_vectors(lone, MaskWater(ratio=0.5), np.ones(2))
    assert _cos(p[0], true_o) == pytest.approx(-np.cos(np.radians(104.5)), abs=1e-6)


def test_reference_rule_and_scores():
    samples = [_mol("CH3CH2OH", s) for s in range(4)] + [_mol("C6H6", s) for s in range(4)]
    ref = build_objective("mask", {"mask_elements": [1], "mask_ratio": 0.5, "mask_variant": "reference"})
    assert isinstance(ref.transform, MaskElementsReference)
    new, ex = ref.transform(samples[0], np.random.default_rng(0))
    assert pb.baseline_vectors(new, ref.transform).shape == (new.n_atoms, 3)  # no flag needed
    res = pb.baseline_scores(samples, ref, seed=0)
    assert set(res) == {"mean_cosine", "n_targets", "n_frames"} and res["n_frames"] == 8
    assert 0.5 < res["mean_cosine"] <= 1.0  # far better than chance (0): the task is geometric
    # deterministic in the seed, and scores the same targets as evaluate() (sample_rng(seed, None, i))
    assert pb.baseline_scores(samples, ref, seed=0) == res
    assert pb.baseline_scores(samples, ref, seed=1) != res
    local = pb.baseline_scores(samples, build_objective("mask", {"mask_elements": [1], "mask_ratio": 0.5}), seed=0)
    assert local["mean_cosine"] > 0.6
    sub = pb.baseline_scores(samples, ref, seed=0, indices=[2, 5])
    assert sub["n_frames"] == 2


def test_denoise_rule_beats_zero():
    samples = [_mol(name, s) for name in ("CH3CH2OH", "C6H6", "CH3COOH") for s in range(5)]
    res = pb.baseline_scores(samples, Denoise(sigma=0.2), seed=0)
    assert {"vector_mse", "vector_rmse", "zero_rmse", "mean_cosine"} <= set(res)
    assert res["zero_rmse"] == pytest.approx(0.2, rel=0.15)
    assert res["vector_rmse"] < res["zero_rmse"] and res["mean_cosine"] > 0.1
    scaled = pb.baseline_scores(samples, Denoise(sigma=0.2, predict="scaled_noise"), seed=0)
    assert scaled["zero_rmse"] == pytest.approx(res["zero_rmse"] / 0.2)
    assert scaled["mean_cosine"] == pytest.approx(res["mean_cosine"])


def test_no_baseline_for_identity():
    with pytest.raises(TypeError, match="Identity"):
        pb.baseline_vectors(_mol("CH4"), Identity())
    with pytest.raises(TypeError, match="no pretext targets"):
        pb.baseline_scores([_mol("CH4")], build_objective("energy_force", {}))

