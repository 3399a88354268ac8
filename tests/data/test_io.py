"""Readers and writers: real reference files, unit conversion, round trips, water molecules."""


import numpy as np
import pytest
from ase import units

from maskpot.data.io import (
    detect_format,
    read_dataset,
    read_deepmd,
    read_npz,
    read_rmd17,
    read_runner,
    read_xyz,
    write_dataset,
    write_npz,
)
from maskpot.data.molecules import assign_water_molecules, minimum_image
from maskpot.data.sample import Sample, collate
from maskpot.data.validate import DataValidationError

KCAL = units.kcal / units.mol


# ----------------------------------------------------------------------------- rMD17


@pytest.mark.parametrize("molecule,n_atoms", [("aspirin", 21), ("ethanol", 9)])
def test_rmd17_units(shared_data, molecule, n_atoms):
    path = shared_data / "rmd17" / f"rmd17_{molecule}_train_01.npz"
    raw = np.load(path)
    assert detect_format(path) == "rmd17"
    samples = read_dataset(path, index=[0, 7, 999])
    assert [s.info["frame"] for s in samples] == [0, 7, 999]
    for s in samples:
        f = s.info["frame"]
        assert s.n_atoms == n_atoms
        np.testing.assert_array_equal(s.numbers, raw["nuclear_charges"])
        np.testing.assert_allclose(s.positions, raw["coords"][f])  # already Å
        assert s.energy == pytest.approx(float(raw["energies"][f]) * KCAL, rel=1e-12)
        np.testing.assert_allclose(s.forces, raw["forces"][f] * KCAL, rtol=1e-12)
        assert not s.is_periodic
    # Sanity: an organic molecule's total PBE energy is thousands of eV, not hundreds of thousands.
    assert -2e4 < samples[0].energy < -1e3
    # read_npz dispatches on keys too.
    assert read_npz(path, index=slice(0, 2))[1].energy == pytest.approx(read_rmd17(path, 1)[0].energy)


# ----------------------------------------------------------------------------- DeePMD


def test_deepmd_water(shared_data):
    root = shared_data / "water_dft" / "deepmd_water"
    assert detect_format(root) == "deepmd"
    samples = read_dataset(root)
    assert len(samples) == 320
    s = samples[0]
    assert s.n_atoms == 192
    assert (s.numbers == 8).sum() == 64 and (s.numbers == 1).sum() == 128
    np.testing.assert_allclose(np.diag(s.cell), 12.4447, atol=1e-3)
    assert s.pbc.all()
    # eV: ~ -467 eV per water molecule for this DFT setup (the raw file is in eV already).
    raw_e = np.load(root / "data_0" / "set.000" / "energy.npy")
    assert s.energy == pytest.approx(float(raw_e[0]))
    assert -600 < s.energy / 64 < -300
    raw_f = np.load(root / "data_0" / "set.000" / "force.npy")
    np.testing.assert_allclose(s.forces, raw_f[0].reshape(-1, 3), rtol=1e-6)
    # Systems and sets concatenated in order: data_1 has two sets (frames 80..239).
    assert samples[80].info["set"] == "set.000" and samples[160].info["set"] == "set.001"
    assert samples[-1].info["frame"] == 319
    one = read_deepmd(root / "data_1", index=slice(78, 82))
    assert [x.info["set"] for x in one] == ["set.000", "set.000", "set.001", "set.001"]


# ----------------------------------------------------------------------------- RuNNer


