"""Readers and writers: every format is converted to Å / eV / eV/Å once, here, at load.

Conversion factors come only from ``ase.units`` (no hand-typed constants). Supported formats:

============  =====================================================  =========================
name          files                                                  native units
============  =====================================================  =========================
``extxyz``    ``*.xyz`` / ``*.extxyz`` (ase.io)                       Å, eV, eV/Å (ASE)
``npz``       maskpot ``*.npz`` (see :func:`write_npz`)              stored in key ``units``
``rmd17``     revised MD17 ``*.npz`` (``nuclear_charges``, ...)       Å, kcal/mol, kcal/mol/Å
``deepmd``    DeePMD raw/npy system folder(s) (``type.raw``, ...)     Å, eV, eV/Å
``runner``    RuNNer / n2p2 ``input.data``                            Bohr, Hartree, Hartree/Bohr
============  =====================================================  =========================

:func:`read_dataset` picks the format from the path; :func:`write_dataset` writes extxyz or npz.
Every reader validates what it reads and raises :class:`~maskpot.data.validate.DataValidationError`
naming the file, the key and what was expected.

Each returned :class:`Sample` carries ``info["source"]`` (the file) and ``info["frame"]`` (the
frame index inside that file) so errors and logs downstream can point back to the data.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from ase import units
from ase.data import atomic_numbers as _SYMBOL_TO_Z

from maskpot.data.sample import Sample
from maskpot.data.validate import (
    MIN_DISTANCE,
    DataValidationError,
    check_finite,
    check_numbers,
    check_plausibility,
    check_shape,
    frame_range_error,
    require_key,
    validate_samples,
)
from maskpot.utils import PathLike, atomic_path, hash_arrays, versions

__all__ = [
    "FORMATS",
    "Index",
    "detect_format",
    "read_dataset",
    "write_dataset",
    "read_xyz",
    "write_xyz",
    "read_npz",
    "write_npz",
    "read_rmd17",
    "read_deepmd",
    "read_runner",
    "parse_units",
]

FORMATS = ("extxyz", "npz", "rmd17", "deepmd", "runner")

#: A frame selection: None (all), an int (negative counts from the end), a slice, or a sequence of ints.
Index = Union[None, int, slice, Sequence[int], np.ndarray]

#: maskpot's internal units, as written into the ``units`` key/field of files we write.
INTERNAL_UNITS = "angstrom,eV"

# Names accepted in a ``units`` field, mapped to the factor to Å / eV (ase.units only).
_LENGTH_UNITS: Dict[str, float] = {
    "angstrom": units.Angstrom,
    "ang": units.Angstrom,
    "a": units.Angstrom,
    "å": units.Angstrom,
    "nm": units.nm,
    "bohr": units.Bohr,
}
_ENERGY_UNITS: Dict[str, float] = {
    "ev": units.eV,
    "hartree": units.Hartree,
    "ha": units.Hartree,
    "kcal/mol": units.kcal / units.mol,
    "kj/mol": units.kJ / units.mol,
}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def parse_units(spec: Any, source: Any, key: str = "units") -> Tuple[float, float]:
    """Parse a units field into ``(length factor to Å, energy factor to eV)``.

    Accepts ``"angstrom,eV"`` (length, energy; case-insensitive; also ``nm``, ``bohr``,
    ``hartree``, ``kcal/mol``, ``kJ/mol``) or a JSON object ``{"length": ..., "energy": ...}``.
    Forces are taken to be in energy/length.
    """
    if isinstance(spec, np.ndarray):
        spec = spec.item() if spec.shape == () else str(spec)
    if isinstance(spec, bytes):
        spec = spec.decode()
    text = str(spec).strip()
    if text.startswith("{"):
        try:
            d = json.loads(text)
            length, energy = str(d["length"]), str(d["energy"])
        except (ValueError, KeyError, TypeError) as exc:
            raise DataValidationError(
                source, key, f'expected JSON like {{"length": "angstrom", "energy": "eV"}}, found {text!r}'
            ) from exc
    else:
        parts = [p.strip() for p in text.split(",")]
        if len(parts) != 2:
            raise DataValidationError(source, key, f"expected '<length>,<energy>' such as 'angstrom,eV', found {text!r}")
        length, energy = parts
    lf = _LENGTH_UNITS.get(length.lower())
    ef = _ENERGY_UNITS.get(energy.lower())
    if lf is None:
        raise DataValidationError(source, key, f"expected a length unit in {sorted(_LENGTH_UNITS)}, found {length!r}")
    if ef is None:
        raise DataValidationError(source, key, f"expected an energy unit in {sorted(_ENERGY_UNITS)}, found {energy!r}")
    return float(lf), float(ef)


def _select(n: int, index: Index, source: Any, key: str = "index") -> np.ndarray:
    """Turn a frame selection into an array of indices in 0..n-1 (errors name the file)."""
    all_idx = np.arange(n)
    if index is None:
        return all_idx
    if isinstance(index, slice):
        return all_idx[index]
    if isinstance(index, (int, np.integer)):
        if not -n <= int(index) < n:
            raise frame_range_error(source, key, n, int(index))
        return all_idx[[int(index)]]
    idx = np.asarray(index)
    if idx.dtype == bool:
        if idx.shape != (n,):
            raise DataValidationError(source, key, f"expected a boolean mask of shape ({n},), found {idx.shape}")
        return all_idx[idx]
    idx = idx.astype(np.int64).reshape(-1)
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise frame_range_error(source, key, n, index)
    return all_idx[idx]


def _symbols_to_numbers(symbols: Sequence[str], source: Any, key: str) -> np.ndarray:
    """Element symbols -> atomic numbers; unknown symbols are an error naming file and key."""
    out = []
    for s in symbols:
        z = _SYMBOL_TO_Z.get(str(s).strip().capitalize())
        if z is None or z == 0:
            raise DataValidationError(source, key, f"expected element symbols, found unknown element {s!r}")
        out.append(z)
    return np.asarray(out, dtype=np.int64)


def _natural_key(path: Path) -> List[Any]:
    """Sort key so that data_2 < data_10 and set.002 < set.010."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def _unreadable_npz(path: Path, why: str) -> DataValidationError:
    """Error for an empty, truncated or non-npz file (np.load's own errors name no file)."""
    size = path.stat().st_size
    found = "an empty file (0 bytes)" if size == 0 else f"a truncated or corrupt file of {size} bytes ({why})"
    return DataValidationError(path, "<npz>", f"expected a complete .npz (zip) archive, found {found}")


