"""Training configuration: typed sections, defaults + YAML file + ``--set key=value`` overrides.

One config drives a run (pretraining, fine-tuning, training from scratch)::

    task: mask | mask_position | denoise | joint | energy_force
    data:      DataConfig     {path, format, test_path, test_format, splits: {train, val, test},
                               split_file, seed, units, strict, min_distance}
    model:     {...}          passed to maskpot.models.build_model (species inferred); its keys
                              and defaults are the model constructor's (models.registry)
    objective: {...}          passed to maskpot.training.objectives.build_objective
    train:     TrainConfig    {epochs, batch_size, lr, ...}
    init:      InitConfig     {checkpoint, reset_heads, freeze_encoder, use_ema}
    output:    OutputConfig   {dir, tensorboard, plot, progress}

Each section is a dataclass below: its fields are the accepted keys, their annotations the
accepted types (``Optional``: may be null; ``Literal``: one of these values) and their defaults
the defaults, each defined once. One validator (:meth:`TrainingConfig.from_dict`) checks a
nested dict against them: an unknown key or a wrong type is a one-line :class:`ConfigError` that
names the key and the file (or ``--set``) it came from. ``model`` is checked by
``models.registry.resolve_config`` (when it names a model) and ``objective`` by
``objectives.build_objective``. Overrides use dotted keys and YAML values
(``--set train.lr=3e-4 --set data.splits.val=50 --set model.num_layers=2``).

:func:`load_config` returns the resolved config as a plain nested dict (what checkpoints, run
folders and the trainer store); :func:`load_training_config` the same as a :class:`TrainingConfig`
(``config.train.lr``); ``TrainingConfig.to_dict()`` / ``from_dict()`` convert between the two.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import yaml

from maskpot.utils import PathLike, atomic_write_text

__all__ = [
    "ConfigError",
    "DataConfig",
    "TrainConfig",
    "InitConfig",
    "OutputConfig",
    "TrainingConfig",
    "DEFAULTS",
    "TASKS",
    "load_config",
    "load_training_config",
    "parse_override",
    "apply_overrides",
    "merge",
    "validate_config",
    "save_config",
]

Task = Literal["mask", "mask_position", "denoise", "joint", "energy_force"]
TASKS: Tuple[str, ...] = typing.get_args(Task)


class ConfigError(ValueError):
    """Invalid configuration; the message names the key and where it came from."""


def _check_splits(value: Any, dotted: str, source: str) -> None:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: key '{dotted}' must be a mapping {{train, val, test}}, found {value!r}")
    for k, v in value.items():
        if k not in ("train", "val", "test"):
            raise ConfigError(f"{source}: unknown key '{dotted}.{k}' (accepts: train, val, test)")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ConfigError(f"{source}: key '{dotted}.{k}' must be a count (int) or a fraction (float) >= 0, found {v!r}")


# --------------------------------------------------------------------------------------------
# the sections: keys, types and defaults
# --------------------------------------------------------------------------------------------
@dataclass
class DataConfig:
    path: Optional[str] = None  # file or folder read by maskpot.data.io.read_dataset
    format: Optional[str] = None  # None: detected from the path
    test_path: Optional[str] = None  # optional separate test file (e.g. rMD17 test_01); then splits.test must be 0
    test_format: Optional[str] = None
    # fractions (floats) or counts (ints); missing entries are 0; null = 0.8 / 0.1 / 0.1
    splits: Optional[Dict[str, Union[int, float]]] = field(default=None, metadata={"check": _check_splits})
    split_file: Optional[str] = None  # default: <output.dir>/splits.npz (reused when it exists)
    seed: int = 0
    units: Optional[str] = None  # "<length>,<energy>" overriding the file's units (e.g. "angstrom,kcal/mol")
    strict: Optional[bool] = None  # true: implausible labels (wrong units?) are an error, not a warning
    min_distance: Optional[float] = None  # closest allowed atom pair, Å (null: 0.1; 0: no check)


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 16
    eval_batch_size: Optional[int] = None  # default: batch_size
    lr: float = 1.0e-4
    min_lr: float = 0.0  # floor of the cosine / plateau schedule
    weight_decay: float = 1.0e-4
    optimizer: Literal["adamw"] = "adamw"
    scheduler: Literal["cosine", "plateau", "none"] = "cosine"
    warmup_epochs: float = 0.0  # linear warm-up from 0, in (fractional) epochs
    plateau_factor: float = 0.5
    plateau_patience: int = 10
    grad_clip: Optional[float] = 10.0  # max gradient norm; 0 or null = off
    ema_decay: float = 0.0  # 0 = off; e.g. 0.99
    early_stopping_patience: int = 0  # epochs without val improvement; 0 = off
    max_steps: Optional[int] = None  # stop after this many optimiser steps (null = no limit)
    dtype: Literal["float32", "float64"] = "float32"
    seed: int = 0
    num_threads: Optional[int] = None  # torch.set_num_threads; null = leave as is
    device: str = "cpu"
    compile: bool = False  # torch.compile the training step (falls back to eager, saying why)


@dataclass
class InitConfig:
    checkpoint: Optional[str] = None  # start from this checkpoint (model config comes from it)
    reset_heads: bool = False  # re-initialise output heads after loading
    freeze_encoder: bool = False  # train only the output heads
    use_ema: bool = True  # load the EMA weights of the checkpoint when it has them


@dataclass
class OutputConfig:
    dir: str = "runs/run"
    tensorboard: bool = False
    plot: bool = True  # learning-curve PNG
    progress: bool = True  # tqdm progress bars


@dataclass
class TrainingConfig:
    """A whole run's config. ``model`` and ``objective`` are dicts (their builders own the keys)."""

    task: Task = "energy_force"
    data: DataConfig = field(default_factory=DataConfig)
    model: Dict[str, Any] = field(default_factory=dict)
    objective: Dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    init: InitConfig = field(default_factory=InitConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> Dict[str, Any]:
        """The nested plain dict (a deep copy): what ``load_config`` returns and runs store."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any], source: str = "<config>",
                  sources: Optional[Mapping[str, str]] = None) -> "TrainingConfig":
        """Validate the nested dict ``cfg`` (missing keys take their defaults) and build the config.

        ``source`` names where ``cfg`` came from in errors; ``sources`` maps top-level sections
        or dotted keys (``"model.cutoff"``) to another origin (``"--set"``) where they came from
        elsewhere. Raises ConfigError (one line, naming the key and its origin).
        """
        return _validate(cfg, source, sources or {})


#: The defaults as a nested dict (derived from the dataclasses). ``model``/``objective`` accept any key.
DEFAULTS: Dict[str, Any] = TrainingConfig().to_dict()


# --------------------------------------------------------------------------------------------
# the validator
# --------------------------------------------------------------------------------------------
class _Spec(NamedTuple):
    types: Tuple[type, ...]  # accepted types of a leaf
    nullable: bool
    choices: Optional[Tuple[Any, ...]]
    section: Optional[type]  # a nested dataclass
    free_form: bool  # a dict whose keys another builder checks (model, objective)
    check: Optional[Callable[[Any, str, str], None]]


def _spec(tp: Any, f: dataclasses.Field) -> _Spec:
    nullable = False
    if typing.get_origin(tp) is Union and type(None) in typing.get_args(tp):
        nullable = True
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = rest[0] if len(rest) == 1 else Union[tuple(rest)]
    choices = None
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        tp = type(choices[0])
    check = f.metadata.get("check")
    if dataclasses.is_dataclass(tp):
        return _Spec((), nullable, None, tp, False, None)
    if tp is dict or typing.get_origin(tp) is dict:
        return _Spec((dict,), nullable, None, None, check is None, check)
    types = (int, float) if tp is float else (tp,)
    return _Spec(types, nullable, choices, None, False, check)


_SPECS: Dict[type, Dict[str, _Spec]] = {}


def _specs(cls: type) -> Dict[str, _Spec]:
    if cls not in _SPECS:
        hints = typing.get_type_hints(cls)
        _SPECS[cls] = {f.name: _spec(hints[f.name], f) for f in dataclasses.fields(cls)}
    return _SPECS[cls]


def _fix_floats(cls: type, values: Mapping[str, Any]) -> Dict[str, Any]:
    """YAML 1.1 reads ``1e-4`` (no dot) as a string: convert such strings in float slots."""
    out = dict(values)
    for key, spec in _specs(cls).items():
        if key in out and spec.section is not None and isinstance(out[key], Mapping):
            out[key] = _fix_floats(spec.section, out[key])
        elif key in out and isinstance(out[key], str) and float in spec.types:
            try:
                out[key] = float(out[key])
            except ValueError:
                pass
    return out


def _check_section(cls: type, values: Mapping[str, Any], prefix: str, source: str,
                   sources: Mapping[str, str]) -> None:
    """Keys and types of ``values`` against the dataclass ``cls`` (nested sections recursively)."""
    specs = _specs(cls)
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        where = sources.get(dotted, sources.get(dotted.split(".")[0], source))
        if key not in specs:
            known = ", ".join(sorted(specs))
            scope = f"section '{prefix[:-1]}'" if prefix else "top level"
            raise ConfigError(f"{where}: unknown key '{dotted}' ({scope} accepts: {known})")
        spec = specs[key]
        if spec.section is not None:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: key '{dotted}' must be a mapping, found {value!r}")
            _check_section(spec.section, value, dotted + ".", source, sources)
            continue
        if spec.free_form:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: key '{dotted}' must be a mapping, found {type(value).__name__}")
            continue
        if value is None:
            if not spec.nullable:
                raise ConfigError(f"{where}: key '{dotted}' must not be null")
            continue
        if spec.check is not None:
            spec.check(value, dotted, where)
            continue
        ok = isinstance(value, spec.types) and not (isinstance(value, bool) and bool not in spec.types)
        if not ok:
            names = "/".join("float" if t is float else t.__name__ for t in spec.types)
            raise ConfigError(f"{where}: key '{dotted}' must be {names}, found {value!r} ({type(value).__name__})")
        if spec.choices is not None and value not in spec.choices:
            raise ConfigError(f"{where}: key '{dotted}' must be one of {list(spec.choices)}, found {value!r}")


def _build(cls: type, values: Mapping[str, Any]) -> Any:
    kwargs = {}
    for key, spec in _specs(cls).items():
        if key in values:
            v = values[key]
            kwargs[key] = _build(spec.section, v) if spec.section is not None else copy.deepcopy(v)
    return cls(**kwargs)


def model_error(exc: ValueError, where: str = "") -> ConfigError:
    """A model-config error (``models.registry.ModelConfigError``) as a training-config error:
    ``[where: ]key 'model.<key>' <problem>`` (or ``key 'model': <message>``)."""
    from maskpot.models.registry import ModelConfigError

    prefix = f"{where}: " if where else ""
    if isinstance(exc, ModelConfigError) and exc.key is not None:
        return ConfigError(f"{prefix}key 'model.{exc.key}' {exc.problem}")
    return ConfigError(f"{prefix}key 'model': {exc}")


def _check_model(model: Mapping[str, Any], source: str, sources: Mapping[str, str]) -> None:
    """A model section that names a model is checked by the registry (keys, types, values;
    species come from the data later). Without a name (fine-tuning: the checkpoint's) it is
    checked against the checkpoint when the run starts."""
    if "name" not in model:
        return
    from maskpot.models.registry import ModelConfigError, resolve_config

    try:
        resolve_config(model, require_species=False)
    except ValueError as exc:
        if isinstance(exc, ModelConfigError) and exc.key is not None:
            suspects = [exc.key]
        else:  # unknown keys, or the name
            known = _model_keys(model["name"])
            suspects = [k for k in model if k not in known] if known else ["name"]
        raise model_error(exc, _origin("model", suspects, source, sources)) from exc


def _model_keys(name: Any) -> List[str]:
    from maskpot.models.registry import default_config

    try:
        return [*default_config(str(name)), "species"]
    except ValueError:
        return []


def _origin(section: str, keys: Sequence[str], source: str, sources: Mapping[str, str]) -> str:
    """Where keys of the model section came from: ``--set`` when all of them did."""
    found = {sources.get(f"{section}.{k}", source) for k in keys}
    return found.pop() if len(found) == 1 else source


def _check_objective(task: str, objective: Mapping[str, Any], source: str, sources: Mapping[str, str]) -> None:
    from maskpot.training.objectives import build_objective

    try:
        build_objective(task, objective)
    except ValueError as exc:
        # the objective's errors name its key but not the file: blame --set when the rest passes
        rest = {k: v for k, v in objective.items() if sources.get(f"objective.{k}") != "--set"}
        where = source
        if len(rest) < len(objective):
            try:
                build_objective(task, rest)
                where = "--set"
            except ValueError:
                pass
        raise ConfigError(f"{where}: key 'objective' (task {task}): {exc}") from exc


def _check_rules(c: TrainingConfig, source: str) -> None:
    """Rules between keys (after the key-by-key checks)."""
    t = c.train
    for key in ("epochs", "batch_size"):
        if getattr(t, key) < 1:
            raise ConfigError(f"{source}: key 'train.{key}' must be >= 1, found {getattr(t, key)}")
    if t.eval_batch_size is not None and t.eval_batch_size < 1:
        raise ConfigError(f"{source}: key 'train.eval_batch_size' must be >= 1, found {t.eval_batch_size}")
    if t.lr <= 0:
        raise ConfigError(f"{source}: key 'train.lr' must be > 0, found {t.lr}")
    if not 0.0 <= t.ema_decay < 1.0:
        raise ConfigError(f"{source}: key 'train.ema_decay' must be in [0, 1), found {t.ema_decay}")
    if t.warmup_epochs < 0 or t.warmup_epochs > t.epochs:
        raise ConfigError(f"{source}: key 'train.warmup_epochs' must be in [0, epochs], found {t.warmup_epochs}")
    if t.max_steps is not None and t.max_steps < 1:
        raise ConfigError(f"{source}: key 'train.max_steps' must be >= 1 or null, found {t.max_steps}")
    if not 0.0 < t.plateau_factor < 1.0:
        raise ConfigError(f"{source}: key 'train.plateau_factor' must be in (0, 1), found {t.plateau_factor}")
    if c.data.test_path and (c.data.splits or {}).get("test", 0):
        raise ConfigError(
            f"{source}: key 'data.splits.test' must be 0 when 'data.test_path' is set (the test set is that file)"
        )
    if c.init.freeze_encoder and not c.init.checkpoint:
        raise ConfigError(f"{source}: key 'init.freeze_encoder' needs 'init.checkpoint' (nothing to freeze from scratch)")


def _validate(cfg: Mapping[str, Any], source: str, sources: Mapping[str, str]) -> TrainingConfig:
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{source}: expected a mapping at top level, found {type(cfg).__name__}")
    fixed = _fix_floats(TrainingConfig, cfg)
    _check_section(TrainingConfig, fixed, "", source, sources)
    config: TrainingConfig = _build(TrainingConfig, fixed)
    _check_rules(config, source)
    _check_model(config.model, source, sources)
    if config.objective:
        _check_objective(config.task, config.objective, source, sources)
    return config


# --------------------------------------------------------------------------------------------
# dicts, overrides, loading and saving
# --------------------------------------------------------------------------------------------
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


def validate_config(cfg: Mapping[str, Any], source: str = "<config>") -> Dict[str, Any]:
    """Check keys, types and cross-field rules of a nested dict; return the resolved dict
    (defaults filled in, numeric strings fixed)."""
    return TrainingConfig.from_dict(cfg, source).to_dict()


def _read_yaml(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path}: not found")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: invalid YAML ({exc})") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path}: expected a mapping at top level, found {type(loaded).__name__}")
    return loaded


def _override_sources(overrides: Mapping[str, Any]) -> Dict[str, str]:
    """``{"model.cutoff": "--set", "objective": "--set", ...}`` for the keys set by ``--set``."""
    out = {}
    for section in ("model", "objective"):
        value = overrides.get(section)
        if isinstance(value, Mapping):
            out[section] = "--set"
            out.update({f"{section}.{k}": "--set" for k in value})
    return out


def load_training_config(
    path: Optional[PathLike] = None,
    overrides: Sequence[str] = (),
    extra: Optional[Mapping[str, Any]] = None,
) -> TrainingConfig:
    """Defaults <- YAML file <- ``extra`` (dict) <- ``overrides`` (``key=value`` strings), validated.

    Raises:
        ConfigError: naming the key and the file (or ``--set``) it came from.
    """
    cfg: Dict[str, Any] = {}
    source = "<config>"
    sources: Dict[str, str] = {}
    if path is not None:
        path = Path(path)
        source = str(path)
        loaded = _read_yaml(path)
        _check_section(TrainingConfig, _fix_floats(TrainingConfig, loaded), "", source, {})
        cfg = merge(cfg, loaded)
    if extra:
        cfg = merge(cfg, extra)
    if overrides:
        with_overrides = apply_overrides({}, overrides)
        _check_section(TrainingConfig, _fix_floats(TrainingConfig, with_overrides), "", "--set", {})
        cfg = merge(cfg, with_overrides)
        sources = _override_sources(with_overrides)
    return TrainingConfig.from_dict(cfg, source, sources)


def load_config(
    path: Optional[PathLike] = None,
    overrides: Sequence[str] = (),
    extra: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """:func:`load_training_config` as a nested dict (``TrainingConfig.to_dict()``)."""
    return load_training_config(path, overrides, extra).to_dict()


def to_yaml(cfg: Union[TrainingConfig, Mapping[str, Any]]) -> str:
    if isinstance(cfg, TrainingConfig):
        cfg = cfg.to_dict()
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


def save_config(cfg: Union[TrainingConfig, Mapping[str, Any]], path: PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    atomic_write_text(path, to_yaml(cfg))