def test_runner_water(shared_data):
    path = shared_data / "water_dft" / "rpbe_d3_n2p2" / "input.data"
    assert detect_format(path) == "runner"
    samples = read_dataset(path)
    assert len(samples) == 20
    first = samples[0]
    assert first.n_atoms == 192
    # First frame: lattice 24.623508 Bohr, first O at 3.735290838 Bohr, energy -4900.37328433 Ha.
    np.testing.assert_allclose(np.diag(first.cell), 24.623508 * units.Bohr)
    assert first.positions[0, 0] == pytest.approx(3.735290838 * units.Bohr)
    assert first.energy == pytest.approx(-4900.37328433 * units.Hartree)
    assert first.forces[0, 2] == pytest.approx(-0.027992554 * units.Hartree / units.Bohr)
    assert first.pbc.all()
    # After conversion, O-H bonds are ~1 Å.
    for s in samples[:3]:
        m = assign_water_molecules(s)
        h = np.flatnonzero(s.numbers == 1)
        o = np.flatnonzero(s.numbers == 8)
        d = np.linalg.norm(minimum_image(s.positions[h] - s.positions[o[m.molecule[h]]], s.cell, s.pbc), axis=1)
        assert 0.95 < np.median(d) < 1.02
        assert d.max() < 1.3
    # Energy per water in eV: these are all-electron-like totals, ~ -76.5 Ha = -2082 eV per H2O
    # (in Hartree it would be ~ -76.5, in kcal/mol ~ -48000).
    for s in samples:
        assert -2200 < s.energy / (s.n_atoms // 3) < -2000


def test_runner_subset_and_errors(tmp_path):
    text = (
        "begin\ncomment test\n"
        "atom 0.0 0.0 0.0 O 0.0 0.0 0.1 0.0 0.0\n"
        "atom 1.8 0.0 0.0 H 0.0 0.0 0.0 0.0 0.0\n"
        "energy -1.0\ncharge 0.0\nend\n"
    )
    good = tmp_path / "input.data"
    good.write_text(text * 3)
    s = read_runner(good, index=-1)
    assert len(s) == 1 and s[0].info["frame"] == 2
    assert not s[0].is_periodic
    assert s[0].positions[1, 0] == pytest.approx(1.8 * units.Bohr)

    bad = tmp_path / "broken" / "input.data"
    bad.parent.mkdir()
    bad.write_text(text.replace("atom 1.8 0.0 0.0 H 0.0 0.0 0.0 0.0 0.0", "atom 1.8 0.0 H 0.0"))
    with pytest.raises(DataValidationError, match=r"broken/input.data:4.*'atom'.*10 fields"):
        read_runner(bad)
    bad.write_text(text.replace("end\n", ""))
    with pytest.raises(DataValidationError, match="'end'"):
        read_runner(bad)
    bad.write_text(text.replace(" H ", " Xx "))
    with pytest.raises(DataValidationError, match="unknown element 'Xx'"):
        read_runner(bad)


# ----------------------------------------------------------------------------- round trips


def _samples(rng, periodic=True, n_frames=3, n_atoms=5, labels=True, molecule=False):
    out = []
    for f in range(n_frames):
        cell = np.diag([6.0, 7.0, 8.0]) + 0.3 * np.triu(rng.standard_normal((3, 3)), 1) if periodic else np.zeros((3, 3))
        out.append(
            Sample(
                positions=rng.uniform(0, 5, (n_atoms, 3)),
                numbers=rng.choice([1, 6, 8], n_atoms),
                cell=cell,
                pbc=np.full(3, periodic),
                energy=float(rng.normal(-100, 5)) if labels else None,
                forces=rng.standard_normal((n_atoms, 3)) if labels else None,
                molecule=np.arange(n_atoms) // 2 if molecule else None,
            )
        )
    return out


def _assert_same(a, b, atol):
    np.testing.assert_allclose(a.positions, b.positions, atol=atol)
    np.testing.assert_array_equal(a.numbers, b.numbers)
    np.testing.assert_allclose(a.cell, b.cell, atol=atol)
    np.testing.assert_array_equal(a.pbc, b.pbc)
    assert (a.energy is None) == (b.energy is None)
    if a.energy is not None:
        assert a.energy == pytest.approx(b.energy, abs=atol)
    assert (a.forces is None) == (b.forces is None)
    if a.forces is not None:
        np.testing.assert_allclose(a.forces, b.forces, atol=atol)
    if a.molecule is not None:
        np.testing.assert_array_equal(a.molecule, b.molecule)
    else:
        assert b.molecule is None


@pytest.mark.parametrize("periodic", [True, False])
@pytest.mark.parametrize("suffix", [".xyz", ".extxyz", ".npz"])
def test_round_trip(tmp_path, periodic, suffix):
    rng = np.random.default_rng(0)
    samples = _samples(rng, periodic=periodic, molecule=True)
    path = tmp_path / f"data{suffix}"
    write_dataset(path, samples)
    back = read_dataset(path)
    assert len(back) == len(samples)
    for a, b in zip(samples, back):
        _assert_same(a, b, atol=1e-7 if suffix != ".npz" else 0.0)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporaries left


def test_round_trip_unlabelled_and_ragged(tmp_path):
    rng = np.random.default_rng(1)
    samples = _samples(rng, n_atoms=4, labels=False) + _samples(rng, n_atoms=7, labels=False)
    for name in ("u.npz", "u.xyz"):
        write_dataset(tmp_path / name, samples)
        back = read_dataset(tmp_path / name)
        for a, b in zip(samples, back):
            _assert_same(a, b, atol=1e-7)
    # Mixed labelled/unlabelled frames are refused, not silently dropped.
    mixed = _samples(rng, n_frames=1) + _samples(rng, n_frames=1, labels=False)
    with pytest.raises(ValueError, match="'energy'"):
        write_npz(tmp_path / "m.npz", mixed)


def test_npz_units_and_metadata(tmp_path):
    rng = np.random.default_rng(2)
    samples = _samples(rng)
    path = tmp_path / "d.npz"
    write_npz(path, samples, metadata={"origin": "unit-test"})
    raw = dict(np.load(path))
    assert str(raw["units"]) == "angstrom,eV"
    assert raw["positions"].shape == (3, 5, 3) and raw["cell"].shape == (3, 3, 3)
    back = read_npz(path)
    assert back[0].info["metadata"]["origin"] == "unit-test"
    assert "data_hash" in back[0].info["metadata"]
    # A file in nm / kJ/mol is converted on read with ase.units factors.
    raw["units"] = np.array("nm,kJ/mol")
    np.savez(tmp_path / "nm.npz", **raw)
    conv = read_npz(tmp_path / "nm.npz")
    np.testing.assert_allclose(conv[0].positions, samples[0].positions * units.nm)
    assert conv[0].energy == pytest.approx(samples[0].energy * units.kJ / units.mol)
    np.testing.assert_allclose(conv[0].forces, samples[0].forces * (units.kJ / units.mol) / units.nm)


def test_xyz_custom_keys_and_molecule(tmp_path):
    import ase.io
    from ase import Atoms

    atoms = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]], cell=[5, 5, 5], pbc=True)
    atoms.info["REF_energy"] = -14.5
    atoms.arrays["REF_forces"] = np.ones((3, 3))
    atoms.arrays["molecule"] = np.zeros(3, dtype=int)
    ase.io.write(tmp_path / "w.xyz", [atoms, atoms], format="extxyz")
    s = read_xyz(tmp_path / "w.xyz", energy_key="REF_energy", forces_key="REF_forces", index=1)
    assert len(s) == 1 and s[0].info["frame"] == 1
    assert s[0].energy == -14.5
    np.testing.assert_allclose(s[0].forces, 1.0)
    np.testing.assert_array_equal(s[0].molecule, [0, 0, 0])
    # Frame numbers stay those of the file whatever the selection.
    ase.io.write(tmp_path / "many.xyz", [atoms] * 6, format="extxyz")
    for index, frames in [(slice(2, 6, 2), [2, 4]), (-1, [5]), (slice(-2, None), [4, 5]), ([3, 0], [3, 0]), (4, [4])]:
        assert [x.info["frame"] for x in read_xyz(tmp_path / "many.xyz", index=index)] == frames
    # Without the custom keys there are no labels (never guessed).
    plain = read_xyz(tmp_path / "w.xyz")
    assert plain[0].energy is None and plain[0].forces is None


