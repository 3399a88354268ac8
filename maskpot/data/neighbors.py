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


def _batch_perpendicular_widths(cell: Tensor) -> Tensor:
    """:func:`perpendicular_widths` of every cell of a batch [G, 3, 3] -> [G, 3] (Å)."""
    a, b, c = cell[:, 0], cell[:, 1], cell[:, 2]
    bc, ca, ab = torch.linalg.cross(b, c), torch.linalg.cross(c, a), torch.linalg.cross(a, b)
    volume = torch.abs((a * bc).sum(dim=1))
    areas = torch.stack([torch.linalg.norm(bc, dim=1), torch.linalg.norm(ca, dim=1), torch.linalg.norm(ab, dim=1)], dim=1)
    return volume.unsqueeze(1) / areas


def _rows_times(rows: Tensor, matrices: Tensor, frame: Tensor) -> Tensor:
    """``rows[k] @ matrices[frame[k]]`` for [K, 3] rows and [G, 3, 3] matrices: one matmul
    when the batch has one frame, else a broadcast product (faster than a bmm of 3x3s)."""
    if matrices.shape[0] == 1:
        return rows @ matrices[0]
    return (rows.unsqueeze(2) * matrices[frame]).sum(dim=1)


def _check_frames(cell: Tensor, pbc: Tensor, cutoff: float) -> Tuple[Tensor, Tensor]:
    """(periodic [G] bool, perpendicular widths [G, 3], 1 for open frames). Refuses mixed
    periodicity and, for periodic frames, a degenerate cell or a cutoff over half the shortest
    width — with the messages of the per-frame checks, naming the first offending frame."""
    periodic = pbc.all(dim=1)
    if bool((pbc.any(dim=1) & ~periodic).any()):
        mixed = (pbc.any(dim=1) & ~periodic).nonzero()
        flags: List[bool] = pbc[int(mixed[0, 0])].tolist()
        _is_periodic(flags)  # raises with the frame's flags
    safe_cell = torch.where(periodic.view(-1, 1, 1), cell, torch.eye(3, dtype=cell.dtype, device=cell.device))
    widths = _batch_perpendicular_widths(safe_cell)
    shortest = widths.min(dim=1).values
    bad = periodic & ((~(shortest > 0.0)) | (cutoff > 0.5 * shortest + 1e-9))
    if bool(bad.any()):
        _check_cutoff(cell[int(bad.nonzero()[0, 0])], cutoff)  # raises with the frame's numbers
    return periodic, widths