def _open_npz(path: Path) -> Any:
    """``np.load`` of an existing, complete zip archive (errors name the file)."""
    import zipfile

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.stat().st_size == 0 or not zipfile.is_zipfile(path):
        raise _unreadable_npz(path, "not a zip archive")
    try:
        return np.load(path, allow_pickle=False)
    except (EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise _unreadable_npz(path, f"{type(exc).__name__}: {exc}") from exc


def _load_npz(path: Path) -> Dict[str, np.ndarray]:
    import zipfile
    import zlib

    with _open_npz(path) as z:
        try:
            return {k: z[k] for k in z.files}
        except ValueError as exc:
            if "pickle" not in str(exc):
                raise _unreadable_npz(path, f"{type(exc).__name__}: {exc}") from exc
            # Object arrays need pickle: refuse rather than execute code from a data file.
            raise DataValidationError(path, "<npz>", f"expected plain numeric/string arrays, found: {exc}") from exc
        except (EOFError, OSError, zipfile.BadZipFile, zlib.error) as exc:
            raise _unreadable_npz(path, f"{type(exc).__name__}: {exc}") from exc


# --------------------------------------------------------------------------------------------
# extended XYZ
# --------------------------------------------------------------------------------------------


def read_xyz(
    path: PathLike,
    index: Index = None,
    energy_key: str = "energy",
    forces_key: str = "forces",
    units: Optional[str] = None,
) -> List[Sample]:
    """Read extended XYZ with ``ase.io`` (Å, eV, eV/Å — ASE's units).

    Energy comes from ``info[energy_key]`` or the attached calculator, forces from
    ``arrays[forces_key]`` or the calculator. A per-atom array named ``molecule`` becomes
    ``Sample.molecule``. If a frame carries a ``units`` info field (we write one), it is honoured;
    an explicit ``units`` argument (``"<length>,<energy>"``, see :func:`parse_units`) overrides it.
    """
    import ase.io

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    # Let ase read only what is asked for when the frame numbers are known without the length
    # of the file (non-negative int or forward slice); otherwise read all, then select.
    simple_int = isinstance(index, (int, np.integer)) and int(index) >= 0
    simple_slice = isinstance(index, slice) and all(v is None or v >= 0 for v in (index.start, index.stop)) and (
        index.step is None or index.step > 0
    )
    ase_index: Any = int(index) if simple_int else index if simple_slice else ":"
    explicit = None if units is None else parse_units(units, path, "units (argument)")
    try:
        images = ase.io.read(path, index=ase_index, format="extxyz")
    except Exception as exc:  # ase raises many types; re-raise with the file named
        raise DataValidationError(path, "<extxyz>", f"expected a valid extended XYZ file, found: {exc}") from exc
    if not isinstance(images, list):
        images = [images]
    if simple_int:
        frames = np.array([int(index)])
    elif simple_slice:
        start, step = index.start or 0, index.step or 1
        frames = start + step * np.arange(len(images))
    else:
        frames = _select(len(images), index, path)
        images = [images[i] for i in frames]

    samples = []
    for frame, atoms in zip(frames.tolist(), images):
        src = f"{path} [frame {frame}]"
        calc_results = atoms.calc.results if atoms.calc is not None else {}
        energy = atoms.info.get(energy_key)
        if energy is None and energy_key == "energy":
            energy = calc_results.get("energy")
        forces = atoms.arrays.get(forces_key)
        if forces is None and forces_key == "forces":
            forces = calc_results.get("forces")
        lf, ef = (1.0, 1.0)
        if explicit is not None:
            lf, ef = explicit
        elif "units" in atoms.info:
            lf, ef = parse_units(atoms.info["units"], src)
        mol = atoms.arrays.get("molecule")
        n = len(atoms)
        if forces is not None:
            check_shape(np.asarray(forces), (n, 3), forces_key, src)
        if mol is not None:
            check_shape(np.asarray(mol), (n,), "molecule", src)
        samples.append(
            Sample(
                positions=atoms.get_positions() * lf,
                numbers=atoms.get_atomic_numbers(),
                cell=np.asarray(atoms.get_cell()) * lf,
                pbc=atoms.get_pbc(),
                energy=None if energy is None else float(energy) * ef,
                forces=None if forces is None else np.asarray(forces, dtype=np.float64) * (ef / lf),
                molecule=None if mol is None else np.asarray(mol),
                info={"source": str(path), "frame": int(frame)},
            )
        )
    return samples


def write_xyz(path: PathLike, samples: Sequence[Sample]) -> None:
    """Write samples as extended XYZ (atomically), with ``units="angstrom,eV"`` in each header."""
    import ase.io

    images = []
    for s in samples:
        atoms = s.to_ase()
        if s.molecule is not None:
            atoms.arrays["molecule"] = np.asarray(s.molecule, dtype=np.int64)
        atoms.info["units"] = INTERNAL_UNITS
        images.append(atoms)
    with atomic_path(path) as tmp:
        ase.io.write(tmp, images, format="extxyz")


# --------------------------------------------------------------------------------------------
# maskpot npz
# --------------------------------------------------------------------------------------------


def write_npz(path: PathLike, samples: Sequence[Sample], metadata: Optional[Dict[str, Any]] = None) -> None:
    """Write samples to maskpot's ``.npz`` format (atomically; units stored in ``units``).

    Layout when every frame has the same number of atoms N (the usual case)::

        positions [F, N, 3] Å     numbers [N] (or [F, N] if compositions differ)
        cell      [F, 3, 3] Å     pbc [3] (or [F, 3] if it differs between frames)
        energy    [F] eV          forces [F, N, 3] eV/Å        (only if every frame has them)
        molecule  [N] (or [F, N])                               (only if every frame has one)
        units     "angstrom,eV"   metadata  JSON string (versions, data hash, user metadata)

    Frames with different N use a concatenated ("ragged") layout instead: an extra key
    ``n_atoms`` [F], and ``positions`` [sum N, 3], ``numbers`` [sum N], ``forces`` [sum N, 3],
    ``molecule`` [sum N]. :func:`read_npz` reads both.
    """
    if len(samples) == 0:
        raise ValueError(f"{path}: write_npz: no samples to write")
    path = Path(path)
    F = len(samples)
    n_atoms = np.array([s.n_atoms for s in samples], dtype=np.int64)
    ragged = bool(np.any(n_atoms != n_atoms[0]))
    has_e = [s.energy is not None for s in samples]
    has_f = [s.forces is not None for s in samples]
    has_m = [s.molecule is not None for s in samples]
    for name, flags in (("energy", has_e), ("forces", has_f), ("molecule", has_m)):
        if any(flags) and not all(flags):
            # Refuse rather than silently drop labels from some frames.
            raise ValueError(
                f"{path}: write_npz: key '{name}' is present in {sum(flags)} of {F} frames; "
                "expected all or none (split the data or drop the labels explicitly)"
            )

    arrays: Dict[str, np.ndarray] = {}
    if ragged:
        arrays["n_atoms"] = n_atoms
        arrays["positions"] = np.concatenate([s.positions for s in samples])
        arrays["numbers"] = np.concatenate([s.numbers for s in samples])
        if all(has_f):
            arrays["forces"] = np.concatenate([s.forces for s in samples])
        if all(has_m):
            arrays["molecule"] = np.concatenate([s.molecule for s in samples])
    else:
        arrays["positions"] = np.stack([s.positions for s in samples])
        numbers = np.stack([s.numbers for s in samples])
        arrays["numbers"] = numbers[0] if np.all(numbers == numbers[0]) else numbers
        if all(has_f):
            arrays["forces"] = np.stack([s.forces for s in samples])
        if all(has_m):
            mol = np.stack([s.molecule for s in samples])
            arrays["molecule"] = mol[0] if np.all(mol == mol[0]) else mol
    arrays["cell"] = np.stack([s.cell for s in samples])
    pbc = np.stack([s.pbc for s in samples])
    arrays["pbc"] = pbc[0] if np.all(pbc == pbc[0]) else pbc
    if all(has_e):
        arrays["energy"] = np.array([s.energy for s in samples], dtype=np.float64)

    meta = {
        "format": "maskpot-npz-1",
        "n_frames": F,
        "data_hash": hash_arrays(*(arrays[k] for k in sorted(arrays))),
        "versions": versions(),
    }
    meta.update(metadata or {})
    arrays["units"] = np.array(INTERNAL_UNITS)
    arrays["metadata"] = np.array(json.dumps(meta, sort_keys=True, default=str))
    with atomic_path(path) as tmp:
        # Through a file handle so numpy does not append ".npz" to the temporary name.
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def read_npz(path: PathLike, index: Index = None, units: Optional[str] = None) -> List[Sample]:
    """Read a ``.npz``: maskpot's format, or rMD17 (recognised by its ``nuclear_charges`` key).

    ``units`` (``"<length>,<energy>"``) overrides the file's ``units`` key (with a warning when
    they differ) — for files whose stored units are wrong.
    """
    path = Path(path)
    data = _load_npz(path)
    if "nuclear_charges" in data and "coords" in data:
        return _rmd17_from_arrays(data, path, index, units)
    return _maskpot_from_arrays(data, path, index, units)


def _maskpot_from_arrays(
    data: Dict[str, np.ndarray], path: Path, index: Index, units: Optional[str] = None
) -> List[Sample]:
    for key in ("positions", "numbers", "cell", "pbc") + (("units",) if units is None else ()):
        require_key(data, key, path)
    if units is None:
        lf, ef = parse_units(data["units"], path)
    else:
        lf, ef = parse_units(units, path, "units (argument)")
        if "units" in data and parse_units(data["units"], path) != (lf, ef):
            import warnings

            warnings.warn(f"{path}: key 'units': the file says {str(data['units'])!r}; reading it as {units!r} "
                          "as requested", stacklevel=3)
    meta: Dict[str, Any] = {}
    if "metadata" in data:
        try:
            meta = json.loads(str(data["metadata"]))
        except ValueError as exc:
            raise DataValidationError(path, "metadata", f"expected a JSON string, found: {exc}") from exc

    pos = np.asarray(data["positions"], dtype=np.float64)
    ragged = "n_atoms" in data
    if ragged:
        n_atoms = check_shape(data["n_atoms"], (None,), "n_atoms", path).astype(np.int64)
        F, total = len(n_atoms), int(n_atoms.sum())
        check_shape(pos, (total, 3), "positions", path)
        check_shape(data["numbers"], (total,), "numbers", path)
        offsets = np.concatenate([[0], np.cumsum(n_atoms)])
        per_atom = lambda a, f: a[offsets[f] : offsets[f + 1]]  # noqa: E731
    else:
        check_shape(pos, (None, None, 3), "positions", path)
        F, N = pos.shape[:2]
        numbers = np.asarray(data["numbers"])
        if numbers.ndim == 1:
            check_shape(numbers, (N,), "numbers", path)
        else:
            check_shape(numbers, (F, N), "numbers", path)
    check_finite(pos, "positions", path)
    check_numbers(data["numbers"], "numbers", path)

    cell = np.asarray(data["cell"], dtype=np.float64)
    cell = cell[None] if cell.shape == (3, 3) else cell
    if cell.shape[0] == 1 and F > 1:
        cell = np.broadcast_to(cell, (F, 3, 3))
    check_shape(cell, (F, 3, 3), "cell", path)
    pbc = np.asarray(data["pbc"]).astype(bool)
    if pbc.shape == (3,):
        pbc = np.broadcast_to(pbc, (F, 3))
    check_shape(pbc, (F, 3), "pbc", path)

    energy = forces = molecule = None
    if "energy" in data:
        energy = check_shape(np.asarray(data["energy"], dtype=np.float64).reshape(-1), (F,), "energy", path)
        check_finite(energy, "energy", path)
    if "forces" in data:
        forces = np.asarray(data["forces"], dtype=np.float64)
        check_shape(forces, pos.shape, "forces", path)
        check_finite(forces, "forces", path)
    if "molecule" in data:
        molecule = np.asarray(data["molecule"])
        if ragged:
            check_shape(molecule, (pos.shape[0],), "molecule", path)
        elif molecule.ndim == 1:
            check_shape(molecule, (pos.shape[1],), "molecule", path)
        else:
            check_shape(molecule, pos.shape[:2], "molecule", path)

    samples = []
    for f in _select(F, index, path).tolist():
        if ragged:
            p, z = per_atom(pos, f), per_atom(data["numbers"], f)
            fo = None if forces is None else per_atom(forces, f)
            mo = None if molecule is None else per_atom(molecule, f)
        else:
            p = pos[f]
            z = data["numbers"] if data["numbers"].ndim == 1 else data["numbers"][f]
            fo = None if forces is None else forces[f]
            mo = None if molecule is None else (molecule if molecule.ndim == 1 else molecule[f])
        samples.append(
            Sample(
                positions=p * lf,
                numbers=z,
                cell=cell[f] * lf,
                pbc=pbc[f],
                energy=None if energy is None else energy[f] * ef,
                forces=None if fo is None else fo * (ef / lf),
                molecule=mo,
                info={"source": str(path), "frame": int(f), "metadata": meta},
            )
        )
    return samples


# --------------------------------------------------------------------------------------------
# rMD17
# --------------------------------------------------------------------------------------------

#: kcal/mol -> eV, from ase.units.
KCAL_PER_MOL = units.kcal / units.mol


#: Units of the revised-MD17 files.
RMD17_UNITS = "angstrom,kcal/mol"


def read_rmd17(path: PathLike, index: Index = None, units: Optional[str] = None) -> List[Sample]:
    """Read a revised-MD17 ``.npz`` (``nuclear_charges`` [N], ``coords`` [F,N,3] Å,
    ``energies`` [F] kcal/mol, ``forces`` [F,N,3] kcal/mol/Å) into eV and eV/Å. Open boundaries.

    ``units`` overrides the rMD17 units (``"angstrom,kcal/mol"``) for files in the rMD17 layout
    that hold other units."""
    path = Path(path)
    return _rmd17_from_arrays(_load_npz(path), path, index, units)


def _rmd17_from_arrays(
    data: Dict[str, np.ndarray], path: Path, index: Index, units: Optional[str] = None
) -> List[Sample]:
    lf, ef = parse_units(RMD17_UNITS if units is None else units, path, "units" if units is None else "units (argument)")
    for key in ("nuclear_charges", "coords", "energies", "forces"):
        require_key(data, key, path)
    z = check_shape(data["nuclear_charges"], (None,), "nuclear_charges", path).astype(np.int64)
    N = z.shape[0]
    coords = check_shape(data["coords"], (None, N, 3), "coords", path)
    F = coords.shape[0]
    energies = check_shape(data["energies"], (F,), "energies", path)
    forces = check_shape(data["forces"], (F, N, 3), "forces", path)
    check_numbers(z, "nuclear_charges", path)
    sel = _select(F, index, path)
    coords, energies, forces = coords[sel], energies[sel], forces[sel]
    # Check only the selected frames: reading 5 frames of a big file stays cheap.
    for key, arr in (("coords", coords), ("energies", energies), ("forces", forces)):
        check_finite(arr, key, path)
    old = data.get("old_indices")
    samples = []
    for k, f in enumerate(sel.tolist()):
        info: Dict[str, Any] = {"source": str(path), "frame": int(f)}
        if old is not None and old.shape == (F,):
            info["old_index"] = int(old[f])
        samples.append(
            Sample(
                positions=coords[k] * lf,
                numbers=z,
                energy=float(energies[k]) * ef,
                forces=forces[k] * (ef / lf),
                info=info,
            )
        )
    return samples


# --------------------------------------------------------------------------------------------
# DeePMD raw/npy
# --------------------------------------------------------------------------------------------


def _deepmd_systems(path: Path) -> List[Path]:
    if (path / "type.raw").is_file():
        return [path]
    systems = sorted({p.parent for p in path.rglob("type.raw")}, key=_natural_key)
    if not systems:
        raise DataValidationError(path, "type.raw", "expected a DeePMD system folder (with type.raw) or a folder of them, found none")
    return systems


def _read_deepmd_system(system: Path, lf: float = 1.0, ef: float = 1.0) -> List[Sample]:
    type_file, map_file = system / "type.raw", system / "type_map.raw"
    types = np.loadtxt(type_file, dtype=np.int64, ndmin=1).reshape(-1)
    if not map_file.is_file():
        # Without type_map.raw the element of each type is unknown: refuse to guess.
        raise DataValidationError(map_file, "type_map.raw", "expected element symbols (one per line), found no file")
    symbols = map_file.read_text().split()
    type_z = _symbols_to_numbers(symbols, map_file, "type_map.raw")
    if types.size == 0 or types.min() < 0 or types.max() >= len(type_z):
        raise DataValidationError(
            type_file, "type.raw", f"expected type indices in 0..{len(type_z) - 1} (from type_map.raw {symbols}), found "
            f"{sorted(set(types.tolist()))}"
        )
    numbers = type_z[types]
    N = len(numbers)
    periodic = not (system / "nopbc").exists()
    sets = sorted((p for p in system.glob("set.*") if p.is_dir()), key=_natural_key)
    if not sets:
        raise DataValidationError(system, "set.*", "expected at least one set.* folder, found none")

    samples: List[Sample] = []
    for set_dir in sets:
        def load(name: str, required: bool) -> Optional[np.ndarray]:
            f = set_dir / f"{name}.npy"
            if not f.is_file():
                if required:
                    raise DataValidationError(f, name, f"expected {name}.npy in {set_dir.name}, found no file")
                return None
            return np.load(f, allow_pickle=False).astype(np.float64)

        coord = load("coord", True)
        F = coord.shape[0] if coord.ndim >= 1 else 0
        coord = check_shape(coord.reshape(F, -1), (F, 3 * N), "coord", set_dir / "coord.npy").reshape(F, N, 3)
        check_finite(coord, "coord", set_dir / "coord.npy")
        box = load("box", periodic)
        if box is not None:
            box = check_shape(box.reshape(F, -1), (F, 9), "box", set_dir / "box.npy").reshape(F, 3, 3)
            check_finite(box, "box", set_dir / "box.npy")
        energy = load("energy", False)
        if energy is not None:
            energy = check_shape(energy.reshape(-1), (F,), "energy", set_dir / "energy.npy")
            check_finite(energy, "energy", set_dir / "energy.npy")
        force = load("force", False)
        if force is not None:
            force = check_shape(force.reshape(F, -1), (F, 3 * N), "force", set_dir / "force.npy").reshape(F, N, 3)
            check_finite(force, "force", set_dir / "force.npy")
        for f in range(F):
            samples.append(
                Sample(
                    positions=coord[f] * lf,
                    numbers=numbers,
                    cell=np.zeros((3, 3)) if box is None else box[f] * lf,
                    pbc=np.full(3, box is not None),
                    energy=None if energy is None else energy[f] * ef,
                    forces=None if force is None else force[f] * (ef / lf),
                    info={"source": str(system), "set": set_dir.name, "set_frame": f},
                )
            )
    return samples


def read_deepmd(path: PathLike, index: Index = None, units: Optional[str] = None) -> List[Sample]:
    """Read a DeePMD raw/npy system (Å, eV, eV/Å), or a folder holding several (data_0, ...).

    Elements come from ``type_map.raw`` (required: we never guess), all ``set.*`` folders are
    concatenated in natural order, systems likewise. ``info["frame"]`` is the running index over
    everything read from ``path``. A ``nopbc`` marker file means open boundaries (no box.npy).
    ``units`` (``"<length>,<energy>"``) overrides DeePMD's Å / eV.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such DeePMD folder")
    lf, ef = (1.0, 1.0) if units is None else parse_units(units, path, "units (argument)")
    samples = [s for system in _deepmd_systems(path) for s in _read_deepmd_system(system, lf, ef)]
    for i, s in enumerate(samples):
        s.info["frame"] = i
    return [samples[i] for i in _select(len(samples), index, path).tolist()]


# --------------------------------------------------------------------------------------------
# RuNNer / n2p2 input.data
# --------------------------------------------------------------------------------------------


def read_runner(path: PathLike, index: Index = None, units: Optional[str] = None) -> List[Sample]:
    """Read a RuNNer / n2p2 ``input.data`` file (Bohr, Hartree, Hartree/Bohr) into Å, eV, eV/Å.

    Frame grammar: ``begin``, optional ``comment ...``, zero or three ``lattice ax ay az`` lines,
    ``atom x y z element charge atomic_energy fx fy fz`` lines, ``energy E``, ``charge Q``,
    ``end``. Three lattice lines mean fully periodic. Atomic charges go to
    ``info["atomic_charges"]`` (e), the total charge to ``info["charge"]``. ``units``
    (``"<length>,<energy>"``) overrides RuNNer's Bohr / Hartree.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    length, energy_unit = parse_units("bohr,hartree" if units is None else units, path,
                                      "units" if units is None else "units (argument)")
    frames: List[Dict[str, Any]] = []
    cur: Optional[Dict[str, Any]] = None
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            tok = line.split()
            if not tok:
                continue
            key, src = tok[0].lower(), f"{path}:{lineno}"
            if key == "begin":
                if cur is not None:
                    raise DataValidationError(src, "begin", "expected 'end' before a new 'begin', found 'begin'")
                cur = {"lattice": [], "atoms": [], "energy": None, "charge": 0.0, "comment": "", "line": lineno}
                continue
            if cur is None:
                raise DataValidationError(src, key, f"expected 'begin', found {key!r} outside a frame")
            if key == "comment":
                cur["comment"] = line.strip()[len("comment"):].strip()
            elif key == "lattice":
                if len(tok) != 4:
                    raise DataValidationError(src, "lattice", f"expected 3 numbers, found {len(tok) - 1}")
                cur["lattice"].append([float(x) for x in tok[1:4]])
            elif key == "atom":
                if len(tok) != 10:
                    raise DataValidationError(
                        src, "atom", f"expected 'atom x y z element charge energy fx fy fz' (10 fields), found {len(tok)}"
                    )
                cur["atoms"].append(tok[1:10])
            elif key == "energy":
                cur["energy"] = float(tok[1])
            elif key == "charge":
                cur["charge"] = float(tok[1])
            elif key == "end":
                if not cur["atoms"]:
                    raise DataValidationError(src, "atom", "expected at least one atom line in the frame, found none")
                if len(cur["lattice"]) not in (0, 3):
                    raise DataValidationError(src, "lattice", f"expected 0 or 3 lattice lines, found {len(cur['lattice'])}")
                frames.append(cur)
                cur = None
            else:
                raise DataValidationError(src, key, "expected one of begin/comment/lattice/atom/energy/charge/end")
    if cur is not None:
        raise DataValidationError(f"{path}:{cur['line']}", "end", "expected 'end' for the last frame, found end of file")
    if not frames:
        raise DataValidationError(path, "begin", "expected at least one frame, found none")

    samples = []
    for f in _select(len(frames), index, path).tolist():
        fr = frames[f]
        src = f"{path}:{fr['line']} [frame {f}]"
        atoms = np.array(fr["atoms"], dtype=object)
        numbers = _symbols_to_numbers(atoms[:, 3], src, "atom")
        try:
            num = atoms[:, [0, 1, 2, 4, 6, 7, 8]].astype(np.float64)
        except ValueError as exc:
            raise DataValidationError(src, "atom", f"expected numeric coordinates/charges/forces, found: {exc}") from exc
        check_finite(num, "atom", src)
        if fr["energy"] is None:
            raise DataValidationError(src, "energy", "expected an 'energy' line in the frame, found none")
        check_finite(np.asarray(fr["energy"]), "energy", src)
        periodic = len(fr["lattice"]) == 3
        samples.append(
            Sample(
                positions=num[:, 0:3] * length,
                numbers=numbers,
                cell=np.asarray(fr["lattice"]) * length if periodic else np.zeros((3, 3)),
                pbc=np.full(3, periodic),
                energy=fr["energy"] * energy_unit,
                forces=num[:, 4:7] * (energy_unit / length),
                info={
                    "source": str(path),
                    "frame": int(f),
                    "comment": fr["comment"],
                    "charge": fr["charge"],
                    "atomic_charges": num[:, 3].copy(),
                },
            )
        )
    return samples


