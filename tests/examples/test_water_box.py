"""The main job (examples/water_box/run.py): failure is loud, and its training recipe gives a
potential that runs stable MD.

* A potential without restoring forces (all weights zero: constant energy) must trip the
  stability guard; the example then exits with status 3, prints one line on stderr and its
  report marks the run as partial and omits the structure.
* The example's own data and training stages, at a reduced size, give a potential that runs
  OpenMM NVT at 350 K without a guard trip.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("openmm")
pytest.importorskip("mdtraj")

RUN = Path(__file__).parents[2] / "examples" / "water_box" / "run.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("water_box_run", RUN)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _params(example, **kw):
    p = dict(example.SMALL)
    # 32 molecules at liquid density: box 9.86 Å (cutoff 3.5 Å < box / 2)
    p.update(n_molecules=32, box=9.86, md_equilibrate=200, md_equilibrate_learned=50, md_steps=600, md_report=25,
             nve_steps=40, threads=1, progress=False, seed=0, temperature=300.0)
    p.update(kw)
    p["seeds"] = example.seeds_for(p["seed"], p)
    return p


def test_unstable_learned_md_fails_loudly(example, tmp_path: Path, capsys) -> None:
    from maskpot.deploy.export import export_model
    from maskpot.models import build_model

    model = build_model({"name": "painn", "species": [1, 8], "cutoff": 3.5, "hidden_channels": 8, "num_layers": 1})
    with torch.no_grad():
        for prm in model.parameters():
            prm.zero_()  # constant energy: no force holds the molecules together
    path = tmp_path / "model.pt"
    export_model(model, path)
    p = _params(example)
    rc = example.finish(tmp_path, p, {}, path, {}, time.perf_counter())
    assert rc == example.EXIT_UNSTABLE
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("water_box: learned MD UNSTABLE at step")
    report = (tmp_path / "report.md").read_text()
    assert "PARTIAL RUN" in report and "O–H mean" not in report and "RDF distance" not in report
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stable"] is False and summary["checks"] == {}


@pytest.mark.slow
def test_recipe_gives_stable_md(example, tmp_path: Path) -> None:
    """Reduced recipe (32 molecules, fewer frames and epochs); 0.3 ps NVT at 350 K must not trip
    the guard (bond limits, closest pair 0.5 Å, temperature)."""
    p = _params(example, pretrain_frames=20, n_pretrain_seeds=1, label_frames=24, test_frames=8,
                equilibration_steps=500, pretrain_epochs=2, finetune_epochs=15, patience=0, temperature=350.0)
    data = example.stage_data(tmp_path, p)
    runs = example.stage_train(tmp_path, p, data, compare=False)
    model = example.stage_export(tmp_path, runs["finetune"])
    rc = example.finish(tmp_path, p, runs, model, {}, time.perf_counter())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert rc == 0, summary["md"]["learned"]
    assert summary["stable"] and summary["md"]["learned"]["steps_done"] == p["md_steps"]


def test_model_set_overrides_one_key(example) -> None:
    base = list(example.SMALL["model"])
    out = example.model_overrides(base, ["num_layers=1", "name=tensornet"])
    assert "model.num_layers=1" in out and "model.num_layers=2" not in out
    assert "model.name=tensornet" in out and "model.name=painn" not in out
    assert "model.hidden_channels=64" in out
    with pytest.raises(ValueError, match="KEY=VALUE"):
        example.model_overrides(base, ["num_layers"])
    with pytest.raises(SystemExit):
        example.main(["--model-set", "=1", "--out", "/nonexistent/never"])
