"""Graph nodes: ``Function`` (an op's forward/backward pair) and ``AccumulateGrad`` (a leaf's sink).

This ``Function`` is the engine's own op base, with an array-level contract; it is not torch's
public class. Custom functions written against torch's contract (tensors in and out of
``forward`` and ``backward``) subclass ``ddp.autograd.Function`` (``custom_function.py``), which
builds its graph nodes from this one. Their ctx API (``FunctionCtx``) and torch's
``once_differentiable`` live here, where torch has them (``torch.autograd.function``).

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

NumPy has no BLAS for 16-bit floats (float16, and ``ml_dtypes``' bfloat16) and accumulates their
sums in 16 bits, so an op given such NumPy arrays runs its forward and backward on float32 copies
and rounds each result back to the input's dtype, as torch's CPU kernels do; only ops marked
``storage_only`` (views, copies, casts: no arithmetic either way) see the 16-bit arrays
themselves. CuPy computes in float16 natively and is left alone.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np

from ddp import dtypes
from ddp.autograd import anomaly_mode, grad_destination, tensor_type
from ddp.autograd.grad_mode import is_grad_enabled, no_grad
from ddp.backend import get_array_module

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
    forward_trace = None  # the creating call's stack, recorded in anomaly mode only

    def __init__(self):
        self.sequence_nr = next(_sequence)

    def name(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        return f"<{self.name()} object at {id(self):#x}>"

    @property
    def next_functions(self) -> tuple:
        """torch's view of the graph: one ``(node, input_nr)`` pair per input edge.

        ``node`` is None where the input needs no gradient (a constant, or a tensor that does
        not require grad); a leaf's node is its ``AccumulateGrad``, whose ``variable`` is the
        leaf. An op of ddp's own has one pair per positional argument of its ``forward``, so
        non-tensor arguments (dims, flags) appear as ``(None, 0)``, where torch lists tensors
        only.
        """
        return tuple(edge.edge_pair() if edge is not None else (None, 0)
                     for edge in self.next_edges)

    def edge_pair(self) -> tuple:
        """``(node, input_nr)`` of an edge that ends here (a node with one output: nr 0)."""
        return (self, 0)

    def run_backward(self, grad):
        """What the engine calls: this node's ``backward`` on the output gradient ``grad``."""
        return self.backward(self, grad)


