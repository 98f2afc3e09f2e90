"""``ddp.distributed``: process groups and collectives with ``torch.distributed``'s names.

Backends: ``local`` (a world of one), ``threads`` (simulated ranks in one process, started by
:func:`spawn`) and ``mpi`` (mpi4py buffer methods; one process per rank under mpiexec/srun).
``init_process_group()`` picks ``mpi`` when an MPI launcher started several ranks, else
``local``. See docs/launching.md for how to start jobs.
"""

from ddp.distributed.api import (
    GroupMember,
    destroy_process_group,
    get_backend,
    get_default_group,
    get_global_rank,
    get_group_rank,
    get_local_rank,
    get_rank,
    get_world_size,
    group,
    init_process_group,
    is_available,
    is_initialized,
    is_mpi_available,
    new_group,
)
from ddp.distributed.collectives import (
    all_gather,
    all_gather_into_tensor,
    all_gather_object,
    all_reduce,
    barrier,
    broadcast,
    broadcast_object_list,
    reduce_scatter_tensor,
)
from ddp.distributed.grad_sync.grad_bucket import GradBucket
from ddp.distributed.process_group import ProcessGroup
from ddp.distributed.reduce_op import ReduceOp, Work
from ddp.distributed.spawn import SpawnError, spawn

# isort: split
# The ledger reads DDP and ZeRO objects (upper layers of this package): bound last.
from ddp.distributed.memory_ledger import MemoryReport, memory_report

__all__ = [
    "GradBucket",
    "GroupMember",
    "MemoryReport",
    "ProcessGroup",
    "ReduceOp",
    "SpawnError",
    "Work",
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_object",
    "all_reduce",
    "barrier",
    "broadcast",
    "broadcast_object_list",
    "destroy_process_group",
    "get_backend",
    "get_default_group",
    "get_global_rank",
    "get_group_rank",
    "get_local_rank",
    "get_rank",
    "get_world_size",
    "group",
    "init_process_group",
    "is_available",
    "is_initialized",
    "is_mpi_available",
    "memory_report",
    "new_group",
    "reduce_scatter_tensor",
    "spawn",
]
