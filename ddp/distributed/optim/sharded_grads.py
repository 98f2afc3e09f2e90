"""``BucketedGrads``: ZeRO's gradient reduction, bucketed and overlapped with backward.

ZeRO averages the gradients itself (stages 1 and 2 alike), with and without DDP: a
post-accumulate-grad hook on every parameter copies its gradient into its bucket(s) (see
``flat_layout.py``: contiguous ranges of the flat layout, from its end, each a multiple of the
world size ``N``) and sets ``p.grad = None``. When a bucket's last gradient is in, the bucket and
any ready successors are launched, strictly in bucket order (the same on every rank), on a
communication thread over ZeRO's ``dup()``-ed group: one reduce-scatter (average) per bucket
leaves each rank its piece, while backward goes on (NumPy and MPI release the GIL). The end of
backward waits for the last bucket. Bytes sent: ``(N-1)/N`` of the gradients, half an all-reduce;
``step``'s all-gather of the parameters is the other half, so a ZeRO step sends DDP's bytes.

* Stage 1 keeps a persistent full-size flat gradient buffer (``4 Psi`` bytes in fp32): buckets
  are ranges of it, reduce-scattered through a scratch piece and written back into this rank's
  pieces. Only those pieces hold the average; the rest of the buffer holds this rank's local
  gradients and is never read. Gradient accumulation: a second backward before ``step`` first
  zeroes the pieces other ranks own and multiplies its own pieces by ``N`` (their sum over the
  ranks), then adds its local gradient everywhere, so reducing again gives ``avg(g1) + avg(g2)``.
* Stage 2 keeps only this rank's ``S``-element shard of averaged gradients. Bucket staging buffers
  come from a pool: a bucket takes one when its first gradient arrives and the communication
  thread gives it back after its reduce-scatter, so the pool holds as many buffers as buckets
  were in flight at once (reused across steps: ``comm_bytes``); the shard is what is left at
  step time.

Gradients assigned by hand (``p.grad = ...`` outside a backward) are taken as already averaged
(replicated) at ``step``; they are absorbed and ``p.grad`` is set to None.

A DistributedDataParallel that manages the same parameters is told to stop all-reducing them
(its reducer's ``hand_over_gradient_sync``), so gradients are reduced once, not twice. Every
backward is synchronised (``DDP.no_sync`` does not defer ZeRO's reduce-scatter).
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from functools import partial

from ddp.autograd import engine
from ddp.backend import get_array_module
from ddp.distributed.optim.flat_layout import FlatLayout
from ddp.distributed.reduce_op import ReduceOp
from ddp.nn.parallel.comm_thread import CommThread
from ddp.tensor import Tensor


@dataclass
class _Bucket:
    """``[lo, hi)`` of buffer ``dtype``; this rank's piece ``[plo, phi)`` starts at ``pos`` of
    its shard; ``members`` are the parameter indices intersecting it."""

    dtype: str
    lo: int
    hi: int
    plo: int
    phi: int
    pos: int
    members: list[int] = field(default_factory=list)
    pending: int = 0
    staging: object = None  # stage 2: the pooled buffer of the current backward


class BucketedGrads:
    """Bucketed, overlapped reduce-scatter of the gradients of ``params`` (one ZeRO optimizer).

    Args:
        params: the optimizer's parameters, in layout order.
        layout: their flat layout (with its buckets).
        flat_params: dtype -> flat parameter buffer (for dtype and device).
        pg: ZeRO's private process group (collectives run on a communication thread).
        stage: 1 (full-size persistent gradient buffer) or 2 (only the shard).
    """

    def __init__(self, params: list[Tensor], layout: FlatLayout, flat_params: dict, pg,
                 stage: int):
        self.stage = stage
        self._params = params
        self._ids = {id(p) for p in params}
        self._layout = layout
        self._pg = pg
        self._rank, self._world = pg.rank(), pg.size()
        self._buckets: list[_Bucket] = []
        self._param_buckets: list[list[_Bucket]] = [[] for _ in params]
        for d, buf in layout.buffers.items():
            owned = {lo: (plo, phi, pos) for plo, phi, pos in buf.owned(self._rank, self._world)
                     for lo, hi in buf.buckets if lo <= plo < hi}
            for lo, hi in buf.buckets:
                bucket = _Bucket(d, lo, hi, *owned[lo])
                for e in buf.entries:
                    if e.offset < hi and e.stop > lo and e.numel:
                        bucket.members.append(e.index)
                        self._param_buckets[e.index].append(bucket)
                self._buckets.append(bucket)
        # Launch order: by descending offset, interleaving dtypes the way backward fills them.
        self._buckets.sort(key=lambda b: -b.hi / max(1, layout.buffers[b.dtype].padded))
        xp = {d: get_array_module(a) for d, a in flat_params.items()}
        self._xp = xp
        self._dtypes = {d: a.dtype for d, a in flat_params.items()}
        largest = {d: max(b.phi - b.plo for b in self._buckets if b.dtype == d)
                   for d in flat_params}
        # Scratch for a reduce-scatter output (MPI forbids aliasing it with the input); the
        # communication thread runs one job at a time, so one per dtype suffices.
        self._scratch = {d: xp[d].empty(largest[d], dtype=self._dtypes[d]) for d in flat_params}
        if stage == 1:
            self.flat = {d: xp[d].zeros_like(a) for d, a in flat_params.items()}
        else:
            self.shards = {d: xp[d].zeros(layout.buffers[d].shard, dtype=self._dtypes[d])
                           for d in flat_params}
        self._pool: dict[tuple[str, int], list] = {}
        self._pool_lock = threading.Lock()
        self.pool_bytes = 0
        self.fresh = True  # nothing accumulated since zero_grad
        self.has_grads = False
        self._task = None
        self._ready: list[bool] = []
        self._next = 0
        self._comm = CommThread(f"zero-comm-rank{self._rank}")
        ref = weakref.ref(self)
        self._handles = [p.register_post_accumulate_grad_hook(partial(_grad_hook, ref, i))
                         for i, p in enumerate(params) if p.requires_grad]
        self._handles.append(engine.register_backward_start_hook(partial(_start_hook, ref)))
        weakref.finalize(self, _release, self._handles, self._comm)
        self.hand_over_ddp()

    def close(self) -> None:
        _release(self._handles, self._comm)

    def hand_over_ddp(self) -> None:
        """Tell every DDP reducer managing these parameters to stop all-reducing them."""
        for p in self._params:
            ref = getattr(p, "_ddp_reducer", None)
            reducer = ref() if ref is not None else None
            if reducer is not None and not reducer.sync_handed_over:
                reducer.hand_over_gradient_sync()

    # ----------------------------------------------------------------------------- backward
    def _on_backward_start(self, task) -> None:
        # Hooks are process-wide (threads backend: every rank's backward); act on ours only.
        reachable = {id(t) for t in task.leaves}
        if not any(i in reachable for i in self._ids):
            return
        self.hand_over_ddp()  # DDP may have been built after this optimizer
        if self._task is not None:  # the previous backward raised before finishing
            self._drain()
        self._task = task
        self._ready = [False] * len(self._params)
        self._next = 0
        for b in self._buckets:
            b.pending = len(b.members)
        task.queue_callback(self._finalize)
        if self.stage == 1 and not self.fresh:
            self._prepare_accumulation()
        for i, p in enumerate(self._params):
            if id(p) not in reachable:
                self._mark_ready(i, None)

    def _prepare_accumulation(self) -> None:
        """Stage 1, a backward adding to reduced gradients: make the buffer hold something whose
        average is the current average. The owned pieces hold averages (times N: their SUM
        over the ranks), the rest is zeroed (other ranks own it and already counted it)."""
        for b in self._buckets:
            flat = self.flat[b.dtype]
            flat[b.lo:b.plo] = 0
            flat[b.phi:b.hi] = 0
            flat[b.plo:b.phi] *= self._world

    def _on_grad(self, index: int) -> None:
        if self._task is None or engine.current_task() is not self._task:
            return
        p = self._params[index]
        grad, p.grad = p.grad, None  # ZeRO keeps the gradient in its own buffers
        self._mark_ready(index, grad)

    def _mark_ready(self, index: int, grad) -> None:
        if self._ready[index]:
            return
        self._ready[index] = True
        e = self._layout.entries[index]
        src = None if grad is None else grad.array.reshape(-1)
        for b in self._param_buckets[index]:
            a, z = max(e.offset, b.lo), min(e.stop, b.hi)
            dst = self._staging(b)[a - b.lo:z - b.lo]
            if src is not None:
                if self.stage == 1 and not self.fresh:
                    dst += src[a - e.offset:z - e.offset]
                else:
                    dst[...] = src[a - e.offset:z - e.offset]
            elif self.stage == 2 or self.fresh:
                dst[...] = 0  # no gradient counts as zero
            b.pending -= 1
        self._launch_ready()

    def _staging(self, b: _Bucket):
        if self.stage == 1:
            return self.flat[b.dtype][b.lo:b.hi]
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
        buffer = self._xp[dtype].empty(size, dtype=self._dtypes[dtype])
        self.pool_bytes += buffer.nbytes
        return buffer

    def _launch_ready(self) -> None:
        buckets = self._buckets
        while self._next < len(buckets) and buckets[self._next].pending == 0:
            b = buckets[self._next]
            self._next += 1
            staging, b.staging = self._staging(b), None
            self._comm.submit(f"reduce-scatter {b.dtype}[{b.lo}:{b.hi}]",
                              partial(self._reduce, b, staging, self.fresh))

    def _reduce(self, b: _Bucket, staging, fresh: bool) -> None:
        """Communication thread: average bucket ``b`` and keep this rank's piece."""
        n = b.phi - b.plo
        if self.stage == 1:
            if self._world > 1:
                scratch = self._scratch[b.dtype][:n]
                self._pg.reduce_scatter(scratch, staging, ReduceOp.AVG)
                self.flat[b.dtype][b.plo:b.phi] = scratch
            return
        out = self.shards[b.dtype][b.pos:b.pos + n]
        if fresh:
            self._pg.reduce_scatter(out, staging, ReduceOp.AVG)
        else:
            scratch = self._scratch[b.dtype][:n]
            self._pg.reduce_scatter(scratch, staging, ReduceOp.AVG)
            out += scratch  # gradient accumulation over several backwards
        with self._pool_lock:
            self._pool[(b.dtype, b.hi - b.lo)].append(staging)

    def _finalize(self) -> None:
        try:
            for i, ready in enumerate(self._ready):
                if not ready:  # reachable, but its gradient stayed None
                    self._mark_ready(i, None)
            self._comm.wait()
        except BaseException as exc:
            self._drain()
            raise RuntimeError(f"ZeroRedundancyOptimizer: gradient reduce-scatter failed on "
                               f"rank {self._rank}: {type(exc).__name__}: {exc}") from exc
        self._task = None
        self.fresh = False
        self.has_grads = True

    def _drain(self) -> None:
        try:
            self._comm.wait()
        except BaseException:  # noqa: S110 - already failing; the caller reports
            pass
        for b in self._buckets:
            b.staging = None
        self._task = None

    # --------------------------------------------------------------------------- the step
    def absorb_manual_grads(self) -> None:
        """Take ``p.grad`` assigned outside a backward as replicated (already averaged)."""
        manual = [(e, p) for e, p in zip(self._layout.entries, self._params, strict=True)
                  if p.grad is not None]
        if not manual:
            return
        if self.fresh:
            for a in self.owned_arrays() if self.stage == 2 else self.flat.values():
                a[...] = 0
        for e, p in manual:
            g = p.grad.array.reshape(-1)
            p.grad = None
            if self.stage == 1:
                self.flat[e.dtype][e.offset:e.stop] += g
                continue
            for plo, phi, pos in self._layout.buffers[e.dtype].owned(self._rank, self._world):
                a, z = max(plo, e.offset), min(phi, e.stop)
                if a < z:
                    self.shards[e.dtype][pos + a - plo:pos + z - plo] += g[a - e.offset:
                                                                           z - e.offset]
        self.fresh = False
        self.has_grads = True

    def shard_grad(self, dtype: str, lo: int, hi: int, pos: int):
        """The averaged gradient of ``[lo, hi)`` (owned, starting at ``pos`` of the shard)."""
        if self.stage == 1:
            return self.flat[dtype][lo:hi]
        return self.shards[dtype][pos:pos + hi - lo]

    def owned_arrays(self) -> list:
        """Views of every averaged gradient element this rank owns (each exactly once)."""
        if self.stage == 2:
            return list(self.shards.values())
        return [self.flat[d][lo:hi] for d, buf in self._layout.buffers.items()
                for lo, hi, _ in buf.owned(self._rank, self._world)]

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
            for a in self.owned_arrays():
                a[...] = 0
            if self.stage == 1:
                for a in self.flat.values():
                    a[...] = 0
            self.fresh = False
            self.has_grads = True

    def nbytes(self) -> int:
        """Gradient bytes held between steps: stage 1 the full buffer, stage 2 the shard."""
        held = self.flat if self.stage == 1 else self.shards
        return sum(a.nbytes for a in held.values())

    def comm_bytes(self) -> int:
        """Communication buffers: the scratch pieces and (stage 2) the staging pool."""
        return self.pool_bytes + sum(a.nbytes for a in self._scratch.values())


def _grad_hook(ref: weakref.ref, index: int, _param) -> None:
    grads = ref()
    if grads is not None:
        grads._on_grad(index)


def _start_hook(ref: weakref.ref, task) -> None:
    grads = ref()
    if grads is not None:
        grads._on_backward_start(task)


def _release(handles: list, comm: CommThread) -> None:
    for handle in handles:
        handle.remove()
    comm.close()
