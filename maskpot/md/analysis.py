"""Analysis of MD trajectories: RDFs, energy drift, statistics, water geometry, diffusion.

Units: lengths Å, time ps, energies eV, temperatures K (mdtraj works in nm internally; the
conversion is done here with ``openmm.unit``). Diffusion coefficients are returned in Å²/ps and
reported in 1e-5 cm²/s (the customary unit for water, experiment ≈ 2.3).

Definitions (the numbers in reports):

``rdf_rmse``
    Root-mean-square difference between two g(r) curves sampled on the same r grid,
    ``sqrt(mean_r (g_a(r) - g_b(r))²)`` (dimensionless; 0 for identical curves, ~0.1 is a
    visible difference in the first-shell peak of water). ``rdf_iae`` is the integrated
    absolute difference ``∫ |g_a - g_b| dr`` in Å, reported alongside.
``drift``
    Slope of a straight-line least-squares fit of the total energy against time, divided by
    the atom count: meV/atom/ps. Meaningful for NVE runs only.
``D``
    Einstein relation: ``MSD(t) ≈ 6 D t`` fitted between 20 % and 80 % of the longest lag
    (default), on unwrapped coordinates, after removing the centre-of-mass drift of the
    selection, averaged over atoms and time origins.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from maskpot.utils import PathLike

__all__ = [
    "nm_per_angstrom",
    "make_mdtraj",
    "load_trajectory",
    "compute_rdf",
    "water_rdfs",
    "rdf_distance",
    "coordination_number",
    "energy_drift",
    "unwrap",
    "mean_squared_displacement",
    "diffusion_coefficient",
    "angstrom2_per_ps_to_1e5_cm2_per_s",
    "water_geometry",
    "read_log",
    "log_statistics",
    "is_water",
    "dcd_header_frames",
    "TruncatedTrajectoryError",
]


def nm_per_angstrom() -> float:
    from openmm import unit

    return (1.0 * unit.angstrom).value_in_unit(unit.nanometer)


def angstrom2_per_ps_to_1e5_cm2_per_s(d: float) -> float:
    """Convert a diffusion coefficient from Å²/ps to units of 1e-5 cm²/s."""
    from openmm import unit

    return float(d) * (1.0 * unit.angstrom**2 / unit.picosecond).value_in_unit(unit.centimeter**2 / unit.second) / 1e-5


# --------------------------------------------------------------------------------------------
# trajectories
# --------------------------------------------------------------------------------------------


def make_mdtraj(positions: np.ndarray, numbers: Sequence[int], cell: Optional[np.ndarray] = None,
                time_ps: Optional[np.ndarray] = None, water_residues: Optional[bool] = None):
    """Build an ``mdtraj.Trajectory`` from positions [F, N, 3] Å, atomic numbers, cell [F,3,3] or [3,3] Å.

    Atoms ordered O, H, H per molecule become HOH residues (with O–H bonds) when
    ``water_residues`` is True or None and the order allows it; otherwise one residue per atom.
    """
    import mdtraj
    from mdtraj.core import element as mdel

    from maskpot.data.tip3p import water_topology
    from maskpot.md.guard import water_bonds

    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim == 2:
        pos = pos[None]
    numbers = np.asarray(numbers).reshape(-1)
    nm = nm_per_angstrom()
    bonds = water_bonds(numbers) if water_residues in (None, True) else None
    if bonds is not None:
        top = mdtraj.Topology.from_openmm(water_topology(len(numbers) // 3, None))
    else:
        top = mdtraj.Topology()
        chain = top.add_chain()
        for i, z in enumerate(numbers):
            el = mdel.Element.getByAtomicNumber(int(z))
            res = top.add_residue("MOL", chain)
            top.add_atom(f"{el.symbol}{i}", el, res)
    traj = mdtraj.Trajectory(pos * nm, top, time=time_ps)
    if cell is not None:
        c = np.asarray(cell, dtype=np.float64)
        c = np.broadcast_to(c if c.ndim == 3 else c[None], (len(pos), 3, 3))
        if np.abs(c).sum() > 0:
            traj.unitcell_vectors = c * nm
    return traj


class TruncatedTrajectoryError(ValueError):
    """A trajectory file holds fewer frames than its header says (a cut copy, a full disk)."""


def dcd_header_frames(path: PathLike) -> Optional[int]:
    """Frame count (NSET) written in a DCD header; None when the header is not a standard one.

    The first Fortran record of a DCD is 84 bytes: ``"CORD"`` then NSET, ISTART, NSAVC, ...
    (int32, either endianness). OpenMM updates NSET after every frame it writes.
    """
    import struct

    with open(path, "rb") as fh:
        head = fh.read(12)
    if len(head) < 12 or head[4:8] != b"CORD":
        return None
    for order in ("<", ">"):
        if struct.unpack(order + "i", head[:4])[0] == 84:
            return int(struct.unpack(order + "i", head[8:12])[0])
    return None


def check_complete(traj: PathLike, n_frames: int, stride: int = 1, allow_truncated: bool = False) -> Optional[Dict[str, int]]:
    """Compare the frames read from a DCD with its header; raise :class:`TruncatedTrajectoryError`
    (or, with ``allow_truncated``, warn and return ``{"header_frames", "read_frames"}``) when short."""
    import warnings

    if Path(traj).suffix.lower() != ".dcd":
        return None
    header = dcd_header_frames(traj)
    if not header:
        return None
    expected = -(-header // max(int(stride), 1))
    if n_frames >= expected:
        return None
    msg = f"{traj}: the DCD header says {header} frames but only {n_frames} could be read: the file is truncated"
    if not allow_truncated:
        raise TruncatedTrajectoryError(msg + " (pass allow_truncated=True / --allow-truncated to analyse the frames "
                                             "present, with the log statistics cut to the same time span)")
    warnings.warn(msg + "; analysing the frames present only", stacklevel=3)
    return {"header_frames": int(header), "read_frames": int(n_frames)}


def _clip_log(lg: Dict[str, np.ndarray], t_end: float, tol: float) -> Tuple[Dict[str, np.ndarray], bool]:
    """Log rows up to the trajectory's last frame time (ps); True if rows were dropped."""
    if not lg or "time_ps" not in lg:
        return lg, False
    keep = lg["time_ps"] <= t_end + tol
    if keep.all():
        return lg, False
    return {k: v[keep] for k, v in lg.items()}, True


