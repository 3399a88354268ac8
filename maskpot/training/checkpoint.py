"""Checkpoint files: the format lives in :mod:`maskpot.checkpoint` (a neutral module that deploy
imports without maskpot.training); re-exported here for the training code and older imports."""

from maskpot.checkpoint import (  # noqa: F401
    FORMAT,
    FORMAT_VERSION,
    REQUIRED_KEYS,
    CheckpointError,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)

__all__ = ["FORMAT", "FORMAT_VERSION", "REQUIRED_KEYS", "CheckpointError", "load_checkpoint",
           "model_from_checkpoint", "save_checkpoint"]
