"""GNS: force-centric encode-process-decode network (Sanchez-Gonzalez et al. 2020; GAMD, Li et al.
2022), made rotation-equivariant and momentum-conserving.

* Encode: node latent h_i = LN(MLP(species embedding + mask)); edge latent e_ij =
  LN(MLP(rbf(r_ij))). No absolute positions and no raw edge vectors enter the network, so
  every latent is invariant.
* Process (``num_layers`` steps, residual, LayerNorm after each MLP as in GNS):
  e_ij <- e_ij + LN(MLP(h_i + h_j, (P h)_i * (P h)_j, e_ij)),
  h_i  <- h_i  + LN(MLP(h_i, sum_j f_cut(r_ij) e_ij)).
* Decode: F_i = force_scale * sum_j w_ij r̂_ij with w_ij = MLP(e_ij) f_cut(r_ij), and a per-atom
  energy MLP(h_i) (normalised like the other models).

Symmetric edge latents: e_ij^0 depends on r_ij only, and every edge update uses only symmetric
functions of (h_i, h_j) (their sum and the product of a projection), so e_ij = e_ji at every
step without a reverse-edge index. Hence w_ij = w_ji, and with r̂_ji = -r̂_ij the pair forces
cancel: sum_i F_i = 0 (momentum conservation) up to floating-point rounding, and forces are
rotation-equivariant by construction. Forces go smoothly to zero as a neighbour leaves the
cutoff (every edge contribution carries f_cut). Forces are *not* conservative (-dE/dr of the
energy head is not the force output): NVE energy drifts and must be reported.

The first linear map of each edge MLP is applied to the nodes before gathering.
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch
from torch import Tensor, nn

from maskpot.models.common import WATER_CUTOFF, PotentialBase, activation, mlp, scatter_sum
from maskpot.models.registry import ModelConfigError, register_model


def _hidden_mlp(n_in: int, hidden: int, n_out: int, layers: int, act: str, layer_norm: bool) -> nn.Sequential:
    return mlp([n_in] + [hidden] * layers + [n_out], act, layer_norm=layer_norm)


class GNSProcessorStep(nn.Module):
    def __init__(self, hidden: int, mlp_layers: int, act: str) -> None:
        super().__init__()
        # First edge layer, split: A (h_i + h_j) + (P h)_i * (P h)_j + C e_ij
        self.edge_sum = nn.Linear(hidden, hidden, bias=False)
        self.edge_prod = nn.Linear(hidden, hidden, bias=False)
        self.edge_lat = nn.Linear(hidden, hidden)
        self.edge_act = activation(act)
        self.edge_rest = _hidden_mlp(hidden, hidden, hidden, mlp_layers - 1, act, layer_norm=True)
        self.node_mlp = _hidden_mlp(2 * hidden, hidden, hidden, mlp_layers, act, layer_norm=True)

    def forward(self, h: Tensor, e: Tensor, i: Tensor, j: Tensor, env: Tensor) -> Tuple[Tensor, Tensor]:
        # The bias of edge_lat is folded into a as b/2 per end (exact halving; a_i + a_j stays
        # exactly symmetric), so edge_lat's matmul accumulates into the gathered sum (addmm).
        a = self.edge_sum(h) + 0.5 * self.edge_lat.bias
        p = self.edge_prod(h)
        # a_i + a_j and p_i * p_j are exactly symmetric in floating point (commutative ops)
        z = a.index_select(0, i).add_(a.index_select(0, j))
        z = z.addcmul_(p.index_select(0, i), p.index_select(0, j))
        z = torch.addmm(z, e, self.edge_lat.weight.t())
        e = e + self.edge_rest(self.edge_act(z))
        agg = scatter_sum(e * env, i, h.shape[0])
        h = h + self.node_mlp(torch.cat([h, agg], dim=-1))
        return h, e


@register_model("gns")
class GNS(PotentialBase):
    """Force-centric GNS with symmetric pair weights. See the module docstring."""

    def __init__(
        self,
        species: Sequence[int],
        cutoff: float = WATER_CUTOFF,
        hidden_channels: int = 128,
        num_layers: int = 4,
        num_rbf: int = 20,
        activation: str = "silu",
        radial_basis: str = "bessel",
        envelope: str = "polynomial",
        envelope_exponent: int = 6,
        mlp_layers: int = 2,
        neighbor_backend: str = "torch",
        vector_head: bool = False,
    ) -> None:
        super().__init__(species, cutoff, hidden_channels, num_rbf, radial_basis, envelope, envelope_exponent,
                         neighbor_backend, vector_head, kind="force")
        h = hidden_channels
        self.node_encoder = _hidden_mlp(h, h, h, mlp_layers, activation, layer_norm=True)
        self.edge_encoder = _hidden_mlp(num_rbf, h, h, mlp_layers, activation, layer_norm=True)
        self.steps = nn.ModuleList([GNSProcessorStep(h, mlp_layers, activation) for _ in range(num_layers)])
        self.force_decoder = _hidden_mlp(h, h, 1, mlp_layers, activation, layer_norm=False)
        self.energy_decoder = _hidden_mlp(h, h, 1, mlp_layers, activation, layer_norm=False)
        self.vector_decoder = _hidden_mlp(h, h, 1, mlp_layers, activation, layer_norm=False) if vector_head else nn.Identity()

    @staticmethod
    def validate_config(config: dict) -> None:
        m = config.get("mlp_layers")
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ModelConfigError("mlp_layers", f"must be an integer >= 1, got {m!r}")

    def forward(self, data: Dict[str, Tensor]) -> Dict[str, Tensor]:
        positions, species_idx, h0, batch, n_graphs, edge_index, edge_vec = self._prepare(data)
        i, j = edge_index[0], edge_index[1]
        _, unit, rbf, env = self.radial(edge_vec)
        env = env.unsqueeze(-1)
        n = h0.shape[0]
        h = self.node_encoder(h0)
        e = self.edge_encoder(rbf)
        for step in self.steps:
            h, e = step(h, e, i, j, env)
        w = self.force_decoder(e) * env  # [E, 1], symmetric in (i, j)
        forces = scatter_sum(w * unit, i, n) * self.normalization.force_scale
        energy = self.normalization(self.energy_decoder(h).squeeze(-1), species_idx, batch, n_graphs)
        out: Dict[str, Tensor] = {"energy": energy, "forces": forces}
        if self.vector_head:
            out["vectors"] = scatter_sum(self.vector_decoder(e) * env * unit, i, n)
        return out
