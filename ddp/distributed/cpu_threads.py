"""Share the node's cores among the ranks on it, as torchrun's ``OMP_NUM_THREADS=1`` does.

Under a bare ``mpiexec -n 4 python train.py`` every rank's BLAS would start one thread per core,
so four ranks on a 2-core node run 8 busy threads and every matrix product crawls. Unless the user
chose a thread count (``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS``), each rank
limits its BLAS/OpenMP pools to ``max(1, cores // ranks_on_this_node)``.
"""

from __future__ import annotations

import os

from ddp import config

_USER_SETTINGS = config.USER_THREAD_VARS
_limiter = None  # keeps threadpoolctl's limits alive for the life of the process


def share_cores(ranks_on_node: int) -> int | None:
    """Limit this process's BLAS threads for ``ranks_on_node`` ranks; returns the limit set.

    Returns None (and changes nothing) for one rank per node, when the user set a thread count,
    or when ``threadpoolctl`` is unavailable.
    """
    global _limiter
    if ranks_on_node <= 1 or config.any_set(_USER_SETTINGS):
        return None
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    limit = max(1, (cores or 1) // ranks_on_node)
    _limiter = threadpool_limits(limits=limit)
    return limit
