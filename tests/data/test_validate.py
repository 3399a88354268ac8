"""Validation errors: each kind names the file and the key; the cutoff/cell-width check."""

import numpy as np
import pytest

from maskpot.data.io import read_dataset, read_deepmd, write_npz
from maskpot.data.sample import Sample
from maskpot.data.validate import (
    DataValidationError,
    check_cell,
    check_cutoff,
    perpendicular_widths,
    validate_sample,
)


def _arrays(F=2, N=3):
    rng = np.random.default_rng(0)
    return {
        "positions": rng.uniform(0, 4, (F, N, 3)),
        "numbers": np.array([8, 1, 1]),
        "cell": np.tile(np.eye(3) * 10.0, (F, 1, 1)),
        "pbc": np.array([True, True, True]),
        "energy": rng.normal(size=F),
        "forces": rng.normal(size=(F, N, 3)),
        "units": np.array("angstrom,eV"),
    }


def _write(tmp_path, name, arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_valid_file_reads(tmp_path):
    path = _write(tmp_path, "ok.npz", _arrays())
    assert len(read_dataset(path, require_forces=True, allowed_species=[1, 8], cutoff=4.9)) == 2


def test_missing_key(tmp_path):
    a = _arrays()
    del a["positions"]
    path = _write(tmp_path, "nopos.npz", a)
    with pytest.raises(DataValidationError, match=r"nopos\.npz: key 'positions': expected this key"):
        read_dataset(path)
    a = _arrays()
    del a["units"]
    with pytest.raises(DataValidationError, match=r"nounits\.npz: key 'units'"):
        read_dataset(_write(tmp_path, "nounits.npz", a))


def test_wrong_shape(tmp_path):
    a = _arrays()
    a["forces"] = a["forces"][:, :2]
    with pytest.raises(DataValidationError, match=r"badf\.npz: key 'forces': expected shape \(2, 3, 3\), found \(2, 2, 3\)"):
        read_dataset(_write(tmp_path, "badf.npz", a))
    a = _arrays()
    a["cell"] = np.eye(2)
    with pytest.raises(DataValidationError, match=r"badc\.npz: key 'cell'"):
        read_dataset(_write(tmp_path, "badc.npz", a))


def test_nan_and_inf(tmp_path):
    a = _arrays()
    a["positions"][1, 2, 0] = np.nan
    with pytest.raises(DataValidationError, match=r"nan\.npz: key 'positions': expected finite.*\(1, 2, 0\)"):
        read_dataset(_write(tmp_path, "nan.npz", a))
    a = _arrays()
    a["energy"][0] = np.inf
    with pytest.raises(DataValidationError, match=r"inf\.npz: key 'energy'"):
        read_dataset(_write(tmp_path, "inf.npz", a))


def test_unknown_element(tmp_path):
    a = _arrays()
    a["numbers"] = np.array([8, 1, 0])
    with pytest.raises(DataValidationError, match=r"z0\.npz: key 'numbers':.*unknown element.*Z=\[0\]"):
        read_dataset(_write(tmp_path, "z0.npz", a))
    a["numbers"] = np.array([8, 1, 119])
    with pytest.raises(DataValidationError, match=r"z119\.npz: key 'numbers'"):
        read_dataset(_write(tmp_path, "z119.npz", a))
    path = _write(tmp_path, "ok.npz", _arrays())
    with pytest.raises(DataValidationError, match=r"ok\.npz \[frame 0\]: key 'numbers': expected only species \[1, 6\].*Z=\[8\]"):
        read_dataset(path, allowed_species=[1, 6])


def test_energy_without_forces(tmp_path):
    a = _arrays()
    del a["forces"]
    path = _write(tmp_path, "eonly.npz", a)
    assert read_dataset(path)[0].forces is None  # fine unless forces are required
    with pytest.raises(DataValidationError, match=r"eonly\.npz \[frame 0\]: key 'forces':.*energy but no forces"):
        read_dataset(path, require_forces=True)


def test_degenerate_cell(tmp_path):
    a = _arrays()
    a["cell"][1] = [[10, 0, 0], [0, 10, 0], [10, 10, 0]]  # coplanar vectors
    with pytest.raises(DataValidationError, match=r"flat\.npz \[frame 1\]: key 'cell':.*non-degenerate"):
        read_dataset(_write(tmp_path, "flat.npz", a))
    # Open boundaries: a zero cell is fine.
    check_cell(np.zeros((3, 3)), np.zeros(3, bool), "x")
    # Partly periodic: only periodic directions must be non-degenerate.
    check_cell(np.diag([5.0, 5.0, 0.0]), np.array([True, True, False]), "slab")
    with pytest.raises(DataValidationError, match="slab"):
        check_cell(np.diag([5.0, 0.0, 0.0]), np.array([True, True, False]), "slab")


def test_cutoff_against_cell(tmp_path):
    path = _write(tmp_path, "box.npz", _arrays())
    with pytest.raises(DataValidationError, match=r"box\.npz \[frame 0\]: key 'cell':.*cutoff 5\.5 Å > 5 Å"):
        read_dataset(path, cutoff=5.5)


def test_perpendicular_widths_triclinic():
    rng = np.random.default_rng(1)
    for _ in range(5):
        cell = np.diag(rng.uniform(5, 10, 3)) + np.triu(rng.uniform(-3, 3, (3, 3)), 1)
        vol = abs(np.linalg.det(cell))
        expected = [vol / np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3])) for i in range(3)]
        np.testing.assert_allclose(perpendicular_widths(cell), expected)
        # Lattice rotation does not change widths.
        q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
        np.testing.assert_allclose(perpendicular_widths(cell @ q.T), expected)
    # A sheared cell is narrower than its vector lengths suggest.
    sheared = np.array([[10.0, 0, 0], [8.0, 6.0, 0], [0, 0, 10.0]])
    w = perpendicular_widths(sheared)
    np.testing.assert_allclose(w, [6.0, 6.0, 10.0])
    check_cutoff(sheared, [True] * 3, 3.0)
    with pytest.raises(DataValidationError, match="3.01"):
        check_cutoff(sheared, [True] * 3, 3.01, source="sheared")
    # Non-periodic directions do not limit the cutoff; open systems never do.
    np.testing.assert_array_equal(perpendicular_widths(np.diag([4.0, 0, 0]), [True, False, False]), [4.0, np.inf, np.inf])
    check_cutoff(np.diag([100.0, 2.0, 2.0]), [True, False, False], 40.0)
    check_cutoff(np.zeros((3, 3)), [False] * 3, 1e6)
    # Batched cells: the frame at fault is named.
    cells = np.stack([np.eye(3) * 20, np.eye(3) * 8])
    with pytest.raises(DataValidationError, match=r"traj: key 'cell':.*\(frame 1\)"):
        check_cutoff(cells, [True] * 3, 5.0, source="traj")


