"""TIP3P generator and ``maskpot-generate tip3p``.

All runs use a tiny box on the Reference platform (double precision, bit-reproducible):
16 molecules in an 8 Å box (0.93 g/cm³, near liquid density) with a 3.5 Å PME real-space
cutoff, since OpenMM requires cutoff < box/2 = 4 Å. The physics is crude at that cutoff, but
every check here (finite-difference forces, units, geometry, reproducibility, file handling) is
independent of the cutoff.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import openmm
from openmm import unit

from maskpot.data import io, tip3p
from maskpot.data.cli import main

TINY = dict(n_molecules=16, box=8.0, cutoff=3.5, n_frames=6, every=20, equilibration_steps=200,
            platform="Reference", progress=False)


@pytest.fixture(scope="module")
def flex():
    return tip3p.generate_tip3p(seed=0, **TINY)


@pytest.fixture(scope="module")
def rigid():
    return tip3p.generate_tip3p(seed=0, rigid=True, **TINY)


def _reference_context(rigid: bool = False):
    _, system = tip3p.water_system(TINY["n_molecules"], TINY["box"], TINY["cutoff"], rigid=rigid)
    integrator = openmm.VerletIntegrator(0.5 * unit.femtosecond)
    return openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))


def _geometry(data):
    p = data["positions"].reshape(len(data["positions"]), -1, 3, 3)  # [F, M, (O,H,H), 3]
    d1 = np.linalg.norm(p[:, :, 1] - p[:, :, 0], axis=-1)
    d2 = np.linalg.norm(p[:, :, 2] - p[:, :, 0], axis=-1)
    u1 = (p[:, :, 1] - p[:, :, 0]) / d1[..., None]
    u2 = (p[:, :, 2] - p[:, :, 0]) / d2[..., None]
    angle = np.degrees(np.arccos(np.clip((u1 * u2).sum(-1), -1, 1)))
    return np.stack([d1, d2], -1), angle


def test_shapes_and_layout(flex):
    F, N = TINY["n_frames"], 3 * TINY["n_molecules"]
    assert flex["positions"].shape == (F, N, 3) and flex["forces"].shape == (F, N, 3)
    assert flex["energy"].shape == (F,) and flex["cell"].shape == (F, 3, 3)
    assert flex["numbers"].tolist() == [8, 1, 1] * TINY["n_molecules"]
    assert flex["molecule"].tolist() == np.repeat(np.arange(TINY["n_molecules"]), 3).tolist()
    assert flex["pbc"].tolist() == [True, True, True]
    assert flex["trajectory"].tolist() == [0] * F
    np.testing.assert_allclose(flex["cell"], np.broadcast_to(np.eye(3) * TINY["box"], (F, 3, 3)), atol=1e-12)
    meta = flex["metadata"]
    assert meta["forcefield"] == "tip3p.xml" and meta["platform"] == "Reference" and meta["seeds"] == [0]
    assert meta["timestep"] == 0.5 and meta["cutoff"] == 3.5 and meta["rigid"] is False


def test_forces_are_minus_energy_gradient(flex):
    """Stored forces (eV/Å) = -dE/dr by central differences of OpenMM energies (Reference, double)."""
    frame = 3
    pos = flex["positions"][frame].copy()
    context = _reference_context()
    ev = tip3p.kj_per_mol_to_ev()
    h = 1e-4  # Å

    def energy(x):
        context.setPositions(x * unit.angstrom)
        return context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) * ev

    scale = np.sqrt(np.mean(flex["forces"][frame] ** 2))
    for atom in (0, 1, 2, 22, 47):  # O, H, H of molecule 0 and atoms of other molecules
        for axis in range(3):
            xp, xm = pos.copy(), pos.copy()
            xp[atom, axis] += h
            xm[atom, axis] -= h
            fd = -(energy(xp) - energy(xm)) / (2 * h)
            assert abs(fd - flex["forces"][frame, atom, axis]) < 1e-3 * scale, (atom, axis, fd)


def test_units_against_openmm(flex):
    """eV = OpenMM kJ/mol / 96.485..., eV/Å = kJ/mol/nm / 964.85...; geometry and density sane."""
    frame = 2
    context = _reference_context()
    context.setPositions(flex["positions"][frame] * unit.angstrom)
    state = context.getState(getEnergy=True, getForces=True)
    e_kj = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    f_kj_nm = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    assert flex["energy"][frame] == pytest.approx(e_kj / 96.485, rel=1e-4)
    np.testing.assert_allclose(flex["forces"][frame], f_kj_nm / 964.85, rtol=1e-4, atol=1e-9)
    # Liquid water: about -41 kJ/mol per molecule (≈ -0.14 eV per atom); not +/- 1000x off.
    per_molecule_kj = flex["energy"].mean() / tip3p.kj_per_mol_to_ev() / TINY["n_molecules"]
    assert -60 < per_molecule_kj < -20

    oh, angle = _geometry(flex)
    assert 0.90 < oh.min() and oh.max() < 1.05  # Å; also proves molecules are stored whole
    assert oh.mean() == pytest.approx(0.96, abs=0.03)
    assert angle.mean() == pytest.approx(104.5, abs=5)
    assert tip3p.water_density(258, 20.0) == pytest.approx(0.965, abs=0.005)  # the paper's box
    assert flex["metadata"]["density_g_cm3"] == pytest.approx(0.935, abs=0.005)


def test_seeded_reproducibility(flex):
    two = tip3p.generate_tip3p(seed=[0, 1], **TINY)
    F = TINY["n_frames"]
    assert two["trajectory"].tolist() == [0] * F + [1] * F
    for key in ("positions", "forces", "energy"):
        np.testing.assert_array_equal(two[key][:F], flex[key])  # same seed: identical bits
    assert not np.allclose(two["positions"][F:], flex["positions"])  # different seed: different
    assert two["metadata"]["seeds"] == [0, 1]


def test_flexible_geometry_fluctuates_rigid_does_not(flex, rigid):
    oh, angle = _geometry(flex)
    assert oh.std(axis=0).mean() > 5e-3  # Å
    assert angle.std(axis=0).mean() > 1.0  # degrees
    oh_r, angle_r = _geometry(rigid)
    assert rigid["metadata"]["timestep"] == 2.0
    assert oh_r.std(axis=0).max() < 1e-4
    assert angle_r.std(axis=0).max() < 1e-2
    assert oh_r.mean() == pytest.approx(0.9572, abs=1e-4)


def test_cpu_deterministic_is_reproducible():
    kw = dict(TINY, platform="CPU", n_frames=3, equilibration_steps=100)
    a = tip3p.generate_tip3p(seed=3, deterministic=True, **kw)
    b = tip3p.generate_tip3p(seed=3, deterministic=True, **kw)
    np.testing.assert_array_equal(a["positions"], b["positions"])
    np.testing.assert_array_equal(a["forces"], b["forces"])
    assert a["metadata"]["per_seed"][0]["platform_properties"]["Threads"] == "1"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_molecules=200, box=8.0), "n_molecules=200 do not fit in box=8.0"),
        (dict(n_molecules=16, box=8.0, cutoff=4.0), "cutoff=4.0 .* half the box"),
        (dict(n_molecules=16, box=8.0, n_frames=0), "n_frames"),
        (dict(n_molecules=16, box=8.0, timestep=-1.0), "timestep"),
        (dict(n_molecules=16, box=8.0, seed=-1), "seed"),
        (dict(n_molecules=16, box=8.0, platform="NoSuchPlatform"), "NoSuchPlatform"),
        (dict(n_molecules=16, box=8.0, platform="Reference", threads=2), "threads"),
    ],
)
def test_validation_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tip3p.generate_tip3p(progress=False, **kwargs)


def test_forcefield_without_flexible_terms_is_refused(tmp_path: Path):
    """A water model with no bond/angle terms would fly apart when rigid=False: refuse it."""
    import os
    import re

    from openmm import app

    xml = Path(os.path.dirname(app.__file__), "data", "tip3p.xml").read_text()
    xml = re.sub(r"<Harmonic(Bond|Angle)Force>.*?</Harmonic(Bond|Angle)Force>", "", xml, flags=re.S)
    ff = tmp_path / "tip3p_no_bonds.xml"
    ff.write_text(xml)
    with pytest.raises(ValueError, match="does not give flexible water"):
        tip3p.water_system(16, 8.0, 3.5, rigid=False, forcefield=str(ff))
    # amber14's TIP3P carries the same flexible terms (and ion parameters).
    tip3p.water_system(16, 8.0, 3.5, rigid=False, forcefield="amber14/tip3p.xml")


def test_default_cutoff():
    assert tip3p.default_cutoff(20.0) == 9.0
    assert tip3p.default_cutoff(8.0) == pytest.approx(3.99)
    assert tip3p.max_molecules(20.0) == 512


CLI = ["tip3p", "--molecules", "16", "--box", "8", "--cutoff", "3.5", "--frames", "3", "--every", "10",
       "--equilibration", "50", "--platform", "Reference", "--no-progress"]


def test_cli_writes_npz_and_provenance(tmp_path: Path, capsys):
    out = tmp_path / "water.npz"
    assert main(CLI + ["-o", str(out), "--seeds", "0", "1"]) == 0
    with np.load(out, allow_pickle=False) as z:
        for key in tip3p.NPZ_KEYS + ("trajectory",):
            assert key in z.files, key
        assert z["positions"].shape == (6, 48, 3) and z["forces"].shape == (6, 48, 3)
        assert str(z["units"]) == "angstrom,eV"
        meta = json.loads(str(z["metadata"]))
        assert z["trajectory"].tolist() == [0, 0, 0, 1, 1, 1]
    assert meta["seeds"] == [0, 1] and meta["platform"] == "Reference" and meta["forcefield"] == "tip3p.xml"
    assert meta["openmm_version"] == openmm.__version__ and meta["format"] == "maskpot-npz-1"
    prov = json.loads((tmp_path / "water.npz.json").read_text())
    assert prov["args"]["molecules"] == 16 and "openmm" in prov["versions"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["water.npz", "water.npz.json"]  # no partial/tmp
    printed = capsys.readouterr().out
    assert "6 frames x 48 atoms" in printed and "force RMS" in printed

    # The project's reader takes the file as is.
    samples = io.read_npz(out)
    assert len(samples) == 6 and samples[0].molecule is not None
    with np.load(out) as z:
        np.testing.assert_array_equal(samples[4].forces, z["forces"][4])

    with pytest.raises(SystemExit, match="exists"):
        main(CLI + ["-o", str(out)])


def test_cli_interrupted_run_leaves_no_output_and_resumes(tmp_path: Path, monkeypatch):
    out = tmp_path / "water.npz"
    real = tip3p.state_arrays
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # second seed, second frame
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(tip3p, "state_arrays", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(CLI + ["-o", str(out), "--seeds", "0", "1"])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["water.partial.npz"]  # no output, no provenance, no temporary files

    monkeypatch.setattr(tip3p, "state_arrays", real)
    assert main(CLI + ["-o", str(out), "--seeds", "0", "1"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["water.npz", "water.npz.json"]
    with np.load(out) as z:
        meta = json.loads(str(z["metadata"]))
        resumed = {k: z[k] for k in ("positions", "forces", "energy")}
    assert meta["resumed_seeds"] == [0]
    fresh = tip3p.generate_tip3p(
        n_molecules=16, box=8.0, cutoff=3.5, n_frames=3, every=10, equilibration_steps=50,
        platform="Reference", progress=False, seed=[0, 1],
    )
    for key, value in resumed.items():
        np.testing.assert_array_equal(value, fresh[key])


def test_checkpoint_with_other_parameters_is_refused(tmp_path: Path):
    ck = tmp_path / "x.partial.npz"
    kw = dict(n_molecules=16, box=8.0, cutoff=3.5, n_frames=2, every=5, equilibration_steps=10,
              platform="Reference", progress=False)
    tip3p.generate_tip3p(seed=0, checkpoint=ck, **kw)
    assert ck.exists()
    with pytest.raises(ValueError, match="different parameters"):
        tip3p.generate_tip3p(seed=0, checkpoint=ck, **dict(kw, every=6))


def test_tip3p_labels_reproduce_the_generator(flex):
    """Relabelling the generator's own frames gives its energies and forces (same system)."""
    energy, forces = tip3p.tip3p_labels(flex["positions"], TINY["box"], cutoff=TINY["cutoff"], platform="Reference")
    assert np.allclose(energy, flex["energy"], atol=1e-6)
    assert np.allclose(forces, flex["forces"], atol=1e-5)


def test_rattled_frames_are_distorted_and_labelled(flex):
    rattled = tip3p.rattle_frames(flex, 0.1, seed=3, cutoff=TINY["cutoff"], platform="Reference")
    shift = rattled["positions"] - flex["positions"]
    assert 0.08 < shift.std() < 0.12
    bonds, angle = _geometry(rattled)
    bonds0, angle0 = _geometry(flex)
    assert bonds.std() > 2 * bonds0.std() and angle.std() > angle0.std()
    # distorted geometries cost energy and have larger restoring forces
    assert rattled["energy"].mean() > flex["energy"].mean()
    assert np.abs(rattled["forces"]).mean() > np.abs(flex["forces"]).mean()
    both = tip3p.concat_frames([flex, rattled])
    assert len(both["energy"]) == 2 * len(flex["energy"]) and both["trajectory"].max() == 1
    with pytest.raises(ValueError, match="positions must be"):
        tip3p.tip3p_labels(np.zeros((2, 4, 3)), TINY["box"])
