"""AtomicDataset, batch iteration and deterministic persisted splits."""

import numpy as np
import pytest
import torch

from maskpot.data.dataset import (
    AtomicDataset,
    iterate_batches,
    load_or_create_splits,
    load_splits,
    make_splits,
    save_splits,
)
from maskpot.data.sample import Sample
from maskpot.data.validate import DataValidationError


def _dataset(n=10):
    rng = np.random.default_rng(0)
    return AtomicDataset(
        [
            Sample(
                positions=rng.normal(size=(2 + i % 3, 3)),
                numbers=[1] * (2 + i % 3),
                energy=float(i),
                forces=np.zeros((2 + i % 3, 3)),
            )
            for i in range(n)
        ],
        name="toy",
    )


def test_dataset_indexing():
    ds = _dataset()
    assert len(ds) == 10
    assert ds[3].energy == 3.0
    sub = ds[[5, 1]]
    assert isinstance(sub, AtomicDataset) and [s.energy for s in sub] == [5.0, 1.0]
    assert len(ds[2:5]) == 3
    assert ds.species == [1]
    assert ds.n_atoms_total == sum(2 + i % 3 for i in range(10))
    assert ds.data_hash() == _dataset().data_hash() != _dataset(9).data_hash()


def test_dataset_from_file(tmp_path):
    from maskpot.data.io import write_dataset

    write_dataset(tmp_path / "d.npz", list(_dataset()))
    ds = AtomicDataset.from_file(tmp_path / "d.npz")
    assert len(ds) == 10 and ds[4].energy == 4.0


def test_iterate_batches():
    ds = _dataset()
    batches = list(iterate_batches(ds, batch_size=4, dtype=torch.float64))
    assert [b["energy"].shape[0] for b in batches] == [4, 4, 2]
    assert batches[0]["positions"].dtype == torch.float64
    assert batches[0]["batch"].max() == 3
    assert len(list(iterate_batches(ds, batch_size=4, drop_last=True))) == 2
    # Subset of indices, reproducible shuffle; a different seed changes the order.
    order = lambda seed: torch.cat([b["energy"] for b in iterate_batches(ds, [0, 2, 4, 6, 8], 2, True, seed)]).tolist()  # noqa: E731
    assert sorted(order(1)) == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert order(1) == order(1)
    assert any(order(1) != order(s) for s in range(2, 6))


def test_make_splits_deterministic():
    a = make_splits(100, (0.8, 0.1, 0.1), seed=5)
    b = make_splits(100, (0.8, 0.1, 0.1), seed=5)
    c = make_splits(100, (0.8, 0.1, 0.1), seed=6)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["train"], c["train"])
    assert [len(a[k]) for k in ("train", "val", "test")] == [80, 10, 10]
    assert len(np.unique(np.concatenate(list(a.values())))) == 100
    # Counts (rMD17 protocol: 950 train, 50 val, test from a separate file); leftovers unused.
    d = make_splits(1000, {"train": 950, "val": 50}, seed=0)
    assert len(d["train"]) == 950 and len(d["val"]) == 50 and len(d["test"]) == 0
    e = make_splits(10, (5, 2), seed=0)
    assert len(np.concatenate(list(e.values()))) == 7
    # Fractions summing to 1 use every frame.
    f = make_splits(7, (0.5, 0.25, 0.25))
    assert sum(len(v) for v in f.values()) == 7
    with pytest.raises(ValueError, match="only 10"):
        make_splits(10, (8, 2, 1))


def test_save_load_splits(tmp_path):
    path = tmp_path / "run" / "splits.npz"
    s = make_splits(50, (0.6, 0.2, 0.2), seed=1)
    save_splits(path, s, n=50)
    back = load_splits(path, n=50)
    for k in s:
        np.testing.assert_array_equal(s[k], back[k])
    assert [p.name for p in path.parent.iterdir()] == ["splits.npz"]
    with pytest.raises(DataValidationError, match=r"splits\.npz: key 'n': expected splits for 60 frames"):
        load_splits(path, n=60)
    # Invalid splits are refused on save and on load, naming the file and key.
    bad = dict(s, val=np.append(s["val"], s["train"][0]))
    with pytest.raises(DataValidationError, match=r"bad\.npz: key 'train/val': expected disjoint"):
        save_splits(tmp_path / "bad.npz", bad, n=50)
    np.savez(tmp_path / "range.npz", train=np.array([0, 99]), val=np.array([1]), test=np.array([], dtype=int), n=50)
    with pytest.raises(DataValidationError, match=r"range\.npz: key 'train': expected indices in 0\.\.49"):
        load_splits(tmp_path / "range.npz")
    np.savez(tmp_path / "nokey.npz", train=np.array([0]), n=50)
    with pytest.raises(DataValidationError, match=r"nokey\.npz: key 'val'"):
        load_splits(tmp_path / "nokey.npz")


def test_load_or_create_splits(tmp_path):
    path = tmp_path / "splits.npz"
    first = load_or_create_splits(path, 40, (0.5, 0.25, 0.25), seed=3)
    assert path.is_file()
    again = load_or_create_splits(path, 40, (0.5, 0.25, 0.25), seed=3)
    for k in first:
        np.testing.assert_array_equal(first[k], again[k])
    # A different seed reuses the stored splits (and warns) instead of overwriting them.
    with pytest.warns(UserWarning, match="reusing stored splits"):
        other = load_or_create_splits(path, 40, (0.5, 0.25, 0.25), seed=4)
    np.testing.assert_array_equal(first["train"], other["train"])
    with pytest.raises(DataValidationError, match="expected splits for 41 frames"):
        load_or_create_splits(path, 41)