def load_trajectory(traj: PathLike, top: Optional[PathLike] = None, stride: int = 1):
    """Load a trajectory as ``mdtraj.Trajectory``.

    DCD/XTC/... need ``top`` (a PDB); ``.xyz``/``.extxyz``/``.traj`` files (from the ASE runner) are
    read with ASE (cell and pbc included) and converted.
    """
    import mdtraj

    traj = Path(traj)
    if traj.suffix.lower() in (".xyz", ".extxyz", ".traj"):
        import ase.io

        frames = ase.io.read(traj, index=f"::{stride}")
        pos = np.stack([a.get_positions() for a in frames])
        cell = np.stack([np.asarray(a.get_cell()) if a.pbc.any() else np.zeros((3, 3)) for a in frames])
        return make_mdtraj(pos, frames[0].get_atomic_numbers(), cell if np.abs(cell).sum() else None)
    if top is None:
        raise ValueError(f"{traj}: a topology file (--top, e.g. a PDB) is needed to read this trajectory")
    return mdtraj.load(str(traj), top=str(top), stride=stride)


def is_water(traj) -> bool:
    """True when every residue is a water (one O and two H)."""
    for res in traj.topology.residues:
        els = sorted(a.element.symbol for a in res.atoms)
        if els != ["H", "H", "O"]:
            return False
    return traj.topology.n_residues > 0


