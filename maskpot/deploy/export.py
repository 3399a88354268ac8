"""Export a trained model to one self-describing file: TorchScript (``.pt``) or pt2 (``.pt2``).

TorchScript is the format openmm-torch's ``TorchForce`` loads and is described below. The pt2
format (torch.export + AOTInductor, :mod:`maskpot.deploy.pt2`; TorchScript is deprecated since
torch 2.11) carries the same metadata (``file_format: "pt2"``), loads through
:func:`load_exported` into a module with the same call, and serves the ASE calculator and the
OpenMM ``PythonForce``.

The file holds a scripted :class:`ExportedPotential` (the model with its neighbour list inside,
for one frame at a time) and a JSON metadata record stored as the TorchScript *extra file*
``metadata.json``. Any process with torch can use it::

    extra = {"metadata.json": ""}
    module = torch.jit.load("model.pt", _extra_files=extra)
    metadata = json.loads(extra["metadata.json"])
    energy, forces = module(positions, atomic_numbers, cell, pbc)

``forward(positions [N, 3] Å, atomic_numbers [N] int64, cell [3, 3] Å, pbc [3] bool)``
returns ``(energy [] eV, forces [N, 3] eV/Å)`` in the export dtype (inputs of any floating
dtype are cast to it). Open systems: ``cell`` all zeros and ``pbc`` all False. Periodic systems
must be periodic in all three directions with the cutoff at most half the shortest cell width.

Invalid inputs (wrong shapes, elements the model was not trained on, cutoff larger than half
the box) raise inside TorchScript; a scripted module reports them as ``torch.jit.Error`` whose
message ends in ``builtins.ValueError: ...``. The engine adapters (:mod:`maskpot.deploy.ase`,
:mod:`maskpot.deploy.openmm`) check the same conditions first and raise ``ValueError``.

Metadata keys: ``format`` ("maskpot-export"), ``format_version``, ``model`` (registered model
name), ``kind`` ("energy" | "force"), ``cutoff`` (Å), ``species`` (atomic numbers), ``units``,
``dtype``, ``neighbor_backend``, ``model_config``, ``train_config``, ``data_hash``, ``task``,
``metrics``, ``checkpoint``, ``periodicity`` (of the training frames: "periodic" | "open" |
"mixed"; None when unknown), ``versions`` (at export), ``checkpoint_versions`` (at training),
``export_time`` (UTC, ISO 8601) and ``user`` (free-form metadata passed to :func:`export_model`).

Command line::

    maskpot-export CHECKPOINT -o model.pt|model.pt2 [--format auto|torchscript|pt2]
                   [--dtype float32|float64] [--ema/--no-ema]
                   [--neighbor-backend torch|vesin]
    maskpot-export --info model.pt

Exit status: 0 success; 2 bad input (a one-line message naming the file).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import json
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from maskpot.data.validate import MAX_Z
from maskpot.dtypes import DTYPES
from maskpot.utils import EXPORT_METADATA_FILE as METADATA_FILE
from maskpot.utils import PathLike, atomic_path, export_metadata_text, versions

FORMAT = "maskpot-export"
FORMAT_VERSION = 1
UNITS = {"length": "angstrom", "energy": "eV", "forces": "eV/angstrom"}
NEIGHBOR_BACKENDS = ("torch", "vesin")
FILE_FORMATS = ("torchscript", "pt2")


@contextlib.contextmanager
def quiet_jit() -> Iterator[None]:
    """Silence torch's "torch.jit.* is deprecated" warnings: TorchScript is the format that
    openmm-torch and other engines load, chosen on purpose."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=DeprecationWarning)
        yield


class ExportError(ValueError):
    """An export file (or the request to write one) is invalid."""


