"""OpenMM PythonForce: NVE energy conservation, box changes, ML/MM mixed systems, openmm-ml,
serialisation and refused inputs."""

from __future__ import annotations

import pickle

import numpy as np
import openmm
import openmm.app as app
import pytest
from openmm import unit

from deploy_models import MODEL_NAMES, make_model, molecule, water_box, water_topology
from omm_helpers import evaluate, ml_system, platform

from maskpot.deploy.ase import MaskpotCalculator
from maskpot.deploy.openmm import ANGSTROM_PER_NM, KJ_PER_MOL_PER_EV, PythonForceComputation, create_force

ENERGY_MODELS = [n for n in MODEL_NAMES if make_model(n).kind == "energy"]
FORCE_MODELS = [n for n in MODEL_NAMES if make_model(n).kind == "force"]
# The NVE model: a real energy-centric model when registered, else the toy.
NVE_MODEL = next((n for n in ("painn", "egnn") if n in MODEL_NAMES), "toy-energy")


def test_unit_constants_come_from_openmm_unit():
    assert ANGSTROM_PER_NM == 10.0
    # CODATA eV * N_A in kJ/mol, as openmm.unit defines it
    assert KJ_PER_MOL_PER_EV == pytest.approx(96.485332, rel=1e-7)


def _nve(path, atoms, steps, seed=1):
    # random weights: atoms may come closer than the adapters' 0.1 Å overlap check; conservation is tested
    system = ml_system(atoms, create_force(path, atoms.numbers, periodic=bool(atoms.pbc.all()), min_distance=None))
    plat, props = platform("Reference")
    integrator = openmm.VerletIntegrator(0.5 * unit.femtosecond)
    context = openmm.Context(system, integrator, plat, props)
    context.setPositions(atoms.positions * unit.angstrom)
    context.setVelocitiesToTemperature(300 * unit.kelvin, seed)
    totals = []
    for _ in range(steps // 10 + 1):
        state = context.getState(getEnergy=True)
        totals.append((state.getPotentialEnergy() + state.getKineticEnergy()).value_in_unit(unit.kilojoule_per_mole))
        integrator.step(10)
    totals = np.array(totals) / KJ_PER_MOL_PER_EV * 1000.0 / len(atoms)  # meV/atom
    return totals - totals[0]


@pytest.mark.slow
@pytest.mark.parametrize("system", ["molecule", "water_box"])
def test_nve_energy_conservation(exported, system, record_property):
    """float64 export of a small energy-centric model (random weights), VerletIntegrator 0.5 fs,
    300 steps: the total energy must stay put."""
    path, _ = exported(NVE_MODEL, "float64")
    atoms = molecule() if system == "molecule" else water_box()
    dev = _nve(path, atoms, steps=300)
    drift = float(np.abs(dev).max())
    record_property("nve_max_abs_dev_meV_per_atom", drift)
    print(f"\nNVE {NVE_MODEL} float64, {system} ({len(atoms)} atoms), 0.5 fs x 300 steps: "
          f"max |E_tot - E_tot(0)| = {drift:.3g} meV/atom, final {dev[-1]:.3g} meV/atom")
    assert drift < 0.5, f"energy drift {drift} meV/atom"


@pytest.mark.slow
@pytest.mark.parametrize("name", FORCE_MODELS)
def test_nve_force_centric_drift_is_reported(exported, name, record_property):
    """Force-centric models are not conservative: the drift is measured and reported, only
    required to be finite."""
    path, _ = exported(name, "float64")
    dev = _nve(path, water_box(), steps=300)
    drift = float(np.abs(dev).max())
    record_property("nve_max_abs_dev_meV_per_atom", drift)
    print(f"\nNVE {name} (force-centric) float64, water_box (81 atoms), 0.5 fs x 300 steps: max |dE_tot| = {drift:.3g} meV/atom")
    assert np.isfinite(drift)


def test_box_read_at_every_call_barostat(exported):
    path, _ = exported("toy-energy", "float64")
    atoms = water_box()
    system = ml_system(atoms, create_force(path, water_topology(atoms)))
    barostat = openmm.MonteCarloBarostat(1000 * unit.bar, 300 * unit.kelvin, 1)
    barostat.setRandomNumberSeed(20261205)  # a fixed seed: the test must not depend on luck
    system.addForce(barostat)
    plat, props = platform("Reference")
    integrator = openmm.VerletIntegrator(0.5 * unit.femtosecond)
    context = openmm.Context(system, integrator, plat, props)
    context.setPositions(atoms.positions * unit.angstrom)
    # a box the barostat did not make: scale everything by 1.04
    box = np.asarray(atoms.cell) * 1.04
    context.setPeriodicBoxVectors(*[openmm.Vec3(*r) * unit.angstrom for r in box])
    context.setPositions(atoms.positions * 1.04 * unit.angstrom)
    # Monte Carlo volume moves can all be rejected in a few steps: step until one is accepted
    for _ in range(40):
        integrator.step(5)
        state = context.getState(getEnergy=True, getPositions=True, getForces=True)
        box = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.angstrom)
        if abs(box[0, 0] - 1.04 * atoms.cell[0, 0]) > 1e-9:
            break
    assert abs(box[0, 0] - 1.04 * atoms.cell[0, 0]) > 1e-9, "barostat did not move the box in 200 steps"
    moved = atoms.copy()
    moved.set_cell(np.asarray(box))
    moved.positions = state.getPositions(asNumpy=True).value_in_unit(unit.angstrom)
    moved.calc = MaskpotCalculator(path)
    e = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / KJ_PER_MOL_PER_EV
    assert e == pytest.approx(moved.get_potential_energy(), rel=1e-10)