def test_validate_sample_direct():
    s = Sample(positions=[[0.0, 0.0, 0.0], [0.74, 0.0, 0.0]], numbers=[1, 1], energy=1.0)
    validate_sample(s)
    with pytest.raises(DataValidationError, match="mysrc: key 'forces'"):
        validate_sample(s, "mysrc", require_forces=True)
    with pytest.raises(DataValidationError, match="key 'energy'"):
        validate_sample(Sample(positions=np.zeros((1, 3)), numbers=[1]), "x", require_energy=True)


def test_deepmd_missing_type_map(tmp_path):
    system = tmp_path / "sys"
    (system / "set.000").mkdir(parents=True)
    (system / "type.raw").write_text("0\n1\n1\n")
    np.save(system / "set.000" / "coord.npy", np.zeros((2, 9)))
    np.save(system / "set.000" / "box.npy", np.tile(np.eye(3).ravel() * 5, (2, 1)))
    with pytest.raises(DataValidationError, match=r"type_map\.raw: key 'type_map\.raw'"):
        read_deepmd(system)
    (system / "type_map.raw").write_text("O\n")
    with pytest.raises(DataValidationError, match=r"type\.raw: key 'type\.raw': expected type indices in 0\.\.0"):
        read_deepmd(system)
    (system / "type_map.raw").write_text("O\nH\n")
    np.save(system / "set.000" / "coord.npy", np.zeros((2, 6)))
    with pytest.raises(DataValidationError, match=r"coord\.npy: key 'coord': expected shape \(2, 9\)"):
        read_deepmd(system)


def test_write_npz_then_corrupt(tmp_path):
    """A file we wrote and someone edited is caught on read, naming the key."""
    s = [Sample(positions=np.zeros((1, 3)), numbers=[1], energy=0.0, forces=np.zeros((1, 3)))]
    path = tmp_path / "w.npz"
    write_npz(path, s)
    raw = dict(np.load(path))
    raw["units"] = np.array("furlong,eV")
    np.savez(path, **raw)
    with pytest.raises(DataValidationError, match=r"w\.npz: key 'units': expected a length unit"):
        read_dataset(path)
