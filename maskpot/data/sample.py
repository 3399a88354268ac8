"""One atomic configuration (``Sample``) and the batch that models consume.

A ``Sample`` holds numpy arrays in maskpot's internal units. ``collate`` turns a list of samples
into a *batch*: a plain ``Dict[str, torch.Tensor]`` (TorchScript-friendly) with the keys

=============  ==============  =====================================================
key            shape / dtype   meaning
=============  ==============  =====================================================
positions      [N, 3] float    Cartesian positions, Å (concatenated over frames)
numbers        [N] int64       atomic numbers
cell           [G, 3, 3] float lattice vectors as rows, Å (zeros for open boundaries)
pbc            [G, 3] bool     periodic flags per lattice direction
batch          [N] int64       frame index of each atom, 0..G-1
n_atoms        [G] int64       atoms per frame
energy         [G] float       total energy, eV            (only if every sample has one)
forces         [N, 3] float    forces, eV/Å                (only if every sample has them)
molecule       [N] int64       molecule index, unique over the batch (only if all have it)
mask           [N] float       mask flag 0/1 for masked pretraining (optional, set by
                               transforms; models treat a missing key as all zeros)
=============  ==============  =====================================================

Every stage uses these names; add keys, never rename them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch


@dataclass
class Sample:
    """One configuration, in Å / eV / eV/Å.

    Attributes:
        positions: [N, 3] Cartesian positions, Å.
        numbers: [N] atomic numbers.
        cell: [3, 3] lattice vectors as rows, Å; all zeros when not periodic.
        pbc: [3] periodic flags.
        energy: total potential energy, eV, or None when unlabelled.
        forces: [N, 3] forces, eV/Å, or None.
        molecule: [N] molecule index per atom (0..M-1), or None when unknown.
        info: free-form metadata (source file, frame index, ...); never fed to models.
    """

    positions: np.ndarray
    numbers: np.ndarray
    cell: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))
    pbc: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=bool))
    energy: Optional[float] = None
    forces: Optional[np.ndarray] = None
    molecule: Optional[np.ndarray] = None
    info: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.positions = np.asarray(self.positions, dtype=np.float64).reshape(-1, 3)
        self.numbers = np.asarray(self.numbers, dtype=np.int64).reshape(-1)
        self.cell = np.asarray(self.cell, dtype=np.float64).reshape(3, 3)
        pbc = np.asarray(self.pbc, dtype=bool).reshape(-1)
        self.pbc = np.repeat(pbc, 3) if pbc.size == 1 else pbc.reshape(3)
        if self.forces is not None:
            self.forces = np.asarray(self.forces, dtype=np.float64).reshape(-1, 3)
        if self.molecule is not None:
            self.molecule = np.asarray(self.molecule, dtype=np.int64).reshape(-1)
        if self.energy is not None:
            self.energy = float(self.energy)
        n = len(self.numbers)
        if self.positions.shape[0] != n:
            raise ValueError(f"Sample: positions has {self.positions.shape[0]} rows but numbers has {n}")
        if self.forces is not None and self.forces.shape[0] != n:
            raise ValueError(f"Sample: forces has {self.forces.shape[0]} rows but numbers has {n}")
        if self.molecule is not None and self.molecule.shape[0] != n:
            raise ValueError(f"Sample: molecule has {self.molecule.shape[0]} entries but numbers has {n}")

    @property
    def n_atoms(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def is_periodic(self) -> bool:
        return bool(self.pbc.any())

    def copy(self, **changes: Any) -> "Sample":
        """Deep copy with optional field replacements (transforms never mutate a stored sample)."""
        base = replace(
            self,
            positions=self.positions.copy(),
            numbers=self.numbers.copy(),
            cell=self.cell.copy(),
            pbc=self.pbc.copy(),
            forces=None if self.forces is None else self.forces.copy(),
            molecule=None if self.molecule is None else self.molecule.copy(),
            info=dict(self.info),
        )
        return replace(base, **changes) if changes else base

    def to_ase(self):
        """Return an ``ase.Atoms`` (energy/forces attached through a SinglePointCalculator)."""
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        atoms = Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=self.pbc)
        if self.energy is not None or self.forces is not None:
            atoms.calc = SinglePointCalculator(atoms, energy=self.energy, forces=self.forces)
        return atoms

    @classmethod
    def from_ase(cls, atoms, energy: Optional[float] = None, forces: Optional[np.ndarray] = None) -> "Sample":
        """Build from ``ase.Atoms`` (ASE already uses Å / eV)."""
        mol = atoms.arrays.get("molecule")
        return cls(
            positions=atoms.get_positions(),
            numbers=atoms.get_atomic_numbers(),
            cell=np.asarray(atoms.get_cell()),
            pbc=atoms.get_pbc(),
            energy=energy,
            forces=forces,
            molecule=None if mol is None else np.asarray(mol),
        )


def collate(
    samples: Sequence[Sample],
    dtype: torch.dtype = torch.float32,
    device: Optional[torch.device] = None,
    extra: Optional[Dict[str, List[np.ndarray]]] = None,
) -> Dict[str, torch.Tensor]:
    """Concatenate samples into one batch dict (see the module docstring for the keys).

    Args:
        samples: frames to batch (any sizes, any mix of periodic / open).
        dtype: floating dtype of positions, cell, energy and forces.
        device: target device.
        extra: optional per-atom arrays to concatenate too (e.g. ``{"mask": [...]}``), one
            array per sample with leading dimension n_atoms.
    """
    if len(samples) == 0:
        raise ValueError("collate: empty list of samples")
    n_atoms = [s.n_atoms for s in samples]
    out: Dict[str, torch.Tensor] = {
        "positions": torch.from_numpy(np.concatenate([s.positions for s in samples])).to(dtype),
        "numbers": torch.from_numpy(np.concatenate([s.numbers for s in samples])).long(),
        "cell": torch.from_numpy(np.stack([s.cell for s in samples])).to(dtype),
        "pbc": torch.from_numpy(np.stack([s.pbc for s in samples])).bool(),
        "batch": torch.repeat_interleave(torch.arange(len(samples)), torch.tensor(n_atoms)),
        "n_atoms": torch.tensor(n_atoms, dtype=torch.long),
    }
    if all(s.energy is not None for s in samples):
        out["energy"] = torch.tensor([s.energy for s in samples], dtype=dtype)
    if all(s.forces is not None for s in samples):
        out["forces"] = torch.from_numpy(np.concatenate([s.forces for s in samples])).to(dtype)
    if all(s.molecule is not None for s in samples):
        offset, mols = 0, []
        for s in samples:
            mols.append(s.molecule + offset)
            offset += int(s.molecule.max()) + 1 if s.n_atoms else 0
        out["molecule"] = torch.from_numpy(np.concatenate(mols)).long()
    for key, arrays in (extra or {}).items():
        if len(arrays) != len(samples):
            raise ValueError(f"collate: extra['{key}'] has {len(arrays)} arrays for {len(samples)} samples")
        t = torch.from_numpy(np.concatenate([np.asarray(a) for a in arrays]))
        out[key] = t.to(dtype) if t.is_floating_point() else t
    if device is not None:
        out = {k: v.to(device) for k, v in out.items()}
    return out
