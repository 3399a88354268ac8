"""Benchmark the registered models on a 648-atom water box (216 molecules, 18.6 Å cubic box).

For each model at its default config: parameter count, mean wall time of one energy+forces
call (eval) and of one training step (train mode: forward with create_graph for energy models,
MSE force loss, backward), eager and TorchScript, torch and vesin neighbour lists, float32.
Also records process CPU time per call (robust on a shared machine) and the load average.

    python benchmarks/bench_models.py [--threads 2] [--repeats 5] [--no-append]
    python benchmarks/bench_models.py --preset speed --threads 1   # the speed-target configs

Prints a markdown table and appends it to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch

from maskpot.data.neighbors import vesin_available
from maskpot.data.sample import Sample, collate
from maskpot.models import MODEL_REGISTRY, build_model
from maskpot.models.perf import tune_cpu_allocator

RESULTS = Path(__file__).parent / "RESULTS.md"


def water_box_648(seed: int = 0) -> Sample:
    from maskpot.data.tip3p import water_lattice

    box = 18.6
    pos = water_lattice(216, box, np.random.default_rng(seed))
    return Sample(positions=pos, numbers=np.tile([8, 1, 1], 216), cell=np.eye(3) * box, pbc=[True] * 3)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def timed(fn: Callable[[], None], repeats: int, warmup: int = 1) -> Tuple[float, float]:
    """Mean wall and process-CPU seconds per call."""
    for _ in range(warmup):
        fn()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - wall) / repeats, (time.process_time() - cpu) / repeats


# Named configs (model name + overrides of its defaults) for --preset.
PRESETS: Dict[str, List[Tuple[str, Dict[str, object]]]] = {
    "speed": [
        ("egnn", {}),
        ("gns", {}),
        # the painn default before issue 34 (128x3, 5 Å; rows "painn (default)" in RESULTS.md), stated
        # so the preset measures the same models; the default is now 64x1 at 3.5 Å
        ("painn", {"cutoff": 5.0, "hidden_channels": 128, "num_layers": 3}),
        ("painn", {"cutoff": 3.5, "hidden_channels": 128, "num_layers": 3}),
        ("painn", {"cutoff": 3.5, "hidden_channels": 64, "num_layers": 2}),
        ("egnn", {"cutoff": 3.5, "hidden_channels": 64, "num_layers": 3}),
    ],
}


def config_label(name: str, overrides: Dict[str, object]) -> str:
    if not overrides:
        return f"{name} (default)"
    return name + " " + ", ".join(f"{k}={v}" for k, v in overrides.items())


def bench_one(name: str, backend: str, scripted: bool, sample: Sample, repeats: int,
              overrides: Dict[str, object] | None = None, train: bool = True) -> Dict[str, float]:
    torch.manual_seed(0)
    model = build_model({"name": name, "species": [1, 8], "neighbor_backend": backend, **(overrides or {})})
    n_params = sum(p.numel() for p in model.parameters())
    net = torch.jit.script(model) if scripted else model
    batch = collate([sample], dtype=torch.float32)
    target = batch["forces"] if "forces" in batch else torch.zeros_like(batch["positions"])

    def evaluate() -> None:
        net.eval()
        out = net(dict(batch))
        out["forces"].sum().item()

    def train_step() -> None:
        net.train()
        out = net(dict(batch))
        loss = ((out["forces"] - target) ** 2).mean() + out["energy"].square().mean() * 1e-6
        for p in model.parameters():
            p.grad = None
        loss.backward()

    ev_wall, ev_cpu = timed(evaluate, repeats)
    tr_wall, tr_cpu = timed(train_step, max(1, repeats // 2 + 1)) if train else (float("nan"), float("nan"))
    edges = int(model.neighbors(batch["positions"], batch["cell"], batch["pbc"], batch["batch"])[0].shape[1])
    return {"params": n_params, "edges": edges, "eval_wall": ev_wall, "eval_cpu": ev_cpu,
            "train_wall": tr_wall, "train_cpu": tr_cpu, "cutoff": model.cutoff}


def try_export(name: str) -> str:
    """Whether torch.export works for this model (short note for RESULTS.md)."""
    torch.manual_seed(0)
    model = build_model({"name": name, "species": [1, 8], "hidden_channels": 16, "num_layers": 1}).eval()
    from ase.build import molecule

    water = Sample.from_ase(molecule("H2O"))
    batch = collate([water])
    try:
        ep = torch.export.export(model, (batch,), strict=False)
        out = ep.module()(collate([water]))
        ref = model(collate([water]))
        ok = torch.allclose(out["forces"], ref["forces"], atol=1e-5)
        return "ok" + ("" if ok else " (but outputs differ)")
    except Exception as exc:  # noqa: BLE001 - we only record what happens
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"fails: {type(exc).__name__}: {msg[:160]}"


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="*", default=sorted(MODEL_REGISTRY))
    parser.add_argument("--backends", nargs="*", default=["torch", "vesin"])
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="benchmark these named configs instead of each model's defaults (--models)")
    parser.add_argument("--no-train", action="store_true", help="skip the train-step timing")
    parser.add_argument("--no-tune-allocator", action="store_true", help="skip maskpot.models.perf.tune_cpu_allocator")
    parser.add_argument("--no-export", action="store_true", help="skip the torch.export check")
    parser.add_argument("--no-append", action="store_true", help="print only, do not append to RESULTS.md")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    tuned = False if args.no_tune_allocator else tune_cpu_allocator()
    sample = water_box_648()
    backends = [b for b in args.backends if b != "vesin" or vesin_available()]
    load_before = os.getloadavg()[0]
    rows = []
    configs = PRESETS[args.preset] if args.preset else [(name, {}) for name in args.models]
    for name, overrides in configs:
        for backend in backends:
            for scripted in (False, True):
                r = bench_one(name, backend, scripted, sample, args.repeats, overrides, not args.no_train)
                row = (f"| {config_label(name, overrides)} | {r['cutoff']:.1f} | {r['params']:,} | {r['edges']:,} | {backend} | "
                       f"{'script' if scripted else 'eager'} | {1e3 * r['eval_wall']:.0f} | {1e3 * r['eval_cpu']:.0f} | "
                       f"{1e3 * r['train_wall']:.0f} | {1e3 * r['train_cpu']:.0f} |")
                print(row, flush=True)
                rows.append(row)
    load_after = os.getloadavg()[0]
    header = [
        f"### Models: 648-atom water box, float32, {args.threads} threads "
        f"({_dt.datetime.now().strftime('%Y-%m-%d %H:%M')})",
        "",
        f"torch {torch.__version__}; CPU: {cpu_name()} ({os.cpu_count()} cores visible); "
        f"allocator tuned: {tuned}; load average {load_before:.1f} -> {load_after:.1f} "
        "(other jobs share this machine when the load exceeds the thread count: wall times are then "
        "inflated, CPU = process CPU time per call summed over threads).",
        "",
        "| model | cutoff Å | params | edges | neighbours | mode | eval wall ms | eval CPU ms | train-step wall ms | train-step CPU ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    table = "\n".join(header + rows)
    notes = []
    if not args.no_export:
        notes = ["", "torch.export (strict=False, eval mode, small config):"]
        for name in sorted({name for name, _ in configs}):
            notes.append(f"- {name}: {try_export(name)}")
    text = table + "\n" + "\n".join(notes) + "\n"
    print(text)
    if not args.no_append:
        with RESULTS.open("a") as fh:
            fh.write("\n" + text)


if __name__ == "__main__":
    main()