def test_dispatch_errors(tmp_path):
    with pytest.raises(DataValidationError, match="format"):
        detect_format(tmp_path / "data.csv")
    with pytest.raises(ValueError, match="cannot write"):
        write_dataset(tmp_path / "data.csv", _samples(np.random.default_rng(0)))
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        read_dataset(tmp_path / "missing.npz", format="npz")


# ----------------------------------------------------------------------------- water molecules


def _water_box(rng, n_side=3, a=3.2, triclinic=False):
    """Waters on a lattice, rigidly rotated, then shifted so several straddle the boundary."""
    cell = np.eye(3) * a * n_side
    if triclinic:
        cell[1, 0] = 1.5
        cell[2, 0], cell[2, 1] = 0.8, -1.1
    grid = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    centres = (grid + 0.5) / n_side @ cell
    geom = np.array([[0, 0, 0], [0.9572, 0, 0], [0.9572 * np.cos(1.824), 0.9572 * np.sin(1.824), 0]])
    pos, z = [], []
    for c in centres:
        q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
        pos.append(c + geom @ q.T)
        z += [8, 1, 1]
    pos = np.concatenate(pos)
    # Shift so that O atoms sit right at a face, then wrap everything into the cell:
    # many molecules now have H on the other side of the box from their O.
    pos = pos - centres[0] + 0.1
    frac = pos @ np.linalg.inv(cell)
    pos = (frac % 1.0) @ cell
    perm = rng.permutation(len(z))  # atom order should not matter
    return Sample(positions=pos[perm], numbers=np.array(z)[perm], cell=cell, pbc=True), perm