class AccumulateGrad(Node):
    """Sink of a leaf tensor: sums the gradient into ``variable.grad`` and fires its hooks."""

    def __init__(self, variable):
        super().__init__()
        self.variable = variable

    def name(self) -> str:
        return "torch::autograd::AccumulateGrad"  # torch's name(); its repr says AccumulateGrad

    def __repr__(self) -> str:
        return f"<AccumulateGrad object at {id(self):#x}>"

    def accumulate(self, grad, owned: bool) -> None:
        """Add ``grad`` (an array) into ``variable.grad``; ``owned`` says it may be kept as is.

        A leaf whose ``.grad`` is None gets a new one: the memory a grad storage hook supplies
        (``Tensor.register_grad_storage_hook``: DDP's bucket slot), else ``grad`` itself when
        owned, else a copy. When ``grad`` *is* that memory (the node that produced it wrote
        there, ``claim_storage``) it is adopted with no copy. A leaf that has one accumulates
        into it in place.

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
            storage = grad_destination.claimed(self)  # handed out in this backward, or None
            if storage is None and var._grad_storage_hooks:
                storage = _provided_storage(var)
            if storage is None:
                var.grad = tensor_class(grad if owned else grad.copy())
            else:
                if grad is not storage:  # else the producing node wrote it there already
                    storage[...] = grad
                var.grad = tensor_class(storage)
        else:
            var.grad.array += grad
        for hook in tuple(var._post_accumulate_hooks.values()):
            hook(var)

    def claim_storage(self, shape: tuple, dtype):
        """The memory the leaf's gradient may be written into by the node that produces it
        (``Function.gradient_destination``; see ``grad_destination.py``), or None.

        Handed out once per backward, only when writing there gives what ``accumulate`` would:
        ``.grad`` is None, the leaf has no tensor hooks, and a grad storage hook supplies a
        contiguous array of ``shape`` and ``dtype``.
        """
        var = self.variable
        if var.grad is not None or var._grad_hooks or not var._grad_storage_hooks:
            return None
        if tuple(shape) != var.array.shape or dtype != var.array.dtype:
            return None

        def storage_of():
            storage = _provided_storage(var)
            return storage if storage is not None and storage.flags.c_contiguous else None

        return grad_destination.claim(self, storage_of)


def _provided_storage(var):
    """The array a grad storage hook of leaf ``var`` supplies for its new ``.grad``, or None
    (``Tensor.register_grad_storage_hook``: the most recently registered hook is asked first)."""
    for hook in reversed(tuple(var._grad_storage_hooks.values())):
        storage = hook(var)
        if storage is None:
            continue
        array = var.array
        if (type(storage) is not type(array) or storage.shape != array.shape
                or storage.dtype != array.dtype):
            raise RuntimeError(
                f"a grad storage hook returned a {type(storage).__name__} of shape "
                f"{tuple(storage.shape)} and dtype {storage.dtype} for a leaf of shape "
                f"{tuple(array.shape)} and dtype {array.dtype} ({type(array).__name__})")
        return storage
    return None


class Function(Node):
    """Base of every differentiable op of ddp; subclasses define ``forward`` and ``backward``.

    Array-level and internal: a subclass defined outside ddp (and its tests) is refused, since
    code written for torch means ``ddp.autograd.Function`` (tensors in and out) when it
    imports ``Function`` from ``torch.autograd.function``.
    """

    _saved: tuple | None = ()
    _had_saved = False
    needs_input_grad: tuple = ()
    backward_name: str | None = None  # torch's node name when it differs from <Class>Backward0
    storage_only = False  # True: moves elements without arithmetic, so runs on bfloat16 as is
    _widened: tuple | None = None  # per input: the 16-bit dtype widened to float32, or None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        module = cls.__module__ or ""
        if module.split(".")[0] != "ddp" and not module.startswith(("test", "_")):
            raise TypeError(
                f"{cls.__name__}: ddp.autograd.function.Function is ddp's internal op base "
                f"(arrays in and out); subclass ddp.autograd.Function (torch.autograd.Function) "
                f"for torch's contract, with tensors in forward and backward")

    def name(self) -> str:
        return self.backward_name or type(self).__name__ + "Backward0"

    def gradient_destination(self, index: int, shape: tuple, dtype):
        """Memory that ``backward`` may write input ``index``'s gradient into, or None.

        For a gradient of ``shape`` and ``dtype`` (what the op computes) going to a leaf whose
        new ``.grad`` lives in supplied memory (DDP's bucket slot): the backward computes into
        the returned array (e.g. ``kernels.matmul(a, b, out=dest)``) and returns that array
        itself, which the leaf adopts with no copy (``grad_destination.py`` has the rules).
        None: compute as usual. Call it at most once per input, from ``backward`` only.
        """
        edges = self.next_edges
        edge = edges[index] if index < len(edges) else None
        if type(edge) is not AccumulateGrad:
            return None
        return edge.claim_storage(shape, dtype)

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
        narrow = False
        for i, arg in enumerate(args):
            if isinstance(arg, tensor_class):
                array = arg.array
                if array.itemsize == 2 and type(array) is np.ndarray and array.dtype in _NARROW:
                    narrow = True
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
            if anomaly_mode.active:
                ctx.forward_trace = anomaly_mode.forward_trace()
        if narrow and not cls.storage_only:
            widened = tuple(a.dtype if type(a) is np.ndarray and a.dtype in _NARROW else None
                            for a in arrays)
            ctx._widened = widened
            arrays = [a if w is None else a.astype(np.float32)
                      for a, w in zip(arrays, widened, strict=True)]
            out = _narrow(cls.forward(ctx, *arrays, **kwargs),
                          next(w for w in widened if w is not None))
        else:
            out = cls.forward(ctx, *arrays, **kwargs)
        return tensor_class._from_op(out, None if needs is None else ctx)

    def run_backward(self, grad):
        if self._widened is None:
            return self.backward(self, grad)
        if grad.dtype in _NARROW:
            grad = grad.astype(np.float32)
        grads = self.backward(self, grad)
        if type(grads) is not tuple:
            return _narrow(grads, self._widened[0])
        return tuple(_narrow(g, w) for g, w in zip(grads, self._widened, strict=False))


class OutputSlot(Function):
    """The edge of output ``index`` of a node with several differentiable outputs (a custom
    ``autograd.Function``'s, ``split``'s): named like its owner, it hands the output's gradient
    to ``owner.receive(index, grad)`` and sends the owner a 0-d token, so that the engine runs
    the owner once, after every slot that received a gradient. ``returns_view``: the output
    shares the owner's input's memory (see ``Tensor._check_inplace``)."""

    def __init__(self, owner: Node, index: int, returns_view: bool = False):
        super().__init__()
        self.owner = owner
        self.index = index
        self.returns_view = returns_view
        self.next_edges = (owner,)

    def name(self) -> str:
        return self.owner.name()

    def __repr__(self) -> str:
        return repr(self.owner)

    @property
    def next_functions(self) -> tuple:
        return self.owner.next_functions

    def edge_pair(self) -> tuple:
        return (self.owner, self.index)

    @staticmethod
    def backward(ctx, grad):
        ctx.owner.receive(ctx.index, grad)
        return (get_array_module(grad).zeros((), dtype=grad.dtype),)


class FunctionCtx:
    """What ``forward``, ``setup_context`` and ``backward`` may call on ``ctx`` (torch's API)."""

    needs_input_grad: tuple = ()
    materialize_grads = True
    _non_differentiable: tuple = ()

    def save_for_backward(self, *tensors) -> None:
        """Keep ``tensors`` (or None) for backward, read back with ``ctx.saved_tensors``."""
        for i, t in enumerate(tensors):
            if t is not None and not isinstance(t, tensor_type.Tensor):
                raise TypeError(f"save_for_backward can only save variables, but argument {i} "
                                f"is of type {type(t).__name__}")
        self._saved = tensors
        self._had_saved = True

    def mark_non_differentiable(self, *tensors) -> None:
        """Outputs among ``tensors`` do not require grad; their gradient in backward is zero."""
        self._non_differentiable = self._non_differentiable + tensors

    def set_materialize_grads(self, value: bool) -> None:
        """False: backward receives None (not zeros) for outputs that got no gradient."""
        self.materialize_grads = bool(value)

    def mark_dirty(self, *tensors) -> None:
        raise NotImplementedError(
            "ddp.autograd.Function does not support ctx.mark_dirty (a forward that modifies "
            "its inputs in place): return a new tensor instead")


def once_differentiable(fn):
    """Mark a custom ``backward`` as not differentiable itself (torch's decorator).

    ddp never differentiates a backward (``create_graph=True`` is refused), so this only runs
    ``fn`` with grad mode off, which ``ddp.autograd.Function`` does for every backward anyway.
    """
    @functools.wraps(fn)
    def wrapper(ctx, *args):
        with no_grad():
            return fn(ctx, *args)

    return wrapper


# 16-bit floats of NumPy arrays: NumPy has no BLAS for them and sums them in their own
# precision, so ops compute on float32 copies and round the results back (CuPy's are native).
_NARROW = frozenset({dtypes.BFLOAT16, np.dtype(np.float16)})


def _narrow(array, dtype):
    """A float32 result of a widened op, rounded to ``dtype`` (None, or others, pass)."""
    if dtype is not None and array is not None and getattr(array, "dtype", None) == np.float32:
        return np.asarray(array).astype(dtype)
    return array


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
