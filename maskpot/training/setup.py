"""Model set-up for a run: build from config or from a checkpoint (fine-tuning), reset or
freeze output heads, and fit the normalisation (E0s, scales) on the training data.

Output heads
    A model may list its output-head submodules in a ``head_names`` attribute (tuple of child
    module names). Otherwise the heads are the direct children whose name contains ``head`` or
    ``decoder`` or starts with ``vector_`` (egnn: ``energy_head``, ``vector_mlp``; painn:
    ``energy_head``, ``vector_out``; gns: ``force_decoder``, ``energy_decoder``,
    ``vector_decoder``). Everything else is the encoder.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np
import torch

from maskpot.data.sample import Sample
from maskpot.training.checkpoint import CheckpointError, load_checkpoint

log = logging.getLogger(__name__)

#: Model-config keys a fine-tuning run may change relative to its init checkpoint.
MAY_DIFFER = ("dtype", "neighbor_backend", "vector_head")


def head_names(model: torch.nn.Module) -> List[str]:
    """Names of the output-head child modules of ``model`` (see the module docstring)."""
    names = getattr(model, "head_names", None)
    if names:
        return list(names)
    return [
        n for n, _ in model.named_children() if "head" in n or "decoder" in n or n.startswith("vector_")
    ]


def head_parameter_names(model: torch.nn.Module) -> List[str]:
    heads = tuple(f"{h}." for h in head_names(model))
    return [n for n, _ in model.named_parameters() if n.startswith(heads)]


@torch.no_grad()
def reset_heads(model: torch.nn.Module, seed: int = 0) -> List[str]:
    """Re-initialise every submodule of the heads that has ``reset_parameters`` (seeded)."""
    gen_state = torch.get_rng_state()
    torch.manual_seed(int(seed) + 1)
    done = []
    try:
        for name in head_names(model):
            for sub_name, sub in getattr(model, name).named_modules():
                if hasattr(sub, "reset_parameters"):
                    sub.reset_parameters()
                    done.append(f"{name}.{sub_name}".rstrip("."))
    finally:
        torch.set_rng_state(gen_state)
    return done


def freeze_encoder(model: torch.nn.Module) -> Tuple[int, int]:
    """``requires_grad=False`` on every parameter outside the heads; returns (frozen, trainable)."""
    trainable = set(head_parameter_names(model))
    if not trainable:
        raise ValueError(f"freeze_encoder: no output heads found in {type(model).__name__} (children: "
                         f"{[n for n, _ in model.named_children()]})")
    n_frozen = n_train = 0
    for name, p in model.named_parameters():
        p.requires_grad_(name in trainable)
        if name in trainable:
            n_train += p.numel()
        else:
            n_frozen += p.numel()
    return n_frozen, n_train


def config_from_checkpoint(ckpt_cfg: Mapping[str, Any], user_cfg: Mapping[str, Any], path: str) -> Dict[str, Any]:
    """The checkpoint's model config, with the few keys a fine-tuning run may change.

    Any other key the user sets must equal the checkpoint's value (after resolving defaults),
    otherwise a ``CheckpointError`` names the key and both values.
    """
    from maskpot.models.registry import resolve_config

    out = dict(ckpt_cfg)
    if not user_cfg:
        return out
    user_name = user_cfg.get("name", out["name"])
    if str(user_name).lower() != str(out["name"]).lower():
        raise CheckpointError(f"init checkpoint {path}: model.name is {out['name']!r}, config asks for {user_name!r}")
    try:
        resolved_user = resolve_config({**{"name": out["name"]}, **dict(user_cfg)}, require_species=False)
    except ValueError as exc:
        raise CheckpointError(f"model config given with init checkpoint {path}: {exc}") from exc
    diffs = []
    for key in user_cfg:
        if key in MAY_DIFFER:
            out[key] = resolved_user[key]
        elif key == "species":
            if sorted(user_cfg[key]) != sorted(out.get("species", [])):
                diffs.append(f"species: checkpoint {out.get('species')} vs config {sorted(user_cfg[key])}")
        elif resolved_user.get(key) != out.get(key):
            diffs.append(f"{key}: checkpoint {out.get(key)!r} vs config {resolved_user.get(key)!r}")
    if diffs:
        raise CheckpointError(
            f"init checkpoint {path}: model config mismatch ({'; '.join(diffs)}); the architecture comes from "
            f"the checkpoint: remove these model keys or make them match (only {list(MAY_DIFFER)} may differ)"
        )
    return out


def load_matching_weights(model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: str) -> Dict[str, List[str]]:
    """Copy every tensor of ``state`` whose name and shape match; error on shape mismatch."""
    own = model.state_dict()
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise CheckpointError(f"init checkpoint {path}: tensors with mismatched shapes: {bad[:5]}")
    matching = {k: v for k, v in state.items() if k in own}
    model.load_state_dict(matching, strict=False)
    report = {
        "loaded": sorted(matching),
        "not_in_checkpoint": sorted(set(own) - set(state)),
        "ignored_from_checkpoint": sorted(set(state) - set(own)),
    }
    if report["not_in_checkpoint"]:
        log.info("init: %d tensors not in the checkpoint keep their initial values: %s",
                 len(report["not_in_checkpoint"]), report["not_in_checkpoint"][:8])
    if report["ignored_from_checkpoint"]:
        log.info("init: %d checkpoint tensors unused by this model: %s",
                 len(report["ignored_from_checkpoint"]), report["ignored_from_checkpoint"][:8])
    return report


def build_from_init(
    path: str, user_model_cfg: Mapping[str, Any], use_ema: bool = True
) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """Model with the architecture and weights of checkpoint ``path`` (all matching tensors)."""
    from maskpot.models import build_model

    data = load_checkpoint(path)
    cfg = config_from_checkpoint(data["model_config"], user_model_cfg, str(path))
    model = build_model(cfg)
    state = data["ema_state"] if use_ema and data.get("ema_state") is not None else data["model_state"]
    report = load_matching_weights(model, state, str(path))
    report["source_task"] = data.get("task")
    return model, report


def check_species(model: torch.nn.Module, species: Sequence[int], where: str) -> None:
    missing = sorted(set(int(z) for z in species) - set(getattr(model, "species", [])))
    if missing:
        raise ValueError(f"{where}: the data has atomic numbers {missing} that the model does not know "
                         f"(model species {list(model.species)})")


def fit_normalization(model: torch.nn.Module, train: Sequence[Sample]) -> Dict[str, Any]:
    """E0 per species (least squares on the training frames) and force-RMS scale.

    Energy models: ``energy_scale = force RMS`` (eV/Å as eV: MACE / nequip convention); force
    models: ``force_scale = force RMS`` and ``energy_scale`` = per-atom energy std after E0.
    """
    from maskpot.data.stats import energy_per_atom_stats, fit_species_energies, force_rms

    species = list(model.species)
    has_e = any(s.energy is not None for s in train)
    has_f = any(s.forces is not None for s in train)
    e0 = fit_species_energies(train, species) if has_e else {z: 0.0 for z in species}
    rms = force_rms(train) if has_f else 1.0
    if not rms > 0:
        rms = 1.0
    if getattr(model, "kind", "energy") == "force":
        std = energy_per_atom_stats(train, e0)[1] if has_e else 1.0
        energy_scale, force_scale = (std if std > 1e-12 else 1.0), rms
    else:
        energy_scale, force_scale = rms, 1.0
    model.set_normalization(e0, energy_scale=energy_scale, force_scale=force_scale)
    out: Dict[str, Any] = {"e0": {int(k): float(v) for k, v in e0.items()}, "force_rms": rms,
                           "energy_scale": energy_scale, "force_scale": force_scale}
    if has_e:
        # The network's own per-atom output (random at init, anything after pretraining) adds a
        # constant that a force-weighted loss never removes: absorb it into the shifts now.
        out["initial_refit"] = refit_energy_shift(model, train)
        out["e0"] = {int(z): float(v) for z, v in model.get_normalization()["energy_shift_per_species"].items()}
    return out


def predict_energies(model: torch.nn.Module, samples: Sequence[Sample], batch_size: int = 16) -> np.ndarray:
    """Frame energies (eV) the model predicts for ``samples`` (eval mode, model dtype/device)."""
    from maskpot.data.sample import collate

    param = next(iter(model.parameters()), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    out: List[np.ndarray] = []
    try:
        for start in range(0, len(samples), batch_size):
            batch = collate(list(samples[start : start + batch_size]), dtype=dtype, device=device)
            out.append(model(batch)["energy"].detach().double().cpu().numpy().reshape(-1))
    finally:
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros(0)


def refit_energy_shift(model: torch.nn.Module, samples: Sequence[Sample], batch_size: int = 16) -> Dict[str, Any]:
    """Closed-form per-species energy shift on the residuals of ``samples`` (frames with energy).

    ``E0[Z] += δ[Z]`` with ``δ`` the least-squares fit of ``E_ref - E_pred ≈ Σ_atoms δ[Z]``
    (:func:`maskpot.data.stats.fit_species_offsets`). Forces do not change. After it, the mean
    signed energy error on ``samples`` is ~0 (exactly 0 for a single composition). Called when
    fine-tuning (or training from scratch) starts and on the best weights when it ends, as
    MACE and nequip refit E0s on fine-tuning. Returns the offsets and the errors before/after (meV).
    """
    from maskpot.data.stats import fit_species_offsets

    labelled = [s for s in samples if s.energy is not None]
    if not labelled:
        return {"delta": {}, "n_frames": 0}
    ref = np.array([s.energy for s in labelled], dtype=np.float64)
    res = ref - predict_energies(model, labelled, batch_size)
    delta = fit_species_offsets(labelled, res.tolist(), model.species)
    norm = model.get_normalization()
    shifts = {int(z): float(v) + delta.get(int(z), 0.0) for z, v in norm["energy_shift_per_species"].items()}
    model.set_normalization(shifts, energy_scale=float(norm["energy_scale"]), force_scale=float(norm["force_scale"]))
    counts = np.array([[int(np.sum(s.numbers == z)) for z in sorted(delta)] for s in labelled], dtype=np.float64)
    after = res - counts @ np.array([delta[z] for z in sorted(delta)])
    return {
        "delta": {int(z): float(v) for z, v in delta.items()},
        "n_frames": len(labelled),
        "mean_error_before_meV": float(-res.mean() * 1e3),
        "mean_error_after_meV": float(-after.mean() * 1e3),
        "mae_before_meV": float(np.abs(res).mean() * 1e3),
        "mae_after_meV": float(np.abs(after).mean() * 1e3),
    }


def refit_checkpoint_energy(
    path: Any, data: Dict[str, Any], model: torch.nn.Module, samples: Sequence[Sample]
) -> Dict[str, Any]:
    """Refit the energy shift of the weights already loaded in ``model`` (the checkpoint's
    EMA weights when present) on ``samples`` and write it into both weight sets of checkpoint
    ``path`` (atomically). The checkpoint gets ``energy_refit`` so it is done once."""
    from maskpot.training.checkpoint import save_checkpoint

    report = refit_energy_shift(model, samples)
    key = "normalization.energy_shift"
    new_shift = model.state_dict()[key].detach().clone()
    for name in ("model_state", "ema_state"):
        if data.get(name) is not None and key in data[name]:
            data[name][key] = new_shift.to(data[name][key].dtype)
    data["normalization"] = model.get_normalization()
    data["energy_refit"] = report
    save_checkpoint(path, data)
    return report
