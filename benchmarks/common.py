"""Shared helpers for benchmark scripts: water boxes, timing, appending to RESULTS.md."""

from __future__ import annotations

import datetime
import platform
import time
from pathlib import Path
from typing import Callable, List, Sequence

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def water_box(n_molecules: int, density: float = 0.0334, seed: int = 0):
    """Random-orientation water molecules on a cubic grid at ~liquid number density (molecules/Å³).

    Returns positions [3M, 3] Å, atomic numbers [3M], box side Å.
    """
    rng = np.random.default_rng(seed)
    side = (n_molecules / density) ** (1.0 / 3.0)
    n_side = int(np.ceil(n_molecules ** (1.0 / 3.0)))
    spacing = side / n_side
    sites = (np.array(list(np.ndindex(n_side, n_side, n_side)))[:n_molecules] + 0.5) * spacing
    q, _ = np.linalg.qr(rng.normal(size=(n_molecules, 3, 3)))
    local = np.array([[0.0, 0.0, 0.0], [0.757, 0.586, 0.0], [-0.757, 0.586, 0.0]])
    positions = (sites[:, None, :] + np.einsum("mij,aj->mai", q, local)).reshape(-1, 3)
    numbers = np.tile([8, 1, 1], n_molecules)
    return positions, numbers, side


def time_call(fn: Callable[[], object], repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def markdown_table(header: Sequence[str], rows: List[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def append_results(title: str, table: str, notes: str = "") -> None:
    """Append a dated section to benchmarks/RESULTS.md (machine and versions recorded)."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    text = f"\n## {title} ({stamp})\n\n{machine}\n\n{table}\n"
    if notes:
        text += f"\n{notes}\n"
    with open(RESULTS, "a") as fh:
        fh.write(text)