def test_cutoff_larger_than_half_box_refused(exported):
    path, _ = exported("toy-energy", "float64")
    small = water_box(n_side=2, spacing=3.1)  # 6.2 A < 2 x 4 A cutoff
    with pytest.raises(ValueError, match="larger than half"):
        create_force(path, water_topology(small))
    # at run time: the box shrinks below 2 x cutoff
    atoms = water_box()
    system = ml_system(atoms, create_force(path, water_topology(atoms)))
    plat, props = platform("Reference")
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), plat, props)
    context.setPositions(atoms.positions * unit.angstrom)
    context.getState(getEnergy=True)
    context.setPeriodicBoxVectors(*[openmm.Vec3(*r) * unit.angstrom for r in np.eye(3) * 7.0])
    with pytest.raises(Exception, match="larger than half"):
        context.getState(getEnergy=True)


def test_refused_inputs(exported):
    path, _ = exported("toy-energy", "float64")
    with pytest.raises(ValueError, match=r"unknown element.*\[17\]"):
        create_force(path, [8, 1, 17])
    with pytest.raises(ValueError, match="unknown backend"):
        create_force(path, [8, 1, 1], backend="cuda")
    with pytest.raises(ValueError, match="atoms"):
        create_force(path, [8, 1, 1], atoms=[0, 5])
    with pytest.raises(ValueError, match="not a TorchScript export file"):
        bad = path.parent / "not_a_model.pt"
        bad.write_text("hello")
        create_force(bad, [8, 1, 1])


def test_serialisation_round_trip(exported):
    """The callback pickles (model path, not the module): XmlSerializer works."""
    path, _ = exported("toy-energy", "float64")
    atoms = molecule()
    system = ml_system(atoms, create_force(path, atoms.numbers, periodic=False))
    copy = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system))
    e1, f1 = evaluate(system, atoms.positions)
    e2, f2 = evaluate(copy, atoms.positions)
    assert e1 == e2 and np.array_equal(f1, f2)
    comp = pickle.loads(pickle.dumps(PythonForceComputation(path, atoms.numbers, False)))
    assert comp._module is None


def _tip3p_system(atoms):
    topology = water_topology(atoms)
    ff = app.ForceField("tip3p.xml")
    system = ff.createSystem(topology, nonbondedMethod=app.PME, nonbondedCutoff=0.45 * unit.nanometer,
                             rigidWater=False, constraints=None)
    return topology, system


def _ml_group_energy(system, positions, group=1):
    return evaluate(system, positions, "Reference", groups=1 << group)


@pytest.mark.parametrize("name", ["toy-energy", NVE_MODEL] if NVE_MODEL != "toy-energy" else ["toy-energy"])
def test_mixed_system_create_force(exported, name):
    """ML region (two waters) + classical TIP3P rest; ML forces only on the ML atoms."""
    path, _ = exported(name, "float64")
    atoms = water_box()
    topology, system = _tip3p_system(atoms)
    ml = list(range(6))
    force = create_force(path, topology, atoms=ml)
    force.setForceGroup(1)
    system.addForce(force)
    e_ml, f_ml = _ml_group_energy(system, atoms.positions)
    sub = atoms[ml]
    sub.calc = MaskpotCalculator(path)
    assert e_ml == pytest.approx(sub.get_potential_energy(), rel=1e-10)
    np.testing.assert_allclose(f_ml[ml], sub.get_forces(), atol=1e-9)
    assert np.all(f_ml[6:] == 0.0)
    # and it runs (CPU platform)
    plat, props = platform("CPU")
    integrator = openmm.VerletIntegrator(0.5 * unit.femtosecond)
    context = openmm.Context(system, integrator, plat, props)
    context.setPositions(atoms.positions * unit.angstrom)
    integrator.step(20)
    assert np.isfinite(context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))


def test_openmmml_create_system_and_mixed_system(exported):
    openmmml = pytest.importorskip("openmmml", reason="openmm-ml not installed (pip install 'maskpot[openmmml]')")
    path, _ = exported("toy-energy", "float64")
    atoms = water_box()
    topology, mm_system = _tip3p_system(atoms)
    potential = openmmml.MLPotential("maskpot", modelPath=str(path))
    # everything ML
    system = potential.createSystem(topology)
    e, f = evaluate(system, atoms.positions)
    atoms.calc = MaskpotCalculator(path)
    assert e == pytest.approx(atoms.get_potential_energy(), rel=1e-10)
    np.testing.assert_allclose(f, atoms.get_forces(), atol=1e-9)
    # ML region + TIP3P rest (mechanical embedding)
    ml = list(range(6))
    mixed = potential.createMixedSystem(topology, mm_system, ml, forceGroup=1)
    e_ml, f_ml = _ml_group_energy(mixed, atoms.positions)
    sub = atoms[ml]
    sub.calc = MaskpotCalculator(path)
    assert e_ml == pytest.approx(sub.get_potential_energy(), rel=1e-10)
    np.testing.assert_allclose(f_ml[ml], sub.get_forces(), atol=1e-9)
    # the classical intramolecular terms of the ML waters are gone: the MM part differs
    e_mm_before, _ = evaluate(mm_system, atoms.positions)
    e_mm_after, _ = evaluate(mixed, atoms.positions, groups=1)
    assert e_mm_after != pytest.approx(e_mm_before, rel=1e-8)
    integrator = openmm.VerletIntegrator(0.5 * unit.femtosecond)
    context = openmm.Context(mixed, integrator, *platform("Reference"))
    context.setPositions(atoms.positions * unit.angstrom)
    integrator.step(10)
    with pytest.raises(ValueError, match="modelPath"):
        openmmml.MLPotential("maskpot")
