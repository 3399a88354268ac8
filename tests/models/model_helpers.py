"""Helpers of the reusable model test-suite: small configs, a random-but-physical water box,
an open molecule, random rotations."""

from __future__ import annotations

from typing import Any, Dict, List

import numpy as np
import pytest
import torch

from maskpot.data.sample import Sample, collate
from maskpot.models import MODEL_REGISTRY, build_model

SPECIES = [1, 6, 8]
TEST_CUTOFF = 3.0
OH = 0.96  # Å
HOH = np.radians(104.5)

MODEL_NAMES = sorted(MODEL_REGISTRY)


def small_config(name: str, **overrides: Any) -> Dict[str, Any]:
    """A small config of model ``name`` for fast tests (hidden 16, 2 layers, cutoff 3 Å)."""
    config: Dict[str, Any] = {
        "name": name,
        "species": SPECIES,
        "cutoff": TEST_CUTOFF,
        "hidden_channels": 16,
        "num_layers": 2,
        "num_rbf": 8,
    }
    config.update(overrides)
    return config


def make_model(name: str, seed: int = 0, **overrides: Any) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(small_config(name, **overrides))


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def water_box(n_per_edge: int = 2, spacing: float = 3.1, seed: int = 0) -> Sample:
    """n^3 waters on a cubic grid (spacing Å, ~1 g/cm³ at 3.1 Å) with random orientations,
    O-H 0.96 Å, H-O-H 104.5°, small random displacements; periodic cubic box."""
    rng = np.random.default_rng(seed)
    box = n_per_edge * spacing
    template = np.array(
        [[0.0, 0.0, 0.0], [OH * np.sin(HOH / 2), 0.0, OH * np.cos(HOH / 2)],
         [-OH * np.sin(HOH / 2), 0.0, OH * np.cos(HOH / 2)]]
    )
    grid = (np.stack(np.meshgrid(*[np.arange(n_per_edge)] * 3, indexing="ij"), -1).reshape(-1, 3) + 0.5) * spacing
    positions = []
    for site in grid:
        rot = random_rotation(rng)
        positions.append(template @ rot.T + site + rng.normal(scale=0.1, size=3))
    positions = np.concatenate(positions)
    numbers = np.tile([8, 1, 1], len(grid))
    molecule = np.repeat(np.arange(len(grid)), 3)
    return Sample(positions=positions, numbers=numbers, cell=np.eye(3) * box, pbc=[True] * 3, molecule=molecule)


def ethanol(seed: int = 0) -> Sample:
    """Ethanol from ase.build.molecule, slightly distorted; open boundaries."""
    from ase.build import molecule

    rng = np.random.default_rng(seed)
    atoms = molecule("CH3CH2OH")
    atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
    return Sample.from_ase(atoms)


def batch_of(samples: List[Sample], dtype: torch.dtype = torch.float64, **kw) -> Dict[str, torch.Tensor]:
    return collate(samples, dtype=dtype, **kw)


