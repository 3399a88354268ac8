"""Training configuration: defaults + YAML file + ``--set key=value`` overrides, validated.

One nested dict drives a run (pretraining, fine-tuning, training from scratch)::

    task: mask | mask_position | denoise | joint | energy_force
    data:      {path, format, test_path, test_format, splits: {train, val, test}, split_file, seed,
                units, strict, min_distance}
    model:     {...}                 # passed to maskpot.models.build_model (species inferred)
    objective: {...}                 # passed to maskpot.training.objectives.build_objective
    train:     {epochs, batch_size, lr, ...}     (see DEFAULTS)
    init:      {checkpoint, reset_heads, freeze_encoder, use_ema}
    output:    {dir, tensorboard, plot, progress}

``model`` and ``objective`` are free-form here (their builders validate them); every other
section is checked key by key: an unknown key or a wrong type is an error that names the key
and the file it came from. Overrides use dotted keys and YAML values
(``--set train.lr=3e-4 --set data.splits.val=50 --set model.num_layers=2``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from maskpot.utils import PathLike, atomic_write_text

__all__ = [
    "ConfigError",
    "DEFAULTS",
    "TASKS",
    "load_config",
    "parse_override",
    "apply_overrides",
    "merge",
    "validate_config",
    "save_config",
]

TASKS = ("mask", "mask_position", "denoise", "joint", "energy_force")

#: Every accepted key with its default. ``model`` and ``objective`` accept any key.
DEFAULTS: Dict[str, Any] = {
    "task": "energy_force",
    "data": {
        "path": None,  # file or folder read by maskpot.data.io.read_dataset
        "format": None,  # None: detected from the path
        "test_path": None,  # optional separate test file (e.g. rMD17 test_01); then splits.test must be 0
        "test_format": None,
        # fractions (floats) or counts (ints); missing entries are 0; null = 0.8 / 0.1 / 0.1
        "splits": None,
        "split_file": None,  # default: <output.dir>/splits.npz (reused when it exists)
        "seed": 0,
        "units": None,  # "<length>,<energy>" overriding the file's units (e.g. "angstrom,kcal/mol")
        "strict": None,  # true: implausible labels (wrong units?) are an error, not a warning
        "min_distance": None,  # closest allowed atom pair, Å (null: 0.1; 0: no check)
    },
    "model": {},
    "objective": {},
    "train": {
        "epochs": 100,
        "batch_size": 16,
        "eval_batch_size": None,  # default: batch_size
        "lr": 1.0e-4,
        "min_lr": 0.0,  # floor of the cosine / plateau schedule
        "weight_decay": 1.0e-4,
        "optimizer": "adamw",
        "scheduler": "cosine",  # cosine | plateau | none
        "warmup_epochs": 0.0,  # linear warm-up from 0, in (fractional) epochs
        "plateau_factor": 0.5,
        "plateau_patience": 10,
        "grad_clip": 10.0,  # max gradient norm; 0 or null = off
        "ema_decay": 0.0,  # 0 = off; e.g. 0.99
        "early_stopping_patience": 0,  # epochs without val improvement; 0 = off
        "max_steps": None,  # stop after this many optimiser steps (null = no limit)
        "dtype": "float32",  # float32 | float64
        "seed": 0,
        "num_threads": None,  # torch.set_num_threads; null = leave as is
        "device": "cpu",
        "compile": False,  # torch.compile the training step (falls back to eager, saying why)
    },
    "init": {
        "checkpoint": None,  # start from this checkpoint (model config comes from it)
        "reset_heads": False,  # re-initialise output heads after loading
        "freeze_encoder": False,  # train only the output heads
        "use_ema": True,  # load the EMA weights of the checkpoint when it has them
    },
    "output": {
        "dir": "runs/run",
        "tensorboard": False,
        "plot": True,  # learning-curve PNG
        "progress": True,  # tqdm progress bars
    },
}

# Allowed types of the checked leaves (None is allowed where the default is None).
_FLOAT = (int, float)
_TYPES: Dict[str, Tuple[type, ...]] = {
    "task": (str,),
    "data.path": (str,),
    "data.format": (str,),
    "data.test_path": (str,),
    "data.test_format": (str,),
    "data.splits": (dict,),
    "data.split_file": (str,),
    "data.seed": (int,),
    "data.units": (str,),
    "data.strict": (bool,),
    "data.min_distance": _FLOAT,
    "model": (dict,),
    "objective": (dict,),
    "train.epochs": (int,),
    "train.batch_size": (int,),
    "train.eval_batch_size": (int,),
    "train.lr": _FLOAT,
    "train.min_lr": _FLOAT,
    "train.weight_decay": _FLOAT,
    "train.optimizer": (str,),
    "train.scheduler": (str,),
    "train.warmup_epochs": _FLOAT,
    "train.plateau_factor": _FLOAT,
    "train.plateau_patience": (int,),
    "train.grad_clip": _FLOAT,
    "train.ema_decay": _FLOAT,
    "train.early_stopping_patience": (int,),
    "train.max_steps": (int,),
    "train.dtype": (str,),
    "train.seed": (int,),
    "train.num_threads": (int,),
    "train.device": (str,),
    "train.compile": (bool,),
    "init.checkpoint": (str,),
    "init.reset_heads": (bool,),
    "init.freeze_encoder": (bool,),
    "init.use_ema": (bool,),
    "output.dir": (str,),
    "output.tensorboard": (bool,),
    "output.plot": (bool,),
    "output.progress": (bool,),
}
_NULLABLE = {
    "data.path",
    "data.format",
    "data.test_path",
    "data.test_format",
    "data.split_file",
    "data.splits",
    "data.units",
    "data.strict",
    "data.min_distance",
    "train.eval_batch_size",
    "train.grad_clip",
    "train.max_steps",
    "train.num_threads",
    "init.checkpoint",
}
_CHOICES: Dict[str, Sequence[Any]] = {
    "task": TASKS,
    "train.optimizer": ("adamw",),
    "train.scheduler": ("cosine", "plateau", "none"),
    "train.dtype": ("float32", "float64"),
}
_FREE_FORM = ("model", "objective")


class ConfigError(ValueError):
    """Invalid configuration; the message names the key and where it came from."""


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> Dict[str, Any]:
    """Recursive dict merge (``update`` wins); inputs are not modified."""
    out = copy.deepcopy(dict(base))
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_override(text: str) -> Tuple[List[str], Any]:
    """``"train.lr=3e-4"`` -> (["train", "lr"], 0.0003); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE (e.g. train.lr=3e-4)")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({exc})") from exc
    # YAML 1.1 reads "1e-4" (no dot) as a string; accept it as the float it obviously is.
    if isinstance(parsed, str):
        try:
            parsed = float(parsed) if any(c in parsed.lower() for c in "e.") and "inf" not in parsed.lower() else parsed
        except ValueError:
            pass
    return key.split("."), parsed


