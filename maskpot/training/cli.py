"""``maskpot-train`` (pretraining, fine-tuning, training from scratch: one command) and
``maskpot-eval``.

Examples::

    # masked pretraining on TIP3P water
    maskpot-train configs/water_pretrain_mask.yaml --set data.path=tip3p.npz --set output.dir=runs/pre
    # fine-tuning from it (same command without --init trains from scratch)
    maskpot-train configs/water_finetune.yaml --init runs/pre/best.pt --set output.dir=runs/ft
    # continue an interrupted run exactly
    maskpot-train --resume --output runs/ft
    # two data-parallel processes on CPU
    torchrun --nproc_per_node 2 -m maskpot.training.cli configs/water_scratch.yaml ...
    # test-set errors of a checkpoint
    maskpot-eval runs/ft/best.pt data.npz --split-file runs/ft/splits.npz --subset test --json out.json

A run folder holds: ``config.yaml`` (resolved config), ``run.json`` (provenance: seed, versions,
data hashes, normalisation, summary), ``splits.npz``, ``best.pt`` / ``last.pt``,
``metrics.csv``, ``learning_curve.png``, ``test_metrics.json`` (and ``tensorboard/``).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from maskpot.data.dataset import AtomicDataset, _counts, load_or_create_splits, load_splits
from maskpot.data.io import read_dataset
from maskpot.data.validate import MIN_DISTANCE, DataValidationError, check_cutoff, periodicity_of
from maskpot.dtypes import DTYPES
from maskpot.models import build_model
from maskpot.models.perf import tune_cpu_allocator
from maskpot.models.registry import registered_names
from maskpot.training import setup
from maskpot.training.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from maskpot.training.config import ConfigError, TrainingConfig, load_config, model_error, save_config
from maskpot.training.distributed import init_from_env
from maskpot.training.evaluate import evaluate
from maskpot.training.metrics_log import MetricsLogger
from maskpot.training.objectives import build_objective
from maskpot.training.trainer import Trainer
from maskpot.utils import atomic_write_json, seed_everything, versions

log = logging.getLogger("maskpot.train")

DEFAULT_SPLITS = {"train": 0.8, "val": 0.1, "test": 0.1}

# Keys that may change when resuming (everything else must match the interrupted run).
RESUME_MAY_CHANGE = (
    "train.epochs",
    "train.max_steps",
    "train.early_stopping_patience",
    "train.num_threads",
    "train.device",
    "train.compile",
    "output.progress",
    "output.tensorboard",
    "output.plot",
    "init.checkpoint",
)


# ------------------------------------------------------------------------------------------
# maskpot-train
# ------------------------------------------------------------------------------------------
def _flatten(d: Any, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix[:-1]: d}
    out: Dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and k not in ("splits",):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# Path-valued keys: compared as resolved paths when resuming (relative ones against the working
# folder of their run). output.dir is the folder holding last.pt: the run is found by it.
PATH_KEYS = ("data.path", "data.test_path", "data.split_file", "output.dir")


def _resolved(value: Any, base: str) -> Any:
    if not isinstance(value, str) or not value:
        return value
    return os.path.realpath(os.path.join(base, os.path.expanduser(value)))


def _anchor_resume_paths(config: TrainingConfig, stored: Dict[str, Any], stored_cwd: Optional[str]) -> None:
    """Relative paths read back from the interrupted run's config are relative to the folder that
    run was started in: make them absolute there, so a resume from elsewhere reads the same files."""
    if not stored_cwd:
        return
    new, old = _flatten(config.to_dict()), _flatten(stored)
    for key in PATH_KEYS[:-1]:  # not output.dir: the run folder is where the user pointed
        value = new.get(key)
        if isinstance(value, str) and value and value == old.get(key) and not os.path.isabs(os.path.expanduser(value)):
            section, name = key.split(".")
            setattr(getattr(config, section), name, _resolved(value, stored_cwd))


def _check_resume_config(cfg: Dict[str, Any], stored: Dict[str, Any], path: Path, stored_cwd: Optional[str] = None) -> None:
    """The resumed run must be the same run: only ``RESUME_MAY_CHANGE`` keys may differ (paths are
    compared resolved: relative stored ones against ``stored_cwd``, the interrupted run's folder)."""
    new, old = _flatten({k: v for k, v in cfg.items() if k != "model"}), _flatten(
        {k: v for k, v in stored.items() if k != "model"}
    )
    here = os.getcwd()

    def same(k: str) -> bool:
        if k == "output.dir":
            return True  # last.pt was found in it: it is this run's folder however it is spelled
        if k in PATH_KEYS:
            return _resolved(new.get(k), here) == _resolved(old.get(k), stored_cwd or here)
        return new.get(k) == old.get(k)

    diffs = [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in sorted(set(new) | set(old))
        if k not in RESUME_MAY_CHANGE and not same(k)
    ]
    stored_model = stored.get("model", {})
    diffs += [
        f"model.{k}: {stored_model.get(k)!r} -> {v!r}"
        for k, v in (cfg.get("model") or {}).items()
        if k != "dtype" and stored_model.get(k) != v
    ]
    if diffs:
        raise ConfigError(
            f"--resume {path}: the config differs from the interrupted run's ({'; '.join(diffs)}); only "
            f"{list(RESUME_MAY_CHANGE)} may change"
        )


def _read_options(d: Dict[str, Any]) -> Dict[str, Any]:
    """read_dataset options from the data section: explicit units, strict plausibility, min distance."""
    return {"units": d.get("units"), "strict": bool(d.get("strict")),
            "min_distance": MIN_DISTANCE if d.get("min_distance") is None else float(d["min_distance"])}


def _load_data(cfg: Dict[str, Any], out_dir: Path, ctx: Any):
    """(all samples, splits dict, train, val, test, hashes) of the config dict ``cfg``."""
    d = cfg["data"]
    if not d["path"]:
        raise ConfigError("key 'data.path' is required (file or folder of frames)")
    for key in ("path", "test_path"):
        if d[key] and not Path(d[key]).exists():
            raise ConfigError(f"key 'data.{key}': {d[key]} not found (expected a data file or folder)")
    read_opts = _read_options(d)
    samples = read_dataset(d["path"], format=d["format"], **read_opts)
    n = len(samples)
    data_hash = AtomicDataset(samples).data_hash()  # stored in / checked against the splits file
    sizes = d["splits"] if d["splits"] is not None else dict(DEFAULT_SPLITS)
    if d["test_path"] and d["splits"] is None:
        sizes = {"train": 0.9, "val": 0.1}
    try:
        _counts(n, sizes)  # every rank checks, so no rank waits at the barrier for a failed one
    except ValueError as exc:
        values = list(sizes.values()) if isinstance(sizes, dict) else list(sizes)
        mixed = any(isinstance(v, float) for v in values) and any(isinstance(v, int) and v > 1 for v in values)
        hint = " (counts and fractions are mixed: with any float every value is read as a fraction)" if mixed else ""
        raise ConfigError(
            f"key 'data.splits' = {sizes} does not fit data {d['path']} ({n} frames){hint}: {exc}"
        ) from exc
    split_file = Path(d["split_file"]) if d["split_file"] else out_dir / "splits.npz"
    if ctx.is_main:
        splits = load_or_create_splits(split_file, n, sizes, seed=int(d["seed"]), data_hash=data_hash)
    ctx.barrier()
    if not ctx.is_main:
        splits = load_splits(split_file, n, data_hash)
    train = [samples[int(i)] for i in splits["train"]]
    val = [samples[int(i)] for i in splits["val"]]
    if d["test_path"]:
        test = read_dataset(d["test_path"], format=d["test_format"], **read_opts)
        test_hash = AtomicDataset(test).data_hash()
    else:
        test = [samples[int(i)] for i in splits["test"]]
        test_hash = None
    hashes = {"data": data_hash, "test_file": test_hash, "split_file": str(split_file)}
    return samples, splits, train, val, test, hashes


def _build_model(config: TrainingConfig, objective: Any, species: List[int], resume_ckpt: Optional[Dict[str, Any]]):
    """(model, init report). Architecture: from the resume checkpoint, the init checkpoint, or the config."""
    t, init = config.train, config.init
    user = dict(config.model or {})
    if user.get("dtype", t.dtype) != t.dtype:
        raise ConfigError(f"key 'model.dtype' ({user['dtype']}) differs from 'train.dtype' ({t.dtype}): set only train.dtype")
    user["dtype"] = t.dtype
    if objective.prediction_key == "vectors":
        if user.get("vector_head") is False:
            raise ConfigError("objective.use_vector_head is true but model.vector_head is false")
        user["vector_head"] = True
    report: Dict[str, Any] = {}
    if resume_ckpt is not None:
        mc = dict(resume_ckpt["model_config"])
        mc["dtype"] = t.dtype
        model = build_model(mc)
    elif init.checkpoint:
        if config.task == "energy_force" and "vector_head" not in user:
            user["vector_head"] = False  # the pretraining head is not needed to fit energies/forces
        model, loaded = setup.build_from_init(init.checkpoint, user, use_ema=init.use_ema)
        report = {"checkpoint": init.checkpoint, "loaded": len(loaded["loaded"]),
                  "not_in_checkpoint": loaded["not_in_checkpoint"],
                  "ignored_from_checkpoint": loaded["ignored_from_checkpoint"], "source_task": loaded["source_task"]}
        if init.reset_heads:
            report["reset"] = setup.reset_heads(model, seed=int(t.seed))
    else:
        if "name" not in user:
            raise ConfigError(f"key 'model.name' is required when training from scratch ({registered_names()})")
        user.setdefault("species", species)
        try:
            model = build_model(user)
        except ValueError as exc:
            raise model_error(exc) from exc
    try:
        setup.check_species(model, species, f"data {config.data.path}")
    except ValueError as exc:
        src = f"--init checkpoint {init.checkpoint}" if init.checkpoint and resume_ckpt is None else (
            "the resumed run" if resume_ckpt is not None else "the model")
        raise ConfigError(f"{exc}: {src} cannot be trained on it (use data with its species or train from scratch)") from exc
    if init.freeze_encoder:
        frozen, trainable = setup.freeze_encoder(model)
        report["frozen_parameters"], report["trainable_parameters"] = frozen, trainable
    return model, report


def _check_labels(config: TrainingConfig, objective: Any, groups: Sequence[Sequence[Any]]) -> None:
    """Energy/force training needs the labels its loss weights use, in every frame."""
    if config.task != "energy_force":
        return
    c = getattr(objective, "config", {}) or {}
    for key, weight_key, unit in (("forces", "force_weight", "eV/Å"), ("energy", "energy_weight", "eV")):
        weight = c.get(weight_key, 0)
        if not weight:
            continue
        lacking = [s for g in groups for s in g if getattr(s, key) is None]
        if lacking:
            s = lacking[0]
            total = sum(len(g) for g in groups)
            raise DataValidationError(
                f"{s.info.get('source', config.data.path)} [frame {s.info.get('frame', '?')}]", key,
                f"expected {key} labels ({unit}) because task energy_force has objective.{weight_key} = {weight}, "
                f"found none ({len(lacking)} of {total} frames lack them); use labelled data or set "
                f"objective.{weight_key}=0",
            )


def _check_model_cutoff(model: Any, groups: Sequence[Sequence[Any]]) -> None:
    """The model's cutoff must fit every periodic cell of the data (before the first step)."""
    cutoff = getattr(model, "cutoff", None)
    if cutoff is None:
        return
    seen = set()
    for g in groups:
        for s in g:
            pbc = np.asarray(s.pbc, dtype=bool)
            if not pbc.any():
                continue
            k = (np.asarray(s.cell, dtype=np.float64).tobytes(), pbc.tobytes())
            if k in seen:
                continue
            seen.add(k)
            try:
                check_cutoff(s.cell, pbc, float(cutoff), source=f"{s.info.get('source', '<data>')} [frame {s.info.get('frame', '?')}]")
            except DataValidationError as exc:
                raise ConfigError(f"key 'model.cutoff' = {float(cutoff):g} Å does not fit the data: {exc}") from exc


def _check_output_dir(out_dir: Path) -> None:
    """``output.dir`` must be (or become) a folder: no part of it may be a regular file."""
    for p in (out_dir, *out_dir.parents):
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                what = "is" if p == out_dir else "lies inside"
                raise ConfigError(f"key 'output.dir' ({out_dir}) {what} the regular file {p}: expected a folder")
            return


@dataclass
class _RunFolder:
    """Where a run writes, and what a resumed run continues from."""

    out_dir: Path
    last: Path  # <out_dir>/last.pt
    resume_ckpt: Optional[Dict[str, Any]]  # last.pt's contents when resuming
    cwd: str  # the folder the run was first started in (its relative paths are relative to it)


@dataclass
class _Setup:
    """Everything the training loop needs, built from the config and the data."""

    train: List[Any]
    val: List[Any]
    test: List[Any]
    hashes: Dict[str, Any]
    objective: Any
    model: Any
    init_report: Dict[str, Any]
    normalization: Optional[Dict[str, Any]]


def _open_run_folder(config: TrainingConfig, resume: bool, ctx: Any) -> _RunFolder:
    """Check ``output.dir``; when resuming, load ``last.pt`` and check the config is the interrupted
    run's (relative paths read against the folder it was started in); create the folder."""
    out_dir = Path(config.output.dir)
    _check_output_dir(out_dir)
    last = out_dir / "last.pt"
    resume_ckpt = None
    run_cwd = os.getcwd()
    if resume:
        if not last.is_file():
            raise ConfigError(f"--resume: {last} not found (output.dir = {out_dir})")
        resume_ckpt = load_checkpoint(last)
        stored_cfg = resume_ckpt.get("train_config") or {}
        try:
            run_cwd = json.loads((out_dir / "run.json").read_text()).get("cwd") or run_cwd
            stored_cwd = run_cwd if run_cwd != os.getcwd() else None
        except (OSError, ValueError, AttributeError):
            stored_cwd = None
        _anchor_resume_paths(config, stored_cfg, stored_cwd)
        _check_resume_config(config.to_dict(), stored_cfg, last, stored_cwd)
    elif last.exists():
        raise ConfigError(f"{out_dir} already holds a run (last.pt): pass --resume to continue it or choose another output.dir")
    if ctx.is_main:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"key 'output.dir': cannot create folder {out_dir} ({exc})") from exc
    ctx.barrier()
    return _RunFolder(out_dir, last, resume_ckpt, run_cwd)


