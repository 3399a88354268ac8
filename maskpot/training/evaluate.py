"""Evaluation of a model on a list of samples: objective loss and energy/force/vector metrics.

Metrics come from :class:`maskpot.training.objectives.MetricAccumulator` (sums and counts, so
data-parallel ranks add them with one all-reduce): ``loss`` (frame-weighted mean),
``energy_{mae,rmse}_meV[_per_atom]``, ``force_{mae,rmse}_meV_per_A`` (per component),
``mean_cosine`` (mask), ``vector_{mse,rmse}`` (denoise), ``n_frames``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch

from maskpot.data.sample import Sample, collate
from maskpot.training.distributed import DistContext, shard


# Per-sample rng tag for validation/test transforms (training uses [seed, epoch, index]).
_EVAL_TAG = (7919, 1)


def sample_rng(seed: int, epoch: Optional[int], index: int) -> np.random.Generator:
    """The rng of one frame's transform: depends on (seed, epoch, frame index) only.

    That makes masks fresh every epoch, identical on resume, and independent of how frames are
    batched or sharded over data-parallel ranks. ``epoch=None`` gives the fixed evaluation rng.
    """
    if epoch is None:
        return np.random.default_rng([int(seed), *_EVAL_TAG, int(index)])
    return np.random.default_rng([int(seed), int(epoch), int(index)])


def make_batch(
    samples: Sequence[Sample],
    indices: Sequence[int],
    objective: Any,
    seed: int,
    epoch: Optional[int],
    dtype: torch.dtype,
    device: Optional[torch.device] = None,
) -> Dict[str, torch.Tensor]:
    """Transform frames ``indices`` (fresh per (seed, epoch, index) rng) and collate them."""
    transformed: List[Sample] = []
    extras: Dict[str, List[np.ndarray]] = {}
    for i in indices:
        s, ex = objective.transform(samples[int(i)], sample_rng(seed, epoch, int(i)))
        transformed.append(s)
        for k, v in (ex or {}).items():
            extras.setdefault(k, []).append(np.asarray(v))
    return collate(transformed, dtype=dtype, device=device, extra=extras or None)


def evaluate(
    model: torch.nn.Module,
    samples: Sequence[Sample],
    objective: Any = None,
    *,
    batch_size: int = 16,
    dtype: torch.dtype = torch.float32,
    device: Optional[torch.device] = None,
    seed: int = 0,
    ctx: Optional[DistContext] = None,
    progress: Optional[Callable[[Iterable], Iterable]] = None,
) -> Dict[str, float]:
    """Metrics of ``model`` on ``samples`` (loss only when an ``objective`` is given).

    With an objective, frames go through its transform with the fixed evaluation rng (the same
    masks / noise every time, so epochs are comparable). Without one, frames are used as they
    are (energy/force errors only). Under data parallelism every rank evaluates its shard and
    the sums are all-reduced: every rank returns the same numbers.
    """
    from maskpot.training.objectives import MetricAccumulator

    ctx = ctx or DistContext()
    was_training = model.training
    model.eval()
    acc = objective.metric_accumulator() if objective is not None else MetricAccumulator()
    idx = shard(np.arange(len(samples)), ctx.rank, ctx.world_size)
    chunks = [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
    if progress is not None:
        chunks = progress(chunks)
    needs_grad = getattr(model, "kind", "energy") == "energy"
    try:
        for chunk in chunks:
            if objective is not None:
                batch = make_batch(samples, chunk, objective, seed, None, dtype, device)
            else:
                batch = collate([samples[int(i)] for i in chunk], dtype=dtype, device=device)
            with torch.set_grad_enabled(needs_grad):
                out = model(batch)
            out = {k: v.detach() for k, v in out.items()}
            loss = None
            if objective is not None:
                with torch.no_grad():
                    loss, _ = objective.loss(out, batch)
            acc.update(out, batch, loss)
    finally:
        model.train(was_training)
    state = acc.state()
    if ctx.enabled:
        import torch.distributed as dist

        state = state.cpu()
        dist.all_reduce(state, op=dist.ReduceOp.SUM)
    acc.load_state(state)
    res = acc.compute()
    res["n_frames"] = int(res.pop("n_graphs", 0))
    return res
