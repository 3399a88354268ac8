#!/usr/bin/env python
"""Run the water-box example for several seeds (and temperatures) and tabulate the results.

    python examples/water_box/seeds.py [--seeds 0 1 2 3 4] [--temperatures 300 350] [--out runs/water_box_seeds]
                                       [--jobs 2] [--update-readme]

Each (seed, temperature) is one ``examples/water_box/run.py`` process (resumable: finished stages
are skipped). Runs at the second and later temperatures reuse the data, training and export of
the first temperature's run of the same seed (only the MD depends on the temperature). The table (mean ± std over seeds, and every run) is written to ``OUT/seeds.md`` and,
with ``--update-readme``, between the ``<!-- seeds-table -->`` markers of
``examples/water_box/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

HERE = Path(__file__).resolve().parent
MARK_BEGIN, MARK_END = "<!-- seeds-table -->", "<!-- /seeds-table -->"


def run_one(out: Path, seed: int, temperature: float, extra: List[str], reuse_from: Optional[Path] = None
            ) -> Tuple[int, Path]:
    folder = out / f"seed{seed}_{temperature:g}K"
    folder.mkdir(parents=True, exist_ok=True)
    if reuse_from is not None and (reuse_from / "model.pt").exists() and not (folder / "model.pt").exists():
        # same seed, other MD temperature: the data, training and export do not depend on it
        for name in ("data", "train"):
            if not (folder / name).exists():
                shutil.copytree(reuse_from / name, folder / name)
        shutil.copy2(reuse_from / "model.pt", folder / "model.pt")
    cmd = [sys.executable, str(HERE / "run.py"), "--out", str(folder), "--seed", str(seed),
           "--temperature", f"{temperature:g}", "--no-progress", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with open(folder / "run.log", "a") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    return rc, folder


def row(folder: Path) -> Optional[Dict[str, Any]]:
    f = folder / "summary.json"
    if not f.exists():
        return None
    s = json.loads(f.read_text())
    ana, checks, nve = s.get("analysis", {}), s.get("checks", {}), s.get("nve", {})
    learned = s["md"].get("learned", {})
    ft = s["test"].get("finetune", {})
    st = ana.get("stats", {})
    return {
        "seed": s["seed"], "T": s["temperature"], "stable": s["stable"],
        "steps": learned.get("steps_done"), "ps": (learned.get("steps_done") or 0) * 0.5e-3,
        "force_mae": ft.get("force_mae_meV_per_A"), "energy_mae": ft.get("energy_mae_meV_per_atom"),
        "rdf_oo": checks.get("rdf_oo_rmse", {}).get("value"),
        "rdf_floor": checks.get("rdf_oo_rmse", {}).get("tip3p_half_vs_half"),
        "T_mean": st.get("temperature_K_mean"),
        "T_mean_tip3p": ana.get("reference_stats", {}).get("temperature_K_mean"),
        "oh_rel": checks.get("oh_rel", {}).get("relative"), "hoh_rel": checks.get("hoh_rel", {}).get("relative"),
        "drift": nve.get("learned_nve", {}).get("drift_meV_per_atom_per_ps"),
        "drift_tip3p": nve.get("tip3p_nve", {}).get("drift_meV_per_atom_per_ps"),
        "speed": learned.get("speed_ns_per_day"), "train_s": _train_seconds(folder),
    }


def _train_seconds(folder: Path) -> Optional[float]:
    """Wall time of pretraining + fine-tuning (from the runs' own run.json; survives reruns)."""
    total = 0.0
    for name in ("mask", "finetune"):
        f = folder / "train" / name / "run.json"
        if not f.exists():
            return None
        total += float(json.loads(f.read_text()).get("summary", {}).get("elapsed_s") or 0.0)
    return total


def _fmt(v: Any, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "**NO**"
    if isinstance(v, float):
        return f"{v:.{nd}g}"
    return str(v)


COLUMNS = [("seed", "seed"), ("T", "T (K)"), ("stable", "stable"), ("ps", "NVT (ps)"),
           ("force_mae", "test F MAE (meV/Å)"), ("energy_mae", "test E MAE (meV/atom)"),
           ("rdf_oo", "O–O RDF rmse"), ("rdf_floor", "TIP3P half-vs-half rmse"), ("T_mean", "T mean (K)"), ("T_mean_tip3p", "TIP3P T mean (K)"), ("oh_rel", "O–H rel. dev."),
           ("hoh_rel", "H–O–H rel. dev."), ("drift", "NVE drift (meV/atom/ps)"),
           ("drift_tip3p", "TIP3P NVE drift"), ("speed", "ns/day"), ("train_s", "train wall (s)")]


def table(rows: List[Dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r[k]) for k, _ in COLUMNS) + " |")
    for T in sorted({r["T"] for r in rows}):
        group = [r for r in rows if r["T"] == T]
        cells = []
        for k, _ in COLUMNS:
            if k == "seed":
                cells.append(f"mean ± std ({len(group)})")
            elif k == "T":
                cells.append(_fmt(T))
            elif k == "stable":
                cells.append(f"{sum(bool(r['stable']) for r in group)}/{len(group)}")
            else:
                vals = np.array([r[k] for r in group if isinstance(r[k], (int, float)) and r[k] is not None], float)
                vals = vals[np.isfinite(vals)]
                cells.append(f"{vals.mean():.3g} ± {vals.std():.2g}" if len(vals) else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--temperatures", type=float, nargs="+", default=[300.0])
    ap.add_argument("--out", default="runs/water_box_seeds")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (one torch thread each)")
    ap.add_argument("--update-readme", action="store_true")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more options for run.py")
    args = ap.parse_args(argv)
    out = Path(args.out)
    extra = [a for a in args.extra if a != "--"]
    jobs = [(s, T) for T in args.temperatures for s in args.seeds]
    first = args.temperatures[0]

    def reuse(seed: int, T: float) -> Optional[Path]:
        return out / f"seed{seed}_{first:g}K" if T != first else None

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda j: run_one(out, j[0], j[1], extra, reuse(*j)), jobs))
    rows = [r for r in (row(folder) for _, folder in results) if r is not None]
    text = table(rows)
    (out / "seeds.md").write_text(text + "\n")
    print(text)
    if args.update_readme:
        from maskpot.utils import replace_marked_block

        replace_marked_block(HERE / "README.md", MARK_BEGIN, MARK_END, text)
    failed = [f"seed {s} at {T:g} K (exit {rc})" for (s, T), (rc, _) in zip(jobs, results) if rc != 0]
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
