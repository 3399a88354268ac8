"""Training objectives: masking (cosine), denoising (MSE) and energy/force fitting, plus metrics.

Everything here is plain, differentiable torch on batch dicts (see ``maskpot.data.sample``):

* model output ``out``: ``energy`` [G] eV, ``forces`` [N, 3] eV/Å, optionally ``vectors`` [N, 3];
* batch: ``energy`` [G], ``forces`` [N, 3], ``n_atoms`` [G], and for pretraining the extras from
  :mod:`maskpot.data.transforms` (``mask`` [N], ``target_vectors`` [N, 3], ``target_weight`` [N]).

Losses
------
``cosine_loss`` (masking), two forms over the atoms with weight > 0 of the whole batch:

* ``"global"`` (the paper's equation):
  ``1 - sum_i w_i p_i.t_i / (sqrt(sum_i w_i |p_i|^2) sqrt(sum_i w_i |t_i|^2))``, the cosine between
  the concatenated 3N' vectors of prediction and target;
* ``"mean"`` (what the reference code's training script computes):
  ``1 - sum_i w_i cos(p_i, t_i) / sum_i w_i``.

Both are 0 for a perfect prediction (any positive scale) and 2 for the opposite one.

``denoise_loss``: weighted MSE per component, ``sum_i w_i |p_i - n_i|^2 / (3 sum_i w_i)``.

``energy_force_loss``: ``energy_weight * E_term + force_weight * F_term`` with L1 (paper, force
weight 500) or MSE; ``E_term`` on (predicted - reference) energy per atom by default; ``F_term``
averaged over force components.

Metrics
-------
:class:`MetricAccumulator` keeps *sums and counts* in one float64 tensor, so metrics over many
batches equal the metrics on their concatenation, and DDP ranks combine with one all-reduce::

    acc = objective.metric_accumulator()
    for batch in loader: acc.update(model(batch), batch)
    state = acc.state(); torch.distributed.all_reduce(state); acc.load_state(state)
    metrics = acc.compute()

Units: energy MAE/RMSE in meV (per frame) and meV/atom; force MAE/RMSE per Cartesian component
in meV/Å (the usual convention of MACE / nequip).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch

from maskpot.data.transforms import (
    MASK_KEY,
    NOISE_VECTORS_KEY,
    NOISE_WEIGHT_KEY,
    TARGET_VECTORS_KEY,
    TARGET_WEIGHT_KEY,
    TRANSFORM_CONFIG_KEYS,
    Transform,
    build_transform,
)

__all__ = [
    "COSINE_FORMS",
    "LOSS_KINDS",
    "TASKS",
    "OBJECTIVE_CONFIG_KEYS",
    "cosine_loss",
    "mean_cosine",
    "denoise_loss",
    "position_loss",
    "energy_force_loss",
    "energy_force_metrics",
    "MetricAccumulator",
    "Objective",
    "build_objective",
]

Tensor = torch.Tensor
Batch = Mapping[str, Tensor]

COSINE_FORMS = ("global", "mean")
LOSS_KINDS = ("l1", "mse")
TASKS = ("mask", "mask_position", "denoise", "joint", "energy_force")

#: Every config key :func:`build_objective` accepts (anything else is a ValueError).
OBJECTIVE_CONFIG_KEYS: Tuple[str, ...] = TRANSFORM_CONFIG_KEYS + (
    "cosine_form",
    "use_vector_head",
    "energy_weight",
    "force_weight",
    "loss_kind",
    "per_atom_energy",
    "radius_weight",
    "mask_weight",
    "denoise_weight",
)

_EPS = 1e-8


# --------------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------------
def _weights(pred: Tensor, target: Tensor, weight: Optional[Tensor], name: str) -> Tensor:
    if pred.dim() != 2 or pred.shape[-1] != 3 or pred.shape != target.shape:
        raise ValueError(
            f"{name}: expected pred and target of shape [N, 3], got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if weight is None:
        return torch.ones(pred.shape[0], dtype=pred.dtype, device=pred.device)
    if weight.shape != pred.shape[:1]:
        raise ValueError(f"{name}: expected weight of shape [{pred.shape[0]}], got {tuple(weight.shape)}")
    return weight.to(pred.dtype)


def cosine_loss(
    pred: Tensor, target: Tensor, weight: Optional[Tensor] = None, form: str = "global", eps: float = _EPS
) -> Tensor:
    """Masking loss: 1 - cosine similarity between predicted and target vectors.

    Args:
        pred: [N, 3] predicted vectors (e.g. the model's ``forces`` or ``vectors`` output).
        target: [N, 3] target vectors (unit vectors from :class:`~maskpot.data.transforms.MaskWater`).
        weight: [N] per-atom weights (0/1 flags); ``None`` = all atoms.
        form: ``"global"`` (paper's equation, one cosine over all flagged atoms of the batch) or
            ``"mean"`` (mean of per-atom cosines).
        eps: floor of the norm products (zero vectors give cosine 0 and finite gradients).

    Returns:
        Scalar tensor in [0, 2]; 0 (with a graph to ``pred``) when no atom has weight > 0.
    """
    if form not in COSINE_FORMS:
        raise ValueError(f"cosine_loss form: expected one of {COSINE_FORMS}, got {form!r}")
    w = _weights(pred, target, weight, "cosine_loss")
    target = target.to(pred.dtype)
    # no host synchronisation: an empty selection is handled with torch.where
    wsum = w.sum()
    if form == "global":
        num = (w * (pred * target).sum(-1)).sum()
        pp = (w * (pred * pred).sum(-1)).sum()
        tt = (w * (target * target).sum(-1)).sum()
        value = 1.0 - num / torch.sqrt(torch.clamp(pp * tt, min=eps * eps))
    else:
        cos = _cosines(pred, target, eps)
        value = 1.0 - (w * cos).sum() / torch.clamp(wsum, min=eps)
    return torch.where(wsum > 0, value, torch.zeros_like(value))


def _cosines(pred: Tensor, target: Tensor, eps: float = _EPS) -> Tensor:
    """[N] per-atom cosine similarity, 0 where either vector is (nearly) zero."""
    dot = (pred * target).sum(-1)
    norm2 = (pred * pred).sum(-1) * (target * target).sum(-1)
    return dot / torch.sqrt(torch.clamp(norm2, min=eps * eps))


def mean_cosine(pred: Tensor, target: Tensor, weight: Optional[Tensor] = None, eps: float = _EPS) -> Tensor:
    """Weighted mean per-atom cosine similarity (1 = perfect); NaN when no atom has weight > 0."""
    w = _weights(pred, target, weight, "mean_cosine")
    cos = _cosines(pred, target.to(pred.dtype), eps)
    return (w * cos).sum() / w.sum()


def denoise_loss(pred: Tensor, noise: Tensor, weight: Optional[Tensor] = None) -> Tensor:
    """Denoising loss: weighted mean squared error per component (``F.mse_loss`` when unweighted)."""
    w = _weights(pred, noise, weight, "denoise_loss")
    err2 = ((pred - noise.to(pred.dtype)) ** 2).sum(-1)
    denom = 3.0 * w.sum()
    value = (w * err2).sum() / torch.clamp(denom, min=_EPS)
    return torch.where(denom > 0, value, torch.zeros_like(value))


def position_loss(
    pred: Tensor, target: Tensor, weight: Optional[Tensor] = None, radius_weight: float = 1.0, eps: float = _EPS
) -> Tuple[Tensor, Tensor]:
    """Position-masking loss: direction (1 - global cosine) + ``radius_weight`` x length error.

    ``pred`` and ``target`` are displacements in Å (flagged atom -> removed atom); the length term
    is the weighted mean of ``(|p_i| - |t_i|)^2`` in Å², so with ``radius_weight = 1`` a 0.3 Å
    distance error costs as much as a cosine of 0.91. The direction and the distance are scored
    apart so that neither hides the other (a plain vector MSE lets a short vector of the wrong
    direction score well when the distances are small).

    Returns:
        ``(loss, radius_mse)``: scalar loss with graph, and the length term (Å², detached).
    """
    w = _weights(pred, target, weight, "position_loss")
    target = target.to(pred.dtype)
    direction = cosine_loss(pred, target, w, form="global", eps=eps)
    pn = torch.sqrt((pred * pred).sum(-1) + eps * eps)
    tn = torch.sqrt((target * target).sum(-1))
    wsum = w.sum()
    radius = (w * (pn - tn) ** 2).sum() / torch.clamp(wsum, min=eps)
    radius = torch.where(wsum > 0, radius, torch.zeros_like(radius))
    return direction + radius_weight * radius, radius.detach()


def _n_atoms(batch: Batch, n_graphs: int, device: torch.device) -> Tensor:
    if "n_atoms" in batch:
        return batch["n_atoms"].to(device)
    return torch.bincount(batch["batch"], minlength=n_graphs).to(device)


def _reduce(diff: Tensor, kind: str) -> Tensor:
    return diff.abs().mean() if kind == "l1" else (diff * diff).mean()


def energy_force_loss(
    out: Mapping[str, Tensor],
    batch: Batch,
    energy_weight: float = 1.0,
    force_weight: float = 500.0,
    kind: str = "l1",
    per_atom_energy: bool = True,
) -> Tuple[Tensor, Dict[str, Tensor]]:
    """Fine-tuning loss ``energy_weight * E_term + force_weight * F_term``.

    ``E_term = mean_g |dE_g| / n_g`` (``per_atom_energy``; else ``mean_g |dE_g|``), ``F_term =
    mean over the 3N components |dF|``; squares instead of absolute values for ``kind="mse"``.
    A term with weight 0 is skipped (its labels may then be absent).

    Returns:
        ``(loss, {"loss_energy": E_term, "loss_forces": F_term})``, the terms detached and unweighted.
    """
    if kind not in LOSS_KINDS:
        raise ValueError(f"energy_force_loss kind: expected one of {LOSS_KINDS}, got {kind!r}")
    ref = out.get("forces", out.get("energy"))
    zero = ref.sum() * 0.0 if ref is not None else torch.zeros(())
    loss, e_term, f_term = zero, zero.detach(), zero.detach()
    if energy_weight:
        _require(out, "energy", "model output")
        _require(batch, "energy", "batch")
        e_pred = out["energy"].reshape(-1)
        de = e_pred - batch["energy"].reshape(-1).to(e_pred.dtype)
        if per_atom_energy:
            de = de / _n_atoms(batch, de.shape[0], de.device).to(de.dtype)
        e = _reduce(de, kind)
        loss = loss + energy_weight * e
        e_term = e.detach()
    if force_weight:
        _require(out, "forces", "model output")
        _require(batch, "forces", "batch")
        f_pred = out["forces"]
        f = _reduce(f_pred - batch["forces"].to(f_pred.dtype), kind)
        loss = loss + force_weight * f
        f_term = f.detach()
    return loss, {"loss_energy": e_term, "loss_forces": f_term}


def _require(mapping: Mapping[str, Any], key: str, what: str) -> None:
    if key not in mapping:
        raise ValueError(f"{what} has no '{key}' (keys: {sorted(mapping.keys())})")


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------
class MetricAccumulator:
    """Exact running metrics from sums and counts (mergeable across batches and DDP ranks).

    Args:
        prediction_key: output key compared with ``batch["target_vectors"]``.
        vector_metric: ``"cosine"`` (masking: weighted mean per-atom cosine), ``"mse"``
            (denoising: weighted MSE per component) or ``None`` (no vector metric).

    ``update`` accumulates energy metrics when both ``out`` and ``batch`` have ``energy``, force
    metrics when both have ``forces``, the vector metric when the batch has targets, and an
    optional scalar ``loss`` weighted by the number of frames. ``compute()`` returns only the
    metrics that have data. The state is one float64 tensor (``state()`` / ``load_state()`` /
    ``merge()``), kept on the device of the data, so ``update`` does not synchronise.
    """

    FIELDS: Tuple[str, ...] = (
        "n_graphs_e", "sum_abs_e", "sum_sq_e", "sum_abs_e_pa", "sum_sq_e_pa",
        "n_f", "sum_abs_f", "sum_sq_f",
        "w_cos", "sum_cos",
        "n_vec", "sum_sq_vec",
        "w_loss", "sum_loss",
        "n_graphs",
        "sum_e",
    )  # fmt: skip

    def __init__(self, prediction_key: str = "forces", vector_metric: Optional[str] = None) -> None:
        if vector_metric not in (None, "cosine", "mse"):
            raise ValueError(f"MetricAccumulator vector_metric: expected None, 'cosine' or 'mse', got {vector_metric!r}")
        self.prediction_key = prediction_key
        self.vector_metric = vector_metric
        self._sums: Optional[Tensor] = None

    def reset(self) -> None:
        self._sums = None

    def _buf(self, device: torch.device) -> Tensor:
        if self._sums is None:
            self._sums = torch.zeros(len(self.FIELDS), dtype=torch.float64, device=device)
        return self._sums

    @torch.no_grad()
    def update(self, out: Mapping[str, Tensor], batch: Batch, loss: Union[Tensor, float, None] = None) -> "MetricAccumulator":
        ref = next(iter(out.values()), None) if out else None
        device = ref.device if ref is not None else batch["positions"].device
        n_graphs = int(batch["n_atoms"].shape[0]) if "n_atoms" in batch else int(batch["batch"].max()) + 1
        parts = torch.zeros(len(self.FIELDS), dtype=torch.float64, device=device)
        idx = {k: i for i, k in enumerate(self.FIELDS)}
        parts[idx["n_graphs"]] = n_graphs
        if "energy" in out and "energy" in batch:
            de = out["energy"].detach().reshape(-1).double() - batch["energy"].reshape(-1).to(device).double()
            n = _n_atoms(batch, de.shape[0], device).double()
            parts[idx["n_graphs_e"]] = de.shape[0]
            parts[idx["sum_abs_e"]] = de.abs().sum()
            parts[idx["sum_e"]] = de.sum()
            parts[idx["sum_sq_e"]] = (de * de).sum()
            parts[idx["sum_abs_e_pa"]] = (de / n).abs().sum()
            parts[idx["sum_sq_e_pa"]] = ((de / n) ** 2).sum()
        if "forces" in out and "forces" in batch:
            df = out["forces"].detach().double() - batch["forces"].to(device).double()
            parts[idx["n_f"]] = df.numel()
            parts[idx["sum_abs_f"]] = df.abs().sum()
            parts[idx["sum_sq_f"]] = (df * df).sum()
        if self.vector_metric is not None and TARGET_VECTORS_KEY in batch and self.prediction_key in out:
            p = out[self.prediction_key].detach().double()
            t = batch[TARGET_VECTORS_KEY].to(device).double()
            w = batch[TARGET_WEIGHT_KEY].to(device).double() if TARGET_WEIGHT_KEY in batch else torch.ones_like(p[:, 0])
            if self.vector_metric == "cosine":
                parts[idx["w_cos"]] = w.sum()
                parts[idx["sum_cos"]] = (w * _cosines(p, t)).sum()
            else:
                parts[idx["n_vec"]] = 3.0 * w.sum()
                parts[idx["sum_sq_vec"]] = (w * ((p - t) ** 2).sum(-1)).sum()
        if loss is not None:
            lv = loss.detach().double().to(device) if isinstance(loss, Tensor) else float(loss)
            parts[idx["w_loss"]] = n_graphs
            parts[idx["sum_loss"]] = lv * n_graphs
        buf = self._buf(device)
        buf += parts.to(buf.device)
        return self

    def state(self) -> Tensor:
        """Copy of the sums ([len(FIELDS)] float64); all-reduce (SUM) it across ranks."""
        return torch.zeros(len(self.FIELDS), dtype=torch.float64) if self._sums is None else self._sums.clone()

    def load_state(self, state: Tensor) -> "MetricAccumulator":
        if state.shape != (len(self.FIELDS),):
            raise ValueError(f"MetricAccumulator.load_state: expected shape ({len(self.FIELDS)},), got {tuple(state.shape)}")
        self._sums = state.detach().to(torch.float64).clone()
        return self

    def merge(self, other: Union["MetricAccumulator", Tensor]) -> "MetricAccumulator":
        """Add another accumulator (or a state tensor) into this one."""
        s = other.state() if isinstance(other, MetricAccumulator) else other
        if s.shape != (len(self.FIELDS),):
            raise ValueError(f"MetricAccumulator.merge: expected shape ({len(self.FIELDS)},), got {tuple(s.shape)}")
        buf = self._buf(s.device)
        buf += s.to(device=buf.device, dtype=torch.float64)
        return self

    def compute(self) -> Dict[str, float]:
        """Metrics with data: energy_{mae,rmse}_meV[_per_atom], energy_mean_error_meV (signed
        mean: an offset), energy_rmse_centred_meV (offset removed), force_{mae,rmse}_meV_per_A,
        mean_cosine, vector_{mse,rmse} (target units), loss (frame-weighted mean), n_graphs."""
        v = dict(zip(self.FIELDS, self.state().cpu().tolist()))
        m: Dict[str, float] = {}
        if v["n_graphs_e"] > 0:
            n = v["n_graphs_e"]
            m["energy_mae_meV"] = 1000.0 * v["sum_abs_e"] / n
            m["energy_rmse_meV"] = 1000.0 * math.sqrt(v["sum_sq_e"] / n)
            m["energy_mae_meV_per_atom"] = 1000.0 * v["sum_abs_e_pa"] / n
            m["energy_rmse_meV_per_atom"] = 1000.0 * math.sqrt(v["sum_sq_e_pa"] / n)
            # the mean signed error (an energy offset) and the RMSE once it is removed
            mean = v["sum_e"] / n
            m["energy_mean_error_meV"] = 1000.0 * mean
            m["energy_rmse_centred_meV"] = 1000.0 * math.sqrt(max(v["sum_sq_e"] / n - mean * mean, 0.0))
        if v["n_f"] > 0:
            m["force_mae_meV_per_A"] = 1000.0 * v["sum_abs_f"] / v["n_f"]
            m["force_rmse_meV_per_A"] = 1000.0 * math.sqrt(v["sum_sq_f"] / v["n_f"])
        if v["w_cos"] > 0:
            m["mean_cosine"] = v["sum_cos"] / v["w_cos"]
        if v["n_vec"] > 0:
            m["vector_mse"] = v["sum_sq_vec"] / v["n_vec"]
            m["vector_rmse"] = math.sqrt(m["vector_mse"])
        if v["w_loss"] > 0:
            m["loss"] = v["sum_loss"] / v["w_loss"]
        m["n_graphs"] = v["n_graphs"]
        return m


def energy_force_metrics(out: Mapping[str, Tensor], batch: Batch) -> Dict[str, float]:
    """Energy (meV, meV/atom) and force (meV/Å) MAE/RMSE of one batch (see MetricAccumulator)."""
    return MetricAccumulator().update(out, batch).compute()


# --------------------------------------------------------------------------------------------
# objectives
# --------------------------------------------------------------------------------------------
@dataclass
class Objective:
    """One training objective: its data transform, the output it trains, and its loss.

    Attributes:
        task: ``"mask"``, ``"mask_position"``, ``"denoise"``, ``"joint"`` or ``"energy_force"``.
        transform: apply to every training sample (``sample, extras = transform(sample, rng)``)
            and pass ``extras`` to ``collate(..., extra=...)``.
        prediction_key: model output compared with ``target_vectors`` (``"forces"`` by default,
            ``"vectors"`` with ``use_vector_head``); ``"forces"`` for energy_force.
        needs_forces_graph: True when the loss differentiates through the ``forces`` output,
            so an energy-centric model must build forces with ``create_graph=True``.
        config: the resolved settings (defaults filled in).
    """

    task: str
    transform: Transform
    prediction_key: str
    needs_forces_graph: bool
    config: Dict[str, Any] = field(default_factory=dict)

    def loss(self, out: Mapping[str, Tensor], batch: Batch) -> Tuple[Tensor, Dict[str, float]]:
        """``(scalar loss with graph, metrics as floats)`` for one batch.

        Metrics: mask -> ``loss``, ``mean_cosine``, ``n_flagged``; denoise -> ``loss``,
        ``vector_rmse``; energy_force -> ``loss``, ``loss_energy``, ``loss_forces``.
        """
        c = self.config
        if self.task == "energy_force":
            loss, terms = energy_force_loss(
                out, batch, energy_weight=c["energy_weight"], force_weight=c["force_weight"],
                kind=c["loss_kind"], per_atom_energy=c["per_atom_energy"],
            )  # fmt: skip
            vals = torch.stack([loss.detach(), terms["loss_energy"].to(loss.device), terms["loss_forces"].to(loss.device)])
            return loss, dict(zip(("loss", "loss_energy", "loss_forces"), vals.double().cpu().tolist()))
        pred, target, weight = self._vectors(out, batch)
        if self.task in ("mask_position", "joint"):
            return self._position_or_joint_loss(pred, target, weight, batch)
        if self.task == "mask":
            loss = cosine_loss(pred, target, weight, form=c["cosine_form"])
            with torch.no_grad():
                w = weight.to(pred.dtype)
                vals = torch.stack([loss.detach(), (w * _cosines(pred.detach(), target.to(pred.dtype))).sum(), w.sum()])
            lv, sc, n = vals.double().cpu().tolist()
            return loss, {"loss": lv, "mean_cosine": sc / n if n > 0 else float("nan"), "n_flagged": n}
        loss = denoise_loss(pred, target, weight)
        lv = float(loss.detach())
        return loss, {"loss": lv, "vector_rmse": math.sqrt(max(lv, 0.0))}

    def _position_or_joint_loss(self, pred: Tensor, target: Tensor, weight: Tensor,
                                batch: Batch) -> Tuple[Tensor, Dict[str, float]]:
        """mask_position: :func:`position_loss`; joint: ``mask_weight`` x the masking loss of
        ``joint_mask`` + ``denoise_weight`` x :func:`denoise_loss` on the unflagged atoms."""
        c = self.config
        masking = c.get("joint_mask", "mask_position") if self.task == "joint" else "mask_position"
        zero = pred.sum() * 0.0
        radius = zero.detach()
        if masking == "mask_position":
            mask_loss, radius = position_loss(pred, target, weight, radius_weight=c["radius_weight"])
        else:
            mask_loss = cosine_loss(pred, target, weight, form=c["cosine_form"])
        noise_loss = zero.detach()
        loss = mask_loss
        if self.task == "joint":
            if NOISE_VECTORS_KEY not in batch:
                raise ValueError(f"joint objective: batch has no '{NOISE_VECTORS_KEY}': collate the extras returned "
                                 f"by objective.transform (collate(samples, extra=...))")
            noise_loss = denoise_loss(pred, batch[NOISE_VECTORS_KEY], batch.get(NOISE_WEIGHT_KEY))
            loss = c["mask_weight"] * mask_loss + c["denoise_weight"] * noise_loss
        with torch.no_grad():
            w = weight.to(pred.dtype)
            cos = (w * _cosines(pred.detach(), target.to(pred.dtype))).sum()
            vals = torch.stack([loss.detach(), cos, w.sum(), radius.to(pred.dtype), noise_loss.detach().to(pred.dtype)])
        lv, sc, n, r2, nl = vals.double().cpu().tolist()
        metrics = {"loss": lv, "mean_cosine": sc / n if n > 0 else float("nan"), "n_flagged": n}
        if masking == "mask_position":
            metrics["radius_rmse"] = math.sqrt(max(r2, 0.0))
        if self.task == "joint":
            metrics["vector_rmse"] = math.sqrt(max(nl, 0.0))
        return loss, metrics

    def _vectors(self, out: Mapping[str, Tensor], batch: Batch) -> Tuple[Tensor, Tensor, Tensor]:
        if self.prediction_key not in out:
            hint = " (build the model with vector_head=True)" if self.prediction_key == "vectors" else ""
            raise ValueError(
                f"{self.task} objective: model output has no '{self.prediction_key}'{hint}; keys: {sorted(out.keys())}"
            )
        if TARGET_VECTORS_KEY not in batch:
            raise ValueError(
                f"{self.task} objective: batch has no '{TARGET_VECTORS_KEY}': collate the extras returned by "
                f"objective.transform (collate(samples, extra=...))"
            )
        pred = out[self.prediction_key]
        target = batch[TARGET_VECTORS_KEY]
        weight = batch.get(TARGET_WEIGHT_KEY)
        if weight is None:
            weight = torch.ones(pred.shape[0], dtype=pred.dtype, device=pred.device)
        return pred, target, weight

    def metric_accumulator(self) -> MetricAccumulator:
        """A fresh accumulator with the vector metric of this task."""
        vm = {"mask": "cosine", "mask_position": "cosine", "joint": "cosine", "denoise": "mse"}.get(self.task)
        return MetricAccumulator(prediction_key=self.prediction_key, vector_metric=vm)


def build_objective(task: str, config: Optional[Mapping[str, Any]] = None) -> Objective:
    """Build the objective of ``task`` ("mask" | "denoise" | "energy_force") from ``config``.

    Config keys (all optional; any other key is a ValueError, see ``OBJECTIVE_CONFIG_KEYS``):

    ===================  ==========================================  ===========================
    key                  values                                      default
    ===================  ==========================================  ===========================
    ``mask_ratio``       float in (0, 1]                             0.5 (water), 0.15 (elements)
    ``mask_elements``    ``"water"`` / None, or list of Z / symbols  ``"water"`` (MaskWater)
    ``mask_radius``      float Å, or None / ``"all"``                1.6 (MaskElements flags)
    ``mask_variant``     ``"local"`` / ``"reference"`` (elements)    ``"local"``
    ``cosine_form``      ``"global"`` (paper) / ``"mean"``           ``"global"``
    ``noise_sigma``      float Å > 0                                 0.2
    ``denoise_target``   ``"noise"`` / ``"scaled_noise"``            ``"noise"``
    ``use_vector_head``  bool                                        False (train ``forces``)
    ``energy_weight``    float >= 0                                  1.0
    ``force_weight``     float >= 0                                  500.0 (paper)
    ``loss_kind``        ``"l1"`` (paper) / ``"mse"``                ``"l1"``
    ``per_atom_energy``  bool                                        True
    ``radius_weight``    float >= 0 (mask_position: length term)     1.0
    ``joint_mask``       ``"mask_position"`` / ``"mask"`` (joint)     ``"mask_position"``
    ``mask_weight``      float >= 0 (joint: masking loss)            1.0
    ``denoise_weight``   float >= 0 (joint: denoising loss)          1.0
    ===================  ==========================================  ===========================

    Keys that do not concern ``task`` are validated but ignored (one config can serve both the
    pretraining and the fine-tuning stage).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: expected one of {TASKS}")
    cfg = dict(config or {})
    unknown = sorted(set(cfg) - set(OBJECTIVE_CONFIG_KEYS))
    if unknown:
        raise ValueError(f"unknown objective config key(s) {unknown}; accepted keys: {list(OBJECTIVE_CONFIG_KEYS)}")

    def choice(key: str, options: Tuple[str, ...], default: str) -> str:
        v = cfg.get(key, default)
        v = default if v is None else v
        if not isinstance(v, str) or v.lower() not in options:
            raise ValueError(f"config key '{key}': expected one of {options}, got {v!r}")
        return v.lower()

    def flag(key: str, default: bool) -> bool:
        v = cfg.get(key, default)
        v = default if v is None else v
        if not isinstance(v, bool):
            raise ValueError(f"config key '{key}': expected true or false, got {v!r}")
        return v

    def weight(key: str, default: float) -> float:
        v = cfg.get(key, default)
        v = default if v is None else v
        try:
            if isinstance(v, bool):
                raise TypeError
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"config key '{key}': expected a number >= 0, got {v!r}") from None
        if not (math.isfinite(f) and f >= 0):
            raise ValueError(f"config key '{key}': expected a finite number >= 0, got {v!r}")
        return f

    resolved: Dict[str, Any] = {
        "cosine_form": choice("cosine_form", COSINE_FORMS, "global"),
        "use_vector_head": flag("use_vector_head", False),
        "energy_weight": weight("energy_weight", 1.0),
        "force_weight": weight("force_weight", 500.0),
        "loss_kind": choice("loss_kind", LOSS_KINDS, "l1"),
        "per_atom_energy": flag("per_atom_energy", True),
        "radius_weight": weight("radius_weight", 1.0),
        "mask_weight": weight("mask_weight", 1.0),
        "denoise_weight": weight("denoise_weight", 1.0),
    }
    # validate the transform keys whatever the task (a typo should not wait for the next stage);
    # mask_position / joint read mask_elements: all, which the seed's masking does not know
    for t in ("mask", "denoise") if task in ("mask", "denoise", "energy_force") else ("denoise",):
        build_transform(t, cfg)
    transform = build_transform(task, cfg)
    resolved.update({k: v for k, v in cfg.items() if k in TRANSFORM_CONFIG_KEYS})
    resolved["transform"] = repr(transform)

    if task == "energy_force":
        if resolved["energy_weight"] == 0 and resolved["force_weight"] == 0:
            raise ValueError("config keys 'energy_weight' and 'force_weight': at least one must be > 0")
        return Objective(task, transform, "forces", needs_forces_graph=resolved["force_weight"] > 0, config=resolved)
    if task == "joint":
        resolved["joint_mask"] = cfg.get("joint_mask") or "mask_position"
        if resolved["mask_weight"] == 0 and resolved["denoise_weight"] == 0:
            raise ValueError("config keys 'mask_weight' and 'denoise_weight': at least one must be > 0")
    key = "vectors" if resolved["use_vector_head"] else "forces"
    return Objective(task, transform, key, needs_forces_graph=key == "forces", config=resolved)
