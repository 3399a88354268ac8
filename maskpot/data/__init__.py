"""Data layer: the ``Sample`` type, readers/writers, datasets, the TIP3P generator and the
neighbour list. Everything here speaks Å and eV."""

from maskpot.data.sample import Sample, collate

__all__ = ["Sample", "collate"]
