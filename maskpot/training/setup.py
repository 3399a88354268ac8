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
    return {"e0": {int(k): float(v) for k, v in e0.items()}, "force_rms": rms,
            "energy_scale": energy_scale, "force_scale": force_scale}
