"""Samplers: which dataset indices a loader visits, in which order.

``SequentialSampler`` and ``RandomSampler`` can also hand the whole epoch's indices over as one
int64 array (``_index_array``), which ``BatchSampler`` slices into batches without a Python
loop; the indices are the ones iteration would yield.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence, Sized

import numpy as np

from ddp import random as _random
from ddp.random import Generator


class Sampler:
    """Base class: subclasses implement ``__iter__`` (indices) and usually ``__len__``."""

    def __init__(self, data_source: Sized | None = None) -> None:
        pass

    def __iter__(self) -> Iterator[int]:
        raise NotImplementedError

    def _index_array(self) -> np.ndarray | None:
        """This epoch's indices as one array, or None when only iteration can tell."""
        return None


class SequentialSampler(Sampler):
    """Indices ``0 .. len(data_source) - 1`` in order."""

    def __init__(self, data_source: Sized) -> None:
        self.data_source = data_source

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self.data_source)))

    def __len__(self) -> int:
        return len(self.data_source)

    def _index_array(self) -> np.ndarray | None:
        if type(self).__iter__ is not SequentialSampler.__iter__:
            return None
        return np.arange(len(self.data_source), dtype=np.int64)


class RandomSampler(Sampler):
    """A random permutation each epoch, or ``num_samples`` draws with ``replacement``.

    Without a ``generator`` each epoch seeds a fresh one from the thread's default generator,
    so ``ddp.manual_seed`` makes the order reproducible; with one, its stream is used.
    """

    def __init__(self, data_source: Sized, replacement: bool = False,
                 num_samples: int | None = None, generator: Generator | None = None) -> None:
        if not isinstance(replacement, bool):
            raise TypeError(
                f"replacement should be a boolean value, but got replacement={replacement}"
            )
        self.data_source = data_source
        self.replacement = replacement
        self._num_samples = num_samples
        self.generator = generator
        if not isinstance(self.num_samples, int) or self.num_samples <= 0:
            raise ValueError(
                f"num_samples should be a positive integer value, but got "
                f"num_samples={self.num_samples}"
            )

    @property
    def num_samples(self) -> int:
        return len(self.data_source) if self._num_samples is None else self._num_samples

    def __len__(self) -> int:
        return self.num_samples

    def _epoch_indices(self) -> np.ndarray:
        n = len(self.data_source)
        generator = self.generator
        if generator is None:
            seed = int(_random.integers_array(0, 2**62, (), None))
            generator = Generator().manual_seed(seed)
        if self.replacement:
            return _random.integers_array(0, n, (self.num_samples,), generator)
        parts = [_random.permutation_array(n, generator) for _ in range(self.num_samples // n)]
        if self.num_samples % n:
            parts.append(_random.permutation_array(n, generator)[: self.num_samples % n])
        return np.concatenate(parts) if len(parts) != 1 else parts[0]

    def __iter__(self) -> Iterator[int]:
        return iter(self._epoch_indices().tolist())

    def _index_array(self) -> np.ndarray | None:
        if type(self).__iter__ is not RandomSampler.__iter__:
            return None
        return self._epoch_indices()


class SubsetRandomSampler(Sampler):
    """The given indices in a random order each epoch."""

    def __init__(self, indices: Sequence[int], generator: Generator | None = None) -> None:
        self.indices = indices
        self.generator = generator

    def __iter__(self) -> Iterator[int]:
        perm = _random.permutation_array(len(self.indices), self.generator)
        return (self.indices[i] for i in perm.tolist())

    def __len__(self) -> int:
        return len(self.indices)


class BatchSampler(Sampler):
    """Group the indices of ``sampler`` into lists of ``batch_size`` (the last one may be
    shorter unless ``drop_last``).

    Raises:
        ValueError: ``batch_size`` is not a positive int or ``drop_last`` not a bool.
    """

    def __init__(self, sampler: Sampler | Iterable[int], batch_size: int,
                 drop_last: bool) -> None:
        if (not isinstance(batch_size, int) or isinstance(batch_size, bool)
                or batch_size <= 0):
            raise ValueError(
                f"batch_size should be a positive integer value, but got batch_size={batch_size}"
            )
        if not isinstance(drop_last, bool):
            raise ValueError(
                f"drop_last should be a boolean value, but got drop_last={drop_last}"
            )
        self.sampler = sampler
        self.batch_size = batch_size
        self.drop_last = drop_last

    def __iter__(self) -> Iterator[list[int]]:
        batch = []
        for idx in self.sampler:
            batch.append(idx)
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch and not self.drop_last:
            yield batch

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.sampler) // self.batch_size
        return (len(self.sampler) + self.batch_size - 1) // self.batch_size

    def _index_batches(self) -> Iterator[np.ndarray]:
        """The batches of ``__iter__`` as int64 arrays (slices of one array when it can)."""
        plain = type(self).__iter__ is BatchSampler.__iter__
        indices = self.sampler._index_array() if (
            plain and isinstance(self.sampler, Sampler)) else None
        if indices is None:
            for batch in self:
                yield np.asarray(batch, dtype=np.int64)
            return
        stop = len(indices)
        if self.drop_last:
            stop -= stop % self.batch_size
        for start in range(0, stop, self.batch_size):
            yield indices[start:start + self.batch_size]