def _set_up(config: TrainingConfig, folder: _RunFolder, ctx: Any) -> _Setup:
    """Data and splits, objective, model (checked against the data), normalisation. Writes the
    resolved config (``config.model`` becomes the built model's full config)."""
    cfg = config.to_dict()
    samples, _, train, val, test, hashes = _load_data(cfg, folder.out_dir, ctx)
    species = sorted({int(z) for s in list(samples) + list(test) for z in np.unique(s.numbers)})
    objective = build_objective(config.task, config.objective)  # validated with the config
    groups = (samples, test) if config.data.test_path else (samples,)
    _check_labels(config, objective, groups)
    model, init_report = _build_model(config, objective, species, folder.resume_ckpt)
    _check_model_cutoff(model, groups)
    norm = None
    if folder.resume_ckpt is None and config.task == "energy_force":
        norm = setup.fit_normalization(model, train)
        log.info("normalisation from %d training frames: %s", len(train), norm)
    config.model = dict(model.config)
    if ctx.is_main:
        save_config(config, folder.out_dir / "config.yaml")
    return _Setup(train, val, test, hashes, objective, model, init_report, norm)


def _run_info(config: TrainingConfig, run: _Setup, trainer: Any, folder: _RunFolder, ctx: Any,
              argv: Optional[Sequence[str]]) -> Dict[str, Any]:
    """The provenance record ``run.json`` (a resumed run keeps its start and its init record)."""
    model = run.model
    resumed = folder.resume_ckpt is not None
    info: Dict[str, Any] = {
        "status": "running",
        "task": config.task,
        "config": config.to_dict(),
        "seed": int(config.train.seed),
        "versions": versions(),
        "data_hash": run.hashes,
        "n_frames": {"train": len(run.train), "val": len(run.val), "test": len(run.test)},
        "species": list(model.species),
        "normalization": model.get_normalization() if hasattr(model, "get_normalization") else run.normalization,
        "init": run.init_report,
        "world_size": ctx.world_size,
        "torch_threads": torch.get_num_threads(),  # what actually ran (config, env or default)
        "argv": list(argv) if argv is not None else None,
        "cwd": folder.cwd,
        "resumed_at": {"epoch": trainer.epoch, "step": trainer.step} if resumed else None,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    run_json = folder.out_dir / "run.json"
    if resumed and ctx.is_main and run_json.is_file():
        prev = json.loads(run_json.read_text())
        info["started"] = prev.get("started", info["started"])
        info["resumed"] = prev.get("resumed", []) + [info["resumed_at"]]
        # a resumed run loads last.pt, not the init checkpoint: keep the record of where its
        # weights came from (pretrained or scratch), which reports and tables read
        info["init"] = prev.get("init") or info["init"]
    return info


def _fit(config: TrainingConfig, trainer: Any, run_info: Dict[str, Any], folder: _RunFolder, resume: bool,
         ctx: Any) -> Dict[str, Any]:
    """The training loop with its metrics log; an interrupted run is marked so in ``run.json``."""
    out_dir = folder.out_dir
    logger = MetricsLogger(out_dir, tensorboard=config.output.tensorboard, resume=resume) if ctx.is_main else None
    if logger is not None and resume:
        logger.truncate(trainer.epoch)
    try:
        return trainer.fit(logger)
    except BaseException:
        if ctx.is_main:
            run_info["status"] = "interrupted"
            atomic_write_json(out_dir / "run.json", run_info)
        raise
    finally:
        if logger is not None:
            if config.output.plot:
                try:
                    logger.plot()
                except Exception as exc:  # plotting must never lose a run
                    log.warning("learning-curve plot failed: %s", exc)
            logger.close()


def _load_weights(model: Any, data: Dict[str, Any]) -> None:
    model.load_state_dict(data["ema_state"] if data.get("ema_state") is not None else data["model_state"])


def _test(config: TrainingConfig, run: _Setup, trainer: Any, run_info: Dict[str, Any], folder: _RunFolder,
          ctx: Any) -> Dict[str, Any]:
    """Test metrics with the best weights (EMA when present, as validated); an energy/force run
    first refits the checkpoint's energy shift on the training frames."""
    best = folder.out_dir / "best.pt" if (folder.out_dir / "best.pt").is_file() else folder.last
    model, energy_force = run.model, config.task == "energy_force"
    data = load_checkpoint(best)
    _load_weights(model, data)
    if energy_force and ctx.is_main and "energy_refit" not in data:
        refit = setup.refit_checkpoint_energy(best, data, model, run.train)
        run_info["energy_refit"] = refit
        log.info("energy shift refit on %d training frames: mean error %.3g -> %.3g meV",
                 refit.get("n_frames", 0), refit.get("mean_error_before_meV", 0.0),
                 refit.get("mean_error_after_meV", 0.0))
    ctx.barrier()
    if energy_force and ctx.enabled and not ctx.is_main:
        _load_weights(model, load_checkpoint(best))
    metrics: Dict[str, Any] = {"checkpoint": best.name, "n_frames": len(run.test)}
    if run.test:
        metrics.update(
            evaluate(model, run.test, run.objective, batch_size=trainer.eval_batch_size, dtype=trainer.dtype,
                     device=trainer.device, seed=int(config.train.seed), ctx=ctx)
        )
    return metrics


def run_training(
    cfg: Union[TrainingConfig, Mapping[str, Any]], resume: bool = False, callbacks: Sequence[Any] = (),
    argv: Optional[Sequence[str]] = None,
) -> Dict[str, Any]:
    """Run (or resume) the training described by ``cfg`` (a :class:`TrainingConfig` or the dict
    :func:`load_config` returns); returns a summary.

    Steps: open the run folder (resume checks), set up data / objective / model, write
    ``run.json``, fit, evaluate the best weights on the test frames, write the results.
    ``callbacks`` are called after every epoch as ``cb(trainer, row)`` (tests use them to
    simulate an interruption).
    """
    config = copy.deepcopy(cfg) if isinstance(cfg, TrainingConfig) else TrainingConfig.from_dict(cfg)
    t = config.train
    started = time.time()
    ctx = init_from_env(t.device)
    try:
        if t.num_threads:
            torch.set_num_threads(int(t.num_threads))
        seed_everything(int(t.seed))
        folder = _open_run_folder(config, resume, ctx)
        run = _set_up(config, folder, ctx)
        data_hash = run.hashes["data"] if not run.hashes["test_file"] else f"{run.hashes['data']}+{run.hashes['test_file']}"
        meta = {"task": config.task, "data_hash": data_hash, "periodicity": periodicity_of(run.train)}
        trainer = Trainer(run.model, run.objective, config.to_dict(), run.train, run.val, folder.out_dir, ctx=ctx,
                          meta=meta, callbacks=callbacks)
        if folder.resume_ckpt is not None:
            trainer.load_resume(folder.last)
            log.info("resumed from %s at epoch %d, step %d", folder.last, trainer.epoch, trainer.step)
        run_info = _run_info(config, run, trainer, folder, ctx, argv)
        if ctx.is_main:
            atomic_write_json(folder.out_dir / "run.json", run_info)
        summary = _fit(config, trainer, run_info, folder, resume, ctx)
        ctx.barrier()
        test_metrics = _test(config, run, trainer, run_info, folder, ctx)
        summary["test"] = test_metrics
        summary["elapsed_s"] = time.time() - started
        if ctx.is_main:
            atomic_write_json(folder.out_dir / "test_metrics.json", test_metrics)
            run_info.update(status="finished", summary=summary, finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
            atomic_write_json(folder.out_dir / "run.json", run_info)
            log.info("done: %s", summary)
        # every rank tears the process group down together: a rank destroying it while another
        # still writes its files aborted the early one in gloo's teardown (SIGABRT, ~1 in 4 under load)
        ctx.barrier()
        return summary
    finally:
        ctx.close()


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="maskpot-train",
        description="Train a maskpot model: masked / denoising pretraining, fine-tuning (--init) or from scratch.",
    )
    p.add_argument("config", nargs="?", help="YAML config (default with --resume: OUTPUT/config.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, dotted, YAML value (repeatable), e.g. --set train.lr=3e-4")
    p.add_argument("--init", metavar="CKPT", help="start from this checkpoint (same as --set init.checkpoint=CKPT)")
    p.add_argument("--output", "-o", metavar="DIR", help="run folder (same as --set output.dir=DIR)")
    p.add_argument("--resume", action="store_true", help="continue the run in the output folder from last.pt")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def config_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    overrides = list(args.overrides)
    if args.output:
        overrides.append(f"output.dir={args.output}")
    if args.init:
        overrides.append(f"init.checkpoint={args.init}")
    if args.no_progress:
        overrides.append("output.progress=false")
    path = args.config
    if path is None:
        if not args.resume:
            raise ConfigError("a config file is required (or --resume with --output DIR)")
        out = args.output or next((o.split("=", 1)[1] for o in args.overrides if o.startswith("output.dir=")), None)
        if not out:
            raise ConfigError("--resume without a config file needs --output DIR")
        path = Path(out) / "config.yaml"
    return load_config(path, overrides)


def _setup_logging(verbose: bool) -> None:
    root = logging.getLogger("maskpot")
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def train_main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``maskpot-train`` (returns the exit status; errors exit with status 2)."""
    args = train_parser().parse_args(argv)
    _setup_logging(args.verbose)
    tune_cpu_allocator()  # training allocates the same large edge tensors every step
    try:
        cfg = config_from_args(args)
    except ConfigError as exc:
        print(f"maskpot-train: error: {exc}", file=sys.stderr)
        return 2
    try:
        run_training(cfg, resume=args.resume, argv=list(argv) if argv is not None else sys.argv[1:])
    except (ConfigError, CheckpointError, DataValidationError, FileNotFoundError) as exc:
        print(f"maskpot-train: error: {exc}", file=sys.stderr)
        return 2
    return 0


def run_finished(run: Path) -> bool:
    """True when ``run`` holds a maskpot-train run that ran to its end (``run.json`` status)."""
    info = Path(run) / "run.json"
    if not info.is_file():
        return False
    try:
        return json.loads(info.read_text()).get("status") == "finished"
    except (OSError, ValueError):
        return False


def train_stage(config: Path, run: Path, overrides: Sequence[str] = (), init: Optional[Path] = None,
                announce: Callable[[str], None] = print) -> Path:
    """One training stage of a pipeline (the examples): skip ``run`` when it finished, resume it
    from its ``last.pt`` when it was interrupted, start it otherwise.

    On resume the stored config holds; of ``overrides`` only the keys in ``RESUME_MAY_CHANGE``
    (epochs, threads, progress, ...) are passed on, so rerunning with a larger ``train.epochs``
    extends a run and a new thread count applies. ``announce`` gets one line per stage.
    Raises ``SystemExit`` when maskpot-train fails (its message is already on stderr).
    """
    run = Path(run)
    if run_finished(run):
        announce(f"{run} finished, skipping")
        return run
    if (run / "last.pt").exists():
        argv = ["--resume", "--output", str(run)]
        for o in overrides:
            if o.split("=", 1)[0] in RESUME_MAY_CHANGE:
                argv += ["--set", o]
    else:
        argv = [str(config), "--output", str(run)]
        for o in overrides:
            argv += ["--set", o]
        if init is not None:
            argv += ["--init", str(init)]
    announce(f"training {run.name}: maskpot-train {' '.join(argv)}")
    rc = train_main(argv)
    if rc != 0:
        raise SystemExit(f"training {run} failed (maskpot-train exit {rc})")
    return run


# ------------------------------------------------------------------------------------------
# maskpot-eval
# ------------------------------------------------------------------------------------------
def eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="maskpot-eval", description="Energy/force errors of a checkpoint on a dataset.")
    p.add_argument("checkpoint", help="maskpot checkpoint (.pt)")
    p.add_argument("data", help="dataset file or folder (any format read_dataset reads)")
    p.add_argument("--format", default=None, help="data format (default: from the path)")
    p.add_argument("--split-file", default=None, help="splits.npz of a run: evaluate only --subset of it")
    p.add_argument("--subset", default="test", choices=("train", "val", "test"), help="subset of --split-file")
    p.add_argument("--json", dest="json_out", default=None, help="also write the metrics to this JSON file")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--no-ema", action="store_true", help="use the raw weights even when EMA weights exist")
    p.add_argument("--device", default="cpu")
    p.add_argument("--units", default=None, help="units of the data file, '<length>,<energy>' (default: the format's)")
    p.add_argument("--allow-periodicity-mismatch", action="store_true",
                   help="evaluate even when the data's periodicity differs from the training data's (warning)")
    return p


#: Energy MAE above which maskpot-eval warns that model and data do not belong together, meV/atom.
IMPLAUSIBLE_MEV_PER_ATOM = 1000.0


def _eval_mismatch(ckpt: Dict[str, Any], model: Any, samples: Sequence[Any], args: argparse.Namespace) -> Optional[str]:
    """Why the checkpoint cannot be evaluated on these frames (species, periodicity), or None."""
    known = set(int(z) for z in getattr(model, "species", []))
    present = sorted({int(z) for s in samples for z in np.unique(s.numbers)})
    unknown = [z for z in present if known and z not in known]
    if unknown:
        return (f"data {args.data}: key 'numbers': expected species the model {args.checkpoint} was trained on "
                f"{sorted(known)}, found Z={unknown}")
    trained, used = ckpt.get("periodicity"), periodicity_of(samples)
    if trained in ("periodic", "open") and used != trained:
        msg = (f"data {args.data}: key 'pbc': expected {trained} frames like the training data of "
               f"{args.checkpoint}, found {used} frames (errors there are not meaningful)")
        if not args.allow_periodicity_mismatch:
            return msg + "; pass --allow-periodicity-mismatch to evaluate anyway"
        print(f"maskpot-eval: warning: {msg}", file=sys.stderr)
    return None


def format_table(metrics: Dict[str, Any], title: str) -> str:
    """Fixed-width table; columns are separated by at least two spaces whatever the magnitudes."""
    rows = [
        ("energy (meV)", "energy_mae_meV", "energy_rmse_meV"),
        ("energy (meV/atom)", "energy_mae_meV_per_atom", "energy_rmse_meV_per_atom"),
        ("forces (meV/Å)", "force_mae_meV_per_A", "force_rmse_meV_per_A"),
    ]
    cells = [(name, f"{metrics[mae]:.3f}", f"{metrics[rmse]:.3f}") for name, mae, rmse in rows if mae in metrics]
    cells.append(("frames", str(int(metrics.get("n_frames", 0))), ""))
    w = max([12] + [len(c) for row in cells for c in row[1:]])
    lines = [title, f"{'quantity':<18}  {'MAE':>{w}}  {'RMSE':>{w}}"]
    lines += [f"{name:<18}  {mae:>{w}}  {rmse:>{w}}".rstrip() for name, mae, rmse in cells]
    return "\n".join(lines)


def eval_main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``maskpot-eval``: prints a table and optionally writes JSON."""
    args = eval_parser().parse_args(argv)
    try:
        samples = read_dataset(args.data, format=args.format, units=args.units)
        if args.split_file:
            idx = load_splits(args.split_file, len(samples), AtomicDataset(samples).data_hash())[args.subset]
            samples = [samples[int(i)] for i in idx]
        ckpt = load_checkpoint(args.checkpoint)
        use_ema = not args.no_ema and ckpt.get("ema_state") is not None
        model = model_from_checkpoint(args.checkpoint, use_ema=use_ema).to(args.device)
    except (ValueError, FileNotFoundError) as exc:  # DataValidationError, CheckpointError: they name the file
        print(f"maskpot-eval: error: {exc}", file=sys.stderr)
        return 2
    problem = _eval_mismatch(ckpt, model, samples, args)
    if problem:
        print(f"maskpot-eval: error: {problem}", file=sys.stderr)
        return 2
    dtype = DTYPES[model.config.get("dtype", "float32")]
    t0 = time.perf_counter()
    metrics: Dict[str, Any] = evaluate(model, samples, None, batch_size=args.batch_size, dtype=dtype,
                                       device=torch.device(args.device))
    elapsed = time.perf_counter() - t0
    subset = f"{args.subset} of {args.split_file}" if args.split_file else "all frames"
    title = f"{args.checkpoint} ({'EMA' if use_ema else 'raw'} weights) on {args.data} [{subset}]"
    print(format_table(metrics, title))
    if metrics.get("energy_mae_meV_per_atom", 0.0) > IMPLAUSIBLE_MEV_PER_ATOM:
        print(f"maskpot-eval: warning: energy error {metrics['energy_mae_meV_per_atom']:.0f} meV/atom is implausibly "
              f"large for a trained model (> {IMPLAUSIBLE_MEV_PER_ATOM:g}): wrong model for this data, or wrong units?",
              file=sys.stderr)
    if args.json_out:
        atomic_write_json(args.json_out, {
            **metrics, "checkpoint": str(args.checkpoint), "data": str(args.data), "subset": subset,
            "weights": "ema" if use_ema else "raw", "eval_time_s": elapsed, "versions": versions(),
        })
    return 0


if __name__ == "__main__":  # torchrun -m maskpot.training.cli ...
    sys.exit(train_main())
