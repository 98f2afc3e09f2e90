"""Where ZeRO finds each rank's gradient slice: replicated (stage 1) or reduce-scattered (stage 2).

Both classes answer ``slices()``: for each dtype, this rank's ``S``-element slice of the averaged
flat gradient (None when no backward produced gradients since the last ``zero_grad``).

* ``ReplicatedGrads`` (stage 1): gradients are full and identical on every rank (DDP averaged
  them). A post-accumulate-grad hook makes each ``p.grad`` a view of one flat gradient buffer per
  dtype, so the slice is a view too (no copy, gradient memory stays ``4 bytes * numel``).
* ``ShardedGrads`` (stage 2): a post-accumulate-grad hook copies each gradient into a flat buffer
  and frees ``p.grad``; at the end of backward one reduce-scatter per dtype (average) leaves the
  rank its slice, added to what earlier backwards accumulated, and the flat buffer is freed. At
  step time a rank holds ``S`` gradient elements per dtype. A DistributedDataParallel that also
  manages these parameters is told to stop all-reducing them (its reducer's
  ``hand_over_gradient_sync``), so gradients are reduced once, not twice.
"""

from __future__ import annotations

import weakref
from functools import partial

from ddp.autograd import engine
from ddp.backend import get_array_module
from ddp.distributed.optim.flat_layout import FlatLayout
from ddp.distributed.reduce_op import ReduceOp
from ddp.tensor import Tensor


class ReplicatedGrads:
    """Stage 1: full gradients as views of one flat buffer per dtype."""

    def __init__(self, params: list[Tensor], layout: FlatLayout, flat_params: dict, rank: int):
        self._params = params
        self._layout = layout
        self._rank = rank
        self.flat: dict = {d: get_array_module(a).zeros_like(a) for d, a in flat_params.items()}
        self._views = [
            self.flat[e.dtype][e.offset:e.stop].reshape(e.shape) for e in layout.entries
        ]
        ref = weakref.ref(self)
        self._handles = [p.register_post_accumulate_grad_hook(partial(_adopt_hook, ref, i))
                         for i, p in enumerate(params) if p.requires_grad]

    def close(self) -> None:
        for h in self._handles:
            h.remove()

    def _adopt(self, index: int) -> None:
        """Move ``p.grad`` into its slot of the flat buffer and make ``p.grad`` that slot."""
        p, view = self._params[index], self._views[index]
        if p.grad is not None and p.grad.array is not view:
            view[...] = p.grad.array
            p.grad = Tensor(view)

    def slices(self) -> dict | None:
        """This rank's slice of each flat gradient; None when no parameter has a gradient."""
        if all(p.grad is None for p in self._params):
            return None
        for i, p in enumerate(self._params):
            if p.grad is None:
                self._views[i][...] = 0  # a parameter without gradient counts as zero
            else:
                self._adopt(i)  # e.g. DDP's gradient_as_bucket_view replaced it
        return {d: self.flat[d][slice(*b.slice_of(self._rank))]
                for d, b in self._layout.buffers.items()}

    def scale_(self, coef: float) -> None:
        for a in self.flat.values():
            a *= coef  # scale everything, so the replicated p.grad stay consistent

    def zero_grad(self, set_to_none: bool) -> None:
        for p in self._params:
            if set_to_none:
                p.grad = None
        if not set_to_none:
            for a in self.flat.values():
                a[...] = 0

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.flat.values())


class ShardedGrads:
    """Stage 2: each rank keeps only the averaged slice of the gradient it owns."""

    def __init__(self, params: list[Tensor], layout: FlatLayout, flat_params: dict, pg):
        self._params = params
        self._ids = {id(p) for p in params}
        self._layout = layout
        self._pg = pg
        self._rank = pg.rank()
        self._templates = flat_params  # dtype and device of each flat buffer
        self.shards: dict = {}  # dtype -> S-element averaged slice (only after a backward)
        self._flat: dict | None = None  # dtype -> full flat buffer, during backward only
        self._task = None
        ref = weakref.ref(self)
        self._handles = [p.register_post_accumulate_grad_hook(partial(_copy_hook, ref, i))
                         for i, p in enumerate(params) if p.requires_grad]
        self._handles.append(engine.register_backward_start_hook(partial(_start_hook, ref)))
        self.hand_over_ddp()

    def close(self) -> None:
        for h in self._handles:
            h.remove()

    def hand_over_ddp(self) -> None:
        """Tell every DDP reducer managing these parameters to stop all-reducing them."""
        for p in self._params:
            ref = getattr(p, "_ddp_reducer", None)
            reducer = ref() if ref is not None else None
            if reducer is not None and not reducer.sync_handed_over:
                reducer.hand_over_gradient_sync()

    def _on_backward_start(self, task) -> None:
        # Hooks are process-wide (threads backend: every rank's backward); act on ours only.
        if not any(id(t) in self._ids for t in task.leaves):
            return
        self.hand_over_ddp()  # DDP may have been built after this optimizer
        if self._task is None:
            self._flat = {d: get_array_module(a).zeros_like(a)
                          for d, a in self._templates.items()}
        self._task = task
        task.queue_callback(self._reduce_scatter)

    def _on_grad(self, index: int) -> None:
        p = self._params[index]
        if self._task is None or engine.current_task() is not self._task or p.grad is None:
            return
        e = self._layout.entries[index]
        self._flat[e.dtype][e.offset:e.stop] = p.grad.array.reshape(-1)
        p.grad = None  # the full gradient is not kept: this rank only needs its slice

    def _reduce_scatter(self) -> None:
        """End of backward (collective): average the flat gradients, keep this rank's slice."""
        flat, self._flat, self._task = self._flat, None, None
        for d, buf in self._layout.buffers.items():
            xp = get_array_module(flat[d])
            out = xp.empty(buf.shard, dtype=flat[d].dtype)
            self._pg.reduce_scatter(out, flat[d], ReduceOp.AVG)
            del flat[d]  # free the full buffer before the next dtype's
            if d in self.shards:
                self.shards[d] += out  # gradient accumulation over several backwards
            else:
                self.shards[d] = out

    def slices(self) -> dict | None:
        return dict(self.shards) if self.shards else None

    def scale_(self, coef: float) -> None:
        for a in self.shards.values():
            a *= coef

    def zero_grad(self, set_to_none: bool) -> None:
        for p in self._params:
            p.grad = None
        if set_to_none:
            self.shards = {}
        else:
            for a in self.shards.values():
                a[...] = 0

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.shards.values())


def _adopt_hook(ref: weakref.ref, index: int, _param) -> None:
    grads = ref()
    if grads is not None:
        grads._adopt(index)


def _copy_hook(ref: weakref.ref, index: int, _param) -> None:
    grads = ref()
    if grads is not None:
        grads._on_grad(index)


def _start_hook(ref: weakref.ref, task) -> None:
    grads = ref()
    if grads is not None:
        grads._on_backward_start(task)