def apply_overrides(cfg: Dict[str, Any], overrides: Sequence[str], source: str = "--set") -> Dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a copy of ``cfg``."""
    out = copy.deepcopy(cfg)
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for i, k in enumerate(keys[:-1]):
            if not isinstance(node.get(k), dict):
                if k in node and node[k] is not None:
                    raise ConfigError(f"{source} {text!r}: '{'.'.join(keys[: i + 1])}' is not a section")
                node[k] = {}
            node = node[k]
        node[keys[-1]] = value
    return out


def _fix_floats(value: Any) -> Any:
    """YAML 1.1 leaves ``1e-4`` as a string: convert such strings in numeric slots."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _check_section(cfg: Mapping[str, Any], defaults: Mapping[str, Any], prefix: str, source: str) -> None:
    for key, value in cfg.items():
        dotted = f"{prefix}{key}"
        if key not in defaults:
            known = ", ".join(sorted(defaults))
            where = f"section '{prefix[:-1]}'" if prefix else "top level"
            raise ConfigError(f"{source}: unknown key '{dotted}' ({where} accepts: {known})")
        if dotted in _FREE_FORM:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: key '{dotted}' must be a mapping, found {type(value).__name__}")
            continue
        if dotted == "data.splits":
            if value is not None:
                _check_splits(value, dotted, source)
            continue
        if isinstance(defaults[key], Mapping):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: key '{dotted}' must be a mapping, found {value!r}")
            _check_section(value, defaults[key], dotted + ".", source)
            continue
        types = _TYPES[dotted]
        if value is None:
            if dotted not in _NULLABLE:
                raise ConfigError(f"{source}: key '{dotted}' must not be null")
            continue
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            names = "/".join("float" if t is float else t.__name__ for t in types)
            raise ConfigError(f"{source}: key '{dotted}' must be {names}, found {value!r} ({type(value).__name__})")
        if dotted in _CHOICES and value not in _CHOICES[dotted]:
            raise ConfigError(f"{source}: key '{dotted}' must be one of {list(_CHOICES[dotted])}, found {value!r}")


