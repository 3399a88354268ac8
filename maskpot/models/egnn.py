"""EGNN: energy-centric E(n)-equivariant graph network (Satorras, Hoogeboom, Welling 2021).

Follows the E_GCL layer of the masked-pretraining paper's EGNN (hidden 128, 5 layers, SiLU,
residual node updates, LayerNorm before a two-layer energy head, cutoff 3.5 Å), with two
changes for a potential used in MD:

* messages depend on the distance through a radial basis times a smooth envelope, so the energy
  and its gradient are continuous when a neighbour crosses the cutoff (the original uses |r_ij|^2
  and a hard cutoff);
* no coordinate updates: the energy is read from invariant features, forces are -dE/dr.

Layer: m_ij = phi_e(h_i, h_j, rbf(r_ij)) * f_cut(r_ij); h_i <- h_i + phi_h(h_i, sum_j m_ij).
The first linear map of phi_e is applied to the nodes before gathering (same function, E/N
times fewer FLOPs). Vector head (pretraining): v_i = sum_j phi_v(m_ij) f_cut(r_ij) r_ij (equivariant, smooth).
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import Tensor, nn

from maskpot.models.common import EnergyModel, activation, mlp, scatter_sum
from maskpot.models.registry import register_model


class EGNNLayer(nn.Module):
    def __init__(self, hidden: int, num_rbf: int, act: str) -> None:
        super().__init__()
        # phi_e first layer split: W [h_i, h_j, rbf] = W_i h_i + W_j h_j + W_r rbf
        self.edge_i = nn.Linear(hidden, hidden)
        self.edge_j = nn.Linear(hidden, hidden, bias=False)
        self.edge_r = nn.Linear(num_rbf, hidden, bias=False)
        self.edge_act = activation(act)
        self.edge_out = nn.Sequential(nn.Linear(hidden, hidden), activation(act))
        self.node_mlp = mlp([2 * hidden, hidden, hidden], act)

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

    DEFAULTS = {
        "cutoff": 3.5,
        "hidden_channels": 128,
        "num_layers": 5,
        "num_rbf": 20,
        "activation": "silu",
        "radial_basis": "bessel",
        "envelope": "polynomial",
        "envelope_exponent": 6,
    }

    def __init__(
        self,
        species: Sequence[int],
        cutoff: float = 3.5,
        hidden_channels: int = 128,
        num_layers: int = 5,
        num_rbf: int = 20,
        activation: str = "silu",
        radial_basis: str = "bessel",
        envelope: str = "polynomial",
        envelope_exponent: int = 6,
        neighbor_backend: str = "torch",
        vector_head: bool = False,
    ) -> None:
        super().__init__(species, cutoff, hidden_channels, num_rbf, radial_basis, envelope, envelope_exponent,
                         neighbor_backend, vector_head, kind="energy")
        h = hidden_channels
        self.layers = nn.ModuleList([EGNNLayer(h, num_rbf, activation) for _ in range(num_layers)])
        self.out_norm = nn.LayerNorm(h)
        self.energy_head = mlp([h, h, 1], activation)
        self.vector_mlp = mlp([h, h, 1], activation) if vector_head else nn.Identity()

    def atomic_energies(self, h0: Tensor, edge_index: Tensor, edge_vec: Tensor) -> Tuple[Tensor, Tensor]:
        i, j = edge_index[0], edge_index[1]
        _, _, rbf, env = self.radial(edge_vec)
        env = env.unsqueeze(-1)
        h = h0
        m = torch.zeros(0, dtype=h0.dtype, device=h0.device)
        for layer in self.layers:
            h, m = layer(h, i, j, rbf, env)
        e = self.energy_head(self.out_norm(h)).squeeze(-1)
        vectors = torch.zeros(0, dtype=h0.dtype, device=h0.device)
        if self.vector_head:
            if m.shape[0] == edge_vec.shape[0]:
                vectors = scatter_sum(self.vector_mlp(m) * env * edge_vec, i, h.shape[0])
            else:  # no layers
                vectors = torch.zeros(h.shape[0], 3, dtype=h0.dtype, device=h0.device)
        return e, vectors
