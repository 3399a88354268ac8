"""EGNN: energy-centric E(n)-equivariant graph network (Satorras, Hoogeboom, Welling 2021).

Follows the E_GCL layer of the masked-pretraining paper's EGNN (hidden 128, 5 layers, SiLU,
residual node updates, LayerNorm before a two-layer energy head, cutoff 3.5 Å), with two
changes for a potential used in MD:

* messages depend on the distance through a radial basis times a smooth envelope, so the energy
  and its gradient are continuous when a neighbour crosses the cutoff (the original uses |r_ij|^2
  and a hard cutoff);
* no coordinate updates by default: the energy is read from invariant features, forces are
  -dE/dr.

Layer: m_ij = phi_e(h_i, h_j, rbf(r_ij)) * f_cut(r_ij); h_i <- h_i + phi_h(h_i, sum_j m_ij).
The first linear map of phi_e is applied to the nodes before gathering (same function, E/N
times fewer FLOPs). Vector head (pretraining): v_i = sum_j phi_v(m_ij) f_cut(r_ij) r_ij (equivariant, smooth).

Reference options (the reference code's ``models/egnn.py``, Satorras et al.'s E_GCL):

* ``distance_input: squared`` feeds |r_ij|^2 (one number) to phi_e instead of the radial basis;
* ``coord_updates: true`` moves the coordinates in every layer,
  x_i <- x_i + sum_j (x_i - x_j) phi_x(m_ij) f_cut(r_ij^0) / (1 + sum_j f_cut(r_ij^0)),
  phi_x = Linear -> act -> Linear(no bias, Xavier gain 0.001), and the next layer's distances
  (basis or squared) are those of the moved coordinates. Differences to the reference, for a
  smooth potential: the neighbour list and the envelope f_cut stay those of the input
  coordinates (the reference also keeps its initial graph), phi_x is multiplied by the envelope
  and the reference's mean over neighbours divides by 1 + sum_j f_cut instead of the neighbour
  count (which jumps when an atom crosses the cutoff). Periodic images are exact: the moved
  edge vector is r_ij^0 + dx_j - dx_i. The energy is still read from the invariant features
  (forces = -dE/dr through the coordinate updates); the last layer's move only feeds the
  vector head, which is then the total displacement x^L - x^0 (the reference's denoising
  output ``x - pos``).
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import Tensor, nn

from maskpot.models.common import WATER_CUTOFF, EnergyModel, activation, mlp, scatter_sum
from maskpot.models.registry import ModelConfigError, register_model


class EGNNLayer(nn.Module):
    def __init__(self, hidden: int, num_rbf: int, act: str, coord_update: bool = False) -> None:
        super().__init__()
        # phi_e first layer split: W [h_i, h_j, rbf] = W_i h_i + W_j h_j + W_r rbf
        self.edge_i = nn.Linear(hidden, hidden)
        self.edge_j = nn.Linear(hidden, hidden, bias=False)
        self.edge_r = nn.Linear(num_rbf, hidden, bias=False)
        self.edge_act = activation(act)
        self.edge_out = nn.Sequential(nn.Linear(hidden, hidden), activation(act))
        self.node_mlp = mlp([2 * hidden, hidden, hidden], act)
        if coord_update:
            last = nn.Linear(hidden, 1, bias=False)
            nn.init.xavier_uniform_(last.weight, gain=0.001)
            self.coord_mlp: nn.Module = nn.Sequential(nn.Linear(hidden, hidden), activation(act), last)
        else:
            self.coord_mlp = nn.Identity()

    def coord_update(self, m: Tensor, i: Tensor, d: Tensor, env: Tensor, inv_count: Tensor) -> Tensor:
        """Displacement [N, 3] of the atoms: sum_j (x_i - x_j) phi_x(m_ij) f_cut / (1 + sum_j f_cut),
        with ``d`` = x_j - x_i [E, 3] and ``inv_count`` = 1 / (1 + sum_j f_cut) [N, 1]."""
        w = self.coord_mlp(m) * env
        return scatter_sum(d * (-w), i, inv_count.shape[0]) * inv_count

    def forward(self, h: Tensor, i: Tensor, j: Tensor, rbf: Tensor, env: Tensor) -> Tuple[Tensor, Tensor]:
        a = self.edge_i(h)
        b = self.edge_j(h)
        # a_i + b_j + W_r rbf with the sum accumulated in place and the rbf term added by addmm
        # (same function, two fewer passes over [E, F]); IndexSelectBackward keeps no output.
        z = a.index_select(0, i).add_(b.index_select(0, j))
        m = self.edge_act(torch.addmm(z, rbf, self.edge_r.weight.t()))
        m = self.edge_out(m) * env
        agg = scatter_sum(m, i, h.shape[0])
        h = h + self.node_mlp(torch.cat([h, agg], dim=-1))
        return h, m


@register_model("egnn")
class EGNN(EnergyModel):
    """Energy-centric EGNN. See the module docstring."""

    DISTANCE_INPUTS = ("rbf", "squared")

    def __init__(
        self,
        species: Sequence[int],
        cutoff: float = WATER_CUTOFF,
        hidden_channels: int = 128,
        num_layers: int = 5,
        num_rbf: int = 20,
        activation: str = "silu",
        radial_basis: str = "bessel",
        envelope: str = "polynomial",
        envelope_exponent: int = 6,
        neighbor_backend: str = "torch",
        vector_head: bool = False,
        coord_updates: bool = False,
        distance_input: str = "rbf",
    ) -> None:
        super().__init__(species, cutoff, hidden_channels, num_rbf, radial_basis, envelope, envelope_exponent,
                         neighbor_backend, vector_head, kind="energy")
        EGNN.validate_config({"coord_updates": coord_updates, "distance_input": distance_input})
        h = hidden_channels
        self.coord_updates: bool = bool(coord_updates)
        self.squared_distance: bool = distance_input == "squared"
        n_in = 1 if self.squared_distance else num_rbf
        self.layers = nn.ModuleList([EGNNLayer(h, n_in, activation, self.coord_updates) for _ in range(num_layers)])
        self.out_norm = nn.LayerNorm(h)
        self.energy_head = mlp([h, h, 1], activation)
        self.vector_mlp = mlp([h, h, 1], activation) if vector_head and not self.coord_updates else nn.Identity()

    @staticmethod
    def validate_config(config: dict) -> None:
        if not isinstance(config.get("coord_updates"), bool):
            raise ModelConfigError("coord_updates", f"must be true/false, got {config.get('coord_updates')!r}")
        if config.get("distance_input") not in EGNN.DISTANCE_INPUTS:
            raise ModelConfigError(
                "distance_input", f"must be one of {list(EGNN.DISTANCE_INPUTS)}, got {config.get('distance_input')!r}"
            )

    def _distance_features(self, d: Tensor) -> Tensor:
        """Edge input of phi_e for edge vectors ``d`` [E, 3]: |d|^2 [E, 1] or the radial basis."""
        if self.squared_distance:
            return (d * d).sum(-1, keepdim=True)
        return self.radial.basis(torch.linalg.vector_norm(d, dim=-1))

    def atomic_energies(self, h0: Tensor, edge_index: Tensor, edge_vec: Tensor) -> Tuple[Tensor, Tensor]:
        i, j = edge_index[0], edge_index[1]
        _, _, rbf, env = self.radial(edge_vec)
        env = env.unsqueeze(-1)
        h = h0
        m = torch.zeros(0, dtype=h0.dtype, device=h0.device)
        delta = torch.zeros(0, dtype=h0.dtype, device=h0.device)
        if self.coord_updates:
            n = h0.shape[0]
            delta = torch.zeros(n, 3, dtype=h0.dtype, device=h0.device)
            inv_count = 1.0 / (1.0 + scatter_sum(env, i, n))
            d = edge_vec
            last = len(self.layers) - 1
            k = 0
            for layer in self.layers:
                h_next, m = layer(h, i, j, self._distance_features(d), env)
                if k < last or self.vector_head:  # the last move only feeds the vector head
                    delta = delta + layer.coord_update(m, i, d, env, inv_count)
                    d = edge_vec + delta.index_select(0, j) - delta.index_select(0, i)
                h = h_next
                k += 1
        else:
            feat = (edge_vec * edge_vec).sum(-1, keepdim=True) if self.squared_distance else rbf
            for layer in self.layers:
                h, m = layer(h, i, j, feat, env)
        e = self.energy_head(self.out_norm(h)).squeeze(-1)
        vectors = torch.zeros(0, dtype=h0.dtype, device=h0.device)
        if self.vector_head and self.coord_updates:
            vectors = delta
        elif self.vector_head:
            if m.shape[0] == edge_vec.shape[0]:
                vectors = scatter_sum(self.vector_mlp(m) * env * edge_vec, i, h.shape[0])
            else:  # no layers
                vectors = torch.zeros(h.shape[0], 3, dtype=h0.dtype, device=h0.device)
        return e, vectors