def neighbor_list(
    positions: Tensor, cell: Tensor, pbc: Tensor, batch: Tensor, cutoff: float
) -> Tuple[Tensor, Tensor]:
    """Neighbour pairs within ``cutoff`` (Å) for a batch of frames, all frames in one pass.

    Args:
        positions: [N, 3] Å; atoms of one frame must be contiguous (as ``collate`` makes them).
        cell: [G, 3, 3] lattice vectors as rows, Å (ignored for open frames).
        pbc: [G, 3] bool; each frame all-periodic or all-open.
        batch: [N] frame index of each atom.
        cutoff: Å.

    Returns:
        edge_index [2, E] (int64, global atom indices; row 0 centre i, row 1 neighbour j) and
        shifts [E, 3] integer lattice offsets (positions' dtype): r_ij = r_j - r_i + shifts @ cell.

    Every frame gets its own grid of bins (side >= cutoff) and its own range of bin ids, so one
    sort, one bincount and one candidate enumeration serve the whole batch; the edges come out
    in the order of their centre atom, frame by frame.
    """
    pos = positions.detach()
    cel = cell.detach()
    device, dtype = pos.device, pos.dtype
    n = pos.shape[0]
    n_graphs = cel.shape[0]
    if n == 0:
        return torch.zeros((2, 0), dtype=torch.long, device=device), torch.zeros((0, 3), dtype=dtype, device=device)
    periodic, widths = _check_frames(cel, pbc, cutoff)
    atom_periodic = periodic[batch]

    # Periodic frames: fractional coordinates, wrapped into the cell; bins along the cell vectors.
    eye = torch.eye(3, dtype=dtype, device=device)
    safe_cell = torch.where(periodic.view(-1, 1, 1), cel, eye)
    frac = _rows_times(pos, torch.linalg.inv(safe_cell), batch)
    image = torch.where(atom_periodic.unsqueeze(1), torch.floor(frac), torch.zeros_like(frac))
    frac_wrapped = frac - image
    bins_periodic = torch.clamp(torch.floor(widths / cutoff), min=1.0)
    # Open frames: a Cartesian bounding box per frame.
    index3 = batch.unsqueeze(1).expand(n, 3)
    big = torch.full((n_graphs, 3), float("inf"), dtype=dtype, device=device)
    lower = big.scatter_reduce(0, index3, pos, reduce="amin", include_self=True)
    lower = torch.where(torch.isfinite(lower), lower, torch.zeros_like(lower))
    scaled = (pos - lower[batch]) / cutoff
    top = torch.zeros((n_graphs, 3), dtype=dtype, device=device).scatter_reduce(0, index3, scaled, reduce="amax",
                                                                                 include_self=True)
    bins_open = torch.floor(top) + 1.0
    n_bins = torch.where(periodic.unsqueeze(1), bins_periodic, bins_open).long()  # [G, 3]

    atom_bins = n_bins[batch]  # [N, 3]
    bin_coord = torch.where(atom_periodic.unsqueeze(1), torch.floor(frac_wrapped * atom_bins.to(dtype)),
                            torch.floor(scaled)).long()
    bin_coord = torch.minimum(torch.clamp(bin_coord, min=0), atom_bins - 1)
    pos_wrapped = pos - _rows_times(image, cel, batch)

    # Bin ids: frame g owns ids [offset_g, offset_g + nx * ny * nz).
    strides = torch.stack([n_bins[:, 1] * n_bins[:, 2], n_bins[:, 2], torch.ones_like(n_bins[:, 0])], dim=1)
    per_frame = n_bins.prod(dim=1)
    offset = torch.cumsum(per_frame, dim=0) - per_frame
    atom_strides = strides[batch]
    bin_id = offset[batch] + (bin_coord * atom_strides).sum(dim=1)
    order = torch.argsort(bin_id, stable=True)
    counts = torch.bincount(bin_id, minlength=int(per_frame.sum()))
    starts = torch.cumsum(counts, dim=0) - counts
    max_count = int(counts.max())

    # Neighbouring bins of every atom: [n, 27, 3] raw bin coordinates, wrapped (periodic) or
    # dropped when outside the box (open).
    offsets = _offsets(device)
    raw = bin_coord.unsqueeze(1) + offsets.unsqueeze(0)
    nb = atom_bins.unsqueeze(1)
    all_periodic, all_open = bool(periodic.all()), not bool(periodic.any())
    if all_open:  # the common batches get one branch each, mixed ones both
        bin_shift = torch.zeros_like(raw)
    else:
        bin_shift = torch.div(raw, nb, rounding_mode="floor")  # image crossed, per direction
        if not all_periodic:
            bin_shift = torch.where(atom_periodic.view(-1, 1, 1), bin_shift, torch.zeros_like(raw))
    if all_periodic:
        nb_coord = raw - bin_shift * nb
        valid_bin = torch.ones(raw.shape[:2], dtype=torch.bool, device=device)
    else:
        inside = ((raw >= 0) & (raw < nb)).all(dim=2)
        nb_coord = torch.minimum(torch.clamp(raw, min=0), nb - 1)
        valid_bin = inside
        if not all_open:
            wrap = atom_periodic.view(-1, 1, 1)
            nb_coord = torch.where(wrap, raw - bin_shift * nb, nb_coord)
            valid_bin = atom_periodic.unsqueeze(1) | inside
    # (elementwise products: a sum over a last dim of 3 is a slow reduction on CPU)
    nb_id = (offset[batch].unsqueeze(1) + nb_coord[:, :, 0] * atom_strides[:, :1]
             + nb_coord[:, :, 1] * atom_strides[:, 1:2] + nb_coord[:, :, 2])  # [n, 27]

    # Candidate slots inside each neighbouring bin, [n * 27, max_count]; one nonzero() picks
    # the occupied ones, and only those are gathered (boolean masks on big tensors are slow).
    slot = torch.arange(max_count, device=device)
    nb_count = torch.where(valid_bin, counts[nb_id], torch.zeros_like(nb_id)).reshape(-1)
    occupied = (slot.unsqueeze(0) < nb_count.unsqueeze(1)).reshape(-1).nonzero().squeeze(1)
    pair_bin = torch.div(occupied, max_count, rounding_mode="floor")  # index into n * 27
    # index_select: the hot gathers (over every candidate pair) are faster than indexing
    first = torch.index_select(starts[nb_id].reshape(-1), 0, pair_bin)
    j_idx = torch.index_select(order, 0, first + (occupied - pair_bin * max_count))
    i_idx = torch.div(pair_bin, 27, rounding_mode="floor")
    shift_int = bin_shift.reshape(-1, 3).to(dtype)
    # Cartesian shift of every (atom, neighbouring bin): bin_shift is in {-1, 0, 1}^3, so it is
    # looked up in a per-frame table of the 27 lattice vectors S @ cell ([G * 27, 3] Å).
    table = torch.matmul(offsets.to(dtype).unsqueeze(0), cel).reshape(-1, 3)
    code = 9 * bin_shift[:, :, 0] + 3 * bin_shift[:, :, 1] + bin_shift[:, :, 2] + (13 + 27 * batch).unsqueeze(1)
    shift_vec = torch.index_select(table, 0, code.reshape(-1))  # [n * 27, 3] Å
    vec = (torch.index_select(pos_wrapped, 0, j_idx) - torch.index_select(pos_wrapped, 0, i_idx)
           + torch.index_select(shift_vec, 0, pair_bin))
    dist2 = (vec * vec).sum(dim=1)
    # Offset 13 is (0, 0, 0): the atom's own bin and image, where i == j is the atom itself.
    self_pair = (i_idx == j_idx) & (pair_bin - i_idx * 27 == 13)
    keep = ((dist2 < cutoff * cutoff) & (~self_pair)).nonzero().squeeze(1)
    i_idx, j_idx, pair_bin = i_idx[keep], j_idx[keep], pair_bin[keep]
    # Offsets relative to the positions as given (undo the wrapping).
    shifts = shift_int[pair_bin] - image[j_idx] + image[i_idx]
    return torch.stack([i_idx, j_idx]), shifts


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
