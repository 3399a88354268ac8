"""Command lines ``maskpot-md`` (run MD in OpenMM or ASE) and ``maskpot-analyze``.

::

    maskpot-md openmm --model model.pt --water 216 [--box Å] | --pdb system.pdb
                      --steps N --timestep FS --temperature K --ensemble nvt|nve --friction 1/ps
                      --report-every N --check-every N --platform NAME --out DIR [--resume]
    maskpot-md openmm --tip3p --water 64 ...          # classical flexible-TIP3P reference
    maskpot-md ase --model model.pt --structure molecule.xyz --steps N --timestep FS
                   --temperature K --ensemble nvt|nve --out DIR [--resume]
    maskpot-analyze TRAJ [--top TOP] [--reference REFTRAJ [--reference-top TOP]] --out DIR

Exit status of ``maskpot-md``: 0 success; 2 bad input (one line naming the file or option, as
every maskpot command); 3 the stability guard stopped the run (the message, with the step and the
reason, is printed and written to ``DIR/md.log`` and ``DIR/result.json``). ``maskpot-analyze``:
0 success; 2 bad input (one line naming the file).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from maskpot.md.guard import GuardSettings, MDInstabilityError

EXIT_UNSTABLE = 3
EXIT_BAD_INPUT = 2


def _limit(text: str) -> Optional[float]:
    """A guard limit: a number, or 'off' / 'none' to switch the check off explicitly."""
    if text.strip().lower() in ("off", "none"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'off', got {text!r}") from None


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=1000, help="MD steps (default 1000)")
    p.add_argument("--timestep", type=float, default=0.5, help="timestep, fs (default 0.5)")
    p.add_argument("--temperature", type=float, default=300.0, help="thermostat / initial temperature, K (default 300)")
    p.add_argument("--ensemble", choices=("nvt", "nve"), default="nvt", help="nvt (Langevin) or nve (Verlet)")
    p.add_argument("--friction", type=float, default=1.0, help="Langevin friction, 1/ps (default 1)")
    p.add_argument("--report-every", type=int, default=100, help="steps between trajectory frames / log rows")
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (default 10 x report-every)")
    p.add_argument("--minimize", type=int, default=200, dest="minimize_iterations",
                   help="max minimisation iterations before MD on fresh runs (0: none; default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--resume", action="store_true", help="continue from DIR's checkpoint if there is one")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("stability guard")
    g.add_argument("--check-every", type=int, default=10, help="steps between guard checks (default 10)")
    g.add_argument("--min-distance", type=_limit, default=0.5, help="closest allowed atom pair, Å ('off': no check; default 0.5)")
    g.add_argument("--max-bond", type=_limit, default=1.5,
                   help="longest allowed bond, Å (limit max(this, bond-stretch x start length); 'off': no check; default 1.5)")
    g.add_argument("--bond-stretch", type=float, default=1.5, help="relative bond limit (default 1.5)")
    g.add_argument("--max-temperature-factor", type=_limit, default=3.0,
                   help="stop when T > factor x target ('off': no check; default 3); 0 or other nonsense is refused")


def _settings(args: argparse.Namespace):
    from maskpot.md.openmm_runner import MDSettings

    return MDSettings(
        steps=args.steps, timestep=args.timestep, temperature=args.temperature, ensemble=args.ensemble,
        friction=args.friction, report_every=args.report_every, checkpoint_every=args.checkpoint_every,
        minimize_iterations=args.minimize_iterations, seed=args.seed,
        platform=getattr(args, "platform", None), threads=getattr(args, "threads", None),
        equilibration_steps=getattr(args, "equilibrate", 0), progress=not args.no_progress,
        guard=GuardSettings(min_distance=args.min_distance, max_bond=args.max_bond,
                            bond_stretch=args.bond_stretch, temperature_factor=args.max_temperature_factor,
                            check_every=args.check_every),
    )


def build_md_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskpot-md", description="Run MD with a maskpot model in OpenMM or ASE.")
    sub = parser.add_subparsers(dest="engine", required=True)
    p = sub.add_parser("openmm", help="OpenMM (water box or PDB)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--water", type=int, metavar="N", help="build a cubic box of N water molecules")
    src.add_argument("--pdb", help="start from this PDB (topology, positions, CRYST1 box)")
    pot = p.add_mutually_exclusive_group(required=True)
    pot.add_argument("--model", help="maskpot export file (model.pt)")
    pot.add_argument("--tip3p", action="store_true", help="classical flexible TIP3P instead of a model (reference)")
    p.add_argument("--box", type=float, default=None, help="cubic box side, Å (default: 0.997 g/cm³ for --water; CRYST1 for --pdb)")
    p.add_argument("--backend", choices=("python", "torch"), default="python", help="OpenMM force backend (default python)")
    p.add_argument("--platform", default=None, help="OpenMM platform (Reference, CPU, CUDA, OpenCL; default fastest)")
    p.add_argument("--threads", type=int, default=None, help="CPU-platform threads")
    p.add_argument("--equilibrate", type=int, default=0, help="unrecorded equilibration steps after minimisation")
    _add_common(p)
    a = sub.add_parser("ase", help="ASE (molecules, any ASE-readable structure)")
    a.add_argument("--model", required=True, help="maskpot export file (model.pt)")
    a.add_argument("--structure", required=True, help="structure file (xyz, extxyz, pdb, ...)")
    a.add_argument("--index", type=int, default=0, help="frame of the structure file (default 0)")
    _add_common(a)
    return parser


def run_md(args: argparse.Namespace):
    s = _settings(args)
    out = Path(args.out)
    if args.engine == "openmm":
        from maskpot.md.openmm_runner import load_pdb, ml_system, run_openmm, water_box

        if args.tip3p:
            from maskpot.md.reference import run_tip3p_reference

            return run_tip3p_reference(out, s, n_molecules=args.water, box=args.box, pdb=args.pdb, resume=args.resume)
        if args.pdb:
            topology, positions = load_pdb(args.pdb, args.box)
        else:
            topology, positions, _ = water_box(args.water, args.box, args.seed)
        system = ml_system(topology, args.model, backend=args.backend)
        meta = {"model": str(Path(args.model).resolve()), "backend": args.backend, "source": args.pdb or f"water:{args.water}"}
        return run_openmm(topology, system, positions, out, s, resume=args.resume, metadata=meta)
    from maskpot.deploy.ase import MaskpotCalculator
    from maskpot.md.ase_runner import read_structure, run_ase

    atoms = read_structure(args.structure, args.index)
    meta = {"model": str(Path(args.model).resolve()), "structure": str(Path(args.structure).resolve())}
    return run_ase(atoms, MaskpotCalculator(args.model), out, s, resume=args.resume, metadata=meta)


def md_main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_md_parser().parse_args(argv)
    from maskpot.models.perf import tune_cpu_allocator

    tune_cpu_allocator()  # MD calls the model every step: reuse big edge buffers (1.5-2x on CPU)
    try:
        result = run_md(args)
    except MDInstabilityError as exc:
        print(f"maskpot-md: {exc} (outputs up to the last good frame in {args.out})", file=sys.stderr)
        return EXIT_UNSTABLE
    except (ValueError, OSError, ImportError) as exc:  # OSError: missing files, --out inside a file, ...
        print(f"maskpot-md: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"maskpot-md: done, {result['steps_done']} steps in {result['wall_seconds']:.1f} s -> {args.out}")
    return 0


def analyze_main(argv: Optional[Sequence[str]] = None) -> int:
    from maskpot.md.analysis import analyze_run

    p = argparse.ArgumentParser(prog="maskpot-analyze",
                                description="RDFs, energy drift, statistics, water geometry and diffusion of an MD run.")
    p.add_argument("traj", help="trajectory (DCD/XTC with --top, or extxyz from the ASE runner)")
    p.add_argument("--top", default=None, help="topology (PDB); default: topology.pdb next to the trajectory")
    p.add_argument("--reference", default=None, help="reference trajectory to compare with")
    p.add_argument("--reference-top", default=None, help="reference topology (default: next to it, or --top)")
    p.add_argument("--log", default=None, help="CSV log of the run (default: md.csv next to the trajectory)")
    p.add_argument("--reference-log", default=None)
    p.add_argument("--label", default="learned")
    p.add_argument("--reference-label", default="reference")
    p.add_argument("--skip", type=float, default=0.0, help="fraction of frames discarded as equilibration")
    p.add_argument("--bin-width", type=float, default=0.05, help="RDF bin width, Å")
    p.add_argument("--allow-truncated", action="store_true",
                   help="analyse a DCD holding fewer frames than its header says (default: refuse it)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    def top_for(traj: str, given: Optional[str]) -> Optional[str]:
        if given:
            return given
        cand = Path(traj).parent / "topology.pdb"
        return str(cand) if cand.exists() else None

    given = [("trajectory", args.traj), ("--top", args.top), ("--reference", args.reference),
             ("--reference-top", args.reference_top), ("--log", args.log), ("--reference-log", args.reference_log)]
    for what, path in given:
        if path and not Path(path).is_file():
            print(f"maskpot-analyze: error: {what} {path}: no such file", file=sys.stderr)
            return 2
    try:
        res = analyze_run(
            args.traj, top_for(args.traj, args.top), args.reference,
            top_for(args.reference, args.reference_top or None) if args.reference else None,
            log=args.log, reference_log=args.reference_log, out=args.out, label=args.label,
            reference_label=args.reference_label, skip_fraction=args.skip, bin_width=args.bin_width,
            allow_truncated=args.allow_truncated,
        )
    except (ValueError, OSError) as exc:
        print(f"maskpot-analyze: error: {exc}", file=sys.stderr)
        return 2
    keys = ("n_frames", "rdf_distance", "D_1e-5_cm2_s", "oh_mean", "hoh_mean")
    print(json.dumps({k: res[k] for k in keys if k in res}, indent=1, default=str))
    if "stats" in res:
        print(json.dumps(res["stats"], indent=1))
    print(f"maskpot-analyze: report in {Path(args.out) / 'report.md'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(md_main())
