"""In-memory datasets, batch iteration and deterministic, persisted train/val/test splits."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from maskpot.data.sample import Sample, collate
from maskpot.data.validate import DataValidationError
from maskpot.utils import PathLike, atomic_path, hash_arrays

__all__ = [
    "AtomicDataset",
    "iterate_batches",
    "SPLIT_NAMES",
    "make_splits",
    "save_splits",
    "load_splits",
    "load_or_create_splits",
]

SPLIT_NAMES = ("train", "val", "test")

Sizes = Union[Sequence[Union[int, float]], Mapping[str, Union[int, float]]]


class AtomicDataset:
    """A list of :class:`Sample` (Å, eV, eV/Å) held in memory.

    ``dataset[i]`` returns the stored sample (do not mutate it: use ``sample.copy()``);
    ``dataset[[i, j]]`` / ``dataset[a:b]`` / ``dataset.subset(idx)`` return a new dataset
    sharing the samples.
    """

    def __init__(self, samples: Sequence[Sample], name: str = "") -> None:
        self.samples: List[Sample] = list(samples)
        self.name = name

    @classmethod
    def from_file(cls, path: PathLike, **kw: Any) -> "AtomicDataset":
        """Read any supported format (see :func:`maskpot.data.io.read_dataset`)."""
        from maskpot.data.io import read_dataset

        return cls(read_dataset(path, **kw), name=str(path))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: Any) -> Any:
        if isinstance(idx, (int, np.integer)):
            return self.samples[int(idx)]
        if isinstance(idx, slice):
            return AtomicDataset(self.samples[idx], self.name)
        return self.subset(idx)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def subset(self, indices: Sequence[int]) -> "AtomicDataset":
        """A dataset of the samples at ``indices`` (in that order)."""
        return AtomicDataset([self.samples[int(i)] for i in np.asarray(indices).reshape(-1)], self.name)

    @property
    def species(self) -> List[int]:
        """Sorted atomic numbers present."""
        if not self.samples:
            return []
        return np.unique(np.concatenate([s.numbers for s in self.samples])).tolist()

    @property
    def n_atoms_total(self) -> int:
        return int(sum(s.n_atoms for s in self.samples))

    def data_hash(self) -> str:
        """Fingerprint of positions, numbers, cells and labels (for provenance files)."""
        arrays: List[np.ndarray] = []
        for s in self.samples:
            arrays += [s.positions, s.numbers, s.cell, s.pbc]
            arrays.append(np.array([np.nan if s.energy is None else s.energy]))
            if s.forces is not None:
                arrays.append(s.forces)
        return hash_arrays(*arrays)

    def __repr__(self) -> str:
        return f"AtomicDataset({len(self)} frames, species={self.species}, name={self.name!r})"


def iterate_batches(
    dataset: Union[AtomicDataset, Sequence[Sample]],
    indices: Optional[Sequence[int]] = None,
    batch_size: int = 8,
    shuffle: bool = False,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    drop_last: bool = False,
    device: Optional[torch.device] = None,
) -> Iterator[Dict[str, torch.Tensor]]:
    """Yield :func:`~maskpot.data.sample.collate` batches over ``indices`` (default: all).

    Shuffling uses ``np.random.default_rng(seed)`` only, so the order is reproducible; pass
    ``seed + epoch`` for a different, still reproducible, order each epoch.
    """
    if batch_size < 1:
        raise ValueError(f"iterate_batches: batch_size must be >= 1, got {batch_size}")
    idx = np.arange(len(dataset)) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    if shuffle:
        idx = np.random.default_rng(seed).permutation(idx)
    stop = len(idx) - (len(idx) % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        chunk = idx[start : start + batch_size]
        yield collate([dataset[int(i)] for i in chunk], dtype=dtype, device=device)


# --------------------------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------------------------


def _counts(n: int, sizes: Sizes) -> Dict[str, int]:
    """Resolve fractions or counts into integer counts per split name."""
    if isinstance(sizes, Mapping):
        unknown = set(sizes) - set(SPLIT_NAMES)
        if unknown:
            raise ValueError(f"make_splits: unknown split names {sorted(unknown)}; expected {SPLIT_NAMES}")
        values = [sizes.get(k, 0) for k in SPLIT_NAMES]
    else:
        values = list(sizes) + [0] * (3 - len(sizes))
        if len(values) != 3:
            raise ValueError(f"make_splits: expected up to 3 sizes (train, val, test), got {list(sizes)}")
    if any(v < 0 for v in values):
        raise ValueError(f"make_splits: sizes must be >= 0, got {values}")
    if all(isinstance(v, (int, np.integer)) for v in values):
        counts = [int(v) for v in values]
    else:
        fr = [float(v) for v in values]
        if sum(fr) > 1 + 1e-9:
            raise ValueError(f"make_splits: fractions sum to {sum(fr)} > 1")
        counts = [int(np.floor(f * n + 1e-9)) for f in fr]
        if abs(sum(fr) - 1) < 1e-9:
            # Fractions summing to 1 use every frame: rounding leftovers go to train.
            counts[0] += n - sum(counts)
    if sum(counts) > n:
        raise ValueError(f"make_splits: requested {sum(counts)} frames ({counts}) but only {n} exist")
    return dict(zip(SPLIT_NAMES, counts))


def make_splits(n: int, sizes: Sizes = (0.8, 0.1, 0.1), seed: int = 0) -> Dict[str, np.ndarray]:
    """Random disjoint train/val/test index arrays over ``range(n)``, reproducible from ``seed``.

    Args:
        n: number of frames.
        sizes: fractions (floats, sum <= 1) or counts (ints), as a (train, val, test) sequence or
            a dict with those names; missing entries are 0. Frames not assigned are left out.
        seed: seed of ``np.random.default_rng``.

    Returns:
        ``{"train", "val", "test"}`` -> sorted int64 index arrays.
    """
    counts = _counts(n, sizes)
    perm = np.random.default_rng(seed).permutation(n)
    out, start = {}, 0
    for name in SPLIT_NAMES:
        out[name] = np.sort(perm[start : start + counts[name]]).astype(np.int64)
        start += counts[name]
    return out


def _check_splits(splits: Mapping[str, np.ndarray], n: Optional[int], source: Any) -> Dict[str, np.ndarray]:
    out = {}
    for name in SPLIT_NAMES:
        if name not in splits:
            raise DataValidationError(source, name, f"expected split index arrays {list(SPLIT_NAMES)}, found {sorted(splits)}")
        a = np.asarray(splits[name])
        if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
            raise DataValidationError(source, name, f"expected a 1-D integer array, found shape {a.shape} dtype {a.dtype}")
        a = a.astype(np.int64)
        if a.size and (a.min() < 0 or (n is not None and a.max() >= n)):
            raise DataValidationError(
                source, name, f"expected indices in 0..{'n-1' if n is None else n - 1}, found range {a.min()}..{a.max()}"
            )
        if len(np.unique(a)) != len(a):
            raise DataValidationError(source, name, "expected unique indices, found duplicates")
        out[name] = a
    for i, a in enumerate(SPLIT_NAMES):
        for b in SPLIT_NAMES[i + 1 :]:
            common = np.intersect1d(out[a], out[b])
            if common.size:
                raise DataValidationError(
                    source, f"{a}/{b}", f"expected disjoint splits, found {common.size} shared indices (e.g. {common[:5].tolist()})"
                )
    return out


def save_splits(
    path: PathLike, splits: Mapping[str, np.ndarray], n: int, metadata: Optional[Dict[str, Any]] = None,
    data_hash: Optional[str] = None,
) -> None:
    """Validate and write ``splits`` (plus ``n``, the ``data_hash`` of the frames they index
    — see :meth:`AtomicDataset.data_hash` — and JSON ``metadata``) to an ``.npz``, atomically."""
    checked = _check_splits(splits, n, path)
    arrays: Dict[str, np.ndarray] = dict(checked)
    arrays["n"] = np.array(int(n), dtype=np.int64)
    if data_hash is not None:
        arrays["data_hash"] = np.array(str(data_hash))
    arrays["metadata"] = np.array(json.dumps(metadata or {}, sort_keys=True, default=str))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def load_splits(path: PathLike, n: Optional[int] = None, data_hash: Optional[str] = None) -> Dict[str, np.ndarray]:
    """Load and validate a splits file; if ``n`` is given it must match the stored ``n``.

    If ``data_hash`` is given and the file stores one, they must be equal: splits index the frames
    of one data file, and another file with the same frame count would be split silently wrong
    (test frames of one run being training frames of another). Files without a stored hash
    (written before it was recorded) are accepted with a warning.
    Checks that indices are in range and the splits disjoint; errors name the file and key.
    Returns ``{"train", "val", "test"}`` -> int64 arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such splits file")
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    if "n" not in data:
        raise DataValidationError(path, "n", f"expected the number of frames, found keys {sorted(data)}")
    stored_n = int(data["n"])
    if n is not None and stored_n != n:
        raise DataValidationError(
            path, "n", f"expected splits for {n} frames, found splits for {stored_n} (different dataset?)"
        )
    if data_hash is not None:
        if "data_hash" not in data:
            warnings.warn(f"{path}: key 'data_hash' missing (splits written by an older maskpot): cannot check "
                          "that they belong to this data file", stacklevel=2)
        elif str(data["data_hash"]) != str(data_hash):
            raise DataValidationError(
                path, "data_hash", f"expected splits made for data with hash {data_hash}, found splits for data "
                f"with hash {str(data['data_hash'])}: this splits file belongs to another data file (same "
                f"frame count {stored_n}, different frames)")
    return _check_splits(data, stored_n, path)


def load_or_create_splits(
    path: PathLike, n: int, sizes: Sizes = (0.8, 0.1, 0.1), seed: int = 0, data_hash: Optional[str] = None
) -> Dict[str, np.ndarray]:
    """Reuse ``path`` if it exists (it must be for ``n`` frames and, when given and stored, the same
    ``data_hash``), else make, save (with ``data_hash``) and return splits.

    A file for a different ``n`` is an error rather than silently replaced: overwriting splits
    can leak test frames into training of a resumed or compared run. If the stored seed/sizes
    differ from the requested ones the stored splits are still used, with a warning.
    """
    path = Path(path)
    if path.exists():
        splits = load_splits(path, n, data_hash)
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["metadata"])) if "metadata" in z.files else {}
        requested = {"seed": seed, "counts": _counts(n, sizes)}
        stored = {k: meta.get(k) for k in requested}
        if stored != requested:
            warnings.warn(f"{path}: reusing stored splits {stored} instead of requested {requested}", stacklevel=2)
        return splits
    splits = make_splits(n, sizes, seed)
    save_splits(path, splits, n, metadata={"seed": seed, "counts": _counts(n, sizes), "sizes": sizes},
                data_hash=data_hash)
    return splits
