"""pt2 export (torch.export + AOTInductor): equal to the TorchScript export, FD forces, engines."""

import numpy as np
import pytest
import torch

from deploy_models import make_model, water_box
from maskpot.deploy.export import call_exported, export_model, load_exported, read_metadata


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    pytest.importorskip("torch._inductor")
    tmp = tmp_path_factory.mktemp("pt2")
    model = make_model("egnn")
    pt2 = tmp / "model.pt2"
    ts = tmp / "model.pt"
    try:
        export_model(model, pt2, dtype="float64")
    except ValueError as exc:  # no C++ compiler on this machine: AOTInductor cannot build
        if "AOTInductor compilation" in str(exc):
            pytest.skip(str(exc)[:200])
        raise
    export_model(model, ts, dtype="float64")
    return pt2, ts


def _inputs(atoms):
    return (torch.tensor(atoms.positions), torch.tensor(atoms.numbers), torch.tensor(atoms.cell.array),
            torch.tensor([True] * 3))


def test_pt2_metadata_and_equal_to_torchscript(exported):
    pt2, ts = exported
    meta = read_metadata(pt2)
    assert meta["file_format"] == "pt2" and read_metadata(ts)["file_format"] == "torchscript"
    a, _ = load_exported(ts)
    b, _ = load_exported(pt2)
    for n_side in (3, 4):  # dynamic atom and edge counts: two box sizes, one compiled file
        args = _inputs(water_box(n_side=n_side, seed=n_side))
        ea, fa = call_exported(a, *args)
        eb, fb = call_exported(b, *args)
        assert abs(float(ea - eb)) <= 1e-8 * max(1.0, abs(float(ea)))
        assert torch.allclose(fa, fb, atol=1e-8)


def test_pt2_forces_are_minus_energy_gradient(exported):
    module, _ = load_exported(exported[0])
    pos, z, cell, pbc = _inputs(water_box(n_side=3, seed=1))
    _, forces = call_exported(module, pos, z, cell, pbc)
    h = 1e-5
    for atom, axis in [(0, 0), (3, 2), (7, 1)]:
        plus, minus = pos.clone(), pos.clone()
        plus[atom, axis] += h
        minus[atom, axis] -= h
        fd = -(call_exported(module, plus, z, cell, pbc)[0] - call_exported(module, minus, z, cell, pbc)[0]) / (2 * h)
        assert abs(float(fd - forces[atom, axis])) < 1e-5


def test_pt2_refuses_unknown_element_and_stress(exported):
    from ase.calculators.calculator import PropertyNotImplementedError

    from maskpot.deploy.ase import MaskpotCalculator

    module, _ = load_exported(exported[0])
    pos, z, cell, pbc = _inputs(water_box(n_side=3))
    z = z.clone()
    z[0] = 79
    with pytest.raises(ValueError, match="unknown element"):
        call_exported(module, pos, z, cell, pbc)
    atoms = water_box(n_side=3)
    atoms.calc = MaskpotCalculator(exported[0], min_distance=None)
    ref = water_box(n_side=3)
    ref.calc = MaskpotCalculator(exported[1], min_distance=None)
    assert np.allclose(atoms.get_forces(), ref.get_forces(), atol=1e-8)
    with pytest.raises(PropertyNotImplementedError, match="pt2"):
        atoms.get_stress()


def test_pt2_python_force_matches_ase(exported):
    openmm = pytest.importorskip("openmm")
    if not hasattr(openmm, "PythonForce"):
        pytest.skip("openmm.PythonForce needs OpenMM >= 8.5")
    from openmm import unit

    from maskpot.deploy.ase import MaskpotCalculator
    from maskpot.deploy.openmm import create_force

    atoms = water_box(n_side=3)
    system = openmm.System()
    for m in atoms.get_masses():
        system.addParticle(float(m))
    a, b, c = (openmm.Vec3(*row) * 0.1 for row in atoms.cell.array)
    system.setDefaultPeriodicBoxVectors(a, b, c)
    system.addForce(create_force(exported[0], atoms.numbers.tolist(), periodic=True, min_distance=None))
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(atoms.positions * 0.1)
    state = context.getState(getEnergy=True, getForces=True)
    e_omm = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    atoms.calc = MaskpotCalculator(exported[0], min_distance=None)
    from ase import units
    e_ase = atoms.get_potential_energy() * units.eV / (units.kJ / units.mol)
    assert abs(e_omm - e_ase) < 1e-6 * max(1.0, abs(e_ase))
    with pytest.raises(ValueError, match="pt2"):
        create_force(exported[0], atoms.numbers.tolist(), backend="torch", periodic=True)


def test_pt2_invariances(exported):
    """Rotation (open cluster), translation, permutation and wrapping (periodic box): the
    compiled graph keeps the symmetries of the model."""
    module, _ = load_exported(exported[0])
    pos, z, cell, pbc = _inputs(water_box(n_side=3, seed=4))
    e0, f0 = call_exported(module, pos, z, cell, pbc)
    shift = torch.tensor([0.37, -1.1, 2.3], dtype=pos.dtype)
    e1, f1 = call_exported(module, pos + shift, z, cell, pbc)  # translated, and partly outside the box
    assert abs(float(e1 - e0)) < 1e-8 and torch.allclose(f1, f0, atol=1e-8)
    wrapped = pos + shift - torch.floor((pos + shift) @ torch.linalg.inv(cell)) @ cell
    e2, f2 = call_exported(module, wrapped, z, cell, pbc)
    assert abs(float(e2 - e0)) < 1e-8 and torch.allclose(f2, f0, atol=1e-8)
    perm = torch.randperm(len(z), generator=torch.Generator().manual_seed(0))
    e3, f3 = call_exported(module, pos[perm], z[perm], cell, pbc)
    assert abs(float(e3 - e0)) < 1e-8 and torch.allclose(f3, f0[perm], atol=1e-8)
    # rotation: an open cluster (a periodic cell would rotate with it)
    open_pbc = torch.tensor([False] * 3)
    cluster = pos[:24]
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(1), dtype=pos.dtype))
    e4, f4 = call_exported(module, cluster, z[:24], torch.zeros_like(cell), open_pbc)
    e5, f5 = call_exported(module, cluster @ q.T, z[:24], torch.zeros_like(cell), open_pbc)
    assert abs(float(e5 - e4)) < 1e-8 and torch.allclose(f5, f4 @ q.T, atol=1e-8)
