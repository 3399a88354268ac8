"""The accuracy-per-cost benchmark's helpers: budget bookkeeping (no timing asserts) and the
MACE adapter (forces = -dE/dr, same numbers as mace-torch's own input pipeline).

mace-torch is an optional dependency of maskpot (extra ``bench``) but part of the ``test``
extra, so CI runs these tests; without it they skip and say how to install it. The rMD17 tests
also skip, naming the folder, when the shared rMD17 files are absent."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

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


def _require_mace() -> None:
    pytest.importorskip("mace", reason="mace-torch not installed (it comes with pip install -e '.[test]' or '.[bench]')")


@pytest.fixture(scope="module")
def mace_potential():
    _require_mace()
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


# ---------------------------------------------------------------------------------------------
# rMD17 path (shared data and mace-torch; tiny budget)

RMD17 = ROOT.parent / "shared" / "data" / "rmd17"


def test_fixed_test_subset_is_evenly_strided():
    from benchmarks.accuracy_per_cost import fixed_test_subset

    frames, idx = fixed_test_subset(list(range(1000)), 200)
    assert idx == list(range(0, 1000, 5)) and frames == idx
    assert fixed_test_subset(list(range(7)), None)[1] == list(range(7))
    assert fixed_test_subset(list(range(7)), 50)[1] == list(range(7))


def _rmd17_or_skip():
    _require_mace()
    if not (RMD17 / "rmd17_aspirin_train_01.npz").is_file() or not (RMD17 / "rmd17_aspirin_test_01.npz").is_file():
        pytest.skip(f"rMD17 aspirin not found under {RMD17}")


def test_mace_adapter_matches_mace_own_inputs_on_a_molecule():
    """Isolated molecule (no cell, three elements): the adapter and mace-torch's own pipeline
    (what the timing calls) give the same energies and forces."""
    _rmd17_or_skip()
    from benchmarks.accuracy_per_cost import molecule_system, species_of
    from benchmarks.mace_adapter import mace_small_potential
    from benchmarks.peers import mace_batches
    from maskpot.data.io import read_dataset
    from maskpot.data.sample import collate

    frames = read_dataset(str(RMD17 / "rmd17_aspirin_test_01.npz"), index=slice(0, 2))
    species = species_of(frames)
    assert species == [1, 6, 8]
    model = mace_small_potential(avg_num_neighbors=10.0, neighbor_backend="torch", seed=0, species=species)
    model.set_normalization({1: -0.5, 6: -1.0, 8: -2.0}, energy_scale=0.7)
    out = model(collate(frames))
    n = frames[0].n_atoms
    for k, ref_in in enumerate(mace_batches(molecule_system(frames, n_configs=2), species=species)):
        ref = model.mace(ref_in, compute_force=True)
        assert float(out["energy"][k]) == pytest.approx(float(ref["energy"]), abs=1e-4)
        assert torch.allclose(out["forces"][k * n : (k + 1) * n].detach(), ref["forces"].detach(), atol=1e-5)


def test_rmd17_path_tiny_budget(tmp_path, monkeypatch):
    """The rMD17 path end to end on a tiny budget (tiny models, 10 frames, 1 epoch): one table
    row per model with its cost and ratio to MACE-small; frames, split, recipe and budget the
    same for every model; a second call resumes (trains nothing)."""
    _rmd17_or_skip()
    import json

    import benchmarks.accuracy_per_cost as apc

    tiny = {
        apc.MACE: "mace",
        "tensornet 8x1 5 Å": {"name": "tensornet", "hidden_channels": 8, "num_layers": 1, "cutoff": 5.0, "num_rbf": 8},
        "painn 8x1 3.5 Å": {"name": "painn", "hidden_channels": 8, "num_layers": 1, "cutoff": 3.5},
    }
    monkeypatch.setattr(apc, "RMD17_MODELS", tiny)
    monkeypatch.setattr(apc, "RMD17_DEFAULT", list(tiny))
    out = tmp_path / "run"
    argv = ["--dataset", "rmd17:aspirin", "--data-root", str(RMD17.parent), "--out", str(out), "--train-frames", "10",
            "--val-frames", "5", "--test-frames", "4", "--max-epochs", "1", "--cap-min", "5", "--rounds", "1",
            "--inner", "1", "--no-write"]  # fmt: skip
    res = apc.main(argv)
    models = res["models"]
    assert list(models) == list(tiny)  # no equal-epoch reruns: every model got its 1 epoch
    assert res["dataset"] == "rmd17:aspirin" and res["n_frames"] == {"train": 10, "val": 5, "test": 4}
    ref = models[apc.MACE]
    import yaml

    accurate = yaml.safe_load((apc.REPO / "configs" / "rmd17_accurate.yaml").read_text())
    for label, m in models.items():
        assert (m["max_epochs"], m["cap_s"], m["epochs_planned"], m["epochs_done"]) == (1, 300.0, 1, 1), label
        assert m["recipe"] == ref["recipe"] and m["recipe"]["train"]["batch_size"] == accurate["train"]["batch_size"]
        for key in ("force_weight", "energy_weight", "loss_kind"):  # the config's recipe, as it stands
            assert m["recipe"]["objective"][key] == accurate["objective"][key], key
        assert m["n_frames"] == ref["n_frames"] and m["data_hash"] == ref["data_hash"]
        assert m["test_hash"] == ref["test_hash"] and m["test_indices"] == [0, 250, 500, 750]
        assert m["steps"] == 2  # 10 frames, batch 5
        assert np.isfinite(m["test"]["force_mae_meV_per_A"])
    splits = [np.load(out / apc.slug(label) / "splits.npz") for label in tiny]
    for s in splits[1:]:
        for part in ("train", "val"):
            assert np.array_equal(s[part], splits[0][part])
    speed = res["speed"]
    assert speed["sizes"] == [21] and set(speed["models"]) == set(tiny)
    for s in speed["models"].values():
        assert s["ms_21"] > 0 and "vs_mace_21" in s

    text = apc.table(res)
    # the intro states the recipe that was run, read from the recorded config (not hand-written)
    assert f"force weight {float(accurate['objective']['force_weight'])}" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert [r.split(" | ")[0][2:] for r in rows] == list(tiny)
    head = [line for line in text.splitlines() if line.startswith("| model")][0]
    assert "force MAE meV/Å" in head and "ms/call @21" in head and "vs MACE-small @21" in head
    assert rows[0].split(" | ")[head.split(" | ").index("vs MACE-small @21")].startswith("1.0x")
    assert "rMD17 aspirin" in text and "at most 1 epochs and at most 5 min" in text

    results_md = tmp_path / "RESULTS.md"
    results_md.write_text("# results\n")
    bench = apc.rmd17_bench("aspirin")
    for _ in range(2):  # appended once, then replaced in place
        apc.write_results(res, log=lambda *a: None, block=bench.block, path=results_md)
    md = results_md.read_text()
    assert md.count(bench.block[0]) == 1 and md.count(bench.block[1]) == 1 and "| MACE-small |" in md

    again = apc.main(argv)  # resumable: every model skipped, timing reused
    assert json.dumps(again["models"], sort_keys=True) == json.dumps(models, sort_keys=True)
    assert json.dumps(again["speed"], sort_keys=True) == json.dumps(speed, sort_keys=True)  # (tuples: lists)
