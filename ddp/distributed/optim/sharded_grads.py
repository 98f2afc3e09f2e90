"""ZeRO's gradient-sync strategies: a bucketed reduce-scatter, stage 1 and stage 2.

They run on the one gradient-sync scheduler (``ddp/distributed/grad_sync``), which arms them at
backward start, launches buckets strictly in order on its communication thread and waits at the
end of backward. ZeRO averages the gradients itself, with and without DDP (its scheduler is
exclusive: it takes the parameters over from DDP's). Each parameter's gradient is copied into
its bucket(s) (see ``flat_layout.py``: contiguous ranges of the flat layout, from its end, each
a multiple of the world size ``N``) and ``p.grad`` is set to None. One reduce-scatter (average)
per bucket leaves each rank its piece. Bytes sent: ``(N-1)/N`` of the gradients, half an
all-reduce; ``step``'s all-gather of the parameters is the other half, so a ZeRO step sends
DDP's bytes.

* ``Stage1Grads`` keeps a persistent full-size flat gradient buffer (``4 Psi`` bytes in fp32):
  buckets are ranges of it, reduce-scattered through a scratch piece and written back into this
  rank's pieces. Only those pieces hold the average; the rest of the buffer holds this rank's
  local gradients and is never read. Gradient accumulation: a second backward before ``step``
  first zeroes the pieces other ranks own and multiplies its own pieces by ``N`` (their sum over
  the ranks), then adds its local gradient everywhere, so reducing again gives
  ``avg(g1) + avg(g2)``.
* ``Stage2Grads`` keeps only this rank's ``S``-element shard of averaged gradients. Bucket
  staging buffers come from a pool: a bucket takes one when its first gradient arrives and the
  communication thread gives it back after its reduce-scatter, so the pool holds as many
  buffers as buckets were in flight at once (reused across steps: ``comm_bytes``); the shard is
  what is left at step time.

Gradients assigned by hand (``p.grad = ...`` outside a backward) are taken as already averaged
(replicated) at ``step``; they are absorbed and ``p.grad`` is set to None.

``reduce_dtype`` (FSDP2's ``MixedPrecisionPolicy.reduce_dtype``): floating gradients are
reduce-scattered in that dtype (float16/bfloat16: half the bytes) and the averages land in the
gradient shard in the parameters' dtype, so the optimizer steps on full-precision masters.
Stage 2 stages buckets in it directly; stage 1 casts each bucket of its full-size buffer into
a reusable low-precision copy first.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from ddp import dtypes
from ddp.backend import get_array_module
from ddp.distributed.grad_sync.strategy import SyncStrategy
from ddp.distributed.optim.flat_layout import FlatLayout
from ddp.distributed.reduce_op import ReduceOp
from ddp.tensor import Tensor


@dataclass
class ShardBucket:
    """``[lo, hi)`` of buffer ``dtype``; this rank's piece ``[plo, phi)`` starts at ``pos`` of
    its shard; ``members`` are the parameter indices intersecting it."""

    dtype: str
    lo: int
    hi: int
    plo: int
    phi: int
    pos: int
    members: list[int] = field(default_factory=list)
    staging: object = None  # stage 2: the pooled buffer of the current backward


class ShardedGrads(SyncStrategy):
    """The part both stages share: buckets, scratch, manual gradients, the step's view.

    Args:
        params: the optimizer's parameters, in layout order.
        layout: their flat layout (with its buckets).
        flat_params: dtype -> flat parameter buffer (for dtype and device).
        rank, world: this rank and the number of ranks sharded over.
        reduce_dtype: NumPy dtype the floating buffers are reduced in; None: their own.
    """

    owner = "ZeroRedundancyOptimizer"
    failure_what = "gradient reduce-scatter"
    collective = "reduce-scatter"
    thread_prefix = "zero"
    wait_label = "zero wait"
    overlap_modes = ("thread",)
    stage = 0

    def __init__(self, params: list[Tensor], layout: FlatLayout, flat_params: dict, rank: int,
                 world: int, reduce_dtype=None):
        self._params = params
        self._layout = layout
        self._rank, self._world = rank, world
        self.buckets: list[ShardBucket] = []
        self._param_buckets: list[list[ShardBucket]] = [[] for _ in params]
        for d, buf in layout.buffers.items():
            owned = {lo: (plo, phi, pos) for plo, phi, pos in buf.owned(rank, world)
                     for lo, hi in buf.buckets if lo <= plo < hi}
            for lo, hi in buf.buckets:
                bucket = ShardBucket(d, lo, hi, *owned[lo])
                for e in buf.entries:
                    if e.offset < hi and e.stop > lo and e.numel:
                        bucket.members.append(e.index)
                        self._param_buckets[e.index].append(bucket)
                self.buckets.append(bucket)
        # Launch order: by descending offset, interleaving dtypes the way backward fills them.
        self.buckets.sort(key=lambda b: -b.hi / max(1, layout.buffers[b.dtype].padded))
        self._xp = {d: get_array_module(a) for d, a in flat_params.items()}
        self._dtypes = {d: a.dtype for d, a in flat_params.items()}
        self._wire = {d: (t if reduce_dtype is None or not dtypes.is_floating(t)
                          else np.dtype(reduce_dtype)) for d, t in self._dtypes.items()}
        largest = {d: max(b.phi - b.plo for b in self.buckets if b.dtype == d)
                   for d in flat_params}
        # Scratch for a reduce-scatter output (MPI forbids aliasing it with the input); the
        # communication thread runs one job at a time, so one per dtype suffices.
        self._scratch = {d: self._xp[d].empty(largest[d], dtype=self._wire[d])
                         for d in flat_params}
        self.fresh = True  # nothing accumulated since zero_grad
        self.has_grads = False

    # ------------------------------------------------------------------------ the strategy
    def members(self, bucket: ShardBucket) -> list[int]:
        return bucket.members

    def nbytes(self, bucket: ShardBucket) -> int:
        return (bucket.hi - bucket.lo) * self._wire[bucket.dtype].itemsize

    def fill(self, index: int, hooked: bool) -> None:
        grad = None
        if hooked:
            p = self._params[index]
            grad, p.grad = p.grad, None  # ZeRO keeps the gradient in its own buffers
        e = self._layout.entries[index]
        src = None if grad is None else grad.array.reshape(-1)
        for b in self._param_buckets[index]:
            a, z = max(e.offset, b.lo), min(e.stop, b.hi)
            dst = self._staging(b)[a - b.lo:z - b.lo]
            self._put(dst, None if src is None else src[a - e.offset:z - e.offset])

    def finish(self) -> None:
        self.fresh = False
        self.has_grads = True

    def zero_buckets(self) -> None:
        for b in self.buckets:
            self._staging(b)[...] = 0

    def _staging(self, b: ShardBucket):
        """The buffer bucket ``b`` is gathered in before its reduce-scatter."""
        raise NotImplementedError

    def _put(self, dst, src) -> None:
        """Write (or, for ``src`` None, account for a missing) gradient slice into ``dst``."""
        raise NotImplementedError

    # ----------------------------------------------------------------------- the step
    def absorb_manual_grads(self) -> None:
        """Take ``p.grad`` assigned outside a backward as replicated (already averaged)."""
        manual = [(e, p) for e, p in zip(self._layout.entries, self._params, strict=True)
                  if p.grad is not None]
        if not manual:
            return
        if self.fresh:
            self._zero_held()
        for e, p in manual:
            g = p.grad.array.reshape(-1)
            p.grad = None
            self._add_replicated(e, g)
        self.fresh = False
        self.has_grads = True

    def owned_arrays(self) -> list:
        """Views of every averaged gradient element this rank owns (each exactly once)."""
        raise NotImplementedError

    def shard_grad(self, dtype: str, lo: int, hi: int, pos: int):
        """The averaged gradient of ``[lo, hi)`` (owned, starting at ``pos`` of the shard)."""
        raise NotImplementedError

    def scale_(self, coef: float) -> None:
        for a in self.owned_arrays():
            a *= coef

    def zero_grad(self, set_to_none: bool) -> None:
        """Forget the accumulated gradients (buffers are kept and overwritten next time)."""
        for p in self._params:
            p.grad = None
        self.fresh = True
        self.has_grads = False
        if not set_to_none:  # gradients are zeros rather than absent: step still applies
            self._zero_held()
            self.fresh = False
            self.has_grads = True

    def _zero_held(self) -> None:
        raise NotImplementedError

    def _add_replicated(self, e, g) -> None:
        raise NotImplementedError

    def nbytes_held(self) -> int:
        """Gradient bytes held between steps: stage 1 the full buffer, stage 2 the shard."""
        raise NotImplementedError

    def comm_bytes(self) -> int:
        """Communication buffers: the scratch pieces (stage 1: and its low-precision bucket
        copies; stage 2: and the staging pool)."""
        return sum(a.nbytes for a in self._scratch.values())


class Stage1Grads(ShardedGrads):
    """ZeRO stage 1: a full-size flat gradient buffer; this rank's pieces hold the average."""

    stage = 1

    def __init__(self, params: list[Tensor], layout: FlatLayout, flat_params: dict, rank: int,
                 world: int, reduce_dtype=None):
        super().__init__(params, layout, flat_params, rank, world, reduce_dtype)
        self.flat = {d: self._xp[d].zeros_like(a) for d, a in flat_params.items()}
        # a bucket's low-precision copy, when the wire dtype is not the buffer's
        self._low = {d: self._xp[d].empty(max(b.hi - b.lo for b in self.buckets
                                              if b.dtype == d), dtype=self._wire[d])
                     for d in flat_params if self._wire[d] != self._dtypes[d]}

    def begin(self) -> None:
        if self.fresh:
            return
        # A backward adding to reduced gradients: make the buffer hold something whose average
        # is the current average. The owned pieces hold averages (times N: their SUM over the
        # ranks), the rest is zeroed (other ranks own it and already counted it).
        for b in self.buckets:
            flat = self.flat[b.dtype]
            flat[b.lo:b.plo] = 0
            flat[b.phi:b.hi] = 0
            flat[b.plo:b.phi] *= self._world

    def _staging(self, b: ShardBucket):
        return self.flat[b.dtype][b.lo:b.hi]

    def zero_buckets(self) -> None:
        if self.fresh:  # otherwise ``begin`` prepared the buffer: adding nothing leaves it so
            self._zero_held()

    def _put(self, dst, src) -> None:
        if src is None:
            if self.fresh:
                dst[...] = 0  # no gradient counts as zero
        elif self.fresh:
            dst[...] = src
        else:
            dst += src

    def reduce(self, b: ShardBucket, process_group) -> None:
        if self._world > 1:
            scratch = self._scratch[b.dtype][:b.phi - b.plo]
            full = self.flat[b.dtype][b.lo:b.hi]
            if b.dtype in self._low:
                low = self._low[b.dtype][:b.hi - b.lo]
                low[...] = full
                full = low
            process_group.reduce_scatter(scratch, full, ReduceOp.AVG)
            self.flat[b.dtype][b.plo:b.phi] = scratch

    def owned_arrays(self) -> list:
        return [self.flat[d][lo:hi] for d, buf in self._layout.buffers.items()
                for lo, hi, _ in buf.owned(self._rank, self._world)]

    def shard_grad(self, dtype: str, lo: int, hi: int, pos: int):
        return self.flat[dtype][lo:hi]

    def _zero_held(self) -> None:
        for a in self.flat.values():
            a[...] = 0

    def _add_replicated(self, e, g) -> None:
        self.flat[e.dtype][e.offset:e.stop] += g

    def nbytes_held(self) -> int:
        return sum(a.nbytes for a in self.flat.values())

    def comm_bytes(self) -> int:
        return sum(a.nbytes for a in self._low.values()) + super().comm_bytes()


