"""Run a blocked elementwise NumPy kernel on several CPU threads.

NumPy ufuncs release the GIL, so a kernel that walks a large array in cache-sized blocks (many
elementwise passes per block, as erf or GELU's backward make) runs in parallel when the blocks
are split between threads, as torch's CPU kernels are. The thread count follows
``OMP_NUM_THREADS`` (the setting BLAS and torch obey; MPI jobs set it to 1), else the cores.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ddp import config

_MIN_PER_THREAD = 1 << 17  # below this many elements a thread costs more than it saves
_pool: ThreadPoolExecutor | None = None


def _forget_pool() -> None:
    global _pool
    _pool = None  # a forked child has none of the parent's worker threads


os.register_at_fork(after_in_child=_forget_pool)


def num_threads() -> int:
    """Threads for elementwise kernels: ``OMP_NUM_THREADS`` if set, else the CPU count."""
    value = config.get("OMP_NUM_THREADS")
    return value if value is not None else max(1, os.cpu_count() or 1)


def for_ranges(total: int, kernel: Callable[[int, int], None]) -> None:
    """Call ``kernel(start, stop)`` over ``[0, total)`` split into one contiguous range per thread.

    ``kernel`` must write disjoint outputs per range. Small inputs run inline, in this thread.
    Exceptions from any range propagate.
    """
    global _pool
    threads = min(num_threads(), total // _MIN_PER_THREAD)
    if threads <= 1:
        kernel(0, total)
        return
    if _pool is None or _pool._max_workers < threads - 1:
        _pool = ThreadPoolExecutor(threads - 1, thread_name_prefix="ddp-elementwise")
    step = -(-total // threads)
    bounds = [(start, min(start + step, total)) for start in range(0, total, step)]
    futures = [_pool.submit(kernel, start, stop) for start, stop in bounds[1:]]
    kernel(*bounds[0])
    for future in futures:
        future.result()
