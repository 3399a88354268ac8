"""Where the time of one step goes, for the fast models, and training throughput.

Per-step breakdown (one process, interleaved, medians of per-round values):

* neighbour list: the model's own neighbour-list module (vesin when installed);
* forward: edge vectors + embedding + interaction layers + energy, neighbour list given;
* backward: forces = -dE/dr by autograd (forward+backward minus forward);
* eager module: the export wrapper (``ExportedPotential``) around the eager model — NL +
  forward + backward + input checks;
* TorchScript module: the exported file as loaded by the engines (``load_exported``);
* ASE glue: ``MaskpotCalculator`` (numpy <-> torch, checks, ASE bookkeeping) minus the
  TorchScript module call;
* OpenMM glue: one MD step with the model as an ``openmm.PythonForce`` (State -> numpy ->
  torch -> kJ/mol) minus the TorchScript module call.

Both glues are also measured with a zero-cost null model exported the same way (engine call
minus module call), which is much less noisy than the difference of two model calls.

Training throughput: frames per second of ``maskpot.training.trainer.Trainer.train_step``
(``make_batch`` with the objective's transform, forward, loss, backward, gradient clipping,
AdamW, EMA when on) for masked pretraining (task ``mask``) and fine-tuning
(``energy_force``), on TIP3P frames of 64 waters in a 12.42 Å box (the water_box example's
size) with its batch size 4.

    python -m benchmarks.bench_breakdown [--size 648] [--rounds 5]
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from benchmarks import peers
from benchmarks.common import Case, interleave, machine_line, markdown_rows, prepare_cpu, script_parser

BREAKDOWN_MODELS = peers.SMALL


# ---------------------------------------------------------------------------------------------
# per-step breakdown


class NullModel(torch.nn.Module):
    """A zero-cost stand-in with the model contract (energy 0, forces 0): exported and run
    through the engines, its time is the engine glue alone (plus the export wrapper)."""

    def __init__(self) -> None:
        super().__init__()
        self.kind = "energy"
        self.cutoff = 3.5
        self.species = [1, 8]

    def forward(self, data: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        pos = data["positions"]
        return {"energy": torch.zeros(1, dtype=pos.dtype), "forces": torch.zeros_like(pos)}


def glue_cases(water: peers.WaterBox, folder: Path, openmm: bool = True) -> List[Case]:
    from maskpot.deploy.export import export_model, load_exported

    path = Path(folder) / "null_model.pt"
    export_model(NullModel(), path)
    scripted, _ = load_exported(path)
    cases = [
        peers.module_case("null: TorchScript module", scripted, water, inner=5),
        peers.ase_case("null: ASE calculator", peers.maskpot_calculator(path), water, inner=5),
    ]
    if openmm:
        cases.append(peers.openmm_pythonforce_case("null: OpenMM PythonForce step", path, water, inner=5))
    return cases


def breakdown_cases(label: str, config: Dict[str, object], water: peers.WaterBox, folder: Path,
                    openmm: bool = True) -> List[Case]:
    from maskpot.data.neighbors import edge_vectors
    from maskpot.deploy.export import ExportedPotential, load_exported

    model = peers.build(config)
    path = peers.export(model, folder, "bd_" + config["name"])
    numbers = torch.as_tensor(water.numbers, dtype=torch.long)
    cell = torch.as_tensor(water.cell(), dtype=torch.float32).unsqueeze(0)
    pbc = torch.ones(1, 3, dtype=torch.bool)
    batch = torch.zeros(len(numbers), dtype=torch.long)
    pos = [torch.as_tensor(c, dtype=torch.float32) for c in water.configs]
    with torch.no_grad():
        pre = [model.neighbors(p, cell, pbc, batch) for p in pos]
    state = {"k": 0}

    def nxt() -> int:
        state["k"] = (state["k"] + 1) % len(pos)
        return state["k"]

    def nl() -> None:
        model.neighbors(pos[nxt()], cell, pbc, batch)

    def energy_of(k: int):
        p = pos[k].detach().clone().requires_grad_()
        edge_index, _, shifts = pre[k]
        vec = edge_vectors(p, cell, batch, edge_index, shifts)
        species = model.embedding.species_index(numbers)
        h0 = model.embedding(species, None)
        atomic, _ = model.atomic_energies(h0, edge_index, vec)
        return model.normalization(atomic, species, batch, 1), p

    def forward() -> None:
        e, _ = energy_of(nxt())
        float(e.detach().sum())

    def forward_backward() -> None:
        e, p = energy_of(nxt())
        (g,) = torch.autograd.grad([e.sum()], [p])
        float(g[0, 0])

    scripted, _ = load_exported(path)
    eager = ExportedPotential(model).eval()
    short = label.split(" ")[0]
    cases = [
        Case(f"{short}: neighbour list", nl, inner=5),
        Case(f"{short}: forward", forward, inner=3),
        Case(f"{short}: forward+backward", forward_backward, inner=3),
        peers.module_case(f"{short}: eager module", eager, water, inner=3),
        peers.module_case(f"{short}: TorchScript module", scripted, water, inner=3),
        peers.ase_case(f"{short}: ASE calculator", peers.maskpot_calculator(path), water, inner=3),
    ]
    if openmm:
        cases.append(peers.openmm_pythonforce_case(f"{short}: OpenMM PythonForce step", path, water, inner=3))
    return cases


def breakdown_rows(cases: Sequence[Case], glue: Sequence[Case] = ()) -> List[List[str]]:
    """Derived per-round components -> rows [component, ms, % of the ASE call].

    Engine glue comes from the null model (``glue`` cases) when given: engine call minus the
    null model's module call, a small difference of small numbers, so far less noisy than the
    difference of two model calls."""
    by = {c.name.split(": ", 1)[1]: np.asarray(c.wall) for c in cases}
    null = {c.name.split(": ", 1)[1]: np.asarray(c.wall) for c in glue}
    ase = by["ASE calculator"]
    script = by["TorchScript module"]
    comps = [
        ("neighbour list", by["neighbour list"]),
        ("forward (layers + energy)", by["forward"]),
        ("backward (forces by autograd)", by["forward+backward"] - by["forward"]),
        ("rest of the module call (export wrapper, executor) = module - NL - fwd - bwd",
         script - by["neighbour list"] - by["forward+backward"]),
        ("= TorchScript module call, as engines make it", script),
        ("(eager module, for comparison)", by["eager module"]),
    ]
    if "ASE calculator" in null:
        comps.append(("ASE glue (null model: calculator - module)", null["ASE calculator"] - null["TorchScript module"]))
    comps += [("ASE glue (this model: calculator - module)", ase - script), ("= ASE calculator call", ase)]
    if "OpenMM PythonForce step" in by:
        pf = by["OpenMM PythonForce step"]
        if "OpenMM PythonForce step" in null:
            comps.append(("OpenMM PythonForce glue (null model: MD step - module)",
                          null["OpenMM PythonForce step"] - null["TorchScript module"]))
        comps += [("OpenMM PythonForce glue (this model: MD step - module)", pf - script),
                  ("= OpenMM MD step (PythonForce)", pf)]
    med_ase = float(np.median(ase))
    return [[name, f"{float(np.median(v)):.2f}", f"{100 * float(np.median(v)) / med_ase:.0f} %"] for name, v in comps]


def run_breakdown(size: int = 648, rounds: int = 5, models: Sequence[str] = BREAKDOWN_MODELS, water=None,
                  openmm: bool = True, log=print) -> Dict[str, object]:
    water = water if water is not None else peers.water_box(size)
    folder = peers.temp_dir()
    groups = {label: breakdown_cases(label, peers.MODELS[label], water, folder, openmm) for label in models}
    glue = glue_cases(water, folder, openmm)
    interleave([c for cs in groups.values() for c in cs] + glue, rounds, log=log)
    return {"machine": machine_line(), "size": water.n_atoms, "rounds": rounds,
            "rows": {label: breakdown_rows(cs, glue) for label, cs in groups.items()},
            "raw": {c.name: c.wall for cs in list(groups.values()) + [glue] for c in cs}}


def breakdown_markdown(res: Dict[str, object]) -> str:
    out = []
    for label, rows in res["rows"].items():
        out.append(f"**{label}**, {res['size']} atoms (ms per call, median over {res['rounds']} interleaved rounds):\n")
        out.append("| component | ms | % of ASE call |\n|---|---|---|")
        out += ["| " + " | ".join(r) + " |" for r in rows]
        out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# training throughput


def tip3p_samples(n_molecules: int = 64, box: float = 12.42, n_frames: int = 8, every: int = 20, seed: int = 0):
    """Labelled frames (OpenMM flexible TIP3P energies and forces, eV and eV/Å)."""
    import openmm
    from openmm import unit

    from maskpot.data.sample import Sample
    from maskpot.data.tip3p import kj_per_mol_to_ev, state_arrays, water_lattice

    _, system, platform, props = peers.openmm_water(n_molecules, box)
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1.0 / unit.picosecond, 0.5 * unit.femtosecond)
    integrator.setRandomNumberSeed(seed + 1)
    context = openmm.Context(system, integrator, platform, props)
    context.setPositions(water_lattice(n_molecules, box, np.random.default_rng(seed)) * unit.angstrom)
    openmm.LocalEnergyMinimizer.minimize(context, 10.0, 200)
    context.setVelocitiesToTemperature(300 * unit.kelvin, seed + 1)
    ev = kj_per_mol_to_ev()
    out = []
    for _ in range(n_frames):
        integrator.step(every)
        state = context.getState(getPositions=True, getEnergy=True, getForces=True)
        pos, energy, forces, cell = state_arrays(state, ev)
        out.append(Sample(positions=pos, numbers=np.tile([8, 1, 1], n_molecules), cell=cell, pbc=[True] * 3,
                          energy=energy, forces=forces, molecule=np.repeat(np.arange(n_molecules), 3)))
    return out


#: Objective and train settings of the two stages (configs/water_pretrain_mask.yaml,
#: configs/water_finetune.yaml).
STAGES = {
    "pretrain (mask)": ("mask", {"mask_ratio": 0.5, "cosine_form": "global"}, {"ema_decay": 0.0}),
    "fine-tune (energy_force)": ("energy_force", {"energy_weight": 1.0, "force_weight": 500.0, "loss_kind": "l1"},
                                 {"ema_decay": 0.99}),
}


def trainer_case(label: str, config: Dict[str, object], stage: str, samples, batch_size: int, out_dir: Path) -> Case:
    from maskpot.training.config import DEFAULTS, merge, validate_config
    from maskpot.training.objectives import build_objective
    from maskpot.training.trainer import Trainer

    task, objective_cfg, train_cfg = STAGES[stage]
    model = peers.build(config, backend="auto").train()
    cfg = validate_config(merge(DEFAULTS, {
        "task": task, "objective": objective_cfg,
        "train": {"batch_size": batch_size, "epochs": 1, "lr": 1e-4, "grad_clip": 10.0, **train_cfg},
        "output": {"dir": str(out_dir), "progress": False, "plot": False},
    }))  # fmt: skip
    trainer = Trainer(model, build_objective(task, objective_cfg), cfg, samples, [], out_dir)
    order = np.arange(len(samples))
    state = {"k": 0}

    def fn() -> None:
        k = state["k"]
        idx = order[(k * batch_size + np.arange(batch_size)) % len(order)]
        state["k"] = k + 1
        trainer.train_step(idx, 0)

    return Case(f"{label.split(' ')[0]}: {stage}", fn, inner=2, per=batch_size, warm_min=3, warm_max=6)


def run_training(rounds: int = 3, batch_size: int = 4, models: Sequence[str] = BREAKDOWN_MODELS, samples=None,
                 log=print) -> Dict[str, object]:
    samples = samples if samples is not None else tip3p_samples()
    with tempfile.TemporaryDirectory(prefix="maskpot-bench-train-") as tmp:
        cases = [trainer_case(label, peers.MODELS[label], stage, samples, batch_size, Path(tmp) / f"r{k}")
                 for k, (label, stage) in enumerate((lb, st) for lb in models for st in STAGES)]
        interleave(cases, rounds, log=log)
    rows = []
    for c in cases:
        ms = c.median("wall")  # ms per frame (per = batch_size)
        rows.append([c.name, f"{batch_size * ms:.0f}", f"{1e3 / ms:.1f}"])
    return {"machine": machine_line(), "atoms": samples[0].n_atoms, "batch_size": batch_size, "rounds": rounds,
            "rows": rows}


def training_markdown(res: Dict[str, object]) -> str:
    head = (f"Training throughput: {res['atoms']}-atom TIP3P frames, batch {res['batch_size']}, "
            f"`Trainer.train_step` (median of {res['rounds']} interleaved rounds):\n\n"
            "| model: stage | ms / step | frames / s |\n|---|---|---|")
    return head + "\n" + markdown_rows(res["rows"])


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--size", type=int, default=648)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-training", action="store_true")
    args = parser.parse_args(argv)
    prepare_cpu(args.threads)
    res = run_breakdown(args.size, args.rounds)
    print(res["machine"])
    print(breakdown_markdown(res))
    if not args.no_training:
        print(training_markdown(run_training(max(2, args.rounds // 2))))


if __name__ == "__main__":
    main()