class Stage2Grads(ShardedGrads):
    """ZeRO stage 2: only this rank's shard of averaged gradients, plus a staging pool."""

    stage = 2

    def __init__(self, params: list[Tensor], layout: FlatLayout, flat_params: dict, rank: int,
                 world: int, reduce_dtype=None):
        super().__init__(params, layout, flat_params, rank, world, reduce_dtype)
        self.shards = {d: self._xp[d].zeros(layout.buffers[d].shard, dtype=self._dtypes[d])
                       for d in flat_params}
        self._pool: dict[tuple[str, int], list] = {}
        self._pool_lock = threading.Lock()  # the communication thread gives buffers back
        self.pool_bytes = 0

    def _staging(self, b: ShardBucket):
        if b.staging is None:
            b.staging = self._acquire(b.dtype, b.hi - b.lo)
            total = self._layout.buffers[b.dtype].total
            if b.hi > total:
                b.staging[max(0, total - b.lo):] = 0  # the padding
        return b.staging

    def _acquire(self, dtype: str, size: int):
        with self._pool_lock:
            free = self._pool.setdefault((dtype, size), [])
            if free:
                return free.pop()
        buffer = self._xp[dtype].empty(size, dtype=self._wire[dtype])
        self.pool_bytes += buffer.nbytes
        return buffer

    def _put(self, dst, src) -> None:
        if src is None:
            dst[...] = 0  # no gradient counts as zero
        else:
            dst[...] = src

    def reduce(self, b: ShardBucket, process_group) -> None:
        staging, b.staging = self._staging(b), None
        n = b.phi - b.plo
        out = self.shards[b.dtype][b.pos:b.pos + n]
        if self.fresh and self._wire[b.dtype] == self._dtypes[b.dtype]:
            process_group.reduce_scatter(out, staging, ReduceOp.AVG)
        elif self.fresh:
            scratch = self._scratch[b.dtype][:n]
            process_group.reduce_scatter(scratch, staging, ReduceOp.AVG)
            out[...] = scratch  # back to the parameters' precision
        else:
            scratch = self._scratch[b.dtype][:n]
            process_group.reduce_scatter(scratch, staging, ReduceOp.AVG)
            out += scratch  # gradient accumulation over several backwards
        with self._pool_lock:
            self._pool[(b.dtype, b.hi - b.lo)].append(staging)

    def abandon(self) -> None:
        for b in self.buckets:
            b.staging = None

    def owned_arrays(self) -> list:
        return list(self.shards.values())

    def shard_grad(self, dtype: str, lo: int, hi: int, pos: int):
        return self.shards[dtype][pos:pos + hi - lo]

    def _zero_held(self) -> None:
        for a in self.shards.values():
            a[...] = 0

    def _add_replicated(self, e, g) -> None:
        for plo, phi, pos in self._layout.buffers[e.dtype].owned(self._rank, self._world):
            a, z = max(plo, e.offset), min(phi, e.stop)
            if a < z:
                self.shards[e.dtype][pos + a - plo:pos + z - plo] += g[a - e.offset:z - e.offset]

    def nbytes_held(self) -> int:
        return sum(a.nbytes for a in self.shards.values())

    def comm_bytes(self) -> int:
        return self.pool_bytes + super().comm_bytes()


def sharded_grads(stage: int, params: list[Tensor], layout: FlatLayout, flat_params: dict,
                  rank: int, world: int, reduce_dtype=None) -> ShardedGrads:
    """The strategy of ZeRO ``stage`` (1 or 2), reducing in ``reduce_dtype`` (None: the
    gradients' own)."""
    strategy = {1: Stage1Grads, 2: Stage2Grads}[stage]
    return strategy(params, layout, flat_params, rank, world, reduce_dtype)
