"""Models and systems for the deploy tests.

* ``ToyPair``: a tiny scriptable pair potential following the model contract (batch dict in,
  {"energy", "forces"} out, attributes kind/cutoff/species/config) in an energy-centric and a
  force-centric flavour; independent of ``maskpot.models``.
* ``make_model(name, kind)``: the real registered models (small configs, random weights) and
  the toys, all through one function so the tests can be parametrised over them.
* ``water_box`` / ``molecule``: a periodic water box and an open rMD17-like molecule.
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence

import numpy as np
import torch
from torch import Tensor

from maskpot.data.neighbors import NeighborList
from maskpot.data.validate import MAX_Z


class ToyPair(torch.nn.Module):
    """E = sum_{i<j} a_{Zi} a_{Zj} exp(-r/b) f_cut(r) + sum_i e0_{Zi}, cosine cutoff.

    kind "energy": forces = -dE/dr by autograd (graph kept, like the real models).
    kind "force": forces predicted directly from a different radial function (not
    conservative), energy from the same pair sum.
    """

    def __init__(self, species: Sequence[int] = (1, 6, 7, 8), cutoff: float = 4.0, kind: str = "energy") -> None:
        super().__init__()
        self.kind: str = kind
        self.cutoff: float = float(cutoff)
        self.species: List[int] = [int(z) for z in species]
        self.config = {"name": "toypair", "species": self.species, "cutoff": self.cutoff, "kind": kind}
        table = torch.full((MAX_Z + 1,), -1, dtype=torch.long)
        for k, z in enumerate(self.species):
            table[z] = k
        self.register_buffer("z_to_index", table)
        g = torch.Generator().manual_seed(0)
        self.amplitude = torch.nn.Parameter(0.5 + torch.rand(len(self.species), generator=g))
        self.e0 = torch.nn.Parameter(-torch.rand(len(self.species), generator=g))
        self.length = torch.nn.Parameter(torch.tensor(1.3))
        self.neighbors = NeighborList(self.cutoff)

    def forward(self, data: Dict[str, Tensor]) -> Dict[str, Tensor]:
        grad_was_enabled = torch.is_grad_enabled()
        torch.set_grad_enabled(True)
        positions = data["positions"]
        if self.kind == "energy" and not positions.requires_grad:
            positions.requires_grad_()
        numbers = data["numbers"]
        batch = data["batch"]
        n_graphs = data["cell"].shape[0]
        idx = self.z_to_index[numbers]
        edge_index, vec, _ = self.neighbors(positions, data["cell"], data["pbc"], batch)
        i, j = edge_index[0], edge_index[1]
        r = torch.linalg.vector_norm(vec, dim=1)
        fcut = 0.5 * (torch.cos(r * (math.pi / self.cutoff)) + 1.0)
        pair = self.amplitude[idx[i]] * self.amplitude[idx[j]] * torch.exp(-r / self.length) * fcut
        atomic = self.e0[idx] + torch.zeros_like(positions[:, 0]).index_add(0, i, 0.5 * pair)
        energy = torch.zeros(n_graphs, dtype=positions.dtype, device=positions.device).index_add(0, batch, atomic)
        if self.kind == "energy":
            grads = torch.autograd.grad([energy.sum()], [positions], create_graph=self.training, retain_graph=True,
                                        allow_unused=True)
            g = grads[0]
            forces = torch.zeros_like(positions) if g is None else -g
        else:
            mag = self.amplitude[idx[i]] * self.amplitude[idx[j]] * torch.exp(-r / (0.7 * self.length)) * fcut
            forces = torch.zeros_like(positions).index_add(0, i, -(mag / r).unsqueeze(1) * vec)
        torch.set_grad_enabled(grad_was_enabled)
        return {"energy": energy, "forces": forces}


def real_model_names() -> List[str]:
    """Registered model names. ``maskpot.models`` is part of the library, not an optional
    dependency: an import error fails the collection (it used to leave only the toys, so every
    real-model deploy test vanished without a word), and so does an empty registry."""
    from maskpot.models import MODEL_REGISTRY

    if not MODEL_REGISTRY:
        raise RuntimeError("tests/deploy: maskpot.models.MODEL_REGISTRY is empty, expected the registered models")
    return sorted(MODEL_REGISTRY)


#: Toys (always available, independent of maskpot.models) + every registered model.
MODEL_NAMES = ["toy-energy", "toy-force"] + real_model_names()

SMALL = {"hidden_channels": 8, "num_layers": 2, "num_rbf": 6}


def make_model(name: str, species: Sequence[int] = (1, 6, 7, 8), cutoff: float = 4.0, seed: int = 0,
               dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    """``toy-energy`` / ``toy-force`` or a registered model with a small config, random weights."""
    torch.manual_seed(seed)
    if name.startswith("toy-"):
        model = ToyPair(species, cutoff, kind=name[4:])
    else:
        from maskpot.models import build_model

        model = build_model({"name": name, "species": list(species), "cutoff": cutoff, **SMALL})
        # Give the readout a sensible scale and per-species offsets (random weights are fine).
        if hasattr(model, "set_normalization"):
            model.set_normalization({z: -0.1 * z for z in species}, energy_scale=0.5, force_scale=0.5)
    return model.to(dtype).eval()


def water_box(n_side: int = 3, spacing: float = 3.1, seed: int = 0):
    """ase.Atoms: n_side^3 randomly oriented waters on a cubic lattice, periodic box."""
    from ase import Atoms

    rng = np.random.default_rng(seed)
    oh, angle = 0.9572, math.radians(104.52)
    local = np.array([[0, 0, 0], [oh, 0, 0], [oh * math.cos(angle), oh * math.sin(angle), 0]])
    pos, numbers = [], []
    for a in range(n_side):
        for b in range(n_side):
            for c in range(n_side):
                q = rng.normal(size=4)
                q /= np.linalg.norm(q)
                w, x, y, z = q
                rot = np.array([
                    [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                    [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                    [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
                ])
                centre = (np.array([a, b, c]) + 0.5) * spacing + rng.normal(scale=0.1, size=3)
                pos.extend(centre + local @ rot.T)
                numbers.extend([8, 1, 1])
    box = n_side * spacing
    atoms = Atoms(numbers=numbers, positions=np.array(pos), cell=np.eye(3) * box, pbc=True)
    return atoms


def molecule(seed: int = 0):
    """ase.Atoms: an aspirin-like open molecule (rMD17 species H, C, O), slightly perturbed."""
    from ase import Atoms

    # A compact 21-atom C9H8O4 geometry (approximate, Å).
    pos = np.array([
        [2.0, 0.0, 0.0], [1.3, 1.2, 0.0], [-0.1, 1.2, 0.0], [-0.8, 0.0, 0.0], [-0.1, -1.2, 0.0], [1.3, -1.2, 0.0],
        [-2.3, 0.0, 0.1], [-3.0, 1.0, 0.2], [-2.9, -1.2, 0.0], [-0.8, 2.4, 0.1], [-0.2, 3.5, 0.3],
        [-2.2, 2.4, -0.1], [-2.8, 3.7, 0.0], [3.1, 0.0, 0.0], [1.8, 2.2, 0.0], [1.8, -2.2, 0.0],
        [-0.6, -2.2, 0.0], [-3.9, -1.1, 0.1], [-3.9, 3.6, 0.2], [-2.6, 4.3, 0.8], [-2.6, 4.2, -0.9],
    ])
    numbers = [6, 6, 6, 6, 6, 6, 6, 8, 8, 8, 8, 6, 6, 1, 1, 1, 1, 1, 1, 1, 1]
    rng = np.random.default_rng(seed)
    return Atoms(numbers=numbers, positions=pos + rng.normal(scale=0.05, size=pos.shape), pbc=False)


def water_topology(atoms):
    """openmm.app.Topology (HOH residues O, H1, H2 with bonds) with the atoms' box."""
    from openmm import Vec3, unit

    from maskpot.data.tip3p import water_topology as hoh_topology

    top = hoh_topology(len(atoms) // 3, None)
    if atoms.pbc.all():
        top.setPeriodicBoxVectors([Vec3(*row) for row in np.asarray(atoms.cell)] * unit.angstrom)
    return top


class Unscriptable(ToyPair):
    """Follows the contract but cannot be compiled by TorchScript (for the atomic-write test)."""

    def forward(self, data: Dict[str, Tensor]) -> Dict[str, Tensor]:
        out = super().forward(data)
        return {k: v for k, v in sorted(out.items(), key=lambda kv: kv[0])}
