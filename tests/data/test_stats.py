"""Statistics: E0 least squares, energy/force statistics, neighbour counts."""

import numpy as np
import pytest

from maskpot.data.sample import Sample
from maskpot.data.stats import (
    compute_statistics,
    energy_per_atom_stats,
    fit_species_energies,
    force_rms,
    mean_num_neighbors,
)
from maskpot.data.validate import DataValidationError

E0_TRUE = {1: -13.6, 8: -2041.3}


def _frames(compositions, rng, noise=0.0):
    out = []
    for n_o, n_h in compositions:
        z = np.array([8] * n_o + [1] * n_h)
        e = sum(E0_TRUE[int(k)] for k in z) + noise * rng.normal()
        out.append(Sample(positions=rng.normal(size=(len(z), 3)), numbers=z, energy=e, forces=rng.normal(size=(len(z), 3))))
    return out


def test_e0_two_compositions():
    rng = np.random.default_rng(0)
    frames = _frames([(1, 2)] * 5 + [(2, 2)] * 5, rng, noise=1e-3)  # water and H2O2
    e0 = fit_species_energies(frames)
    assert set(e0) == {1, 8}
    for z, v in E0_TRUE.items():
        assert e0[z] == pytest.approx(v, abs=0.01)
    # Exact data: recovery to << 1 meV (the tiny ridge does not visibly bias a well-posed fit).
    e0 = fit_species_energies(_frames([(1, 2), (2, 2), (3, 8)], rng))
    for z, v in E0_TRUE.items():
        assert e0[z] == pytest.approx(v, abs=1e-5)
    # Extra species not in the data get 0; energy-less frames are ignored.
    unlabelled = Sample(positions=np.zeros((1, 3)), numbers=[8])
    e0 = fit_species_energies(_frames([(1, 2), (2, 2)], rng) + [unlabelled], species=[1, 6, 8])
    assert e0[6] == pytest.approx(0.0, abs=1e-6) and e0[8] == pytest.approx(E0_TRUE[8], abs=1e-5)


def test_e0_single_composition_is_minimum_norm():
    rng = np.random.default_rng(1)
    frames = _frames([(1, 2)] * 4 + [(2, 4)] * 2, rng)  # all multiples of H2O: rank 1
    e0 = fit_species_energies(frames)
    c = np.array([2.0, 1.0])  # H, O per water
    e_water = 2 * E0_TRUE[1] + E0_TRUE[8]
    x = np.array([e0[1], e0[8]])
    assert c @ x == pytest.approx(e_water, rel=1e-8)  # energies reproduced
    np.testing.assert_allclose(x, c * e_water / (c @ c), rtol=1e-6)  # minimum-norm split
    mean, std = energy_per_atom_stats(frames, e0)
    assert abs(mean) < 1e-6 and std < 1e-6
    stats = compute_statistics(frames)
    assert stats.notes["e0_rank_deficient"] is True


def test_energy_and_force_stats():
    rng = np.random.default_rng(2)
    frames = _frames([(1, 2), (2, 2)] * 3, rng, noise=0.3)
    e0 = fit_species_energies(frames)
    mean, std = energy_per_atom_stats(frames, e0)
    assert abs(mean) < 0.1 and 0 < std < 0.3
    all_f = np.concatenate([f.forces for f in frames])
    assert force_rms(frames) == pytest.approx(np.sqrt(np.mean(all_f**2)))
    with pytest.raises(DataValidationError, match="key 'numbers'"):
        energy_per_atom_stats(frames, {1: 0.0})
    with pytest.raises(DataValidationError, match="key 'forces'"):
        force_rms([Sample(positions=np.zeros((1, 3)), numbers=[1])])


def test_mean_num_neighbors():
    # Simple cubic lattice, spacing 2 Å, periodic: 6 neighbours within 2.1 Å, 18 within 2.9 Å.
    a, n = 2.0, 4
    grid = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), -1).reshape(-1, 3) * a
    s = Sample(positions=grid, numbers=[1] * len(grid), cell=np.eye(3) * a * n, pbc=True)
    assert mean_num_neighbors([s], 2.1) == pytest.approx(6.0)
    assert mean_num_neighbors([s, s], 2.9) == pytest.approx(18.0)
    # Open boundaries: a dimer has one neighbour each.
    d = Sample(positions=[[0, 0, 0], [0, 0, 1.0]], numbers=[1, 1])
    assert mean_num_neighbors([d], 1.5) == pytest.approx(1.0)
    stats = compute_statistics([s.copy(energy=-1.0, forces=np.zeros((len(grid), 3)))], cutoff=2.1)
    assert stats.avg_num_neighbors == pytest.approx(6.0)
    assert stats.to_dict()["e0"]["1"] == pytest.approx(-1.0 / len(grid))


def test_real_rmd17_stats(shared_data):
    from maskpot.data.io import read_dataset

    frames = read_dataset(shared_data / "rmd17" / "rmd17_ethanol_train_01.npz", index=slice(0, 50))
    stats = compute_statistics(frames, cutoff=5.0)
    # rMD17 ethanol: forces of order 1 eV/Å; per-atom energy spread of order 10 meV after E0.
    assert 0.3 < stats.force_rms < 3.0
    assert stats.energy_per_atom_std < 0.05
    assert stats.avg_num_neighbors == pytest.approx(8.0)  # 9 atoms, all within 5 Å
