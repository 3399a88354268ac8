"""Shared helpers for benchmark scripts: water boxes, timing, appending to RESULTS.md."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

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


def n_params(model: torch.nn.Module) -> int:
    """Number of parameters of ``model``."""
    return int(sum(p.numel() for p in model.parameters()))


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


def markdown_rows(rows: Sequence[Sequence[object]]) -> str:
    """The body of a markdown table: one ``| a | b |`` line per row."""
    return "\n".join("| " + " | ".join(str(c) for c in row) + " |" for row in rows)


def markdown_table(header: Sequence[str], rows: List[Sequence[object]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ([markdown_rows(rows)] if rows else []))


def script_parser(doc: Optional[str]) -> argparse.ArgumentParser:
    """The command line of a benchmark script, its module docstring as the help text."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def prepare_cpu(threads: int) -> None:
    """What a benchmark does before it times anything: ``threads`` torch threads and maskpot's CPU
    allocator tuning (``tune_cpu_allocator``, as ``maskpot-md`` and ``maskpot-train`` do)."""
    from maskpot.models.perf import tune_cpu_allocator

    torch.set_num_threads(threads)
    tune_cpu_allocator()


def publish(title: str, header: Sequence[str], rows: List[Sequence[object]], notes: str, append: bool) -> str:
    """Print the table of a comparison and (``append``) add it with the machine line to RESULTS.md."""
    table = markdown_table(header, rows)
    print(table)
    if append:
        append_results(title, machine_line() + "\n\n" + table, notes)
    return table


def append_results(title: str, table: str, notes: str = "") -> None:
    """Append a dated section to benchmarks/RESULTS.md (machine and versions recorded)."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    text = f"\n## {title} ({stamp})\n\n{machine}\n\n{table}\n"
    if notes:
        text += f"\n{notes}\n"
    with open(RESULTS, "a") as fh:
        fh.write(text)


# ---------------------------------------------------------------------------------------------
# Interleaved timing: on a shared 2-core machine absolute times drift with the load of other
# jobs, so every comparison is made inside one process with the candidates called in turn
# (A, B, C, A, B, C, ...) and reported as ratios of per-round medians.


@dataclass
class Case:
    """One thing to time. ``fn()`` does ``per`` units of work (e.g. 10 MD steps -> per=10);
    ``inner`` calls are made per round (the round's value is their median)."""

    name: str
    fn: Callable[[], object]
    inner: int = 1
    per: int = 1
    warm_min: int = 5  # warm-up calls at least / at most (see settle)
    warm_max: int = 12
    cooldown: float = 0.0  # seconds of idle time after each call, not timed (let spinning threads sleep)
    wall: List[float] = field(default_factory=list)  # ms per unit, one value per round
    cpu: List[float] = field(default_factory=list)  # process CPU ms per unit (all threads)
    warmup_ms: List[float] = field(default_factory=list)

    def median(self, what: str = "wall") -> float:
        values = self.wall if what == "wall" else self.cpu
        return float(np.median(values)) if values else float("nan")


def _one_call(case: Case) -> tuple:
    c0, t0 = time.process_time(), time.perf_counter()
    case.fn()
    t1, c1 = time.perf_counter(), time.process_time()
    if case.cooldown > 0:
        time.sleep(case.cooldown)
    return 1e3 * (t1 - t0) / case.per, 1e3 * (c1 - c0) / case.per


def settle(case: Case, tol: float = 0.15) -> None:
    """Warm up: at least ``case.warm_min`` calls, then until the last three agree within ``tol``
    (at most ``case.warm_max`` calls).

    TorchScript's profiling executor records shapes on the first calls and swaps in an
    optimised graph later (measured: the 4th call of an exported model on a 648-atom box, with
    the configuration changing every call), so timing starts only after that.
    """
    for k in range(max(case.warm_min, 1), max(case.warm_max, case.warm_min) + 1):
        while len(case.warmup_ms) < k:
            case.warmup_ms.append(_one_call(case)[0])
        last = case.warmup_ms[-3:]
        if len(last) == 3 and max(last) <= (1.0 + tol) * min(last):
            return


def interleave(cases: Sequence[Case], rounds: int, warm: bool = True,
               log: Optional[Callable[[str], None]] = None) -> Sequence[Case]:
    """Time ``cases`` round-robin: ``rounds`` times, each case ``inner`` calls per round."""
    if warm:
        for case in cases:
            settle(case)
            if log:
                log(f"  warm {case.name}: " + ", ".join(f"{x:.1f}" for x in case.warmup_ms) + " ms")
    for r in range(rounds):
        for case in cases:
            walls, cpus = zip(*[_one_call(case) for _ in range(case.inner)])
            case.wall.append(float(np.median(walls)))
            case.cpu.append(float(np.median(cpus)))
        if log:
            log(f"  round {r + 1}/{rounds}: " + ", ".join(f"{c.name} {c.wall[-1]:.1f}" for c in cases))
    return cases


def ratio(reference: Case, case: Case, what: str = "wall") -> tuple:
    """(median, min, max) over rounds of reference_time / case_time (>1: case is faster)."""
    ref = reference.wall if what == "wall" else reference.cpu
    val = case.wall if what == "wall" else case.cpu
    r = np.asarray(ref[: len(val)]) / np.asarray(val[: len(ref)])
    return float(np.median(r)), float(r.min()), float(r.max())


def machine_line() -> str:
    """CPU model, visible cores, torch version and threads, load average now."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} cores visible, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch thread(s), load average {load:.1f}")
