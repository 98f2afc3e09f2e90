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
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from ddp import config

try:
    from threadpoolctl import ThreadpoolController
except ImportError:  # a declared dependency; without it BLAS keeps its own thread count
    ThreadpoolController = None

MIN_PER_THREAD = 1 << 17  # below this many elements a thread costs more than it saves
_pool: ThreadPoolExecutor | None = None
_share: int | None = None  # this rank's share of the node's cores, from set_num_threads
_blas_lock = threading.Lock()
_blas: list | None = None  # the BLAS libraries' threadpoolctl controllers, found on first use
_blas_depth = 0  # callers inside one_blas_thread(); the first sets 1 thread, the last restores
_blas_saved: list[int] = []


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
               min_per_thread: int = MIN_PER_THREAD) -> None:
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


def _blas_controllers() -> list:
    global _blas
    if _blas is None:
        _blas = [] if ThreadpoolController is None else list(
            ThreadpoolController().select(user_api="blas").lib_controllers)
    return _blas


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Context: BLAS runs one thread per call while any caller (of any thread) is inside.

    For work that :func:`for_ranges` already spreads over the rank's threads, each range making
    its own BLAS calls: a multi-threaded BLAS inside every range would oversubscribe the cores
    and hand each small call to its workers and back. The count BLAS had before the first
    caller entered is restored when the last one leaves.
    """
    global _blas_depth, _blas_saved
    with _blas_lock:
        if _blas_depth == 0:
            libs = _blas_controllers()
            _blas_saved = [lib.get_num_threads() for lib in libs]
            for lib in libs:
                lib.set_num_threads(1)
        _blas_depth += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_depth -= 1
            if _blas_depth == 0:
                for lib, count in zip(_blas_controllers(), _blas_saved, strict=True):
                    lib.set_num_threads(count)
