"""torch.export + AOTInductor export (``maskpot-export --format pt2``): the format after TorchScript.

A ``.pt2`` file is a PT2 archive (``torch.export.pt2_archive``) holding the AOTInductor-compiled
model and the same ``metadata.json`` as a TorchScript export (key ``file_format: "pt2"``).
:class:`Pt2Potential` loads it from the file alone and has the TorchScript export's signature::

    module = Pt2Potential("model.pt2")
    energy, forces = module(positions, atomic_numbers, cell, pbc)   # Å, -, Å, bool -> eV, eV/Å

What is compiled: the model from (positions [N, 3], numbers [N], cell [3, 3], edge_index [2, E],
shifts [E, 3]) to (energy, forces), forces by autograd traced into the graph (``make_fx`` first,
as ``torch.export`` cannot trace ``autograd.grad`` itself), with dynamic atom and edge counts
(``torch.export.Dim``). What is not: the neighbour search. Its output size depends on the data,
which AOTInductor graphs cannot branch on, so :class:`Pt2Potential` runs maskpot's cell list
(or vesin, as the metadata says) eagerly in front of the compiled graph — as nequip's AOTI
models take their neighbour list from the caller. Inputs are validated there too (shapes,
species, cutoff vs box), with the TorchScript export's ``ValueError`` messages.

Compiling takes ~1 min on CPU and needs a C++ compiler (AOTInductor); a file compiled on CPU
runs on CPU (compile on the GPU machine for CUDA).
"""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple, Union

import torch
from torch import Tensor

from maskpot.data.neighbors import make_neighbor_list, neighbor_list
from maskpot.deploy.export import DTYPES, MAX_Z, METADATA_FILE, check_inputs
from maskpot.models.common import species_checks_disabled
from maskpot.utils import PathLike, atomic_path

MAX_ATOMS = 10_000_000
MAX_EDGES = 2_000_000_000


