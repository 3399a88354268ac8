"""TorchScript-compatible neighbour list (O(N) cell list) for periodic and open systems.

Conventions (used by every model):

* ``edge_index[0] = i`` is the centre (receiving) atom, ``edge_index[1] = j`` the neighbour.
  The list is *full*: both (i, j) and (j, i) appear.
* ``shifts`` holds integer lattice offsets ``S`` (stored in the positions' float dtype) such that
  the edge vector is ``r_ij = r_j - r_i + S @ cell``. Offsets are relative to the positions as
  given (wrapped or not), so ``edge_vectors`` stays differentiable w.r.t. positions *and* cell:
  forces and stress come from autograd through it.
* Periodic systems must be periodic in all three directions, with the cutoff at most half of
  the shortest perpendicular width of the cell (then each pair has at most one image inside the
  cutoff, and the minimum-image convention holds); otherwise a ``ValueError`` says so.

The search itself runs without gradients (indices are piecewise constant in the positions).
Atoms are binned into cells of side >= cutoff in fractional coordinates (periodic) or in a
Cartesian bounding box (open), and each atom is compared only with the atoms of its 27
neighbouring bins: cost O(N) in time and memory, no Python loop over atoms or edges.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor


def perpendicular_widths(cell: Tensor) -> Tensor:
    """Distances between opposite faces of the cell (Å), shape [3]: V / |a_j x a_k|."""
    a, b, c = cell[0], cell[1], cell[2]
    volume = torch.abs(torch.dot(a, torch.linalg.cross(b, c)))
    areas = torch.stack(
        [
            torch.linalg.norm(torch.linalg.cross(b, c)),
            torch.linalg.norm(torch.linalg.cross(c, a)),
            torch.linalg.norm(torch.linalg.cross(a, b)),
        ]
    )
    return volume / areas


def _offsets(device: torch.device) -> Tensor:
    """The 27 integer offsets {-1, 0, 1}^3, shape [27, 3]."""
    r = torch.arange(-1, 2, device=device)
    return torch.stack(torch.meshgrid(r, r, r, indexing="ij"), dim=-1).reshape(27, 3)


def _is_periodic(flags: List[bool]) -> bool:
    """All-periodic -> True, all-open -> False; mixed periodicity is refused."""
    periodic = flags[0] and flags[1] and flags[2]
    if not periodic and (flags[0] or flags[1] or flags[2]):
        raise ValueError("neighbour list: mixed periodicity (pbc={}) is not supported".format(flags))
    return periodic


def _check_cutoff(cell: Tensor, cutoff: float) -> Tensor:
    """Perpendicular widths of a periodic cell; refuses cutoff > half the shortest one."""
    widths = perpendicular_widths(cell)
    min_width = float(widths.min())
    if min_width <= 0.0:
        raise ValueError("neighbour list: degenerate periodic cell (zero volume)")
    if cutoff > 0.5 * min_width + 1e-9:
        raise ValueError(
            "neighbour list: cutoff {:.4f} A is larger than half the shortest perpendicular "
            "cell width ({:.4f} A); use a larger box or a smaller cutoff".format(cutoff, 0.5 * min_width)
        )
    return widths


def _frames(cell: Tensor, pbc: Tensor, batch: Tensor) -> List[Tuple[int, int, int, bool]]:
    """(frame, first atom, atom count, periodic) of every frame; a frame's atoms are contiguous."""
    n_graphs = cell.shape[0]
    counts: List[int] = torch.bincount(batch, minlength=n_graphs).tolist()
    pbc_list: List[List[bool]] = pbc.tolist()
    out: List[Tuple[int, int, int, bool]] = []
    start = 0
    for g in range(n_graphs):
        out.append((g, start, counts[g], _is_periodic(pbc_list[g])))
        start += counts[g]
    return out


