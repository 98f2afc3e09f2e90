"""Samplers: which dataset indices a loader visits, in which order.

``SequentialSampler`` and ``RandomSampler`` can also hand an epoch's indices over as int64
arrays (``_index_chunks``), which ``BatchSampler`` slices into batches without a Python loop;
the indices are the ones iteration would yield. Both draw lazily, one chunk at a time, as torch
does: ``RandomSampler(ds, replacement=True, num_samples=10**10)`` costs one chunk of memory
(``CHUNK`` indices, or one permutation of the dataset without replacement), not 80 GB.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence, Sized

import numpy as np

from ddp import random as _random
from ddp.creation import as_tensor
from ddp.dtypes import float64
from ddp.random import Generator

CHUNK = 1 << 16  # indices drawn (or counted) at a time: 512 KiB of int64


class Sampler:
    """Base class: subclasses implement ``__iter__`` (indices) and usually ``__len__``."""

    def __init__(self, data_source: Sized | None = None) -> None:
        pass

    def __iter__(self) -> Iterator[int]:
        raise NotImplementedError

    def _index_chunks(self) -> Iterator[np.ndarray] | None:
        """This epoch's indices as consecutive int64 arrays, or None when only iteration can
        tell (a subclass that overrides ``__iter__``)."""
        return None


class SequentialSampler(Sampler):
    """Indices ``0 .. len(data_source) - 1`` in order."""

    def __init__(self, data_source: Sized) -> None:
        self.data_source = data_source

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self.data_source)))

    def __len__(self) -> int:
        return len(self.data_source)

    def _index_chunks(self) -> Iterator[np.ndarray] | None:
        if type(self).__iter__ is not SequentialSampler.__iter__:
            return None
        n = len(self.data_source)
        return (np.arange(start, min(start + CHUNK, n), dtype=np.int64)
                for start in range(0, n, CHUNK))


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

    def _chunks(self) -> Iterator[np.ndarray]:
        """The epoch's indices, drawn lazily: ``CHUNK`` draws at a time with replacement, one
        permutation of the dataset at a time without."""
        n = len(self.data_source)
        generator = self.generator
        if generator is None:
            seed = int(_random.integers_array(0, 2**62, (), None))
            generator = Generator().manual_seed(seed)
        if self.replacement:
            for start in range(0, self.num_samples, CHUNK):
                count = min(CHUNK, self.num_samples - start)
                yield _random.integers_array(0, n, (count,), generator)
            return
        for _ in range(self.num_samples // n):
            yield _random.permutation_array(n, generator)
        if self.num_samples % n:
            yield _random.permutation_array(n, generator)[: self.num_samples % n]

    def __iter__(self) -> Iterator[int]:
        for chunk in self._chunks():
            yield from chunk.tolist()

    def _index_chunks(self) -> Iterator[np.ndarray] | None:
        if type(self).__iter__ is not RandomSampler.__iter__:
            return None
        return self._chunks()


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


class WeightedRandomSampler(Sampler):
    """``num_samples`` indices ``0 .. len(weights) - 1``, each drawn with probability
    proportional to its weight (torch's ``torch.multinomial`` semantics).

    With ``replacement`` the draws are made lazily, ``CHUNK`` at a time; without it, all at the
    start of the epoch, as distinct indices.

    Raises:
        ValueError: ``num_samples`` is not a positive int, ``replacement`` not a bool, or
            ``weights`` not one-dimensional (torch's messages).
        RuntimeError: at iteration, a negative weight, weights summing to zero, or more samples
            than weights without replacement (torch's messages).
    """

    def __init__(self, weights: Sequence[float], num_samples: int, replacement: bool = True,
                 generator: Generator | None = None) -> None:
        if (not isinstance(num_samples, int) or isinstance(num_samples, bool)
                or num_samples <= 0):
            raise ValueError(
                f"num_samples should be a positive integer value, but got "
                f"num_samples={num_samples}"
            )
        if not isinstance(replacement, bool):
            raise ValueError(
                f"replacement should be a boolean value, but got replacement={replacement}"
            )
        weights_tensor = as_tensor(weights, dtype=float64)
        if weights_tensor.dim() != 1:
            raise ValueError(
                f"weights should be a 1d sequence but given weights have shape "
                f"{tuple(weights_tensor.shape)}"
            )
        self.weights = weights_tensor
        self.num_samples = num_samples
        self.replacement = replacement
        self.generator = generator

    def _chunks(self) -> Iterator[np.ndarray]:
        weights = np.asarray(self.weights.detach().cpu().numpy(), dtype=np.float64)
        if (weights < 0).any():
            raise RuntimeError(
                "invalid multinomial distribution (encountering probability entry < 0)")
        if not weights.sum() > 0:
            raise RuntimeError("invalid multinomial distribution (sum of probabilities <= 0)")
        if not self.replacement:
            if self.num_samples > len(weights):
                raise RuntimeError(
                    "cannot sample n_sample > prob_dist.size(-1) samples without replacement")
            yield _random.weighted_choice_array(weights, self.num_samples, self.generator)
            return
        cumulative = np.cumsum(weights)
        for start in range(0, self.num_samples, CHUNK):
            count = min(CHUNK, self.num_samples - start)
            yield _random.weighted_sample_array(cumulative, count, self.generator)

    def __iter__(self) -> Iterator[int]:
        for chunk in self._chunks():
            yield from chunk.tolist()

    def __len__(self) -> int:
        return self.num_samples

    def _index_chunks(self) -> Iterator[np.ndarray] | None:
        if type(self).__iter__ is not WeightedRandomSampler.__iter__:
            return None
        return self._chunks()


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
        """The batches of ``__iter__`` as int64 arrays (slices of the sampler's chunks when it
        hands them over)."""
        plain = type(self).__iter__ is BatchSampler.__iter__
        chunks = self.sampler._index_chunks() if (
            plain and isinstance(self.sampler, Sampler)) else None
        if chunks is None:
            for batch in self:
                yield np.asarray(batch, dtype=np.int64)
            return
        size = self.batch_size
        rest = np.empty(0, dtype=np.int64)  # the tail of the last chunk, short of a batch
        for chunk in chunks:
            if len(rest):
                chunk = np.concatenate([rest, chunk])
            stop = len(chunk) - len(chunk) % size
            for start in range(0, stop, size):
                yield chunk[start:start + size]
            rest = chunk[stop:]
        if len(rest) and not self.drop_last:
            yield rest
