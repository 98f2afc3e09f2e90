"""``ddp.distributed.fsdp``: fully sharded data parallel (ZeRO stage 3), torch FSDP2's API.

``fully_shard(module)`` (applied bottom-up: blocks, then the root) shards every parameter on
dim 0 over the ranks; forward and backward all-gather one unit at a time and reduce-scatter its
gradients (docs/zero.md, "Fully sharded (stage 3)").

Public seams (for checkpoints, the memory ledger and other tools; stable names):

* ``FSDPModule``: ``isinstance(m, FSDPModule)`` for a module ``fully_shard`` was applied to;
  ``m.unshard()``, ``m.reshard()``, ``m.set_requires_gradient_sync(bool)``,
  ``m.set_reshard_after_forward(bool)`` (torch's), and ``m.gathered_nbytes(recurse=False)``:
  bytes of unsharded parameter storage the unit holds right now (0 when resharded).
* ``ShardedParameter`` (what ``model.parameters()`` yields outside forward/backward), ``p``:
  ``p.to_local()`` (the local shard, sharing storage; ``p.array`` is the same array),
  ``p.full_tensor()`` (collective: the whole value on every rank), ``p.shape`` (global),
  ``p.shard_spec`` -> ``ShardSpec(global_shape, row_start, row_stop)`` (this rank's dim-0 rows,
  padding excluded; a 0-d parameter has one row), ``p.process_group`` (the ranks holding the
  other shards), ``p.grad`` (the local shard of the averaged gradient, or None).
* Sharding rule: ``torch.chunk`` along dim 0 (``shard_layout.row_range(rows, world, rank)``).
"""

from ddp.distributed.fsdp.fsdp_module import FSDPModule, UnshardHandle
from ddp.distributed.fsdp.fully_shard import fully_shard
from ddp.distributed.fsdp.policies import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy
from ddp.distributed.fsdp.shard_layout import ShardSpec, row_range
from ddp.distributed.fsdp.sharded_param import ShardedParameter

__all__ = [
    "CPUOffloadPolicy",
    "FSDPModule",
    "MixedPrecisionPolicy",
    "OffloadPolicy",
    "ShardSpec",
    "ShardedParameter",
    "UnshardHandle",
    "fully_shard",
    "row_range",
]