def _box_lengths_angstrom(traj) -> Optional[np.ndarray]:
    if traj.unitcell_vectors is None:
        return None
    return np.asarray(traj.unitcell_lengths) / nm_per_angstrom()


def _max_rdf_radius(traj) -> float:
    """Largest r (Å) for which the minimum image is valid: half the shortest perpendicular width
    of the first frame's cell (:func:`maskpot.data.validate.perpendicular_widths`)."""
    from maskpot.data.validate import perpendicular_widths

    cell = np.asarray(traj.unitcell_vectors[0], dtype=np.float64) / nm_per_angstrom()
    return 0.5 * float(perpendicular_widths(cell).min())


# --------------------------------------------------------------------------------------------
# radial distribution functions
# --------------------------------------------------------------------------------------------


def compute_rdf(traj, selection_a: str, selection_b: Optional[str] = None, r_max: Optional[float] = None,
                bin_width: float = 0.05, exclude_same_residue: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """g(r) between two mdtraj atom selections with ``mdtraj.compute_rdf``.

    Args:
        traj: periodic ``mdtraj.Trajectory``.
        selection_a, selection_b: mdtraj selection strings (``"element O"``); b defaults to a.
        r_max: largest r, Å (default: half the smallest box width, at most 8 Å).
        bin_width: histogram bin width, Å.
        exclude_same_residue: drop pairs within one residue (intermolecular g(r) only).

    Returns:
        (r Å [bins], g(r) [bins]).
    """
    if traj.unitcell_vectors is None:
        raise ValueError("compute_rdf needs a periodic trajectory (unit cell)")
    nm = nm_per_angstrom()
    half = _max_rdf_radius(traj)
    if r_max is None:
        r_max = min(8.0, half)
    if r_max > half + 1e-9:
        raise ValueError(f"r_max = {r_max} Å exceeds half the box width ({half:.3f} Å)")
    a = traj.topology.select(selection_a)
    b = a if selection_b is None else traj.topology.select(selection_b)
    if len(a) == 0 or len(b) == 0:
        raise ValueError(f"empty selection: {selection_a!r} -> {len(a)} atoms, {selection_b!r} -> {len(b)} atoms")
    pairs = traj.topology.select_pairs(a, b)
    if exclude_same_residue:
        res = np.array([at.residue.index for at in traj.topology.atoms])
        pairs = pairs[res[pairs[:, 0]] != res[pairs[:, 1]]]
    r, g = _rdf_from_pairs(traj, pairs, r_max * nm, bin_width * nm)
    return r / nm, g


def _rdf_from_pairs(traj, pairs: np.ndarray, r_max_nm: float, bin_nm: float):
    import mdtraj

    n_bins = max(1, int(round(r_max_nm / bin_nm)))
    return mdtraj.compute_rdf(traj, pairs, r_range=(0.0, r_max_nm), n_bins=n_bins, periodic=True)


def water_rdfs(traj, r_max: Optional[float] = None, bin_width: float = 0.05) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """O–O, O–H and H–H g(r) of a water trajectory (all pairs, intramolecular included).

    mdtraj normalises with the number of pairs, so g → 1 at large r for O–O; O–H and H–H include
    the intramolecular peaks (0.96 Å, 1.5 Å).
    """
    return {
        "O-O": compute_rdf(traj, "element O", None, r_max, bin_width),
        "O-H": compute_rdf(traj, "element O", "element H", r_max, bin_width),
        "H-H": compute_rdf(traj, "element H", None, r_max, bin_width),
    }


def rdf_distance(r: np.ndarray, g_a: np.ndarray, g_b: np.ndarray) -> Dict[str, float]:
    """Distances between two g(r) on the same grid: ``rmse`` (dimensionless) and ``iae`` (Å)."""
    r, g_a, g_b = (np.asarray(x, dtype=np.float64) for x in (r, g_a, g_b))
    if g_a.shape != g_b.shape or r.shape != g_a.shape:
        raise ValueError(f"rdf_distance: shapes differ {r.shape}, {g_a.shape}, {g_b.shape}")
    diff = g_a - g_b
    dr = float(np.mean(np.diff(r))) if len(r) > 1 else 0.0
    return {"rmse": float(np.sqrt(np.mean(diff**2))), "iae": float(np.sum(np.abs(diff)) * dr)}


def coordination_number(r: np.ndarray, g: np.ndarray, density: float, r_cut: float) -> float:
    """Running coordination number ``4π ρ ∫_0^r_cut g(r) r² dr`` (ρ in atoms/Å³, r in Å).

    ``r`` are bin centres of equal width; each bin contributes its exact shell volume
    ``4π/3 (r_out³ - r_in³)`` (the normalisation mdtraj uses), so a lattice gives integers.
    For a like-pair g(r) from mdtraj (normalised with N(N-1)/2 pairs) use ``density = (N-1)/V``.
    """
    r = np.asarray(r, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    dr = float(np.mean(np.diff(r)))
    sel = r <= r_cut
    shells = 4.0 * math.pi / 3.0 * ((r[sel] + dr / 2) ** 3 - np.clip(r[sel] - dr / 2, 0, None) ** 3)
    return float(density * np.sum(g[sel] * shells))


# --------------------------------------------------------------------------------------------
# energies, drift, statistics
# --------------------------------------------------------------------------------------------


def energy_drift(time_ps: np.ndarray, energy_ev: np.ndarray, n_atoms: int) -> float:
    """Linear-fit slope of energy vs time, meV/atom/ps (see module docstring)."""
    t = np.asarray(time_ps, dtype=np.float64)
    e = np.asarray(energy_ev, dtype=np.float64)
    ok = np.isfinite(t) & np.isfinite(e)
    if ok.sum() < 2 or np.ptp(t[ok]) == 0:
        return float("nan")
    slope = np.polyfit(t[ok], e[ok], 1)[0]  # eV/ps
    return float(slope * 1000.0 / n_atoms)


def read_log(path: PathLike) -> Dict[str, np.ndarray]:
    """Read a runner CSV log into columns of floats (header names as keys).

    Empty or missing trailing fields are NaN; anything else that is not a number is a
    ``ValueError`` naming the file, the line and the column.
    """
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"log {path}: expected a CSV text file, found unreadable content ({exc})") from exc
    header, body = (rows[0], rows[1:]) if rows else ([], [])
    body = [(i, r) for i, r in enumerate(body, start=2) if r]
    if not body:
        return {}
    cols: Dict[str, list] = {k: [] for k in header}
    for lineno, row in body:
        if len(row) > len(header):
            raise ValueError(f"log {path}: line {lineno}: expected at most {len(header)} comma-separated values "
                             f"(header {header}), found {len(row)}")
        for k, v in zip(header, row + [""] * (len(header) - len(row))):
            try:
                cols[k].append(float(v) if v.strip() else np.nan)
            except ValueError:
                raise ValueError(f"log {path}: line {lineno}: column '{k}': expected a number, found {v!r}") from None
    return {k: np.array(v, dtype=np.float64) for k, v in cols.items()}


def log_statistics(log: Mapping[str, np.ndarray], n_atoms: int, skip_fraction: float = 0.0) -> Dict[str, float]:
    """Mean / std of temperature and energies, drift of the total energy, mean speed."""
    out: Dict[str, float] = {}
    if not log or "step" not in log:
        return out
    n = len(log["step"])
    start = int(skip_fraction * n)
    sl = slice(start, None)
    for key in ("temperature_K", "potential_eV", "kinetic_eV", "total_eV"):
        if key in log:
            v = log[key][sl]
            out[f"{key}_mean"] = float(np.nanmean(v))
            out[f"{key}_std"] = float(np.nanstd(v))
    if "total_eV" in log and "time_ps" in log:
        out["drift_meV_per_atom_per_ps"] = energy_drift(log["time_ps"][sl], log["total_eV"][sl], n_atoms)
        out["total_energy_fluctuation_meV_per_atom"] = float(np.nanstd(log["total_eV"][sl]) * 1000 / n_atoms)
    if "speed_ns_per_day" in log:
        sp = log["speed_ns_per_day"]
        sp = sp[np.isfinite(sp) & (sp > 0)]
        if len(sp):
            out["speed_ns_per_day"] = float(np.median(sp))
    out["simulated_ps"] = float(log["time_ps"][-1] - log["time_ps"][0]) if "time_ps" in log else float("nan")
    return out


# --------------------------------------------------------------------------------------------
# diffusion
# --------------------------------------------------------------------------------------------


def unwrap(positions: np.ndarray, cells: Optional[np.ndarray]) -> np.ndarray:
    """Unwrap a trajectory [F, N, 3] Å: accumulate minimum-image displacements between frames.

    Already-unwrapped trajectories are returned unchanged as long as no atom moves more than half a
    box width between frames (the premise of any unwrapping).
    """
    from maskpot.data.molecules import minimum_image

    pos = np.asarray(positions, dtype=np.float64)
    if cells is None or len(pos) < 2:
        return pos.copy()
    cells = np.asarray(cells, dtype=np.float64)
    cells = np.broadcast_to(cells if cells.ndim == 3 else cells[None], (len(pos), 3, 3))
    out = np.empty_like(pos)
    out[0] = pos[0]
    pbc = np.ones(3, dtype=bool)
    for f in range(1, len(pos)):
        d = minimum_image(pos[f] - pos[f - 1], cells[f], pbc)
        out[f] = out[f - 1] + d
    return out


def mean_squared_displacement(positions: np.ndarray, max_lag: Optional[int] = None,
                              remove_com: bool = True) -> np.ndarray:
    """MSD [lags] in Å² of unwrapped positions [F, N, 3], averaged over atoms and time origins.

    ``msd[k]`` is the mean of ``|x(t + k) - x(t)|²``; lag 0 is 0. The mean displacement of the
    selection (centre-of-mass drift, equal masses) is removed when ``remove_com``.
    """
    pos = np.asarray(positions, dtype=np.float64)
    if remove_com:
        pos = pos - pos.mean(axis=1, keepdims=True)
    n = len(pos)
    max_lag = n - 1 if max_lag is None else min(int(max_lag), n - 1)
    msd = np.zeros(max_lag + 1)
    for k in range(1, max_lag + 1):
        d = pos[k:] - pos[:-k]
        msd[k] = float(np.mean(np.sum(d * d, axis=-1)))
    return msd


def diffusion_coefficient(lag_ps: np.ndarray, msd: np.ndarray, fit_range: Tuple[float, float] = (0.2, 0.8),
                          dim: int = 3) -> float:
    """Einstein relation: slope of MSD vs lag in the fit window / (2 dim); Å²/ps."""
    t = np.asarray(lag_ps, dtype=np.float64)
    m = np.asarray(msd, dtype=np.float64)
    if len(t) < 3:
        return float("nan")
    lo, hi = fit_range
    sel = (t >= lo * t[-1]) & (t <= hi * t[-1])
    if sel.sum() < 2:
        sel = t > 0
    slope = np.polyfit(t[sel], m[sel], 1)[0]
    return float(slope / (2 * dim))


# --------------------------------------------------------------------------------------------
# water geometry
# --------------------------------------------------------------------------------------------


def water_geometry(traj) -> Dict[str, np.ndarray]:
    """O–H bond lengths (Å) and H–O–H angles (degrees) of every water in every frame."""
    import mdtraj

    bonds, angles = [], []
    for res in traj.topology.residues:
        o = [a.index for a in res.atoms if a.element.symbol == "O"]
        h = [a.index for a in res.atoms if a.element.symbol == "H"]
        if len(o) == 1 and len(h) == 2:
            bonds += [(o[0], h[0]), (o[0], h[1])]
            angles.append((h[0], o[0], h[1]))
    if not bonds:
        return {"oh": np.zeros(0), "hoh": np.zeros(0)}
    periodic = traj.unitcell_vectors is not None
    d = mdtraj.compute_distances(traj, np.array(bonds), periodic=periodic) / nm_per_angstrom()
    a = np.degrees(mdtraj.compute_angles(traj, np.array(angles), periodic=periodic))
    return {"oh": d.reshape(-1), "hoh": a.reshape(-1)}


# --------------------------------------------------------------------------------------------
# one call: analyse a run (and compare with a reference)
# --------------------------------------------------------------------------------------------


def _find_log(traj: Path) -> Optional[Path]:
    for name in ("md.csv", "log.csv"):
        p = traj.parent / name
        if p.exists():
            return p
    return None


def analyze_run(
    traj: PathLike,
    top: Optional[PathLike] = None,
    reference: Optional[PathLike] = None,
    reference_top: Optional[PathLike] = None,
    log: Optional[PathLike] = None,
    reference_log: Optional[PathLike] = None,
    out: Optional[PathLike] = None,
    label: str = "learned",
    reference_label: str = "reference",
    skip_fraction: float = 0.0,
    bin_width: float = 0.05,
    r_max: Optional[float] = None,
    allow_truncated: bool = False,
) -> Dict[str, Any]:
    """Analyse a trajectory (+ its CSV log), optionally against a reference; write plots + report.

    A DCD holding fewer frames than its header says raises :class:`TruncatedTrajectoryError`;
    with ``allow_truncated`` the frames present are analysed and ``result["truncated"]`` says so.
    CSV-log statistics only cover the time span of the trajectory's frames (rows after its last
    frame are dropped, noted in ``result["log_clipped_to_ps"]``).

    Returns a JSON-able dict of the numbers. With ``out``, writes ``analysis.json``, PNG plots and
    ``report.md`` there.
    """
    from maskpot.md.report import write_analysis_report

    traj = Path(traj)
    t = _with_time(load_trajectory(traj, top), traj)
    truncated = check_complete(traj, t.n_frames, allow_truncated=allow_truncated)
    t_end = float(t.time[-1]) if t.time is not None and t.n_frames and _has_run_json(traj) else None
    tol = 0.5 * float(np.median(np.diff(t.time))) if t_end is not None and t.n_frames > 1 else 1e-9
    n_skip = int(skip_fraction * t.n_frames)
    t = t[n_skip:]
    result: Dict[str, Any] = {"trajectory": str(traj), "n_frames": int(t.n_frames), "n_atoms": int(t.n_atoms)}
    if truncated:
        result["truncated"] = truncated
    curves: Dict[str, Any] = {}
    log_path = Path(log) if log else _find_log(traj)
    if log_path is not None and log_path.exists():
        lg = read_log(log_path)
        if t_end is not None:
            lg, clipped = _clip_log(lg, t_end, tol)
            if clipped:
                import warnings

                result["log_clipped_to_ps"] = t_end
                warnings.warn(f"{log_path}: log rows after the last trajectory frame (t = {t_end:g} ps) are left out "
                              "of the statistics", stacklevel=2)
        result["log"] = str(log_path)
        result["stats"] = log_statistics(lg, t.n_atoms, skip_fraction)
        curves["log"] = lg
    water = is_water(t)
    result["water"] = water
    periodic = t.unitcell_vectors is not None
    ref = None
    if reference is not None:
        ref = _with_time(load_trajectory(reference, reference_top or top), Path(reference))
        ref_truncated = check_complete(reference, ref.n_frames, allow_truncated=allow_truncated)
        if ref_truncated:
            result["reference_truncated"] = ref_truncated
        ref = ref[int(skip_fraction * ref.n_frames):]
        result["reference"] = str(reference)
        rlog = Path(reference_log) if reference_log else _find_log(Path(reference))
        if rlog is not None and rlog.exists():
            lg = read_log(rlog)
            result["reference_stats"] = log_statistics(lg, ref.n_atoms, skip_fraction)
            curves["reference_log"] = lg
    if water and periodic:
        rmax = r_max
        if rmax is None:
            rmax = min(8.0, _max_rdf_radius(t), _max_rdf_radius(ref) if ref is not None else 8.0)
        rdfs = water_rdfs(t, rmax, bin_width)
        curves["rdf"] = rdfs
        result["rdf_first_peak"] = {k: float(r[np.argmax(g)]) for k, (r, g) in rdfs.items()}
        if ref is not None and is_water(ref):
            ref_rdfs = water_rdfs(ref, rmax, bin_width)
            curves["reference_rdf"] = ref_rdfs
            result["rdf_distance"] = {k: rdf_distance(rdfs[k][0], rdfs[k][1], ref_rdfs[k][1]) for k in rdfs}
    if water:
        geo = water_geometry(t)
        curves["geometry"] = geo
        result["oh_mean"], result["oh_std"] = float(geo["oh"].mean()), float(geo["oh"].std())
        result["hoh_mean"], result["hoh_std"] = float(geo["hoh"].mean()), float(geo["hoh"].std())
        if ref is not None and is_water(ref):
            rgeo = water_geometry(ref)
            curves["reference_geometry"] = rgeo
            result["reference_oh_mean"], result["reference_hoh_mean"] = float(rgeo["oh"].mean()), float(rgeo["hoh"].mean())
    # diffusion (oxygens for water, all atoms otherwise), periodic trajectories only
    if periodic and t.n_frames >= 5 and t.time is not None:
        diff = _diffusion(t, water)
        result.update({k: v for k, v in diff.items() if k not in ("lag_ps", "msd")})
        curves["msd"] = diff
        if ref is not None and ref.n_frames >= 5 and ref.unitcell_vectors is not None:
            rdiff = _diffusion(ref, is_water(ref))
            result["reference_D_1e-5_cm2_s"] = rdiff["D_1e-5_cm2_s"]
            curves["reference_msd"] = rdiff
    if out is not None:
        write_analysis_report(out, result, curves, label=label, reference_label=reference_label)
    return result


def _has_run_json(path: PathLike) -> bool:
    return (Path(path).parent / "run.json").exists()


def _with_time(t, path: Path):
    """Set frame times (ps) from the runner's ``run.json`` next to the trajectory, when present."""
    info = path.parent / "run.json"
    if info.exists():
        try:
            meta = json.loads(info.read_text())
            dt = float(meta["frame_interval_ps"])
            t0 = float(meta.get("first_frame_time_ps", 0.0))
            t.time = t0 + dt * np.arange(t.n_frames)
        except (KeyError, ValueError, TypeError):
            pass
    return t


def _diffusion(t, water: bool) -> Dict[str, Any]:
    sel = t.topology.select("element O") if water else np.arange(t.n_atoms)
    nm = nm_per_angstrom()
    pos = unwrap(t.xyz[:, sel] / nm, t.unitcell_vectors / nm)
    time = np.asarray(t.time, dtype=np.float64)
    dt = float(np.median(np.diff(time))) if len(time) > 1 else float("nan")
    if not (np.isfinite(dt) and dt > 0):
        return {"D_A2_ps": float("nan"), "D_1e-5_cm2_s": float("nan")}
    msd = mean_squared_displacement(pos, max_lag=len(pos) // 2)
    lag = np.arange(len(msd)) * dt
    d = diffusion_coefficient(lag, msd)
    return {"D_A2_ps": d, "D_1e-5_cm2_s": angstrom2_per_ps_to_1e5_cm2_per_s(d), "lag_ps": lag, "msd": msd}


def save_json(path: PathLike, obj: Any) -> None:
    from maskpot.utils import atomic_write_json

    atomic_write_json(path, obj)
