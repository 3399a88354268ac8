"""Learning-rate schedule: linear warm-up, then cosine decay, reduce-on-plateau or constant.

A small stateful object (not a torch scheduler) so that the learning rate of step ``s`` is a
pure function of ``s`` and the plateau state, which makes resume exact and the state tiny.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional


class LRSchedule:
    """``lr(step)``: the learning rate to use for optimiser step ``step`` (0-based).

    * warm-up: ``base_lr * (step + 1) / warmup_steps`` for the first ``warmup_steps`` steps;
    * ``cosine``: from ``base_lr`` to ``min_lr`` over the remaining steps up to ``total_steps``;
    * ``plateau``: ``base_lr * scale``; :meth:`epoch_end` multiplies ``scale`` by ``factor``
      when the validation loss has not improved for ``patience`` epochs (floor ``min_lr``);
    * ``none``: ``base_lr``.
    """

    def __init__(
        self,
        kind: str,
        base_lr: float,
        total_steps: int,
        warmup_steps: int = 0,
        min_lr: float = 0.0,
        factor: float = 0.5,
        patience: int = 10,
    ) -> None:
        if kind not in ("cosine", "plateau", "none"):
            raise ValueError(f"LRSchedule: unknown kind {kind!r}")
        self.kind = kind
        self.base_lr = float(base_lr)
        self.total_steps = max(int(total_steps), 1)
        self.warmup_steps = max(int(warmup_steps), 0)
        self.min_lr = float(min_lr)
        self.factor = float(factor)
        self.patience = int(patience)
        self.scale = 1.0
        self.best: Optional[float] = None
        self.num_bad = 0

    def lr(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        if self.kind == "cosine":
            span = max(self.total_steps - self.warmup_steps, 1)
            t = min(max(step - self.warmup_steps, 0) / span, 1.0)
            return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))
        if self.kind == "plateau":
            return max(self.base_lr * self.scale, self.min_lr)
        return self.base_lr

    def epoch_end(self, val_loss: float) -> None:
        """Update the plateau state with this epoch's validation loss (no-op for other kinds)."""
        if self.kind != "plateau" or not math.isfinite(val_loss):
            return
        if self.best is None or val_loss < self.best * (1.0 - 1e-4):
            self.best = float(val_loss)
            self.num_bad = 0
        else:
            self.num_bad += 1
            if self.num_bad > self.patience:
                self.scale *= self.factor
                self.num_bad = 0

    def state_dict(self) -> Dict[str, Any]:
        return {"scale": self.scale, "best": self.best, "num_bad": self.num_bad}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.scale = float(state.get("scale", 1.0))
        self.best = state.get("best")
        self.num_bad = int(state.get("num_bad", 0))