def _single_graph(positions: Tensor, cell: Tensor, periodic: bool, cutoff: float) -> Tuple[Tensor, Tensor]:
    """Neighbour search for one frame. Returns (edge_index [2, E] local, shifts [E, 3] float)."""
    n = positions.shape[0]
    device = positions.device
    dtype = positions.dtype
    if n == 0:
        return torch.zeros((2, 0), dtype=torch.long, device=device), torch.zeros((0, 3), dtype=dtype, device=device)

    if periodic:
        widths = _check_cutoff(cell, cutoff)
        frac = positions @ torch.linalg.inv(cell)
        image = torch.floor(frac)  # which periodic image each atom sits in
        frac_wrapped = frac - image
        n_bins = torch.clamp(torch.floor(widths / cutoff), min=1.0).long()
        bin_coord = torch.floor(frac_wrapped * n_bins.to(dtype)).long()
        pos_wrapped = positions - image @ cell
    else:
        lower = positions.min(dim=0).values
        scaled = (positions - lower) / cutoff
        n_bins = torch.floor(scaled.max(dim=0).values).long() + 1
        bin_coord = torch.floor(scaled).long()
        image = torch.zeros_like(positions)
        pos_wrapped = positions
    bin_coord = torch.minimum(torch.clamp(bin_coord, min=0), n_bins - 1)

    nb_list: List[int] = n_bins.tolist()
    nx, ny, nz = nb_list[0], nb_list[1], nb_list[2]
    strides = torch.tensor([ny * nz, nz, 1], device=device)
    bin_id = (bin_coord * strides).sum(dim=1)
    order = torch.argsort(bin_id)
    counts = torch.bincount(bin_id, minlength=nx * ny * nz)
    starts = torch.cumsum(counts, dim=0) - counts
    max_count = int(counts.max())

    # Neighbouring bins of every atom: [n, 27, 3] raw bin coordinates.
    raw = bin_coord.unsqueeze(1) + _offsets(device).unsqueeze(0)
    if periodic:
        bin_shift = torch.div(raw, n_bins, rounding_mode="floor")  # image crossed, per direction
        nb_coord = raw - bin_shift * n_bins
        valid_bin = torch.ones(raw.shape[:2], dtype=torch.bool, device=device)
    else:
        bin_shift = torch.zeros_like(raw)
        valid_bin = ((raw >= 0) & (raw < n_bins)).all(dim=2)
        nb_coord = torch.minimum(torch.clamp(raw, min=0), n_bins - 1)
    nb_id = (nb_coord * strides).sum(dim=2)  # [n, 27]

    # Candidate slots inside each neighbouring bin, [n * 27, max_count]; one nonzero() picks
    # the occupied ones, and only those are gathered (boolean masks on big tensors are slow).
    slot = torch.arange(max_count, device=device)
    nb_count = torch.where(valid_bin, counts[nb_id], torch.zeros_like(nb_id)).reshape(-1)
    occupied = (slot.unsqueeze(0) < nb_count.unsqueeze(1)).reshape(-1).nonzero().squeeze(1)
    pair_bin = torch.div(occupied, max_count, rounding_mode="floor")  # index into n * 27
    j_idx = order[starts[nb_id].reshape(-1)[pair_bin] + (occupied - pair_bin * max_count)]
    i_idx = torch.div(pair_bin, 27, rounding_mode="floor")
    shift_int = bin_shift.reshape(-1, 3).to(dtype)
    vec = pos_wrapped[j_idx] - pos_wrapped[i_idx] + (shift_int @ cell)[pair_bin]
    dist2 = (vec * vec).sum(dim=1)
    # Offset 13 is (0, 0, 0): the atom's own bin and image, where i == j is the atom itself.
    self_pair = (i_idx == j_idx) & (pair_bin - i_idx * 27 == 13)
    keep = ((dist2 < cutoff * cutoff) & (~self_pair)).nonzero().squeeze(1)
    i_idx, j_idx, pair_bin = i_idx[keep], j_idx[keep], pair_bin[keep]
    # Offsets relative to the positions as given (undo the wrapping).
    shifts = shift_int[pair_bin] - image[j_idx] + image[i_idx]
    return torch.stack([i_idx, j_idx]), shifts


