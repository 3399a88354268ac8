"""Sixty Adam steps on a tiny labelled TIP3P dataset lower each model's force error."""

import numpy as np
import pytest
import torch

from maskpot.data.sample import Sample, collate
from model_helpers import MODEL_NAMES, make_model


@pytest.fixture(scope="session")
def tip3p_frames():
    """16 frames of 8 flexible TIP3P waters in a 6.2 Å box (OpenMM Reference platform, ~2 s)."""
    from maskpot.data.tip3p import generate_tip3p

    data = generate_tip3p(n_molecules=8, box=6.2, n_frames=16, every=20, seed=0, equilibration_steps=200,
                          platform="Reference", progress=False, minimize_iterations=200)
    return [
        Sample(positions=data["positions"][k], numbers=data["numbers"], cell=data["cell"][k], pbc=data["pbc"],
               energy=float(data["energy"][k]), forces=data["forces"][k])
        for k in range(len(data["energy"]))
    ]


def force_mae(model, batch):
    model.eval()
    out = model(dict(batch))
    return float((out["forces"].detach() - batch["forces"]).abs().mean())


# (steps, learning rate) where the default 60 steps at 3e-3 are not enough: the reference EGNN's
# raw |r_ij|^2 input (one number per edge, no radial basis) learns slower and oscillates at 3e-3.
SLOW_LEARNERS = {"egnn-reference": (300, 1e-3)}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_training_lowers_force_error(name, tip3p_frames):
    torch.manual_seed(0)
    train, held_out = collate(tip3p_frames[:12]), collate(tip3p_frames[12:])
    model = make_model(name, hidden_channels=32, species=[1, 8])
    f_std = float(train["forces"].std())
    e_per_atom = float((train["energy"] / train["n_atoms"]).mean())
    model.set_normalization({1: e_per_atom, 8: e_per_atom}, energy_scale=f_std, force_scale=f_std)
    before_train, before_test = force_mae(model, train), force_mae(model, held_out)
    steps, lr = SLOW_LEARNERS.get(name, (60, 3e-3))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        model.train()
        out = model(dict(train))
        loss = ((out["forces"] - train["forces"]) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after_train, after_test = force_mae(model, train), force_mae(model, held_out)
    assert np.isfinite(after_train)
    assert after_train < 0.8 * before_train, (before_train, after_train)
    assert after_test < 0.85 * before_test, (before_test, after_test)
