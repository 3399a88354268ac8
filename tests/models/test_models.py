"""The reusable model test-suite: every registered model must pass every test here."""

import io
import json

import numpy as np
import pytest
import torch

from maskpot.data.neighbors import vesin_available
from maskpot.data.sample import Sample, collate
from maskpot.models import MODEL_REGISTRY, build_model, default_config
from model_helpers import (SPECIES, TEST_CUTOFF, base_name, batch_of, ethanol, make_model, random_rotation, small_config,
                           water_box)

F64 = torch.float64


def run(model, sample_or_batch, **kw):
    data = sample_or_batch if isinstance(sample_or_batch, dict) else batch_of([sample_or_batch], **kw)
    return model(data)


def f64(name, **kw):
    return make_model(name, dtype="float64", **kw).eval()


# --------------------------------------------------------------------------------------------
# contract
# --------------------------------------------------------------------------------------------


def test_registry_has_the_three_models():
    assert {"egnn", "gns", "painn"} <= set(MODEL_REGISTRY)


def test_contract_attributes_and_outputs(model_name, any_sample):
    model = make_model(model_name, vector_head=True)
    assert model.kind in ("energy", "force")
    assert model.kind == ("force" if base_name(model_name) == "gns" else "energy")
    assert model.cutoff == TEST_CUTOFF
    assert model.species == SPECIES
    assert isinstance(model.neighbors, torch.nn.Module)
    out = run(model, any_sample, dtype=torch.float32)
    n = any_sample.n_atoms
    assert out["energy"].shape == (1,) and out["forces"].shape == (n, 3) and out["vectors"].shape == (n, 3)
    assert all(torch.isfinite(v).all() for v in out.values())
    assert out["energy"].dtype == torch.float32
    assert "vectors" not in run(make_model(model_name), any_sample, dtype=torch.float32)


def test_config_roundtrip(model_name):
    model = make_model(model_name, vector_head=True)
    text = json.dumps(model.config)
    assert json.loads(model.config_json) == model.config
    rebuilt = build_model(json.loads(text))
    assert rebuilt.config == model.config
    rebuilt.load_state_dict(model.state_dict())  # strict: same architecture
    d = default_config(base_name(model_name))
    assert d["name"] == base_name(model_name) and "species" not in d


def test_unknown_config_key(model_name):
    with pytest.raises(ValueError, match="hiden_channels.*allowed"):
        build_model(small_config(model_name, hiden_channels=8))
    with pytest.raises(ValueError, match="species"):
        build_model({"name": base_name(model_name)})
    with pytest.raises(ValueError, match="unknown model name"):
        build_model({"name": "nope", "species": [1]})


def test_default_hyperparameters():
    egnn, gns, painn = default_config("egnn"), default_config("gns"), default_config("painn")
    assert (egnn["hidden_channels"], egnn["num_layers"], egnn["cutoff"], egnn["activation"]) == (128, 5, 3.5, "silu")
    assert (egnn["coord_updates"], egnn["distance_input"]) == (False, "rbf")
    assert (gns["hidden_channels"], gns["num_layers"], gns["cutoff"]) == (128, 4, 3.5)
    # the README's recommended fast model (issue 34; 128 x 3 at 5 Å before)
    assert (painn["hidden_channels"], painn["num_layers"], painn["num_rbf"], painn["cutoff"]) == (64, 1, 20, 3.5)


def test_config_keys_are_the_constructor_parameters():
    """Each model's keys and defaults come from its ``__init__`` signature (one place)."""
    import inspect

    from maskpot.models import COMMON_DEFAULTS

    for name, cls in MODEL_REGISTRY.items():
        params = inspect.signature(cls.__init__).parameters
        expected = {k: p.default for k, p in params.items() if k not in ("self", "species")}
        expected.update(COMMON_DEFAULTS)
        assert {k: v for k, v in default_config(name).items() if k != "name"} == expected


def test_register_model_contract():
    from torch import nn

    from maskpot.models import register_model

    class NoDefault(nn.Module):
        def __init__(self, species, width, neighbor_backend="torch", vector_head=False):
            super().__init__()

    class NoCommon(nn.Module):
        def __init__(self, species, width=3):
            super().__init__()

    with pytest.raises(TypeError, match="'width' needs a default"):
        register_model("test-no-default")(NoDefault)
    with pytest.raises(TypeError, match="neighbor_backend"):
        register_model("test-no-common")(NoCommon)
    assert "test-no-default" not in MODEL_REGISTRY and "test-no-common" not in MODEL_REGISTRY


def test_unknown_element(model_name):
    model = make_model(model_name)
    s = ethanol()
    s.numbers[0] = 7
    for m in (model, torch.jit.script(model)):
        with pytest.raises(Exception, match=r"unknown atomic numbers \[7\]"):
            run(m, s, dtype=torch.float32)


