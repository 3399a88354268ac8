"""Exponential moving average (EMA) of model weights.

``shadow = decay_t * shadow + (1 - decay_t) * param`` after every optimiser step, with the
usual warm-up ``decay_t = min(decay, (1 + n) / (10 + n))`` (n = updates so far) so early,
random weights are forgotten quickly. Floating buffers (normalisation constants) are copied,
not averaged. :meth:`state_dict` is a complete model ``state_dict``: it loads directly into a
model of the same config (that is what checkpoints store as ``ema_state``).
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator

import torch


class EMA:
    """EMA of the floating-point parameters of ``model`` (trainable or not)."""

    def __init__(self, model: torch.nn.Module, decay: float, use_warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA: decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.use_warmup = bool(use_warmup)
        self.num_updates = 0
        self.shadow: Dict[str, torch.Tensor] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._param_names = {name for name, _ in model.named_parameters()}

    def current_decay(self) -> float:
        if not self.use_warmup:
            return self.decay
        return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Fold the current weights of ``model`` into the average."""
        d = self.current_decay()
        for name, value in model.state_dict().items():
            shadow = self.shadow[name]
            if name in self._param_names and value.is_floating_point():
                shadow.mul_(d).add_(value.detach(), alpha=1.0 - d)
            else:
                shadow.copy_(value)
        self.num_updates += 1

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """The averaged weights as a model ``state_dict`` (copies)."""
        return {k: v.clone() for k, v in self.shadow.items()}

    def extra_state(self) -> Dict[str, float]:
        return {"decay": self.decay, "num_updates": self.num_updates, "use_warmup": self.use_warmup}

    def load_state_dict(self, state: Dict[str, torch.Tensor], extra: Dict[str, float] | None = None) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:5]}")
        for k in self.shadow:
            self.shadow[k].copy_(state[k])
        if extra:
            self.num_updates = int(extra.get("num_updates", 0))

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        model.load_state_dict(self.shadow)

    @contextlib.contextmanager
    def average_weights(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """Temporarily load the EMA weights into ``model`` (e.g. for validation), then restore."""
        backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.copy_to(model)
        try:
            yield model
        finally:
            model.load_state_dict(backup)
