"""Data-parallel training (2 CPU processes, gloo) gives the weights of single-process training
on the same global batches (energy_force task, equal shards of equal-size frames)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from maskpot.training.checkpoint import load_checkpoint
from maskpot.training.cli import run_training
from maskpot.training.config import load_config
from maskpot.training.distributed import run_local


@pytest.fixture(scope="module")
def water(tmp_path_factory) -> Path:
    from maskpot.data.tip3p import generate_tip3p, save_tip3p_npz

    path = tmp_path_factory.mktemp("ddp_data") / "water.npz"
    data = generate_tip3p(n_molecules=8, box=7.0, n_frames=12, every=5, seed=3, equilibration_steps=50,
                          platform="Reference", progress=False, minimize_iterations=100)
    save_tip3p_npz(path, data)
    return path


def _config(data: Path, out: Path, model: str) -> dict:
    return load_config(None, [
        "task=energy_force",
        f"data.path={data}",
        "data.splits={train: 8, val: 2, test: 2}",
        f"model={{name: {model}, cutoff: 3.0, hidden_channels: 8, num_layers: 1}}",
        "objective={energy_weight: 1.0, force_weight: 10.0}",
        "train={epochs: 2, batch_size: 4, lr: 0.005, dtype: float64, num_threads: 1, warmup_epochs: 0.5}",
        f"output={{dir: {out}, progress: false, plot: false}}",
    ])


def test_ddp_matches_single_process(water: Path, tmp_path: Path) -> None:
    # painn: energy model, forces by autograd with create_graph inside the DDP forward
    model = "painn"
    single = _config(water, tmp_path / "single", model)
    run_training(single)
    ddp = _config(water, tmp_path / "ddp", model)
    ddp["data"]["split_file"] = str(tmp_path / "single" / "splits.npz")
    # the worker lives in the package, so spawned processes never import this test module
    run_local(ddp, nprocs=2)

    a = load_checkpoint(tmp_path / "single" / "last.pt")
    b = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert a["step"] == b["step"] == 4
    assert b["trainer_state"]["world_size"] == 2
    for k, v in a["model_state"].items():
        assert torch.allclose(v, b["model_state"][k], rtol=1e-7, atol=1e-10), k
    # validation metrics were all-reduced over both ranks' shards
    assert abs(a["metrics"]["val_loss"] - b["metrics"]["val_loss"]) < 1e-8
    # only rank 0 wrote: one set of files, no leftovers
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir() if p.name.startswith(".")) == []
