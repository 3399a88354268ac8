"""Helpers of the reusable model test-suite: small configs, a random-but-physical water box,
an open molecule, random rotations."""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import numpy as np
import pytest
import torch

from maskpot.data.sample import Sample, collate
from maskpot.models import MODEL_REGISTRY, build_model

SPECIES = [1, 6, 8]
TEST_CUTOFF = 3.0
OH = 0.96  # Å
HOH = np.radians(104.5)

#: Model configs the suite runs beyond each registered model's defaults: suite name ->
#: (registered model, config overrides).
MODEL_VARIANTS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "egnn-reference": ("egnn", {"coord_updates": True, "distance_input": "squared"}),
}
MODEL_NAMES = sorted(MODEL_REGISTRY) + sorted(MODEL_VARIANTS)


def base_name(name: str) -> str:
    """Registered model name of a suite name (``"egnn-reference"`` -> ``"egnn"``)."""
    return MODEL_VARIANTS[name][0] if name in MODEL_VARIANTS else name


def small_config(name: str, **overrides: Any) -> Dict[str, Any]:
    """A small config of model ``name`` for fast tests (hidden 16, 2 layers, cutoff 3 Å)."""
    base, variant = MODEL_VARIANTS.get(name, (name, {}))
    config: Dict[str, Any] = {
        "name": base,
        "species": SPECIES,
        "cutoff": TEST_CUTOFF,
        "hidden_channels": 16,
        "num_layers": 2,
        "num_rbf": 8,
    }
    config.update(variant)
    config.update(overrides)
    return config


def make_model(name: str, seed: int = 0, **overrides: Any) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(small_config(name, **overrides))
    _visible_coordinate_updates(model)
    return model


#: Suite names by the kind of model (known at collection time, so tests that only make sense for
#: one kind are parametrised over it instead of skipping the others).
MODEL_KINDS: Dict[str, str] = {name: build_model(small_config(name)).kind for name in MODEL_NAMES}
ENERGY_MODELS = [n for n in MODEL_NAMES if MODEL_KINDS[n] == "energy"]
FORCE_MODELS = [n for n in MODEL_NAMES if MODEL_KINDS[n] == "force"]


def _visible_coordinate_updates(model: torch.nn.Module) -> None:
    """EGNN's coordinate MLP starts near zero (last layer Xavier gain 0.001, as the reference's):
    redraw that layer with gain 0.1 so the suite tests moves of ~0.1 Å, not ~1e-4 Å."""
    for layer in getattr(model, "layers", []):
        coord_mlp = getattr(layer, "coord_mlp", None)
        if isinstance(coord_mlp, torch.nn.Sequential):
            torch.nn.init.xavier_uniform_(coord_mlp[-1].weight, gain=0.1)


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


