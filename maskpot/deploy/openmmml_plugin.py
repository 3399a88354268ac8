"""openmm-ml plugin: ``MLPotential("maskpot", modelPath="model.pt")``.

Registered through the entry point ``openmmml.potentials: maskpot`` (pyproject.toml), so once
maskpot is installed::

    from openmmml import MLPotential
    potential = MLPotential("maskpot", modelPath="model.pt")
    system = potential.createSystem(topology)                    # everything ML
    mixed = potential.createMixedSystem(topology, mm_system, ml_atoms)   # ML region + MM rest

Like openmm-ml's own PyTorch potentials since v1.6, the force is an ``openmm.PythonForce``
(``backend="python"``); ``createSystem(..., backend="torch")`` uses openmm-torch instead. Extra
keyword arguments of ``createSystem``/``createMixedSystem`` understood here: ``backend``,
``device`` and ``periodic`` (see :func:`maskpot.deploy.openmm.create_force`).

The module imports without openmm-ml installed (the base classes then fall back to
``object``), so maskpot never depends on it.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

try:  # openmm-ml >= 1.0
    from openmmml.mlpotential import MLPotentialImpl, MLPotentialImplFactory
except Exception:  # pragma: no cover - openmm-ml not installed
    MLPotentialImpl = object  # type: ignore[assignment,misc]
    MLPotentialImplFactory = object  # type: ignore[assignment,misc]


class MaskpotPotentialImplFactory(MLPotentialImplFactory):
    """Creates :class:`MaskpotPotentialImpl` objects for ``MLPotential("maskpot", ...)``."""

    def createImpl(self, name: str, modelPath: Optional[str] = None, **args: Any) -> "MaskpotPotentialImpl":
        if modelPath is None:
            raise ValueError(f"MLPotential({name!r}) needs modelPath=<file written by maskpot-export>")
        return MaskpotPotentialImpl(name, modelPath, **args)


class MaskpotPotentialImpl(MLPotentialImpl):
    """Adds a maskpot model to a System (whole system or the ML subset ``atoms``)."""

    def __init__(self, name: str, modelPath: str, backend: str = "python", device: str = "cpu") -> None:
        from maskpot.deploy.export import read_metadata

        self.name = name
        self.modelPath = str(modelPath)
        self.backend = backend
        self.device = device
        self.metadata = read_metadata(self.modelPath)  # fails early for a wrong file

    def addForces(self, topology, system, atoms: Optional[Iterable[int]], forceGroup: int, **args: Any) -> None:
        from maskpot.deploy.openmm import create_force

        periodic = args.get("periodic")
        if periodic is None:
            periodic = topology.getPeriodicBoxVectors() is not None or system.usesPeriodicBoundaryConditions()
        force = create_force(
            self.modelPath,
            topology,
            backend=args.get("backend", self.backend),
            atoms=None if atoms is None else list(atoms),
            periodic=bool(periodic),
            device=args.get("device", self.device),
        )
        force.setForceGroup(forceGroup)
        system.addForce(force)

    def getMLLongRange(self) -> Optional[bool]:
        """maskpot models are local (finite cutoff, no long-range term)."""
        return False
