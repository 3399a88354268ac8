"""Checkpoint files: one format for pretraining, fine-tuning, resume and export.

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
versions          package versions (dict)
metrics           last/best validation metrics (dict of floats)
(resume only)     optimizer_state, scheduler_state, ema_extra, epoch, step, rng_state, ...
================  =====================================================================
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import torch

from maskpot.utils import PathLike, atomic_path

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
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt file, or a pickle that needs code execution
        raise CheckpointError(f"checkpoint {path}: cannot be read safely ({exc})") from exc
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
