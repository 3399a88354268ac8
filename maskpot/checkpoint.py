"""Checkpoint files: one format for pretraining, fine-tuning, resume and export.

A neutral module (torch and maskpot.utils; the model registry only when a model is rebuilt):
training writes checkpoints, deploy reads them, and deploy never imports maskpot.training.

A checkpoint is a ``torch.save``d dict of tensors and plain Python values only, so it loads
with ``torch.load(..., weights_only=True)`` (no pickled code is ever executed):

================  =====================================================================
key               content
================  =====================================================================
format            "maskpot-checkpoint"
format_version    1
model_config      dict for ``maskpot.models.build_model`` (name, species, cutoff, ...)
model_state       model ``state_dict`` (includes normalisation buffers: E0s, scales)
ema_state         ``state_dict`` of the EMA weights, or None
task              "mask" | "denoise" | "energy_force"
train_config      the resolved training config (dict)
data_hash         fingerprint of the training data (str)
periodicity       training frames "periodic" | "open" | "mixed" (engines check their use)
versions          package versions (dict)
metrics           last/best validation metrics (dict of floats)
(resume only)     optimizer_state, scheduler_state, ema_extra, epoch, step, rng_state, ...
================  =====================================================================
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import torch

from maskpot.utils import PathLike, atomic_path, export_metadata_text

FORMAT = "maskpot-checkpoint"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "format_version", "model_config", "model_state")


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or lacks what the caller needs."""


def save_checkpoint(path: PathLike, payload: Dict[str, Any]) -> None:
    """Write ``payload`` (plus format tags) atomically: temporary file, then rename."""
    data = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise CheckpointError(f"save_checkpoint({path}): payload lacks key(s) {missing}")
    with atomic_path(path) as tmp:
        torch.save(data, tmp)


def load_checkpoint(path: PathLike, map_location: str = "cpu") -> Dict[str, Any]:
    """Load and validate a checkpoint safely (``weights_only=True``).

    Raises:
        CheckpointError: naming the file and the missing/invalid key.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: file not found")
    _refuse_torchscript(path)
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt file, or a pickle that needs code execution
        text = str(exc)
        if "WeightsUnpickler error:" in text:  # keep torch's reason, not its advice to load unsafely
            reason = text.split("WeightsUnpickler error:")[-1].strip().split(" Please use")[0]
            text = "it holds Python objects that a safe load refuses: " + reason
        else:
            text = f"{type(exc).__name__}: {text.strip().splitlines()[0] if text.strip() else ''}"
        text = " ".join(text.split())
        raise CheckpointError(f"checkpoint {path}: cannot be read safely as a maskpot checkpoint ({text})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint {path}: expected a dict, found {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: key 'format' is {data.get('format')!r}, expected {FORMAT!r}")
    for key in REQUIRED_KEYS:
        if key not in data:
            raise CheckpointError(f"checkpoint {path}: missing key '{key}'")
    if not isinstance(data["model_config"], dict) or "name" not in data["model_config"]:
        raise CheckpointError(f"checkpoint {path}: key 'model_config' must be a dict with a 'name'")
    return data


def _refuse_torchscript(path: Path) -> None:
    """A TorchScript archive (e.g. a maskpot export file) is not a checkpoint: say which is which."""
    import json
    import zipfile

    if not zipfile.is_zipfile(path):
        return
    try:
        text = export_metadata_text(path)
        with zipfile.ZipFile(path) as zf:
            scripted = text is not None or any("/code/" in n or n.endswith("/constants.pkl") for n in zf.namelist())
        meta = json.loads(text) if text is not None else {}
    except (zipfile.BadZipFile, OSError, ValueError, KeyError):
        return  # let torch.load report the damage
    if not scripted:
        return
    if isinstance(meta, dict) and meta.get("format") == "maskpot-export":
        src = meta.get("checkpoint")
        hint = f" (this one was exported from {src})" if src else ""
        raise CheckpointError(
            f"checkpoint {path}: this is a maskpot export file (TorchScript for MD engines), not a training "
            f"checkpoint; give the checkpoint it was exported from, best.pt or last.pt of the run folder{hint}"
        )
    raise CheckpointError(f"checkpoint {path}: this is a TorchScript archive, not a maskpot training checkpoint (best.pt / last.pt)")


def model_from_checkpoint(path: PathLike, use_ema: bool = True, map_location: str = "cpu") -> torch.nn.Module:
    """Rebuild the model of a checkpoint with its weights (EMA weights when present and asked).

    The model is returned in eval mode, in the dtype of its config.
    """
    from maskpot.models import build_model

    data = load_checkpoint(path, map_location=map_location)
    model = build_model(dict(data["model_config"]))
    state = data["ema_state"] if use_ema and data.get("ema_state") is not None else data["model_state"]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path}: weights do not match model_config ({exc})") from exc
    return model.eval()
