"""Config parsing and the CLI chain: pretrain (mask) -> fine-tune (--init) -> maskpot-eval."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

import pytest
import torch
import yaml

from maskpot.training.checkpoint import load_checkpoint
from maskpot.training.cli import eval_main, train_main
from maskpot.training.config import ConfigError, load_config, parse_override

CONFIGS = Path(__file__).parents[2] / "configs"


@pytest.fixture(scope="module")
def water(tmp_path_factory) -> Path:
    from maskpot.data.tip3p import generate_tip3p, save_tip3p_npz

    path = tmp_path_factory.mktemp("cli_data") / "water.npz"
    data = generate_tip3p(n_molecules=8, box=7.0, n_frames=12, every=5, seed=2, equilibration_steps=50,
                          platform="Reference", progress=False, minimize_iterations=100)
    save_tip3p_npz(path, data)
    return path


# ---- config --------------------------------------------------------------------------------
def test_overrides_and_defaults(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("task: mask\ntrain:\n  lr: 1e-4\n  epochs: 3\nmodel: {name: egnn}\n")
    cfg = load_config(f, ["train.lr=3e-4", "model.hidden_channels=8", "data.splits.val=5", "output.tensorboard=true"])
    assert cfg["task"] == "mask" and cfg["train"]["lr"] == 3e-4 and cfg["train"]["epochs"] == 3
    assert cfg["model"] == {"name": "egnn", "hidden_channels": 8}
    assert cfg["data"]["splits"] == {"val": 5} and cfg["output"]["tensorboard"] is True
    assert cfg["train"]["batch_size"] == 16  # default filled in
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        ("train:\n  lr: 1e-4\n  learning_rate: 1\n", [], "unknown key 'train.learning_rate'"),
        ("trian: {}\n", [], "unknown key 'trian'"),
        ("train: {epochs: ten}\n", [], "key 'train.epochs' must be int"),
        ("train: {scheduler: step}\n", [], "key 'train.scheduler' must be one of"),
        ("init: {reset_heads: 1}\n", [], "key 'init.reset_heads' must be bool"),
        ("", ["train.batchsize=4"], "--set: unknown key 'train.batchsize'"),
        ("", ["train.lr"], "expected KEY=VALUE"),
        ("", ["data.splits={train: 1, vall: 2}"], "unknown key 'data.splits.vall'"),
    ],
)
def test_config_errors_name_key_and_file(tmp_path: Path, text: str, overrides: list, message: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        load_config(f, overrides)
    if not overrides:
        assert str(f) in str(err.value)


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_are_valid(name: str) -> None:
    cfg = load_config(CONFIGS / name)
    assert cfg["task"] in ("mask", "mask_position", "denoise", "joint", "energy_force")
    from maskpot.training.objectives import build_objective

    build_objective(cfg["task"], cfg["objective"])


# ---- the chain -----------------------------------------------------------------------------
def _common(water: Path) -> list:
    return [
        "--set", f"data.path={water}",
        "--set", "data.splits={train: 6, val: 3, test: 3}",
        "--set", "train.epochs=2", "--set", "train.batch_size=3", "--set", "train.num_threads=1",
        "--set", "train.lr=0.002", "--no-progress",
    ]  # fmt: skip


def test_pretrain_finetune_eval_chain(water: Path, tmp_path: Path, capsys) -> None:
    pre, ft, scratch = tmp_path / "pre", tmp_path / "ft", tmp_path / "scratch"
    small = ["--set", "model={name: painn, cutoff: 3.0, hidden_channels: 16, num_layers: 1}"]
    assert train_main([str(CONFIGS / "water_pretrain_mask.yaml"), *_common(water), *small, "-o", str(pre)]) == 0
    for name in ("best.pt", "last.pt", "config.yaml", "run.json", "metrics.csv", "splits.npz",
                 "learning_curve.png", "test_metrics.json"):
        assert (pre / name).is_file(), name
    run = json.loads((pre / "run.json").read_text())
    assert run["status"] == "finished" and run["seed"] == 0 and "torch" in run["versions"] and run["data_hash"]["data"]
    assert run["torch_threads"] == torch.get_num_threads()  # what ran, whatever set it
    assert "mean_cosine" in json.loads((pre / "test_metrics.json").read_text())
    assert load_checkpoint(pre / "best.pt")["task"] == "mask"

    # fine-tune: the model comes from the checkpoint, the normalisation is refitted
    assert train_main([str(CONFIGS / "water_finetune.yaml"), *_common(water), "--init", str(pre / "best.pt"),
                       "-o", str(ft)]) == 0
    resolved = yaml.safe_load((ft / "config.yaml").read_text())
    assert resolved["model"]["hidden_channels"] == 16 and resolved["init"]["checkpoint"] == str(pre / "best.pt")
    ck = load_checkpoint(ft / "best.pt")
    norm = ck["normalization"]
    assert norm["energy_scale"] != 1.0 and any(v != 0 for v in norm["energy_shift_per_species"].values())
    test_metrics = json.loads((ft / "test_metrics.json").read_text())
    for key in ("energy_mae_meV", "energy_mae_meV_per_atom", "force_mae_meV_per_A", "force_rmse_meV_per_A"):
        assert test_metrics[key] > 0
    assert test_metrics["n_frames"] == 3

    # same command without --init trains from scratch
    assert train_main([str(CONFIGS / "water_scratch.yaml"), *_common(water), *small, "-o", str(scratch)]) == 0
    assert json.loads((scratch / "run.json").read_text())["init"] == {}

    # maskpot-eval on the test subset reproduces test_metrics.json
    capsys.readouterr()
    out_json = tmp_path / "eval.json"
    assert eval_main([str(ft / "best.pt"), str(water), "--split-file", str(ft / "splits.npz"), "--subset", "test",
                      "--json", str(out_json)]) == 0
    table = capsys.readouterr().out
    assert "forces (meV/Å)" in table and "energy (meV/atom)" in table
    ev = json.loads(out_json.read_text())
    assert ev["n_frames"] == 3
    assert ev["force_mae_meV_per_A"] == pytest.approx(test_metrics["force_mae_meV_per_A"], rel=1e-5)
    assert ev["energy_mae_meV"] == pytest.approx(test_metrics["energy_mae_meV"], rel=1e-5)


def test_init_with_mismatched_model_config_is_a_clear_error(water: Path, tmp_path: Path, capsys) -> None:
    pre = tmp_path / "pre"
    small = ["--set", "model={name: painn, cutoff: 3.0, hidden_channels: 16, num_layers: 1}"]
    assert train_main([str(CONFIGS / "water_scratch.yaml"), *_common(water), *small, "--set", "train.epochs=1",
                       "-o", str(pre)]) == 0
    capsys.readouterr()
    assert train_main([str(CONFIGS / "water_finetune.yaml"), *_common(water), "--init", str(pre / "last.pt"),
                       "--set", "model.hidden_channels=32", "-o", str(tmp_path / "ft")]) == 2
    assert "hidden_channels: checkpoint 16 vs config 32" in capsys.readouterr().err


def test_existing_run_needs_resume(water: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    args = [str(CONFIGS / "water_scratch.yaml"), *_common(water), "--set", "train.epochs=1", "--set",
            "model={name: gns, cutoff: 3.0, hidden_channels: 8, num_layers: 1}", "-o", str(out)]
    assert train_main(args) == 0
    capsys.readouterr()
    assert train_main(args) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert train_main([*args, "--resume", "--set", "train.lr=0.1"]) == 2
    assert "train.lr: 0.002 -> 0.1" in capsys.readouterr().err
    assert train_main(["--set", "output.dir=x"]) == 2  # no config file
    assert "config file is required" in capsys.readouterr().err


def test_train_stage_starts_resumes_and_skips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The examples' stage runner: a fresh run gets every override and --init; an interrupted one
    resumes with only the keys maskpot-train lets change; a finished one is not run again; a
    failure stops the pipeline."""
    import maskpot.training.cli as cli

    seen: List[List[str]] = []
    monkeypatch.setattr(cli, "train_main", lambda argv: seen.append(list(argv)) or 0)
    run = tmp_path / "ft"
    overrides = ["train.epochs=50", "train.num_threads=2", "model.cutoff=4.0"]
    lines: List[str] = []

    cli.train_stage(Path("cfg.yaml"), run, overrides, init=Path("pre/best.pt"), announce=lines.append)
    assert seen[-1] == ["cfg.yaml", "--output", str(run), "--set", "train.epochs=50", "--set", "train.num_threads=2",
                        "--set", "model.cutoff=4.0", "--init", str(Path("pre/best.pt"))]

    run.mkdir()
    (run / "last.pt").write_bytes(b"")
    (run / "run.json").write_text(json.dumps({"status": "interrupted"}))
    cli.train_stage(Path("cfg.yaml"), run, overrides, init=Path("pre/best.pt"), announce=lines.append)
    assert seen[-1] == ["--resume", "--output", str(run), "--set", "train.epochs=50", "--set", "train.num_threads=2"]

    (run / "run.json").write_text(json.dumps({"status": "finished"}))
    cli.train_stage(Path("cfg.yaml"), run, overrides, announce=lines.append)
    assert len(seen) == 2 and "skipping" in lines[-1]

    monkeypatch.setattr(cli, "train_main", lambda argv: 2)
    with pytest.raises(SystemExit, match="failed"):
        cli.train_stage(Path("cfg.yaml"), tmp_path / "other", overrides, announce=lines.append)
