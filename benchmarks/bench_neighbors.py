"""Neighbour-list cost for water boxes of 648, 3000 and 24000 atoms (cutoffs 3.5 and 5 Å).

Usage: python benchmarks/bench_neighbors.py [--threads 2] [--no-append]
Prints a table and appends it to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

try:  # python -m benchmarks.bench_neighbors
    from benchmarks.common import append_results, markdown_table, time_call, water_box
except ImportError:  # python benchmarks/bench_neighbors.py
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import append_results, markdown_table, time_call, water_box  # noqa: E402

from maskpot.data.neighbors import make_neighbor_list, vesin_available  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    backends = ["torch"] + (["vesin"] if vesin_available() else [])
    rows = []
    for n_atoms in (648, 3000, 24000):
        positions, _, side = water_box(n_atoms // 3)
        pos = torch.tensor(positions, dtype=torch.float32)
        cell = (torch.eye(3) * side).unsqueeze(0)
        pbc = torch.ones(1, 3, dtype=torch.bool)
        batch = torch.zeros(len(pos), dtype=torch.long)
        for cutoff in (3.5, 5.0):
            for backend in backends:
                module = torch.jit.script(make_neighbor_list(cutoff, backend))
                n_edges = module(pos, cell, pbc, batch)[0].shape[1]
                ms = time_call(lambda: module(pos, cell, pbc, batch), repeats=5 if n_atoms > 5000 else 20)
                rows.append([n_atoms, f"{side:.1f}", cutoff, backend, n_edges, f"{ms:.2f}", f"{1e3 * ms / n_atoms:.2f}"])
                print(rows[-1], flush=True)
    table = markdown_table(["atoms", "box Å", "cutoff Å", "backend", "edges", "ms / call", "µs / atom"], rows)
    print(table)
    if not args.no_append:
        append_results("Neighbour list (TorchScript, float32, periodic water box)", table)


if __name__ == "__main__":
    main()
