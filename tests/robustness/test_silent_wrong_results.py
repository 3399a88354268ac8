"""Issue 14, "Silent wrong results": inputs that used to give a wrong number without a word now
give an error (or a loud warning) that names the file, frame, atoms or key. Each test failed on
the code before the fix. See docs/reliability.md."""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
from torch import Tensor

from maskpot.data.io import read_dataset, write_npz
from maskpot.data.sample import Sample
from maskpot.data.validate import DataPlausibilityWarning, DataValidationError

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

BOX = 6.2  # 8 waters on a 2x2x2 lattice of 3.1 Å: 1.0 g/cm³
OH = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])


def water_frames(n_frames: int = 6, seed: int = 0, periodic: bool = True) -> List[Sample]:
    """Lattice water (8 molecules, 6.2 Å box), small random displacements, plausible labels."""
    rng = np.random.default_rng(seed)
    sites = (np.array(list(np.ndindex(2, 2, 2))) + 0.25) * (BOX / 2)
    base = (sites[:, None, :] + OH[None]).reshape(-1, 3)
    out = []
    for f in range(n_frames):
        pos = base + rng.normal(0, 0.03, base.shape)
        out.append(Sample(positions=pos, numbers=np.array([8, 1, 1] * 8), cell=np.eye(3) * BOX if periodic else np.zeros((3, 3)),
                          pbc=np.full(3, periodic), energy=-10.0 + 0.1 * rng.normal(),
                          forces=rng.normal(0, 0.5, base.shape), molecule=np.repeat(np.arange(8), 3),
                          info={"frame": f}))
    return out


def small_model(species=(1, 8), cutoff: float = 2.5, dtype: torch.dtype = torch.float64):
    from maskpot.models import build_model

    torch.manual_seed(0)
    model = build_model({"name": "painn", "species": list(species), "cutoff": cutoff, "hidden_channels": 8,
                         "num_layers": 1, "num_rbf": 6})
    return model.to(dtype).eval()


class NaNModel(torch.nn.Module):
    """Follows the model contract and returns NaN (as a model fed overlapping atoms can)."""

    def __init__(self) -> None:
        super().__init__()
        self.kind: str = "energy"
        self.cutoff: float = 2.0
        self.species: List[int] = [1, 8]
        self.scale = torch.nn.Parameter(torch.ones(1, dtype=torch.float64))
        self.config = {"name": "nan", "species": [1, 8], "cutoff": 2.0}

    def forward(self, data: Dict[str, Tensor]) -> Dict[str, Tensor]:
        pos = data["positions"]
        nan = self.scale * float("nan")
        return {"energy": nan.expand(data["cell"].shape[0]).to(pos.dtype), "forces": torch.zeros_like(pos) * nan}


def save_ckpt(path: Path, model, periodicity=None) -> Path:
    from maskpot.training.checkpoint import save_checkpoint

    save_checkpoint(path, {"model_config": dict(model.config), "model_state": model.state_dict(),
                           "periodicity": periodicity})
    return path


def ml_energy(force, positions: np.ndarray, box=None) -> float:
    import openmm
    from openmm import unit

    system = openmm.System()
    for _ in range(len(positions)):
        system.addParticle(1.0)
    if box is not None:
        system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*r) * unit.angstrom for r in box])
    system.addForce(force)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(positions * unit.angstrom)
    return ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)


# --------------------------------------------------------------------------------------------
# 1. two atoms on top of each other
# --------------------------------------------------------------------------------------------


def _overlapping_file(tmp_path: Path) -> Path:
    frames = water_frames(3)
    frames[1].positions[4] = frames[1].positions[0]  # an H of molecule 1 on the O of molecule 0
    path = tmp_path / "overlap.npz"
    write_npz(path, frames)
    return path


