"""What gets timed: water boxes, our exported models behind the ASE calculator, MACE-small, and
OpenMM flexible TIP3P. Each ``*_case`` returns a :class:`benchmarks.common.Case` whose ``fn``
does one energy+forces evaluation (or MD steps for OpenMM) on a fixed set of configurations.

Nothing here times anything; ``bench_peers`` / ``bench_breakdown`` / ``run`` do.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from benchmarks.common import Case

#: Molecules per cubic Å of liquid water at ~1 g/cm³ (0.0334 = 1.0 g/cm³ for 18.015 g/mol).
WATER_NUMBER_DENSITY = 0.0334

#: Our models in the comparison: label -> model config (species [1, 8] added; untrained, seed 0).
MODELS: Dict[str, Dict[str, object]] = {
    # label kept from the recorded runs: the painn default before issue 34 (now 64x1, 3.5 Å)
    "painn default (128x3, 5 Å)": {"name": "painn", "hidden_channels": 128, "num_layers": 3, "cutoff": 5.0},
    "painn 64x2 3.5 Å": {"name": "painn", "hidden_channels": 64, "num_layers": 2, "cutoff": 3.5},
    "painn 64x1 3.5 Å": {"name": "painn", "hidden_channels": 64, "num_layers": 1, "cutoff": 3.5},
    "egnn 64x3 3.5 Å": {"name": "egnn", "hidden_channels": 64, "num_layers": 3, "cutoff": 3.5},
    "gns default (128x4, 3.5 Å)": {"name": "gns"},
}
#: The recommended small models (the speed target is stated for these): painn 64x1 is the README's
#: fast default (benchmarks/accuracy_per_cost.py), painn 64x2 the water example's model.
SMALL = ("painn 64x1 3.5 Å", "painn 64x2 3.5 Å", "egnn 64x3 3.5 Å")

MACE_LABEL = "MACE-small"
OPENMM_LABEL = "OpenMM TIP3P (flexible, PME, per MD step)"


def mace_available() -> bool:
    try:
        import mace  # noqa: F401  (mace sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 on import)
    except Exception:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# water boxes


@dataclass
class WaterBox:
    """An equilibrated-ish liquid water box and ``k`` rattled copies of it (what MD hands a
    potential: the number of edges changes a little from call to call). Also holds an isolated
    molecule (``box`` 0, ``pbc`` False: zero cell; ``configs`` e.g. test frames)."""

    positions: np.ndarray  # [N, 3] Å
    numbers: np.ndarray  # [N]
    box: float  # cubic side, Å
    configs: List[np.ndarray]  # rattled positions, Å
    pbc: bool = True

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)

    def cell(self) -> np.ndarray:
        return np.eye(3) * self.box


def box_side(n_molecules: int) -> float:
    return float((n_molecules / WATER_NUMBER_DENSITY) ** (1.0 / 3.0))


def openmm_water(n_molecules: int, box: float, threads: int = 1):
    """(topology, system, CPU platform, properties) for flexible TIP3P with PME (the project's
    generator, :func:`maskpot.data.tip3p.water_system`)."""
    import openmm

    from maskpot.data.tip3p import water_system

    topology, system = water_system(n_molecules, box)
    platform = openmm.Platform.getPlatformByName("CPU")
    return topology, system, platform, {"Threads": str(threads)}


def water_box(n_atoms: int, seed: int = 0, relax_steps: int = 20, n_configs: int = 4,
              rattle: float = 0.02) -> WaterBox:
    """``n_atoms // 3`` TIP3P waters at liquid density: lattice start, OpenMM minimisation
    (100 iterations) and ``relax_steps`` Langevin steps of 0.5 fs; then ``n_configs`` copies
    rattled by ``rattle`` Å (Gaussian) for the model calls."""
    import openmm
    from openmm import unit

    from maskpot.data.tip3p import water_lattice

    n_mol = n_atoms // 3
    side = box_side(n_mol)
    rng = np.random.default_rng(seed)
    pos = water_lattice(n_mol, side, rng)
    _, system, platform, props = openmm_water(n_mol, side)
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1.0 / unit.picosecond, 0.5 * unit.femtosecond)
    integrator.setRandomNumberSeed(seed + 1)
    context = openmm.Context(system, integrator, platform, props)
    context.setPositions(pos * unit.angstrom)
    openmm.LocalEnergyMinimizer.minimize(context, 10.0, 100)
    context.setVelocitiesToTemperature(300 * unit.kelvin, seed + 1)
    if relax_steps:
        integrator.step(relax_steps)
    state = context.getState(getPositions=True, enforcePeriodicBox=True)
    pos = np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.angstrom), dtype=np.float64)
    del context, integrator
    configs = [pos + rattle * rng.standard_normal(pos.shape) for _ in range(n_configs)]
    return WaterBox(pos, np.tile([8, 1, 1], n_mol), side, configs)


def small_water_box(n_molecules: int = 8, box: float = 8.0, seed: int = 0, n_configs: int = 2) -> WaterBox:
    """A tiny box for smoke tests (no OpenMM run: lattice positions only)."""
    from maskpot.data.tip3p import water_lattice

    rng = np.random.default_rng(seed)
    pos = water_lattice(n_molecules, box, rng)
    configs = [pos + 0.02 * rng.standard_normal(pos.shape) for _ in range(n_configs)]
    return WaterBox(pos, np.tile([8, 1, 1], n_molecules), box, configs)


# ---------------------------------------------------------------------------------------------
# our models


def build(config: Dict[str, object], dtype: str = "float32", backend: str = "auto", seed: int = 0) -> torch.nn.Module:
    """Untrained model (weights from ``seed``; timing does not depend on training)."""
    from maskpot.models import build_model

    torch.manual_seed(seed)
    return build_model({"species": [1, 8], "neighbor_backend": backend, "dtype": dtype, **config}).eval()


def export(model: torch.nn.Module, folder: Path, name: str, dtype: str = "float32", backend: str = "auto") -> Path:
    """TorchScript export file (``maskpot.deploy.export.export_model``) with the given neighbour
    list ("auto": vesin when installed)."""
    from maskpot.data.neighbors import vesin_available
    from maskpot.deploy.export import export_model

    if backend == "auto":
        backend = "vesin" if vesin_available() else "torch"
    path = Path(folder) / f"{name}.pt"
    export_model(model, path, dtype=dtype, neighbor_backend=backend)
    return path


class _Cycle:
    """Hands out the configurations of a box in turn."""

    def __init__(self, configs: Sequence[np.ndarray]) -> None:
        self.configs = list(configs)
        self.k = 0

    def next(self) -> np.ndarray:
        c = self.configs[self.k % len(self.configs)]
        self.k += 1
        return c


def ase_atoms(water: WaterBox):
    from ase import Atoms

    return Atoms(numbers=water.numbers, positions=water.positions, cell=water.cell(), pbc=water.pbc)


def ase_case(name: str, calc, water: WaterBox, inner: int = 1) -> Case:
    """energy + forces through an ASE calculator, a new configuration every call."""
    atoms = ase_atoms(water)
    atoms.calc = calc
    cycle = _Cycle(water.configs)

    def fn() -> None:
        atoms.positions = cycle.next()
        atoms.get_potential_energy()
        atoms.get_forces()

    return Case(name, fn, inner=inner)


def maskpot_calculator(model_path: Path, dtype=None):
    from maskpot.deploy.ase import MaskpotCalculator

    return MaskpotCalculator(str(model_path), dtype=dtype)


def maskpot_calculator_module(model: torch.nn.Module):
    """The calculator on an in-memory (eager) module instead of an export file."""
    from maskpot.deploy.ase import MaskpotCalculator

    model = model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return MaskpotCalculator(model)


def module_case(name: str, module: torch.nn.Module, water: WaterBox, dtype: torch.dtype = torch.float32,
                inner: int = 1) -> Case:
    """The export signature called directly (no engine), as the engines call it
    (``maskpot.deploy.export.call_exported``): (positions, numbers, cell, pbc) -> (E, F)."""
    from maskpot.deploy.export import call_exported

    numbers = torch.as_tensor(water.numbers, dtype=torch.long)
    cell = torch.as_tensor(water.cell(), dtype=dtype)
    pbc = torch.ones(3, dtype=torch.bool)
    pos = [torch.as_tensor(c, dtype=dtype) for c in water.configs]
    cycle = _Cycle(pos)

    def fn() -> None:
        e, f = call_exported(module, cycle.next(), numbers, cell, pbc)
        float(e.detach())

    return Case(name, fn, inner=inner)


# ---------------------------------------------------------------------------------------------
# MACE-small


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                yield
        finally:
            logging.getLogger().setLevel(level)


def mace_small(avg_num_neighbors: float = 40.0, r_max: float = 5.0,
               atomic_numbers: Sequence[int] = (1, 8)) -> torch.nn.Module:
    """MACE-small, untrained, float32: ScaleShiftMACE, hidden irreps 64x0e, r_max 5 Å,
    2 interactions, correlation 3, max_ell 3, 8 Bessel functions, polynomial cutoff p=5,
    radial MLP [64, 64, 64], readout MLP 16x0e, SiLU gates (mace-torch's defaults otherwise,
    as built by ``mace_run_train --model ScaleShiftMACE``). ``atomic_numbers``: its elements
    (water: H, O)."""
    atomic_numbers = sorted(int(z) for z in atomic_numbers)
    with _quiet():
        from mace import modules  # noqa: F401  (import mace before e3nn: it sets the torch.load mode e3nn 0.4 needs)
        from e3nn import o3

        model = modules.ScaleShiftMACE(
            r_max=r_max, num_bessel=8, num_polynomial_cutoff=5, max_ell=3,
            interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            num_interactions=2, num_elements=len(atomic_numbers), hidden_irreps=o3.Irreps("64x0e"),
            MLP_irreps=o3.Irreps("16x0e"), atomic_energies=np.zeros(len(atomic_numbers)),
            avg_num_neighbors=avg_num_neighbors, atomic_numbers=atomic_numbers,
            correlation=3, gate=torch.nn.functional.silu, radial_MLP=[64, 64, 64],
            atomic_inter_scale=1.0, atomic_inter_shift=0.0,
        )  # fmt: skip
    return model.float().eval()


def mace_batches(water: WaterBox, r_max: float = 5.0,
                 species: Optional[Sequence[int]] = None) -> List[Dict[str, torch.Tensor]]:
    """MACE input dicts of the box's configurations (mace's own neighbour list, float32);
    ``species``: the model's elements (default: those of the box)."""
    with _quiet():
        from ase import Atoms
        from mace import data as mdata
        from mace.tools import torch_geometric, utils

        z_table = utils.AtomicNumberTable(sorted(int(z) for z in (species if species is not None else set(water.numbers))))
        out = []
        for c in water.configs:
            atoms = Atoms(numbers=water.numbers, positions=c, cell=water.cell(), pbc=water.pbc)
            ad = mdata.AtomicData.from_config(mdata.config_from_atoms(atoms), z_table=z_table, cutoff=r_max)
            loader = torch_geometric.dataloader.DataLoader([ad], batch_size=1, shuffle=False)
            b = next(iter(loader)).to_dict()
            out.append({k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in b.items()})
    return out


