"""Energies right by construction: after any training the mean signed energy error on the
training frames is ~0, and the test energy MAE is close to its offset-removed value.

Data: small Cu/Au/Ni clusters of *varying composition* with EMT energies and forces plus large
per-species reference energies (as DFT totals have), so a constant or per-species offset left in
the model shows up directly in the energy error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from maskpot.data.io import write_npz
from maskpot.data.sample import Sample
from maskpot.training.checkpoint import model_from_checkpoint
from maskpot.training.cli import train_main
from maskpot.training.setup import predict_energies

CONFIGS = Path(__file__).parents[2] / "configs"
# Reference energies (eV) per element, like the atomic energies of a DFT code.
E_REF = {29: -1200.0, 79: -900.0, 28: -1500.0}


def _clusters(n_frames: int, seed: int) -> list:
    from ase import Atoms
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(seed)
    out = []
    for f in range(n_frames):
        n = int(rng.integers(5, 9))
        numbers = rng.choice([29, 79, 28], size=n)
        # atoms on a jittered fcc-like grid: no overlaps, every atom bonded
        grid = np.array([[i, j, k] for i in range(3) for j in range(3) for k in range(2)], dtype=float)[:n] * 2.5
        pos = grid + rng.normal(0, 0.15, size=grid.shape)
        atoms = Atoms(numbers=numbers, positions=pos)
        atoms.calc = EMT()
        e = atoms.get_potential_energy() + sum(E_REF[int(z)] for z in numbers)
        out.append(Sample(positions=pos, numbers=numbers, energy=float(e), forces=atoms.get_forces(),
                          cell=np.zeros((3, 3)), pbc=np.zeros(3, dtype=bool)))
    return out


@pytest.fixture(scope="module")
def clusters(tmp_path_factory) -> tuple:
    folder = tmp_path_factory.mktemp("offset_data")
    train, test = folder / "train.npz", folder / "test.npz"
    write_npz(train, _clusters(48, 0))
    write_npz(test, _clusters(16, 1))
    return train, test


def _errors(ckpt: Path, path: Path, subset=None) -> np.ndarray:
    from maskpot.data.io import read_dataset

    frames = read_dataset(path)
    if subset is not None:
        frames = [frames[int(i)] for i in subset]
    model = model_from_checkpoint(ckpt)
    pred = predict_energies(model, frames)
    return pred - np.array([s.energy for s in frames])


def _train(args: list) -> None:
    assert train_main(args) == 0


@pytest.mark.parametrize("weights", [("0.0", "100.0", "l1"), ("1.0", "500.0", "l1"), ("1.0", "1000.0", "mse")])
def test_energy_has_no_offset_after_training(clusters, tmp_path: Path, weights) -> None:
    train, test = clusters
    ew, fw, kind = weights
    out = tmp_path / "run"
    _train([str(CONFIGS / "water_scratch.yaml"), "--set", f"data.path={train}", "--set", f"data.test_path={test}",
            "--set", "data.splits={train: 40, val: 8, test: 0}", "--set",
            "model={name: painn, cutoff: 4.0, hidden_channels: 16, num_layers: 1}",
            "--set", "train.epochs=3", "--set", "train.batch_size=8", "--set", "train.num_threads=1",
            "--set", "train.lr=0.003", "--set", f"objective.energy_weight={ew}",
            "--set", f"objective.force_weight={fw}", "--set", f"objective.loss_kind={kind}",
            "--no-progress", "-o", str(out)])
    splits = np.load(out / "splits.npz")
    err_train = _errors(out / "best.pt", train, splits["train"])
    assert abs(err_train.mean()) < 0.02 * np.abs(err_train).mean() + 1e-4  # ~0 mean signed error (eV)
    err_test = _errors(out / "best.pt", test)
    mae, mae_centred = np.abs(err_test).mean(), np.abs(err_test - err_test.mean()).mean()
    assert mae <= 1.5 * mae_centred, (mae, mae_centred)


def test_finetune_from_a_checkpoint_with_another_energy_reference(clusters, tmp_path: Path) -> None:
    """Init from a model fitted to energies with another reference (+5 eV per atom): the
    pretrained offset must not survive fine-tuning."""
    from maskpot.data.io import read_dataset

    train, test = clusters
    shifted = tmp_path / "shifted.npz"
    frames = read_dataset(train)
    for s in frames:
        s.energy = s.energy + 5.0 * s.n_atoms
    write_npz(shifted, frames)
    common = ["--set", "data.splits={train: 40, val: 8, test: 0}", "--set", "train.batch_size=8", "--set",
              "train.num_threads=1", "--set", "train.lr=0.003", "--no-progress"]
    pre = tmp_path / "pre"
    _train([str(CONFIGS / "water_scratch.yaml"), "--set", f"data.path={shifted}", *common, "--set",
            "model={name: egnn, cutoff: 4.0, hidden_channels: 16, num_layers: 1}", "--set", "train.epochs=2",
            "-o", str(pre)])
    ft = tmp_path / "ft"
    _train([str(CONFIGS / "water_finetune.yaml"), "--set", f"data.path={train}", "--set", f"data.test_path={test}",
            *common, "--set", "train.epochs=1", "--set", "train.lr=1e-5", "--init", str(pre / "best.pt"),
            "-o", str(ft)])
    splits = np.load(ft / "splits.npz")
    err_train = _errors(ft / "best.pt", train, splits["train"])
    assert abs(err_train.mean()) < 0.02 * np.abs(err_train).mean() + 1e-4
    err_test = _errors(ft / "best.pt", test)
    assert np.abs(err_test).mean() <= 1.5 * np.abs(err_test - err_test.mean()).mean()
