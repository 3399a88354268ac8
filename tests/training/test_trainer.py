"""Trainer: exact resume, EMA, early stopping, atomic checkpoints, frozen encoder, schedule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from maskpot import checkpoint as ckpt_mod  # the module that writes checkpoints
from maskpot.training.checkpoint import load_checkpoint
from maskpot.training.cli import run_training, train_main
from maskpot.training.config import load_config
from maskpot.training.ema import EMA
from maskpot.training.schedule import LRSchedule
from maskpot.training.setup import head_parameter_names
from maskpot.training.trainer import Interrupted, Trainer


@pytest.fixture(scope="module")
def water(tmp_path_factory) -> Path:
    """16 frames of 8 flexible TIP3P waters in a 7 Å box (OpenMM Reference, < 1 s)."""
    from maskpot.data.tip3p import generate_tip3p, save_tip3p_npz

    path = tmp_path_factory.mktemp("trainer_data") / "water.npz"
    data = generate_tip3p(n_molecules=8, box=7.0, n_frames=16, every=5, seed=1, equilibration_steps=50,
                          platform="Reference", progress=False, minimize_iterations=100)
    save_tip3p_npz(path, data)
    return path


def _cfg(data: Path, out: Path, *extra: str, task: str = "energy_force") -> dict:
    return load_config(None, [
        f"task={task}",
        f"data.path={data}",
        "data.splits={train: 8, val: 4, test: 4}",
        "model={name: painn, cutoff: 3.0, hidden_channels: 16, num_layers: 1}",
        "objective={force_weight: 10.0}",
        "train={epochs: 4, batch_size: 3, lr: 0.002, num_threads: 1, warmup_epochs: 1}",
        f"output={{dir: {out}, progress: false, plot: false}}",
        *extra,
    ])


def _states_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _interrupt_after(epoch: int):
    def cb(trainer: Trainer, row: dict) -> None:
        if row["epoch"] == epoch:
            raise Interrupted(f"simulated crash after epoch {epoch}")

    return cb


@pytest.mark.parametrize("task", ["mask", "energy_force"])
def test_resume_is_exact(water: Path, tmp_path: Path, task: str) -> None:
    extra = ["train.ema_decay=0.9"]
    run_training(_cfg(water, tmp_path / "straight", *extra, task=task))
    cfg = _cfg(water, tmp_path / "resumed", *extra, task=task)
    with pytest.raises(Interrupted):
        run_training(cfg, callbacks=[_interrupt_after(2)])
    mid = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert mid["epoch"] == 2 and not (tmp_path / "resumed" / "test_metrics.json").exists()
    # resume from the run folder alone (its config.yaml)
    assert train_main(["--resume", "--output", str(tmp_path / "resumed")]) == 0

    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert a["step"] == b["step"] == 4 * 3  # 8 frames, batch 3 -> 3 steps per epoch
    _states_equal(a["model_state"], b["model_state"])
    _states_equal(a["ema_state"], b["ema_state"])
    rows_a = (tmp_path / "straight" / "metrics.csv").read_text().splitlines()
    rows_b = (tmp_path / "resumed" / "metrics.csv").read_text().splitlines()
    assert len(rows_a) == len(rows_b) == 5
    strip = lambda rows: [",".join(r.split(",")[:5]) for r in rows]  # noqa: E731 (time_s differs)
    assert strip(rows_a) == strip(rows_b)


def test_resume_keeps_the_init_record(water: Path, tmp_path: Path) -> None:
    """run.json's ``init`` (pretrained source, task) survives --resume, which loads last.pt only."""
    import json

    run_training(_cfg(water, tmp_path / "pre", "train.epochs=1", task="mask"))
    cfg = _cfg(water, tmp_path / "ft", f"init.checkpoint={tmp_path / 'pre' / 'best.pt'}")
    with pytest.raises(Interrupted):
        run_training(cfg, callbacks=[_interrupt_after(1)])
    before = json.loads((tmp_path / "ft" / "run.json").read_text())["init"]
    assert before["source_task"] == "mask" and before["loaded"] > 0
    assert train_main(["--resume", "--output", str(tmp_path / "ft")]) == 0
    run = json.loads((tmp_path / "ft" / "run.json").read_text())
    assert run["resumed"] and run["init"] == before


