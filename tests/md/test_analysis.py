"""Analysis functions on inputs with known answers."""

import math

import numpy as np
import pytest

from maskpot.md import analysis as A


def test_ideal_gas_rdf_is_one():
    rng = np.random.default_rng(0)
    box, n, frames = 20.0, 400, 10
    pos = rng.uniform(0, box, size=(frames, n, 3))
    traj = A.make_mdtraj(pos, [18] * n, np.eye(3) * box)
    r, g = A.compute_rdf(traj, "all", r_max=8.0, bin_width=0.25)
    sel = r > 2.0  # small r: few pairs per bin, noisy
    assert abs(g[sel].mean() - 1.0) < 0.03
    assert np.abs(g[sel] - 1.0).max() < 0.2


def test_simple_cubic_first_peak_and_coordination():
    a, m = 3.0, 6
    grid = np.stack(np.meshgrid(*[np.arange(m)] * 3, indexing="ij"), -1).reshape(-1, 3) * a
    box = a * m
    traj = A.make_mdtraj(grid[None], [18] * len(grid), np.eye(3) * box)
    r, g = A.compute_rdf(traj, "all", r_max=box / 2, bin_width=0.05)
    first = r[np.flatnonzero(g > 0)[0]]  # the first peak: nothing closer than the lattice constant
    assert first == pytest.approx(a, abs=0.05)
    assert r[np.argmax(g[r < 3.5])] == pytest.approx(a, abs=0.05)
    rho = (len(grid) - 1) / box**3  # mdtraj normalises like-pair g(r) with N(N-1)/2 pairs
    # shell between the first (a) and second (a*sqrt 2) neighbours: 6 neighbours
    assert A.coordination_number(r, g, rho, 0.5 * (a + a * math.sqrt(2))) == pytest.approx(6.0, abs=1e-6)
    assert A.coordination_number(r, g, rho, 0.5 * (a * math.sqrt(2) + a * math.sqrt(3))) == pytest.approx(18.0, abs=1e-6)


def test_rdf_distance():
    r = np.linspace(0, 5, 101)
    g = np.exp(-((r - 2.8) ** 2))
    assert A.rdf_distance(r, g, g) == {"rmse": 0.0, "iae": 0.0}
    d = A.rdf_distance(r, g, g + 0.1)
    assert d["rmse"] == pytest.approx(0.1)
    assert d["iae"] == pytest.approx(0.1 * 5.05, rel=1e-6)  # 101 bins of 0.05 Å


def test_energy_drift_linear_series():
    t = np.linspace(0, 10, 201)  # ps
    n_atoms = 100
    rng = np.random.default_rng(1)
    e = -50.0 + 0.002 * t + 1e-4 * rng.normal(size=t.size)  # 2 meV/ps for the whole system
    assert A.energy_drift(t, e, n_atoms) == pytest.approx(0.02, rel=0.02)


def test_msd_of_random_walk_gives_known_d():
    rng = np.random.default_rng(2)
    d_true, dt, frames, n = 0.25, 0.1, 400, 300  # Å²/ps, ps
    steps = rng.normal(scale=math.sqrt(2 * d_true * dt), size=(frames, n, 3))
    pos = np.cumsum(steps, axis=0)
    msd = A.mean_squared_displacement(pos, max_lag=frames // 4)
    lag = np.arange(len(msd)) * dt
    assert A.diffusion_coefficient(lag, msd) == pytest.approx(d_true, rel=0.08)


def test_unwrap_restores_wrapped_walk():
    rng = np.random.default_rng(3)
    box = 10.0
    pos = np.cumsum(rng.normal(scale=0.3, size=(200, 20, 3)), axis=0) + 5.0
    wrapped = np.mod(pos, box)
    un = A.unwrap(wrapped, np.eye(3) * box)
    np.testing.assert_allclose(un - un[0], pos - pos[0], atol=1e-9)


def test_diffusion_unit_conversion():
    # 1 Å²/ps = 1e-16 cm² / 1e-12 s = 1e-4 cm²/s = 10 x 1e-5 cm²/s
    assert A.angstrom2_per_ps_to_1e5_cm2_per_s(1.0) == pytest.approx(10.0)


def test_water_geometry_and_log_statistics(tmp_path):
    from maskpot.md.openmm_runner import water_box

    _, pos, box = water_box(8, 7.5, seed=0)
    traj = A.make_mdtraj(pos[None], [8, 1, 1] * 8, np.eye(3) * box)
    assert A.is_water(traj)
    geo = A.water_geometry(traj)
    np.testing.assert_allclose(geo["oh"], 0.9572, atol=1e-4)
    np.testing.assert_allclose(geo["hoh"], 104.52, atol=1e-2)
    csv = tmp_path / "md.csv"
    csv.write_text("step,time_ps,total_eV,temperature_K\n" + "".join(f"{i},{i * 0.1},{-1 + 0.01 * i},{300 + i % 2}\n" for i in range(11)))
    st = A.log_statistics(A.read_log(csv), n_atoms=10)
    assert st["drift_meV_per_atom_per_ps"] == pytest.approx(10.0)
    assert st["temperature_K_mean"] == pytest.approx(300 + 5 / 11)
