"""Plots (matplotlib, Agg backend) and markdown reports for MD analyses."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from maskpot.utils import PathLike, atomic_path, atomic_write_json, atomic_write_text

__all__ = ["plot_rdfs", "plot_log", "plot_geometry", "plot_msd", "write_analysis_report", "markdown_table", "fmt"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _savefig(fig: Any, path: PathLike) -> Path:
    """Lay out ``fig``, write it to ``path`` atomically (110 dpi), close it; return the path."""
    path = Path(path)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def fmt(x: Any, digits: int = 3) -> str:
    """Format a number for a markdown table (``-`` for missing / NaN)."""
    if x is None:
        return "-"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        if not math.isfinite(float(x)):
            return "-"
        ax = abs(float(x))
        if ax != 0 and (ax < 10 ** (-digits) or ax >= 1e6):
            return f"{float(x):.{digits}e}"
        return f"{float(x):.{digits}g}" if ax >= 1000 else f"{float(x):.{digits}f}"
    return str(x)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(c) for c in row) + " |")
    return "\n".join(lines) + "\n"


def plot_rdfs(path: PathLike, rdfs: Mapping[str, Any], reference: Optional[Mapping[str, Any]] = None,
              label: str = "learned", reference_label: str = "reference", keys: Optional[Sequence[str]] = None) -> Path:
    """One panel per pair type (``{"O-O": (r, g), ...}``), the reference dashed."""
    plt = _plt()
    keys = list(keys or rdfs.keys())
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for ax, k in zip(axes[0], keys):
        r, g = rdfs[k]
        ax.plot(r, g, label=label, lw=1.8)
        if reference is not None and k in reference:
            rr, gr = reference[k]
            ax.plot(rr, gr, "--", label=reference_label, lw=1.5, color="k")
        ax.set_xlabel("r (Å)")
        ax.set_ylabel(f"g$_{{{k}}}$(r)")
        ax.axhline(1.0, color="0.7", lw=0.6)
        ax.set_title(k)
        ax.legend(frameon=False)
    return _savefig(fig, path)


def plot_log(path: PathLike, log: Mapping[str, np.ndarray], reference: Optional[Mapping[str, np.ndarray]] = None,
             label: str = "learned", reference_label: str = "reference") -> Path:
    """Energies and temperature against time."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for lg, lab, style in ((log, label, "-"), (reference, reference_label, "--")):
        if not lg or "time_ps" not in lg:
            continue
        t = lg["time_ps"]
        axes[0].plot(t, lg["potential_eV"] - lg["potential_eV"][0], style, label=f"{lab} potential")
        axes[1].plot(t, lg["total_eV"] - lg["total_eV"][0], style, label=f"{lab} total")
        axes[2].plot(t, lg["temperature_K"], style, label=lab)
    axes[0].set_ylabel("E_pot - E_pot(0) (eV)")
    axes[1].set_ylabel("E_tot - E_tot(0) (eV)")
    axes[2].set_ylabel("T (K)")
    for ax in axes:
        ax.set_xlabel("time (ps)")
        ax.legend(frameon=False, fontsize=8)
    return _savefig(fig, path)