def test_max_steps_stops_mid_epoch_and_resumes_exactly(water: Path, tmp_path: Path) -> None:
    run_training(_cfg(water, tmp_path / "a", "train.epochs=2"))
    summary = run_training(_cfg(water, tmp_path / "b", "train.epochs=2", "train.max_steps=4"))
    assert summary["stop_reason"] == "max_steps"
    mid = load_checkpoint(tmp_path / "b" / "last.pt")
    assert (mid["step"], mid["epoch"], mid["batch_in_epoch"]) == (4, 1, 1)
    run_training(_cfg(water, tmp_path / "b", "train.epochs=2"), resume=True)  # limit lifted
    _states_equal(load_checkpoint(tmp_path / "a" / "last.pt")["model_state"],
                  load_checkpoint(tmp_path / "b" / "last.pt")["model_state"])


def test_ema_unit_and_checkpoint(water: Path, tmp_path: Path) -> None:
    lin = torch.nn.Linear(2, 1)
    ema = EMA(lin, decay=0.5, use_warmup=False)
    w0 = lin.weight.detach().clone()
    with torch.no_grad():
        lin.weight.add_(1.0)
    ema.update(lin)
    assert torch.allclose(ema.shadow["weight"], w0 + 0.5)
    with ema.average_weights(lin):
        assert torch.allclose(lin.weight, w0 + 0.5)
    assert torch.allclose(lin.weight, w0 + 1.0)  # restored

    run_training(_cfg(water, tmp_path / "ema", "train.epochs=2", "train.ema_decay=0.8"))
    ck = load_checkpoint(tmp_path / "ema" / "last.pt")
    assert ck["ema_extra"]["num_updates"] == 6
    diff = [not torch.equal(ck["ema_state"][k], v) for k, v in ck["model_state"].items() if v.is_floating_point()]
    assert any(diff)
    from maskpot.training.checkpoint import model_from_checkpoint

    m = model_from_checkpoint(tmp_path / "ema" / "last.pt", use_ema=True)
    _states_equal(m.state_dict(), ck["ema_state"])


def test_early_stopping(water: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def worse_every_epoch(self):
        calls.append(1)
        return {"loss": float(len(calls))}

    monkeypatch.setattr(Trainer, "validate", worse_every_epoch)
    summary = run_training(_cfg(water, tmp_path / "es", "train.epochs=10", "train.early_stopping_patience=2"))
    assert summary["epochs_done"] == 3 and summary["best_epoch"] == 1
    assert summary["stop_reason"].startswith("early stopping")
    assert load_checkpoint(tmp_path / "es" / "best.pt")["epoch"] == 1


def test_checkpoint_write_is_atomic(water: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "atomic"
    run_training(_cfg(water, out, "train.epochs=1"))
    good = (out / "last.pt").read_bytes()
    real_save = torch.save

    def crashing_save(obj, f, *a, **kw):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(ckpt_mod.torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        run_training(_cfg(water, out, "train.epochs=2"), resume=True)
    monkeypatch.setattr(ckpt_mod.torch, "save", real_save)
    assert (out / "last.pt").read_bytes() == good  # the old checkpoint is untouched
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temporary left
    load_checkpoint(out / "last.pt")


def test_freeze_encoder_keeps_encoder_weights(water: Path, tmp_path: Path) -> None:
    run_training(_cfg(water, tmp_path / "pre", "train.epochs=1", task="mask"))
    init = tmp_path / "pre" / "best.pt"
    run_training(_cfg(water, tmp_path / "ft", "train.epochs=2", f"init.checkpoint={init}",
                      "init.freeze_encoder=true", "init.use_ema=false"))
    before = load_checkpoint(init)["model_state"]
    after = load_checkpoint(tmp_path / "ft" / "last.pt")
    from maskpot.models import build_model

    heads = set(head_parameter_names(build_model(after["model_config"])))
    assert heads and all(k.startswith("energy_head") for k in heads)
    changed = {k for k, v in after["model_state"].items() if k in before and not torch.equal(v, before[k])}
    # only the heads and the refitted normalisation buffers change
    assert changed - heads <= {"normalization.energy_shift", "normalization.energy_scale", "normalization.force_scale"}
    assert changed & heads


def test_lr_schedule() -> None:
    s = LRSchedule("cosine", 1.0, total_steps=10, warmup_steps=2, min_lr=0.1)
    lrs = [s.lr(i) for i in range(11)]
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0) and lrs[2] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(0.1) and all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
    p = LRSchedule("plateau", 1.0, total_steps=10, factor=0.5, patience=1)
    for v in (1.0, 1.0, 1.0):
        p.epoch_end(v)
    assert p.lr(5) == pytest.approx(0.5)
    q = LRSchedule("plateau", 1.0, total_steps=10)
    q.load_state_dict(p.state_dict())
    assert q.lr(5) == p.lr(5)
