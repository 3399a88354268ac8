"""Model registry and the config -> model builder.

Config keys (all optional except ``name`` and ``species``)::

    name              registered model name ("egnn", "gns", "painn", "tensornet")
    species           atomic numbers the model knows, e.g. [1, 8]
    cutoff            Å
    hidden_channels, num_layers, num_rbf, activation
    radial_basis      "bessel" | "gaussian"
    envelope          "polynomial" | "cosine";  envelope_exponent (polynomial p)
    dtype             "float32" | "float64"
    neighbor_backend  "torch" | "vesin" | "auto"
    vector_head       bool: extra equivariant per-atom vector output (pretraining)
    + model-specific keys

A model's keys and their defaults are its constructor's keyword parameters (all but ``species``):
the ``__init__`` signature is the one place they are defined (``model_defaults(name)`` reads
them). ``dtype`` and the other ``COMMON_DEFAULTS`` keys take their defaults from
``COMMON_DEFAULTS``.

``model.config`` is the resolved config (JSON-serialisable); ``build_model(model.config)``
rebuilds the same architecture. ``model.config_json`` holds the same as JSON text and survives
``torch.jit.script``.
"""

from __future__ import annotations

import copy
import inspect
import json
from typing import Any, Callable, Dict, Mapping, Optional, Type

import torch
from torch import nn

from maskpot.models.common import ACTIVATIONS, MAX_Z

MODEL_REGISTRY: Dict[str, Type[nn.Module]] = {}

# Keys every model accepts, with their defaults (model classes override the architectural ones).
COMMON_DEFAULTS: Dict[str, Any] = {
    "dtype": "float32",
    "neighbor_backend": "torch",
    "vector_head": False,
}

class ModelConfigError(ValueError):
    """An invalid model config: ``key`` is the config key at fault (None: the config as a whole),
    ``problem`` what is wrong with it. The message is ``config['<key>'] <problem>`` (or just the
    problem); callers that name keys their own way (the training config's ``key 'model.<key>'``)
    use the two parts."""

    def __init__(self, key: Optional[str], problem: str) -> None:
        self.key, self.problem = key, problem
        super().__init__(problem if key is None else f"config[{key!r}] {problem}")

    def __reduce__(self):  # picklable across processes (the args are not the message)
        return type(self), (self.key, self.problem)


from maskpot.dtypes import DTYPES as _DTYPES  # noqa: E402  (the one dtype map)
_BACKENDS = ("torch", "vesin", "auto")


# Constructor parameters that are not config keys with a default (``species`` comes from the data).
_NOT_KEYS = ("self", "species")
# COMMON_DEFAULTS keys that are not constructor arguments (``build_model`` applies them).
_NOT_ARGS = ("dtype",)


def _constructor_defaults(cls: Type[nn.Module]) -> Dict[str, Any]:
    """``{key: default}`` of ``cls.__init__``'s parameters except ``self``, ``species`` and the
    ``COMMON_DEFAULTS`` keys, in signature order. TypeError when the signature cannot serve as a
    config (a parameter without a default, ``*args`` / ``**kwargs``, no ``species``, a common key
    missing)."""
    params = inspect.signature(cls.__init__).parameters
    where = f"register_model: {cls.__name__}.__init__"
    if "species" not in params:
        raise TypeError(f"{where} needs a 'species' parameter")
    out: Dict[str, Any] = {}
    for p in params.values():
        if p.name in _NOT_KEYS:
            continue
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"{where} must name every config key (found *{p.name})")
        if p.kind is p.POSITIONAL_ONLY:
            raise TypeError(f"{where}: parameter {p.name!r} must be passable by keyword")
        if p.default is p.empty:
            raise TypeError(f"{where}: parameter {p.name!r} needs a default (the config's default)")
        if p.name not in COMMON_DEFAULTS:
            out[p.name] = p.default
    missing = [k for k in COMMON_DEFAULTS if k not in _NOT_ARGS and k not in params]
    if missing:
        raise TypeError(f"{where} needs the common parameter(s) {missing}")
    return out


def register_model(name: str) -> Callable[[Type[nn.Module]], Type[nn.Module]]:
    """Class decorator: ``@register_model("mymodel")``.

    The class's ``__init__(species, key=default, ...)`` defines its config: every parameter but
    ``species`` is a config key and needs a default (the default of the key). It also takes the
    ``COMMON_DEFAULTS`` keys except ``dtype`` (``neighbor_backend``, ``vector_head``), whose
    defaults come from ``COMMON_DEFAULTS``. An optional ``validate_config(config)`` static
    method checks the model's own keys (raise ``ModelConfigError(key, problem)``).
    """

    def deco(cls: Type[nn.Module]) -> Type[nn.Module]:
        key = name.lower()
        if key in MODEL_REGISTRY and MODEL_REGISTRY[key] is not cls:
            raise ValueError(f"register_model: a model named {key!r} is already registered")
        _constructor_defaults(cls)  # TypeError now rather than at the first build
        MODEL_REGISTRY[key] = cls
        return cls

    return deco


def registered_names() -> str:
    """The registered model names as ``"egnn | gns | ..."`` (for error messages)."""
    return " | ".join(sorted(MODEL_REGISTRY))