def _check_splits(value: Any, dotted: str, source: str) -> None:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: key '{dotted}' must be a mapping {{train, val, test}}, found {value!r}")
    for k, v in value.items():
        if k not in ("train", "val", "test"):
            raise ConfigError(f"{source}: unknown key '{dotted}.{k}' (accepts: train, val, test)")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ConfigError(f"{source}: key '{dotted}.{k}' must be a count (int) or a fraction (float) >= 0, found {v!r}")


def validate_config(cfg: Dict[str, Any], source: str = "<config>") -> Dict[str, Any]:
    """Check keys, types and cross-field rules; return ``cfg`` (numeric strings fixed in place)."""
    for section in ("train",):
        for k in list(cfg.get(section, {}) or {}):
            if _TYPES.get(f"{section}.{k}") == _FLOAT:
                cfg[section][k] = _fix_floats(cfg[section][k])
    _check_section(cfg, DEFAULTS, "", source)
    t = cfg["train"]
    for key in ("epochs", "batch_size"):
        if t[key] < 1:
            raise ConfigError(f"{source}: key 'train.{key}' must be >= 1, found {t[key]}")
    if t["eval_batch_size"] is not None and t["eval_batch_size"] < 1:
        raise ConfigError(f"{source}: key 'train.eval_batch_size' must be >= 1, found {t['eval_batch_size']}")
    if t["lr"] <= 0:
        raise ConfigError(f"{source}: key 'train.lr' must be > 0, found {t['lr']}")
    if not 0.0 <= t["ema_decay"] < 1.0:
        raise ConfigError(f"{source}: key 'train.ema_decay' must be in [0, 1), found {t['ema_decay']}")
    if t["warmup_epochs"] < 0 or t["warmup_epochs"] > t["epochs"]:
        raise ConfigError(f"{source}: key 'train.warmup_epochs' must be in [0, epochs], found {t['warmup_epochs']}")
    if t["max_steps"] is not None and t["max_steps"] < 1:
        raise ConfigError(f"{source}: key 'train.max_steps' must be >= 1 or null, found {t['max_steps']}")
    if not 0.0 < t["plateau_factor"] < 1.0:
        raise ConfigError(f"{source}: key 'train.plateau_factor' must be in (0, 1), found {t['plateau_factor']}")
    if cfg["data"]["test_path"] and (cfg["data"]["splits"] or {}).get("test", 0):
        raise ConfigError(
            f"{source}: key 'data.splits.test' must be 0 when 'data.test_path' is set (the test set is that file)"
        )
    if cfg["init"]["freeze_encoder"] and not cfg["init"]["checkpoint"]:
        raise ConfigError(f"{source}: key 'init.freeze_encoder' needs 'init.checkpoint' (nothing to freeze from scratch)")
    return cfg


def load_config(
    path: Optional[PathLike] = None,
    overrides: Sequence[str] = (),
    extra: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """Defaults <- YAML file <- ``extra`` (dict) <- ``overrides`` (``key=value`` strings), validated.

    Raises:
        ConfigError: naming the key and the file (or ``--set``) it came from.
    """
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path}: not found")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path}: invalid YAML ({exc})") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: expected a mapping at top level, found {type(loaded).__name__}")
        _check_section(_fixed_copy(loaded), DEFAULTS, "", str(path))
        cfg = merge(cfg, loaded)
    if extra:
        cfg = merge(cfg, extra)
    if overrides:
        with_overrides = apply_overrides({}, overrides)
        _check_section(_fixed_copy(with_overrides), DEFAULTS, "", "--set")
        cfg = merge(cfg, with_overrides)
    return validate_config(cfg, str(path) if path is not None else "<config>")


def _fixed_copy(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(dict(cfg))
    if isinstance(out.get("train"), dict):
        for k, v in out["train"].items():
            if _TYPES.get(f"train.{k}") == _FLOAT:
                out["train"][k] = _fix_floats(v)
    return out


def to_yaml(cfg: Mapping[str, Any]) -> str:
    return yaml.safe_dump(_plain(cfg), sort_keys=False, default_flow_style=False)


def _plain(value: Any) -> Any:
    """Plain Python types for YAML/JSON (tuples -> lists, numpy scalars -> Python)."""
    if isinstance(value, Mapping):
        return {str(k) if not isinstance(k, (int, str)) else k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def save_config(cfg: Mapping[str, Any], path: PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    atomic_write_text(path, to_yaml(cfg))
