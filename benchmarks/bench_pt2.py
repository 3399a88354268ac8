"""TorchScript vs pt2 (torch.export + AOTInductor) inference, interleaved in one process.

For each model config, one random-weight model is exported twice (``maskpot-export`` with
``--format torchscript`` and ``--format pt2``, float32), both files are loaded with
``load_exported`` and called in turn (A, B, A, B, ...) on the same water box, and the table
reports the per-round median time of one energy+forces call (neighbour list included: both
formats run their own), the ratio TorchScript / pt2 (>1: pt2 faster) with its range over
rounds, and the largest relative energy / force difference between the two files.

    python benchmarks/bench_pt2.py [--threads 1] [--atoms 648 3000] [--rounds 7] [--no-append]

Compiling each pt2 file takes ~20-60 s on CPU (a C++ compiler is needed). Appends to
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch

from benchmarks.common import Case, interleave, markdown_table, publish, ratio, water_box
from maskpot.deploy.export import call_exported, export_model, load_exported
from maskpot.models import build_model

# (label, model config) — the recommended water model first (README: PaiNN 64x1, 3.5 Å).
CONFIGS: List[Tuple[str, Dict[str, object]]] = [
    ("painn 64x1 3.5 Å", {"name": "painn", "hidden_channels": 64, "num_layers": 1, "cutoff": 3.5}),
    ("painn 64x2 3.5 Å", {"name": "painn", "hidden_channels": 64, "num_layers": 2, "cutoff": 3.5}),
    ("tensornet 64x2 3.5 Å", {"name": "tensornet", "hidden_channels": 64, "num_layers": 2, "cutoff": 3.5}),
]


def _box(n_atoms: int, seed: int = 0) -> Tuple[torch.Tensor, ...]:
    positions, numbers, side = water_box(n_atoms // 3, seed=seed)
    return (torch.tensor(positions, dtype=torch.float32), torch.tensor(numbers),
            torch.eye(3, dtype=torch.float32) * side, torch.tensor([True, True, True]))


def _relative_differences(a: torch.nn.Module, b: torch.nn.Module, args) -> Tuple[float, float]:
    ea, fa = (t.detach() for t in call_exported(a, *args))
    eb, fb = (t.detach() for t in call_exported(b, *args))
    de = abs(float(ea - eb)) / max(abs(float(ea)), 1e-12)
    df = float((fa - fb).abs().max()) / max(float(fa.abs().max()), 1e-12)
    return de, df


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--atoms", type=int, nargs="+", default=[648, 3000])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--models", nargs="*", default=None, help="labels to keep (substring match)")
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    configs = [c for c in CONFIGS if not args.models or any(m in c[0] for m in args.models)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, config in configs:
            model = build_model({**config, "species": [1, 8]})
            ts_path, pt2_path = Path(tmp) / "m.pt", Path(tmp) / "m.pt2"
            export_model(model, ts_path, file_format="torchscript")
            t0 = time.perf_counter()
            export_model(model, pt2_path, file_format="pt2")
            compile_s = time.perf_counter() - t0
            ts, _ = load_exported(ts_path)
            pt2, _ = load_exported(pt2_path)
            for n_atoms in args.atoms:
                box = _box(n_atoms)
                de, df = _relative_differences(ts, pt2, box)
                cases = [Case("torchscript", lambda m=ts, b=box: call_exported(m, *b), inner=3),
                         Case("pt2", lambda m=pt2, b=box: call_exported(m, *b), inner=3)]
                interleave(cases, args.rounds, log=print)
                med, lo, hi = ratio(cases[0], cases[1])
                rows.append([label, n_atoms, f"{cases[0].median():.1f}", f"{cases[1].median():.1f}",
                             f"**{med:.2f}x** [{lo:.2f}, {hi:.2f}]", f"{de:.1e}", f"{df:.1e}", f"{compile_s:.0f}"])
                print(markdown_table(HEADER, rows[-1:]))
    publish("TorchScript vs pt2 inference (bench_pt2.py)", HEADER, rows,
            "Energy+forces per call, neighbour list included, float32, random weights, "
            f"{args.rounds} interleaved rounds of 3 calls; ratio = TorchScript / pt2 (>1: pt2 faster), "
            "median [min, max] over rounds; dE, dF: largest relative difference between the files.",
            not args.no_append)


HEADER = ["model", "atoms", "TorchScript ms", "pt2 ms", "speed-up", "rel. dE", "rel. max dF", "pt2 compile s"]

if __name__ == "__main__":
    main()
