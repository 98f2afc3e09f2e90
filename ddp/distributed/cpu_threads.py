"""Share the node's cores among the ranks on it: one thread budget per rank, for BLAS and ddp.

Under a bare ``mpiexec -n 4 python train.py`` every rank's BLAS and elementwise thread pool
would start one thread per core, so four ranks on a 2-core node run 8 busy threads and every
matrix product crawls. Unless the user chose ``OMP_NUM_THREADS`` (``ddprun`` sets it to 1, as
torchrun does), each rank gets a budget of ``max(1, cores // ranks_on_this_node)`` threads:
ddp's elementwise pool (``ddp.kernels.parallel``) always obeys it, and BLAS/OpenMP pools are
limited to it through ``threadpoolctl`` unless ``OPENBLAS_NUM_THREADS`` or ``MKL_NUM_THREADS``
says otherwise. The budget is per process (docs/configuration.md).
"""

from __future__ import annotations

from ddp import config
from ddp.kernels import parallel

_USER_SETTINGS = config.USER_THREAD_VARS
_limiter = None  # keeps threadpoolctl's limits alive for the life of the process


def share_cores(ranks_on_node: int) -> int | None:
    """Give this process its share of the node for ``ranks_on_node`` ranks; returns the budget.

    The budget goes to the elementwise pool, and to BLAS when ``threadpoolctl`` is installed and
    neither ``OPENBLAS_NUM_THREADS`` nor ``MKL_NUM_THREADS`` is set. Returns None (and changes
    nothing) for one rank per node and when ``OMP_NUM_THREADS`` is set (everyone obeys it).
    """
    global _limiter
    if ranks_on_node <= 1 or config.get("OMP_NUM_THREADS") is not None:
        return None
    limit = max(1, parallel.available_cores() // ranks_on_node)
    parallel.set_num_threads(limit)
    if config.any_set(_USER_SETTINGS):
        return limit
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return limit
    _limiter = threadpool_limits(limits=limit)
    return limit
