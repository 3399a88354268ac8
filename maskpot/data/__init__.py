"""Data layer: the ``Sample`` type, readers/writers, datasets, the TIP3P generator and the
neighbour list. Everything here speaks Å and eV."""

from maskpot.data.dataset import AtomicDataset, iterate_batches, load_or_create_splits, make_splits
from maskpot.data.io import read_dataset, write_dataset
from maskpot.data.sample import Sample, collate
from maskpot.data.validate import DataValidationError, check_cutoff

__all__ = [
    "AtomicDataset",
    "DataValidationError",
    "Sample",
    "check_cutoff",
    "collate",
    "iterate_batches",
    "load_or_create_splits",
    "make_splits",
    "read_dataset",
    "write_dataset",
]
