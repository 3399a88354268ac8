"""TensorNet: Cartesian rank-2 tensor messages (Simeon & De Fabritiis, NeurIPS 2023), energy-centric.

Each atom carries, per channel, a 3x3 tensor X = I·Id + A + S split into its irreducible parts:
a scalar I (ℓ=0), a skew part A = skew(a) (ℓ=1, stored as the vector a) and a symmetric traceless
part S (ℓ=2). Products of such tensors (the X·M + M·X of each layer) couple ℓ = 0, 1, 2, which
is what gives NequIP / MACE / TensorNet their accuracy over invariant or vector-only models.

Storage: one compact tensor [N, 10, F] per atom: component 0 = I, 1..3 = a (x, y, z),
4..9 = S (xx, yy, zz, xy, xz, yz; traceless by construction). Full 3x3 matrices appear only
at the atoms, for the matrix products; edges carry the compact form (10 numbers per channel).

* embedding:  Z_ij = W_1 h_i + W_2 h_j + b (h: species embedding, + mask flag),
              X_i = Σ_j f_cut(r_ij) Z_ij ⊙ [W_I rbf · 1, W_A rbf · r̂, W_S rbf · (r̂r̂ᵀ - Id/3)],
              then per-part channel mixing scaled by an MLP of LayerNorm(|X|²).
* layer:      X ← X / (|X|² + 1); Y = mix(X) per part; M_i = Σ_j φ(rbf_ij) f_cut ⊙ Y_j
              (one radial weight per part); C = Y M + M Y; C ← C / (|C|² + 1);
              dX = mix(C); X ← X + dX + dX².
* energy:     MLP(LayerNorm([3 I², |A|², |S|²])) per atom; forces = -dE/dr.

Equivariant under rotations and reflections (a is odd under inversion, I and S even), so the
energy is invariant. Optional vector head (pretraining): Σ_f a_f g_f(scalars).

Defaults: hidden 64, 2 layers, 20 Bessel functions, cutoff 5.0 Å, polynomial envelope p=6.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import Tensor, nn

from maskpot.models.common import EnergyModel, activation as make_activation, mlp
from maskpot.models.registry import register_model

# Component index of each compact entry -> irreducible part (0: I, 1: A, 2: S).
_PARTS = [0, 1, 1, 1, 2, 2, 2, 2, 2, 2]
# Squared Frobenius norm of the full 3x3 tensor from the compact entries:
# |I Id|² = 3 I², |skew(a)|² = 2 |a|², |S|² = Σ diag² + 2 Σ offdiag².
_NORM_WEIGHTS = [3.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0]


def _compose_matrix() -> Tensor:
    """[9, 10]: row-major full 3x3 entries from compact (I, a, S) entries."""
    p = torch.zeros(9, 10)
    # diagonal: I + S_dd
    for d, s in ((0, 4), (4, 5), (8, 6)):
        p[d, 0] = 1.0
        p[d, s] = 1.0
    # off-diagonal (row, col): skew(a) = [[0, -az, ay], [az, 0, -ax], [-ay, ax, 0]] + S_sym
    for k, a_idx, sign, s_idx in ((1, 3, -1.0, 7), (2, 2, 1.0, 8), (3, 3, 1.0, 7),
                                   (5, 1, -1.0, 9), (6, 2, -1.0, 8), (7, 1, 1.0, 9)):
        p[k, a_idx] = sign
        p[k, s_idx] = 1.0
    return p


def _decompose_matrix() -> Tensor:
    """[10, 9]: compact (I, a, S) entries of a full row-major 3x3 tensor."""
    q = torch.zeros(10, 9)
    q[0, [0, 4, 8]] = 1.0 / 3.0
    q[1, 7], q[1, 5] = 0.5, -0.5  # a_x = (X_zy - X_yz) / 2
    q[2, 2], q[2, 6] = 0.5, -0.5  # a_y = (X_xz - X_zx) / 2
    q[3, 3], q[3, 1] = 0.5, -0.5  # a_z = (X_yx - X_xy) / 2
    for row, d in ((4, 0), (5, 4), (6, 8)):  # S_dd = X_dd - trace / 3
        q[row, [0, 4, 8]] = -1.0 / 3.0
        q[row, d] += 1.0
    q[7, 1], q[7, 3] = 0.5, 0.5
    q[8, 2], q[8, 6] = 0.5, 0.5
    q[9, 5], q[9, 7] = 0.5, 0.5
    return q


def edge_basis(unit: Tensor) -> Tensor:
    """Compact (I, a, S) entries [E, 10] of the edge tensors Id, skew(r̂), r̂r̂ᵀ - Id/3."""
    outer = unit * unit - 1.0 / 3.0  # S_xx, S_yy, S_zz
    cross = torch.stack([unit[:, 0] * unit[:, 1], unit[:, 0] * unit[:, 2], unit[:, 1] * unit[:, 2]], dim=1)
    return torch.cat([torch.ones_like(unit[:, :1]), unit, outer, cross], dim=1)


class PartMixing(nn.Module):
    """Channel mixing with one weight matrix per irreducible part (no bias: keeps equivariance)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.scalar = nn.Linear(hidden, hidden, bias=False)
        self.skew = nn.Linear(hidden, hidden, bias=False)
        self.symmetric = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x0, x1, x2 = self.parts(x)
        return torch.cat([x0, x1, x2], dim=1)

    def parts(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """The three mixed parts [N, 1, F], [N, 3, F], [N, 6, F] (``forward`` concatenates them).
        ``split`` rather than slicing: its backward is one cat, not a zero-filled copy per slice."""
        x0, x1, x2 = x.split([1, 3, 6], dim=1)
        return self.scalar(x0), self.skew(x1), self.symmetric(x2)


def _sparse_terms(matrix: Tensor, terms: int) -> Tuple[Tensor, Tensor]:
    """Row-wise nonzeros of a small constant matrix, padded to ``terms`` per row:
    (column indices [terms, rows], coefficients [terms, rows, 1])."""
    rows = matrix.shape[0]
    index = torch.zeros(terms, rows, dtype=torch.long)
    coeff = torch.zeros(terms, rows, 1, dtype=matrix.dtype)
    for r in range(rows):
        cols = torch.nonzero(matrix[r]).flatten().tolist()
        for t, c in enumerate(cols):
            index[t, r] = c
            coeff[t, r, 0] = matrix[r, c]
    return index, coeff


class TensorAlgebra(nn.Module):
    """Constant maps between the compact [N, 10, F] form and full 3x3 matrices stored row-major
    as [N, 9, F] (channels last, so every op is a vectorised elementwise op over F), the matrix
    product, and the per-channel squared norm. The maps are constant [9, 10] / [10, 9] matrices
    applied by one matmul over the component axis (the stored sparse terms give the same maps as
    gathers; kept as buffers for old state dicts and as the reference form). The 3x3 product is
    an elementwise broadcast over channels, not a batched 3x3 matmul (which is slow on a CPU)."""

    def __init__(self) -> None:
        super().__init__()
        compose_index, compose_coeff = _sparse_terms(_compose_matrix(), 2)
        decompose_index, decompose_coeff = _sparse_terms(_decompose_matrix(), 3)
        self.register_buffer("compose_index", compose_index)
        self.register_buffer("compose_coeff", compose_coeff)
        self.register_buffer("decompose_index", decompose_index)
        self.register_buffer("decompose_coeff", decompose_coeff)
        self.register_buffer("norm_weights", torch.tensor(_NORM_WEIGHTS).unsqueeze(-1))
        self.register_buffer("parts", torch.tensor(_PARTS, dtype=torch.long))
        # Dense forms of the same maps for to_full / from_full (one small matmul each, fewer ops than
        # the gathers in training's double backward). Not persistent: state dicts keep their keys.
        self.register_buffer("compose", _compose_matrix(), persistent=False)
        self.register_buffer("decompose", _decompose_matrix(), persistent=False)

    def norm2(self, x: Tensor) -> Tensor:
        """Squared Frobenius norm per channel: [N, 10, F] -> [N, F]."""
        return (x * x * self.norm_weights).sum(dim=1)

    def normalize(self, x: Tensor) -> Tensor:
        """X / (|X|² + 1) per channel, as a product with the reciprocal (cheaper backward than a
        division of [N, 10, F] by a broadcast denominator)."""
        return x * (1.0 / (self.norm2(x) + 1.0)).unsqueeze(1)

    def part_norms2(self, x: Tensor) -> Tensor:
        """Squared norms of the three parts, |I Id|², |A|², |S|² per channel: [N, 10, F] -> [N, 3F]."""
        w = x * x * self.norm_weights
        return torch.cat([w[:, 0], w[:, 1:4].sum(dim=1), w[:, 4:].sum(dim=1)], dim=-1)

    def to_full(self, x: Tensor) -> Tensor:
        """[N, 10, F] -> [N, 9, F] (row-major 3x3): one matmul with the constant [9, 10] map."""
        return torch.matmul(self.compose, x)

    def from_full(self, m: Tensor) -> Tensor:
        """[N, 9, F] -> [N, 10, F]: one matmul with the constant [10, 9] map."""
        return torch.matmul(self.decompose, m)

    def to_full_sparse(self, x: Tensor) -> Tensor:
        """Reference form of :meth:`to_full` from the stored sparse terms (index_select + mul + add)."""
        idx, c = self.compose_index, self.compose_coeff
        return x.index_select(1, idx[0]) * c[0] + x.index_select(1, idx[1]) * c[1]

    def from_full_sparse(self, m: Tensor) -> Tensor:
        """Reference form of :meth:`from_full` from the stored sparse terms."""
        idx, c = self.decompose_index, self.decompose_coeff
        return m.index_select(1, idx[0]) * c[0] + m.index_select(1, idx[1]) * c[1] + m.index_select(1, idx[2]) * c[2]

    def matmul(self, a: Tensor, b: Tensor) -> Tensor:
        """Per-channel 3x3 product of [N, 9, F] tensors."""
        n, f = a.shape[0], a.shape[2]
        return (a.view(n, 3, 3, 1, f) * b.view(n, 1, 3, 3, f)).sum(dim=2).reshape(n, 9, f)

    def per_component(self, w: Tensor) -> Tensor:
        """Per-part weights [E, 3, F] -> per-component weights [E, 10, F] (reference form; the
        models use :func:`part_products`, which never materialises this tensor)."""
        return w.index_select(1, self.parts)


def part_products(w: Tensor, x0: Tensor, x1: Tensor, x2: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Per-part weights ``w`` [E, 3, F] times the parts [E, 1, F], [E, 3, F], [E, 6, F] of a
    compact tensor, by broadcasting: equals ``per_component(w) * cat([x0, x1, x2], 1)`` split
    into its parts, without the [E, 10, F] copy of ``w`` (``unbind``'s backward is one stack)."""
    w0, w1, w2 = w.unbind(1)
    return w0.unsqueeze(1) * x0, w1.unsqueeze(1) * x1, w2.unsqueeze(1) * x2


def _scatter(src: Tensor, index: Tensor, n: int) -> Tensor:
    """Sum the rows of ``src`` [E, k, F] into ``n`` atoms by ``index`` (``index_add_``)."""
    return torch.zeros(n, src.shape[1], src.shape[2], dtype=src.dtype, device=src.device).index_add_(0, index, src)


class TensorEmbedding(nn.Module):
    def __init__(self, hidden: int, num_rbf: int, act: str) -> None:
        super().__init__()
        self.hidden = hidden
        # W_1 h_i + W_2 h_j + b == Linear(cat(h_i, h_j)), computed per atom then gathered.
        self.pair_i = nn.Linear(hidden, hidden)
        self.pair_j = nn.Linear(hidden, hidden, bias=False)
        self.distance_proj = nn.Linear(num_rbf, 3 * hidden)
        self.init_norm = nn.LayerNorm(hidden)
        self.scalar_mlp = mlp([hidden, 2 * hidden, 3 * hidden], act, final_activation=True)
        self.mixing = PartMixing(hidden)
        self.algebra = TensorAlgebra()  # constants (a submodule cannot be passed in TorchScript)

    def forward(self, h0: Tensor, i: Tensor, j: Tensor, basis: Tensor, rbf: Tensor, env: Tensor) -> Tensor:
        n, f = h0.shape[0], self.hidden
        algebra = self.algebra
        z_ij = self.pair_i(h0).index_select(0, i) + self.pair_j(h0).index_select(0, j)  # [E, F]
        w = self.distance_proj(rbf).view(-1, 3, f) * (z_ij * env.unsqueeze(-1)).unsqueeze(1)  # [E, 3, F]
        # message per part: w_I * 1, w_A * r̂, w_S * (r̂r̂ᵀ - Id/3); the I basis entry is 1, so no product
        w0, w1, w2 = w.unbind(1)
        _, b1, b2 = basis.split([1, 3, 6], dim=1)
        msg1 = w1.unsqueeze(1) * b1.unsqueeze(-1)  # [E, 3, F]
        msg2 = w2.unsqueeze(1) * b2.unsqueeze(-1)  # [E, 6, F]
        x = torch.cat([_scatter(w0.unsqueeze(1), i, n), _scatter(msg1, i, n), _scatter(msg2, i, n)], dim=1)
        s0, s1, s2 = self.scalar_mlp(self.init_norm(algebra.norm2(x))).view(n, 3, f).unbind(1)
        x0, x1, x2 = self.mixing.parts(x)
        return torch.cat([x0 * s0.unsqueeze(1), x1 * s1.unsqueeze(1), x2 * s2.unsqueeze(1)], dim=1)


class TensorInteraction(nn.Module):
    def __init__(self, hidden: int, num_rbf: int, act: str) -> None:
        super().__init__()
        self.hidden = hidden
        self.radial_mlp = mlp([num_rbf, hidden, 2 * hidden, 3 * hidden], act, final_activation=True)
        self.mix_in = PartMixing(hidden)
        self.mix_out = PartMixing(hidden)
        self.algebra = TensorAlgebra()

    def forward(self, x: Tensor, i: Tensor, j: Tensor, rbf: Tensor, env: Tensor) -> Tensor:
        f = self.hidden
        algebra = self.algebra
        n = x.shape[0]
        w = (self.radial_mlp(rbf) * env.unsqueeze(-1)).view(-1, 3, f)  # [E, 3, F]
        y0, y1, y2 = self.mix_in.parts(algebra.normalize(x))
        y = torch.cat([y0, y1, y2], dim=1)
        # M_i = sum_j w_ij ⊙ Y_j per part (gather, broadcast product and scatter per part)
        msg0, msg1, msg2 = part_products(w, y0.index_select(0, j), y1.index_select(0, j), y2.index_select(0, j))
        m = torch.cat([_scatter(msg0, i, n), _scatter(msg1, i, n), _scatter(msg2, i, n)], dim=1)
        y_full, m_full = algebra.to_full(y), algebra.to_full(m)
        c = algebra.from_full(algebra.matmul(y_full, m_full) + algebra.matmul(m_full, y_full))
        dx = self.mix_out(algebra.normalize(c))
        dx_full = algebra.to_full(dx)
        return x + dx + algebra.from_full(algebra.matmul(dx_full, dx_full))


@register_model("tensornet")
class TensorNet(EnergyModel):
    """Energy-centric TensorNet. See the module docstring."""

    def __init__(
        self,
        species: Sequence[int],
        cutoff: float = 5.0,
        hidden_channels: int = 64,
        num_layers: int = 2,
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
        self.num_layers = int(num_layers)
        self.algebra = TensorAlgebra()
        self.tensor_embedding = TensorEmbedding(h, num_rbf, activation)
        self.layers = nn.ModuleList([TensorInteraction(h, num_rbf, activation) for _ in range(num_layers)])
        self.out_norm = nn.LayerNorm(3 * h)
        self.out_linear = nn.Linear(3 * h, h)
        self.out_act = make_activation(activation)
        self.energy_head = mlp([h, h // 2 if h >= 2 else 1, 1], activation)
        self.vector_gate = nn.Linear(h, h) if vector_head else nn.Identity()

    def atomic_energies(self, h0: Tensor, edge_index: Tensor, edge_vec: Tensor) -> Tuple[Tensor, Tensor]:
        i, j = edge_index[0], edge_index[1]
        _, unit, rbf, env = self.radial(edge_vec)
        x = self.tensor_embedding(h0, i, j, edge_basis(unit), rbf, env)
        for layer in self.layers:
            x = layer(x, i, j, rbf, env)
        s = self.out_act(self.out_linear(self.out_norm(self.algebra.part_norms2(x))))
        e = self.energy_head(s).squeeze(-1)
        vectors = torch.zeros(0, dtype=h0.dtype, device=h0.device)
        if self.vector_head:
            vectors = (x[:, 1:4] * self.vector_gate(s).unsqueeze(1)).sum(dim=-1)
        return e, vectors