class _CompiledCore(torch.nn.Module):
    """The graph AOTInductor compiles: one frame with its neighbour list given."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, positions: Tensor, numbers: Tensor, cell: Tensor, edge_index: Tensor, shifts: Tensor) -> Tuple[Tensor, Tensor]:
        n = positions.shape[0]
        data = {
            "positions": positions.detach().requires_grad_(True),
            "numbers": numbers,
            "cell": cell.unsqueeze(0),
            "pbc": torch.zeros((1, 3), dtype=torch.bool, device=positions.device),
            "batch": torch.zeros(n, dtype=torch.long, device=positions.device),
            "edge_index": edge_index,
            "shifts": shifts,
        }
        out = self.model(data)
        return out["energy"][0].detach(), out["forces"].detach()


def _example_inputs(model: torch.nn.Module, dtype: torch.dtype) -> Tuple[Tensor, ...]:
    """A small open cluster of the model's species, every pair inside the cutoff (sizes > 1,
    so that torch.export keeps the atom and edge counts symbolic)."""
    gen = torch.Generator().manual_seed(0)
    species = [int(z) for z in model.species]
    n = max(6, len(species))
    numbers = torch.tensor([species[k % len(species)] for k in range(n)], dtype=torch.long)
    spread = 0.25 * float(model.cutoff)
    positions = (torch.rand((n, 3), generator=gen, dtype=torch.float64) * spread + 0.9 * torch.arange(n).unsqueeze(1) * spread / n).to(dtype)
    cell = torch.zeros((3, 3), dtype=dtype)
    edge_index, shifts = neighbor_list(positions, cell.unsqueeze(0), torch.zeros((1, 3), dtype=torch.bool),
                                       torch.zeros(n, dtype=torch.long), float(model.cutoff))
    return positions, numbers, cell, edge_index, shifts


def compile_pt2(model: torch.nn.Module, path: PathLike, metadata: Mapping[str, Any]) -> None:
    """Export ``model`` (eval mode, final dtype, frozen weights) with AOTInductor to ``path``
    (written atomically) with ``metadata`` as ``metadata.json``. Raises RuntimeError naming the
    stage that failed."""
    from torch.fx.experimental.proxy_tensor import make_fx

    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    core = _CompiledCore(model).eval()
    example = _example_inputs(model, dtype)
    try:
        with species_checks_disabled(model):  # Pt2Potential validates the species before every call
            traced = make_fx(core, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*example)
        n_atoms = torch.export.Dim("n_atoms", min=2, max=MAX_ATOMS)
        n_edges = torch.export.Dim("n_edges", min=2, max=MAX_EDGES)
        program = torch.export.export(
            traced, example, strict=False,
            dynamic_shapes=({0: n_atoms}, {0: n_atoms}, None, {1: n_edges}, {0: n_edges}),
        )
    except Exception as exc:
        raise RuntimeError(f"torch.export of {type(model).__name__} failed: {exc}") from exc
    with atomic_path(path) as out, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch._inductor.aoti_compile_and_package(program, package_path=str(out))
        except Exception:
            # inductor's vectorised C++ codegen asserts on some of these graphs (torch 2.13, seen
            # for every model in some processes); scalar kernels compile the same graph
            try:
                torch._inductor.aoti_compile_and_package(program, package_path=str(out),
                                                         inductor_configs={"cpp.simdlen": 1})
            except Exception as exc:
                raise RuntimeError(f"AOTInductor compilation of {type(model).__name__} failed: {exc}") from exc
        # the metadata where torch.export.pt2_archive keeps extra files (load_pt2(...).extra_files)
        with zipfile.ZipFile(out) as zf:
            root = zf.namelist()[0].split("/")[0]
        with zipfile.ZipFile(out, "a") as zf:
            zf.writestr(f"{root}/extra/{METADATA_FILE}", json.dumps(dict(metadata), indent=2, sort_keys=True))


class Pt2Potential(torch.nn.Module):
    """A ``.pt2`` export as a module with the TorchScript export's call:
    ``(positions [N, 3] Å, atomic_numbers [N], cell [3, 3] Å, pbc [3] bool) -> (energy [] eV,
    forces [N, 3] eV/Å)``. Attributes ``kind``, ``cutoff``, ``species``, ``metadata``.

    Outputs carry no autograd graph (``differentiable = False``: no stress by strain) and the
    dtype is the compiled one (``castable = False``).
    """

    differentiable = False
    castable = False

    def __init__(self, path: PathLike, metadata: Mapping[str, Any], device: Union[str, torch.device] = "cpu") -> None:
        super().__init__()
        self.path = Path(path)
        self.metadata: Dict[str, Any] = dict(metadata)
        self.kind = str(metadata["kind"])
        self.cutoff = float(metadata["cutoff"])
        self.species = [int(z) for z in metadata["species"]]
        known = torch.zeros(MAX_Z + 1, dtype=torch.bool)
        known[torch.tensor(self.species)] = True
        self.register_buffer("known_species", known)
        self.register_buffer("dtype_ref", torch.zeros(0, dtype=DTYPES[str(metadata["dtype"])]))
        self.neighbors = make_neighbor_list(self.cutoff, str(metadata.get("neighbor_backend", "torch")))
        device = torch.device(device)
        try:
            self.runner = torch._inductor.aoti_load_package(str(self.path), device_index=device.index if device.index is not None else -1)
        except Exception as exc:
            raise ValueError(f"{self.path}: cannot be loaded as an AOTInductor package ({exc})") from exc

    def forward(self, positions: Tensor, atomic_numbers: Tensor, cell: Tensor, pbc: Tensor) -> Tuple[Tensor, Tensor]:
        numbers = check_inputs(positions, atomic_numbers, cell, pbc, self.known_species, self.species)
        dtype = self.dtype_ref.dtype
        pos = positions.detach().to(dtype)
        cel = cell.detach().to(dtype)
        pbc_b = pbc.to(torch.bool)
        n = pos.shape[0]
        edge_index, _, shifts = self.neighbors(pos, cel.unsqueeze(0), pbc_b.unsqueeze(0),
                                               torch.zeros(n, dtype=torch.long, device=pos.device))
        if n < 2 or edge_index.shape[1] < 2:
            raise ValueError(
                f"{self.path.name}: a pt2 export needs at least 2 atoms and 2 neighbour pairs within "
                f"{self.cutoff} A (got {n} atoms, {edge_index.shape[1]} pairs); use the TorchScript export")
        energy, forces = self.runner(pos.contiguous(), numbers.contiguous(), cel.contiguous(),
                                     edge_index.contiguous(), shifts.contiguous())
        return energy, forces
