"""Flexible (or rigid) TIP3P water: reference data generated with OpenMM.

The recipe follows the GAMD / masked-pretraining papers: ``n_molecules`` waters in a cubic box
(258 molecules in a 20 Å box, about 0.96 g/cm³), PME electrostatics, Langevin dynamics at
300 K, a frame saved every ``every`` steps, several independent seeds concatenated.

Building the box
    Oxygens sit on a random subset of the sites of a simple-cubic lattice that fills the box
    (``ceil(n^(1/3))`` sites per edge), each molecule with a random orientation. This places
    *exactly* ``n_molecules`` in a box of side *exactly* ``box`` (``Modeller.addSolvent`` does
    neither). The energy is then minimised and the system equilibrated before frames are saved.

Force field
    ``tip3p.xml`` (OpenMM's standalone TIP3P) contains ``HarmonicBondForce`` (O–H, 0.9572 Å,
    k = 462750.4 kJ/mol/nm²) and ``HarmonicAngleForce`` (H–O–H, 104.52°, k = 836.8 kJ/mol/rad²)
    terms, so ``createSystem(rigidWater=False, constraints=None)`` gives flexible TIP3P. With
    ``rigid=True`` the same file gives rigid TIP3P (``rigidWater=True``: SETTLE). The stored
    forces are always the force-field forces (no constraint forces), as in GAMD.
    ``amber14/tip3p.xml`` carries the same water terms (plus ion parameters) and also works;
    :func:`water_system` refuses a force field that would leave flexible water without them.

Units and conventions of the output (see :func:`save_tip3p_npz`)
    positions Å, energy eV, forces eV/Å, cell Å (rows are lattice vectors). Conversions use
    ``openmm.unit`` for lengths and ``ase.units`` for kJ/mol → eV, never hand-typed constants.
    Positions are read with ``enforcePeriodicBox=False``: molecules are whole (O, H, H of one
    molecule are within a bond length of each other), but atoms may lie outside the cell as the
    liquid diffuses; wrap them (per molecule) if a consumer needs them inside the cell.

Reproducibility
    Everything random is seeded: lattice sites, orientations, initial velocities and the
    Langevin noise (OpenMM seeds derived from the user seed; OpenMM reads 0 as "random", so the
    user seed is never passed through as is). The Reference platform is bit-reproducible. The CPU
    platform is bit-reproducible only with ``deterministic=True`` (one thread plus
    ``DeterministicForces``): with several threads the last bits of the force sums vary between
    runs (measured with OpenMM 8.6.1, even with ``DeterministicForces``) and MD amplifies them,
    so runs are statistically, not bitwise, equivalent. Different platforms give different
    trajectories.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from maskpot.utils import PathLike, atomic_path

# Keys of the maskpot npz written by ``save_tip3p_npz`` (shared with ``maskpot.data.io``).
NPZ_KEYS = ("positions", "numbers", "cell", "pbc", "energy", "forces", "molecule", "units", "metadata")
# "<length>,<energy>", the form ``maskpot.data.io.parse_units`` reads (forces are energy/length,
# i.e. eV/Å); a third field would make that reader reject the file.
UNITS = "angstrom,eV"
# Format tag, as written by ``maskpot.data.io.write_npz``.
NPZ_FORMAT = "maskpot-npz-1"

DEFAULT_FORCEFIELD = "tip3p.xml"
# Closest allowed lattice spacing of the initial oxygens, Å. Below it, randomly oriented
# molecules overlap badly (H of one molecule on the O of another: TIP3P hydrogens have no LJ
# repulsion, so such starts can collapse).
MIN_LATTICE_SPACING = 2.4
# Default PME real-space cutoff, Å (the usual 0.9 nm), reduced for small boxes.
DEFAULT_CUTOFF = 9.0
# Margin below half the box for the default cutoff, Å (OpenMM requires cutoff < box/2).
CUTOFF_MARGIN = 0.01
# Default equilibration time when ``equilibration_steps`` is not given, fs.
DEFAULT_EQUILIBRATION_FS = 5000.0
# TIP3P geometry used only to place the initial molecules (minimisation relaxes it).
_OH_ANGSTROM = 0.9572
_HOH_DEGREES = 104.52


def kj_per_mol_to_ev() -> float:
    """eV per kJ/mol, from ``ase.units`` (the project-wide conversion constant)."""
    from ase import units

    return units.kJ / units.mol


def default_cutoff(box: float) -> float:
    """Default PME real-space cutoff in Å for a cubic box of side ``box`` Å.

    ``min(9 Å, box/2 - 0.01 Å)``: OpenMM requires the cutoff to be below half the box width.
    """
    return min(DEFAULT_CUTOFF, 0.5 * float(box) - CUTOFF_MARGIN)


def max_molecules(box: float) -> int:
    """Largest ``n_molecules`` the lattice builder accepts for a cubic box of side ``box`` Å."""
    return int(math.floor(float(box) / MIN_LATTICE_SPACING)) ** 3


def water_density(n_molecules: int, box: float) -> float:
    """Mass density of ``n_molecules`` waters in a cubic box of side ``box`` Å, g/cm³."""
    from openmm import unit
    from openmm.app import element

    mass = n_molecules * (element.oxygen.mass + 2 * element.hydrogen.mass)  # dalton = g/mol
    grams = (mass / unit.AVOGADRO_CONSTANT_NA).value_in_unit(unit.gram)
    volume = ((box * unit.angstrom) ** 3).value_in_unit(unit.centimeter**3)
    return grams / volume


#: Densities (g/cm³) outside this range give a warning: liquid water is ~1.0 (TIP3P at 300 K: 0.98).
PLAUSIBLE_DENSITY = (0.85, 1.15)
#: Outside this range the box is refused (ice Ih 0.92, water at 1 GPa ~1.25; 1.9 g/cm³ is no water).
ALLOWED_DENSITY = (0.5, 1.5)


def check_density(n_molecules: int, box: float, allow_any_density: bool = False) -> float:
    """Density (g/cm³) of ``n_molecules`` waters in a cubic ``box`` (Å): warn outside
    :data:`PLAUSIBLE_DENSITY`, refuse outside :data:`ALLOWED_DENSITY` (``allow_any_density``: warn)."""
    import warnings

    rho = water_density(n_molecules, box)
    lo, hi = PLAUSIBLE_DENSITY
    if lo <= rho <= hi:
        return rho
    good = box * (rho / 0.997) ** (1.0 / 3.0)  # the side giving 0.997 g/cm³
    msg = (f"n_molecules={n_molecules} in box={box} Å is a density of {rho:.3f} g/cm³ (liquid water: ~1.0; "
           f"{n_molecules} molecules need box ≈ {good:.2f} Å)")
    alo, ahi = ALLOWED_DENSITY
    if not (alo <= rho <= ahi) and not allow_any_density:
        raise ValueError(f"{msg}: refused, outside {alo}-{ahi} g/cm³ (pass allow_any_density=True / "
                         "--allow-any-density to generate it anyway)")
    warnings.warn(f"{msg}: implausible for liquid water (outside {lo}-{hi} g/cm³)", UserWarning, stacklevel=2)
    return rho


def _check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not (isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value) and ok):
        limit = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {limit}, got {value!r}")


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def validate_box(n_molecules: int, box: float, cutoff: Optional[float]) -> float:
    """Check that the molecules fit and the cutoff is allowed; return the resolved cutoff (Å)."""
    _check_int("n_molecules", n_molecules, 1)
    _check_positive("box", box)
    spacing = box / math.ceil(round(n_molecules ** (1.0 / 3.0), 9))
    if spacing < MIN_LATTICE_SPACING:
        raise ValueError(
            f"n_molecules={n_molecules} do not fit in box={box} Å: the initial lattice spacing would be "
            f"{spacing:.3f} Å < {MIN_LATTICE_SPACING} Å. Use n_molecules <= {max_molecules(box)} for this box, "
            f"or box >= {MIN_LATTICE_SPACING * math.ceil(round(n_molecules ** (1.0 / 3.0), 9)):.2f} Å."
        )
    if cutoff is None:
        cutoff = default_cutoff(box)
        if cutoff <= 0:
            raise ValueError(f"box={box} Å is too small for any PME cutoff")
    _check_positive("cutoff", cutoff)
    if cutoff >= 0.5 * box:
        raise ValueError(
            f"cutoff={cutoff} Å must be smaller than half the box (box/2 = {0.5 * box} Å); "
            f"use cutoff < {0.5 * box} Å or a larger box"
        )
    return float(cutoff)


def _random_rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    """[n, 3, 3] uniformly distributed rotation matrices (from random unit quaternions)."""
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=1,
    )


def water_lattice(n_molecules: int, box: float, rng: np.random.Generator) -> np.ndarray:
    """Initial positions [3 * n_molecules, 3] in Å, atoms ordered O, H, H per molecule.

    Oxygens occupy a random subset of a simple-cubic lattice of ``ceil(n^(1/3))`` sites per
    edge (cell-centred in a cube of side ``box`` Å); each molecule is randomly oriented.
    """
    m = math.ceil(round(n_molecules ** (1.0 / 3.0), 9))
    spacing = box / m
    grid = (np.stack(np.meshgrid(*[np.arange(m)] * 3, indexing="ij"), -1).reshape(-1, 3) + 0.5) * spacing
    sites = np.sort(rng.choice(len(grid), size=n_molecules, replace=False))
    half = math.radians(_HOH_DEGREES) / 2
    # Template in the molecule frame: O at the origin, H's in the xz plane.
    template = np.array(
        [[0.0, 0.0, 0.0], [math.sin(half), 0.0, math.cos(half)], [-math.sin(half), 0.0, math.cos(half)]]
    ) * np.array([[1.0], [_OH_ANGSTROM], [_OH_ANGSTROM]])
    rot = _random_rotations(rng, n_molecules)
    mols = np.einsum("mij,aj->mai", rot, template) + grid[sites][:, None, :]
    return mols.reshape(-1, 3)


def water_topology(n_molecules: int, box: Optional[float]):
    """OpenMM ``Topology`` of ``n_molecules`` HOH residues (atoms O, H1, H2, bonds O–H1, O–H2)
    in a cubic box of side ``box`` Å; ``box=None``: no periodic box.

    The one water topology of the project: the MD runners, the analysis (through
    ``mdtraj.Topology.from_openmm``) and the tests build theirs with it."""
    from openmm import Vec3, unit
    from openmm.app import Topology, element

    top = Topology()
    chain = top.addChain()
    for _ in range(n_molecules):
        res = top.addResidue("HOH", chain)
        o = top.addAtom("O", element.oxygen, res)
        h1 = top.addAtom("H1", element.hydrogen, res)
        h2 = top.addAtom("H2", element.hydrogen, res)
        top.addBond(o, h1)
        top.addBond(o, h2)
    if box is not None:
        nm = (box * unit.angstrom).value_in_unit(unit.nanometer)
        top.setPeriodicBoxVectors([Vec3(nm, 0, 0), Vec3(0, nm, 0), Vec3(0, 0, nm)])
    return top


def water_system(
    n_molecules: int,
    box: float,
    cutoff: Optional[float] = None,
    rigid: bool = False,
    forcefield: str = DEFAULT_FORCEFIELD,
    ewald_error_tolerance: float = 5e-4,
):
    """Build the OpenMM ``(topology, system)`` for TIP3P water with PME.

    Args:
        n_molecules: number of waters.
        box: cubic box side, Å.
        cutoff: PME real-space / LJ cutoff, Å (default :func:`default_cutoff`).
        rigid: ``True`` → rigid water (SETTLE); ``False`` → flexible harmonic O–H and H–O–H.
        forcefield: OpenMM force-field XML (must define HOH with bond and angle terms).
        ewald_error_tolerance: PME accuracy (OpenMM's ``ewaldErrorTolerance``).
    """
    from openmm import app, unit

    cutoff = validate_box(n_molecules, box, cutoff)
    topology = water_topology(n_molecules, box)
    ff = app.ForceField(forcefield)
    system = ff.createSystem(
        topology,
        nonbondedMethod=app.PME,
        nonbondedCutoff=cutoff * unit.angstrom,
        constraints=None,
        rigidWater=bool(rigid),
        ewaldErrorTolerance=ewald_error_tolerance,
    )
    if not rigid:
        # Flexible water needs the intramolecular terms: refuse a force field without them
        # rather than silently simulating molecules held together by nothing.
        kinds = {type(f).__name__ for f in system.getForces()}
        missing = {"HarmonicBondForce", "HarmonicAngleForce"} - kinds
        if missing or system.getNumConstraints():
            raise ValueError(
                f"forcefield={forcefield!r} does not give flexible water (missing {sorted(missing)}, "
                f"{system.getNumConstraints()} constraints); use 'tip3p.xml'"
            )
    return topology, system


def select_platform(name: Optional[str] = None):
    """Return the OpenMM ``Platform`` called ``name``, or the fastest available one."""
    import openmm

    available = [openmm.Platform.getPlatform(i) for i in range(openmm.Platform.getNumPlatforms())]
    names = [p.getName() for p in available]
    if name is None:
        return max(available, key=lambda p: p.getSpeed())
    for p in available:
        if p.getName().lower() == name.lower():
            return p
    raise ValueError(f"platform={name!r} is not available; available OpenMM platforms: {names}")


def _platform_properties(
    platform, threads: Optional[int], precision: Optional[str], deterministic: bool = False
) -> Dict[str, str]:
    """OpenMM platform properties for the requested threads / precision / determinism."""
    props: Dict[str, str] = {}
    pname = platform.getName()
    if threads is not None:
        _check_int("threads", threads, 1)
        if pname != "CPU":
            raise ValueError(f"threads={threads} only applies to the CPU platform, not {pname}")
        props["Threads"] = str(threads)
    if deterministic and pname == "CPU":
        # Measured with OpenMM 8.6: multithreaded CPU force sums are not bit-reproducible even
        # with DeterministicForces, and MD amplifies the last-bit differences; one thread is.
        if threads not in (None, 1):
            raise ValueError(f"deterministic=True on the CPU platform needs threads=1, got threads={threads}")
        props.update(Threads="1", DeterministicForces="true")
    elif deterministic and pname in ("CUDA", "HIP"):
        props["DeterministicForces"] = "true"
    if precision is not None:
        if pname not in ("CUDA", "OpenCL", "HIP"):
            raise ValueError(f"precision={precision!r} only applies to CUDA/OpenCL/HIP, not {pname}")
        if precision not in ("single", "mixed", "double"):
            raise ValueError(f"precision must be 'single', 'mixed' or 'double', got {precision!r}")
        props["Precision"] = precision
    return props


def _openmm_seed(seed: int) -> Tuple[np.random.Generator, int, int]:
    """numpy generator for the lattice, plus nonzero OpenMM seeds (integrator, velocities).

    OpenMM treats a random-number seed of 0 as "pick one at random", so user seed 0 must not be
    passed through as is.
    """
    ss = np.random.SeedSequence([int(seed), 0x71B3])
    rng = np.random.default_rng(ss)
    a, b = (int(x) for x in rng.integers(1, 2**31 - 1, size=2))
    return rng, a, b


def state_arrays(state, ev_per_kjmol: float) -> Tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """(positions Å [N,3], energy eV, forces eV/Å [N,3], cell Å [3,3]) from an OpenMM ``State``."""
    from openmm import unit

    pos = np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.angstrom), dtype=np.float64)
    energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) * ev_per_kjmol
    forces = np.asarray(
        state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.angstrom), dtype=np.float64
    ) * ev_per_kjmol
    cell = np.asarray(state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.angstrom), dtype=np.float64)
    return pos, float(energy), forces, cell


def _run_one_seed(
    seed: int,
    *,
    system,
    n_molecules: int,
    box: float,
    n_frames: int,
    every: int,
    temperature: float,
    timestep: float,
    friction: float,
    equilibration_steps: int,
    minimize_tolerance: float,
    minimize_iterations: int,
    platform,
    properties: Dict[str, str],
    progress: bool,
    ev_per_kjmol: float,
) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    import openmm
    from openmm import unit
    from tqdm.auto import tqdm

    from maskpot.utils import progress_wanted

    rng, integrator_seed, velocity_seed = _openmm_seed(seed)
    positions = water_lattice(n_molecules, box, rng)

    integrator = openmm.LangevinMiddleIntegrator(
        temperature * unit.kelvin, friction / unit.picosecond, timestep * unit.femtosecond
    )
    integrator.setRandomNumberSeed(integrator_seed)
    context = openmm.Context(system, integrator, platform, properties)
    context.setPositions(positions * unit.angstrom)
    if system.getNumConstraints():
        context.applyConstraints(1e-6)
    e0 = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    openmm.LocalEnergyMinimizer.minimize(
        context, minimize_tolerance * unit.kilojoule_per_mole / unit.nanometer, minimize_iterations
    )
    e_min = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    if not math.isfinite(e_min):
        raise RuntimeError(f"seed {seed}: energy minimisation gave a non-finite energy ({e_min})")
    context.setVelocitiesToTemperature(temperature * unit.kelvin, velocity_seed)

    n_atoms = 3 * n_molecules
    out = {
        "positions": np.empty((n_frames, n_atoms, 3)),
        "energy": np.empty(n_frames),
        "forces": np.empty((n_frames, n_atoms, 3)),
        "cell": np.empty((n_frames, 3, 3)),
    }
    with tqdm(
        total=equilibration_steps + n_frames * every,
        desc=f"tip3p seed {seed}",
        unit="step",
        disable=not progress_wanted(progress),
        leave=False,
    ) as bar:
        t0 = time.perf_counter()
        done = 0
        # Equilibrate in chunks so that the progress bar moves.
        chunk = max(every, 500)
        while done < equilibration_steps:
            n = min(chunk, equilibration_steps - done)
            integrator.step(n)
            done += n
            bar.update(n)
        t_eq = time.perf_counter() - t0

        t1 = time.perf_counter()
        for i in range(n_frames):
            integrator.step(every)
            # enforcePeriodicBox=False: positions as integrated, so molecules stay whole.
            state = context.getState(getPositions=True, getForces=True, getEnergy=True, enforcePeriodicBox=False)
            pos, energy, forces, cell = state_arrays(state, ev_per_kjmol)
            if not (math.isfinite(energy) and np.isfinite(forces).all() and np.isfinite(pos).all()):
                raise RuntimeError(
                    f"seed {seed}: the simulation blew up at frame {i} (energy {energy} eV); "
                    f"try a smaller timestep (now {timestep} fs)"
                )
            out["positions"][i], out["energy"][i], out["forces"][i], out["cell"][i] = pos, energy, forces, cell
            bar.update(every)
        t_prod = time.perf_counter() - t1
    info = {
        "seed": int(seed),
        "integrator_seed": integrator_seed,
        "velocity_seed": velocity_seed,
        "energy_initial_kjmol": e0,
        "energy_minimized_kjmol": e_min,
        "equilibration_seconds": t_eq,
        "production_seconds": t_prod,
        "platform_properties": {
            k: platform.getPropertyValue(context, k) for k in platform.getPropertyNames()
        },
    }
    return out, info


def _params_key(meta: Mapping[str, Any]) -> Dict[str, Any]:
    """The generation parameters that must match for a checkpoint to be reused."""
    keys = (
        "n_molecules", "box", "n_frames", "every", "temperature", "timestep", "friction", "rigid",
        "equilibration_steps", "cutoff", "forcefield", "ewald_error_tolerance", "minimize_tolerance",
        "minimize_iterations", "platform",
    )
    return {k: meta.get(k) for k in keys}


def generate_tip3p(
    n_molecules: int = 258,
    box: float = 20.0,
    n_frames: int = 1000,
    every: int = 50,
    temperature: float = 300.0,
    timestep: Optional[float] = None,
    friction: float = 1.0,
    seed: Union[int, Sequence[int]] = 0,
    rigid: bool = False,
    equilibration_steps: Optional[int] = None,
    platform: Optional[str] = None,
    progress: bool = True,
    cutoff: Optional[float] = None,
    forcefield: str = DEFAULT_FORCEFIELD,
    threads: Optional[int] = None,
    precision: Optional[str] = None,
    deterministic: bool = False,
    ewald_error_tolerance: float = 5e-4,
    minimize_tolerance: float = 10.0,
    minimize_iterations: int = 5000,
    checkpoint: Optional[PathLike] = None,
    allow_any_density: bool = False,
) -> Dict[str, Any]:
    """Run TIP3P water MD with OpenMM and return labelled frames in Å / eV / eV/Å.

    One independent trajectory per seed (own lattice, orientations, velocities and Langevin
    noise); trajectories are concatenated in the order of ``seed``.

    Args:
        n_molecules: waters per box (paper: 258).
        box: cubic box side, Å (paper: 20).
        n_frames: frames saved per seed (paper: 1000).
        every: MD steps between saved frames (paper: 50).
        temperature: Langevin thermostat temperature, K.
        timestep: MD timestep, fs (default 0.5 for flexible, 2.0 for rigid water).
        friction: Langevin friction coefficient, 1/ps.
        seed: one seed or a sequence of seeds (non-negative integers).
        rigid: rigid water (SETTLE) instead of flexible.
        equilibration_steps: steps after minimisation before the first frame
            (default: 5 ps worth of steps).
        platform: OpenMM platform name (Reference, CPU, CUDA, OpenCL); default: fastest.
        progress: show a tqdm progress bar.
        cutoff: PME real-space and LJ cutoff, Å; must be < box/2 (default min(9, box/2 - 0.01)).
        forcefield: OpenMM force-field XML file (default ``tip3p.xml``).
        threads: CPU-platform thread count (fix it for reproducible CPU runs).
        precision: CUDA/OpenCL precision ("single", "mixed", "double").
        deterministic: make the run bit-reproducible on CPU (one thread, DeterministicForces)
            and CUDA (DeterministicForces). Reference is always reproducible; multithreaded CPU
            runs are not (the last bits of force sums vary and MD amplifies them).
        ewald_error_tolerance: PME accuracy.
        minimize_tolerance: minimiser RMS-force tolerance, kJ/mol/nm.
        minimize_iterations: minimiser iteration cap (0: until converged).
        checkpoint: optional ``.partial.npz`` path; each finished seed is written there
            atomically and, if the file exists with the same parameters, finished seeds are
            loaded from it instead of being rerun.
        allow_any_density: generate boxes whose density is outside 0.5-1.5 g/cm³ (with a warning)
            instead of refusing them; 0.85-1.15 g/cm³ is accepted silently, the rest with a warning.

    Returns:
        dict with ``positions`` [F,N,3] Å, ``numbers`` [N], ``cell`` [F,3,3] Å, ``pbc`` [3],
        ``energy`` [F] eV, ``forces`` [F,N,3] eV/Å, ``molecule`` [N], ``trajectory`` [F]
        (index into ``metadata["seeds"]``), ``units`` and ``metadata`` (a dict).
    """
    import openmm

    seeds = [seed] if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) else list(seed)
    if not seeds:
        raise ValueError("seed: give at least one seed")
    for s in seeds:
        _check_int("seed", s, 0)
    if len(set(int(s) for s in seeds)) != len(seeds):
        raise ValueError(f"seed: seeds must be distinct, got {seeds}")
    seeds = [int(s) for s in seeds]
    _check_int("n_frames", n_frames, 1)
    _check_int("every", every, 1)
    _check_positive("temperature", temperature)
    if timestep is None:
        timestep = 2.0 if rigid else 0.5
    _check_positive("timestep", timestep)
    _check_positive("friction", friction, allow_zero=True)
    if equilibration_steps is None:
        equilibration_steps = int(round(DEFAULT_EQUILIBRATION_FS / timestep))
    _check_int("equilibration_steps", equilibration_steps, 0)
    _check_int("minimize_iterations", minimize_iterations, 0)
    _check_positive("minimize_tolerance", minimize_tolerance)
    cutoff = validate_box(n_molecules, box, cutoff)
    check_density(n_molecules, box, allow_any_density)

    plat = select_platform(platform)
    props = _platform_properties(plat, threads, precision, deterministic)
    topology, system = water_system(n_molecules, box, cutoff, rigid, forcefield, ewald_error_tolerance)
    ev = kj_per_mol_to_ev()

    metadata: Dict[str, Any] = {
        "generator": "maskpot.data.tip3p.generate_tip3p",
        "model": "rigid TIP3P (SETTLE)" if rigid else "flexible TIP3P",
        "n_molecules": int(n_molecules),
        "n_atoms": 3 * int(n_molecules),
        "box": float(box),
        "density_g_cm3": water_density(n_molecules, box),
        "n_frames": int(n_frames),
        "every": int(every),
        "temperature": float(temperature),
        "timestep": float(timestep),
        "friction": float(friction),
        "rigid": bool(rigid),
        "equilibration_steps": int(equilibration_steps),
        "cutoff": float(cutoff),
        "nonbonded_method": "PME",
        "ewald_error_tolerance": float(ewald_error_tolerance),
        "dispersion_correction": True,
        "remove_cm_motion": True,
        "integrator": "LangevinMiddleIntegrator",
        "minimize_tolerance": float(minimize_tolerance),
        "minimize_iterations": int(minimize_iterations),
        "forcefield": forcefield,
        "platform": plat.getName(),
        "requested_platform_properties": props,
        "deterministic": bool(deterministic) or plat.getName() == "Reference",
        "openmm_version": openmm.__version__,
        "seeds": seeds,
        "frame_interval_ps": every * timestep / 1000.0,
        "positions_wrapped": False,
        "ev_per_kjmol": ev,
        "units_detail": {
            "box": "angstrom", "cutoff": "angstrom", "temperature": "kelvin", "timestep": "femtosecond",
            "friction": "1/picosecond", "minimize_tolerance": "kJ/mol/nm",
        },
    }

    done: Dict[int, Dict[str, np.ndarray]] = {}
    seed_info: Dict[int, Dict[str, Any]] = {}
    if checkpoint is not None and Path(checkpoint).exists():
        done, seed_info = _load_checkpoint(Path(checkpoint), metadata)

    for s in seeds:
        if s in done:
            continue
        out, info = _run_one_seed(
            s,
            system=system,
            n_molecules=n_molecules,
            box=box,
            n_frames=n_frames,
            every=every,
            temperature=temperature,
            timestep=timestep,
            friction=friction,
            equilibration_steps=equilibration_steps,
            minimize_tolerance=minimize_tolerance,
            minimize_iterations=minimize_iterations,
            platform=plat,
            properties=props,
            progress=progress,
            ev_per_kjmol=ev,
        )
        done[s], seed_info[s] = out, info
        if checkpoint is not None:
            _write_checkpoint(Path(checkpoint), metadata, done, seed_info)

    numbers = np.array([a.element.atomic_number for a in topology.atoms()], dtype=np.int64)
    molecule = np.repeat(np.arange(n_molecules, dtype=np.int64), 3)
    metadata["per_seed"] = [seed_info[s] for s in seeds]
    metadata["resumed_seeds"] = [s for s in seeds if seed_info[s].get("resumed")]
    return {
        "positions": np.concatenate([done[s]["positions"] for s in seeds]),
        "numbers": numbers,
        "cell": np.concatenate([done[s]["cell"] for s in seeds]),
        "pbc": np.ones(3, dtype=bool),
        "energy": np.concatenate([done[s]["energy"] for s in seeds]),
        "forces": np.concatenate([done[s]["forces"] for s in seeds]),
        "molecule": molecule,
        "trajectory": np.repeat(np.arange(len(seeds), dtype=np.int64), n_frames),
        "units": UNITS,
        "metadata": metadata,
    }


def _write_checkpoint(
    path: Path,
    metadata: Mapping[str, Any],
    done: Mapping[int, Mapping[str, np.ndarray]],
    seed_info: Mapping[int, Any],
) -> None:
    """Atomically write the finished seeds (arrays + the parameters they were made with)."""
    arrays: Dict[str, np.ndarray] = {}
    for s, out in done.items():
        for k, v in out.items():
            arrays[f"seed{s}_{k}"] = v
    meta = {
        "params": _params_key(metadata),
        "seeds_done": sorted(done),
        "seed_info": {str(k): v for k, v in seed_info.items()},
    }
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, checkpoint_metadata=np.array(json.dumps(meta, default=str)), **arrays)


def _load_checkpoint(path: Path, metadata: Mapping[str, Any]):
    """Finished seeds from a checkpoint; refuses one made with other parameters."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["checkpoint_metadata"]))
        if meta["params"] != json.loads(json.dumps(_params_key(metadata), default=str)):
            raise ValueError(
                f"checkpoint {path} was written with different parameters {meta['params']}; "
                f"delete it (maskpot-generate: --no-resume) to start over"
            )
        done, info = {}, {}
        for s in meta["seeds_done"]:
            done[int(s)] = {k: z[f"seed{s}_{k}"] for k in ("positions", "energy", "forces", "cell")}
            info[int(s)] = dict(meta["seed_info"][str(s)], resumed=True)
    return done, info


def save_tip3p_npz(path: PathLike, data: Mapping[str, Any], dtype: Union[str, np.dtype] = np.float64) -> None:
    """Write generator output as a maskpot ``.npz``, atomically.

    Keys: ``positions`` [F,N,3] Å, ``numbers`` [N] int64, ``cell`` [F,3,3] Å, ``pbc`` [3] bool,
    ``energy`` [F] eV, ``forces`` [F,N,3] eV/Å, ``molecule`` [N] int64, ``trajectory`` [F]
    int64 (index into ``metadata["seeds"]``), ``units`` ("angstrom,eV": length, energy; forces
    in energy/length) and ``metadata`` (JSON string). The layout is the one
    ``maskpot.data.io.read_npz`` reads. Strings are stored as 0-d unicode arrays, so
    ``np.load`` needs no pickle: ``json.loads(str(z["metadata"]))``.

    Args:
        path: output file (``.npz``); the file only appears once completely written.
        data: the dict returned by :func:`generate_tip3p`.
        dtype: floating dtype for positions, cell, energy, forces.
    """
    from maskpot.utils import hash_arrays, versions

    dtype = np.dtype(dtype)
    arrays = {
        "positions": np.asarray(data["positions"], dtype=dtype),
        "numbers": np.asarray(data["numbers"], dtype=np.int64),
        "cell": np.asarray(data["cell"], dtype=dtype),
        "pbc": np.asarray(data["pbc"], dtype=bool),
        "energy": np.asarray(data["energy"], dtype=dtype),
        "forces": np.asarray(data["forces"], dtype=dtype),
        "molecule": np.asarray(data["molecule"], dtype=np.int64),
    }
    if "trajectory" in data:
        arrays["trajectory"] = np.asarray(data["trajectory"], dtype=np.int64)
    meta = data["metadata"]
    meta = dict(json.loads(meta) if isinstance(meta, str) else meta)
    # Same provenance fields as maskpot.data.io.write_npz (hash over the arrays sorted by key).
    meta.update(
        format=NPZ_FORMAT,
        n_frames=int(arrays["positions"].shape[0]),
        data_hash=hash_arrays(*(arrays[k] for k in sorted(arrays))),
        versions=versions(),
        stored_dtype=str(dtype),
    )
    arrays["units"] = np.array(str(data.get("units", UNITS)))
    arrays["metadata"] = np.array(json.dumps(meta, sort_keys=True, default=str))
    with atomic_path(path) as tmp:
        # Through a file handle so numpy never appends ".npz" to the temporary name.
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def tip3p_labels(
    positions: np.ndarray,
    box: float,
    cutoff: Optional[float] = None,
    platform: Optional[str] = None,
    threads: Optional[int] = None,
    ewald_error_tolerance: float = 5e-4,
) -> Tuple[np.ndarray, np.ndarray]:
    """Flexible-TIP3P energies and forces of arbitrary water geometries (the teacher as a labeller).

    Args:
        positions: [F, N, 3] Å, atoms in topology order (O, H, H per molecule), cubic box.
        box: cubic box side, Å.
        cutoff, platform, threads, ewald_error_tolerance: as in :func:`generate_tip3p`.

    Returns:
        (energy [F] eV, forces [F, N, 3] eV/Å), with the same system and settings as the generator.
    """
    import openmm
    from openmm import unit

    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim != 3 or pos.shape[2] != 3 or pos.shape[1] % 3:
        raise ValueError(f"tip3p_labels: positions must be [frames, 3 x molecules, 3] Å, got shape {pos.shape}")
    n_molecules = pos.shape[1] // 3
    cutoff = validate_box(n_molecules, box, cutoff)
    _, system = water_system(n_molecules, box, cutoff, False, DEFAULT_FORCEFIELD, ewald_error_tolerance)
    plat = select_platform(platform)
    context = openmm.Context(system, openmm.VerletIntegrator(0.5 * unit.femtosecond), plat,
                             _platform_properties(plat, threads, None, False))
    ev = kj_per_mol_to_ev()
    energy, forces = np.empty(len(pos)), np.empty_like(pos)
    for f, x in enumerate(pos):
        context.setPositions(x * unit.angstrom)
        state = context.getState(getEnergy=True, getForces=True, getPositions=True)
        _, energy[f], forces[f], _ = state_arrays(state, ev)
    return energy, forces


def rattle_frames(data: Mapping[str, Any], sigma: float, seed: int, **label_kw: Any) -> Dict[str, Any]:
    """Copies of generator frames with Gaussian noise of ``sigma`` Å on every coordinate,
    labelled with flexible TIP3P (:func:`tip3p_labels`).

    Distorted geometries (stretched bonds, closed H–O–H angles) that thermal MD rarely visits;
    potentials trained with them have a restoring force there, which keeps learned MD stable.
    Returns a dict of the same layout as :func:`generate_tip3p`'s output.
    """
    _check_positive("sigma", sigma)
    rng = np.random.default_rng([int(seed), 4242])
    pos = np.asarray(data["positions"], dtype=np.float64)
    pos = pos + rng.normal(0.0, float(sigma), size=pos.shape)
    box = float(np.asarray(data["cell"])[0, 0, 0])
    energy, forces = tip3p_labels(pos, box, **label_kw)
    meta = dict(json.loads(data["metadata"]) if isinstance(data["metadata"], str) else data["metadata"])
    meta.update(rattle_sigma_angstrom=float(sigma), rattle_seed=int(seed))
    return {**dict(data), "positions": pos, "energy": energy, "forces": forces, "metadata": meta}


def concat_frames(parts: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Concatenate generator outputs of the same system (frames, energies, forces, cells)."""
    if not parts:
        raise ValueError("concat_frames: nothing to concatenate")
    first = parts[0]
    for p in parts[1:]:
        if not np.array_equal(np.asarray(p["numbers"]), np.asarray(first["numbers"])):
            raise ValueError("concat_frames: the parts hold different systems (atomic numbers differ)")
    out = dict(first)
    for key in ("positions", "cell", "energy", "forces"):
        out[key] = np.concatenate([np.asarray(p[key]) for p in parts])
    out["trajectory"] = np.concatenate([np.full(len(p["energy"]), k, dtype=np.int64) for k, p in enumerate(parts)])
    metas = [json.loads(p["metadata"]) if isinstance(p["metadata"], str) else p["metadata"] for p in parts]
    out["metadata"] = {**dict(metas[0]), "parts": metas}
    return out


def partial_path(output: PathLike) -> Path:
    """Checkpoint file used by the CLI for ``output``: ``<name>.partial.npz`` beside it."""
    output = Path(output)
    stem = output.name[: -len(".npz")] if output.name.endswith(".npz") else output.name
    return output.with_name(stem + ".partial.npz")


__all__ = [
    "NPZ_KEYS",
    "UNITS",
    "default_cutoff",
    "generate_tip3p",
    "kj_per_mol_to_ev",
    "max_molecules",
    "partial_path",
    "save_tip3p_npz",
    "select_platform",
    "state_arrays",
    "tip3p_labels",
    "rattle_frames",
    "concat_frames",
    "validate_box",
    "check_density",
    "water_density",
    "water_lattice",
    "water_system",
    "water_topology",
]
