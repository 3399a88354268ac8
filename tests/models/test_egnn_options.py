"""EGNN's reference options (coord_updates, distance_input); the whole model suite also runs on
them as the ``egnn-reference`` variant (see model_helpers.MODEL_VARIANTS)."""

import numpy as np
import pytest
import torch

from maskpot.models import build_model
from model_helpers import batch_of, ethanol, make_model, small_config, water_box


def _f64(**kw):
    return make_model("egnn", dtype="float64", **kw).eval()


@pytest.mark.parametrize("distance_input", ["rbf", "squared"])
def test_zero_coordinate_moves_equal_the_plain_model(distance_input):
    plain = _f64(distance_input=distance_input, vector_head=True)
    moving = _f64(distance_input=distance_input, coord_updates=True, vector_head=True)
    missing, unexpected = moving.load_state_dict(plain.state_dict(), strict=False)
    assert missing and all("coord_mlp" in k for k in missing)
    assert all(k.startswith("vector_mlp") for k in unexpected)  # moving: vectors = displacement
    with torch.no_grad():
        for layer in moving.layers:
            layer.coord_mlp[-1].weight.zero_()
    batch = [water_box(), ethanol()]
    a, b = plain(batch_of(batch)), moving(batch_of(batch))
    torch.testing.assert_close(b["energy"], a["energy"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(b["forces"], a["forces"], rtol=1e-10, atol=1e-12)
    assert torch.all(b["vectors"] == 0)  # the vector head is the total displacement


def test_coordinate_updates_feed_the_next_layer():
    model = _f64(coord_updates=True, distance_input="squared", vector_head=True)
    ref = model(batch_of([ethanol()]))
    assert ref["vectors"].abs().max() > 1e-3
    with torch.no_grad():
        model.layers[0].coord_mlp[-1].weight.mul_(2.0)  # first layer's move only
    out = model(batch_of([ethanol()]))
    assert not torch.allclose(out["energy"], ref["energy"])  # moved distances enter layer 2
    with torch.no_grad():
        model.layers[0].coord_mlp[-1].weight.mul_(0.5)
        model.layers[-1].coord_mlp[-1].weight.mul_(2.0)  # last layer's move only
    out = model(batch_of([ethanol()]))
    torch.testing.assert_close(out["energy"], ref["energy"], rtol=1e-12, atol=1e-12)  # feeds only the vectors
    assert not torch.allclose(out["vectors"], ref["vectors"])


def test_the_reference_initialisation_moves_little():
    torch.manual_seed(0)
    model = build_model(small_config("egnn", coord_updates=True, vector_head=True, dtype="float64"))
    out = model(batch_of([ethanol()]))
    assert 0 < float(out["vectors"].detach().abs().max()) < 1e-2  # Xavier gain 0.001 on phi_x's last layer


def test_squared_distance_input_has_one_feature():
    model = make_model("egnn", distance_input="squared")
    assert all(layer.edge_r.in_features == 1 for layer in model.layers)
    assert all(layer.edge_r.in_features == 8 for layer in make_model("egnn").layers)


@pytest.mark.parametrize("key, value", [("coord_updates", "yes"), ("distance_input", "cubic"), ("distance_input", None)])
def test_bad_options(key, value):
    with pytest.raises(ValueError, match=key):
        build_model(small_config("egnn", **{key: value}))


def test_periodic_images_with_coordinate_updates():
    """A molecule split across a periodic boundary moves like the whole one (r_ij^0 + dx_j - dx_i)."""
    model = _f64(coord_updates=True, vector_head=True)
    mol = ethanol()
    pos = mol.positions - mol.positions.mean(0)
    ref = model(batch_of([mol]))
    box = 10.0
    split = mol.copy(positions=np.mod(pos, box), cell=np.eye(3) * box, pbc=np.ones(3, bool))
    out = model(batch_of([split]))
    for key in ("energy", "forces", "vectors"):
        torch.testing.assert_close(out[key], ref[key], rtol=1e-8, atol=1e-10)
