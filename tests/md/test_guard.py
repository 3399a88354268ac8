"""Stability guard: unit checks and a deliberately broken potential stopped in OpenMM and ASE."""

import json

import numpy as np
import pytest

from maskpot.md.cli import EXIT_UNSTABLE
from maskpot.md.guard import GuardSettings, MDInstabilityError, StabilityGuard, min_pair_distance, water_bonds


def test_close_pair_across_periodic_boundary():
    box = np.eye(3) * 10.0
    pos = np.array([[0.1, 5.0, 5.0], [9.8, 5.0, 5.0], [5.0, 5.0, 5.0]])
    d, i, j = min_pair_distance(pos, box, [True] * 3, 0.5)
    assert d == pytest.approx(0.3) and {i, j} == {0, 1}
    assert min_pair_distance(pos, None, None, 0.5) is None  # open boundaries: 9.7 Å apart


def test_guard_reasons():
    box = np.eye(3) * 10.0
    pos = np.array([[0.2, 5, 5], [9.4, 5, 5], [0.2, 5.9, 5.3]], dtype=float)  # O-H across the boundary: 0.8 Å
    guard = StabilityGuard(bonds=water_bonds([8, 1, 1]), reference_positions=pos, target_temperature=300.0,
                           symbols=["O", "H", "H"], cell=box, pbc=[True] * 3)
    assert guard.problem(pos, box, [True] * 3, energy=-1.0, temperature=300.0) is None
    assert "non-finite potential energy" in guard.problem(pos, box, [True] * 3, energy=float("nan"))
    bad = pos.copy()
    bad[2, 1] += np.inf
    assert "non-finite positions" in guard.problem(bad, box, [True] * 3)
    stretched = pos.copy()
    stretched[2] = [0.2, 7.0, 5.0]
    assert "bond O0-H2 stretched to 2.000" in guard.problem(stretched, box, [True] * 3)
    close = pos.copy()
    close[1] = [0.5, 5, 5]
    assert "closer than min_distance" in guard.problem(close, box, [True] * 3)
    assert "temperature runaway" in guard.problem(pos, box, [True] * 3, temperature=901.0)
    with pytest.raises(MDInstabilityError) as exc:
        guard.check(42, close, box, [True] * 3, time_ps=0.021)
    assert exc.value.step == 42 and "step 42" in str(exc.value)


def test_broken_potential_stopped_in_openmm(tmp_path, broken_model):
    import mdtraj

    from maskpot.md.cli import md_main

    out = tmp_path / "bad"
    rc = md_main(["openmm", "--model", str(broken_model), "--water", "27", "--steps", "400", "--report-every", "10",
                  "--check-every", "2", "--minimize", "0", "--platform", "Reference", "--out", str(out), "--no-progress"])
    assert rc == EXIT_UNSTABLE
    res = json.loads((out / "result.json").read_text())
    assert res["status"] == "unstable" and 0 < res["failed_step"] < 400
    assert res["last_good_step"] == res["failed_step"] - 2
    assert res["reason"] in (out / "md.log").read_text()
    traj = mdtraj.load(str(out / "traj.dcd"), top=str(out / "topology.pdb"))
    assert traj.n_frames == res["last_good_step"] // 10 + 1  # frames up to the last good one
    rows = (out / "md.csv").read_text().strip().splitlines()
    assert len(rows) - 1 == traj.n_frames
    # the last frame written passes the guard
    g = StabilityGuard(settings=GuardSettings())
    assert g.problem(traj.xyz[-1] * 10, traj.unitcell_vectors[-1] * 10, [True] * 3) is None


def test_broken_potential_stopped_in_ase(tmp_path, broken_model):
    import ase.io

    from maskpot.md.cli import md_main
    from maskpot.md.openmm_runner import water_box
    from ase import Atoms

    _, pos, box = water_box(27, seed=0)
    xyz = tmp_path / "water.extxyz"
    ase.io.write(xyz, Atoms(numbers=[8, 1, 1] * 27, positions=pos, cell=np.eye(3) * box, pbc=True))
    out = tmp_path / "bad_ase"
    rc = md_main(["ase", "--model", str(broken_model), "--structure", str(xyz), "--steps", "400",
                  "--report-every", "10", "--check-every", "2", "--minimize", "0", "--out", str(out), "--no-progress"])
    assert rc == EXIT_UNSTABLE
    res = json.loads((out / "result.json").read_text())
    assert res["status"] == "unstable" and 0 < res["failed_step"] < 400
    frames = ase.io.read(out / "traj.extxyz", index=":")
    assert len(frames) == res["last_good_step"] // 10 + 1


def test_model_failure_inside_openmm_is_instability(tmp_path, broken_model):
    """Atoms pulled on top of each other make the OpenMM force raise (overlap / non-finite output);
    inside MD that is an unstable run (exit 2, result.json says why), not a crash."""
    from maskpot.md.cli import md_main

    out = tmp_path / "bad"
    rc = md_main(["openmm", "--model", str(broken_model), "--water", "27", "--steps", "2000", "--report-every", "1000",
                  "--check-every", "1000", "--min-distance", "0.05", "--minimize", "0", "--platform", "Reference",
                  "--out", str(out), "--no-progress"])
    assert rc == EXIT_UNSTABLE
    res = json.loads((out / "result.json").read_text())
    assert res["status"] == "unstable" and "maskpot PythonForce" in res["reason"] and res["failed_step"] > 0


def test_model_failure_reason_recognises_adapter_errors():
    from maskpot.md.guard import model_failure_reason

    assert model_failure_reason(RuntimeError("OpenMM: maskpot PythonForce: atoms 1 and 2 are 0.01 Å apart\nmore")) \
        == "maskpot PythonForce: atoms 1 and 2 are 0.01 Å apart"
    assert model_failure_reason(ValueError("box too small")) is None
