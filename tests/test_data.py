"""ddp.utils.data: datasets, samplers, DataLoader batching/shuffling, default_collate vs torch."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from _helpers import torch_oracle

import ddp
from ddp.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    Subset,
    TensorDataset,
    default_collate,
    random_split,
)


def _dataset(n=10):
    x = ddp.arange(3 * n).float().reshape(n, 3)
    y = ddp.arange(n)
    return TensorDataset(x, y)


class PlainDataset(Dataset):
    """The same samples as ``_dataset`` through the generic (per-sample) path."""

    def __init__(self, n=10):
        self.inner = _dataset(n)

    def __getitem__(self, i):
        return self.inner[i]

    def __len__(self):
        return len(self.inner)


def _ys(loader):
    return [yb.tolist() for _, yb in loader]


# --------------------------------------------------------------------------------- datasets
def test_tensor_dataset_checks_first_dims():
    with pytest.raises(ValueError, match=r"\[\(4, 2\), \(5,\)\]"):
        TensorDataset(ddp.zeros(4, 2), ddp.zeros(5))
    ds = _dataset(4)
    x, y = ds[2]
    assert x.tolist() == [6.0, 7.0, 8.0] and y.item() == 2 and len(ds) == 4


def test_random_split_lengths_and_fractions():
    ds = _dataset(10)
    a, b = random_split(ds, [7, 3], generator=ddp.Generator().manual_seed(1))
    assert len(a) == 7 and len(b) == 3
    assert sorted(list(a.indices) + list(b.indices)) == list(range(10))
    parts = random_split(ds, [0.5, 0.3, 0.2], generator=ddp.Generator().manual_seed(1))
    assert [len(p) for p in parts] == [5, 3, 2]
    parts = random_split(range(7), [0.5, 0.5])
    assert [len(p) for p in parts] == [4, 3]
    with pytest.raises(ValueError, match=r"\(9\) does not equal the length of the input "
                                         r"dataset \(10\)"):
        random_split(ds, [5, 4])


# --------------------------------------------------------------------------------- samplers
def test_batch_sampler_and_len():
    sampler = BatchSampler(SequentialSampler(range(10)), batch_size=3, drop_last=False)
    assert list(sampler) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]] and len(sampler) == 4
    sampler = BatchSampler(range(10), batch_size=3, drop_last=True)
    assert list(sampler) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]] and len(sampler) == 3
    with pytest.raises(ValueError, match="positive integer value, but got batch_size=0"):
        BatchSampler(range(3), 0, False)


def test_random_sampler_is_seeded_permutation():
    a = list(RandomSampler(range(20), generator=ddp.Generator().manual_seed(3)))
    b = list(RandomSampler(range(20), generator=ddp.Generator().manual_seed(3)))
    assert a == b and sorted(a) == list(range(20)) and a != list(range(20))
    ddp.manual_seed(5)
    c = list(RandomSampler(range(20)))
    ddp.manual_seed(5)
    assert list(RandomSampler(range(20))) == c
    draws = list(RandomSampler(range(4), replacement=True, num_samples=50,
                               generator=ddp.Generator().manual_seed(0)))
    assert len(draws) == 50 and set(draws) <= set(range(4))
    longer = list(RandomSampler(range(4), num_samples=10, generator=ddp.Generator()))
    assert len(longer) == 10 and sorted(longer[:4]) == [0, 1, 2, 3]


# ------------------------------------------------------------------------------- DataLoader
def test_sequential_batches_and_len():
    loader = DataLoader(_dataset(10), batch_size=4)
    batches = list(loader)
    assert len(loader) == 3 and len(batches) == 3
    xb, yb = batches[0]
    assert xb.shape == (4, 3) and xb.dtype == ddp.float32 and yb.dtype == ddp.int64
    assert _ys(loader) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    dropped = DataLoader(_dataset(10), batch_size=4, drop_last=True)
    assert len(dropped) == 2 and _ys(dropped) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_shuffle_is_seeded_and_changes_each_epoch():
    loader = DataLoader(_dataset(12), batch_size=5, shuffle=True,
                        generator=ddp.Generator().manual_seed(0))
    epoch1, epoch2 = _ys(loader), _ys(loader)
    assert [len(b) for b in epoch1] == [5, 5, 2]
    assert sorted(sum(epoch1, [])) == list(range(12)) and epoch1 != epoch2
    again = DataLoader(_dataset(12), batch_size=5, shuffle=True,
                       generator=ddp.Generator().manual_seed(0))
    assert _ys(again) == epoch1


@pytest.mark.parametrize("kwargs", [
    {"batch_size": 3}, {"batch_size": 4, "drop_last": True}, {"batch_size": 3, "shuffle": True},
])
def test_fast_path_equals_generic_path(kwargs):
    fast = DataLoader(_dataset(10), generator=ddp.Generator().manual_seed(7), **kwargs)
    slow = DataLoader(PlainDataset(10), generator=ddp.Generator().manual_seed(7), **kwargs)
    for (fx, fy), (sx, sy) in zip(fast, slow, strict=True):
        assert fx.dtype == sx.dtype and fy.dtype == sy.dtype
        np.testing.assert_array_equal(fx.numpy(), sx.numpy())
        np.testing.assert_array_equal(fy.numpy(), sy.numpy())


def test_subset_and_custom_sampler():
    sub = Subset(_dataset(10), [9, 2, 4, 7])
    assert _ys(DataLoader(sub, batch_size=3)) == [[9, 2, 4], [7]]
    loader = DataLoader(_dataset(10), batch_size=2, sampler=[5, 1, 3])
    assert _ys(loader) == [[5, 1], [3]]


def test_distributed_sampler_shards_cover_the_dataset():
    ds = _dataset(10)
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=False)
        seen += sum(_ys(DataLoader(ds, batch_size=2, sampler=sampler)), [])
    assert sorted(seen) == list(range(10))


def test_workers_give_the_same_batches():
    kwargs = {"batch_size": 3, "shuffle": True}
    base = _ys(DataLoader(_dataset(20), generator=ddp.Generator().manual_seed(1), **kwargs))
    threaded = DataLoader(PlainDataset(20), generator=ddp.Generator().manual_seed(1),
                          num_workers=2, **kwargs)
    assert _ys(threaded) == base


def test_batch_size_none_and_batch_sampler():
    samples = list(DataLoader(_dataset(3), batch_size=None))
    assert len(samples) == 3 and samples[1][1].item() == 1
    loader = DataLoader(_dataset(6), batch_sampler=[[0, 5], [2]])
    assert _ys(loader) == [[0, 5], [2]]


def test_option_errors():
    ds = _dataset(4)
    with pytest.raises(ValueError, match="mutually exclusive with shuffle"):
        DataLoader(ds, sampler=[0, 1], shuffle=True)
    with pytest.raises(ValueError, match="batch_sampler option is mutually exclusive"):
        DataLoader(ds, batch_sampler=[[0]], batch_size=2)
    with pytest.raises(ValueError, match="mutually exclusive with drop_last"):
        DataLoader(ds, batch_size=None, drop_last=True)
    with pytest.raises(ValueError, match="num_workers option should be non-negative"):
        DataLoader(ds, num_workers=-1)


class Stream(IterableDataset):
    def __iter__(self):
        return iter(range(7))


def test_iterable_dataset_batches():
    assert [b.tolist() for b in DataLoader(Stream(), batch_size=3)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert len(list(DataLoader(Stream(), batch_size=3, drop_last=True))) == 2
    with pytest.raises(TypeError):
        len(DataLoader(Stream(), batch_size=3))
    with pytest.raises(ValueError, match="expected unspecified shuffle option"):
        DataLoader(Stream(), shuffle=True)


# ---------------------------------------------------------------------- default_collate
Point = collections.namedtuple("Point", "x y")

COLLATE_CASES = {
    "floats": [1.5, 2.0],
    "ints": [1, 2, 3],
    "bools": [True, False],
    "strings": ["a", "b"],
    "numpy": [np.ones((2, 2), np.float32), np.zeros((2, 2), np.float32)],
    "numpy-scalars": [np.float32(1.5), np.float32(2.5)],
    "numpy-int": [np.int32(1), np.int32(2)],
    "tuples": [(1, 2.0), (3, 4.0)],
    "lists": [[1, 2], [3, 4]],
    "dicts": [{"a": 1, "b": [0.5]}, {"a": 2, "b": [1.5]}],
    "namedtuple": [Point(1, 2.0), Point(3, 4.0)],
}


def _normalise(value, tensor_type):
    """Nested structure with tensors replaced by (dtype name, values)."""
    if isinstance(value, tensor_type):
        return (str(value.dtype).split(".")[-1], value.tolist())
    if isinstance(value, dict):
        return {k: _normalise(v, tensor_type) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [_normalise(v, tensor_type) for v in value])
    return value


@pytest.mark.parametrize("name", sorted(COLLATE_CASES))
def test_default_collate_matches_torch(name):
    torch = torch_oracle()
    from torch.utils.data import default_collate as torch_collate

    batch = COLLATE_CASES[name]
    ours = _normalise(default_collate(batch), ddp.Tensor)
    theirs = _normalise(torch_collate(batch), torch.Tensor)
    assert ours == theirs


def test_default_collate_tensors_and_errors():
    out = default_collate([ddp.ones(2), ddp.zeros(2)])
    assert out.tolist() == [[1.0, 1.0], [0.0, 0.0]]
    with pytest.raises(RuntimeError, match="equal size"):
        default_collate([[1, 2], [3]])
    with pytest.raises(TypeError, match="found <class 'object'>"):
        default_collate([object()])
