"""Classical reference: the same water box with flexible TIP3P in OpenMM, same conditions.

The force field is the one :mod:`maskpot.data.tip3p` generates training data with
(``tip3p.xml`` with ``rigidWater=False``, no constraints, PME with cutoff
``min(9 Å, box/2 - 0.01 Å)``), so a learned potential trained on that data can be compared with
its teacher: same box, same starting structure, thermostat, timestep and reporting.
"""

from __future__ import annotations

from typing import Any, Dict, Optional


from maskpot.md.openmm_runner import MDSettings, load_pdb, run_openmm, tip3p_system, water_box
from maskpot.utils import PathLike

__all__ = ["run_tip3p_reference"]


def run_tip3p_reference(
    out: PathLike,
    settings: MDSettings,
    n_molecules: Optional[int] = None,
    box: Optional[float] = None,
    pdb: Optional[PathLike] = None,
    cutoff: Optional[float] = None,
    resume: bool = False,
    echo: bool = True,
) -> Dict[str, Any]:
    """Run flexible-TIP3P MD of ``n_molecules`` waters (or the waters of ``pdb``) into ``out``.

    Outputs are those of :func:`maskpot.md.openmm_runner.run_openmm`; with
    ``settings.equilibration_steps`` > 0 the structure after equilibration is the first frame
    (and ``topology.pdb``: a good starting structure for the learned potential).
    """
    if pdb is not None:
        topology, positions = load_pdb(pdb, box)
    elif n_molecules is not None:
        topology, positions, box = water_box(n_molecules, box, settings.seed)
    else:
        raise ValueError("run_tip3p_reference: give n_molecules or pdb")
    system = tip3p_system(topology, cutoff)
    meta = {"potential": "flexible TIP3P (OpenMM tip3p.xml, rigidWater=False, PME)", "n_molecules": topology.getNumResidues()}
    return run_openmm(topology, system, positions, out, settings, resume=resume, metadata=meta, echo=echo)