# --------------------------------------------------------------------------------------------
# dispatcher
# --------------------------------------------------------------------------------------------


def detect_format(path: PathLike) -> str:
    """Pick a format name from the path (see :data:`FORMATS`); errors say what was found."""
    path = Path(path)
    if path.is_dir():
        if (path / "type.raw").is_file() or any(path.rglob("type.raw")):
            return "deepmd"
        raise DataValidationError(path, "<format>", "expected a DeePMD folder (type.raw inside), found a folder without one")
    suffix = path.suffix.lower()
    if suffix in (".xyz", ".extxyz"):
        return "extxyz"
    if suffix == ".npz":
        with _open_npz(path) as z:
            keys = set(z.files)
        return "rmd17" if {"nuclear_charges", "coords"} <= keys else "npz"
    if path.name == "input.data" or suffix == ".data":
        return "runner"
    raise DataValidationError(
        path, "<format>", "expected .xyz/.extxyz, .npz, input.data or a DeePMD folder; pass format= explicitly"
    )


def read_dataset(
    path: PathLike,
    format: Optional[str] = None,
    index: Index = None,
    *,
    validate: bool = True,
    require_forces: bool = False,
    allowed_species: Optional[Sequence[int]] = None,
    cutoff: Optional[float] = None,
    min_distance: Optional[float] = MIN_DISTANCE,
    plausibility: bool = True,
    strict: bool = False,
    units: Optional[str] = None,
    **kw: Any,
) -> List[Sample]:
    """Read any supported file/folder into a list of :class:`Sample` (Å, eV, eV/Å).

    Args:
        path: file or folder.
        format: one of :data:`FORMATS`; detected from the path when None.
        index: frame selection (None = all; int; slice; list of ints).
        validate: run :func:`~maskpot.data.validate.validate_samples` on the result.
        require_forces: with ``validate``, every frame must have forces.
        allowed_species: with ``validate``, atomic numbers must be among these.
        cutoff: with ``validate``, check cutoff (Å) <= half the shortest cell width.
        min_distance: with ``validate``, two atoms closer than this (Å) in any frame are an error
            naming the file, frame and atoms (None/0: no check).
        plausibility: with ``validate``, warn when labels look like wrong units
            (:func:`~maskpot.data.validate.check_plausibility`: force RMS, energy magnitudes,
            per-atom energy spread).
        strict: make those plausibility problems errors instead of warnings.
        units: explicit ``"<length>,<energy>"`` of the file, overriding what the format or the
            file says (e.g. ``"angstrom,kcal/mol"`` for rMD17 arrays mislabelled as eV).
        **kw: passed to the format's reader (e.g. ``energy_key`` for extxyz).
    """
    fmt = format or detect_format(path)
    readers = {
        "extxyz": read_xyz,
        "xyz": read_xyz,
        "npz": read_npz,
        "rmd17": read_rmd17,
        "deepmd": read_deepmd,
        "runner": read_runner,
    }
    if fmt not in readers:
        raise ValueError(f"{path}: unknown format {fmt!r}; expected one of {FORMATS}")
    if units is not None:
        kw["units"] = units
    samples = readers[fmt](path, index=index, **kw)
    if validate:
        validate_samples(samples, path, require_forces=require_forces, allowed_species=allowed_species, cutoff=cutoff,
                         min_distance=min_distance)
        if plausibility:
            check_plausibility(samples, path, strict=strict)
    return samples


