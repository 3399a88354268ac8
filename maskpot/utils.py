"""Small shared helpers: atomic writes, seeding, provenance (versions, hashes)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import random
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Union

import numpy as np

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path in the destination folder; rename it onto ``path`` on success.

    A crash or exception leaves no half-written file at ``path`` (the temporary is removed).
    The temporary keeps the destination's suffix so that libraries that dispatch on it
    (``np.savez``, ``torch.jit.save``, ``ase.io.write``) behave as for the real name.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:  # a parent is a regular file
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), path.parent)
        raise NotADirectoryError(f"cannot write {path}: {blocker} is a regular file, not a folder") from exc
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates the file 0600; give it the mode a normal write would: the existing file's,
    # else 0666 & ~umask.
    try:
        mode = path.stat().st_mode & 0o7777
    except OSError:
        mode = 0o666 & ~_umask()
    os.chmod(tmp_path, mode)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _umask() -> int:
    """The process umask (from /proc on Linux; elsewhere by setting and restoring it)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def progress_wanted(requested: bool = True) -> bool:
    """Whether to draw progress bars: only when asked and stderr (where tqdm draws) is a terminal
    or a notebook. Redirected to a file or in CI, carriage-return bars would fill the log; the
    trainer logs one line per epoch and the MD runners their own lines instead."""
    if not requested:
        return False
    import sys

    try:
        tty = bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # no stderr, or a closed one
        tty = False
    return tty or "ipykernel" in sys.modules


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: PathLike, obj: Any) -> None:
    """Write JSON (indented, sorted keys) atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def versions() -> Dict[str, str]:
    """Versions of maskpot and its main dependencies, for provenance files."""
    import maskpot

    out = {"maskpot": maskpot.__version__, "python": platform.python_version()}
    for name in ("torch", "numpy", "ase", "openmm", "mdtraj"):
        try:
            mod = __import__(name)
            out[name] = str(getattr(mod, "__version__", getattr(mod, "version", "unknown")))
        except Exception:  # pragma: no cover - optional at provenance time
            out[name] = "not installed"
    return out


def hash_arrays(*arrays: np.ndarray) -> str:
    """SHA-256 (first 16 hex digits) over the bytes of arrays: a data fingerprint."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def replace_marked_block(path: PathLike, begin: str, end: str, text: str) -> bool:
    """Replace what lies between the marker lines ``begin`` and ``end`` of text file ``path``
    (generated tables in READMEs); atomic. Returns False, changing nothing, without both markers."""
    content = Path(path).read_text()
    if begin not in content or end not in content.split(begin, 1)[1]:
        return False
    head, rest = content.split(begin, 1)
    atomic_write_text(path, head + begin + "\n" + text.strip("\n") + "\n" + end + rest.split(end, 1)[1])
    return True


def upsert_marked_block(path: PathLike, begin: str, end: str, text: str) -> None:
    """Replace the marked block of ``path`` (see :func:`replace_marked_block`), or append it with
    its markers when the file or the markers do not exist yet: reruns update one section instead
    of appending copies. Atomic."""
    path = Path(path)
    if path.is_file() and replace_marked_block(path, begin, end, text):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.is_file() else ""
    atomic_write_text(path, old.rstrip("\n") + "\n\n" + begin + "\n" + text.strip("\n") + "\n" + end + "\n")


#: The entry (``<archive>/extra/metadata.json``) that makes a TorchScript or pt2 zip archive a
#: maskpot export file (:mod:`maskpot.deploy.export`).
EXPORT_METADATA_FILE = "metadata.json"


def export_metadata_text(path: PathLike) -> Optional[str]:
    """The ``metadata.json`` text of the export file ``path``, or None when ``path`` is not a zip
    archive or holds no such entry (not an export file: e.g. a checkpoint). Reads the archive's
    index and that entry only, never the model. The one "is this an export file" test of
    maskpot (deploy, checkpoint loading)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as zf:
        names = [n for n in zf.namelist() if n.endswith("/extra/" + EXPORT_METADATA_FILE)]
        return zf.read(names[0]).decode("utf-8") if names else None