def plot_geometry(path: PathLike, geo: Mapping[str, np.ndarray], reference: Optional[Mapping[str, np.ndarray]] = None,
                  label: str = "learned", reference_label: str = "reference") -> Path:
    """Histograms of O–H lengths and H–O–H angles."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for g, lab, kw in ((geo, label, {}), (reference, reference_label, {"histtype": "step", "color": "k"})):
        if not g or len(g.get("oh", [])) == 0:
            continue
        axes[0].hist(g["oh"], bins=60, density=True, alpha=0.6 if not kw else 1.0, label=lab, **kw)
        axes[1].hist(g["hoh"], bins=60, density=True, alpha=0.6 if not kw else 1.0, label=lab, **kw)
    axes[0].set_xlabel("O–H bond length (Å)")
    axes[1].set_xlabel("H–O–H angle (°)")
    for ax in axes:
        ax.set_ylabel("density")
        ax.legend(frameon=False)
    return _savefig(fig, path)


def plot_msd(path: PathLike, msd: Mapping[str, Any], reference: Optional[Mapping[str, Any]] = None,
             label: str = "learned", reference_label: str = "reference") -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    for m, lab, style in ((msd, label, "-"), (reference, reference_label, "--")):
        if m and "msd" in m:
            ax.plot(m["lag_ps"], m["msd"], style, label=f"{lab} (D = {fmt(m['D_1e-5_cm2_s'])} 1e-5 cm²/s)")
    ax.set_xlabel("lag (ps)")
    ax.set_ylabel("MSD (Å²)")
    ax.legend(frameon=False, fontsize=8)
    return _savefig(fig, path)


def write_analysis_report(out: PathLike, result: Dict[str, Any], curves: Mapping[str, Any],
                          label: str = "learned", reference_label: str = "reference") -> Path:
    """Write ``analysis.json``, the PNG plots and ``report.md`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figs: List[tuple] = []
    if "rdf" in curves:
        figs.append(("Radial distribution functions", plot_rdfs(out / "rdf.png", curves["rdf"], curves.get("reference_rdf"), label, reference_label)))
    if "log" in curves:
        figs.append(("Energies and temperature", plot_log(out / "energy.png", curves["log"], curves.get("reference_log"), label, reference_label)))
    if "geometry" in curves:
        figs.append(("Water geometry", plot_geometry(out / "geometry.png", curves["geometry"], curves.get("reference_geometry"), label, reference_label)))
    if "msd" in curves and "msd" in curves["msd"]:
        figs.append(("Mean squared displacement", plot_msd(out / "msd.png", curves["msd"], curves.get("reference_msd"), label, reference_label)))
    atomic_write_json(out / "analysis.json", result)

    lines = [f"# MD analysis: {result['trajectory']}", ""]
    lines.append(f"{result['n_frames']} frames, {result['n_atoms']} atoms" + (f"; reference: {result['reference']}" if "reference" in result else ""))
    lines.append("")
    for key, what in (("truncated", "trajectory"), ("reference_truncated", "reference trajectory")):
        if key in result:
            tr = result[key]
            lines += [f"**Warning: the {what} is truncated: {tr['read_frames']} of the {tr['header_frames']} frames "
                      "in its header could be read; the numbers below cover the frames present only.**", ""]
    if "log_clipped_to_ps" in result:
        lines += [f"Log statistics cover t <= {result['log_clipped_to_ps']:g} ps (the trajectory's last frame).", ""]
    rows = []
    st, rst = result.get("stats", {}), result.get("reference_stats", {})
    for key, name in (("temperature_K_mean", "T mean (K)"), ("temperature_K_std", "T std (K)"),
                      ("potential_eV_mean", "E_pot mean (eV)"), ("drift_meV_per_atom_per_ps", "E_tot drift (meV/atom/ps)"),
                      ("total_energy_fluctuation_meV_per_atom", "E_tot std (meV/atom)"), ("speed_ns_per_day", "speed (ns/day)"),
                      ("simulated_ps", "simulated time (ps)")):
        if key in st or key in rst:
            rows.append((name, st.get(key), rst.get(key)))
    if "oh_mean" in result:
        rows.append(("O–H mean (Å)", result["oh_mean"], result.get("reference_oh_mean")))
        rows.append(("H–O–H mean (°)", result["hoh_mean"], result.get("reference_hoh_mean")))
    if "D_1e-5_cm2_s" in result:
        rows.append(("D (1e-5 cm²/s)", result["D_1e-5_cm2_s"], result.get("reference_D_1e-5_cm2_s")))
    if rows:
        lines.append(markdown_table(["quantity", label, reference_label], rows))
    if "rdf_distance" in result:
        lines.append("RDF distance to the reference (rmse = sqrt(mean_r (g - g_ref)²), dimensionless; "
                     "iae = ∫|g - g_ref| dr, Å):\n")
        lines.append(markdown_table(["pair", "rmse", "iae (Å)"],
                                    [(k, v["rmse"], v["iae"]) for k, v in result["rdf_distance"].items()]))
    for title, path in figs:
        lines += [f"## {title}", "", f"![{title}]({path.name})", ""]
    lines.append("Drift: slope of a linear fit of the total energy vs time (meaningful for NVE). "
                 "D: Einstein relation on unwrapped oxygen positions, fit between 20 % and 80 % of the longest lag.")
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    return out / "report.md"
