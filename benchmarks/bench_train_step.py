"""Training step, eager vs ``train.compile`` (torch.compile), interleaved in one process.

One step = transform + collate the batch, forward (energy and forces = -dE/dr with a graph),
the energy_force loss (MSE, forces x100, as configs/rmd17_accurate.yaml), backward (the double
backward of the force loss), gradient clipping and an AdamW update. Two copies of the same
model (same initial weights, same batches) train side by side, one eager and one compiled
(:func:`maskpot.training.compile.compile_forward`); their per-round medians give the ratio.
Also timed: the neighbour list alone on the same batches.

Cases (issue 34): TensorNet 64x2 5 Å on rMD17 ethanol, batch 5 (real frames from
``--data-root``/rmd17); PaiNN 64x2 3.5 Å on a 64-molecule water box, batch 4 (random
orientations, random labels: the cost does not depend on the labels).

    python benchmarks/bench_train_step.py [--threads 1] [--rounds 7] [--steps 10] [--no-append]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from benchmarks.common import Case, interleave, markdown_table, publish, ratio, water_box
from maskpot.data.neighbors import neighbor_list
from maskpot.data.sample import Sample
from maskpot.models import build_model
from maskpot.training.compile import compile_forward
from maskpot.training.evaluate import make_batch
from maskpot.training.objectives import build_objective
from maskpot.training.trainer import adamw

DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"
OBJECTIVE = {"energy_weight": 1.0, "force_weight": 100.0, "loss_kind": "mse", "per_atom_energy": False}


def ethanol_frames(root: Path, n: int = 200) -> Optional[List[Sample]]:
    path = root / "rmd17" / "rmd17_ethanol_train_01.npz"
    if not path.is_file():
        return None
    from maskpot.data.io import read_dataset

    return list(read_dataset(str(path)))[:n]


def water_frames(n: int = 40, molecules: int = 64, seed: int = 0) -> List[Sample]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        pos, numbers, side = water_box(molecules, seed=seed + k)
        out.append(Sample(positions=pos, numbers=numbers, cell=np.eye(3) * side, pbc=[True] * 3,
                          energy=float(rng.normal()), forces=rng.normal(scale=0.5, size=pos.shape)))
    return out


class Stepper:
    """One model + AdamW + a forward (eager or compiled); ``step()`` trains on the next batch."""

    def __init__(self, model: torch.nn.Module, forward, frames: List[Sample], batch_size: int) -> None:
        self.model, self.forward, self.frames, self.batch_size = model, forward, frames, batch_size
        self.objective = build_objective("energy_force", OBJECTIVE)
        self.optimizer = adamw(list(model.parameters()), lr=1e-4, weight_decay=0.0)  # as the trainer
        self.k = 0
        self.losses: List[float] = []

    def batch(self) -> Dict[str, torch.Tensor]:
        idx = [(self.k * self.batch_size + i) % len(self.frames) for i in range(self.batch_size)]
        self.k += 1
        return make_batch(self.frames, idx, self.objective, 0, 0, torch.float32)

    def step(self) -> None:
        batch = self.batch()
        loss, _ = self.objective.loss(self.forward(batch), batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 10.0)
        self.optimizer.step()
        self.losses.append(float(loss.detach()))


def run_case(label: str, config: Dict[str, object], frames: List[Sample], batch_size: int, rounds: int,
             steps: int) -> Tuple[list, str]:
    torch.manual_seed(0)
    species = sorted({int(z) for s in frames for z in s.numbers})
    eager_model = build_model({**config, "species": species}).train()
    compiled_model = copy.deepcopy(eager_model)
    eager = Stepper(eager_model, eager_model, frames, batch_size)
    compiled = Stepper(compiled_model, None, frames, batch_size)
    t0 = time.perf_counter()
    forward, why = compile_forward(compiled_model, compiled.batch())
    compile_s = time.perf_counter() - t0
    if why:
        return [label, batch_size, "-", "-", f"not compiled: {why}", "-", "-", "-"], why
    compiled.forward, compiled.k = forward, 0
    cutoff = float(eager_model.cutoff)

    def neighbours() -> None:
        b = eager.batch()
        eager.k -= 1
        neighbor_list(b["positions"], b["cell"], b["pbc"], b["batch"], cutoff)

    cases = [Case("eager", eager.step, per=1, inner=steps), Case("compiled", compiled.step, per=1, inner=steps),
             Case("neighbour list", neighbours, inner=steps)]
    interleave(cases, rounds, log=print)
    med, lo, hi = ratio(cases[0], cases[1])
    n = min(len(eager.losses), len(compiled.losses))
    drift = float(np.max(np.abs(np.array(eager.losses[:n]) - np.array(compiled.losses[:n])) / np.array(eager.losses[:n])))
    atoms = sum(len(frames[i].numbers) for i in range(batch_size))
    return [label, f"{batch_size} ({atoms} atoms)", f"{cases[0].median():.1f}", f"{cases[1].median():.1f}",
            f"**{med:.2f}x** [{lo:.2f}, {hi:.2f}]", f"{cases[2].median():.1f}", f"{compile_s:.0f}", f"{drift:.1e}"], ""


HEADER = ["model / data", "batch", "eager ms/step", "compiled ms/step", "speed-up", "neighbour list ms",
          "compile s", "max rel. loss difference"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10, help="steps per case per round")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT)
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows, notes = [], []
    ethanol = ethanol_frames(args.data_root)
    if ethanol is None:
        notes.append(f"rMD17 ethanol not found under {args.data_root}: its case was skipped.")
    else:
        rows.append(run_case("tensornet 64x2 5 Å, rMD17 ethanol",
                             {"name": "tensornet", "hidden_channels": 64, "num_layers": 2, "cutoff": 5.0},
                             ethanol, 5, args.rounds, args.steps)[0])
        print(markdown_table(HEADER, rows[-1:]))
    rows.append(run_case("painn 64x2 3.5 Å, 64-molecule water box",
                         {"name": "painn", "hidden_channels": 64, "num_layers": 2, "cutoff": 3.5},
                         water_frames(), 4, args.rounds, args.steps)[0])
    publish("Training step, eager vs train.compile (bench_train_step.py)", HEADER, rows,
            "One step: batch transform + collate, forward, energy_force loss (MSE, forces x100), backward, "
            f"clipping, AdamW; float32; {args.rounds} interleaved rounds of {args.steps} steps per case; "
            "speed-up = eager / compiled, median [min, max] over rounds; the neighbour list (inside both "
            "steps) also timed alone; last column: largest relative difference between the two copies' "
            "losses over the same batches (same initial weights). " + " ".join(notes),
            not args.no_append)


if __name__ == "__main__":
    main()
