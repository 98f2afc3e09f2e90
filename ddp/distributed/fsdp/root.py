"""``FSDPRoot``: the schedule of a fully sharded model, run from its units' module hooks.

The root is the outermost ``fully_shard`` module, found at its first forward (as torch FSDP2
does); it claims every unit below it and builds, once, the private groups and the gradient
sync. Per unit and training step:

* **forward pre-hook**: all-gather the unit's parameters (``FSDPUnit.unshard``, one collective
  per unit on a private group) and cast floating inputs to ``param_dtype``. The root's
  pre-hook also arms the gradient sync for the next backward (unless
  ``set_requires_gradient_sync(False)``).
* **forward hook**: cast outputs to ``output_dtype``; put a tensor hook on every output that
  requires grad (the unit's *pre-backward*: it fires before any node of the unit runs in
  backward); reshard the unit if ``reshard_after_forward`` (the root keeps its parameters:
  backward needs them first).
* **pre-backward**: all-gather the unit again if it was resharded. The first one of each
  backward queues the end-of-backward callback.
* **gradients**: the scheduler's strategy (``reduce_scatter.py``) reduce-scatters each unit's
  gradients as soon as they are final, on the scheduler's communication thread; when a unit's
  last gradient is in, the unit is resharded.
* **end of backward**: every unit is resharded (the root too), so ``model.parameters()`` is the
  sharded parameters again whenever no forward or backward runs.

**Prefetch**: after a unit's own all-gather, the next unit's (registration order) is queued in
forward, the previous one's in backward, on the root's gather thread (which issues every
all-gather of the model, in order), so it overlaps the current unit's compute; ``unshard``
waits for it. A prefetched unit that does not run stays gathered until the end of backward.

Under ``no_grad`` every unit (root included) reshards right after its forward. All of this runs
in the same order on every rank, so the collectives match.
"""

from __future__ import annotations

import weakref

from ddp import dtypes
from ddp.autograd import engine
from ddp.autograd.grad_mode import is_grad_enabled
from ddp.distributed.fsdp.reduce_scatter import FullyShardedGrads
from ddp.distributed.grad_sync.comm_thread import CommThread
from ddp.distributed.grad_sync.scheduler import GradSyncScheduler
from ddp.tensor import Tensor


class FSDPRoot:
    """The schedule of the units below (and including) ``root_unit``.

    Args:
        root_unit: the outermost unit.
        units: every unit of the model, in pre-order (the root first).

    Raises:
        ValueError: units on different process groups, or a unit already claimed by
            another root.
    """

    def __init__(self, root_unit, units: list):
        for unit in units:
            if unit.process_group is not root_unit.process_group:
                raise ValueError("fully_shard: every unit of one model must shard over the same "
                                 "process group (nested meshes are not supported)")
            if unit.root is not None:
                raise RuntimeError(
                    f"fully_shard: {type(unit.module).__name__} already ran as part of another "
                    f"root; run the outermost fully_shard module's forward first")
        self.root_unit = root_unit
        self.units = units
        group = root_unit.process_group
        self.gather_group = group.dup(description="fully_shard all-gather")
        self.gather_thread = CommThread(f"fsdp-gather-rank{group.rank()}")
        weakref.finalize(self, self.gather_thread.close)
        for unit in units:
            unit.root = self
            unit.gather_group = self.gather_group
        self._positions = {id(u): k for k, u in enumerate(units)}
        root_unit.reshard_after_forward = False  # torch's heuristic for the root
        self.strategy = FullyShardedGrads(units, self._unit_done)
        self.scheduler = None
        if self.strategy.params:
            self.scheduler = GradSyncScheduler(
                self.strategy.params, self.strategy.names, self.strategy,
                group.dup(description="fully_shard reduce-scatter"), overlap="thread")
        self._task = None  # the backward whose end-of-backward callback is queued

    # ----------------------------------------------------------------------- forward
    def pre_forward(self, unit, args: tuple, kwargs: dict):
        if unit is self.root_unit and is_grad_enabled() and self.scheduler is not None:
            sync = {u.requires_gradient_sync for u in self.units}
            if len(sync) > 1:
                raise NotImplementedError(
                    "fully_shard: set_requires_gradient_sync differs between the units of one "
                    "model; ddp supports it for the whole model only (call it on the root)")
            if sync == {True}:
                self.scheduler.expect_backward()
        unit.unshard()
        self._prefetch(unit, +1)
        mp = unit.mp_policy
        if mp.param_dtype is not None and mp.cast_forward_inputs:
            args, kwargs = _cast_floats((args, kwargs), mp.param_dtype)
        return args, kwargs

    def post_forward(self, unit, output):
        if unit.mp_policy.output_dtype is not None:
            output = _cast_floats(output, unit.mp_policy.output_dtype)
        if is_grad_enabled():
            for tensor in _tensors(output):
                if tensor.requires_grad and tensor.grad_fn is not None:
                    tensor.register_hook(lambda grad, u=unit: self._pre_backward(u))
        if not is_grad_enabled() and unit is self.root_unit:
            for other in self.units:  # prefetched units the forward did not use, too
                other.reshard()
        elif unit.reshard_after_forward or not is_grad_enabled():
            unit.reshard()
        return output

    # ---------------------------------------------------------------------- backward
    def _pre_backward(self, unit) -> None:
        task = engine.current_task()
        if task is not None and task is not self._task:
            self._task = task
            task.queue_callback(self._end_of_backward)
        unit.unshard()
        self._prefetch(unit, -1)

    def _prefetch(self, unit, step: int) -> None:
        """Start the all-gather of the unit ``step`` places away in registration order (the
        next one in forward, the previous one in backward) while ``unit`` computes."""
        position = self._positions[id(unit)] + step
        if 0 < position < len(self.units):  # the root (0) stays gathered through backward
            self.units[position].prefetch(self.gather_thread)

    def _unit_done(self, unit) -> None:
        # A frozen parameter may still be read by a later node (the gradient of the input
        # through it): such units wait for the end of backward.
        if not unit.has_frozen:
            unit.reshard()

    def _end_of_backward(self) -> None:
        self._task = None
        for unit in self.units:
            unit.reshard()


def _tensors(value):
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def _cast_floats(value, dtype: dtypes.dtype):
    if isinstance(value, Tensor):
        return value.to(dtype) if value.is_floating_point() and value.dtype != dtype else value
    if isinstance(value, tuple):
        return tuple(_cast_floats(v, dtype) for v in value)
    if isinstance(value, list):
        return [_cast_floats(v, dtype) for v in value]
    if isinstance(value, dict):
        return {k: _cast_floats(v, dtype) for k, v in value.items()}
    return value
