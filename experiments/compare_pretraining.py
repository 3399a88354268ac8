#!/usr/bin/env python
"""Scratch vs denoising pretraining vs masked pretraining, with identical fine-tuning budgets.

    python experiments/compare_pretraining.py                      # default: rMD17 aspirin, PaiNN, 50 labels, 3 seeds
    python experiments/compare_pretraining.py --dataset rmd17:ethanol --labels 25 50 100
    python experiments/compare_pretraining.py --dataset water-dft --model egnn --seeds 0 1
    python experiments/compare_pretraining.py --dataset tip3p-traj --model egnn --layers 3 --pretrain-seeds 0 \
        --finetune-steps 400 --patience 20 --labels 16 64     # separate trajectories (water_sources.py)
    python experiments/compare_pretraining.py --dataset water-dft-transfer --model egnn --layers 3 \
        --pool-trajectories 4 --pool-frames 500 --labels 8 32 128   # TIP3P pool -> DFT labels (water_transfer.py)

For one dataset, one model and several seeds, every seed runs:

* ``pretrain_mask`` and ``pretrain_denoise``: self-supervised pretraining on the *unlabelled*
  configurations of the training pool (the pool's frames are written to
  ``OUT/data/pretrain_unlabelled.npz`` without energies and forces, so no label can reach the
  pretraining stage; the pretraining transforms drop labels as well);
* for every ``N`` in ``--labels``: fine-tuning on ``N`` labelled frames drawn from the same pool
  (nested subsets: the first ``N`` of a seed-dependent permutation), (a) from scratch, (b) from
  the denoising checkpoint, (c) from the masking checkpoint. The three fine-tuning runs share one
  config (epochs, batch size, learning-rate schedule, loss weights, seed, splits); only
  ``init.checkpoint`` differs (and the architecture, which comes from the checkpoint, is the
  same by construction).

Validation frames (fixed over seeds) select ``best.pt``; test errors are measured on frames that
are neither in the pool nor in the validation set (rMD17: the separate ``test_01`` file).

Everything goes through maskpot's public training API: each run is
``load_config(<repo config>, overrides)`` + ``run_training(cfg)``, i.e. exactly
``maskpot-train <repo config> --set ...`` (the equivalent command lines are written to
``OUT/commands.sh``; each run folder holds its resolved ``config.yaml``).

Outputs under ``--out``: ``data/`` (unlabelled pretraining file, generated TIP3P data, test
subset), ``splits/``, ``runs/<run>/`` (maskpot run folders), ``configs/<run>.yaml``,
``commands.sh``, ``summary.json``, ``convergence.png`` (validation force MAE per epoch, mean ±
std over seeds, one panel per label count), ``accuracy_vs_labels.png``; a markdown table is
appended to ``experiments/RESULTS.md`` (``--results-md``).

``--dataset rmd17:<molecule> --pretrain-molecules all`` (or a list of molecules) pretrains on
several rMD17 molecules' train_01 frames (labels removed; never the target's fine-tuning validation
frames nor any test_01 frame), with the pretext validation set held out of that pool
(``--pretrain-val-per-molecule``) and an optional cap ``--pretrain-frames-per-molecule``; the model's
species are every element of the pool, for scratch as well (one architecture). ``--pretrain-only``
runs the pretraining stages alone (pretext score vs the geometry-only rule, per molecule too).

``--dataset water-dft-transfer`` (experiments/water_transfer.py) pretrains on independent TIP3P
trajectories in the DFT box and fine-tunes on the DFT frames, with three more arms: ``supervised``
(TIP3P energies/forces), ``mask_supervised`` (supervised pretraining started from the mask
checkpoint) and ``mask_dft`` (masking on the unlabelled DFT fine-tuning candidates).

Opt-in arms (never in a default list; the new arms come last in tables and run order):
``denoise_1A`` (denoising pretraining with σ = 1.0 Å, the reference code's value, instead of 0.2 Å;
same data and budget as ``denoise``), ``mask_denoise`` (in sequence: a σ = 0.2 Å denoising stage
started from the ``pretrain_mask`` checkpoint, same epochs/lr; asking for it runs ``mask`` too) on
any dataset, with water-dft-transfer ``supervised_2x`` (``supervised`` with twice
``--pretrain-epochs``: the equal-compute control of ``mask_supervised``), and with rMD17
``mask_reference`` (masking with the reference code's variant and loss beside ``mask``, whose variant
``--mask-variant`` sets: the two variants in one grid, paired by seed).

Resumable: a run whose ``test_metrics.json`` exists is skipped, an interrupted one (``last.pt``
without ``test_metrics.json``) is resumed exactly; a run folder whose stored config differs from
the requested one is an error (use another ``--out``).

Also ``python -m experiments.compare_pretraining ...`` (from the repository root). The code is split
by job (modules of the experiments package): ``grid.py`` (the experiment's constants, the
``--dataset`` parser, ``DatasetPlan``), ``compare_datasets.py``
(dataset planning per kind; the rMD17 multi-molecule pool in ``rmd17_sources.py``),
``compare_runs.py`` (run planning, configs, execution), ``compare_summary.py`` (summary.json),
``compare_report.py`` (plots, markdown table); this file keeps the command line and ``main``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

if __package__ in (None, ""):  # run as a file (python experiments/compare_pretraining.py): the repo root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments import compare_report, stats, water_sources, water_transfer
from experiments.compare_datasets import plan_dataset, resolve_defaults
from experiments.compare_report import markdown, plot
from experiments.compare_runs import check_identical_budgets, cli_line, execute, plan_runs, resolve
from experiments.compare_summary import summarise
from experiments.grid import (ALL_STRATEGIES, DEFAULT_DATA_ROOT, DEFAULT_TRANSFER_STRATEGIES, EXTRA_STRATEGIES, MODELS,
                              REPO, STRATEGIES, TRANSFER_ONLY_STRATEGIES, parse_dataset)
from experiments.rmd17_sources import pretrain_molecules

log = logging.getLogger("compare_pretraining")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="rmd17:aspirin",
                   help="water-dft | tip3p | tip3p-traj | water-dft-transfer | rmd17:<molecule>")
    p.add_argument("--model", default="painn", choices=MODELS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--labels", type=int, nargs="+", default=[50], help="labelled fine-tuning frames (sweep)")
    p.add_argument("--strategies", nargs="+", default=None, choices=ALL_STRATEGIES,
                   help=f"default: {' '.join(STRATEGIES)} (water-dft-transfer: {' '.join(DEFAULT_TRANSFER_STRATEGIES)}); "
                        f"{', '.join(TRANSFER_ONLY_STRATEGIES)} need water-dft-transfer; opt-in only: "
                        f"{', '.join(EXTRA_STRATEGIES)} (denoise_1A: denoising with sigma 1.0 A; mask_denoise: a "
                        "sigma 0.2 A denoising stage started from the mask checkpoint; supervised_2x: supervised "
                        "pretraining with twice --pretrain-epochs, the equal-compute control of mask_supervised; "
                        "mask_reference: rMD17 masking with the reference code's variant, beside mask)")
    p.add_argument("--out", default=None, help="output folder (default: runs/compare/<dataset>_<model>)")
    p.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT), help="shared data folder")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the pool/val/test split (fixed over --seeds)")
    p.add_argument("--val", type=int, default=50, help="validation frames (fixed over seeds)")
    p.add_argument("--pool", type=int, default=0, help="cap on the training pool (0: every non-val/test frame)")
    p.add_argument("--test-frames", type=int, default=0,
                   help="test frames (rMD17: random subset of test_01, 0 = all 1000; water: held-out frames, 0 = 10%%)")
    p.add_argument("--mask-variant", default=None, choices=("local", "reference"),
                   help="rMD17 masking: local (flagged neighbours of the hole) or the reference code's (every atom, "
                        "from the farthest hole, no flag, with its loss: cosine_form mean); default: the config's")
    r = p.add_argument_group("rMD17 pretraining pool (--dataset rmd17:<molecule>)")
    r.add_argument("--pretrain-molecules", nargs="+", default=None, metavar="MOL",
                   help="pretrain on these molecules' train_01 frames (labels removed; 'all' = the ten), never the "
                        "target's fine-tuning validation frames nor any test_01 frame; pretext validation = held-out "
                        "frames of the pool. Default: the target's own fine-tuning pool (validation = its "
                        "fine-tuning validation frames)")
    r.add_argument("--pretrain-frames-per-molecule", type=int, default=0,
                   help="with --pretrain-molecules: random pretraining frames per molecule (seed --data-seed; 0 = all)")
    r.add_argument("--pretrain-val-per-molecule", type=int, default=20,
                   help="with --pretrain-molecules: pretext-validation frames per molecule (held out of the pool)")
    r.add_argument("--pretrain-only", action="store_true",
                   help="run the pretraining stages only (pretext scores vs the geometry-only rule; no fine-tuning)")
    p.add_argument("--egnn-reference", action="store_true",
                   help="EGNN with the reference's coordinate updates and squared-distance input (--model egnn)")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--cutoff", type=float, default=None, help="Å (default: 5.0 rMD17, 3.5 water)")
    p.add_argument("--pretrain-epochs", type=int, default=3)
    p.add_argument("--pretrain-batch-size", type=int, default=16)
    p.add_argument("--pretrain-lr", type=float, default=1e-3)
    p.add_argument("--finetune-epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=10, help="fine-tuning batch size")
    p.add_argument("--eval-batch-size", type=int, default=50)
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tuning peak lr (cosine to lr/100)")
    p.add_argument("--ema", type=float, default=0.0, help="fine-tuning EMA decay")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (0: torch default)")
    p.add_argument("--tip3p-molecules", type=int, default=None, help="default 32 (water-dft-transfer: 64, as the DFT set)")
    p.add_argument("--tip3p-box", type=float, default=None, help="Å; default 9.86 (water-dft-transfer: 12.4447, the DFT box)")
    p.add_argument("--tip3p-frames", type=int, default=200)
    w = p.add_argument_group("tip3p-traj (separate trajectories for pool / labelled / test; experiments/water_sources.py) "
                             "and water-dft-transfer (TIP3P pool trajectories; experiments/water_transfer.py)")
    w.add_argument("--tip3p-every", type=int, default=400, help="MD steps (0.5 fs) between saved frames")
    w.add_argument("--tip3p-equilibration", type=int, default=10000, help="MD steps before the first frame")
    w.add_argument("--pool-trajectories", type=int, default=4, help="independent pretraining-pool trajectories")
    w.add_argument("--pool-frames", type=int, default=256, help="pretraining frames per pool trajectory")
    w.add_argument("--pool-val-frames", type=int, default=16,
                   help="pretext-validation frames per pool trajectory (its last frames)")
    w.add_argument("--labelled-pool", type=int, default=256,
                   help="candidate fine-tuning frames of the labelled trajectory (the nested subsets' pool)")
    w.add_argument("--pretrain-seeds", type=int, nargs="+", default=None,
                   help="pretraining seeds (default: one pretraining run per fine-tuning seed); with one value, "
                        "every fine-tuning seed starts from that seed's checkpoint")
    w.add_argument("--finetune-steps", type=int, default=0,
                   help="fine-tuning budget in optimiser steps, the same for every N (epochs = steps / batches "
                        "per epoch); 0: --finetune-epochs for every N")
    w.add_argument("--patience", type=int, default=0,
                   help="fine-tuning early stopping: epochs without a lower validation loss (0 = off)")
    w.add_argument("--data-only", action="store_true", help="generate / check the data, then stop")
    p.add_argument("--summary-only", action="store_true",
                   help="train nothing: summary.json, plots and tables from the runs finished so far")
    p.add_argument("--results-md", default=str(REPO / "experiments" / "RESULTS.md"),
                   help="markdown file the results table is appended to ('' = none)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.labels = sorted(set(args.labels))
    args.seeds = list(dict.fromkeys(args.seeds))
    resolve_defaults(args)
    if args.egnn_reference and args.model != "egnn":
        raise SystemExit(f"--egnn-reference needs --model egnn (got --model {args.model})")
    try:
        pretrain_molecules(args)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    if args.pretrain_only and not [s for s in args.strategies if s != "scratch"]:
        raise SystemExit("--pretrain-only: --strategies has no pretraining arm")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("maskpot").setLevel(logging.WARNING)
    t_start = time.time()
    kind, name = parse_dataset(args.dataset)
    out = Path(args.out) if args.out else REPO / "runs" / "compare" / f"{name.replace(':', '_')}_{args.model}"
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python experiments/compare_pretraining.py", *(shlex.quote(a) for a in argv)])

    plan = plan_dataset(args, out)
    if args.data_only:
        log.info("--data-only: data ready in %s", out / "data")
        return 0
    runs = plan_runs(args, plan, out)
    cfgs = {r.name: resolve(r) for r in runs}
    check_identical_budgets(cfgs, runs)
    from maskpot.training.config import save_config

    for r in runs:
        save_config(cfgs[r.name], out / "configs" / f"{r.name}.yaml")
    (out / "commands.sh").write_text(
        "# equivalent maskpot-train command lines (run from the repository root), in order\n"
        + "\n".join(cli_line(r) for r in runs) + "\n")
    log.info("%s: %d runs (%s), pool %d, val %d, test %d, pretraining %d + %d (pretext val) frames -> %s", plan.name,
             len(runs), ", ".join(args.strategies), len(plan.pool_idx), len(plan.val_idx), plan.n_test,
             plan.pretrain_n_train if plan.pretrain_n_train is not None else len(plan.pool_idx),
             plan.pretrain_n_val if plan.pretrain_n_val is not None else len(plan.val_idx), out)

    from tqdm.auto import tqdm

    from maskpot.utils import progress_wanted

    results: Dict[str, Dict[str, Any]] = {}
    bar = tqdm(runs, desc="runs", unit="run", disable=not progress_wanted(not args.no_progress), dynamic_ncols=True)
    if args.summary_only:  # tables from the finished runs' saved metrics; nothing is trained
        bar = []
        for r in runs:
            if (r.dir / "test_metrics.json").is_file():
                res = {"skipped": True, **json.loads((r.dir / "test_metrics.json").read_text())}
                if (r.dir / "wall_time.json").is_file():
                    res["wall_s"] = json.loads((r.dir / "wall_time.json").read_text())["wall_s"]
                results[r.name] = res
    for r in bar:
        bar.set_postfix_str(r.name)
        if r.depends and not (out / "runs" / r.depends / "best.pt").is_file():
            raise RuntimeError(f"{r.name}: pretraining checkpoint of {r.depends} missing")
        res = execute(r, cfgs[r.name])
        if "wall_s" not in res and (r.dir / "wall_time.json").is_file():
            res["wall_s"] = json.loads((r.dir / "wall_time.json").read_text())["wall_s"]
        results[r.name] = res
        if r.stage == "finetune":
            log.info("%s: E %.2f meV/atom, F %.1f meV/Å%s", r.name, res["energy_mae_meV_per_atom"],
                     res["force_mae_meV_per_A"], " (done earlier)" if res.get("skipped") else "")
    wall = time.time() - t_start
    previous = out / "summary.json"
    if args.summary_only and previous.is_file():
        # regenerating tables: the wall time and command are those of the run that trained, unless
        # that run trained other arms (processes sharing --out): then this command names the grid
        try:
            old = json.loads(previous.read_text())
            wall = float(old.get("wall_s", wall))
            if old.get("strategies") == list(args.strategies):
                command = str(old.get("command", command))
        except (ValueError, OSError) as exc:
            log.warning("%s: unreadable (%s); the table states this process's wall time and command", previous, exc)
    summary = summarise(args, plan, runs, results, wall, command)
    summary["runs_planned"], summary["runs_finished"] = len(runs), len(results)
    summary["summary_only"] = bool(args.summary_only)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if summary["results"]:  # nothing fine-tuned yet (or --pretrain-only): no curves to plot
        plot(summary, out)
    if plan.kind == "water-dft-transfer":
        water_transfer.add_comparisons(summary, stats)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        table, markers = water_transfer.markdown(summary, stats, out), water_transfer.block_markers(summary)
    elif plan.kind == "water-traj":
        table, markers = water_sources.markdown(summary, stats, out), water_sources.block_markers(summary)
    else:
        table, markers = markdown(summary), compare_report.block_markers(summary)
    print("\n" + table)
    if args.results_md:  # this grid's block of RESULTS.md, replaced in place on a rerun
        compare_report.write_results_block(Path(args.results_md), summary, table, markers)
    log.info("done in %.1f min: %s", wall / 60, out)
    return 0

if __name__ == "__main__":
    sys.exit(main())
