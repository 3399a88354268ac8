#!/usr/bin/env python
"""Tabulate the rMD17 accuracy runs of ``examples/rmd17/run.py --full`` against published models.

    python examples/rmd17/table.py [--out runs/rmd17 [runs/other ...]] [--update-readme]

Reads ``OUT/<molecule>/train/accurate/{test_metrics.json,run.json,best.pt}`` and
``OUT/<molecule>/{md,nve}/result.json`` of every ``--out`` folder (several: one row per folder
and molecule, e.g. two models) and writes their table to ``accuracy.md`` in the first folder.
``--update-readme`` also merges those rows into the committed record ``examples/rmd17/results.json``
(``--record``; a row per run folder and molecule, a rerun of a folder replaces its rows) and
rewrites the block between ``<!-- accuracy-table -->`` markers of ``examples/rmd17/README.md``
from the whole record: run folders are not kept between machines, the rows measured on them are.
Published numbers are quoted from the papers cited in the README; ours are measured by this code.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
MARK_BEGIN, MARK_END = "<!-- accuracy-table -->", "<!-- /accuracy-table -->"

#: (energy MAE meV, force MAE meV/Å) on rMD17 with 950 training frames, quoted from the papers
#: (MACE: Batatia et al. 2022; NequIP: Batzner et al. 2022; TensorNet: Simeon & De Fabritiis 2023).
ANCHORS: Dict[str, Dict[str, tuple]] = {
    "aspirin": {"MACE": (2.2, 6.6), "NequIP (l=3)": (2.3, 8.5), "TensorNet": (2.4, 8.9)},
    "ethanol": {"MACE": (0.4, 2.1), "NequIP (l=3)": (0.4, 3.4)},
}
TARGETS = {"aspirin": (10.0, 15.0), "ethanol": (3.0, 5.0)}


def _num_params(ckpt: Path) -> Optional[int]:
    try:
        from maskpot.checkpoint import load_checkpoint

        state = load_checkpoint(ckpt)["model_state"]
        return int(sum(v.numel() for k, v in state.items() if v.is_floating_point() and "normalization" not in k))
    except Exception:
        return None


def _train_seconds(run: Path, summary: Dict[str, Any]) -> Optional[float]:
    """Training wall time summed over the epochs of metrics.csv (counts every resumed segment;
    run.json's elapsed_s only covers the last one)."""
    import csv

    try:
        with open(run / "metrics.csv", newline="") as fh:
            return float(sum(float(row["time_s"]) for row in csv.DictReader(fh)))
    except (OSError, KeyError, ValueError):
        return summary.get("elapsed_s")


def _recipe_text(cfg: Dict[str, Any]) -> str:
    """Loss form, energy : force weights, peak learning rate and (when not 0) weight decay of a run,
    e.g. "MSE 1:100, lr 0.003" or "MSE 1:100, lr 0.001, wd 0.01" (the recipe differs between rows)."""
    objective = cfg.get("objective", {})
    kind = str(objective.get("loss_kind", "?")).upper()
    ew, fw = objective.get("energy_weight"), objective.get("force_weight")
    text = kind if not ew or fw is None else f"{kind} 1:{float(fw) / float(ew):g}"
    lr = cfg.get("train", {}).get("lr")
    if lr is not None:
        text += f", lr {float(lr):g}"
    wd = cfg.get("train", {}).get("weight_decay")
    return f"{text}, wd {float(wd):g}" if wd else text


def _init_text(info: Dict[str, Any]) -> str:
    """", masked-pretrained" (or the pretraining task) for a run started from a pretrained
    checkpoint (run.json ``init``), "" for one from scratch."""
    task = (info.get("init") or {}).get("source_task")
    if not task:
        return ""
    return ", masked-pretrained" if task == "mask" else f", {task}-pretrained"


def _seed_text(cfg: Dict[str, Any]) -> str:
    """", seed N" for a fine-tuning seed other than the default 0 (rows of one recipe, several seeds)."""
    seed = cfg.get("train", {}).get("seed") or 0
    return f", seed {seed}" if seed else ""


def collect(out: Path) -> List[Dict[str, Any]]:
    if not out.is_dir():
        raise SystemExit(f"{out}: no such run folder (--out expects the --out of run.py --full)")
    rows = []
    # a molecule's folder: <molecule>, or <molecule>_seed<N> for run.py --seed N
    for mol_dir in sorted(p for p in out.iterdir() if p.is_dir()):
        run = mol_dir / "train" / "accurate"
        if not (run / "test_metrics.json").exists():
            continue
        tm = json.loads((run / "test_metrics.json").read_text())
        info = json.loads((run / "run.json").read_text())
        cfg = info["config"]
        summ = info.get("summary", {})
        md = {}
        for k in ("md", "nve"):
            f = mol_dir / k / "result.json"
            md[k] = json.loads(f.read_text()) if f.exists() else {}
        rows.append({
            "source": str(out.resolve()), "folder": mol_dir.name, "recorded": time.strftime("%Y-%m-%d"),
            "molecule": re.sub(r"_seed\d+$", "", mol_dir.name), "energy_mae": tm.get("energy_mae_meV"), "force_mae": tm.get("force_mae_meV_per_A"),
            "n_test": tm.get("n_frames"), "epochs": summ.get("epochs_done"), "train_s": _train_seconds(run, summ),
            "model": f"{cfg['model']['name']} {cfg['model'].get('hidden_channels')}x{cfg['model'].get('num_layers')}, "
                     f"{cfg['model'].get('cutoff')} Å{_init_text(info)}{_seed_text(cfg)}", "params": _num_params(run / "best.pt"),
            "threads": cfg["train"].get("num_threads") or info.get("torch_threads"),
            "loss": _recipe_text(cfg),
            "md": md,
        })
    return rows


def table(rows: List[Dict[str, Any]]) -> str:
    """Markdown: per molecule, our rows (lowest force error first), then the published anchors."""
    lines = ["| molecule | model | energy MAE (meV) | force MAE (meV/Å) | target E / F | loss E:F, lr | epochs | "
             "train wall (min) | parameters | 10 ps NVT (ASE, 300 K) |", "|---|---|---|---|---|---|---|---|---|---|"]
    molecules = sorted({r["molecule"] for r in rows})
    for mol in molecules:
        lines += _molecule_rows(sorted((r for r in rows if r["molecule"] == mol), key=lambda r: r["force_mae"]))
    return "\n".join(lines)


def _molecule_rows(rows: List[Dict[str, Any]]) -> List[str]:
    lines = []
    for r in rows:
        md = r["md"].get("md", {})
        status = f"{md.get('status')}, {md.get('steps_done')} steps" if md else "not run"
        tgt = TARGETS.get(r["molecule"])
        threads = f" ({r['threads']} thread{'s' if int(r['threads']) > 1 else ''})" if r["threads"] else ""
        lines.append(f"| {r['molecule']} | **ours**: {r['model']} | **{r['energy_mae']:.1f}** | **{r['force_mae']:.1f}** | "
                     f"{'%g / %g' % tgt if tgt else '–'} | {r.get('loss', '')} | {r['epochs']} | {r['train_s'] / 60:.0f}"
                     f"{threads} | {r['params']} | {status} |")
    mol = rows[0]["molecule"]
    for name, (e, f) in ANCHORS.get(mol, {}).items():
        lines.append(f"| {mol} | {name} (published) | {e} | {f} | | | | | | |")
    return lines


def _record_key(row: Dict[str, Any]) -> tuple:
    """A recorded row's identity: its run folder and molecule folder (``<molecule>_seed<N>`` apart)."""
    return row["source"], row.get("folder", row["molecule"])


def merge_record(path: Path, rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The rows of the record file ``path`` (``{"rows": [...]}``) with ``rows`` merged in: a row
    replaces the recorded one of the same run folder and molecule folder (seeds apart). Writes the record atomically and
    returns all its rows."""
    from maskpot.utils import atomic_write_json

    recorded: List[Dict[str, Any]] = []
    if path.is_file():
        try:
            recorded = json.loads(path.read_text())["rows"]
        except (ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"{path}: not a results record (expected a JSON object with a 'rows' list): {exc}")
        need = ("source", "molecule", "energy_mae", "force_mae", "model")
        bad = [i for i, r in enumerate(recorded) if not isinstance(r, dict) or any(k not in r for k in need)]
        if bad:
            raise SystemExit(f"{path}: rows {bad[:5]} lack one of the keys {need}")
    new = {_record_key(r) for r in rows}
    merged = [r for r in recorded if _record_key(r) not in new] + list(rows)
    atomic_write_json(path, {"rows": merged})
    return merged


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", nargs="*", default=["runs/rmd17"],
                    help="run folders of run.py --full (none: with --update-readme, only redraw the README from the record)")
    ap.add_argument("--update-readme", action="store_true",
                    help="merge the rows into --record and rewrite the README table from the whole record")
    ap.add_argument("--record", type=Path, default=HERE / "results.json", help="committed record of measured rows")
    ap.add_argument("--readme", type=Path, default=HERE / "README.md", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    rows = [row for out in args.out for row in collect(Path(out))]
    if rows:
        text = table(rows)
        (Path(args.out[0]) / "accuracy.md").write_text(text + "\n")
        print(text)
    elif args.out or not args.update_readme:
        print(f"no finished --full runs under {' '.join(args.out) or '(no --out)'}", file=sys.stderr)
        return 1
    if args.update_readme:
        from maskpot.utils import replace_marked_block

        if not replace_marked_block(args.readme, MARK_BEGIN, MARK_END, table(merge_record(args.record, rows))):
            raise SystemExit(f"{args.readme}: no {MARK_BEGIN} ... {MARK_END} block to replace")
    return 0


if __name__ == "__main__":
    sys.exit(main())
