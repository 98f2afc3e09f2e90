"""Batched matrix products on the CPU: the batch split over the thread pool, one BLAS thread each.

``np.matmul`` on stacked matrices makes one BLAS call per matrix, and a multi-threaded BLAS
hands every small call (attention's ``q @ k^T``: 64 products of 128x64 by 64x128 per call)
to its worker threads and back: on a shared machine each hand-off waits for a descheduled
thread, and the step slows several times over. Torch runs ``bmm`` as a parallel loop over the
batch with single-threaded GEMMs; this does the same: the leading batch axis is cut into one
range per thread of the rank's budget (``ddp.kernels.parallel``), and while the ranges run,
BLAS is limited to one thread (through ``threadpoolctl``; the previous count is restored
after). Results equal ``np.matmul``'s at one BLAS thread (the same GEMM per matrix).
"""

from __future__ import annotations

import numpy as np

from ddp.kernels.parallel import for_ranges, num_threads, one_blas_thread


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for NumPy arrays; stacks of matrices (both operands at least 2-D, a batch of
    at least two along the first batch axis) run split over the rank's threads."""
    threads = num_threads()
    if threads <= 1 or a.ndim < 3 or b.ndim < 2:
        return a @ b
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    if not batch or batch[0] < 2:
        return a @ b
    if a.shape[-1] != b.shape[-2]:
        return a @ b  # matmul's own error
    a = np.broadcast_to(a, batch + a.shape[-2:])
    b = np.broadcast_to(b, batch + b.shape[-2:])
    out = np.empty(batch + (a.shape[-2], b.shape[-1]), dtype=np.result_type(a, b))

    def kernel(start: int, stop: int) -> None:
        np.matmul(a[start:stop], b[start:stop], out=out[start:stop])

    with one_blas_thread():
        for_ranges(batch[0], kernel, min_per_thread=1)
    return out
