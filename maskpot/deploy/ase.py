"""ASE calculator for maskpot models (exported files, checkpoints or in-memory modules).

ASE and maskpot share units (Å, eV, eV/Å), so this adapter only moves arrays:

>>> atoms.calc = MaskpotCalculator("model.pt")
>>> atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()

Stress (energy-centric models, periodic cells) comes from autograd: a symmetric strain ε
(zero-valued, differentiable) is applied as ``positions @ (I + ε)``, ``cell @ (I + ε)``
before the model call, and ``stress = (1/V) dE/dε`` in ASE's Voigt order
(xx, yy, zz, yz, xz, xy) and sign convention (positive = the cell wants to shrink, i.e.
tensile; ``stress = -virial / V``). Force-centric models have no energy to differentiate:
asking for their stress raises ``PropertyNotImplementedError``.

Refused with a ``ValueError`` instead of returning garbage: atoms closer than ``min_distance``
(default 0.1 Å; the message names them), a non-finite model output (NaN/inf energy or forces,
naming the atoms), and a model trained on periodic frames used without periodic boundaries
(``allow_periodicity_mismatch=True`` turns that into a warning; a gas-phase model used in a
periodic cell only warns). The training periodicity comes from the export metadata or the
checkpoint (key ``periodicity``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, List, Optional, Union

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from maskpot.data.validate import MIN_DISTANCE, check_box_cutoff, check_periodicity, close_pairs, overlap_message
from maskpot.deploy.export import (
    ExportedPotential,
    call_exported,
    load_exported,
    read_metadata,
    resolve_dtype,
)
from maskpot.utils import export_metadata_text

ModelLike = Union[str, Path, torch.nn.Module]


def load_potential(model: ModelLike, device: Union[str, torch.device] = "cpu"):
    """``(module, kind, cutoff, species)`` for an export file, a checkpoint or a module.

    The returned module has the export signature ``(positions, numbers, cell, pbc) -> (E, F)``.
    """
    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"MaskpotCalculator: model file {path} not found")
        if export_metadata_text(path) is not None:
            module, meta = load_exported(path, map_location=device)
            return module, str(meta["kind"]), float(meta["cutoff"]), [int(z) for z in meta["species"]]
        from maskpot.checkpoint import model_from_checkpoint

        model = model_from_checkpoint(path)  # CheckpointError for anything else
    elif isinstance(model, torch.nn.Module):
        model = copy.deepcopy(model)  # casting to a device/dtype must not touch the caller's module
    else:
        raise TypeError(f"MaskpotCalculator: model must be a file path or a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, ExportedPotential) or (
        isinstance(model, torch.jit.ScriptModule) and hasattr(model, "known_species")
    ):
        module = model
    else:
        module = ExportedPotential(model)
    return module.to(device), str(module.kind), float(module.cutoff), [int(z) for z in module.species]


def training_periodicity(model: ModelLike) -> Optional[str]:
    """``"periodic"`` / ``"open"`` / ``"mixed"`` frames the model was trained on, None if unknown.

    Read from an export file's metadata or a checkpoint's ``periodicity`` key (attribute
    ``training_periodicity`` of a module).
    """
    if isinstance(model, (str, Path)):
        path = Path(model)
        if export_metadata_text(path) is not None:
            return read_metadata(path).get("periodicity")
        from maskpot.checkpoint import load_checkpoint

        return load_checkpoint(path).get("periodicity")
    return getattr(model, "training_periodicity", None)


def check_output(energy: float, forces: np.ndarray, positions: np.ndarray, cell: Optional[np.ndarray],
                 periodic: bool, where: str, numbers: Optional[np.ndarray] = None) -> None:
    """ValueError when the model returned NaN/inf, naming the atoms (and overlapping pairs, if any)."""
    bad = np.flatnonzero(~np.isfinite(forces).all(axis=1))
    if np.isfinite(energy) and bad.size == 0:
        return
    what = f"energy {energy}" + (f", forces of {bad.size} atom(s) (first: {bad[:10].tolist()})" if bad.size else "")
    i, j, d = close_pairs(positions, cell, periodic, 0.5)
    cause = ("; closest atoms: " + overlap_message(i, j, d, 0.5, numbers)) if len(d) else ""
    raise ValueError(f"{where}: the model returned non-finite values ({what}){cause}")


def _module_dtype(module: torch.nn.Module) -> torch.dtype:
    ref = getattr(module, "dtype_ref", None)
    if isinstance(ref, torch.Tensor):
        return ref.dtype
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


class MaskpotCalculator(Calculator):
    """ASE calculator: energy, free_energy, forces, stress (energy-centric, periodic).

    Args:
        model: export file (``maskpot-export``), maskpot checkpoint, or a ``torch.nn.Module``
            (a maskpot model or an :class:`~maskpot.deploy.export.ExportedPotential`).
        device: torch device for the computation.
        dtype: "float32"/"float64" to cast the model to; None keeps the model's dtype.
        min_distance: atoms closer than this (Å) are an error (None/0: no check).
        allow_periodicity_mismatch: evaluate a periodic-trained model on open systems with a
            warning instead of an error.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, model: ModelLike, device: Union[str, torch.device] = "cpu", dtype=None,
                 min_distance: Optional[float] = MIN_DISTANCE, allow_periodicity_mismatch: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.device = torch.device(device)
        self.min_distance = min_distance
        self.allow_periodicity_mismatch = bool(allow_periodicity_mismatch)
        module, self.kind, self.cutoff, self.species = load_potential(model, self.device)
        self.training_periodicity = training_periodicity(model)
        if dtype is not None:
            if not getattr(module, "castable", True) and resolve_dtype(dtype) != _module_dtype(module):
                raise ValueError(f"MaskpotCalculator: a pt2 export is compiled for {_module_dtype(module)}; "
                                 f"dtype={dtype!r} needs a new export (maskpot-export --dtype)")
            module = module.to(resolve_dtype(dtype))
        self.module = module.eval()
        self.dtype = _module_dtype(self.module)
        self._known = set(self.species)

    # -- checks done in Python so that users get ValueError / PropertyNotImplementedError
    def _check(self, atoms) -> None:
        unknown = sorted(set(int(z) for z in atoms.numbers) - self._known)
        if unknown:
            raise ValueError(f"MaskpotCalculator: unknown element(s) with atomic number {unknown}; "
                             f"this model knows {self.species}")
        pbc = np.asarray(atoms.pbc, dtype=bool)
        if pbc.any() and not pbc.all():
            raise ValueError(f"MaskpotCalculator: mixed periodicity pbc={pbc.tolist()} is not supported")
        if pbc.all():
            cell = np.asarray(atoms.cell, dtype=np.float64)
            volume = abs(np.linalg.det(cell))
            if volume <= 0:
                raise ValueError("MaskpotCalculator: periodic cell has zero volume")
            check_box_cutoff(self.cutoff, cell, "MaskpotCalculator")
        check_periodicity(self.training_periodicity, bool(pbc.all()), "MaskpotCalculator",
                          self.allow_periodicity_mismatch)
        if self.min_distance:
            periodic = bool(pbc.all())
            i, j, d = close_pairs(atoms.positions, np.asarray(atoms.cell) if periodic else None, periodic,
                                  float(self.min_distance))
            if len(d):
                raise ValueError("MaskpotCalculator: " + overlap_message(i, j, d, float(self.min_distance),
                                                                         atoms.numbers))

    def calculate(self, atoms=None, properties: Optional[List[str]] = None, system_changes=all_changes) -> None:
        if properties is None:
            properties = ["energy"]
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        self._check(atoms)
        periodic = bool(np.all(atoms.pbc))
        want_stress = "stress" in properties
        if want_stress:
            if self.kind != "energy":
                raise PropertyNotImplementedError(
                    "MaskpotCalculator: stress needs an energy-centric model; this model is "
                    f"{self.kind}-centric (forces are predicted directly, there is no energy to differentiate)")
            if not periodic:
                raise PropertyNotImplementedError("MaskpotCalculator: stress is only defined for periodic cells")
            if not getattr(self.module, "differentiable", True):
                raise PropertyNotImplementedError(
                    "MaskpotCalculator: stress needs a differentiable model; a pt2 export returns energy and "
                    "forces only (use the TorchScript export or the checkpoint for stress)")

        pos = torch.tensor(atoms.get_positions(), dtype=self.dtype, device=self.device)
        cell = torch.tensor(np.asarray(atoms.cell) if periodic else np.zeros((3, 3)), dtype=self.dtype, device=self.device)
        numbers = torch.tensor(atoms.numbers, dtype=torch.long, device=self.device)
        pbc = torch.full((3,), periodic, dtype=torch.bool, device=self.device)

        if want_stress:
            strain = torch.zeros((3, 3), dtype=self.dtype, device=self.device, requires_grad=True)
            sym = 0.5 * (strain + strain.transpose(0, 1))
            deform = torch.eye(3, dtype=self.dtype, device=self.device) + sym
            energy, forces = call_exported(self.module, pos @ deform, numbers, cell @ deform, pbc)
            (dE_deps,) = torch.autograd.grad([energy], [strain])
            volume = abs(float(np.linalg.det(np.asarray(atoms.cell))))
            stress = dE_deps.detach().cpu().numpy().astype(np.float64) / volume
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress)
        else:
            energy, forces = call_exported(self.module, pos, numbers, cell, pbc)
        e = float(energy.detach().cpu())
        f = forces.detach().cpu().numpy().astype(np.float64)
        check_output(e, f, atoms.positions, np.asarray(atoms.cell) if periodic else None, periodic,
                     "MaskpotCalculator", atoms.numbers)
        self.results["energy"] = e
        self.results["free_energy"] = e
        self.results["forces"] = f
