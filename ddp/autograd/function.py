"""Graph nodes: ``Function`` (an op's forward/backward pair) and ``AccumulateGrad`` (a leaf's sink).

An op is a ``Function`` subclass with two static methods side by side::

    class Mul(Function):
        @staticmethod
        def forward(ctx, a, b):            # arrays in, one array out
            ctx.save_for_backward(a, b)
            return a * b

        @staticmethod
        def backward(ctx, grad):           # gradient w.r.t. the output in,
            a, b = ctx.saved_tensors       # one gradient (or None) per forward argument out
            return grad * b, grad * a

``Mul.apply(x, y)`` unwraps tensors to arrays, runs ``forward`` and, when grad mode is on and an
input requires grad, returns a tensor whose ``grad_fn`` is the ``ctx`` itself: the context object
*is* the graph node. Backward may return views or the incoming gradient itself; the engine copies
only when it must (see ``engine.py``).
"""

from __future__ import annotations

import itertools

import numpy as np

from ddp.autograd import tensor_type
from ddp.autograd.grad_mode import is_grad_enabled

_sequence = itertools.count()  # creation order of nodes: the engine runs later nodes first

_FREED_MESSAGE = (
    "Trying to backward through the graph a second time (or directly access saved tensors after "
    "they have already been freed). Saved intermediate values of the graph are freed when you "
    "call .backward(). Specify retain_graph=True if you need to backward through the graph a "
    "second time."
)


class Node:
    """A vertex of the backward graph. ``next_edges[i]`` receives the gradient of input ``i``."""

    next_edges: tuple = ()  # class defaults: most nodes never change them, so no per-node write
    pre_hooks: dict | None = None  # id -> fn(grad Tensor) -> Tensor | None

    def __init__(self):
        self.sequence_nr = next(_sequence)

    def name(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        return f"<{self.name()} object>"


class AccumulateGrad(Node):
    """Sink of a leaf tensor: sums the gradient into ``variable.grad`` and fires its hooks."""

    def __init__(self, variable):
        super().__init__()
        self.variable = variable

    def name(self) -> str:
        return "AccumulateGrad"

    def accumulate(self, grad, owned: bool) -> None:
        """Add ``grad`` (an array) into ``variable.grad``; ``owned`` says it may be kept as is.

        ``grad`` None means the leaf was reachable but received no gradient in this backward:
        ``.grad`` stays as it is, and the post-accumulate hooks still fire, so that code waiting
        for every reachable leaf (DDP's buckets) is not left waiting.
        """
        tensor_class = tensor_type.Tensor
        var = self.variable
        if grad is None:
            for hook in tuple(var._post_accumulate_hooks.values()):
                hook(var)
            return
        if var._grad_hooks:
            owned = False  # a hook may keep the tensor it was given: never adopt that array
            for hook in tuple(var._grad_hooks.values()):
                result = hook(tensor_class._from_op(grad, None))
                if result is not None:
                    grad = _array_of(result, "a tensor hook")
        if grad.shape != var.array.shape:
            raise RuntimeError(
                f"autograd produced a gradient of shape {tuple(grad.shape)} for a leaf of shape "
                f"{tuple(var.array.shape)}"
            )
        if grad.dtype != var.array.dtype:
            grad, owned = grad.astype(var.array.dtype), True
        if var.grad is None:
            var.grad = tensor_class(grad if owned else grad.copy())
        else:
            var.grad.array += grad
        for hook in tuple(var._post_accumulate_hooks.values()):
            hook(var)


class Function(Node):
    """Base of every differentiable op; subclasses define ``forward`` and ``backward``."""

    _saved: tuple | None = ()
    _had_saved = False
    needs_input_grad: tuple = ()
    backward_name: str | None = None  # torch's node name when it differs from <Class>Backward0

    def name(self) -> str:
        return self.backward_name or type(self).__name__ + "Backward0"

    def __repr__(self) -> str:
        return f"<{self.name()} object>"

    @staticmethod
    def forward(ctx, *args, **kwargs):
        raise NotImplementedError

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError

    def save_for_backward(self, *arrays) -> None:
        """Keep ``arrays`` for backward; freed after backward unless ``retain_graph=True``."""
        self._saved = arrays
        self._had_saved = True

    @property
    def saved_tensors(self) -> tuple:
        if self._saved is None:
            raise RuntimeError(_FREED_MESSAGE)
        return self._saved

    def release(self) -> None:
        """Free saved arrays (called by the engine after this node ran)."""
        if self._had_saved:
            self._saved = None

    @classmethod
    def apply(cls, *args, **kwargs):
        """Run ``forward`` on the arrays behind ``args`` and wrap the result as a Tensor.

        Positional arguments may be tensors or plain values; keyword arguments are plain values.
        """
        tensor_class = tensor_type.Tensor
        ctx = cls()
        record = is_grad_enabled()
        arrays = []
        needs = edges = None
        first = None
        for i, arg in enumerate(args):
            if isinstance(arg, tensor_class):
                array = arg.array
                if first is None:
                    first = array
                elif type(array) is not type(first) or (
                        type(first) is not np.ndarray and array.device != first.device):
                    _raise_device_mismatch(cls, args)  # NumPy vs CuPy, or two GPUs
                arrays.append(array)
                if record and arg._requires_grad:
                    if needs is None:
                        needs, edges = [False] * len(args), [None] * len(args)
                    needs[i] = True
                    edges[i] = arg._gradient_edge()
            else:
                arrays.append(arg)
        if needs is not None:
            ctx.needs_input_grad = tuple(needs)
            ctx.next_edges = tuple(edges)
        out = cls.forward(ctx, *arrays, **kwargs)
        return tensor_class._from_op(out, None if needs is None else ctx)


def _array_of(value, what: str):
    if isinstance(value, tensor_type.Tensor):
        return value.array
    raise TypeError(f"{what} must return a Tensor or None, got {type(value).__name__}")


def _raise_device_mismatch(cls, args) -> None:
    devices = [str(a.device) for a in args if isinstance(a, tensor_type.Tensor)]
    raise RuntimeError(
        f"Expected all tensors to be on the same device, but found at least two devices in "
        f"{cls.__name__}: {', '.join(dict.fromkeys(devices))}"
    )


def is_owned(grad, incoming, others: tuple) -> bool:
    """True when a backward result is a fresh array nobody else references."""
    if grad is incoming or not isinstance(grad, np.ndarray) and not hasattr(grad, "base"):
        return False
    if grad.base is not None:
        return False
    return sum(1 for other in others if other is grad) == 1