def resolve_dtype(dtype: Union[str, torch.dtype, None], default: str = "float32") -> torch.dtype:
    """``"float32"``/``"float64"`` (or the torch dtypes) → torch dtype; anything else is refused."""
    if dtype is None:
        dtype = default
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
        raise ExportError(f"unsupported dtype {dtype}; expected one of {sorted(DTYPES)}")
    key = str(dtype).replace("torch.", "")
    if key not in DTYPES:
        raise ExportError(f"unsupported dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    for name, value in DTYPES.items():
        if value == dtype:
            return name
    raise ExportError(f"unsupported dtype {dtype}; expected one of {sorted(DTYPES)}")


def check_inputs(positions: Tensor, atomic_numbers: Tensor, cell: Tensor, pbc: Tensor, known_species: Tensor,
                 species: List[int]) -> Tensor:
    """Shapes of one frame's inputs and its elements against the model's; returns the atomic
    numbers as int64. ValueError naming what is wrong (TorchScript and pt2 exports alike)."""
    if positions.dim() != 2 or positions.shape[1] != 3:
        raise ValueError("positions must have shape [N, 3], got {}".format(positions.shape))
    n = positions.shape[0]
    if atomic_numbers.dim() != 1 or atomic_numbers.shape[0] != n:
        raise ValueError(
            "atomic_numbers must have shape [{}] (one per position), got {}".format(n, atomic_numbers.shape)
        )
    if cell.dim() != 2 or cell.shape[0] != 3 or cell.shape[1] != 3:
        raise ValueError("cell must have shape [3, 3], got {}".format(cell.shape))
    if pbc.dim() != 1 or pbc.shape[0] != 3:
        raise ValueError("pbc must have shape [3], got {}".format(pbc.shape))
    if n == 0:
        raise ValueError("no atoms")
    numbers = atomic_numbers.to(torch.long)
    # known_species has MAX_Z + 1 entries (TorchScript cannot close over the global MAX_Z)
    in_range = (numbers >= 1) & (numbers < known_species.shape[0])
    safe = torch.where(in_range, numbers, torch.zeros_like(numbers))
    ok = in_range & known_species[safe]
    if not bool(ok.all()):
        bad: List[int] = torch.unique(numbers[~ok]).tolist()
        raise ValueError(
            "unknown element(s) with atomic number {}; this model knows {}".format(bad, species)
        )
    return numbers


class ExportedPotential(torch.nn.Module):
    """Single-frame wrapper around a maskpot model: the module inside every export file.

    Args:
        model: a maskpot model (``forward(batch) -> {"energy", "forces"}``, attributes ``kind``,
            ``cutoff``, ``species``).
        species: atomic numbers the model knows (defaults to ``model.species``).
    """

    def __init__(self, model: torch.nn.Module, species: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        self.model = model
        if species is None:
            species = [int(z) for z in getattr(model, "species")]
        species = [int(z) for z in species]
        if not species or min(species) < 1 or max(species) > MAX_Z:
            raise ExportError(f"model species {species} must be atomic numbers in 1..{MAX_Z}")
        known = torch.zeros(MAX_Z + 1, dtype=torch.bool)
        known[torch.tensor(species)] = True
        self.register_buffer("known_species", known)
        # Carries the floating dtype: ``.to(torch.float64)`` on the wrapper changes it too.
        ref = next((p for p in model.parameters() if p.is_floating_point()), None)
        self.register_buffer("dtype_ref", torch.zeros(0, dtype=torch.float32 if ref is None else ref.dtype))
        self.cutoff: float = float(getattr(model, "cutoff"))
        self.kind: str = str(getattr(model, "kind"))
        self.species: List[int] = species

    def forward(self, positions: Tensor, atomic_numbers: Tensor, cell: Tensor, pbc: Tensor) -> Tuple[Tensor, Tensor]:
        """(positions [N, 3] Å, atomic_numbers [N], cell [3, 3] Å, pbc [3] bool) →
        (energy [] eV, forces [N, 3] eV/Å)."""
        numbers = check_inputs(positions, atomic_numbers, cell, pbc, self.known_species, self.species)
        n = positions.shape[0]
        dtype = self.dtype_ref.dtype
        pos = positions.to(dtype)
        if not pos.requires_grad:
            # a fresh leaf: the model may call requires_grad_() on it, the caller's tensor stays as is
            pos = pos.detach()
        pbc_b = pbc.to(torch.bool)
        batch = {
            "positions": pos,
            "numbers": numbers,
            "cell": cell.to(dtype).unsqueeze(0),
            "pbc": pbc_b.unsqueeze(0),
            "batch": torch.zeros(n, dtype=torch.long, device=positions.device),
            "n_atoms": torch.full((1,), n, dtype=torch.long, device=positions.device),
        }
        out = self.model(batch)
        return out["energy"][0], out["forces"]


# ---------------------------------------------------------------------------------------------
# Writing


def _swap_neighbor_backend(model: torch.nn.Module, backend: str) -> int:
    """Replace every neighbour-list submodule by one of ``backend``; returns how many."""
    from maskpot.data.neighbors import NeighborList, VesinNeighborList, make_neighbor_list

    if backend not in NEIGHBOR_BACKENDS:
        raise ExportError(f"unknown neighbour-list backend {backend!r}; expected one of {list(NEIGHBOR_BACKENDS)}")
    swapped = 0
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, (NeighborList, VesinNeighborList)):
                setattr(module, child_name, make_neighbor_list(child.cutoff, backend))
                swapped += 1
    return swapped


def _checkpoint_metadata(path: Path, use_ema: bool) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    from maskpot.checkpoint import load_checkpoint, model_from_checkpoint

    data = load_checkpoint(path)  # CheckpointError (a ValueError) for missing keys / bad files
    model = model_from_checkpoint(path, use_ema=use_ema)
    info = {
        "model_config": data["model_config"],
        "train_config": data.get("train_config"),
        "data_hash": data.get("data_hash"),
        "task": data.get("task"),
        "metrics": data.get("metrics"),
        "checkpoint": str(path),
        "checkpoint_versions": data.get("versions"),
        "weights": "ema" if use_ema and data.get("ema_state") is not None else "model",
        "periodicity": data.get("periodicity"),
    }
    return model, info


def _jsonable(obj: Any) -> Any:
    """Metadata must be plain JSON: tensors → lists, unknown objects → str."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def export_model(
    model_or_checkpoint: Union[torch.nn.Module, PathLike],
    path: PathLike,
    dtype: Union[str, torch.dtype] = "float32",
    metadata: Optional[Mapping[str, Any]] = None,
    use_ema: bool = True,
    neighbor_backend: str = "torch",
    file_format: str = "auto",
) -> Dict[str, Any]:
    """Script (or AOT-compile) a model (or the model of a checkpoint) and write it with its metadata.

    Args:
        model_or_checkpoint: a maskpot model or the path of a maskpot checkpoint.
        path: output file (written atomically).
        dtype: "float32" or "float64" (weights and computation).
        metadata: extra JSON-serialisable metadata, stored under ``"user"``.
        use_ema: checkpoint only: export the EMA weights when the checkpoint has them.
        neighbor_backend: "torch" (portable) or "vesin" (loading then needs vesin-torch).
        file_format: "torchscript", "pt2" (torch.export + AOTInductor, :mod:`maskpot.deploy.pt2`)
            or "auto" (pt2 when ``path`` ends in ``.pt2``, else TorchScript).

    Returns:
        the metadata dict written to the file.

    Raises:
        ExportError / CheckpointError (both ``ValueError``): unsupported dtype, bad checkpoint,
        a model lacking ``kind``/``cutoff``/``species``, or a model that does not script.
    """
    torch_dtype = resolve_dtype(dtype)
    if file_format == "auto":
        file_format = "pt2" if str(path).endswith(".pt2") else "torchscript"
    if file_format not in FILE_FORMATS:
        raise ExportError(f"unknown export format {file_format!r}; expected one of {list(FILE_FORMATS)}")
    if file_format == "pt2" and not str(path).endswith(".pt2"):
        raise ExportError(f"export: a pt2 export file must end in .pt2, got {path}")
    if isinstance(model_or_checkpoint, torch.nn.Module):
        model = copy.deepcopy(model_or_checkpoint)
        config = getattr(model, "config", None)
        info: Dict[str, Any] = {
            "model_config": dict(config) if isinstance(config, Mapping) else None,
            "train_config": None,
            "data_hash": None,
            "task": None,
            "metrics": None,
            "checkpoint": None,
            "checkpoint_versions": None,
            "weights": "model",
            "periodicity": getattr(model, "training_periodicity", None),
        }
    else:
        model, info = _checkpoint_metadata(Path(model_or_checkpoint), use_ema)
    for attr in ("kind", "cutoff", "species"):
        if not hasattr(model, attr):
            raise ExportError(f"export: model {type(model).__name__} lacks attribute {attr!r}")
    if model.kind not in ("energy", "force"):
        raise ExportError(f"export: model kind {model.kind!r} must be 'energy' or 'force'")
    _swap_neighbor_backend(model, neighbor_backend)
    model = model.to(torch_dtype).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if file_format == "torchscript":
        wrapper = ExportedPotential(model)
        try:
            with quiet_jit():
                scripted = torch.jit.script(wrapper)
        except Exception as exc:
            raise ExportError(f"export: {type(model).__name__} cannot be compiled with TorchScript: {exc}") from exc

    config = info["model_config"] or {}
    if "neighbor_backend" in config:
        config = info["model_config"] = {**config, "neighbor_backend": neighbor_backend}
    meta: Dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "file_format": file_format,
        "model": config.get("name", type(model).__name__),
        "kind": str(model.kind),
        "cutoff": float(model.cutoff),
        "species": [int(z) for z in model.species],
        "units": dict(UNITS),
        "dtype": dtype_name(torch_dtype),
        "neighbor_backend": neighbor_backend,
        **info,
        "versions": versions(),
        "export_time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "user": dict(metadata) if metadata else {},
    }
    meta = _jsonable(meta)
    if file_format == "pt2":
        from maskpot.deploy.pt2 import compile_pt2

        try:
            compile_pt2(model, path, meta)
        except RuntimeError as exc:
            raise ExportError(f"export: {exc}") from exc
        return meta
    with atomic_path(path) as tmp, quiet_jit():
        torch.jit.save(scripted, str(tmp), _extra_files={METADATA_FILE: json.dumps(meta, indent=2, sort_keys=True)})
    return meta


# ---------------------------------------------------------------------------------------------
# Reading


def read_metadata(path: PathLike) -> Dict[str, Any]:
    """Metadata of an export file, read from the zip archive without loading the model."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"export file {path}: file not found")
    if not zipfile.is_zipfile(path):
        raise ExportError(f"{path} is not a TorchScript export file (not a zip archive); "
                          "a checkpoint must first be exported with maskpot-export")
    text = export_metadata_text(path)
    if text is None:
        raise ExportError(f"{path} is a TorchScript/pt2/zip file without {METADATA_FILE}: not a maskpot export file")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path}: {METADATA_FILE} is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ExportError(f"{path}: metadata 'format' is {meta.get('format') if isinstance(meta, dict) else meta!r}, "
                          f"expected {FORMAT!r}")
    for key in ("kind", "cutoff", "species", "units", "dtype"):
        if key not in meta:
            raise ExportError(f"{path}: metadata lacks key {key!r}")
    if meta["units"] != UNITS:
        raise ExportError(f"{path}: units {meta['units']} differ from maskpot's {UNITS}")
    return meta


