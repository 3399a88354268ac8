"""Our models next to MACE-small and OpenMM flexible TIP3P, in one process, interleaved.

Every case evaluates energy + forces of a liquid water box (TIP3P-relaxed, a rattled
configuration per call so the edge count changes as in MD):

* ours: an exported TorchScript file (``maskpot.deploy.export``, vesin neighbour list) behind
  ``maskpot.deploy.ase.MaskpotCalculator`` — the whole ASE call;
* MACE-small: ``ScaleShiftMACE`` module called directly in float32 (``compute_force=True``,
  no stress), mace's neighbour list built *outside* the timing — a lower bound on its cost;
* OpenMM: flexible TIP3P with PME, CPU platform, time per Langevin MD step.

Cases run round-robin (A, B, C, A, B, C, ...) after a warm-up that lets TorchScript's profiling
executor settle; each round gives one time per case, and ratios are taken per round, then the
median over rounds. All sizes share one interleaved loop, so the 648 -> 3000 cost ratio is also
a per-round ratio.

    python -m benchmarks.bench_peers [--sizes 648 3000] [--large 12000] [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from benchmarks import peers
from benchmarks.common import Case, interleave, machine_line, n_params, prepare_cpu, ratio, script_parser


def count_edges(model: torch.nn.Module, water: peers.WaterBox) -> int:
    pos = torch.as_tensor(water.configs[0], dtype=torch.float32)
    cell = torch.as_tensor(water.cell(), dtype=torch.float32).unsqueeze(0)
    pbc = torch.ones(1, 3, dtype=torch.bool)
    batch = torch.zeros(len(pos), dtype=torch.long)
    return int(model.neighbors(pos, cell, pbc, batch)[0].shape[1])


def run_peers(
    sizes: Sequence[int] = (648, 3000),
    large: Optional[int] = None,
    large_models: Sequence[str] = peers.SMALL + ("gns default (128x4, 3.5 Å)",),
    rounds: int = 3,
    models: Optional[Dict[str, Dict[str, object]]] = None,
    mace: bool = True,
    mace_sizes: Optional[Sequence[int]] = None,
    openmm_tip3p: bool = True,
    box_factory=None,
    log=print,
) -> Dict[str, object]:
    """Build every case, time them interleaved, return a result dict (see ``summary_rows``).

    ``large``: an extra size timed only for ``large_models`` and OpenMM (not MACE).
    ``box_factory(n_atoms) -> WaterBox`` (default :func:`peers.water_box`).
    """
    models = dict(peers.MODELS if models is None else models)
    box_factory = box_factory or peers.water_box
    mace = mace and peers.mace_available()
    mace_sizes = list(sizes if mace_sizes is None else mace_sizes)
    all_sizes = list(sizes) + ([large] if large else [])
    folder = peers.temp_dir()
    cases: List[Case] = []
    info: Dict[str, Dict[str, object]] = {}
    key = {}  # (label, size) -> case
    t0 = time.perf_counter()
    for label, config in models.items():
        model = peers.build(config)
        path = peers.export(model, folder, "m%d" % len(info))
        info[label] = {"params": n_params(model), "cutoff": float(model.cutoff), "edges": {}, "path": str(path)}
        info[label]["model"] = model
    for n in all_sizes:
        water = box_factory(n)
        log(f"box {water.n_atoms} atoms, {water.box:.2f} Å ({time.perf_counter() - t0:.0f} s)")
        for label in models:
            if n == large and label not in large_models:
                continue
            info[label]["edges"][n] = count_edges(info[label]["model"], water)
            calc = peers.maskpot_calculator(info[label]["path"])
            inner = 3 if n <= 1000 or (label in peers.SMALL and n <= 5000) else 1
            case = peers.ase_case(f"{label} @{n}", calc, water, inner=inner)
            key[(label, n)] = case
            cases.append(case)
        if mace and n in mace_sizes and n != large:
            case, edges = peers.mace_case(water, inner=1)
            case.name = f"{peers.MACE_LABEL} @{n}"
            case.warm_min, case.warm_max = 2, 3
            entry = info.setdefault(peers.MACE_LABEL, {"params": None, "cutoff": 5.0, "edges": {}})
            entry["edges"][n] = edges
            entry["params"] = n_params(case.model)
            key[(peers.MACE_LABEL, n)] = case
            cases.append(case)
        if openmm_tip3p:
            case = peers.openmm_tip3p_case(water, steps=10, inner=3)
            case.name = f"{peers.OPENMM_LABEL} @{n}"
            case.warm_min, case.warm_max = 2, 4
            info.setdefault(peers.OPENMM_LABEL, {"params": None, "cutoff": None, "edges": {}})
            key[(peers.OPENMM_LABEL, n)] = case
            cases.append(case)
    log(f"{len(cases)} cases built ({time.perf_counter() - t0:.0f} s); timing {rounds} rounds")
    interleave(cases, rounds, log=log)
    for label in info:
        info[label].pop("model", None)
    res = {"machine": machine_line(), "sizes": list(sizes), "large": large, "rounds": rounds,
           "info": info, "cases": {}, "seconds": time.perf_counter() - t0}
    for (label, n), case in key.items():
        entry = {"ms": case.median("wall"), "cpu_ms": case.median("cpu"), "wall": case.wall, "cpu": case.cpu,
                 "warmup_ms": case.warmup_ms}
        ref = key.get((peers.MACE_LABEL, n))
        if ref is not None and case is not ref:
            entry["vs_mace"] = ratio(ref, case)
            entry["vs_mace_cpu"] = ratio(ref, case, "cpu")
        res["cases"].setdefault(label, {})[n] = entry
    # 648 -> 3000 (first two sizes): per-round cost ratio
    if len(sizes) >= 2:
        a, b = sizes[0], sizes[1]
        for label in res["cases"]:
            if (label, a) in key and (label, b) in key:
                res["cases"][label]["scaling"] = ratio(key[(label, b)], key[(label, a)])
                res["cases"][label]["scaling_cpu"] = ratio(key[(label, b)], key[(label, a)], "cpu")
                # ratio(ref=b, case=a) = t_b / t_a
    return res


def fmt_ratio(r) -> str:
    med, lo, hi = r
    return f"{med:.1f}x ({lo:.1f}-{hi:.1f})"


def summary_table(res: Dict[str, object]) -> str:
    """Markdown table: one row per model, ms / call and ratio vs MACE-small per size."""
    sizes = list(res["sizes"]) + ([res["large"]] if res.get("large") else [])
    header = ["model", "params", "cutoff Å"]
    for n in sizes:
        header += [f"ms @{n}"] + ([f"vs MACE-small @{n}"] if n != res.get("large") else [])
    if len(res["sizes"]) >= 2:
        header.append(f"cost {res['sizes'][0]}→{res['sizes'][1]}")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, per in res["cases"].items():
        inf = res["info"].get(label, {})
        params = f"{inf['params']:,}" if inf.get("params") else "–"
        cut = f"{inf['cutoff']:.1f}" if inf.get("cutoff") else "9 (PME)"
        row = [label, params, cut]
        for n in sizes:
            e = per.get(n)
            row.append(f"{e['ms']:.1f}" if e else "not run")
            if n != res.get("large"):
                row.append(fmt_ratio(e["vs_mace"]) if e and "vs_mace" in e else ("1x" if e and label == peers.MACE_LABEL else "–"))
        if len(res["sizes"]) >= 2:
            row.append(fmt_ratio(per["scaling"]) if "scaling" in per else "–")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def verdict(res: Dict[str, object], speed_target: float = 30.0, scaling_target: float = 5.0) -> List[str]:
    """One line per recommended small model: does it reach the targets?"""
    out = []
    a = res["sizes"][0]
    for label in peers.SMALL:
        per = res["cases"].get(label)
        if not per:
            continue
        parts = []
        e = per.get(a, {})
        if "vs_mace" in e:
            r = e["vs_mace"][0]
            parts.append(f"{r:.1f}x MACE-small at {a} atoms (target >= {speed_target:.0f}x: "
                         f"{'met' if r >= speed_target else 'NOT met'}; by process CPU time "
                         f"{e['vs_mace_cpu'][0]:.1f}x)")
        else:
            parts.append("no MACE-small comparison (mace-torch not installed)")
        if "scaling" in per:
            s = per["scaling"][0]
            parts.append(f"cost {a}→{res['sizes'][1]} atoms {s:.2f}x (target <= {scaling_target:.0f}x: "
                         f"{'met' if s <= scaling_target else 'NOT met'}; by CPU time "
                         f"{per['scaling_cpu'][0]:.2f}x; atoms x{res['sizes'][1] / a:.2f})")
        out.append(f"- **{label}**: " + "; ".join(parts) + ".")
    return out


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    parser = script_parser(__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[648, 3000])
    parser.add_argument("--large", type=int, default=None, help="extra size for the fast models only (e.g. 12000)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-mace", action="store_true")
    args = parser.parse_args(argv)
    prepare_cpu(args.threads)
    res = run_peers(args.sizes, args.large, rounds=args.rounds, mace=not args.no_mace)
    print(res["machine"])
    print(summary_table(res))
    print("\n".join(verdict(res)))
    return res


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
