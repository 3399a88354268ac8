"""OpenMM forces from maskpot export files.

One entry point, :func:`create_force`, returns an ``openmm.Force`` that adds the learned
energy (kJ/mol) and forces (kJ/mol/nm) to a System, through one of two backends:

``backend="python"`` (default)
    ``openmm.PythonForce`` (OpenMM >= 8.5) calling the TorchScript model from Python. Needs
    nothing beyond OpenMM and torch. The State handed to the callback carries the positions
    (and the box when periodic); both are read at every call, so barostats are honoured.
``backend="torch"``
    openmm-torch's ``TorchForce`` running a scripted :class:`TorchForceModule` (positions and
    box vectors in nm, unit constants baked in as floats at wrap time). Needs openmm-torch
    built against the installed torch (see ``.ci/openmm_torch_env.sh``).

Unit conversion uses ``openmm.unit`` only: Å per nm and kJ/mol per eV are computed from it,
never typed in. Minimum image and wrapping are handled by the model's neighbour list, which
accepts positions anywhere (OpenMM may hand wrapped or unwrapped coordinates).

``atoms`` selects the ML region (indices into the System): only those particles are seen by
the model and receive its forces; everything else in the System is left untouched (e.g. the
classical TIP3P solvent of a mixed system; remove the classical intramolecular terms of the
ML region yourself, or use openmm-ml's ``createMixedSystem`` with the ``"maskpot"``
potential, which does this).

Refused rather than computed wrong: NaN/inf model output (both backends; the PythonForce also
names atoms closer than ``min_distance``, default 0.1 Å), atomic numbers without ``periodic=``
(a list carries no box, so periodicity must be stated), and a model trained on periodic frames
used without periodic boundaries (a gas-phase model in a periodic System only warns).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import openmm
import openmm.app
import torch
from openmm import unit
from torch import Tensor

from maskpot.data.validate import MIN_DISTANCE, check_box_cutoff, check_periodicity, close_pairs, overlap_message
from maskpot.deploy.export import PathLike, call_exported, load_exported, quiet_jit, read_metadata
from maskpot.dtypes import DTYPES

#: Å per nm and kJ/mol per eV, from openmm.unit.
ANGSTROM_PER_NM: float = (1.0 * unit.nanometer).value_in_unit(unit.angstrom)
KJ_PER_MOL_PER_EV: float = (1.0 * unit.elementary_charge * unit.volt * unit.AVOGADRO_CONSTANT_NA).value_in_unit(
    unit.kilojoule_per_mole
)
BACKENDS = ("python", "torch")


def _atomic_numbers(topology_or_atomic_numbers: Any) -> np.ndarray:
    if isinstance(topology_or_atomic_numbers, openmm.app.Topology):
        numbers = []
        for atom in topology_or_atomic_numbers.atoms():
            if atom.element is None:
                raise ValueError(f"create_force: atom {atom.index} ({atom.name}) has no element (virtual site?); "
                                 "pass `atoms=` to exclude it from the ML region")
            numbers.append(atom.element.atomic_number)
        return np.asarray(numbers, dtype=np.int64)
    return np.asarray(topology_or_atomic_numbers, dtype=np.int64).reshape(-1)


class PythonForceComputation:
    """The callback of the PythonForce: State (nm) → (energy kJ/mol, forces kJ/mol/nm).

    Picklable (stores the model path, reloads the TorchScript module lazily) so that systems
    holding the force can be serialised with ``XmlSerializer``.
    """

    def __init__(self, model_path: PathLike, atomic_numbers: Sequence[int], periodic: bool,
                 device: str = "cpu", min_distance: Optional[float] = MIN_DISTANCE) -> None:
        self.model_path = str(Path(model_path).resolve())
        self.atomic_numbers = np.asarray(atomic_numbers, dtype=np.int64)
        self.periodic = bool(periodic)
        self.device = str(device)
        self.min_distance = min_distance
        self._module = None
        self._cutoff = float(read_metadata(self.model_path)["cutoff"])
        self._numbers_t: Optional[Tensor] = None

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_module"] = None
        state["_numbers_t"] = None
        return state

    def _load(self) -> None:
        module, meta = load_exported(self.model_path, map_location=self.device)
        self._module = module.eval()
        self._dtype = DTYPES[meta["dtype"]]
        self._numbers_t = torch.as_tensor(self.atomic_numbers, device=self.device)
        self._pbc = torch.full((3,), self.periodic, dtype=torch.bool, device=self.device)

    def __call__(self, state: "openmm.State") -> Tuple[float, np.ndarray]:
        if self._module is None:
            self._load()
        pos = state.getPositions(asNumpy=True).value_in_unit(unit.angstrom)
        if self.periodic:
            box = np.asarray(state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.angstrom))
            check_box_cutoff(self._cutoff, box, "maskpot PythonForce")
        else:
            box = np.zeros((3, 3))
        pos = np.asarray(pos)
        min_distance = getattr(self, "min_distance", MIN_DISTANCE)
        if min_distance:
            i, j, d = close_pairs(pos, box, self.periodic, float(min_distance))
            if len(d):
                raise ValueError("maskpot PythonForce: " + overlap_message(
                    i, j, d, float(min_distance), self.atomic_numbers) + " (indices within the ML region)")
        energy, forces = call_exported(
            self._module,
            torch.as_tensor(np.asarray(pos), dtype=self._dtype, device=self.device),
            self._numbers_t,
            torch.as_tensor(box, dtype=self._dtype, device=self.device),
            self._pbc,
        )
        from maskpot.deploy.ase import check_output

        e_ev = float(energy.detach().cpu())
        f_ev = forces.detach().cpu().numpy().astype(np.float64)
        check_output(e_ev, f_ev, pos, box, self.periodic, "maskpot PythonForce", self.atomic_numbers)
        return e_ev * KJ_PER_MOL_PER_EV, f_ev * (KJ_PER_MOL_PER_EV * ANGSTROM_PER_NM)


class TorchForceModule(torch.nn.Module):
    """openmm-torch wrapper: positions [N_total, 3] nm (+ box [3, 3] nm) → (kJ/mol, kJ/mol/nm).

    The unit factors are floats taken from ``openmm.unit`` when the module is built; the ML
    region (``atoms``) is gathered from the full position array and its forces scattered back.
    """

    def __init__(self, exported: torch.nn.Module, atomic_numbers: Sequence[int], dtype: torch.dtype,
                 periodic: bool, atoms: Optional[Sequence[int]] = None, n_particles: Optional[int] = None) -> None:
        super().__init__()
        self.model = exported
        self.register_buffer("numbers", torch.as_tensor(np.asarray(atomic_numbers, dtype=np.int64)))
        self.register_buffer("pbc", torch.full((3,), bool(periodic), dtype=torch.bool))
        self.register_buffer("dtype_ref", torch.zeros(0, dtype=dtype))
        self.periodic: bool = bool(periodic)
        self.subset: bool = atoms is not None
        idx = np.arange(len(atomic_numbers)) if atoms is None else np.asarray(atoms, dtype=np.int64)
        self.register_buffer("atoms", torch.as_tensor(idx, dtype=torch.long))
        self.n_particles: int = int(n_particles if n_particles is not None else len(idx))
        self.angstrom_per_nm: float = float(ANGSTROM_PER_NM)
        self.kj_per_mol_per_ev: float = float(KJ_PER_MOL_PER_EV)

    def forward(self, positions: Tensor, boxvectors: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        dtype = self.dtype_ref.dtype
        pos = positions.to(dtype) * self.angstrom_per_nm
        if self.subset:
            pos = pos.index_select(0, self.atoms)
        if self.periodic:
            if boxvectors is None:
                raise ValueError("periodic maskpot TorchForce called without box vectors")
            cell = boxvectors.to(dtype) * self.angstrom_per_nm
        else:
            cell = torch.zeros((3, 3), dtype=dtype, device=positions.device)
        energy, forces = self.model(pos, self.numbers, cell, self.pbc)
        if not bool(torch.isfinite(energy).all()) or not bool(torch.isfinite(forces).all()):
            raise ValueError("maskpot TorchForce: the model returned non-finite energy or forces "
                             "(overlapping atoms or an exploded simulation?)")
        forces = forces.detach() * (self.kj_per_mol_per_ev * self.angstrom_per_nm)
        if self.subset:
            full = torch.zeros((self.n_particles, 3), dtype=forces.dtype, device=forces.device)
            forces = full.index_copy(0, self.atoms, forces)
        return (energy.detach() * self.kj_per_mol_per_ev).to(positions.dtype), forces.to(positions.dtype)


def import_openmmtorch():
    """``openmmtorch`` or an ImportError that says why (wrong torch build, not installed).

    Works whatever the import order of openmm and torch (see :func:`load_torch_kernel_plugins`).
    """
    try:
        import openmmtorch  # noqa: F401
    except Exception as exc:  # OSError/ImportError when built against another torch
        raise ImportError(
            "backend='torch' needs openmm-torch built for torch "
            f"{torch.__version__} ({type(exc).__name__}: {exc}); use backend='python' or the "
            "environment of .ci/openmm_torch_env.sh") from exc
    load_torch_kernel_plugins()
    return openmmtorch


_TORCH_PLUGINS_OK = False


def load_torch_kernel_plugins() -> None:
    """Load openmm-torch's OpenMM kernel plugins if ``import openmm`` could not.

    OpenMM loads every plugin of its plugin folder when it is imported. With ``import openmm``
    before ``import torch``, libtorch's CUDA libraries (``libnvrtc.so.12``, ...) are not loaded
    yet, ``libOpenMMTorchReference.so`` fails to load, and every Context with a TorchForce then
    fails with "does not support all required kernels". Now that torch is imported, load the
    plugins that failed again; if openmm-torch's Reference plugin still cannot be loaded, raise
    an ImportError that says which library, why, and what to do.
    """
    global _TORCH_PLUGINS_OK
    if _TORCH_PLUGINS_OK:
        return
    import os
    import re

    retry_errors: Dict[str, str] = {}
    for text in openmm.Platform.getPluginLoadFailures():
        m = re.match(r"Error loading library (.+?\.(?:so|dylib|dll)): (.*)$", str(text), re.S)
        if not m or "OpenMMTorch" not in os.path.basename(m.group(1)):
            continue
        try:
            openmm.Platform.loadPluginLibrary(m.group(1))
        except Exception as exc:  # e.g. the OpenCL plugin on a machine without libOpenCL: not needed
            retry_errors[m.group(1)] = str(exc)
    reference = [p for p in retry_errors if "Reference" in os.path.basename(p)]
    if reference:
        raise ImportError(
            f"backend='torch': openmm-torch's OpenMM plugin {reference[0]} cannot be loaded even after "
            f"importing torch ({retry_errors[reference[0]].strip()}), so TorchForce has no kernels on any "
            f"platform; openmmtorch must be built for torch {torch.__version__} and OpenMM "
            f"{openmm.__version__} (.ci/openmm_torch_env.sh installs a working set), or use backend='python'")
    _TORCH_PLUGINS_OK = True


def create_force(
    model_path: PathLike,
    topology_or_atomic_numbers: Any,
    backend: str = "python",
    atoms: Optional[Sequence[int]] = None,
    periodic: Optional[bool] = None,
    device: str = "cpu",
    min_distance: Optional[float] = MIN_DISTANCE,
    allow_periodicity_mismatch: bool = False,
) -> openmm.Force:
    """An OpenMM Force computing a maskpot model (kJ/mol, kJ/mol/nm).

    Args:
        model_path: export file written by ``maskpot-export`` / :func:`export_model`
            (TorchScript for either backend; pt2 for ``backend="python"``).
        topology_or_atomic_numbers: ``openmm.app.Topology`` or atomic numbers of *all*
            particles of the System.
        backend: "python" (``openmm.PythonForce``, default) or "torch" (openmm-torch).
        atoms: indices of the ML region (default: every particle).
        periodic: use periodic boundary conditions; default: the topology has a box. Required
            with a plain list of atomic numbers (it carries no box; guessing "open" silently
            computed a periodic System without periodic boundaries).
        device: torch device of the model.
        min_distance: ``backend="python"``: atoms of the ML region closer than this (Å) are an
            error naming them (None/0: no check).
        allow_periodicity_mismatch: use a model trained on periodic frames without periodic
            boundaries (a warning instead of an error).

    Raises:
        ValueError: unknown backend, elements the model does not know, bad ``atoms``, or a
            topology box whose half width is below the model cutoff (the same check runs at
            every evaluation, so a barostat that shrinks the box is caught too).
        ImportError: backend "torch" without a working openmm-torch.
    """
    if backend not in BACKENDS:
        raise ValueError(f"create_force: unknown backend {backend!r}; expected one of {list(BACKENDS)}")
    meta = read_metadata(model_path)
    cutoff = float(meta["cutoff"])
    numbers_all = _atomic_numbers(topology_or_atomic_numbers)
    is_topology = isinstance(topology_or_atomic_numbers, openmm.app.Topology)
    n_total = len(numbers_all)
    if atoms is not None:
        atoms = [int(i) for i in atoms]
        if not atoms:
            raise ValueError("create_force: `atoms` is empty")
        if min(atoms) < 0 or max(atoms) >= n_total:
            raise ValueError(f"create_force: `atoms` indices must lie in 0..{n_total - 1}")
        if len(set(atoms)) != len(atoms):
            raise ValueError("create_force: `atoms` has duplicate indices")
        numbers = numbers_all[atoms]
    else:
        numbers = numbers_all
    unknown = sorted(set(numbers.tolist()) - set(int(z) for z in meta["species"]))
    if unknown:
        raise ValueError(f"create_force: unknown element(s) with atomic number {unknown}; "
                         f"model {model_path} knows {meta['species']}")
    if periodic is None:
        if not is_topology:
            raise ValueError("create_force: pass periodic=True or periodic=False with a list of atomic numbers "
                             "(it has no box to tell whether the System is periodic), or pass a Topology")
        periodic = topology_or_atomic_numbers.getPeriodicBoxVectors() is not None
    periodic = bool(periodic)
    check_periodicity(meta.get("periodicity"), periodic, f"create_force({model_path})", allow_periodicity_mismatch)
    if periodic and is_topology and topology_or_atomic_numbers.getPeriodicBoxVectors() is not None:
        box = np.asarray([v.value_in_unit(unit.angstrom) for v in topology_or_atomic_numbers.getPeriodicBoxVectors()])
        check_box_cutoff(cutoff, box, "create_force")

    if backend == "python":
        if not hasattr(openmm, "PythonForce"):
            raise ImportError(f"backend='python' needs openmm.PythonForce (OpenMM >= 8.5), found {openmm.__version__}")
        force = openmm.PythonForce(PythonForceComputation(model_path, numbers, periodic, device, min_distance))
        force.setUsesPeriodicBoundaryConditions(periodic)
        if atoms is not None:
            force.setParticles(atoms)
    else:
        if meta.get("file_format", "torchscript") != "torchscript":
            raise ValueError(f"create_force: backend='torch' (openmm-torch) runs TorchScript; {model_path} is a "
                             f"{meta['file_format']} export: use backend='python' or export with --format torchscript")
        openmmtorch = import_openmmtorch()
        module, meta = load_exported(model_path, map_location=device)
        dtype = DTYPES[meta["dtype"]]
        with quiet_jit():
            wrapper = torch.jit.script(TorchForceModule(module, numbers, dtype, periodic, atoms, n_total))
        force = openmmtorch.TorchForce(wrapper)
        force.setOutputsForces(True)
        force.setUsesPeriodicBoundaryConditions(periodic)
    force.setName(f"maskpot:{meta.get('model', 'model')}")
    return force
