"""Speed levers for the fast models, A/B in one process (interleaved), on the ASE route.

Each variant is timed against the baseline — exported TorchScript float32 file, vesin
neighbour list, 1 torch thread, ``tune_cpu_allocator()`` on, through ``MaskpotCalculator`` —
and its forces are compared with the baseline's on the same configuration:

* ``2 threads``: ``torch.set_num_threads(2)`` around the call (the machine has 2 cores);
* ``float64``: the same weights exported with ``--dtype float64``;
* ``eager``: ``MaskpotCalculator(model)`` on the in-memory module (no TorchScript);
* ``glibc allocator defaults``: ``mallopt`` thresholds back to glibc's defaults around the
  call (``tune_cpu_allocator`` is what ``maskpot-md``/``maskpot-train`` switch on);
* ``TorchScript optimisation on``: how the engines called the exported module before commit
  f774315; ``call_exported`` now runs it under ``torch.jit.optimized_execution(False)`` (no
  profiling executor, no autodiff subgraphs: the backward runs ATen's fused kernels such as
  ``silu_backward`` instead of TorchScript's symbolic-gradient decomposition into
  sigmoid/mul/add), which is the baseline here;
* ``torch.compile`` (``--compile``): forward + backward of the model (neighbour list
  excluded) compiled by inductor with dynamic shapes; minutes of compile time on 2 cores.

    python -m benchmarks.bench_levers [--rounds 5] [--compile]
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from benchmarks import peers
from benchmarks.common import Case, interleave, machine_line, markdown_rows, prepare_cpu, ratio, script_parser

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_GLIBC_DEFAULT = 128 * 1024


def _mallopt() -> Optional[Callable[[int, int], int]]:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return None


class CompiledEnergyModel(torch.nn.Module):
    """A maskpot energy model whose layers (edge vectors -> energy) run through
    ``torch.compile(dynamic=True)``; the neighbour list and ``autograd.grad`` stay eager.
    Same ``forward(batch) -> {"energy", "forces"}`` contract, so the ASE calculator takes it."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.kind = model.kind
        self.cutoff = model.cutoff
        self.species = model.species
        self._compiled = None  # made on the first call (the calculator deep-copies the module)

    def _energy(self, positions: Tensor, h0: Tensor, species: Tensor, cell: Tensor, batch: Tensor,
                edge_index: Tensor, shifts: Tensor) -> Tensor:
        from maskpot.data.neighbors import edge_vectors

        m = self.model
        vec = edge_vectors(positions, cell, batch, edge_index, shifts)
        atomic, _ = m.atomic_energies(h0, edge_index, vec)
        return m.normalization(atomic, species, batch, cell.shape[0])

    def forward(self, data: Dict[str, Tensor]) -> Dict[str, Tensor]:
        if self._compiled is None:
            self._compiled = torch.compile(self._energy, dynamic=True)
        with torch.enable_grad():
            pos = data["positions"]
            if not pos.requires_grad:
                pos.requires_grad_()
            edge_index, _, shifts = self.model.neighbors(pos, data["cell"], data["pbc"], data["batch"])
            # species lookup (a data-dependent check) stays eager: no graph break in the compiled part
            species = self.model.embedding.species_index(data["numbers"])
            h0 = self.model.embedding(species, data.get("mask"))
            energy = self._compiled(pos, h0, species, data["cell"], data["batch"], edge_index, shifts)
            (grad,) = torch.autograd.grad([energy.sum()], [pos])
        return {"energy": energy.detach(), "forces": -grad}


def _forces(calc, water: peers.WaterBox, wrap=None) -> np.ndarray:
    atoms = peers.ase_atoms(water)
    atoms.positions = water.configs[0]
    atoms.calc = calc
    out = {}
    fn = lambda: out.setdefault("f", atoms.get_forces())  # noqa: E731
    (wrap(fn) if wrap else fn)()
    return out["f"]


