"""The backward engine: runs a graph of nodes in a deterministic order.

Order: a node runs once every node that feeds it a gradient has run (dependency counts), and
among ready nodes the most recently created runs first (``sequence_nr``), as torch does. The
order therefore depends only on the program, so every rank of a data-parallel job fires its
leaf hooks in the same order. A leaf's ``AccumulateGrad`` runs the moment its gradient is final,
so its post-accumulate hooks fire during backward, not at the end: DDP starts communicating
through them while the rest of backward still runs.

``backward(tensors, grad_tensors, retain_graph)`` (``ddp.autograd.backward``; ``Tensor.backward``
calls it) checks the roots and their gradients and hands them to ``run_backward``.

Services for DDP-like code:
  * ``register_backward_start_hook(fn)``: ``fn(task)`` runs at the start of every backward,
    with ``task.leaves``, the leaf tensors reachable from the roots, in a deterministic order.
  * ``queue_callback(fn)``: during backward, run ``fn()`` once this backward has finished.

Service for code that needs gradients without accumulating them (activation checkpointing,
``ddp.utils.checkpoint``): ``run_backward(..., capture=nodes)`` stops at the given nodes and
reports the gradient that reached each, running no ``AccumulateGrad`` (torch.autograd.grad's
contract).
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable, Sequence

import numpy as np

from ddp.autograd import anomaly_mode, grad_destination, tensor_type
from ddp.autograd.function import _FREED_MESSAGE, AccumulateGrad, _array_of, is_owned
from ddp.backend import get_array_module
from ddp.utils.hooks import HookRegistry, RemovableHandle

_local = threading.local()
_start_hooks = HookRegistry()  # written by any thread (DDP per simulated rank)


class GraphTask:
    """One call of backward: the reachable leaves and the callbacks queued for its end."""

    def __init__(self, leaves: list):
        self.leaves = leaves
        self._callbacks: list[Callable[[], None]] = []

    def queue_callback(self, fn: Callable[[], None]) -> None:
        """Run ``fn()`` after this backward has run every node (callbacks may queue more)."""
        self._callbacks.append(fn)


def current_task() -> GraphTask | None:
    """The backward running in this thread, or None outside backward."""
    return getattr(_local, "task", None)


def queue_callback(fn: Callable[[], None]) -> None:
    """Queue ``fn`` to run at the end of the backward running in this thread."""
    task = current_task()
    if task is None:
        raise RuntimeError("queue_callback can only be called during backward")
    task.queue_callback(fn)


def register_backward_start_hook(fn: Callable[[GraphTask], None]) -> RemovableHandle:
    """Call ``fn(task)`` at the start of every backward in any thread; returns a handle."""
    handle = RemovableHandle(_start_hooks)
    _start_hooks[handle.id] = fn
    return handle


def _discover(roots: Sequence, accumulate: bool = True) -> tuple[dict, list]:
    """Dependency count of every node reachable from ``roots`` and the reachable leaves (none
    when ``accumulate`` is false: no leaf will receive a gradient)."""
    dependencies: dict = {}
    leaves = []
    seen = set(roots)
    stack = list(reversed(roots))
    while stack:
        node = stack.pop()
        if type(node) is AccumulateGrad:
            if accumulate:
                leaves.append(node.variable)
            continue
        for child in reversed(node.next_edges):
            if child is None:
                continue
            dependencies[child] = dependencies.get(child, 0) + 1
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return dependencies, leaves


def backward(tensors, grad_tensors=None, retain_graph: bool | None = None) -> None:
    """``ddp.autograd.backward``: add d(tensors)/d(leaf) into every reachable leaf's ``.grad``.

    Args:
        tensors: a tensor or a sequence of tensors, the roots; each must require grad.
        grad_tensors: d(loss)/d(root) per root (tensors, arrays or None); None may stand for a
            root with one element (its gradient is 1).
        retain_graph: keep saved values so backward can run through the graph again.

    Raises:
        RuntimeError: a root does not require grad, has more than one element and no gradient,
            or its gradient has another shape; or the graph was already freed.
    """
    roots, grads = _roots(tensors, grad_tensors)
    run_backward(roots, grads, retain_graph=bool(retain_graph))


def grad(outputs, inputs, grad_outputs=None, retain_graph: bool | None = None,
         create_graph: bool = False, allow_unused: bool | None = None,
         materialize_grads: bool = False) -> tuple:
    """``torch.autograd.grad``: d(outputs)/d(inputs), returned instead of accumulated.

    No ``.grad`` changes and no leaf hook or backward-start hook fires; the graph is walked
    only as far as ``inputs``.

    Args:
        outputs: a tensor or a sequence of tensors (the roots), as for :func:`backward`.
        inputs: a tensor or a sequence of tensors requiring grad.
        grad_outputs: d(loss)/d(output) per output, as ``grad_tensors`` of :func:`backward`.
        retain_graph: keep saved values so backward can run through the graph again
            (default ``create_graph``).
        create_graph: refused: ddp's backward builds no graph (no higher-order gradients).
        allow_unused: an input the outputs do not reach gets None instead of an error.
        materialize_grads: such an input gets zeros instead of None (implies allow_unused).

    Returns:
        One gradient tensor (or None) per input, as a tuple.

    Raises:
        RuntimeError: an input does not require grad, or is unused and ``allow_unused`` is
            false; the checks of :func:`backward` on the outputs.
        NotImplementedError: ``create_graph=True``.
    """
    tensor_class = tensor_type.Tensor
    if create_graph:
        raise NotImplementedError(
            "autograd.grad(create_graph=True): ddp's backward builds no graph, so it cannot "
            "differentiate gradients (higher-order derivatives)")
    inputs = [inputs] if isinstance(inputs, tensor_class) else list(inputs)
    for t in inputs:
        if not t._requires_grad:
            raise RuntimeError("One of the differentiated Tensors does not require grad")
    roots, grads = _roots(outputs, grad_outputs)
    capture = {t._gradient_edge(): None for t in inputs}
    run_backward(roots, grads, retain_graph=bool(retain_graph), capture=capture)
    results = []
    for i, t in enumerate(inputs):
        g = capture[t._gradient_edge()]
        if g is None:
            if not (allow_unused or materialize_grads):
                raise RuntimeError(
                    f"The differentiated Tensor at index {i} appears to not have been used in "
                    "the graph. Set allow_unused=True if this is the desired behavior.")
            if materialize_grads:
                g = get_array_module(t.array).zeros_like(t.array)
        results.append(None if g is None else tensor_class._from_op(g, None))
    return tuple(results)


def _roots(tensors, grad_tensors) -> tuple[list, list]:
    """The nodes and gradient arrays that backward starts from, checked as torch checks them."""
    tensor_class = tensor_type.Tensor
    if isinstance(tensors, tensor_class):
        tensors = [tensors]
    if grad_tensors is None:
        grad_tensors = [None] * len(tensors)
    elif isinstance(grad_tensors, tensor_class):
        grad_tensors = [grad_tensors]
    roots, grads = [], []
    for i, (t, g) in enumerate(zip(tensors, grad_tensors, strict=True)):
        if not t._requires_grad:
            raise RuntimeError(
                f"element {i} of tensors does not require grad and does not have a grad_fn"
            )
        if g is None:
            if t.array.size != 1:
                raise RuntimeError(
                    f"grad can be implicitly created only for scalar outputs (got a tensor of "
                    f"shape {tuple(t.shape)}); pass gradient= to backward()"
                )
            g_array = get_array_module(t.array).ones(t.array.shape, dtype=t.array.dtype)
        else:
            g_array = (g.array if isinstance(g, tensor_class)
                       else np.asarray(g, dtype=t.array.dtype))
            if g_array.dtype != t.array.dtype:
                g_array = g_array.astype(t.array.dtype)
            if tuple(g_array.shape) != tuple(t.array.shape):
                raise RuntimeError(
                    f"Mismatch in shape: grad_output[{i}] has a shape of {tuple(g_array.shape)} "
                    f"and output[{i}] has a shape of {tuple(t.array.shape)}."
                )
        roots.append(t._gradient_edge())
        grads.append(g_array)
    return roots, grads


def run_backward(roots: Sequence, root_grads: Sequence, retain_graph: bool,
                 capture: dict | None = None) -> None:
    """Backpropagate ``root_grads`` (arrays) from ``roots`` (nodes) into the leaves.

    Args:
        capture: when given, a dict whose keys are nodes: each value becomes the gradient
            array that reached that node (None when none did). Backward then runs no
            ``AccumulateGrad`` (no ``.grad`` changes, no leaf hooks fire) and no backward-start
            hooks; op nodes among the keys still run, so keys behind them get their gradient.
    """
    dependencies, leaves = _discover(roots, accumulate=capture is None)
    task = GraphTask(leaves)
    anomaly = anomaly_mode.is_anomaly_enabled()
    previous = current_task()
    _local.task = task
    try:
        with grad_destination.backward_scope(enabled=capture is None):
            _run(task, roots, root_grads, retain_graph, dependencies, capture, anomaly)
    finally:
        _local.task = previous


def _run(task, roots, root_grads, retain_graph, dependencies, capture, anomaly) -> None:
    """The body of ``run_backward``: start hooks, the nodes in order, the callbacks."""
    stops = capture if capture is not None else ()
    for hook in () if capture is not None else _start_hooks.snapshot:
        hook(task)
    buffers: dict = {}
    ready: list = []

    def deliver(node, grad, owned):
        held = buffers.get(node)
        if grad is not None:
            if held is None or held[0] is None:
                buffers[node] = (grad, owned)
            elif held[1]:
                held[0].__iadd__(grad)
            else:
                buffers[node] = (held[0] + grad, True)
        elif held is None:
            buffers[node] = (None, False)
        remaining = dependencies.get(node, 0) - 1
        dependencies[node] = remaining
        if remaining <= 0:
            priority = 0 if type(node) is AccumulateGrad else 1
            heapq.heappush(ready, (priority, -node.sequence_nr, id(node), node))

    for node, grad in zip(roots, root_grads, strict=True):
        dependencies[node] = dependencies.get(node, 0) + 1
        deliver(node, grad, False)

    while ready:
        node = heapq.heappop(ready)[3]
        grad, owned = buffers.pop(node)
        if node in stops:
            capture[node] = grad if owned or grad is None else grad.copy()
        if type(node) is AccumulateGrad:
            if capture is None:
                node.accumulate(grad, owned)
            continue
        if grad is None:  # nothing flows through this node: release what waits on it
            for child in node.next_edges:
                if child is not None:
                    deliver(child, None, False)
            continue
        if node.pre_hooks:
            for hook in tuple(node.pre_hooks.values()):
                result = hook(tensor_type.Tensor._from_op(grad, None))
                if result is not None:
                    grad = _array_of(result, "a tensor hook")
        if node._had_saved and node._saved is None:
            raise RuntimeError(_FREED_MESSAGE)
        grads = (anomaly_mode.call_backward(node, grad) if anomaly
                 else node.run_backward(grad))
        if type(grads) is not tuple:
            grads = (grads,)
        edges = node.next_edges
        if len(grads) < len(edges):
            raise RuntimeError(
                f"{node.name()} returned {len(grads)} gradients for {len(edges)} inputs"
            )
        for child, child_grad in zip(edges, grads, strict=False):
            if child is None:
                continue
            if child_grad is not None and not hasattr(child_grad, "shape"):
                child_grad = np.asarray(child_grad)
            if child_grad is not None and type(child_grad) is not np.ndarray:
                child_grad = _as_array(child_grad)
            owned = child_grad is not None and is_owned(child_grad, grad, grads)
            deliver(child, child_grad, owned)
        if not retain_graph:
            node.release()
    index = 0
    while index < len(task._callbacks):
        task._callbacks[index]()
        index += 1


def _as_array(value):
    """NumPy scalars (what reductions to 0-d return) become 0-d arrays; device arrays pass."""
    if isinstance(value, np.generic):
        return np.asarray(value)
    return value
