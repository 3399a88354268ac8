"""TensorNet's compact (I, a, S) storage: exact round trips with full 3x3 matrices and
rotation equivariance of the per-atom tensor features (the suite in test_models.py checks the
energy and forces)."""

from __future__ import annotations

import numpy as np
import torch

from maskpot.models.tensornet import TensorAlgebra, edge_basis, part_products
from model_helpers import make_model, random_rotation, water_box


def _random_full(n: int, f: int, seed: int = 0) -> torch.Tensor:
    """[n, f, 3, 3] matrices."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, f, 3, 3, generator=g, dtype=torch.float64)


def _stored(m: torch.Tensor) -> torch.Tensor:
    """[n, f, 3, 3] -> the algebra's row-major [n, 9, f]."""
    return m.reshape(m.shape[0], m.shape[1], 9).transpose(1, 2)


def test_full_compact_round_trip():
    algebra = TensorAlgebra().double()
    m = _random_full(4, 5)
    x = algebra.from_full(_stored(m))
    assert torch.allclose(algebra.to_full(x), _stored(m), atol=1e-6)
    assert torch.allclose(algebra.from_full(algebra.to_full(x)), x, atol=1e-6)
    # parts: trace / 3, skew vector, traceless symmetric part
    assert torch.allclose(x[:, 0], torch.diagonal(m, dim1=-2, dim2=-1).mean(-1))
    skew = 0.5 * (m - m.transpose(-1, -2))
    assert torch.allclose(x[:, 1], skew[..., 2, 1])
    assert torch.allclose(x[:, 4:7].sum(dim=1), torch.zeros(4, 5, dtype=torch.float64), atol=1e-6)  # float32 1/3


def test_norm2_is_frobenius():
    algebra = TensorAlgebra().double()
    m = _random_full(3, 7, seed=1)
    assert torch.allclose(algebra.norm2(algebra.from_full(_stored(m))), (m * m).sum(dim=(-1, -2)))


def test_matmul_matches_torch():
    algebra = TensorAlgebra().double()
    a, b = _random_full(3, 4, seed=2), _random_full(3, 4, seed=3)
    assert torch.allclose(algebra.matmul(_stored(a), _stored(b)), _stored(a @ b), atol=1e-12)


def test_features_rotate_as_rank2_tensors():
    model = make_model("tensornet", dtype="float64").eval()
    sample = water_box(seed=3)
    rot = torch.tensor(random_rotation(np.random.default_rng(5)))

    def features(positions: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        data = {"positions": positions, "numbers": torch.as_tensor(sample.numbers),
                "cell": cell, "pbc": torch.as_tensor(sample.pbc)}
        pos, _, h0, _, _, edge_index, edge_vec = model._prepare(data)
        i, j = edge_index[0], edge_index[1]
        _, unit, rbf, env = model.radial(edge_vec)
        x = model.tensor_embedding(h0, i, j, edge_basis(unit), rbf, env)
        for layer in model.layers:
            x = layer(x, i, j, rbf, env)
        full = model.layers[0].algebra.to_full(x)  # [N, 9, F]
        return full.transpose(1, 2).reshape(x.shape[0], x.shape[2], 3, 3)

    pos = torch.as_tensor(sample.positions, dtype=torch.float64)
    cell = torch.as_tensor(sample.cell, dtype=torch.float64)
    full = features(pos, cell)
    rotated = features(pos @ rot.T, cell @ rot.T)
    expected = rot @ full @ rot.T
    assert torch.allclose(rotated, expected, atol=1e-9)


def test_part_products_match_per_component_form():
    algebra = TensorAlgebra().double()
    g = torch.Generator().manual_seed(4)
    w = torch.randn(7, 3, 5, generator=g, dtype=torch.float64)
    x = torch.randn(7, 10, 5, generator=g, dtype=torch.float64)
    parts = part_products(w, x[:, :1], x[:, 1:4], x[:, 4:])
    assert [p.shape[1] for p in parts] == [1, 3, 6]
    assert torch.equal(torch.cat(parts, dim=1), algebra.per_component(w) * x)


def test_dense_maps_match_sparse_terms():
    algebra = TensorAlgebra().double()
    x = torch.randn(4, 10, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    m = _stored(_random_full(4, 6, seed=7))
    assert torch.allclose(algebra.to_full(x), algebra.to_full_sparse(x), atol=1e-14)
    assert torch.allclose(algebra.from_full(m), algebra.from_full_sparse(m), atol=1e-14)
    # the dense maps are not in the state dict (old checkpoints keep loading with strict=True)
    assert set(TensorAlgebra().state_dict()) == {"compose_index", "compose_coeff", "decompose_index",
                                                 "decompose_coeff", "norm_weights", "parts"}
