"""Unit tests of the shared model pieces (maskpot.models.common)."""

import pytest
import torch

from maskpot.models.common import (
    BesselBasis,
    CosineEnvelope,
    GaussianBasis,
    PolynomialEnvelope,
    SpeciesEmbedding,
    activation,
    mlp,
    scatter_sum,
)


@pytest.mark.parametrize("envelope", [PolynomialEnvelope(4.0, 6), PolynomialEnvelope(4.0, 3), CosineEnvelope(4.0)])
def test_envelope_value_and_slope_vanish_at_cutoff(envelope):
    r = torch.tensor([0.0, 1e-9, 2.0, 4.0 - 1e-6, 4.0, 4.0 + 1e-6, 5.0], dtype=torch.float64, requires_grad=True)
    f = envelope(r)
    (df,) = torch.autograd.grad(f.sum(), r)
    assert abs(float(f[0]) - 1.0) < 1e-12 and abs(float(df[1])) < 1e-6  # 1 and flat at r = 0
    assert torch.all(f[4:] == 0) and torch.all(df[4:] == 0)
    assert abs(float(f[3])) < 1e-10 and abs(float(df[3])) < 1e-5  # continuous value and slope at r_c
    rr = torch.linspace(0.0, 4.0, 401, dtype=torch.float64)
    vals = envelope(rr)
    assert torch.all(vals[1:] <= vals[:-1] + 1e-12) and torch.all(vals >= -1e-12)  # monotone 1 -> 0


@pytest.mark.parametrize("basis", [BesselBasis(5.0, 8), GaussianBasis(5.0, 8)])
def test_radial_basis_shape_and_finite(basis):
    r = torch.linspace(0.1, 5.0, 50, dtype=torch.float64)
    basis = basis.to(torch.float64)
    out = basis(r)
    assert out.shape == (50, 8) and torch.isfinite(out).all()


def test_scatter_sum():
    src = torch.arange(12.0).reshape(6, 2)
    index = torch.tensor([0, 2, 2, 0, 3, 2])
    out = scatter_sum(src, index, 5)
    expected = torch.zeros(5, 2)
    for k, i in enumerate(index.tolist()):
        expected[i] += src[k]
    assert torch.equal(out, expected)
    assert scatter_sum(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), 4).shape == (4, 3)


def test_species_embedding_lookup_and_errors():
    emb = SpeciesEmbedding([1, 8], 4)
    assert emb.species_index(torch.tensor([8, 1, 1])).tolist() == [1, 0, 0]
    for bad in ([6], [200], [-1]):
        with pytest.raises(ValueError, match="unknown atomic numbers"):
            emb.species_index(torch.tensor(bad))
    idx = torch.tensor([0, 1])
    assert torch.equal(emb(idx, None), emb(idx, torch.zeros(2)))
    assert not torch.equal(emb(idx, None), emb(idx, torch.ones(2)))


def test_mlp_and_activation():
    net = mlp([3, 5, 2], "silu")
    assert net(torch.zeros(4, 3)).shape == (4, 2)
    assert abs(float(activation("ssp")(torch.zeros(1)))) < 1e-7
    with pytest.raises(ValueError, match="unknown activation"):
        activation("nope")
