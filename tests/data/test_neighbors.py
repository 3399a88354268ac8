"""Neighbour list against ase.neighborlist: periodic (orthorhombic and triclinic), open,
atoms on the box faces, molecules split across the boundary, batches, gradients, TorchScript."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.neighborlist import neighbor_list as ase_neighbor_list

from maskpot.data.neighbors import (
    NeighborList,
    edge_vectors,
    make_neighbor_list,
    neighbor_list,
    perpendicular_widths,
    vesin_available,
)


def _reference(positions, cell, pbc, cutoff):
    atoms = Atoms(numbers=np.ones(len(positions)), positions=positions, cell=cell, pbc=pbc)
    i, j, shifts = ase_neighbor_list("ijS", atoms, cutoff)
    return set(zip(i.tolist(), j.tolist(), map(tuple, shifts.tolist())))


def _ours(positions, cell, pbc, cutoff, module=None):
    pos = torch.tensor(positions, dtype=torch.float64)
    cel = torch.tensor(np.asarray(cell, dtype=float)).reshape(1, 3, 3)
    flags = torch.tensor([pbc] * 3).reshape(1, 3)
    batch = torch.zeros(len(positions), dtype=torch.long)
    if module is None:
        edge_index, shifts = neighbor_list(pos, cel, flags, batch, cutoff)
    else:
        edge_index, _, shifts = module(pos, cel, flags, batch)
    return set(zip(edge_index[0].tolist(), edge_index[1].tolist(), map(tuple, shifts.round().long().tolist())))


def _triclinic(lengths, tilt=True):
    cell = np.diag(lengths).astype(float)
    if tilt:
        cell[1, 0], cell[2, 0], cell[2, 1] = 1.7, -1.3, 0.9
    return cell


def _water_box(n_side=3, spacing=3.1, seed=0):
    """Water molecules on a grid with random orientations; box of side n_side*spacing Å."""
    rng = np.random.default_rng(seed)
    positions = []
    for idx in np.ndindex(n_side, n_side, n_side):
        o = (np.array(idx) + 0.5) * spacing
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        h1 = o + q @ np.array([0.757, 0.586, 0.0])
        h2 = o + q @ np.array([-0.757, 0.586, 0.0])
        positions += [o, h1, h2]
    return np.array(positions), np.eye(3) * n_side * spacing


@pytest.mark.parametrize("tilt", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_periodic_random_matches_ase(tilt, seed):
    rng = np.random.default_rng(seed)
    cell = _triclinic(rng.uniform(7.5, 11.0, 3), tilt)
    positions = rng.uniform(-6, 18, size=(150, 3))  # many atoms outside the cell
    assert _ours(positions, cell, True, 3.4) == _reference(positions, cell, True, 3.4)


@pytest.mark.parametrize("seed", range(3))
def test_open_boundaries_match_ase(seed):
    rng = np.random.default_rng(seed)
    positions = rng.normal(scale=4.0, size=(80, 3))
    assert _ours(positions, np.zeros((3, 3)), False, 3.0) == _reference(positions, np.zeros((3, 3)), False, 3.0)


def test_atoms_exactly_on_box_faces():
    L = 9.0
    grid = np.array(list(np.ndindex(4, 4, 4)), dtype=float) * (L / 3.0)  # includes 0 and L exactly
    cell = np.eye(3) * L
    assert _ours(grid, cell, True, 3.2) == _reference(grid, cell, True, 3.2)


def test_molecules_split_across_boundary():
    positions, cell = _water_box()
    shifted = positions + np.array([4.0, -2.5, 1.2])  # whole molecules straddle the faces
    wrapped = shifted - np.floor(shifted @ np.linalg.inv(cell)) @ cell
    ref = _reference(shifted, cell, True, 3.5)
    assert _ours(shifted, cell, True, 3.5) == ref
    # wrapped and unwrapped positions give the same edge vectors (shifts differ, vectors don't)
    for pos in (shifted, wrapped):
        p = torch.tensor(pos)
        c = torch.tensor(cell).unsqueeze(0)
        b = torch.zeros(len(pos), dtype=torch.long)
        e, s = neighbor_list(p, c, torch.ones(1, 3, dtype=torch.bool), b, 3.5)
        vec = edge_vectors(p, c, b, e, s)
        key = {(int(i), int(j), round(float(v.norm()), 8)) for i, j, v in zip(e[0], e[1], vec)}
        if pos is shifted:
            first = key
    assert key == first


def test_batch_of_mixed_frames_equals_single_frames():
    rng = np.random.default_rng(5)
    water, wcell = _water_box(seed=1)
    mol = rng.normal(scale=2.0, size=(12, 3))
    pos = torch.tensor(np.concatenate([mol, water, mol + 1.0]))
    cell = torch.tensor(np.stack([np.zeros((3, 3)), wcell, np.zeros((3, 3))]))
    pbc = torch.tensor([[False] * 3, [True] * 3, [False] * 3])
    batch = torch.tensor([0] * 12 + [1] * len(water) + [2] * 12)
    e, s = neighbor_list(pos, cell, pbc, batch, 3.0)
    assert torch.equal(batch[e[0]], batch[e[1]])  # no edge between frames
    got = set(zip(e[0].tolist(), e[1].tolist(), map(tuple, s.long().tolist())))
    off = 12
    expected = _reference(mol, np.zeros((3, 3)), False, 3.0)
    expected |= {(i + off, j + off, S) for i, j, S in _reference(water, wcell, True, 3.0)}
    off2 = 12 + len(water)
    expected |= {(i + off2, j + off2, S) for i, j, S in _reference(mol + 1.0, np.zeros((3, 3)), False, 3.0)}
    assert got == expected


def test_one_pass_batch_of_different_cells_equals_ase():
    """Periodic frames of other cells (triclinic, one bin per direction, unwrapped atoms), an
    open molecule and a lone atom in one batch: each frame's pairs are ase's."""
    rng = np.random.default_rng(11)
    big = _triclinic([11.0, 10.0, 9.5])
    small = _triclinic([6.4, 6.6, 7.0], tilt=False)  # 1-2 bins per direction at 3.1 Å
    frames = [
        (rng.uniform(-3, 14, size=(40, 3)), big, True),  # unwrapped: images up to +-1 cell
        (rng.uniform(0, 6.4, size=(25, 3)), small, True),
        (rng.normal(scale=1.5, size=(9, 3)), np.zeros((3, 3)), False),
        (np.zeros((1, 3)), np.zeros((3, 3)), False),
    ]
    pos = torch.tensor(np.concatenate([f[0] for f in frames]))
    cell = torch.tensor(np.stack([f[1] for f in frames]))
    pbc = torch.tensor([[f[2]] * 3 for f in frames])
    batch = torch.cat([torch.full((len(f[0]),), g, dtype=torch.long) for g, f in enumerate(frames)])
    e, s = neighbor_list(pos, cell, pbc, batch, 3.1)
    got = set(zip(e[0].tolist(), e[1].tolist(), map(tuple, s.round().long().tolist())))
    expected, off = set(), 0
    for p_, c_, periodic in frames:
        expected |= {(i + off, j + off, S) for i, j, S in _reference(p_, c_, periodic, 3.1)}
        off += len(p_)
    assert got == expected and len(got) == e.shape[1]  # no duplicates
    assert torch.all(e[0][1:] >= e[0][:-1])  # ordered by centre atom
    # a bad cell in a later frame is named by its numbers, as for a single frame
    cell[1] = torch.eye(3, dtype=cell.dtype) * 5.0
    with pytest.raises(ValueError, match="half the shortest perpendicular"):
        neighbor_list(pos, cell, pbc, batch, 3.1)


def test_edge_vectors_differentiable_wrt_positions_and_cell():
    positions, cell = _water_box(n_side=3)
    pos = torch.tensor(positions, requires_grad=True)
    cel = torch.tensor(cell).unsqueeze(0).requires_grad_(True)
    b = torch.zeros(len(positions), dtype=torch.long)
    e, vec, _ = NeighborList(3.5)(pos, cel, torch.ones(1, 3, dtype=torch.bool), b)
    energy = (vec.norm(dim=1) ** 2).sum()
    gpos, gcell = torch.autograd.grad(energy, [pos, cel])
    assert torch.isfinite(gpos).all() and gpos.abs().sum() > 0
    assert gcell.abs().sum() > 0  # stress path through the cell exists
    # translation invariance of a pair energy: total gradient sums to zero
    assert torch.allclose(gpos.sum(0), torch.zeros(3, dtype=torch.float64), atol=1e-9)


def test_cutoff_larger_than_half_box_is_refused():
    positions, cell = _water_box(n_side=2)  # 6.2 Å box
    with pytest.raises(ValueError, match="half the shortest perpendicular"):
        _ours(positions, cell, True, 3.5)


def test_mixed_periodicity_is_refused():
    pos = torch.zeros(2, 3, dtype=torch.float64)
    pos[1, 0] = 1.0
    with pytest.raises(ValueError, match="mixed periodicity"):
        neighbor_list(pos, torch.eye(3).double().unsqueeze(0) * 10, torch.tensor([[True, True, False]]),
                      torch.zeros(2, dtype=torch.long), 3.0)


def test_perpendicular_widths_of_triclinic_cell():
    cell = _triclinic([8.0, 9.0, 10.0])
    volume = abs(np.linalg.det(cell))
    expected = [volume / np.linalg.norm(np.cross(cell[1], cell[2])),
                volume / np.linalg.norm(np.cross(cell[2], cell[0])),
                volume / np.linalg.norm(np.cross(cell[0], cell[1]))]
    assert np.allclose(perpendicular_widths(torch.tensor(cell)).numpy(), expected)


def test_torchscript_equals_eager():
    positions, cell = _water_box()
    scripted = torch.jit.script(NeighborList(3.5))
    assert _ours(positions, cell, True, 3.5, module=scripted) == _ours(positions, cell, True, 3.5)


@pytest.mark.skipif(not vesin_available(), reason="vesin-torch not installed")
@pytest.mark.parametrize("tilt", [False, True])
def test_vesin_fast_path_equals_reference(tilt):
    rng = np.random.default_rng(11)
    cell = _triclinic(rng.uniform(8.0, 11.0, 3), tilt)
    positions = rng.uniform(-3, 14, size=(200, 3))
    fast = torch.jit.script(make_neighbor_list(3.5, "vesin"))
    assert _ours(positions, cell, True, 3.5, module=fast) == _ours(positions, cell, True, 3.5)
    mol = rng.normal(scale=3.0, size=(40, 3))
    assert _ours(mol, np.zeros((3, 3)), False, 3.5, module=fast) == _ours(mol, np.zeros((3, 3)), False, 3.5)


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown neighbour list backend"):
        make_neighbor_list(3.0, "magic")
