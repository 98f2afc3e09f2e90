"""``FullyShardedGrads``: the gradient-sync strategy of fully sharded units.

It runs on the one gradient-sync scheduler (``ddp/distributed/grad_sync``), like DDP's
all-reduce and ZeRO's reduce-scatter: the scheduler arms it at backward start, hands it each
unsharded parameter as soon as its gradient is final, launches the buckets strictly in order on
its communication thread (so the reduce-scatter of a unit overlaps the backward of the units
before it) and waits at the end of backward. A bucket is one unit's parameters of one dtype
(``ShardGroup``): their gradients are copied into a ``[N, section]`` buffer (``UnitLayout.
grad_in``, in ``reduce_dtype``) and the unsharded ``.grad`` is dropped at once; one
reduce-scatter (average) leaves each rank the averaged gradient of its shards, which ``finish``
adds into the sharded parameters' ``.grad`` (set when None, summed otherwise, as torch FSDP2).

After the buckets a usage bitmap is all-reduced (MAX), so a parameter no rank's loss reached
keeps ``.grad`` None (torch FSDP2 skips the parameters without an unsharded gradient); one
reached on some ranks gets the average, counting zeros where it was not.

When every trainable parameter of a unit has had its hook, the unit's backward is over and the
strategy calls ``on_unit_done(unit)`` (the root reshards it then, freeing its gathered storage
during backward).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from ddp.backend import get_array_module, to_numpy
from ddp.distributed.grad_sync.strategy import Job, SyncStrategy
from ddp.distributed.reduce_op import ReduceOp
from ddp.tensor import Tensor


@dataclass
class UnitBucket:
    """One ``ShardGroup`` of a unit; ``members`` are the scheduler indices of its trainable
    parameters, ``locals_`` their positions in the group."""

    unit: object
    group: object
    members: list[int]
    locals_: list[int]
    staging: object = None
    reduced: object = None


class FullyShardedGrads(SyncStrategy):
    """Reduce-scatter the gradients of fully sharded units (see the module docstring).

    Args:
        units: the root's units, in forward (registration) order.
        on_unit_done: called (backward thread) with a unit whose gradients are all in.
    """

    owner = "fully_shard"
    failure_what = "gradient reduce-scatter"
    collective = "reduce-scatter"
    thread_prefix = "fsdp"
    wait_label = "fsdp wait"
    overlap_modes = ("thread", "sync")

    def __init__(self, units: list, on_unit_done: Callable):
        self.params: list = []
        self.names: list[str] = []
        self.buckets: list[UnitBucket] = []
        self._bucket_of: list[tuple[UnitBucket, int]] = []
        self._unit_members: dict[int, int] = {}
        for unit in reversed(units):  # backward meets the last units first
            for sg in unit.groups:
                bucket = UnitBucket(unit, sg, [], [])
                for j, q in enumerate(sg.unsharded):
                    if not q.requires_grad:
                        continue
                    bucket.members.append(len(self.params))
                    bucket.locals_.append(j)
                    self._bucket_of.append((bucket, j))
                    self.params.append(q)
                    self.names.append(sg.names[j])
                if bucket.members:
                    self.buckets.append(bucket)
                    self._unit_members[id(unit)] = (self._unit_members.get(id(unit), 0)
                                                    + len(bucket.members))
        self._on_unit_done = on_unit_done
        self._used = np.zeros(len(self.params), dtype=np.int32)
        self._hooked_left: dict[int, int] = {}

    # ------------------------------------------------------------------------- strategy
    def members(self, bucket: UnitBucket) -> list[int]:
        return bucket.members

    def nbytes(self, bucket: UnitBucket) -> int:
        sg = bucket.group
        return sg.layout.section * sg.layout.world * np.dtype(sg.reduce_dtype).itemsize

    def begin(self) -> None:
        self._used[:] = 0
        self._hooked_left = dict(self._unit_members)

    def _staging(self, bucket: UnitBucket):
        if bucket.staging is None:
            sg = bucket.group
            xp = sg.xp
            # zeros: frozen parameters of the group have slots too
            bucket.staging = xp.zeros(sg.layout.section * sg.layout.world, dtype=sg.reduce_dtype)
        return bucket.staging

    def fill(self, index: int, hooked: bool) -> None:
        bucket, j = self._bucket_of[index]
        q = self.params[index]
        grad = q.grad
        if grad is not None:
            if hooked and not bucket.unit.gathered:
                raise RuntimeError(
                    f"fully_shard: parameter '{self.names[index]}' received its gradient while "
                    f"its unit ({type(bucket.unit.module).__name__}) was resharded: it was used "
                    f"outside the unit's forward (tie shared parameters within one unit)")
            self._used[index] = 1
            q.grad = None  # the unsharded gradient is freed as soon as it is in the bucket
        array = None if grad is None else grad.array
        if array is not None and array.dtype != bucket.group.reduce_dtype:
            array = array.astype(bucket.group.reduce_dtype)
        bucket.group.layout.grad_in(self._staging(bucket), j, array)
        if hooked:
            key = id(bucket.unit)
            self._hooked_left[key] -= 1
            if self._hooked_left[key] == 0:
                self._on_unit_done(bucket.unit)

    def zero_buckets(self) -> None:
        for bucket in self.buckets:
            self._staging(bucket)[...] = 0

    def reduce(self, bucket: UnitBucket, process_group) -> None:
        staging, bucket.staging = self._staging(bucket), None
        sg = bucket.group
        out = get_array_module(staging).empty(sg.layout.section, dtype=sg.reduce_dtype)
        process_group.reduce_scatter(out, staging, ReduceOp.AVG)
        bucket.reduced = out

    def closing_jobs(self, process_group) -> list[Job]:
        return [("usage bitmap", partial(process_group.allreduce, self._used, ReduceOp.MAX))]

    def finish(self) -> None:
        rank = 0
        for bucket in self.buckets:
            out, bucket.reduced = bucket.reduced, None
            sg = bucket.group
            rank = bucket.unit.rank
            for index, j in zip(bucket.members, bucket.locals_, strict=True):
                if not self._used[index]:
                    continue
                p = sg.sharded[j]
                shard = sg.layout.shard_of(out, j, rank).astype(p.array.dtype, copy=True)
                if sg.xp is not np and isinstance(p.array, np.ndarray):
                    shard = to_numpy(shard)  # CPUOffloadPolicy: the gradient shard is on host
                if p.grad is None:
                    p.grad = Tensor(shard)
                else:
                    p.grad.array += shard

    def memory_bytes(self) -> dict[str, int]:
        held = sum(int(a.nbytes) for b in self.buckets for a in (b.staging, b.reduced)
                   if a is not None)
        return {"comm": held, "grads_in_comm": 0}

    def abandon(self) -> None:
        for bucket in self.buckets:
            bucket.staging = bucket.reduced = None

    def release(self) -> None:
        self.abandon()
