"""Gradient destinations: where a backward may write an input's gradient with no later copy.

A leaf with a grad storage hook (``Tensor.register_grad_storage_hook``; DDP's bucket slot when
``gradient_as_bucket_view``) gets its new ``.grad`` in the memory the hook supplies. An op
would compute the gradient into a fresh array and ``AccumulateGrad`` copy it into that memory;
instead, a backward may ask ``ctx.gradient_destination(i, shape, dtype)`` for the memory of
input ``i``'s gradient and compute into it (a GEMM with ``out=``), and ``AccumulateGrad``
adopts the array as the new ``.grad`` when it receives that very array (identity): one pass
over the gradient's memory fewer.

A destination is handed out only where the result is the same as the copy (the rules live in
``AccumulateGrad.claim_storage``): the input is a leaf whose ``.grad`` is None (the first
accumulation; an existing ``.grad`` accumulates in place as before), it has no tensor hooks
(``register_hook``: a hook must see the gradient before it lands, and may replace it), the
supplied memory has the gradient's shape and dtype and is contiguous, and it is handed out
once per leaf and backward (a second contribution is summed by the engine as before). Only a
backward that accumulates hands out destinations (``autograd.grad``'s, which only captures
gradients, never does).

This module holds the state of the backward running in a thread: whether destinations may be
handed out, and which leaves' already were. It is per thread (the ``threads`` backend runs a
rank per thread) and a nested backward (activation checkpointing recomputes and backpropagates
inside another backward) gets its own, the outer one's restored after it.
"""

from __future__ import annotations

import contextlib
import threading

_local = threading.local()


class _Scope:
    """One backward's destinations: ``claimed`` maps a leaf's node to the memory it handed out."""

    __slots__ = ("claimed", "enabled")

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.claimed: dict = {}


@contextlib.contextmanager
def backward_scope(enabled: bool):
    """Run one backward in this thread; ``enabled``: its nodes may be given destinations (the
    engine's ``run_backward``: true unless it only captures gradients)."""
    previous = getattr(_local, "scope", None)
    _local.scope = _Scope(enabled)
    try:
        yield
    finally:
        _local.scope = previous


def claim(node, storage_of):
    """Hand out leaf ``node``'s destination once in this backward: ``storage_of()`` (the
    memory, or None) when destinations are enabled and ``node`` has not claimed yet, else None."""
    scope = getattr(_local, "scope", None)
    if scope is None or not scope.enabled or node in scope.claimed:
        return None
    storage = storage_of()
    if storage is not None:
        scope.claimed[node] = storage
    return storage


def claimed(node):
    """The memory leaf ``node`` handed out in the backward running in this thread, or None."""
    scope = getattr(_local, "scope", None)
    return None if scope is None else scope.claimed.get(node)