def lever_cases(label: str, water: peers.WaterBox, compile_: bool = False, log=print) -> List[tuple]:
    """[(variant, Case, max |ΔF| vs baseline eV/Å, max |F|)] for one model."""
    config = peers.MODELS[label]
    folder = peers.temp_dir()
    model = peers.build(config)
    short = label.split(" ")[0]
    f32 = peers.export(model, folder, f"lv_{short}_f32")
    f64 = peers.export(model, folder, f"lv_{short}_f64", dtype="float64")
    mallopt = _mallopt()
    # variant -> (calculator, wrapper of the timed call or None, cooldown s)
    variants = {
        "baseline": (peers.maskpot_calculator(f32), None, 0.0),
        # OpenMP workers spin after a parallel region: the cooldown keeps that out of the next case
        "2 threads": (peers.maskpot_calculator(f32), lambda fn: _with_threads(fn, 2), 0.3),
        "float64": (peers.maskpot_calculator(f64), None, 0.0),
        "eager (no TorchScript)": (peers.maskpot_calculator_module(model), None, 0.0),
        "TorchScript optimisation on (before f774315)": (peers.maskpot_calculator(f32), _with_jit_optimisation, 0.0),
    }
    if mallopt is not None:
        variants["glibc allocator defaults"] = (peers.maskpot_calculator(f32),
                                                lambda fn: _with_allocator_defaults(fn, mallopt), 0.0)
    if compile_:
        variants["torch.compile (layers)"] = (peers.maskpot_calculator_module(CompiledEnergyModel(model)), None, 0.0)
    ref = _forces(variants["baseline"][0], water)
    out = []
    for variant, (calc, wrap, cooldown) in variants.items():
        t0 = time.perf_counter()
        dF = float(np.abs(_forces(calc, water, wrap) - ref).max())
        if variant.startswith("torch.compile"):
            log(f"  {short}: torch.compile first call {time.perf_counter() - t0:.0f} s")
        case = peers.ase_case(f"{short}: {variant}", calc, water, inner=3)
        if wrap is not None:
            case.fn = wrap(case.fn)
        case.cooldown = cooldown
        out.append((variant, case, dF, float(np.abs(ref).max())))
    return out


def _with_threads(fn: Callable[[], None], n: int) -> Callable[[], None]:
    def wrapped() -> None:
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            fn()
        finally:
            torch.set_num_threads(before)

    return wrapped


def _with_jit_optimisation(fn: Callable[[], None]) -> Callable[[], None]:
    """The calculator as it was before: the exported module called with TorchScript's
    graph-executor optimisation on (``call_exported`` now switches it off)."""
    import maskpot.deploy.ase as ase_module

    def plain(module, positions, numbers, cell, pbc):
        return module(positions, numbers, cell, pbc)

    def wrapped() -> None:
        saved = ase_module.call_exported
        ase_module.call_exported = plain
        try:
            with torch.jit.optimized_execution(True):
                fn()
        finally:
            ase_module.call_exported = saved

    return wrapped


def _with_allocator_defaults(fn: Callable[[], None], mallopt) -> Callable[[], None]:
    from maskpot.models.perf import tune_cpu_allocator

    def wrapped() -> None:
        mallopt(_M_MMAP_THRESHOLD, _GLIBC_DEFAULT)
        mallopt(_M_TRIM_THRESHOLD, _GLIBC_DEFAULT)
        try:
            fn()
        finally:
            tune_cpu_allocator()

    return wrapped


def run_levers(size: int = 648, rounds: int = 5, models: Sequence[str] = peers.SMALL, compile_: bool = False,
               water=None, log=print) -> Dict[str, object]:
    water = water if water is not None else peers.water_box(size)
    groups = {label: lever_cases(label, water, compile_, log) for label in models}
    interleave([c for g in groups.values() for _, c, _, _ in g], rounds, log=log)
    rows = []
    for label, group in groups.items():
        base = group[0][1]
        for variant, case, dF, fmax in group:
            rows.append([label, variant, f"{case.median():.1f}",
                         "1.00" if case is base else "%.2f (%.2f-%.2f)" % ratio(base, case),
                         f"{dF:.1e} (max |F| {fmax:.2f})"])
    return {"machine": machine_line(), "size": water.n_atoms, "rounds": rounds, "rows": rows}


def levers_markdown(res: Dict[str, object]) -> str:
    head = (f"{res['size']} atoms, ASE calculator, energy + forces; speed-up = baseline time / variant time "
            f"per round (median, min-max over {res['rounds']} interleaved rounds); ΔF = max |F - F_baseline| eV/Å "
            "on one configuration.\n\n| model | variant | ms / call | speed-up vs baseline | ΔF eV/Å |\n|---|---|---|---|---|")
    return head + "\n" + markdown_rows(res["rows"])


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--size", type=int, default=648)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args(argv)
    prepare_cpu(1)
    res = run_levers(args.size, args.rounds, compile_=args.compile)
    print(res["machine"])
    print(levers_markdown(res))


if __name__ == "__main__":
    main()