def load_exported(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """Load an export file: ``(module, metadata dict)``.

    TorchScript: ``torch.jit.load(path, _extra_files={"metadata.json": ""})`` plus validation
    of the metadata (and ``import vesin_torch`` for files exported with that backend).
    pt2 (metadata ``file_format: "pt2"``): a :class:`maskpot.deploy.pt2.Pt2Potential`. Both
    have the call ``(positions, atomic_numbers, cell, pbc) -> (energy, forces)``.
    """
    meta = read_metadata(path)
    if meta.get("neighbor_backend") == "vesin":
        try:
            import vesin_torch  # noqa: F401  (registers the TorchScript custom class)
        except ImportError as exc:
            raise ImportError(f"{path} was exported with the vesin neighbour list: pip install 'maskpot[vesin]'") from exc
    if meta.get("file_format", "torchscript") == "pt2":
        from maskpot.deploy.pt2 import Pt2Potential

        return Pt2Potential(path, meta, device=map_location), meta
    extra = {METADATA_FILE: ""}
    try:
        with quiet_jit():
            module = torch.jit.load(str(path), map_location=map_location, _extra_files=extra)
    except Exception as exc:
        raise ExportError(f"{path}: cannot be loaded as TorchScript ({exc})") from exc
    return module, meta


def call_exported(module: torch.nn.Module, positions: Tensor, atomic_numbers: Tensor, cell: Tensor, pbc: Tensor) -> Tuple[Tensor, Tensor]:
    """Call an exported module; a ``ValueError`` raised inside TorchScript comes back as ValueError.

    The call runs with TorchScript's graph-executor optimisation off: the profiling executor's
    autodiff subgraphs replace ATen's fused backward kernels (``silu_backward``, ...) by
    symbolic gradients of several elementwise passes each, and CPU builds have no fuser to merge
    them back. Off, the exported EGNN is ~1.35x faster on a 648-atom water box, PaiNN/GNS are
    unchanged, results are identical, and the first calls need no profiling warm-up
    (benchmarks/RESULTS.md, speed levers).
    """
    try:
        with torch.jit.optimized_execution(False):
            return module(positions, atomic_numbers, cell, pbc)
    except torch.jit.Error as exc:
        msg = str(exc)
        marker = "builtins.ValueError: "
        if marker in msg:
            raise ValueError(msg.split(marker)[-1].strip()) from exc
        raise


# ---------------------------------------------------------------------------------------------
# Command line


def _format_info(meta: Mapping[str, Any]) -> str:
    lines = [
        f"model           {meta.get('model')}",
        f"kind            {meta.get('kind')}",
        f"cutoff          {meta.get('cutoff')} angstrom",
        f"species         {meta.get('species')}",
        f"dtype           {meta.get('dtype')}",
        f"units           {meta.get('units')}",
        f"file format     {meta.get('file_format', 'torchscript')}",
        f"neighbour list  {meta.get('neighbor_backend')}",
        f"data hash       {meta.get('data_hash')}",
        f"task            {meta.get('task')}",
        f"exported        {meta.get('export_time')}",
        f"versions        {meta.get('versions')}",
    ]
    return "\n".join(lines) + "\n\n" + json.dumps(meta, indent=2, sort_keys=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="maskpot-export",
        description="Export a maskpot checkpoint to a TorchScript file with metadata, or show a file's metadata.",
    )
    parser.add_argument("checkpoint", nargs="?", help="maskpot checkpoint (.pt) to export")
    parser.add_argument("-o", "--output", help="output TorchScript file")
    parser.add_argument("--dtype", default="float32", help="float32 (default) or float64")
    parser.add_argument("--ema", dest="ema", action="store_true", default=True,
                        help="export the EMA weights when present (default)")
    parser.add_argument("--no-ema", dest="ema", action="store_false", help="export the raw weights")
    parser.add_argument("--neighbor-backend", default="torch", choices=list(NEIGHBOR_BACKENDS),
                        help="neighbour list inside the exported model (default: torch)")
    parser.add_argument("--format", dest="file_format", default="auto", choices=["auto", *FILE_FORMATS],
                        help="torchscript (openmm-torch, any torch), pt2 (torch.export + AOTInductor, "
                             "faster; Python engines) or auto: pt2 for an output ending in .pt2 (default)")
    parser.add_argument("--info", metavar="MODEL_PT", help="print the metadata of an export file and exit")
    args = parser.parse_args(argv)

    try:
        if args.info:
            if args.checkpoint or args.output:
                parser.error("--info takes only the export file")
            print(_format_info(read_metadata(args.info)))
            return 0
        if not args.checkpoint or not args.output:
            parser.error("give a CHECKPOINT and -o OUTPUT (or --info MODEL_PT)")
        meta = export_model(args.checkpoint, args.output, dtype=args.dtype, use_ema=args.ema,
                            neighbor_backend=args.neighbor_backend, file_format=args.file_format)
    except (ValueError, ImportError, OSError) as exc:  # bad input: one line naming the file, exit 2
        print(f"maskpot-export: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.output} ({meta['file_format']}): {meta['model']} ({meta['kind']}-centric, cutoff {meta['cutoff']} A, "
          f"species {meta['species']}, {meta['dtype']})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
