"""A thin adapter that lets maskpot's own training loop (``maskpot.training.trainer.Trainer``,
objectives, EMA, ``evaluate``, energy refit) train and evaluate a mace-torch model.

:class:`MACEPotential` wraps a ``ScaleShiftMACE`` and speaks maskpot's model interface:

* ``forward(batch) -> {"energy": [G], "forces": [N, 3]}`` on a maskpot batch
  (:func:`maskpot.data.sample.collate`); forces are MACE's own ``-dE/dr`` (autograd, with
  ``create_graph`` in training mode so a force loss trains the weights);
* ``kind = "energy"``, ``species``, ``cutoff``, ``config`` (what a checkpoint stores);
* ``set_normalization`` / ``get_normalization``: maskpot's per-species E0 go into MACE's
  ``atomic_energies_fn`` and the energy scale (force RMS, the MACE convention) into its
  ``scale_shift.scale`` (shift 0), so ``fit_normalization`` and ``refit_energy_shift`` work as
  for our models.

The neighbour list is maskpot's (``make_neighbor_list``, vesin when installed): same pairs,
same convention as MACE's (edge_index[0] = sender i, edge_index[1] = receiver j,
vector r_j - r_i + S @ cell). Needs ``pip install -e ".[bench]"`` (mace-torch); nothing in
maskpot imports this module.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

#: MACE-small's architecture as timed by ``benchmarks.peers.mace_small``.
MACE_SMALL = {"hidden_irreps": "64x0e", "r_max": 5.0, "num_interactions": 2, "correlation": 3, "max_ell": 3}


class MACEPotential(nn.Module):
    """maskpot's model interface around a ``ScaleShiftMACE`` (see the module docstring)."""

    kind = "energy"

    def __init__(self, mace_model: nn.Module, species: Sequence[int] = (1, 8), cutoff: float = 5.0,
                 neighbor_backend: str = "auto", config: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        from maskpot.data.neighbors import make_neighbor_list

        self.mace = mace_model
        self.species = [int(z) for z in species]
        self.cutoff = float(cutoff)
        self.neighbors = make_neighbor_list(self.cutoff, neighbor_backend)
        table = torch.full((119,), -1, dtype=torch.long)
        for k, z in enumerate(self.species):
            table[z] = k
        self.register_buffer("z_to_index", table, persistent=False)
        self.config = dict(config or {"name": "mace-small", **MACE_SMALL, "species": self.species})

    # ---- normalisation (maskpot's interface on MACE's buffers) ------------------------------

    def set_normalization(self, energy_shift_per_species: Optional[Mapping[Union[int, str], float]] = None,
                          energy_scale: float = 1.0, force_scale: float = 1.0) -> None:
        if not (math.isfinite(energy_scale) and energy_scale > 0):
            raise ValueError(f"set_normalization: energy_scale must be finite and > 0, got {energy_scale}")
        e0 = torch.zeros(len(self.species), dtype=torch.float64)
        for key, value in (energy_shift_per_species or {}).items():
            e0[self.species.index(int(key))] = float(value)
        with torch.no_grad():
            buf = self.mace.atomic_energies_fn.atomic_energies
            buf.copy_(e0.to(buf.dtype).reshape(buf.shape))
            self.mace.scale_shift.scale.fill_(float(energy_scale))
            self.mace.scale_shift.shift.fill_(0.0)

    def get_normalization(self) -> Dict[str, object]:
        e0 = self.mace.atomic_energies_fn.atomic_energies.detach().reshape(-1).tolist()
        return {"energy_shift_per_species": {z: float(v) for z, v in zip(self.species, e0)},
                "energy_scale": float(self.mace.scale_shift.scale.reshape(-1)[0]), "force_scale": 1.0}

    # ---- forward ----------------------------------------------------------------------------

    def mace_inputs(self, data: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """MACE's input dict for a maskpot batch (positions stay the same tensor: forces reach it)."""
        positions, numbers, cell, pbc = data["positions"], data["numbers"], data["cell"], data["pbc"]
        if cell.dim() == 2:
            cell = cell.unsqueeze(0)
        if pbc.dim() == 1:
            pbc = pbc.unsqueeze(0)
        batch = data["batch"] if "batch" in data else torch.zeros_like(numbers)
        n_graphs = cell.shape[0]
        n_atoms = data["n_atoms"] if "n_atoms" in data else torch.bincount(batch, minlength=n_graphs)
        ptr = torch.cat([n_atoms.new_zeros(1), torch.cumsum(n_atoms, 0)])
        idx = self.z_to_index[numbers]
        if bool((idx < 0).any()):
            raise ValueError(f"unknown atomic numbers {sorted(set(numbers[idx < 0].tolist()))}: "
                             f"this model knows species {self.species}")
        edge_index, _, unit_shifts = self.neighbors(positions, cell, pbc, batch)
        shifts = torch.bmm(unit_shifts.unsqueeze(1), cell[batch[edge_index[0]]]).squeeze(1)
        return {
            "positions": positions, "node_attrs": nn.functional.one_hot(idx, len(self.species)).to(positions.dtype),
            "edge_index": edge_index, "shifts": shifts, "unit_shifts": unit_shifts,
            "cell": cell.reshape(-1, 3), "batch": batch, "ptr": ptr,
        }  # fmt: skip

    def forward(self, data: Dict[str, Tensor]) -> Dict[str, Tensor]:
        with torch.enable_grad():
            positions = data["positions"]
            if not positions.requires_grad:
                positions.requires_grad_()
            out = self.mace(self.mace_inputs(data), training=self.training, compute_force=True)
        return {"energy": out["energy"], "forces": out["forces"]}


def mace_small_potential(avg_num_neighbors: float, neighbor_backend: str = "auto", seed: int = 0,
                         species: Sequence[int] = (1, 8)) -> MACEPotential:
    """MACE-small (``benchmarks.peers.mace_small``: 64x0e, r_max 5 Å, 2 interactions,
    correlation 3) in maskpot's interface for the elements ``species`` (water: H, O; aspirin:
    H, C, O), weights from ``seed``, float32, train mode off."""
    from benchmarks.peers import mace_small

    species = sorted(int(z) for z in species)
    torch.manual_seed(seed)
    model = mace_small(avg_num_neighbors=avg_num_neighbors, r_max=MACE_SMALL["r_max"], atomic_numbers=species)
    config = {"name": "mace-small", **MACE_SMALL, "species": species, "avg_num_neighbors": float(avg_num_neighbors)}
    return MACEPotential(model, species, MACE_SMALL["r_max"], neighbor_backend, config)
