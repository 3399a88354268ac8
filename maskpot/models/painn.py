"""PaiNN: polarizable atom interaction network (Schütt, Unke, Gastegger 2021), energy-centric.

Scalar features s [N, F] and vector features v [N, 3, F]. Each layer is

* message:  (phi_s, phi_vv, phi_vs) = MLP(s_j) * W(rbf(r_ij)) f_cut(r_ij)
            ds_i = sum_j phi_s,  dv_i = sum_j phi_vv v_j + phi_vs r̂_ij
* update:   U v, V v (linear over channels); (a_vv, a_sv, a_ss) = MLP(s, |V v|)
            dv = a_vv U v,  ds = a_ss + a_sv <U v, V v>

Per-atom energy from an MLP on s; forces = -dE/dr. Optional vector head (pretraining): a gated
equivariant block mapping (s, v) to one vector per atom.

Defaults (the README's recommended fast model): hidden 64, 1 layer, 20 Bessel functions, cutoff
3.5 Å, polynomial envelope p=6. Until issue 34 the defaults were 128 x 3 layers at 5 Å (about 50x
slower in water MD); state those values to get that model.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import Tensor, nn

from maskpot.models.common import WATER_CUTOFF, EnergyModel, mlp
from maskpot.models.registry import ModelConfigError, register_model

_EPS = 1e-8  # inside sqrt of |V v|: finite gradient at v = 0


class PaiNNMessage(nn.Module):
    def __init__(self, hidden: int, act: str) -> None:
        super().__init__()
        self.hidden = hidden
        self.scalar_mlp = mlp([hidden, hidden, 3 * hidden], act)

    def forward(self, s: Tensor, v: Tensor, i: Tensor, j: Tensor, filt: List[Tensor], unit: Tensor,
                first: bool, bag_order: Tensor, bag_index: Tensor, bag_offsets: Tensor) -> Tuple[Tensor, Tensor]:
        # filt = [W_s, W_vv, W_vs](rbf) * f_cut, each [E, F]. The three message parts are gathered
        # and multiplied separately (same function as splitting one [E, 3F] product): no [E, 3F]
        # split/cat in the backward pass, and phi_vv is skipped in the first layer (v == 0).
        n, f = s.shape[0], self.hidden
        phi_s, phi_vv, phi_vs = torch.split(self.scalar_mlp(s), f, dim=-1)  # [N, F] each
        ds = phi_s.index_select(0, j) * filt[0]
        dv_r = phi_vs.index_select(0, j) * filt[2]
        if bag_index.numel() > 0:
            # sum_j dv_r_ij r̂_ij as a weighted embedding bag (rows of dv_r, weights r̂_ij[c], one
            # bag per (c, i)): no [E, 3, F] tensor forward or backward. First-order autograd only,
            # so used in eval mode (see PaiNN._bags).
            dv_unit = nn.functional.embedding_bag(bag_index, dv_r, bag_offsets, mode="sum",
                                                  per_sample_weights=unit.index_select(0, bag_order).t().reshape(-1))
            v_new = v + dv_unit.view(3, n, f).transpose(0, 1)
            if not first:
                dv_v = phi_vv.index_select(0, j) * filt[1]
                v_new = v_new.index_add(0, i, dv_v.unsqueeze(1) * v.index_select(0, j))
            return s.index_add(0, i, ds), v_new
        dv = unit.unsqueeze(-1) * dv_r.unsqueeze(1)  # [E, 3, F]
        if not first:
            dv_v = phi_vv.index_select(0, j) * filt[1]
            # in place: MulBackward keeps its inputs, not its output
            dv = dv.addcmul_(dv_v.unsqueeze(1), v.index_select(0, j))
        # s + sum_j ds_ij as one index_add (no zeros tensor, no extra add)
        return s.index_add(0, i, ds), v.index_add(0, i, dv)


class PaiNNUpdate(nn.Module):
    def __init__(self, hidden: int, act: str) -> None:
        super().__init__()
        self.hidden = hidden
        self.eps = _EPS
        self.vector_mix = nn.Linear(hidden, 2 * hidden, bias=False)
        self.scalar_mlp = mlp([2 * hidden, hidden, 3 * hidden], act)

    def forward(self, s: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
        f = self.hidden
        uv, vv = torch.split(self.vector_mix(v), f, dim=-1)  # [N, 3, F] each
        vv_norm = torch.sqrt((vv * vv).sum(dim=1) + self.eps)
        a = self.scalar_mlp(torch.cat([s, vv_norm], dim=-1))
        a_vv, a_sv, a_ss = torch.split(a, f, dim=-1)
        s = s + a_ss + a_sv * (uv * vv).sum(dim=1)
        v = v + a_vv.unsqueeze(1) * uv
        return s, v


class GatedEquivariantBlock(nn.Module):
    """(s [N, F], v [N, 3, F]) -> one equivariant vector per atom [N, 3]."""

    def __init__(self, hidden: int, act: str) -> None:
        super().__init__()
        self.mix = nn.Linear(hidden, hidden + 1, bias=False)
        self.hidden = hidden
        self.eps = _EPS
        self.gate = mlp([2 * hidden, hidden, 1], act)

    def forward(self, s: Tensor, v: Tensor) -> Tensor:
        w = self.mix(v)  # [N, 3, F + 1]
        w1, w2 = w[..., : self.hidden], w[..., self.hidden]
        norm = torch.sqrt((w1 * w1).sum(dim=1) + self.eps)
        return self.gate(torch.cat([s, norm], dim=-1)) * w2


@register_model("painn")
class PaiNN(EnergyModel):
    """Energy-centric PaiNN. See the module docstring."""

    def __init__(
        self,
        species: Sequence[int],
        cutoff: float = WATER_CUTOFF,
        hidden_channels: int = 64,
        num_layers: int = 1,
        num_rbf: int = 20,
        activation: str = "silu",
        radial_basis: str = "bessel",
        envelope: str = "polynomial",
        envelope_exponent: int = 6,
        shared_filters: bool = False,
        neighbor_backend: str = "torch",
        vector_head: bool = False,
    ) -> None:
        super().__init__(species, cutoff, hidden_channels, num_rbf, radial_basis, envelope, envelope_exponent,
                         neighbor_backend, vector_head, kind="energy")
        h = hidden_channels
        self.num_layers = int(num_layers)
        self.shared_filters = bool(shared_filters)
        # Linear maps rbf -> filters (3F per layer); one shared by all layers with shared_filters.
        self.filter_nets = nn.ModuleList(
            [nn.Linear(num_rbf, 3 * h) for _ in range(1 if shared_filters else num_layers)]
        )
        self.messages = nn.ModuleList([PaiNNMessage(h, activation) for _ in range(num_layers)])
        self.updates = nn.ModuleList([PaiNNUpdate(h, activation) for _ in range(num_layers)])
        self.energy_head = mlp([h, h // 2, 1], activation)
        self.vector_out = GatedEquivariantBlock(h, activation) if vector_head else nn.Identity()

    @staticmethod
    def validate_config(config: dict) -> None:
        if not isinstance(config.get("shared_filters"), bool):
            raise ModelConfigError("shared_filters", f"must be true/false, got {config.get('shared_filters')!r}")

    def _bags(self, i: Tensor, n: int) -> Tuple[Tensor, Tensor, Tensor]:
        """Eval mode: edge order grouped by centre (stable), and embedding-bag indices / offsets
        with one bag per (component c, atom i) over the edges of i. Training mode (forces need
        a double backward, which embedding_bag lacks): empty tensors -> broadcast path."""
        empty = torch.zeros(0, dtype=torch.long, device=i.device)
        if self.training:
            return empty, empty, empty
        order = torch.argsort(i, stable=True)
        counts = torch.bincount(i, minlength=n)
        starts = torch.cumsum(counts, 0) - counts
        e = i.shape[0]
        offsets = torch.cat([starts, starts + e, starts + 2 * e])
        return order, order.repeat(3), offsets

    def atomic_energies(self, h0: Tensor, edge_index: Tensor, edge_vec: Tensor) -> Tuple[Tensor, Tensor]:
        i, j = edge_index[0], edge_index[1]
        _, unit, rbf, env = self.radial(edge_vec)
        f = self.hidden_channels
        env = env.unsqueeze(-1)
        # (W rbf + b) f_cut = [rbf f_cut, f_cut] @ [W, b]^T: the envelope enters through the
        # matmul (no [E, 3F] elementwise product forward or backward); one [E, F] block each for
        # phi_s, phi_vv, phi_vs.
        rbf_env = torch.cat([rbf * env, env], dim=-1)  # [E, K + 1]
        filters: List[List[Tensor]] = []
        for net in self.filter_nets:
            w = torch.cat([net.weight, net.bias.unsqueeze(-1)], dim=-1)  # [3F, K + 1]
            filters.append([torch.mm(rbf_env, wk.t()) for wk in torch.split(w, f, dim=0)])
        n = h0.shape[0]
        bag_order, bag_index, bag_offsets = self._bags(i, n)
        s = h0
        v = torch.zeros(n, 3, f, dtype=h0.dtype, device=h0.device)
        k = 0
        for message, update in zip(self.messages, self.updates):
            filt = filters[0] if self.shared_filters else filters[k]
            s, v = message(s, v, i, j, filt, unit, k == 0, bag_order, bag_index, bag_offsets)
            s, v = update(s, v)
            k += 1
        e = self.energy_head(s).squeeze(-1)
        vectors = torch.zeros(0, dtype=h0.dtype, device=h0.device)
        if self.vector_head:
            vectors = self.vector_out(s, v)
        return e, vectors