def _model_class(name: Any) -> Type[nn.Module]:
    if not isinstance(name, str) or name.lower() not in MODEL_REGISTRY:
        raise ModelConfigError(None, f"unknown model name {name!r}; registered: {sorted(MODEL_REGISTRY)}")
    return MODEL_REGISTRY[name.lower()]


def model_defaults(name: str) -> Dict[str, Any]:
    """The model-specific keys of model ``name`` with their defaults (its constructor's)."""
    return copy.deepcopy(_constructor_defaults(_model_class(name)))


def _defaults(cls: Type[nn.Module], name: str) -> Dict[str, Any]:
    return {"name": name.lower(), **copy.deepcopy(COMMON_DEFAULTS), **copy.deepcopy(_constructor_defaults(cls))}


def default_config(name: str, **overrides: Any) -> Dict[str, Any]:
    """Defaults of model ``name`` (all keys except ``species``), updated with ``overrides``."""
    cls = _model_class(name)
    config: Dict[str, Any] = _defaults(cls, name)
    if overrides:
        config = resolve_config({**config, **overrides}, require_species=False)
    return config


def _check_int(key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int,)) and not (isinstance(value, float) and value.is_integer()):
        raise ModelConfigError(key, f"must be an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ModelConfigError(key, f"must be >= {minimum}, got {value}")
    return value


def resolve_config(config: Mapping[str, Any], require_species: bool = True) -> Dict[str, Any]:
    """Validate ``config`` and fill in defaults. Unknown keys -> ValueError naming the allowed ones."""
    if not isinstance(config, Mapping):
        raise ModelConfigError(None, f"model config must be a dict, got {type(config).__name__}")
    if "name" not in config:
        raise ModelConfigError(None, f"model config needs 'name' (one of {sorted(MODEL_REGISTRY)})")
    cls = _model_class(config["name"])
    defaults = _defaults(cls, str(config["name"]))
    allowed = {"species"} | set(defaults)
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise ModelConfigError(
            None, f"unknown model config key(s) {unknown} for model {config['name']!r}; allowed keys: {sorted(allowed)}"
        )
    out: Dict[str, Any] = defaults
    out.update({k: copy.deepcopy(v) for k, v in config.items()})

    if "species" in out and out["species"] is not None:
        species = out["species"]
        if isinstance(species, (str, bytes)) or not hasattr(species, "__iter__"):
            raise ModelConfigError("species", f"must be a list of atomic numbers, got {species!r}")
        zs = [_check_int("species", z, 1) for z in species]
        if not zs:
            raise ModelConfigError("species", "is empty")
        if any(z > MAX_Z for z in zs):
            raise ModelConfigError("species", f"has atomic numbers > {MAX_Z}: {zs}")
        if len(set(zs)) != len(zs):
            raise ModelConfigError("species", f"has duplicates: {zs}")
        out["species"] = sorted(zs)
    elif require_species:
        raise ModelConfigError(None, "model config needs 'species' (list of atomic numbers, e.g. [1, 8])")
    else:
        out.pop("species", None)

    cutoff = out["cutoff"]
    if isinstance(cutoff, bool) or not isinstance(cutoff, (int, float)) or not cutoff > 0:
        raise ModelConfigError("cutoff", f"must be a positive number (Å), got {cutoff!r}")
    out["cutoff"] = float(cutoff)
    for key in ("hidden_channels", "num_layers", "num_rbf", "envelope_exponent"):
        if key in out:
            out[key] = _check_int(key, out[key], 0 if key == "num_layers" else (2 if key == "envelope_exponent" else 1))
    if str(out["activation"]).lower() not in ACTIVATIONS:
        raise ModelConfigError("activation", f"{out['activation']!r} unknown; allowed: {sorted(ACTIVATIONS)}")
    out["activation"] = str(out["activation"]).lower()
    if out["dtype"] not in _DTYPES:
        raise ModelConfigError("dtype", f"must be one of {sorted(_DTYPES)}, got {out['dtype']!r}")
    if out["neighbor_backend"] not in _BACKENDS:
        raise ModelConfigError("neighbor_backend", f"must be one of {list(_BACKENDS)}, got {out['neighbor_backend']!r}")
    if out["radial_basis"] not in ("bessel", "gaussian"):
        raise ModelConfigError("radial_basis", f"must be 'bessel' or 'gaussian', got {out['radial_basis']!r}")
    if out["envelope"] not in ("polynomial", "cosine"):
        raise ModelConfigError("envelope", f"must be 'polynomial' or 'cosine', got {out['envelope']!r}")
    if not isinstance(out["vector_head"], bool):
        raise ModelConfigError("vector_head", f"must be true/false, got {out['vector_head']!r}")
    validate = getattr(cls, "validate_config", None)
    if validate is not None:
        validate(out)
    json.dumps(out)  # must stay JSON-serialisable
    return out


def build_model(config: Mapping[str, Any]) -> nn.Module:
    """Build a registered model from a config dict (see the module docstring)."""
    resolved = resolve_config(config)
    cls = _model_class(resolved["name"])
    kwargs = {k: v for k, v in resolved.items() if k not in ("name", "dtype")}
    model = cls(**kwargs)
    model.to(_DTYPES[resolved["dtype"]])
    model.config = resolved
    model.config_json = json.dumps(resolved, sort_keys=True)
    return model
