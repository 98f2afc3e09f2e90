"""``DataLoader``: batches of a dataset, in sampler order, optionally prefetched by threads.

For a ``TensorDataset`` (or a ``Subset`` of one) with the default collate function, a batch is
gathered from each underlying array with one fancy-indexing operation over the batch's index
array, instead of indexing and stacking sample by sample; the result is identical.

``num_workers > 0`` fetches batches in a pool of threads (NumPy releases the GIL while it copies),
delivered in sampler order; the dataset must then tolerate concurrent ``__getitem__`` calls.
There are no worker processes, so ``pin_memory`` has no effect on CPU.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ddp.random import Generator
from ddp.utils.data._collate import default_collate, default_convert
from ddp.utils.data.dataset import Dataset, IterableDataset
from ddp.utils.data.sampler import BatchSampler, RandomSampler, Sampler, SequentialSampler


class DataLoader:
    """Iterate over ``dataset`` in batches.

    Args:
        dataset: a map-style ``Dataset`` (``__getitem__``/``__len__``) or an ``IterableDataset``.
        batch_size: samples per batch; None yields single samples (converted, not collated).
        shuffle: visit samples in a new random order each epoch (``RandomSampler``).
        sampler: the index order (e.g. a ``DistributedSampler``); excludes ``shuffle``.
        batch_sampler: yields lists of indices; excludes ``batch_size``, ``shuffle``,
            ``sampler`` and ``drop_last``.
        num_workers: threads fetching batches ahead; 0 fetches in the calling thread.
        collate_fn: turns a list of samples into a batch (``default_collate``).
        pin_memory: accepted for torch compatibility; no effect.
        drop_last: drop the last batch when it is smaller than ``batch_size``.
        worker_init_fn: called with the worker id in each worker thread as it starts.
        generator: the ``ddp.Generator`` that drives shuffling (seed it for a fixed order).
        prefetch_factor: batches fetched ahead per worker (default 2 with workers).

    Raises:
        ValueError: incompatible options (torch's messages).

    Example:
        >>> loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True,
        ...                     generator=ddp.Generator().manual_seed(0))
        >>> for xb, yb in loader: ...
    """

    def __init__(self, dataset: Dataset, batch_size: int | None = 1,
                 shuffle: bool | None = None, sampler: Sampler | None = None,
                 batch_sampler: Sampler | None = None, num_workers: int = 0,
                 collate_fn: Callable[[list], Any] | None = None, pin_memory: bool = False,
                 drop_last: bool = False, timeout: float = 0,
                 worker_init_fn: Callable[[int], None] | None = None, *,
                 generator: Generator | None = None, prefetch_factor: int | None = None,
                 persistent_workers: bool = False) -> None:
        if num_workers < 0:
            raise ValueError(
                "num_workers option should be non-negative; use num_workers=0 to disable "
                "multiprocessing."
            )
        if num_workers == 0 and prefetch_factor is not None:
            raise ValueError(
                "prefetch_factor option could only be specified with num_workers > 0; "
                "otherwise set prefetch_factor to None."
            )
        if timeout < 0:
            raise ValueError("timeout option should be non-negative")
        self.dataset = dataset
        self.num_workers = num_workers
        self.prefetch_factor = 2 if prefetch_factor is None and num_workers > 0 else (
            prefetch_factor)
        self.pin_memory = pin_memory
        self.timeout = timeout
        self.worker_init_fn = worker_init_fn
        self.persistent_workers = persistent_workers
        self.generator = generator
        self._iterable = isinstance(dataset, IterableDataset)
        if self._iterable:
            if shuffle not in (None, False):
                raise ValueError(
                    f"DataLoader with IterableDataset: expected unspecified shuffle option, but "
                    f"got shuffle={shuffle}"
                )
            if sampler is not None or batch_sampler is not None:
                raise ValueError(
                    "DataLoader with IterableDataset: expected unspecified sampler and "
                    "batch_sampler options"
                )
        if sampler is not None and shuffle:
            raise ValueError("sampler option is mutually exclusive with shuffle")
        if batch_sampler is not None:
            if batch_size != 1 or shuffle or sampler is not None or drop_last:
                raise ValueError(
                    "batch_sampler option is mutually exclusive with batch_size, shuffle, "
                    "sampler, and drop_last"
                )
            batch_size, drop_last = None, False
        elif batch_size is None and drop_last:
            raise ValueError(
                "batch_size=None option disables auto-batching and is mutually exclusive with "
                "drop_last"
            )
        if sampler is None and not self._iterable:
            sampler = (RandomSampler(dataset, generator=generator) if shuffle
                       else SequentialSampler(dataset))
        if batch_size is not None and batch_sampler is None and not self._iterable:
            batch_sampler = BatchSampler(sampler, batch_size, drop_last)
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.sampler = sampler
        self.batch_sampler = batch_sampler
        self._auto_collation = batch_sampler is not None or (
            self._iterable and batch_size is not None)
        if collate_fn is None:
            collate_fn = default_collate if self._auto_collation else default_convert
        self.collate_fn = collate_fn

    def __len__(self) -> int:
        if self._iterable:
            n = len(self.dataset)  # TypeError when the stream has no length, as torch
            if self.batch_size is None:
                return n
            return n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        if self.batch_sampler is not None:
            return len(self.batch_sampler)
        return len(self.sampler)

    def __iter__(self) -> Iterator[Any]:
        if self._iterable:
            return self._iter_stream()
        fetch, keys = self._plan()
        if self.num_workers == 0:
            return map(fetch, keys)
        return self._prefetch(fetch, keys)

    # ----------------------------------------------------------------------------- fetching
    def _plan(self) -> tuple[Callable[[Any], Any], Iterator[Any]]:
        """What to fetch (index batches or single indices) and how."""
        dataset = self.dataset
        if self.batch_sampler is None:
            return (lambda i: self.collate_fn(dataset[i])), iter(self.sampler)
        fast = getattr(dataset, "_fetch_batch", None)
        if (fast is not None and self.collate_fn is default_collate
                and isinstance(self.batch_sampler, BatchSampler)):
            def fetch_fast(indices: np.ndarray) -> Any:
                batch = fast(indices)
                if batch is None:
                    batch = default_collate([dataset[i] for i in indices.tolist()])
                return batch

            return fetch_fast, self.batch_sampler._index_batches()
        getitems = getattr(dataset, "__getitems__", None)

        def fetch(indices: list) -> Any:
            samples = getitems(indices) if getitems else [dataset[i] for i in indices]
            return self.collate_fn(samples)

        return fetch, iter(self.batch_sampler)

    def _iter_stream(self) -> Iterator[Any]:
        stream = iter(self.dataset)
        if self.batch_size is None:
            yield from map(self.collate_fn, stream)
            return
        while True:
            batch = list(itertools.islice(stream, self.batch_size))
            if not batch or (self.drop_last and len(batch) < self.batch_size):
                return
            yield self.collate_fn(batch)

    def _prefetch(self, fetch: Callable[[Any], Any], keys: Iterator[Any]) -> Iterator[Any]:
        worker_ids = itertools.count()

        def init() -> None:
            if self.worker_init_fn is not None:
                self.worker_init_fn(next(worker_ids))

        pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="ddp-dataloader",
                                  initializer=init)
        pending: collections.deque = collections.deque()
        try:
            for key in itertools.islice(keys, self.num_workers * self.prefetch_factor):
                pending.append(pool.submit(fetch, key))
            while pending:
                batch = pending.popleft().result(timeout=self.timeout or None)
                for key in itertools.islice(keys, 1):
                    pending.append(pool.submit(fetch, key))
                yield batch
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
