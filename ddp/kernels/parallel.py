"""Run a blocked elementwise NumPy kernel on several CPU threads, within the rank's budget.

NumPy ufuncs release the GIL, so a kernel that walks a large array in cache-sized blocks (many
elementwise passes per block, as erf or GELU's backward make) runs in parallel when the blocks
are split between threads, as torch's CPU kernels are.

The thread count is the rank's one thread budget, the same one BLAS obeys
(docs/configuration.md): ``OMP_NUM_THREADS`` when set (``ddprun`` and the launch scripts set it
to 1 per rank), else the share :func:`set_num_threads` was given (``init_process_group`` under
a bare ``mpiexec`` gives each rank ``cores // ranks_on_node``), else the cores this process may
run on. The budget and the pool are per process: simulated ranks (``threads`` backend) share
them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ddp import config

_MIN_PER_THREAD = 1 << 17  # below this many elements a thread costs more than it saves
_pool: ThreadPoolExecutor | None = None
_share: int | None = None  # this rank's share of the node's cores, from set_num_threads


def _forget_pool() -> None:
    global _pool
    _pool = None  # a forked child has none of the parent's worker threads


os.register_at_fork(after_in_child=_forget_pool)


def available_cores() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def set_num_threads(threads: int | None) -> None:
    """Give this process a budget of ``threads`` (>= 1), obeyed unless ``OMP_NUM_THREADS`` is
    set; None forgets it (back to every core).

    Raises:
        ValueError: ``threads`` is below 1.
    """
    global _share
    if threads is not None and threads < 1:
        raise ValueError(f"set_num_threads: threads must be >= 1, got {threads}")
    _share = threads


def num_threads() -> int:
    """This rank's thread budget: ``OMP_NUM_THREADS``, else the share set, else the cores."""
    value = config.get("OMP_NUM_THREADS")
    if value is not None:
        return value
    return _share if _share is not None else available_cores()


def for_ranges(total: int, kernel: Callable[[int, int], None],
               min_per_thread: int = _MIN_PER_THREAD) -> None:
    """Call ``kernel(start, stop)`` over ``[0, total)`` split into one contiguous range per thread.

    ``kernel`` must write disjoint outputs per range. Inputs of fewer than ``min_per_thread``
    items per thread (default: elements of an elementwise pass) use fewer threads, down to one
    range run inline in this thread. Exceptions from any range propagate.
    """
    global _pool
    threads = min(num_threads(), total // max(1, min_per_thread))
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
