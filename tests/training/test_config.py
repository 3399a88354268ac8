"""The typed training config: defaults defined once (the dataclasses), dict round trip, and one
validator whose errors name the key and where it came from (file or --set), model keys included."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from maskpot.training.config import (DEFAULTS, ConfigError, TrainingConfig, load_config, load_training_config,
                                     save_config, validate_config)


def test_defaults_come_from_the_dataclasses() -> None:
    c = TrainingConfig()
    assert DEFAULTS == c.to_dict()
    assert (c.task, c.train.epochs, c.train.lr, c.train.grad_clip, c.init.use_ema, c.output.dir) == (
        "energy_force", 100, 1e-4, 10.0, True, "runs/run")
    assert list(DEFAULTS) == ["task", "data", "model", "objective", "train", "init", "output"]


def test_typed_and_dict_forms_agree(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("task: denoise\ntrain: {lr: 1e-3, epochs: 4}\nmodel: {name: painn}\n")
    config = load_training_config(f, ["data.splits={train: 4, val: 2}"])
    assert config.train.lr == 1e-3 and config.train.epochs == 4 and config.data.splits == {"train": 4, "val": 2}
    assert config.to_dict() == load_config(f, ["data.splits={train: 4, val: 2}"])
    assert TrainingConfig.from_dict(config.to_dict()) == config
    save_config(config, tmp_path / "a.yaml")
    save_config(config.to_dict(), tmp_path / "b.yaml")
    assert (tmp_path / "a.yaml").read_text() == (tmp_path / "b.yaml").read_text()
    assert yaml.safe_load((tmp_path / "a.yaml").read_text()) == config.to_dict()


@pytest.mark.parametrize("text, overrides, message", [
    ("model: {name: painn, num_layers: abc}\n", [], r"c.yaml: key 'model.num_layers' must be an integer"),
    ("model: {name: painn}\n", ["model.cutoff=-1"], r"^--set: key 'model.cutoff' must be a positive number"),
    ("model: {name: painn}\n", ["model.hiden=3"], r"^--set: key 'model': unknown model config key\(s\) \['hiden'\]"),
    ("model: {name: nope}\n", [], r"c.yaml: key 'model': unknown model name 'nope'"),
    ("objective: {force_weight: 1}\n", ["objective.bogus=1"], r"^--set: key 'objective' \(task energy_force\)"),
    ("objective: {bogus: 1}\n", [], r"c.yaml: key 'objective' \(task energy_force\)"),
    ("data: {min_distance: fast}\n", [], r"c.yaml: key 'data.min_distance' must be int/float"),
    ("model:\n", [], r"c.yaml: key 'model' must be a mapping, found NoneType"),
])
def test_model_and_objective_errors_name_key_and_origin(tmp_path: Path, text: str, overrides: list,
                                                        message: str) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(f, overrides)


def test_validate_config_fills_defaults() -> None:
    cfg = validate_config({"train": {"lr": "3e-4"}})
    assert cfg["train"]["lr"] == 3e-4 and cfg["train"]["batch_size"] == 16
    with pytest.raises(ConfigError, match="key 'train.lr' must be > 0"):
        validate_config({"train": {"lr": 0}})
