"""Tests of the training objectives and metrics (maskpot.training.objectives)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ase.build import molecule as ase_molecule

from maskpot.data.sample import Sample, collate
from maskpot.data.transforms import Denoise, Identity, MaskElements, MaskWater
from maskpot.training.objectives import (
    MetricAccumulator,
    build_objective,
    cosine_loss,
    denoise_loss,
    energy_force_loss,
    energy_force_metrics,
    mean_cosine,
)

T = torch.tensor


# --------------------------------------------------------------------------------------------
# cosine / denoise losses
# --------------------------------------------------------------------------------------------
PRED = T([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [5.0, 5.0, 5.0]], dtype=torch.float64)
TARGET = T([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
WEIGHT = T([1.0, 1.0, 0.0], dtype=torch.float64)


def test_cosine_loss_hand_values():
    # global: sum p.t = 1 + 1, sum |p|^2 = 1 + 2, sum |t|^2 = 2 (atom 2 has weight 0)
    assert cosine_loss(PRED, TARGET, WEIGHT, form="global").item() == pytest.approx(1 - 2 / math.sqrt(6))
    # mean: cosines 1 and 1/sqrt(2)
    assert cosine_loss(PRED, TARGET, WEIGHT, form="mean").item() == pytest.approx(1 - (1 + 1 / math.sqrt(2)) / 2)
    # unweighted includes atom 2 (cos = 1/sqrt(3))
    assert cosine_loss(PRED, TARGET, None, form="mean").item() == pytest.approx(
        1 - (1 + 1 / math.sqrt(2) + 1 / math.sqrt(3)) / 3
    )
    ref = 1 - F.cosine_similarity(PRED[:2], TARGET[:2]).mean()
    assert cosine_loss(PRED, TARGET, WEIGHT, form="mean").item() == pytest.approx(ref.item())
    assert mean_cosine(PRED, TARGET, WEIGHT).item() == pytest.approx((1 + 1 / math.sqrt(2)) / 2)


@pytest.mark.parametrize("form", ["global", "mean"])
def test_cosine_loss_limits_and_gradients(form):
    assert cosine_loss(3.0 * TARGET, TARGET, WEIGHT, form=form).item() == pytest.approx(0.0, abs=1e-12)
    assert cosine_loss(-TARGET, TARGET, WEIGHT, form=form).item() == pytest.approx(2.0)
    # predictions on unflagged atoms do not matter
    p = TARGET.clone()
    p[2] = T([-7.0, 3.0, 1.0])
    assert cosine_loss(p, TARGET, WEIGHT, form=form).item() == pytest.approx(0.0, abs=1e-12)
    # zero prediction: finite loss and gradient
    z = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
    loss = cosine_loss(z, TARGET, WEIGHT, form=form)
    loss.backward()
    assert loss.item() == pytest.approx(1.0) and torch.isfinite(z.grad).all()
    # no flagged atom: zero loss that still backpropagates
    q = PRED.clone().requires_grad_(True)
    loss = cosine_loss(q, TARGET, torch.zeros(3, dtype=torch.float64), form=form)
    loss.backward()
    assert loss.item() == 0.0 and (q.grad == 0).all()
    with pytest.raises(ValueError):
        cosine_loss(PRED, TARGET, WEIGHT, form="median")


def test_denoise_loss():
    pred = T([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [9.0, 9.0, 9.0]])
    noise = T([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    w = T([1.0, 1.0, 0.0])
    assert denoise_loss(pred, noise, w).item() == pytest.approx((1 + 4 + 1) / 6)
    assert denoise_loss(pred, noise).item() == pytest.approx(F.mse_loss(pred, noise).item())
    assert denoise_loss(noise, noise, w).item() == 0.0


# --------------------------------------------------------------------------------------------
# energy / force loss and metrics
# --------------------------------------------------------------------------------------------
def _ef_pair():
    out = {"energy": T([1.0, 2.0]), "forces": torch.zeros(6, 3)}
    batch = {
        "energy": T([0.5, 3.0]),
        "n_atoms": T([2, 4]),
        "batch": T([0, 0, 1, 1, 1, 1]),
        "forces": torch.zeros(6, 3),
    }
    batch["forces"][0, 0] = 0.6  # |dF| sum = 0.6 + 1.2 = 1.8 over 18 components
    batch["forces"][5, 2] = -1.2
    return out, batch


def test_energy_force_loss_hand_values():
    out, batch = _ef_pair()
    # per-atom energy errors: 0.5 / 2 = 0.25, -1 / 4 = -0.25
    loss, terms = energy_force_loss(out, batch, energy_weight=1.0, force_weight=500.0, kind="l1")
    assert terms["loss_energy"].item() == pytest.approx(0.25)
    assert terms["loss_forces"].item() == pytest.approx(1.8 / 18)
    assert loss.item() == pytest.approx(0.25 + 500 * 0.1)
    loss, terms = energy_force_loss(out, batch, energy_weight=2.0, force_weight=10.0, kind="mse")
    assert terms["loss_energy"].item() == pytest.approx(0.0625)
    assert terms["loss_forces"].item() == pytest.approx((0.36 + 1.44) / 18)
    assert loss.item() == pytest.approx(2 * 0.0625 + 10 * 0.1)
    loss, terms = energy_force_loss(out, batch, force_weight=0.0, kind="l1", per_atom_energy=False)
    assert loss.item() == pytest.approx(0.75)
    loss, _ = energy_force_loss(out, batch, force_weight=0.0, kind="mse", per_atom_energy=False)
    assert loss.item() == pytest.approx((0.25 + 1.0) / 2)
    # perfect prediction
    perfect = {"energy": batch["energy"].clone(), "forces": batch["forces"].clone()}
    assert energy_force_loss(perfect, batch)[0].item() == 0.0
    # gradients reach the outputs
    e = out["energy"].clone().requires_grad_(True)
    f = out["forces"].clone().requires_grad_(True)
    energy_force_loss({"energy": e, "forces": f}, batch)[0].backward()
    assert e.grad is not None and f.grad is not None and f.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="forces"):
        energy_force_loss(out, {k: v for k, v in batch.items() if k != "forces"})
    with pytest.raises(ValueError):
        energy_force_loss(out, batch, kind="huber")


def test_energy_force_metrics_hand_values():
    out, batch = _ef_pair()
    m = energy_force_metrics(out, batch)
    assert m["energy_mae_meV"] == pytest.approx(750.0)
    assert m["energy_rmse_meV"] == pytest.approx(1000 * math.sqrt((0.25 + 1.0) / 2))
    assert m["energy_mae_meV_per_atom"] == pytest.approx(250.0)
    assert m["energy_rmse_meV_per_atom"] == pytest.approx(250.0)
    assert m["force_mae_meV_per_A"] == pytest.approx(100.0)
    assert m["force_rmse_meV_per_A"] == pytest.approx(1000 * math.sqrt(1.8 / 18))


def _random_batch(rng: np.random.Generator, n_atoms):
    g = len(n_atoms)
    n = sum(n_atoms)
    w = (rng.random(n) < 0.5).astype(np.float32)
    batch = {
        "energy": torch.from_numpy(rng.normal(size=g)),
        "forces": torch.from_numpy(rng.normal(size=(n, 3))),
        "n_atoms": torch.tensor(n_atoms),
        "batch": torch.repeat_interleave(torch.arange(g), torch.tensor(n_atoms)),
        "target_vectors": torch.from_numpy(rng.normal(size=(n, 3))),
        "target_weight": torch.from_numpy(w),
    }
    out = {"energy": torch.from_numpy(rng.normal(size=g)), "forces": torch.from_numpy(rng.normal(size=(n, 3)))}
    return out, batch


def _cat(a, b):
    out = {k: torch.cat([a[0][k], b[0][k]]) for k in a[0]}
    batch = {k: torch.cat([a[1][k], b[1][k] + (2 if k == "batch" else 0)]) for k in a[1]}
    return out, batch


@pytest.mark.parametrize("vector_metric", [None, "cosine", "mse"])
def test_metric_accumulator_equals_concatenated(vector_metric):
    rng = np.random.default_rng(0)
    b1 = _random_batch(rng, [3, 5])
    b2 = _random_batch(rng, [4, 2])
    acc = MetricAccumulator(vector_metric=vector_metric)
    acc.update(*b1).update(*b2)
    ref = MetricAccumulator(vector_metric=vector_metric).update(*_cat(b1, b2)).compute()
    got = acc.compute()
    assert got.keys() == ref.keys()
    for k in ref:
        assert got[k] == pytest.approx(ref[k], rel=1e-12), k
    # "ranks": two accumulators merged (and a state round trip, as after an all-reduce)
    r0 = MetricAccumulator(vector_metric=vector_metric).update(*b1)
    r1 = MetricAccumulator(vector_metric=vector_metric).update(*b2)
    summed = r0.state() + r1.state()
    merged = MetricAccumulator(vector_metric=vector_metric).load_state(summed).compute()
    merged2 = r0.merge(r1).compute()
    for k in ref:
        assert merged[k] == pytest.approx(ref[k], rel=1e-12)
        assert merged2[k] == pytest.approx(ref[k], rel=1e-12)
    if vector_metric == "cosine":
        cat = _cat(b1, b2)
        expect = mean_cosine(cat[0]["forces"], cat[1]["target_vectors"], cat[1]["target_weight"].double())
        assert got["mean_cosine"] == pytest.approx(expect.item())


def test_metric_accumulator_loss_and_empty():
    acc = MetricAccumulator()
    assert acc.compute() == {"n_graphs": 0.0}
    rng = np.random.default_rng(1)
    acc.update(*_random_batch(rng, [3, 5]), loss=T(1.0)).update(*_random_batch(rng, [4]), loss=4.0)
    assert acc.compute()["loss"] == pytest.approx((1.0 * 2 + 4.0 * 1) / 3)
    assert acc.compute()["n_graphs"] == 3


# --------------------------------------------------------------------------------------------
# Objective objects
# --------------------------------------------------------------------------------------------
def _water_frames():
    rng = np.random.default_rng(0)
    frames = []
    for k in range(2):
        o = np.array([[1.0, 1.0, 1.0], [4.0, 1.2, 1.0], [1.0, 4.0, 1.3], [4.0, 4.0, 4.0]])
        pos = []
        for x in o:
            q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
            h1 = 0.9572 * q[0]
            th = np.deg2rad(104.52)
            pos += [x, x + h1, x + 0.9572 * (np.cos(th) * q[0] + np.sin(th) * q[1])]
        frames.append(Sample(positions=np.array(pos) - 1.0, numbers=[8, 1, 1] * 4, cell=np.eye(3) * 6.5, pbc=True,
                             energy=-1.0, forces=np.zeros((12, 3)), info={"source": "w", "frame": k}))
    return frames


def test_build_objective_properties():
    ob = build_objective("mask", {})
    assert isinstance(ob.transform, MaskWater) and ob.transform.ratio == 0.5
    assert ob.prediction_key == "forces" and ob.needs_forces_graph
    ob = build_objective("mask", {"use_vector_head": True, "mask_elements": [1], "cosine_form": "mean"})
    assert isinstance(ob.transform, MaskElements)
    assert ob.prediction_key == "vectors" and not ob.needs_forces_graph and ob.config["cosine_form"] == "mean"
    ob = build_objective("denoise", {"noise_sigma": 0.1})
    assert isinstance(ob.transform, Denoise) and ob.transform.sigma == 0.1 and ob.needs_forces_graph
    ob = build_objective("energy_force", {"mask_ratio": 0.3})  # other stages' keys are accepted
    assert isinstance(ob.transform, Identity) and ob.prediction_key == "forces" and ob.needs_forces_graph
    assert ob.config["force_weight"] == 500.0 and ob.config["loss_kind"] == "l1"
    assert not build_objective("energy_force", {"force_weight": 0}).needs_forces_graph


@pytest.mark.parametrize(
    "task, cfg, key",
    [
        ("mask", {"cosine_form": "median"}, "cosine_form"),
        ("mask", {"use_vector_head": "yes"}, "use_vector_head"),
        ("mask", {"mask_ratio": 0}, "mask_ratio"),
        ("energy_force", {"noise_sigma": -1}, "noise_sigma"),
        ("energy_force", {"loss_kind": "huber"}, "loss_kind"),
        ("energy_force", {"force_weight": -5}, "force_weight"),
        ("energy_force", {"energy_weight": "x"}, "energy_weight"),
        ("energy_force", {"energy_weight": 0, "force_weight": 0}, "energy_weight"),
        ("mask", {"mask_ration": 0.5}, "mask_ration"),
        ("masking", {}, "task"),
    ],
)
def test_build_objective_errors(task, cfg, key):
    with pytest.raises(ValueError, match=key):
        build_objective(task, cfg)


def _collated(objective, frames, seed=0):
    rng = np.random.default_rng(seed)
    pairs = [objective.transform(f, rng) for f in frames]
    samples = [p[0] for p in pairs]
    extra = {k: [p[1][k] for p in pairs] for k in pairs[0][1]}
    return collate(samples, dtype=torch.float64, extra=extra)


@pytest.mark.parametrize("form", ["global", "mean"])
def test_mask_objective_end_to_end(form):
    ob = build_objective("mask", {"cosine_form": form})
    batch = _collated(ob, _water_frames())
    assert batch["mask"].sum() == 2 * 2 * 2  # 2 frames x 2 masked molecules x 2 flagged atoms
    pred = (2.0 * batch["target_vectors"]).requires_grad_(True)
    loss, m = ob.loss({"forces": pred, "energy": torch.zeros(2)}, batch)
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert m["mean_cosine"] == pytest.approx(1.0) and m["n_flagged"] == 8 and isinstance(m["loss"], float)
    loss, m = ob.loss({"forces": -pred}, batch)
    assert loss.item() == pytest.approx(2.0)
    noisy = pred + torch.randn_like(pred)
    loss, _ = ob.loss({"forces": noisy}, batch)
    loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
    # gradient only on flagged atoms
    assert (pred.grad[batch["target_weight"] == 0] == 0).all()
    acc = ob.metric_accumulator().update({"forces": pred.detach()}, batch, loss=loss)
    assert acc.compute()["mean_cosine"] == pytest.approx(1.0)
    vec = build_objective("mask", {"use_vector_head": True})
    with pytest.raises(ValueError, match="vectors"):
        vec.loss({"forces": pred}, batch)
    with pytest.raises(ValueError, match="target_vectors"):
        ob.loss({"forces": pred}, {k: v for k, v in batch.items() if k != "target_vectors"})


def test_denoise_and_energy_force_objectives_end_to_end():
    frames = _water_frames()
    ob = build_objective("denoise", {"noise_sigma": 0.1})
    batch = _collated(ob, frames)
    clean = torch.from_numpy(np.concatenate([f.positions for f in frames]))
    np.testing.assert_allclose(batch["target_vectors"], batch["positions"] - clean, atol=1e-12)
    loss, m = ob.loss({"forces": batch["target_vectors"].clone()}, batch)
    assert loss.item() == 0.0 and m["vector_rmse"] == 0.0
    loss, m = ob.loss({"forces": torch.zeros_like(batch["positions"])}, batch)
    assert loss.item() == pytest.approx((batch["target_vectors"] ** 2).mean().item())

    ob = build_objective("energy_force", {"loss_kind": "mse", "force_weight": 10})
    batch = _collated(ob, frames)
    assert "mask" not in batch and "energy" in batch
    out = {"energy": batch["energy"] + T([0.12, -0.24], dtype=torch.float64), "forces": batch["forces"] + 0.1}
    loss, m = ob.loss(out, batch)
    assert m["loss_energy"] == pytest.approx((0.01**2 + 0.02**2) / 2)
    assert m["loss_forces"] == pytest.approx(0.01)
    assert m["loss"] == pytest.approx(m["loss_energy"] + 10 * 0.01)


def test_energy_offset_metrics() -> None:
    """Signed mean error and centred RMSE: a constant offset shows in the first, not the second."""
    batch = {"energy": torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64),
             "n_atoms": torch.tensor([2, 2, 2, 2]), "batch": torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])}
    err = torch.tensor([0.01, -0.01, 0.02, -0.02], dtype=torch.float64)
    out = {"energy": batch["energy"] + 0.5 + err}
    m = MetricAccumulator().update(out, batch).compute()
    assert m["energy_mean_error_meV"] == pytest.approx(500.0)
    assert m["energy_rmse_centred_meV"] == pytest.approx(1000.0 * float(err.pow(2).mean().sqrt()), rel=1e-6)
    assert m["energy_mae_meV"] == pytest.approx(500.0, abs=20.0)
