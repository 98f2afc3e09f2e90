"""Gradient synchronisation during backward: one scheduler, many strategies.

``GradSyncScheduler`` (``scheduler.py``) arms at backward start, collects gradients as they
become final, launches bucket collectives strictly in order (overlapped with backward) and
finishes at the end of backward. A ``SyncStrategy`` (``strategy.py``) says how a bucket is
filled, reduced and written back: ``AllReduceBuckets`` (DDP, ``allreduce.py``) and ZeRO's
``ShardedGrads`` stages (``ddp/distributed/optim/sharded_grads.py``).
"""

from ddp.distributed.grad_sync.allreduce import AllReduceBuckets, assign_buckets
from ddp.distributed.grad_sync.scheduler import OVERLAP_MODES, GradSyncScheduler, check_overlap
from ddp.distributed.grad_sync.strategy import SyncStrategy

__all__ = ["OVERLAP_MODES", "AllReduceBuckets", "GradSyncScheduler", "SyncStrategy",
           "assign_buckets", "check_overlap"]
