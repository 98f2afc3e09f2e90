"""``GatheredPeak``: the peak bytes of gathered (unsharded) parameters of a fully sharded
model, sampled at its units' public forward hooks, and the units' sizes the ledger predicts it
from (see ``memory_ledger.py``)."""

from __future__ import annotations

import math

from ddp.distributed.fsdp import FSDPModule, ShardedParameter, row_range
from ddp.nn.parallel import DistributedDataParallel


class GatheredPeak:
    """Track the peak bytes of gathered (unsharded) parameters of a fully sharded model.

    Samples ``FSDPModule.gathered_nbytes(recurse=True)`` of the outermost unit inside every
    unit's forward (after its all-gather, before its reshard), through the modules' public
    forward hooks; backward's re-gathers are not sampled. Use it around a training step and
    pass it to :func:`memory_report`::

        with GatheredPeak(model) as peak:
            loss_fn(model(x), y).backward(); opt.step()
        memory_report(model, opt, gathered_peak=peak)
    """

    def __init__(self, model):
        self.root = fsdp_root(model)
        self.peak = 0
        self._handles = []
        if self.root is not None:
            for m in self.root.modules():
                if isinstance(m, FSDPModule):
                    self._handles.append(m.register_forward_pre_hook(self._sample))
                    self._handles.append(m.register_forward_hook(self._sample_after,
                                                                 prepend=True))

    def _sample(self, module, args) -> None:
        self.peak = max(self.peak, self.root.gathered_nbytes(recurse=True))

    def _sample_after(self, module, args, output) -> None:
        self._sample(module, args)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> GatheredPeak:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def fsdp_root(model):
    module = model.module if isinstance(model, DistributedDataParallel) else model
    for m in module.modules():  # pre-order: the outermost unit first
        if isinstance(m, FSDPModule):
            return m
    return None


def unit_bytes(root) -> list[int]:
    """Whole-parameter bytes each unit gathers, the root's first (pre-order)."""
    out = []
    for unit in (m for m in root.modules() if isinstance(m, FSDPModule)):
        seen, stack, total = set(), [unit], 0
        while stack:
            m = stack.pop()
            for p in m.parameters(recurse=False):
                if isinstance(p, ShardedParameter) and id(p) not in seen:
                    seen.add(id(p))
                    total += math.prod(p.shard_spec.global_shape) * p.array.itemsize
            stack.extend(c for c in m.children() if not isinstance(c, FSDPModule))
        out.append(total)
    return out


def predicted_rows(p, world: int, rank: int) -> int:
    """Elements of rank ``rank``'s dim-0 rows of ``p`` by ``torch.chunk``'s rule."""
    if not isinstance(p, ShardedParameter):
        return int(p.array.size)
    shape = tuple(p.shard_spec.global_shape)
    rows = shape[0] if shape else 1
    start, stop = row_range(rows, world, rank)
    return (stop - start) * (math.prod(shape[1:]) if shape else 1)
