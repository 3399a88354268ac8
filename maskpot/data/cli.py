"""``maskpot-generate``: reference-data generators.

Subcommands:
    tip3p   flexible (or rigid) TIP3P water with OpenMM, written as a maskpot ``.npz``.

Example (the paper's recipe, one of ten seeds)::

    maskpot-generate tip3p -o water.npz --molecules 258 --box 20 --frames 1000 --every 50 \\
        --seeds 0 --temperature 300 --timestep 0.5 --platform CPU

Next to the output ``<output>.json`` records the resolved arguments and package versions.
While running, each finished seed is checkpointed to ``<name>.partial.npz``; rerunning the
same command resumes from it, and it is removed once the output is written.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

import numpy as np


def _add_tip3p(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser(
        "tip3p",
        help="TIP3P water (flexible by default) with OpenMM",
        description="Generate TIP3P water frames (positions Å, energy eV, forces eV/Å) with OpenMM.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("-o", "--output", required=True, type=Path, help="output .npz file")
    p.add_argument("--molecules", type=int, default=258, help="water molecules per box")
    p.add_argument("--box", type=float, default=20.0, help="cubic box side, Å")
    p.add_argument("--frames", type=int, default=1000, help="frames saved per seed")
    p.add_argument("--every", type=int, default=50, help="MD steps between saved frames")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="independent trajectories, one per seed")
    p.add_argument("--temperature", type=float, default=300.0, help="K")
    p.add_argument("--timestep", type=float, default=None, help="fs (default 0.5 flexible, 2.0 rigid)")
    p.add_argument("--friction", type=float, default=1.0, help="Langevin friction, 1/ps")
    p.add_argument("--equilibration", type=int, default=None, help="steps before the first frame (default 5 ps)")
    p.add_argument("--cutoff", type=float, default=None, help="PME real-space cutoff, Å (default min(9, box/2 - 0.01))")
    p.add_argument("--rigid", action="store_true", help="rigid water (SETTLE) instead of flexible")
    p.add_argument("--forcefield", default="tip3p.xml", help="OpenMM force-field XML")
    p.add_argument("--platform", default=None, help="OpenMM platform: Reference, CPU, CUDA, OpenCL (default: fastest)")
    p.add_argument("--threads", type=int, default=None, help="CPU platform threads")
    p.add_argument("--precision", default=None, choices=["single", "mixed", "double"], help="CUDA/OpenCL precision")
    p.add_argument("--deterministic", action="store_true", help="bit-reproducible run (CPU: one thread)")
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"], help="stored float dtype")
    p.add_argument("--no-resume", action="store_true", help="ignore (and overwrite) an existing .partial.npz")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--allow-any-density", action="store_true",
                   help="generate boxes outside 0.5-1.5 g/cm³ (warned about) instead of refusing them")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_tip3p)


def _run_tip3p(args: argparse.Namespace) -> int:
    from maskpot.data.tip3p import generate_tip3p, partial_path, save_tip3p_npz
    from maskpot.utils import atomic_write_json, versions

    output: Path = args.output
    if output.suffix != ".npz":
        raise SystemExit(f"maskpot-generate tip3p: --output must end in .npz, got {output}")
    if output.exists() and not args.overwrite:
        raise SystemExit(f"maskpot-generate tip3p: {output} exists; pass --overwrite to replace it")
    partial = partial_path(output)
    if args.no_resume and partial.exists():
        partial.unlink()

    t0 = time.perf_counter()
    try:
        data = generate_tip3p(
            n_molecules=args.molecules,
            box=args.box,
            n_frames=args.frames,
            every=args.every,
            temperature=args.temperature,
            timestep=args.timestep,
            friction=args.friction,
            seed=args.seeds,
            rigid=args.rigid,
            equilibration_steps=args.equilibration,
            platform=args.platform,
            progress=not args.no_progress,
            cutoff=args.cutoff,
            forcefield=args.forcefield,
            threads=args.threads,
            precision=args.precision,
            deterministic=args.deterministic,
            checkpoint=partial,
            allow_any_density=args.allow_any_density,
        )
    except ValueError as err:  # bad user input: a clear message, not a traceback
        raise SystemExit(f"maskpot-generate tip3p: {err}") from err
    elapsed = time.perf_counter() - t0

    save_tip3p_npz(output, data, dtype=args.dtype)
    resolved = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}
    meta = data["metadata"]
    for key in ("timestep", "equilibration_steps", "cutoff", "platform"):
        resolved[f"resolved_{key}"] = meta[key]
    atomic_write_json(
        Path(str(output) + ".json"),
        {
            "command": "maskpot-generate tip3p",
            "argv": sys.argv,
            "args": resolved,
            "versions": versions(),
            "metadata": meta,
            "output": str(output),
            "seconds": elapsed,
        },
    )
    if partial.exists():
        partial.unlink()

    n_frames, n_atoms = data["positions"].shape[:2]
    e_atom = float(np.mean(data["energy"]) / n_atoms)
    f_rms = float(np.sqrt(np.mean(data["forces"] ** 2)))
    print(
        f"wrote {output}: {n_frames} frames x {n_atoms} atoms ({len(meta['seeds'])} seed(s), "
        f"{meta['model']}, platform {meta['platform']})\n"
        f"  mean energy per atom {e_atom:.6f} eV, force RMS {f_rms:.4f} eV/Å, "
        f"density {meta['density_g_cm3']:.4f} g/cm^3\n"
        f"  time {elapsed:.1f} s ({n_frames / max(elapsed, 1e-9):.2f} frames/s incl. setup)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskpot-generate", description="Generate reference data for maskpot.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_tip3p(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``maskpot-generate``; returns the exit status."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