def test_cutoff_larger_than_half_box(model_name, box_sample):
    model = make_model(model_name, cutoff=3.2)  # box 6.2 Å
    with pytest.raises(ValueError, match="half the shortest"):
        run(model, box_sample, dtype=torch.float32)


# --------------------------------------------------------------------------------------------
# symmetry
# --------------------------------------------------------------------------------------------


def test_rotation_translation(model_name, any_sample):
    model = f64(model_name, vector_head=True)
    rng = np.random.default_rng(1)
    rot = random_rotation(rng)
    ref = run(model, any_sample)
    moved = any_sample.copy(positions=any_sample.positions @ rot.T + rng.normal(size=3) * 3.0,
                            cell=any_sample.cell @ rot.T)
    out = run(model, moved)
    r = torch.tensor(rot)
    torch.testing.assert_close(out["energy"], ref["energy"], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out["forces"], ref["forces"] @ r.T, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(out["vectors"], ref["vectors"] @ r.T, rtol=1e-7, atol=1e-9)


def test_reflection_of_forces(model_name, mol_sample):
    """E(3): a mirror image has the same energy and mirrored forces."""
    model = f64(model_name)
    mirror = np.diag([-1.0, 1.0, 1.0])
    ref = run(model, mol_sample)
    out = run(model, mol_sample.copy(positions=mol_sample.positions @ mirror))
    torch.testing.assert_close(out["energy"], ref["energy"], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out["forces"], ref["forces"] @ torch.tensor(mirror), rtol=1e-7, atol=1e-9)


def test_permutation(model_name, any_sample):
    model = f64(model_name, vector_head=True)
    perm = np.random.default_rng(2).permutation(any_sample.n_atoms)
    ref = run(model, any_sample)
    out = run(model, any_sample.copy(positions=any_sample.positions[perm], numbers=any_sample.numbers[perm],
                                     molecule=None))
    torch.testing.assert_close(out["energy"], ref["energy"], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out["forces"], ref["forces"][perm], rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(out["vectors"], ref["vectors"][perm], rtol=1e-7, atol=1e-9)


def test_forces_are_minus_energy_gradient(energy_model_name, any_sample):
    model = f64(energy_model_name)
    out = run(model, any_sample)
    rng = np.random.default_rng(3)
    h = 1e-5
    for atom in rng.choice(any_sample.n_atoms, size=3, replace=False):
        for axis in range(3):
            energies = []
            for sign in (1, -1):
                pos = any_sample.positions.copy()
                pos[atom, axis] += sign * h
                energies.append(float(run(model, any_sample.copy(positions=pos))["energy"].detach()))
            fd = -(energies[0] - energies[1]) / (2 * h)
            assert abs(float(out["forces"][atom, axis]) - fd) < 1e-6 * max(1.0, abs(fd))


def test_force_model_conserves_momentum(force_model_name, any_sample):
    model = make_model(force_model_name)
    for dtype, tol in ((torch.float32, 1e-4), (F64, 1e-11)):
        model.to(dtype)
        forces = run(model, any_sample, dtype=dtype)["forces"]
        assert forces.abs().max() > 0
        assert torch.all(forces.sum(0).abs() < tol * forces.abs().max()), forces.sum(0)


def test_energy_model_sum_of_forces_zero(model_name, any_sample):
    model = f64(model_name)
    forces = run(model, any_sample)["forces"]
    assert torch.all(forces.sum(0).abs() < 1e-9 * max(1.0, float(forces.abs().max())))


# --------------------------------------------------------------------------------------------
# batching and periodic boundaries
# --------------------------------------------------------------------------------------------


def test_batch_equals_single(model_name):
    model = f64(model_name, vector_head=True)
    samples = [water_box(seed=0), ethanol(seed=1), water_box(seed=2), ethanol(seed=3)]
    batch = batch_of(samples)
    out = model(batch)
    start = 0
    for g, s in enumerate(samples):
        single = run(model, s)
        sl = slice(start, start + s.n_atoms)
        torch.testing.assert_close(out["energy"][g : g + 1], single["energy"], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(out["forces"][sl], single["forces"], rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(out["vectors"][sl], single["vectors"], rtol=1e-8, atol=1e-10)
        start += s.n_atoms


def test_no_gradient_leakage_between_frames(model_name):
    model = f64(model_name)
    samples = [water_box(seed=0), ethanol(seed=1)]
    batch = batch_of(samples)
    batch["positions"].requires_grad_(True)
    out = model(batch)
    n0 = samples[0].n_atoms
    for g, other in ((0, slice(n0, None)), (1, slice(0, n0))):
        grad = torch.autograd.grad(out["energy"][g], batch["positions"], retain_graph=True)[0]
        assert torch.all(grad[other] == 0)
        if model.kind == "force":
            fgrad = torch.autograd.grad(out["forces"][:n0].sum() if g == 0 else out["forces"][n0:].sum(),
                                        batch["positions"], retain_graph=True)[0]
            assert torch.all(fgrad[other] == 0)


def test_periodic_wrapping_and_translation(model_name, box_sample):
    model = f64(model_name)
    ref = run(model, box_sample)
    box = box_sample.cell[0, 0]
    rng = np.random.default_rng(4)
    # unwrapped: some atoms shifted by whole box vectors (molecules split across the boundary)
    images = rng.integers(-2, 3, size=(box_sample.n_atoms, 3))
    for positions in (box_sample.positions + images * box,
                      np.mod(box_sample.positions + np.array([0.37, 0.5, 0.81]) * box, box)):
        out = run(model, box_sample.copy(positions=positions))
        torch.testing.assert_close(out["energy"], ref["energy"], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(out["forces"], ref["forces"], rtol=1e-7, atol=1e-9)


def test_molecule_in_large_box_matches_open(model_name, mol_sample):
    model = f64(model_name)
    ref = run(model, mol_sample)
    box = 12.0
    pos = mol_sample.positions - mol_sample.positions.mean(0)
    for shift in (np.full(3, box / 2), np.zeros(3)):  # centred, then split across the corner
        s = mol_sample.copy(positions=np.mod(pos + shift, box), cell=np.eye(3) * box, pbc=np.ones(3, bool))
        out = run(model, s)
        torch.testing.assert_close(out["energy"], ref["energy"], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(out["forces"], ref["forces"], rtol=1e-7, atol=1e-9)


def test_strain_gradient_for_stress(energy_model_name, box_sample):
    """The ASE calculator differentiates the energy w.r.t. a strain applied outside the model."""
    model = f64(energy_model_name)
    batch = batch_of([box_sample])
    strain = torch.zeros(3, 3, dtype=F64, requires_grad=True)
    eye = torch.eye(3, dtype=F64)
    batch["positions"] = batch["positions"] @ (eye + strain)
    batch["cell"] = batch["cell"] @ (eye + strain)
    out = model(batch)
    (dedstrain,) = torch.autograd.grad(out["energy"].sum(), strain)
    assert torch.isfinite(dedstrain).all() and dedstrain.abs().max() > 0
    torch.testing.assert_close(dedstrain, dedstrain.T, rtol=1e-7, atol=1e-9)  # rotation invariance
    # finite difference of one component
    h = 1e-6
    e = []
    for sign in (1, -1):
        eps = np.zeros((3, 3))
        eps[0, 1] = eps[1, 0] = sign * h / 2
        s = box_sample.copy(positions=box_sample.positions @ (np.eye(3) + eps),
                            cell=box_sample.cell @ (np.eye(3) + eps))
        e.append(float(run(model, s)["energy"]))
    fd = (e[0] - e[1]) / (2 * h)
    assert abs(fd - 0.5 * float(dedstrain[0, 1] + dedstrain[1, 0])) < 1e-5 * max(1.0, abs(fd))


# --------------------------------------------------------------------------------------------
# smoothness
# --------------------------------------------------------------------------------------------


def test_smooth_at_cutoff(model_name):
    """A third atom crossing the cutoff: energy and forces continuous (float64 scan)."""
    model = f64(model_name)
    rc = model.cutoff
    base = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0]])
    # atom 2 at distance d from atom 0, at 100 degrees from the 0-1 bond: farther than d (> rc)
    # from atom 1, so only the pair (0, 2) crosses the cutoff
    direction = np.array([np.cos(np.radians(100.0)), np.sin(np.radians(100.0)), 0.0])

    def frame(d):
        return Sample(positions=np.vstack([base, d * direction]), numbers=[8, 1, 1])

    energies, forces = [], []
    distances = rc + np.array([-1e-3, -1e-4, -1e-6, 1e-6, 1e-4, 1e-3])
    for d in distances:
        out = run(model, frame(d))
        energies.append(float(out["energy"].detach()))
        forces.append(out["forces"].detach().numpy())
    energies = np.array(energies)
    forces = np.array(forces)
    # the pair interacts inside the cutoff ...
    e_in = float(run(model, frame(rc - 0.3))["energy"].detach())
    assert abs(e_in - energies[-1]) > 1e-8
    # ... and the energy and forces are continuous across it: the jump over 2e-6 Å is tiny
    # (the envelope makes E - E(r_c) = O((r_c - r)^3))
    assert abs(energies[2] - energies[3]) < 1e-12
    assert np.abs(forces[2] - forces[3]).max() < 1e-8
    assert abs(energies[0] - energies[-1]) < 1e-6
    # beyond the cutoff the third atom does not interact with atom 0 at all
    out_far = run(model, frame(rc + 1.0))
    assert abs(energies[-1] - float(out_far["energy"].detach())) < 1e-12


# --------------------------------------------------------------------------------------------
# TorchScript, dtypes, mask, normalisation
# --------------------------------------------------------------------------------------------


def test_torchscript_equals_eager(model_name, tmp_path):
    model = make_model(model_name, vector_head=True).eval()
    batch = batch_of([water_box(), ethanol()], dtype=torch.float32)
    ref = model(dict(batch))
    scripted = torch.jit.script(model)
    assert scripted.kind == model.kind and scripted.species == model.species and scripted.cutoff == model.cutoff
    path = tmp_path / "model.pt"
    torch.jit.save(scripted, str(path))
    loaded = torch.jit.load(str(path))
    assert json.loads(loaded.config_json) == model.config
    for m in (scripted, loaded):
        out = m(batch_of([water_box(), ethanol()], dtype=torch.float32))
        for key in ("energy", "forces", "vectors"):
            torch.testing.assert_close(out[key], ref[key], rtol=1e-5, atol=1e-5)


def test_float64_matches_float32(model_name, any_sample):
    m32 = make_model(model_name).eval()
    m64 = make_model(model_name, dtype="float64").eval()
    m64.load_state_dict(m32.state_dict())
    assert next(m64.parameters()).dtype == F64
    out32 = run(m32, any_sample, dtype=torch.float32)
    out64 = run(m64, any_sample)
    assert out64["forces"].dtype == F64
    torch.testing.assert_close(out32["energy"].double(), out64["energy"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out32["forces"].double(), out64["forces"], rtol=1e-3, atol=1e-4)


def test_mask_flag(model_name, any_sample):
    model = f64(model_name, vector_head=True)
    n = any_sample.n_atoms
    plain = run(model, any_sample)
    zeros = run(model, batch_of([any_sample], extra={"mask": [np.zeros(n)]}))
    for key in plain:
        torch.testing.assert_close(zeros[key], plain[key], rtol=0, atol=0)
    flag = np.zeros(n)
    flag[0] = 1.0
    masked = run(model, batch_of([any_sample], extra={"mask": [flag]}))
    assert not torch.allclose(masked["energy"], plain["energy"])


def test_no_grad_context_still_gives_forces(model_name, mol_sample):
    model = f64(model_name)
    ref = run(model, mol_sample)
    with torch.no_grad():
        out = run(model, mol_sample)
    torch.testing.assert_close(out["forces"], ref["forces"])
    assert not torch.is_grad_enabled() or True


def test_training_mode_force_loss_backpropagates(model_name, mol_sample):
    model = make_model(model_name).train()
    batch = batch_of([mol_sample], dtype=torch.float32)
    out = model(batch)
    loss = (out["forces"] ** 2).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(g.abs().max() > 0 for g in grads)


def test_normalization(model_name, mol_sample):
    model = f64(model_name)
    ref = run(model, mol_sample)
    e0 = {1: -13.6, 6: -1029.0, 8: -2041.0}
    model.set_normalization(e0, energy_scale=2.0, force_scale=3.0)
    out = run(model, mol_sample)
    n_by_z = {z: int((mol_sample.numbers == z).sum()) for z in e0}
    shift = sum(e0[z] * n for z, n in n_by_z.items())
    torch.testing.assert_close(out["energy"], 2.0 * ref["energy"] + shift)
    factor = 2.0 if model.kind == "energy" else 3.0
    torch.testing.assert_close(out["forces"], factor * ref["forces"])
    # stored as buffers: survive state_dict round trip, also with string keys from JSON
    other = f64(model_name, seed=1)
    other.load_state_dict(model.state_dict())
    assert other.get_normalization()["energy_scale"] == 2.0
    other.set_normalization({"8": -1.0})
    assert other.get_normalization()["energy_shift_per_species"][8] == -1.0
    with pytest.raises(ValueError, match="not in the model species"):
        model.set_normalization({7: 1.0})


@pytest.mark.skipif(not vesin_available(), reason="vesin-torch not installed")
def test_vesin_backend_matches_torch(model_name):
    m_torch = f64(model_name)
    m_vesin = f64(model_name, neighbor_backend="vesin")
    m_vesin.load_state_dict(m_torch.state_dict())
    batch = [water_box(), ethanol()]
    a, b = m_torch(batch_of(batch)), m_vesin(batch_of(batch))
    torch.testing.assert_close(a["energy"], b["energy"])
    torch.testing.assert_close(a["forces"], b["forces"])
    torch.jit.script(m_vesin)