@pytest.mark.parametrize("triclinic", [False, True])
def test_assign_water_molecules_across_boundary(triclinic):
    rng = np.random.default_rng(3)
    s, perm = _water_box(rng, triclinic=triclinic)
    true_mol = (np.arange(len(perm)) // 3)[perm]
    # Naive (no minimum image) distances would break some molecules: the test is meaningful.
    o = np.flatnonzero(s.numbers == 8)
    h = np.flatnonzero(s.numbers == 1)
    naive = np.linalg.norm(s.positions[h][:, None] - s.positions[o][None], axis=-1).min(1)
    assert naive.max() > 1.3
    m = assign_water_molecules(s)
    assert m is not s and s.molecule is None
    # Same partition as the truth (labels may be permuted).
    for k in range(m.molecule.max() + 1):
        assert len(set(true_mol[m.molecule == k])) == 1
        assert (m.molecule == k).sum() == 3
    assert collate([m, m])["molecule"].max() == 2 * len(o) - 1


def test_assign_water_molecules_broken_frame():
    rng = np.random.default_rng(4)
    s, _ = _water_box(rng)
    h = np.flatnonzero(s.numbers == 1)[0]
    broken = s.copy()
    broken.positions[h] += np.array([1.4, 0.0, 0.0])  # H leaves its molecule
    broken.info.update(source="frames.xyz", frame=12)
    with pytest.raises(DataValidationError, match=r"frames.xyz \[frame 12\].*'positions'"):
        assign_water_molecules(broken)
    with pytest.raises(DataValidationError, match="2 H per O"):
        assign_water_molecules(Sample(positions=np.zeros((2, 3)), numbers=[8, 1]))
    with pytest.raises(DataValidationError, match="only O"):
        assign_water_molecules(Sample(positions=np.zeros((3, 3)), numbers=[6, 1, 1]))


def test_assign_water_molecules_real_deepmd(shared_data):
    s = read_deepmd(shared_data / "water_dft" / "deepmd_water" / "data_0", index=0)[0]
    m = assign_water_molecules(s)
    assert np.all(np.bincount(m.molecule) == 3)