def write_dataset(path: PathLike, samples: Sequence[Sample], format: Optional[str] = None, **kw: Any) -> None:
    """Write samples as extxyz (``.xyz``/``.extxyz``) or maskpot npz (``.npz``), atomically."""
    path = Path(path)
    fmt = format or {".xyz": "extxyz", ".extxyz": "extxyz", ".npz": "npz"}.get(path.suffix.lower())
    if fmt in ("extxyz", "xyz"):
        write_xyz(path, samples, **kw)
    elif fmt == "npz":
        write_npz(path, samples, **kw)
    else:
        raise ValueError(f"{path}: cannot write format {fmt!r}; expected a .xyz/.extxyz or .npz path (or format=)")


def write_unlabelled_pool(
    path: PathLike,
    sources: Sequence[Tuple[PathLike, Union[None, Sequence[int], Callable[[int], Sequence[int]]]]],
    metadata: Optional[Dict[str, Any]] = None,
) -> int:
    """Write frames of one or more data files, energies and forces dropped, to one maskpot
    ``.npz`` (the input of masked or denoising pretraining; atomically).

    ``sources``: ``(file, indices)`` pairs, ``indices`` the frames of that file to take, in that
    order: a sequence, None (every frame) or a function of the file's frame count that returns
    them (for selections that depend on it, e.g. "all but the validation split"); each file is
    read once. Returns the number of frames written."""
    frames: List[Sample] = []
    used: List[Dict[str, Any]] = []
    cache: Dict[str, List[Sample]] = {}
    for file, indices in sources:
        if str(file) not in cache:
            cache[str(file)] = read_dataset(file)
        samples = cache[str(file)]
        if callable(indices):
            indices = indices(len(samples))
        take = range(len(samples)) if indices is None else [int(i) for i in indices]
        bad = [i for i in take if not 0 <= i < len(samples)]
        if bad:
            raise ValueError(f"{file}: frame indices {bad[:5]} out of range (file has {len(samples)} frames)")
        frames += [samples[i].copy(energy=None, forces=None) for i in take]
        used.append({"file": str(file), "frames": len(take)})
    if not frames:
        raise ValueError(f"{path}: write_unlabelled_pool: no frames to write")
    write_npz(path, frames, metadata={**(metadata or {}), "labels": "removed (pretraining input)", "sources": used})
    return len(frames)
