"""maskpot: machine-learned interatomic potentials with masked pretraining.

Internal units everywhere: Å, eV, eV/Å, atomic mass units, fs. Engines and file formats
with other units are converted once, at the edge, with ``ase.units`` / ``openmm.unit``.
"""

__version__ = "0.1.0"