def test_overlap_refused_at_load_naming_file_frame_atoms(tmp_path):
    path = _overlapping_file(tmp_path)
    with pytest.raises(DataValidationError) as err:
        read_dataset(path)
    msg = str(err.value)
    assert str(path) in msg and "[frame 1]" in msg and "key 'positions'" in msg
    assert "atoms 0 (O) and 4 (H) are 0.000 Å apart" in msg
    assert len(read_dataset(path, min_distance=None)) == 3  # the threshold is configurable
    with pytest.raises(DataValidationError, match=r"\[frame 0\].*closer than the minimum distance 1 Å"):
        read_dataset(path, min_distance=1.0)  # O-H bonds (0.96 Å) are closer than that


def test_overlap_training_names_the_frame(tmp_path, capsys):
    from maskpot.training.cli import train_main

    path = _overlapping_file(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("task: energy_force\nmodel: {name: painn, cutoff: 2.5, hidden_channels: 8, num_layers: 1}\n"
                   "train: {epochs: 1, batch_size: 1}\noutput: {progress: false, plot: false}\n")
    rc = train_main([str(cfg), "--set", f"data.path={path}", "-o", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and "[frame 1]" in err and "atoms 0 (O) and 4 (H)" in err and "non-finite" not in err


def test_overlap_and_nan_refused_by_ase_calculator():
    from ase import Atoms

    from maskpot.deploy.ase import MaskpotCalculator

    s = water_frames(1)[0]
    atoms = Atoms(numbers=s.numbers, positions=s.positions, cell=s.cell, pbc=True)
    atoms.positions[4] = atoms.positions[0]
    atoms.calc = MaskpotCalculator(small_model())
    with pytest.raises(ValueError, match=r"atoms 0 \(O\) and 4 \(H\) are 0.000 Å apart"):
        atoms.get_potential_energy()
    good = Atoms(numbers=s.numbers, positions=s.positions, cell=s.cell, pbc=True)
    good.calc = MaskpotCalculator(NaNModel())
    with pytest.raises(ValueError, match=r"non-finite values \(energy nan"):
        good.get_potential_energy()


def test_overlap_and_nan_refused_by_openmm_force(tmp_path):
    from maskpot.deploy.export import export_model
    from maskpot.deploy.openmm import create_force

    s = water_frames(1)[0]
    model_path = tmp_path / "model.pt"
    export_model(small_model(), model_path, dtype="float64")
    pos = s.positions.copy()
    pos[4] = pos[0]
    with pytest.raises(Exception, match=r"atoms 0 \(O\) and 4 \(H\) are 0.000 Å apart"):
        ml_energy(create_force(model_path, s.numbers, periodic=True), pos, s.cell)
    nan_path = tmp_path / "nan.pt"
    export_model(NaNModel(), nan_path, dtype="float64")
    with pytest.raises(Exception, match="non-finite"):
        ml_energy(create_force(nan_path, s.numbers, periodic=True), s.positions, s.cell)


def test_torchforce_module_refuses_nan(tmp_path):
    """The openmm-torch wrapper (scripted, runs in C++) checks the output too."""
    from maskpot.deploy.export import export_model, load_exported, quiet_jit
    from maskpot.deploy.openmm import TorchForceModule

    nan_path = tmp_path / "nan.pt"
    export_model(NaNModel(), nan_path, dtype="float64")
    module, _ = load_exported(nan_path)
    with quiet_jit():
        wrapper = torch.jit.script(TorchForceModule(module, [8, 1, 1], torch.float64, False))
    with pytest.raises(Exception, match="non-finite"):
        wrapper(torch.tensor(OH / 10.0))


def test_close_pairs_matches_brute_force():
    from maskpot.data.validate import close_pairs

    rng = np.random.default_rng(3)
    for trial in range(20):
        n = int(rng.integers(2, 80))
        periodic = bool(trial % 2)
        cell = np.eye(3) * rng.uniform(3, 6) + (rng.normal(size=(3, 3)) * 0.5 if trial % 4 == 1 else 0)
        pos = rng.uniform(-1, 6, (n, 3))
        h = float(rng.uniform(0.3, 1.2))
        i, j, d = close_pairs(pos, cell, periodic, h)
        inv = np.linalg.inv(cell)
        expect = []
        for a in range(n):
            for b in range(a + 1, n):
                v = pos[b] - pos[a]
                if periodic:
                    f = v @ inv
                    v = (f - np.round(f)) @ cell
                if np.linalg.norm(v) < h:
                    expect.append((a, b))
        assert sorted(zip(i.tolist(), j.tolist())) == expect


# --------------------------------------------------------------------------------------------
# 2. labels in the wrong units
# --------------------------------------------------------------------------------------------


def _kcal_as_ev(tmp_path: Path) -> Path:
    """An rMD17-like molecule whose kcal/mol labels were stored under units 'angstrom,eV'."""
    from ase.build import molecule

    mol = molecule("CH3CH2OH")
    rng = np.random.default_rng(0)
    frames = [Sample(positions=mol.positions + rng.normal(0, 0.02, mol.positions.shape), numbers=mol.numbers,
                     energy=-97000.0 + rng.normal(0, 3.0), forces=rng.normal(0, 29.0, mol.positions.shape))
              for _ in range(20)]
    path = tmp_path / "ethanol_kcal.npz"
    write_npz(path, frames)
    return path


def test_kcal_labels_stored_as_ev_warn_and_can_be_fatal(tmp_path):
    path = _kcal_as_ev(tmp_path)
    with pytest.warns(DataPlausibilityWarning, match=r"force RMS <= 10 eV/Å, found 2\d\.\d+ eV/Å") as rec:
        read_dataset(path)
    assert any("|energy|" in str(w.message) and str(path) in str(w.message) for w in rec)
    with pytest.raises(DataValidationError, match=r"ethanol_kcal.npz: key 'forces'.*strict"):
        read_dataset(path, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataPlausibilityWarning)  # the explicit unit fixes it
        with pytest.warns(UserWarning, match="the file says 'angstrom,eV'; reading it as 'angstrom,kcal/mol'"):
            fixed = read_dataset(path, units="angstrom,kcal/mol")
    f = np.concatenate([s.forces for s in fixed])
    assert 1.0 < np.sqrt(np.mean(f * f)) < 1.5  # eV/Å


def test_strict_config_key_stops_training(tmp_path, capsys):
    from maskpot.training.cli import train_main

    path = _kcal_as_ev(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("task: energy_force\ndata: {strict: true}\nmodel: {name: painn, cutoff: 2.5, hidden_channels: 8, "
                   "num_layers: 1}\ntrain: {epochs: 1}\noutput: {progress: false, plot: false}\n")
    rc = train_main([str(cfg), "--set", f"data.path={path}", "-o", str(tmp_path / "run")])
    assert rc == 2 and "force RMS" in capsys.readouterr().err


def test_rmd17_reader_takes_explicit_units(tmp_path, shared_data):
    from maskpot.data.io import read_rmd17

    src = shared_data / "rmd17" / "rmd17_ethanol_train_01.npz"
    raw = np.load(src)
    as_ev = read_rmd17(src, index=slice(0, 5), units="angstrom,eV")
    assert np.allclose(as_ev[0].forces, raw["forces"][0]) and as_ev[0].energy == pytest.approx(float(raw["energies"][0]))
    mislabelled = tmp_path / "rmd17_as_ev.npz"
    write_npz(mislabelled, read_rmd17(src, index=slice(0, 200), units="angstrom,eV"))
    with pytest.warns(DataPlausibilityWarning, match="force RMS"):
        read_dataset(mislabelled)


# --------------------------------------------------------------------------------------------
# 3. periodicity
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def periodic_run(tmp_path_factory):
    """A (1-epoch) model trained on periodic water, its checkpoint and export."""
    from maskpot.deploy.export import export_model
    from maskpot.training.cli import train_main

    tmp = tmp_path_factory.mktemp("periodic_run")
    data = tmp / "water.npz"
    write_npz(data, water_frames(6))
    cfg = tmp / "c.yaml"
    cfg.write_text("task: energy_force\ndata: {splits: {train: 4, val: 1, test: 1}}\n"
                   "model: {name: painn, cutoff: 2.5, hidden_channels: 8, num_layers: 1, num_rbf: 6}\n"
                   "train: {epochs: 1, batch_size: 2, dtype: float64}\noutput: {progress: false, plot: false}\n")
    assert train_main([str(cfg), "--set", f"data.path={data}", "-o", str(tmp / "run")]) == 0
    export = tmp / "model.pt"
    export_model(tmp / "run" / "best.pt", export, dtype="float64")
    return {"data": data, "ckpt": tmp / "run" / "best.pt", "export": export, "dir": tmp}


def test_training_periodicity_recorded_in_checkpoint_and_export(periodic_run):
    from maskpot.deploy.export import read_metadata
    from maskpot.training.checkpoint import load_checkpoint

    assert load_checkpoint(periodic_run["ckpt"])["periodicity"] == "periodic"
    assert read_metadata(periodic_run["export"])["periodicity"] == "periodic"


def test_periodic_model_used_without_pbc_is_refused(periodic_run):
    from ase import Atoms

    from maskpot.deploy.ase import MaskpotCalculator

    s = water_frames(1)[0]
    for model in (periodic_run["export"], periodic_run["ckpt"]):
        atoms = Atoms(numbers=s.numbers, positions=s.positions)  # same frame, pbc=False
        atoms.calc = MaskpotCalculator(model)
        with pytest.raises(ValueError, match="trained on periodic frames but is used on open"):
            atoms.get_potential_energy()
        atoms.calc = MaskpotCalculator(model, allow_periodicity_mismatch=True)
        with pytest.warns(UserWarning, match="trained on periodic frames"):
            assert np.isfinite(atoms.get_potential_energy())
    periodic = Atoms(numbers=s.numbers, positions=s.positions, cell=s.cell, pbc=True)
    periodic.calc = MaskpotCalculator(periodic_run["export"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isfinite(periodic.get_potential_energy())


def test_create_force_needs_periodic_with_atomic_numbers(periodic_run):
    from maskpot.deploy.openmm import create_force

    numbers = water_frames(1)[0].numbers
    with pytest.raises(ValueError, match="pass periodic=True or periodic=False"):
        create_force(periodic_run["export"], numbers)
    with pytest.raises(ValueError, match="trained on periodic frames but is used on open"):
        create_force(periodic_run["export"], numbers, periodic=False)
    assert create_force(periodic_run["export"], numbers, periodic=True).usesPeriodicBoundaryConditions()


def test_eval_refuses_periodicity_and_species_mismatch(periodic_run, tmp_path, capsys):
    from maskpot.training.cli import eval_main

    gas = save_ckpt(tmp_path / "ethanol.pt", small_model(species=(1, 6, 8)), periodicity="open")
    rc = eval_main([str(gas), str(periodic_run["data"])])
    err = capsys.readouterr().err
    assert rc == 2 and "expected open frames" in err and "found periodic" in err
    open_data = tmp_path / "open.npz"
    write_npz(open_data, water_frames(3, periodic=False))
    assert eval_main([str(periodic_run["ckpt"]), str(open_data)]) == 2
    assert "expected periodic frames" in capsys.readouterr().err
    assert eval_main([str(periodic_run["ckpt"]), str(open_data), "--allow-periodicity-mismatch"]) == 0
    carbon = tmp_path / "carbon.npz"
    frames = water_frames(2)
    for f in frames:
        f.numbers[0] = 6
    write_npz(carbon, frames)
    assert eval_main([str(periodic_run["ckpt"]), str(carbon)]) == 2
    assert "found Z=[6]" in capsys.readouterr().err


def test_eval_table_columns_never_run_together():
    from maskpot.training.cli import format_table

    m = {"energy_mae_meV": 55438464.123, "energy_rmse_meV": 155438464.5, "energy_mae_meV_per_atom": 288742.1,
         "energy_rmse_meV_per_atom": 288743.9, "force_mae_meV_per_A": 1e9, "force_rmse_meV_per_A": 1.5e9,
         "n_frames": 12}
    lines = format_table(m, "title").splitlines()
    assert lines[2].split()[-2:] == ["55438464.123", "155438464.500"]
    assert lines[4].split()[-2:] == ["1000000000.000", "1500000000.000"]
    widths = {len(line) for line in lines[1:5]}
    assert len(widths) == 1  # aligned


# --------------------------------------------------------------------------------------------
# 4. truncated DCD
# --------------------------------------------------------------------------------------------


def _md_run(folder: Path, n_frames: int = 151, report_every: int = 10, dt_ps: float = 0.0005) -> Path:
    """A runner-like folder: traj.dcd (3 waters), topology.pdb, md.csv, run.json."""
    from openmm import app, unit

    from maskpot.data.tip3p import water_topology

    folder.mkdir(parents=True, exist_ok=True)
    top = water_topology(3, 12.0)
    box = np.eye(3) * 1.2
    base = np.concatenate([OH + [2 + 4 * k, 2, 2] for k in range(3)]) / 10.0
    rng = np.random.default_rng(0)
    with open(folder / "topology.pdb", "w") as fh:
        app.PDBFile.writeFile(top, base * unit.nanometer, fh)
    with open(folder / "traj.dcd", "wb") as fh:
        dcd = app.DCDFile(fh, top, dt_ps * unit.picosecond, 0, report_every)
        for _ in range(n_frames):
            dcd.writeModel((base + rng.normal(0, 0.002, base.shape)) * unit.nanometer, periodicBoxVectors=box * unit.nanometer)
    frame_ps = report_every * dt_ps
    with open(folder / "md.csv", "w") as fh:
        fh.write("step,time_ps,potential_eV,kinetic_eV,total_eV,temperature_K\n")
        for k in range(n_frames):
            fh.write(f"{k * report_every},{k * frame_ps:.6f},-1.0,0.5,{-0.5 + 0.001 * k},{300 + k}\n")
    (folder / "run.json").write_text(json.dumps({"frame_interval_ps": frame_ps, "first_frame_time_ps": 0.0}))
    return folder / "traj.dcd"


def test_truncated_dcd_is_refused(tmp_path, capsys):
    from maskpot.md.analysis import analyze_run, dcd_header_frames
    from maskpot.md.cli import analyze_main

    traj = _md_run(tmp_path / "md")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the complete file: no warning, nothing cut
        res = analyze_run(traj, tmp_path / "md" / "topology.pdb")
    assert res["n_frames"] == 151 and "truncated" not in res and "log_clipped_to_ps" not in res
    assert res["stats"]["simulated_ps"] == pytest.approx(150 * 0.005)
    raw = traj.read_bytes()
    assert dcd_header_frames(traj) == 151
    frame_bytes = (len(raw) - _dcd_header_size(raw)) // 151
    traj.write_bytes(raw[: _dcd_header_size(raw) + 28 * frame_bytes + 17])  # 28 frames and a bit
    with pytest.raises(ValueError, match=r"header says 151 frames but only 28 could be read"):
        analyze_run(traj, tmp_path / "md" / "topology.pdb")
    assert analyze_main([str(traj), "--out", str(tmp_path / "a")]) != 0
    assert "truncated" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="truncated"):
        res = analyze_run(traj, tmp_path / "md" / "topology.pdb", allow_truncated=True, out=tmp_path / "b")
    assert res["truncated"] == {"header_frames": 151, "read_frames": 28}
    # the CSV statistics cover the 28 frames present (27 intervals of 5 fs), not the 0.75 ps logged
    assert res["stats"]["simulated_ps"] == pytest.approx(27 * 0.005)
    assert res["stats"]["temperature_K_mean"] == pytest.approx(300 + 13.5)
    assert "truncated" in (tmp_path / "b" / "report.md").read_text()


def _dcd_header_size(raw: bytes) -> int:
    """Bytes before the first frame of a CHARMM DCD (three Fortran records)."""
    pos = 0
    for _ in range(3):
        n = struct.unpack("<i", raw[pos:pos + 4])[0]
        pos += 8 + n
    return pos


# --------------------------------------------------------------------------------------------
# 5. stability-guard limits
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [dict(min_distance=0), dict(max_bond=0), dict(temperature_factor=0),
                                dict(temperature_factor=-3), dict(min_distance=float("nan")),
                                dict(temperature_factor=0.9), dict(bond_stretch=0), dict(check_every=0),
                                dict(min_distance=2.0, max_bond=1.5)])
def test_guard_refuses_nonsense_limits(kw):
    from maskpot.md.guard import GuardSettings

    with pytest.raises(ValueError, match="stability guard"):
        GuardSettings(**kw)


def test_guard_cli_zero_is_refused_off_is_explicit(tmp_path, capsys):
    from maskpot.md.cli import build_md_parser, md_main

    rc = md_main(["openmm", "--tip3p", "--water", "8", "--steps", "10", "--max-temperature-factor", "0",
                  "--out", str(tmp_path / "md")])
    assert rc != 0 and "temperature_factor = 0.0 is not a usable limit" in capsys.readouterr().err
    args = build_md_parser().parse_args(["openmm", "--tip3p", "--water", "8", "--max-temperature-factor", "off",
                                         "--min-distance", "OFF", "--out", "x"])
    from maskpot.md.cli import _settings
    from maskpot.md.guard import StabilityGuard

    g = _settings(args).guard
    assert g.temperature_factor is None and g.min_distance is None and g.max_bond == 1.5
    with pytest.warns(UserWarning, match="switched off"):
        StabilityGuard(settings=g)


# --------------------------------------------------------------------------------------------
# 6. TIP3P density
# --------------------------------------------------------------------------------------------


def test_tip3p_absurd_density_refused(tmp_path):
    from maskpot.data.cli import main
    from maskpot.data.tip3p import generate_tip3p

    with pytest.raises(ValueError, match=r"density of 1.91\d g/cm³.*refused"):
        generate_tip3p(n_molecules=8, box=5.0, n_frames=1, progress=False)
    with pytest.raises(SystemExit, match=r"1.91\d g/cm³"):
        main(["tip3p", "-o", str(tmp_path / "w.npz"), "--molecules", "8", "--box", "5", "--frames", "1"])
    assert not (tmp_path / "w.npz").exists()


def test_tip3p_implausible_density_warns():
    from maskpot.data.tip3p import check_density

    with pytest.warns(UserWarning, match=r"density of 0.698 g/cm³.*implausible"):
        check_density(8, 7.0)
    with pytest.warns(UserWarning, match=r"1.91\d g/cm³"):
        check_density(8, 5.0, allow_any_density=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_density(64, 12.42) == pytest.approx(0.997, abs=0.01)


# --------------------------------------------------------------------------------------------
# 7. split file from another data file
# --------------------------------------------------------------------------------------------


def test_splits_store_and_check_data_hash(tmp_path):
    from maskpot.data.dataset import AtomicDataset, load_or_create_splits, load_splits

    a, b = water_frames(10, seed=1), water_frames(10, seed=2)
    ha, hb = AtomicDataset(a).data_hash(), AtomicDataset(b).data_hash()
    path = tmp_path / "splits.npz"
    load_or_create_splits(path, 10, (0.6, 0.2, 0.2), data_hash=ha)
    assert str(np.load(path)["data_hash"]) == ha
    load_splits(path, 10, ha)
    with pytest.raises(DataValidationError, match=r"splits.npz: key 'data_hash'.*another data file"):
        load_splits(path, 10, hb)
    with pytest.raises(DataValidationError, match="another data file"):
        load_or_create_splits(path, 10, (0.6, 0.2, 0.2), data_hash=hb)


def test_eval_refuses_split_file_of_other_data(periodic_run, tmp_path, capsys):
    from maskpot.training.cli import eval_main

    other = tmp_path / "other.npz"
    write_npz(other, water_frames(6, seed=5))  # same frame count, other frames
    splits = periodic_run["dir"] / "run" / "splits.npz"
    assert eval_main([str(periodic_run["ckpt"]), str(periodic_run["data"]), "--split-file", str(splits)]) == 0
    capsys.readouterr()
    assert eval_main([str(periodic_run["ckpt"]), str(other), "--split-file", str(splits)]) == 2
    assert "another data file" in capsys.readouterr().err