def neighbor_list(
    positions: Tensor, cell: Tensor, pbc: Tensor, batch: Tensor, cutoff: float
) -> Tuple[Tensor, Tensor]:
    """Neighbour pairs within ``cutoff`` (Å) for a batch of frames.

    Args:
        positions: [N, 3] Å; atoms of one frame must be contiguous (as ``collate`` makes them).
        cell: [G, 3, 3] lattice vectors as rows, Å (ignored for open frames).
        pbc: [G, 3] bool; each frame all-periodic or all-open.
        batch: [N] frame index of each atom.
        cutoff: Å.

    Returns:
        edge_index [2, E] (int64, global atom indices; row 0 centre i, row 1 neighbour j) and
        shifts [E, 3] integer lattice offsets (positions' dtype): r_ij = r_j - r_i + shifts @ cell.
    """
    pos = positions.detach()
    cel = cell.detach()
    edges: List[Tensor] = []
    shifts: List[Tensor] = []
    for g, start, n_g, periodic in _frames(cell, pbc, batch):
        e, s = _single_graph(pos[start : start + n_g], cel[g], periodic, cutoff)
        edges.append(e + start)
        shifts.append(s)
    return torch.cat(edges, dim=1), torch.cat(shifts, dim=0)


def edge_vectors(positions: Tensor, cell: Tensor, batch: Tensor, edge_index: Tensor, shifts: Tensor) -> Tensor:
    """Differentiable edge vectors r_ij = r_j - r_i + S @ cell (Å), shape [E, 3]."""
    i, j = edge_index[0], edge_index[1]
    vec = positions[j] - positions[i]
    if shifts.shape[0] > 0:
        vec = vec + torch.bmm(shifts.unsqueeze(1), cell[batch[i]]).squeeze(1)
    return vec


class NeighborList(torch.nn.Module):
    """Module wrapper so the neighbour list travels inside models (trains, scripts, deploys)."""

    def __init__(self, cutoff: float) -> None:
        super().__init__()
        self.cutoff = float(cutoff)

    def forward(self, positions: Tensor, cell: Tensor, pbc: Tensor, batch: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Returns (edge_index [2, E], edge_vec [E, 3] Å differentiable, shifts [E, 3])."""
        edge_index, shifts = neighbor_list(positions, cell, pbc, batch, self.cutoff)
        return edge_index, edge_vectors(positions, cell, batch, edge_index, shifts), shifts


class VesinNeighborList(torch.nn.Module):
    """Fast path through ``vesin-torch`` (C++ cell list, TorchScript-compatible custom class).

    Same inputs, outputs and conventions as :class:`NeighborList` (tested equal to it). A model
    exported with this backend needs ``import vesin_torch`` in the process that loads it.
    """

    def __init__(self, cutoff: float) -> None:
        super().__init__()
        from vesin_torch import NeighborList as _VesinNL  # optional dependency: maskpot[vesin]

        self.cutoff = float(cutoff)
        self.calculator = _VesinNL(cutoff=self.cutoff, full_list=True)

    def forward(self, positions: Tensor, cell: Tensor, pbc: Tensor, batch: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        pos = positions.detach()
        cel = cell.detach()
        edges: List[Tensor] = []
        shifts: List[Tensor] = []
        for g, start, n_g, periodic in _frames(cell, pbc, batch):
            if periodic:
                _check_cutoff(cel[g], self.cutoff)
            box = cel[g] if periodic else torch.zeros_like(cel[g])
            out = self.calculator.compute(points=pos[start : start + n_g], box=box, periodic=periodic, quantities="ijS")
            edges.append(torch.stack([out[0].long(), out[1].long()]) + start)
            shifts.append(out[2].to(positions.dtype))
        edge_index = torch.cat(edges, dim=1)
        shift = torch.cat(shifts, dim=0)
        return edge_index, edge_vectors(positions, cell, batch, edge_index, shift), shift


def vesin_available() -> bool:
    """True when the optional ``vesin-torch`` fast path can be used."""
    try:
        import vesin_torch  # noqa: F401
    except Exception:
        return False
    return True


def make_neighbor_list(cutoff: float, backend: str = "torch") -> torch.nn.Module:
    """Neighbour-list module by backend name: ``"torch"`` (pure torch, portable, default),
    ``"vesin"`` (fast C++ path, needs vesin-torch) or ``"auto"`` (vesin when installed)."""
    if backend == "auto":
        backend = "vesin" if vesin_available() else "torch"
    if backend == "torch":
        return NeighborList(cutoff)
    if backend == "vesin":
        if not vesin_available():
            raise ImportError("neighbour list backend 'vesin' needs vesin-torch: pip install 'maskpot[vesin]'")
        return VesinNeighborList(cutoff)
    raise ValueError(f"unknown neighbour list backend {backend!r}; expected 'torch', 'vesin' or 'auto'")
