"""train.compile: the compiled training forward equals eager (outputs and parameter gradients,
for new batch sizes without retracing), and training falls back to eager, saying why."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from maskpot.data.sample import Sample, collate
from maskpot.models import build_model
from maskpot.training import compile as compile_mod
from maskpot.training.compile import CompiledForward, compile_forward

pytest.importorskip("torch._inductor")


def _molecules(rng: np.random.Generator, sizes) -> dict:
    samples = [Sample(positions=rng.normal(size=(n, 3)) * 1.1, numbers=rng.choice([1, 6, 8], size=n),
                      cell=np.zeros((3, 3)), pbc=[False] * 3, energy=float(rng.normal()),
                      forces=rng.normal(size=(n, 3))) for n in sizes]
    return collate(samples, dtype=torch.float64)


def _loss_and_grads(forward, model: torch.nn.Module, batch: dict):
    model.zero_grad(set_to_none=True)
    out = forward(batch)
    loss = ((out["forces"] - batch["forces"]) ** 2).mean() + ((out["energy"] - batch["energy"]) ** 2).mean()
    loss.backward()
    grads = {n: (torch.zeros_like(p) if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()}
    return out, grads


@pytest.mark.parametrize("name", ["painn", "gns"])  # energy-centric (double backward) and force-centric
def test_compiled_forward_equals_eager(name: str) -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = build_model({"name": name, "species": [1, 6, 8], "cutoff": 3.0, "hidden_channels": 16,
                         "num_layers": 2, "num_rbf": 6}).double().train()  # float64: exact comparison
    first = _molecules(rng, [7, 9, 5])
    forward, why = compile_forward(model, first)
    assert why == "" and isinstance(forward, CompiledForward)
    # other atom, edge and frame counts than the traced batch
    for batch in (first, _molecules(rng, [4, 11, 6, 8, 3])):
        out_c, grads_c = _loss_and_grads(forward, model, batch)
        out_e, grads_e = _loss_and_grads(model, model, batch)
        for key in ("energy", "forces"):
            assert torch.allclose(out_c[key].detach(), out_e[key].detach(), atol=1e-10), key
        for n in grads_e:
            assert torch.allclose(grads_c[n], grads_e[n], atol=1e-9, rtol=1e-9), n
    # the parameters are read at every call: an update is seen
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.1)
    assert torch.allclose(forward(first)["energy"].detach(), model(first)["energy"].detach(), atol=1e-10)
    assert model.embedding.check_species  # restored after tracing


def test_compile_falls_back_with_a_reason(monkeypatch) -> None:
    rng = np.random.default_rng(1)
    model = build_model({"name": "painn", "species": [1, 6, 8], "cutoff": 3.0, "hidden_channels": 8,
                         "num_layers": 1}).double()
    batch = _molecules(rng, [5, 6])
    forward, why = compile_forward(model.eval(), batch)
    assert forward is model and "training mode" in why

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(compile_mod.torch, "compile", broken)
    forward, why = compile_forward(model.train(), batch)
    assert forward is model and "no C++ compiler found" in why and "RuntimeError" in why


def test_training_with_compile_matches_eager(tmp_path: Path) -> None:
    """Two epochs with train.compile: the run records that it compiled, and the loss curve
    equals the eager run's within float32 noise."""
    from maskpot.data.tip3p import generate_tip3p, save_tip3p_npz
    from maskpot.training.cli import run_training
    from maskpot.training.config import load_config

    data = tmp_path / "water.npz"
    save_tip3p_npz(data, generate_tip3p(n_molecules=8, box=7.0, n_frames=10, every=5, seed=2,
                                        equilibration_steps=50, platform="Reference", progress=False,
                                        minimize_iterations=100))
    losses = {}
    for flag in ("false", "true"):
        out = tmp_path / f"compile_{flag}"
        cfg = load_config(None, [
            f"data.path={data}", "data.splits={train: 6, val: 2, test: 2}",
            "model={name: painn, cutoff: 3.0, hidden_channels: 16, num_layers: 2}",
            f"train={{epochs: 2, batch_size: 2, lr: 0.002, num_threads: 1, compile: {flag}}}",
            f"output={{dir: {out}, progress: false, plot: false}}",
        ])
        run_training(cfg)
        summary = json.loads((out / "run.json").read_text())["summary"]
        assert summary["compile"] == ("off" if flag == "false" else summary["compile"])
        if flag == "true":
            assert summary["compile"].startswith("compiled"), summary["compile"]
        rows = (out / "metrics.csv").read_text().splitlines()
        header = rows[0].split(",")
        losses[flag] = [float(r.split(",")[header.index("train_loss")]) for r in rows[1:]]
    assert np.allclose(losses["true"], losses["false"], rtol=1e-3), losses
