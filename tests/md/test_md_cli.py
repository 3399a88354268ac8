"""maskpot-md / maskpot-analyze smoke runs (tiny systems, toy exported model) including resume."""

import csv
import json

import numpy as np
import pytest

from maskpot.md.cli import analyze_main, md_main


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_openmm_smoke_and_resume(tmp_path, toy_model):
    import mdtraj

    out = tmp_path / "run"
    base = ["openmm", "--model", str(toy_model), "--water", "27", "--report-every", "10", "--checkpoint-every", "20",
            "--platform", "Reference", "--minimize", "20", "--out", str(out), "--no-progress"]
    assert md_main(base + ["--steps", "40"]) == 0
    rows = _rows(out / "md.csv")
    assert [int(r["step"]) for r in rows] == [0, 10, 20, 30, 40]
    for key in ("potential_eV", "kinetic_eV", "total_eV", "temperature_K", "potential_kJmol"):
        assert np.isfinite(float(rows[-1][key]))
    assert float(rows[-1]["total_kJmol"]) == pytest.approx(float(rows[-1]["total_eV"]) * 96.485, rel=1e-3)
    # extend the finished run: resume continues from the step-40 checkpoint
    assert md_main(base + ["--steps", "60", "--resume"]) == 0
    rows = _rows(out / "md.csv")
    assert [int(r["step"]) for r in rows] == [0, 10, 20, 30, 40, 50, 60]
    traj = mdtraj.load(str(out / "traj.dcd"), top=str(out / "topology.pdb"))
    assert traj.n_frames == 7
    assert json.loads((out / "result.json").read_text())["resumed_from_step"] == 40
    # a crash after the checkpoint: extra rows/frames beyond the checkpoint are dropped on resume
    assert md_main(base + ["--steps", "60", "--resume"]) == 0  # nothing left to do
    assert len(_rows(out / "md.csv")) == 7


def test_openmm_resume_truncates_to_checkpoint(tmp_path, toy_model):
    import mdtraj

    out = tmp_path / "run"
    base = ["openmm", "--model", str(toy_model), "--water", "27", "--report-every", "10", "--checkpoint-every", "20",
            "--platform", "Reference", "--minimize", "0", "--out", str(out), "--no-progress"]
    assert md_main(base + ["--steps", "20"]) == 0
    chk20 = (out / "checkpoint.chk").read_bytes()
    assert md_main(base + ["--steps", "40", "--resume"]) == 0
    (out / "checkpoint.chk").write_bytes(chk20)  # as if the run died between 20 and the next checkpoint
    assert md_main(base + ["--steps", "40", "--resume"]) == 0
    rows = _rows(out / "md.csv")
    assert [int(r["step"]) for r in rows] == [0, 10, 20, 30, 40]
    assert mdtraj.load(str(out / "traj.dcd"), top=str(out / "topology.pdb")).n_frames == 5


def test_openmm_nve_and_tip3p_reference_and_analyze(tmp_path, toy_model):
    ref = tmp_path / "ref"
    assert md_main(["openmm", "--tip3p", "--water", "27", "--steps", "60", "--report-every", "10", "--equilibrate", "20",
                    "--platform", "Reference", "--out", str(ref), "--no-progress"]) == 0
    ml = tmp_path / "ml"
    assert md_main(["openmm", "--model", str(toy_model), "--pdb", str(ref / "topology.pdb"), "--steps", "60",
                    "--ensemble", "nve", "--report-every", "10", "--minimize", "0", "--platform", "Reference",
                    "--out", str(ml), "--no-progress"]) == 0
    ana = tmp_path / "ana"
    assert analyze_main([str(ml / "traj.dcd"), "--reference", str(ref / "traj.dcd"), "--out", str(ana)]) == 0
    res = json.loads((ana / "analysis.json").read_text())
    assert set(res["rdf_distance"]) == {"O-O", "O-H", "H-H"}
    assert np.isfinite(res["stats"]["drift_meV_per_atom_per_ps"])
    for f in ("rdf.png", "energy.png", "geometry.png", "report.md"):
        assert (ana / f).exists()


def test_ase_smoke_and_resume(tmp_path, toy_model):
    import ase.io
    from ase import Atoms

    from maskpot.md.openmm_runner import water_box

    _, pos, _ = water_box(3, 8.0, seed=1)
    xyz = tmp_path / "cluster.xyz"
    ase.io.write(xyz, Atoms(numbers=[8, 1, 1] * 3, positions=pos))  # open boundaries
    out = tmp_path / "ase"
    base = ["ase", "--model", str(toy_model), "--structure", str(xyz), "--report-every", "5", "--checkpoint-every", "10",
            "--minimize", "5", "--temperature", "200", "--out", str(out), "--no-progress"]
    assert md_main(base + ["--steps", "20"]) == 0
    assert [int(r["step"]) for r in _rows(out / "md.csv")] == [0, 5, 10, 15, 20]
    assert md_main(base + ["--steps", "30", "--resume"]) == 0
    assert [int(r["step"]) for r in _rows(out / "md.csv")] == [0, 5, 10, 15, 20, 25, 30]
    frames = ase.io.read(out / "traj.extxyz", index=":")
    assert len(frames) == 7 and frames[-1].info["step"] == 30
    assert md_main(base + ["--steps", "20", "--ensemble", "nve", "--out", str(tmp_path / "nve")]) == 0
    assert analyze_main([str(tmp_path / "nve" / "traj.extxyz"), "--out", str(tmp_path / "ana")]) == 0


def test_openmm_resume_after_equilibration_counts_from_step_zero(tmp_path, toy_model):
    """Equilibration is not recorded: production (and the checkpoint's clock) starts at step 0,
    so a resumed run continues at the checkpoint's production step."""
    out = tmp_path / "run"
    base = ["openmm", "--model", str(toy_model), "--water", "27", "--report-every", "10", "--checkpoint-every", "20",
            "--platform", "Reference", "--minimize", "0", "--equilibrate", "7", "--out", str(out), "--no-progress"]
    assert md_main(base + ["--steps", "20"]) == 0
    assert md_main(base + ["--steps", "30", "--resume"]) == 0
    assert json.loads((out / "result.json").read_text())["resumed_from_step"] == 20
    assert [int(r["step"]) for r in _rows(out / "md.csv")] == [0, 10, 20, 30]