def mace_case(water: WaterBox, model: Optional[torch.nn.Module] = None, inner: int = 1) -> Tuple[Case, int]:
    """MACE-small energy + forces (module called directly, ``compute_force=True``, no stress),
    neighbour list built beforehand (so MACE's time is a lower bound). Returns (case, edges)."""
    species = model.atomic_numbers.tolist() if model is not None and hasattr(model, "atomic_numbers") else None
    batches = mace_batches(water, species=species)
    edges = int(batches[0]["edge_index"].shape[1])
    if model is None:
        model = mace_small(avg_num_neighbors=edges / water.n_atoms, atomic_numbers=sorted(set(water.numbers.tolist())))
    cycle = _Cycle(batches)

    def fn() -> None:
        b = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in cycle.next().items()}
        out = model(b, compute_force=True, compute_stress=False)
        float(out["energy"].detach().sum())

    case = Case(MACE_LABEL, fn, inner=inner)
    case.model = model  # type: ignore[attr-defined]
    return case, edges


# ---------------------------------------------------------------------------------------------
# OpenMM


def openmm_tip3p_case(water: WaterBox, steps: int = 10, threads: int = 1, inner: int = 1) -> Case:
    """Flexible TIP3P with PME (9 Å real-space cutoff or box/2), CPU platform, Langevin 0.5 fs:
    the time of one MD step (forces + integration), ``steps`` steps per call."""
    import openmm
    from openmm import unit

    _, system, platform, props = openmm_water(water.n_atoms // 3, water.box, threads)
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1.0 / unit.picosecond, 0.5 * unit.femtosecond)
    context = openmm.Context(system, integrator, platform, props)
    context.setPositions(water.positions * unit.angstrom)
    context.setVelocitiesToTemperature(300 * unit.kelvin, 1)

    def fn() -> None:
        integrator.step(steps)

    case = Case(OPENMM_LABEL, fn, inner=inner, per=steps)
    case.keep = (context, integrator)  # type: ignore[attr-defined]
    return case


