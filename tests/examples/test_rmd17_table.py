"""examples/rmd17/table.py: one row per run folder and molecule (several folders side by side),
published anchors once per molecule, wall time summed over every resumed segment."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

TABLE = Path(__file__).parents[2] / "examples" / "rmd17" / "table.py"


def _table_module():
    spec = importlib.util.spec_from_file_location("rmd17_table", TABLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fake_run(root: Path, molecule: str, model: str, force: float, epoch_seconds: list, force_weight: float = 100.0,
              lr: float = 3e-3, init_task: str = "") -> None:
    run = root / molecule / "train" / "accurate"
    run.mkdir(parents=True)
    (run / "test_metrics.json").write_text(json.dumps({"energy_mae_meV": 2.0, "force_mae_meV_per_A": force,
                                                       "n_frames": 1000}))
    cfg = {"model": {"name": model, "hidden_channels": 64, "num_layers": 2, "cutoff": 5.0},
           "train": {"num_threads": None, "lr": lr},
           "objective": {"loss_kind": "mse", "energy_weight": 1.0, "force_weight": force_weight}}
    # elapsed_s covers only the last resumed segment; the table must not use it when metrics.csv exists
    info = {"config": cfg, "torch_threads": 1, "summary": {"epochs_done": len(epoch_seconds), "elapsed_s": 1.0}}
    if init_task:
        info["init"] = {"checkpoint": "/x/best.pt", "source_task": init_task}
    (run / "run.json").write_text(json.dumps(info))
    rows = ["epoch,step,time_s"] + [f"{k + 1},{k},{t}" for k, t in enumerate(epoch_seconds)]
    (run / "metrics.csv").write_text("\n".join(rows) + "\n")


def test_two_folders_side_by_side(tmp_path: Path) -> None:
    table = _table_module()
    _fake_run(tmp_path / "a", "ethanol", "tensornet", 11.0, [60.0, 60.0, 120.0])
    _fake_run(tmp_path / "b", "ethanol", "painn", 16.8, [60.0], force_weight=10.0, lr=1e-3, init_task="mask")
    assert table.main(["--out", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    text = (tmp_path / "a" / "accuracy.md").read_text()
    ours = [line for line in text.splitlines() if "**ours**" in line]
    assert len(ours) == 2 and "tensornet" in ours[0] and "painn" in ours[1]
    # a fine-tuned row says what it was pretrained by, a scratch row says nothing
    assert "masked-pretrained" in ours[1] and "pretrained" not in ours[0]
    assert "| 4 (1 thread) |" in ours[0]  # 240 s summed over the resumed segments
    assert text.count("MACE (published)") == 1
    # the recipe differs between rows: each states its loss, energy : force weights and learning rate
    assert "| MSE 1:100, lr 0.003 |" in ours[0] and "| MSE 1:10, lr 0.001 |" in ours[1]
    header = text.splitlines()[0]
    assert all(line.count("|") == header.count("|") for line in text.splitlines() if line.startswith("| "))


def test_readme_table_is_drawn_from_the_committed_record(tmp_path: Path) -> None:
    """--update-readme merges a folder's rows into the record (a rerun replaces them, other folders'
    rows stay though their folders are gone) and draws the README block from the whole record."""
    table = _table_module()
    readme, record = tmp_path / "README.md", tmp_path / "results.json"
    readme.write_text(f"intro\n{table.MARK_BEGIN}\nold\n{table.MARK_END}\noutro\n")
    common = ["--update-readme", "--record", str(record), "--readme", str(readme)]
    _fake_run(tmp_path / "a", "ethanol", "tensornet", 11.0, [60.0])
    _fake_run(tmp_path / "b", "ethanol", "painn", 16.8, [60.0])
    assert table.main(["--out", str(tmp_path / "a")] + common) == 0
    assert table.main(["--out", str(tmp_path / "b")] + common) == 0
    (tmp_path / "a" / "ethanol" / "train" / "accurate" / "test_metrics.json").write_text(
        json.dumps({"energy_mae_meV": 2.0, "force_mae_meV_per_A": 20.0, "n_frames": 1000}))
    assert table.main(["--out", str(tmp_path / "a")] + common) == 0  # rerun of folder a: its row replaced
    text = readme.read_text()
    ours = [line for line in text.splitlines() if "**ours**" in line]
    assert len(ours) == 2 and "**16.8**" in ours[0] and "**20.0**" in ours[1]  # lowest force error first
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text
    rows = json.loads(record.read_text())["rows"]
    assert sorted(r["force_mae"] for r in rows) == [16.8, 20.0]
    # no --out: the README is redrawn from the record alone; a broken record is named
    readme.write_text(f"{table.MARK_BEGIN}\n{table.MARK_END}\n")
    assert table.main(["--out"] + common) == 0 and readme.read_text().count("**ours**") == 2
    record.write_text('{"rows": [{"molecule": "ethanol"}]}')
    try:
        table.main(["--out"] + common)
    except SystemExit as exc:
        assert str(record) in str(exc) and "source" in str(exc)
    else:
        raise AssertionError("a record row without its keys must be refused")


def test_seed_folders_are_rows_of_their_molecule(tmp_path: Path) -> None:
    """run.py --seed N writes <molecule>_seed<N>: the table files it under its molecule and says the seed."""
    table = _table_module()
    _fake_run(tmp_path / "a", "ethanol", "tensornet", 11.0, [60.0])
    _fake_run(tmp_path / "a", "ethanol_seed3", "tensornet", 12.0, [60.0])
    cfg_file = tmp_path / "a" / "ethanol_seed3" / "train" / "accurate" / "run.json"
    info = json.loads(cfg_file.read_text())
    info["config"]["train"]["seed"] = 3
    cfg_file.write_text(json.dumps(info))
    rows = table.collect(tmp_path / "a")
    assert [r["molecule"] for r in rows] == ["ethanol", "ethanol"]
    assert "seed" not in rows[0]["model"] and rows[1]["model"].endswith(", seed 3")
    record = tmp_path / "results.json"
    readme = tmp_path / "README.md"
    readme.write_text(f"{table.MARK_BEGIN}\n{table.MARK_END}\n")
    for _ in range(2):  # the two seeds of one run folder stay two rows, a rerun adds none
        assert table.main(["--out", str(tmp_path / "a"), "--update-readme", "--record", str(record),
                           "--readme", str(readme)]) == 0
    assert len(json.loads(record.read_text())["rows"]) == 2 and readme.read_text().count("**ours**") == 2


def test_table_states_a_nonzero_weight_decay() -> None:
    table = _table_module()
    assert table._recipe_text({"objective": {"loss_kind": "mse", "energy_weight": 1, "force_weight": 100},
                               "train": {"lr": 1e-3, "weight_decay": 0.01}}) == "MSE 1:100, lr 0.001, wd 0.01"
    assert table._recipe_text({"train": {"lr": 1e-3, "weight_decay": 0.0}}).endswith("lr 0.001")


def test_missing_run_folder_is_named(tmp_path: Path) -> None:
    table = _table_module()
    with pytest.raises(SystemExit, match="nope: no such run folder"):
        table.main(["--out", str(tmp_path / "nope")])
