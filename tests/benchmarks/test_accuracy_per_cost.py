"""The accuracy-per-cost benchmark's helpers: budget bookkeeping (no timing asserts) and the
MACE adapter (forces = -dE/dr, same numbers as mace-torch's own input pipeline; skipped without
mace-torch)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch = pytest.importorskip("torch")

from benchmarks.accuracy_per_cost import BudgetSpent, ComputeCap, plan_epochs  # noqa: E402


def test_plan_epochs():
    assert plan_epochs(10.0, 20, 600.0) == 20  # 60 would fit: the epoch limit wins
    assert plan_epochs(100.0, 20, 600.0) == 6  # the cap wins
    assert plan_epochs(1000.0, 20, 600.0) == 1  # at least one epoch
    with pytest.raises(ValueError):
        plan_epochs(0.0, 20, 600.0)


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class _Trainer:
    def __init__(self, epochs: int) -> None:
        self.t = {"epochs": epochs}
        self.epoch = 0


def test_compute_cap_stops_before_an_epoch_would_overrun():
    clock, trainer = _Clock(), _Trainer(epochs=10)
    seen = []
    cap = ComputeCap(250.0, clock=clock, on_epoch=lambda s, e: seen.append((s, e)))
    cap.start()
    for k in range(2):  # 100 s epochs: 100, 200 spent; 200 + 100 > 250 -> stop after the 2nd
        clock.t += 100.0
        trainer.epoch += 1
        if k == 0:
            cap(trainer, {})
        else:
            with pytest.raises(BudgetSpent):
                cap(trainer, {})
    assert cap.hit and cap.epochs == 2 and cap.spent == pytest.approx(200.0)
    assert seen == [(100.0, 1), (200.0, 2)]


def test_compute_cap_no_stop_after_the_last_epoch_and_resume_carries_spent():
    clock, trainer = _Clock(), _Trainer(epochs=3)
    cap = ComputeCap(250.0, spent=200.0, epochs=2, clock=clock)  # resumed after 2 epochs
    cap.start()
    clock.t += 100.0
    trainer.epoch = 3  # the last planned epoch: nothing left to stop
    cap(trainer, {})
    assert not cap.hit and cap.epochs == 3 and cap.spent == pytest.approx(300.0)


# ---------------------------------------------------------------------------------------------
# MACE adapter


@pytest.fixture(scope="module")
def mace_potential():
    pytest.importorskip("mace")
    pytest.importorskip("openmm")  # benchmarks.peers' water helpers
    from benchmarks.mace_adapter import mace_small_potential

    torch.set_num_threads(1)
    model = mace_small_potential(avg_num_neighbors=20.0, neighbor_backend="torch", seed=0)
    model.set_normalization({1: -0.25, 8: -1.5}, energy_scale=0.5)
    return model


def _frames(n_configs: int = 2):
    from benchmarks.peers import small_water_box
    from maskpot.data.sample import Sample

    w = small_water_box(n_molecules=8, box=10.5, n_configs=n_configs)
    return w, [Sample(c, w.numbers, w.cell(), [True, True, True]) for c in w.configs]


def test_mace_adapter_normalization_round_trip(mace_potential):
    norm = mace_potential.get_normalization()
    assert norm["energy_shift_per_species"] == {1: pytest.approx(-0.25), 8: pytest.approx(-1.5)}
    assert norm["energy_scale"] == pytest.approx(0.5)


def test_mace_adapter_matches_mace_own_inputs(mace_potential):
    """Batched maskpot frames through the adapter give what mace-torch's own data pipeline gives."""
    from benchmarks.peers import mace_batches
    from maskpot.data.sample import collate

    water, frames = _frames(2)
    out = mace_potential(collate(frames))
    n = frames[0].n_atoms
    for k, ref_in in enumerate(mace_batches(water)):
        ref = mace_potential.mace(ref_in, compute_force=True)
        assert float(out["energy"][k]) == pytest.approx(float(ref["energy"]), abs=1e-4)
        assert torch.allclose(out["forces"][k * n : (k + 1) * n].detach(), ref["forces"].detach(), atol=1e-5)


def test_mace_adapter_forces_are_minus_energy_gradient(mace_potential):
    from maskpot.data.sample import collate

    model = mace_potential
    model.double()
    try:
        _, frames = _frames(1)
        batch = collate(frames, dtype=torch.float64)
        forces = model(batch)["forces"].detach()
        pos = batch["positions"].detach().clone()
        eps = 1e-5
        rng = np.random.default_rng(0)
        for a, d in zip(rng.choice(len(pos), 4, replace=False), rng.integers(0, 3, 4)):
            plus, minus = pos.clone(), pos.clone()
            plus[a, d] += eps
            minus[a, d] -= eps
            e_plus = float(model({**batch, "positions": plus})["energy"])
            e_minus = float(model({**batch, "positions": minus})["energy"])
            assert -(e_plus - e_minus) / (2 * eps) == pytest.approx(float(forces[a, d]), abs=1e-6, rel=1e-5)
    finally:
        model.float()


def test_mace_adapter_trains_in_maskpots_loop(mace_potential, tmp_path):
    """One Trainer step: the force loss reaches MACE's weights (create_graph in train mode)."""
    import copy

    from maskpot.training.config import load_config
    from maskpot.training.objectives import build_objective
    from maskpot.training.trainer import Trainer

    _, frames = _frames(2)
    ref = frames[0].to_ase()
    for s in frames:  # labels: some forces and energies to fit
        s.energy, s.forces = -10.0, 0.1 * np.ones_like(ref.positions)
    model = copy.deepcopy(mace_potential)
    cfg = load_config(None, ["train.batch_size=2", "train.epochs=1", "train.lr=1e-3"])
    objective = build_objective("energy_force", {"force_weight": 10.0})
    trainer = Trainer(model, objective, cfg, frames, frames[:1], tmp_path)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    loss = trainer.train_step(np.arange(2), 0)
    assert np.isfinite(loss)
    changed = [k for k, v in model.named_parameters() if not torch.equal(v.detach(), before[k])]
    assert any("interactions" in k for k in changed)