def openmm_pythonforce_case(name: str, model_path: Path, water: WaterBox, steps: int = 1, inner: int = 1) -> Case:
    """Our model as the only force of an OpenMM System through ``openmm.PythonForce``
    (``maskpot.deploy.openmm.create_force``), CPU platform, Verlet 0.5 fs: time per MD step."""
    import openmm
    from openmm import unit

    from maskpot.deploy.openmm import create_force
    from maskpot.data.tip3p import water_topology

    n_mol = water.n_atoms // 3
    topology = water_topology(n_mol, water.box)
    system = openmm.System()
    for z in water.numbers:
        system.addParticle(15.999 if z == 8 else 1.008)
    nm = water.box / 10.0
    system.setDefaultPeriodicBoxVectors(openmm.Vec3(nm, 0, 0), openmm.Vec3(0, nm, 0), openmm.Vec3(0, 0, nm))
    system.addForce(create_force(str(model_path), topology))
    integrator = openmm.VerletIntegrator(0.5 * unit.femtosecond)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"), {"Threads": "1"})
    context.setPositions(water.positions * unit.angstrom)

    def fn() -> None:
        integrator.step(steps)

    case = Case(name, fn, inner=inner, per=steps)
    case.keep = (context, integrator)  # type: ignore[attr-defined]
    return case


def temp_dir() -> Path:
    """A folder that lives as long as the process (export files)."""
    global _TMP
    try:
        return Path(_TMP.name)
    except NameError:
        _TMP = tempfile.TemporaryDirectory(prefix="maskpot-bench-")
        return Path(_TMP.name)
