"""torch's ``autograd.Function``: custom differentiable functions written with tensors.

The contract is torch's (the tutorial's custom ReLU runs unchanged)::

    class MyReLU(ddp.autograd.Function):
        @staticmethod
        def forward(ctx, input):                # tensors (and plain values) in, grad mode off
            ctx.save_for_backward(input)
            return input.clamp(min=0)           # a tensor or a tuple of them out

        @staticmethod
        def backward(ctx, grad_output):         # one gradient tensor per output in,
            input, = ctx.saved_tensors          # one tensor or None per forward input out
            grad_input = grad_output.clone()
            grad_input[input < 0] = 0
            return grad_input

    y = MyReLU.apply(x)                         # y.grad_fn.name() == "MyReLUBackward"

As in torch, ``ctx`` is the graph node: an instance of ``<Name>Backward``, a class made for each
subclass, which plugs into the engine's array-level node (``function.Function``). Forward runs
under ``no_grad``; so does backward (ddp never builds a graph of a backward). The ctx offers
``save_for_backward``/``saved_tensors``, ``needs_input_grad``, ``mark_non_differentiable`` and
``set_materialize_grads``; ``setup_context`` (forward without ctx) works too. ``mark_dirty``
(in-place custom functions) is not supported and says so.

A function with several differentiable outputs gives each one its own edge node (a
``function.OutputSlot``, named like its owner): the slots hand their gradients to the owner,
which runs the user's backward once with all of them.
"""

from __future__ import annotations

import numpy as np

from ddp import dtypes
from ddp.autograd import anomaly_mode, function, tensor_type
from ddp.autograd.grad_mode import is_grad_enabled, no_grad
from ddp.backend import get_array_module


class BackwardCFunction(function.FunctionCtx, function.Function):
    """The ctx and graph node of one call of a custom ``Function`` (torch's name)."""

    _forward_cls: type  # the user's Function subclass, set on each generated subclass
    _pending: list | None = None  # multi-output: gradients handed over by the slots

    def name(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        return f"<torch.autograd.function.{self.name()} object at {id(self):#x}>"  # as torch

    def _configure(self, args: tuple, record: bool) -> None:
        """Set ``needs_input_grad`` (one per argument) and the edges (one per tensor input)."""
        tensor_class = tensor_type.Tensor
        needs, edges, positions, meta = [], [], [], []
        for i, arg in enumerate(args):
            is_tensor = isinstance(arg, tensor_class)
            need = record and is_tensor and arg._requires_grad
            needs.append(need)
            if is_tensor:
                positions.append(i)
                edges.append(arg._gradient_edge() if need else None)
                meta.append((arg.array.shape, arg.array.dtype) if need else None)
        self.needs_input_grad = tuple(needs)
        self.next_edges = tuple(edges)
        self._tensor_positions = tuple(positions)
        self._input_meta = tuple(meta)

    def _wrap_outputs(self, outputs: tuple) -> tuple:
        """Outputs as tensors of this node; non-differentiable ones stay outside the graph."""
        tensor_class = tensor_type.Tensor
        marked = {id(t) for t in self._non_differentiable}
        wrapped, differentiable = [], []
        for k, out in enumerate(outputs):
            if not isinstance(out, tensor_class):
                wrapped.append(out)
                continue
            if id(out) in marked or not dtypes.is_inexact(out.array.dtype):
                wrapped.append(tensor_class._from_op(out.array, None))
                continue
            differentiable.append(k)
            wrapped.append(out)
        self._output_meta = tuple(
            (o.array.shape, o.array.dtype) if isinstance(o, tensor_class) else None
            for o in outputs)
        self._differentiable = tuple(differentiable)
        if not differentiable:
            return tuple(wrapped)
        if len(differentiable) == 1:
            k = differentiable[0]
            wrapped[k] = tensor_class._from_op(outputs[k].array, self)
        else:
            self._pending = [None] * len(outputs)
            for k in differentiable:
                wrapped[k] = tensor_class._from_op(outputs[k].array, function.OutputSlot(self, k))
        return tuple(wrapped)

    def receive(self, index: int, grad) -> None:
        """Called by output ``index``'s slot during backward, before this node runs."""
        self._pending[index] = grad

    @staticmethod
    def backward(ctx, grad):
        """The engine's call: arrays in, one array (or None) per tensor input out."""
        if ctx._pending is None:
            grads = [None] * len(ctx._output_meta)
            grads[ctx._differentiable[0]] = grad
        else:
            grads, ctx._pending = ctx._pending, [None] * len(ctx._output_meta)
        xp = get_array_module(next(g for g in grads if g is not None))
        tensor_class = tensor_type.Tensor
        inputs = []
        for g, meta in zip(grads, ctx._output_meta, strict=True):
            if g is None and meta is not None and ctx.materialize_grads:
                g = xp.zeros(meta[0], dtype=meta[1])
            inputs.append(None if g is None else tensor_class._from_op(g, None))
        with no_grad():
            result = ctx._forward_cls.backward(ctx, *inputs)
        return ctx._unpack_gradients(result)

    def _unpack_gradients(self, result) -> tuple:
        """Check the user's gradients against the inputs and return their arrays."""
        tensor_class = tensor_type.Tensor
        if not isinstance(result, tuple):
            result = (result,)
        n_inputs = len(self.needs_input_grad)
        if len(result) < n_inputs or any(g is not None for g in result[n_inputs:]):
            raise RuntimeError(f"function {self.name()} returned an incorrect number of "
                               f"gradients (expected {n_inputs}, got {len(result)})")
        arrays = []
        for i, g in enumerate(result[:n_inputs]):
            if g is not None and not isinstance(g, tensor_class):
                raise TypeError(f"function {self.name()} returned a gradient of type "
                                f"{type(g).__name__} at position {i}: expected a Tensor or None")
            if i not in self._tensor_positions:
                if g is not None:
                    raise RuntimeError(
                        f"function {self.name()} returned a gradient different than None at "
                        f"position {i + 1}, but the corresponding forward input was not a "
                        f"Variable")
                continue
            meta = self._input_meta[self._tensor_positions.index(i)]
            if g is None or meta is None:
                arrays.append(None)
                continue
            arrays.append(self._fit(g.array, meta, i))
        return tuple(arrays)

    def _fit(self, grad, meta: tuple, i: int):
        """``grad`` summed down to the input's shape where it broadcasts, in its dtype."""
        shape, dtype = tuple(meta[0]), meta[1]
        if tuple(grad.shape) != shape:
            try:
                broadcast = np.broadcast_shapes(shape, tuple(grad.shape))
            except ValueError:
                broadcast = None
            if broadcast != tuple(grad.shape):
                raise RuntimeError(
                    f"Function {self.name()} returned an invalid gradient at index {i} - got "
                    f"{list(grad.shape)} but expected shape compatible with {list(shape)}")
            lead = grad.ndim - len(shape)
            stretched = tuple(lead + d for d, n in enumerate(shape) if n == 1 and
                              grad.shape[lead + d] != 1)
            grad = grad.sum(axis=tuple(range(lead)) + stretched, keepdims=True).reshape(shape)
        if grad.dtype != dtype:
            grad = grad.astype(dtype)
        return grad




class Function:
    """Base of custom differentiable functions with torch's contract (see the module doc).

    Subclasses define static ``forward(ctx, *args)`` and ``backward(ctx, *grad_outputs)`` (or
    ``forward(*args)`` plus ``setup_context(ctx, inputs, output)``) and are called through
    ``apply``; they are never instantiated.
    """

    _backward_cls: type

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # torch's FunctionMeta: each Function gets the node class its calls are recorded as.
        cls._backward_cls = type(cls.__name__ + "Backward", (BackwardCFunction,),
                                 {"_forward_cls": cls, "__module__": __name__})

    def __call__(self, *args, **kwargs):
        raise RuntimeError(
            "Legacy autograd function with non-static forward method is deprecated. Please use "
            f"new-style autograd function with static forward method (call "
            f"{type(self).__name__}.apply(...))")

    @staticmethod
    def forward(ctx, *args, **kwargs):
        raise NotImplementedError("You must implement the forward function for custom "
                                  "autograd.Function.")

    @staticmethod
    def setup_context(ctx, inputs: tuple, output) -> None:
        raise NotImplementedError("setup_context is not implemented.")

    @staticmethod
    def backward(ctx, *grad_outputs):
        raise NotImplementedError("You must implement either the backward or vjp method for "
                                  "your custom autograd.Function to use it with backward "
                                  "mode AD.")

    @classmethod
    def apply(cls, *args, **kwargs):
        """Run ``forward`` (grad mode off) and record one node when an input requires grad."""
        if cls is Function:
            raise RuntimeError("apply() is called on a subclass of ddp.autograd.Function")
        ctx = cls._backward_cls()
        record = is_grad_enabled()
        ctx._configure(args, record)
        with no_grad():
            if cls.setup_context is not Function.setup_context:
                output = cls.forward(*args, **kwargs)
                cls.setup_context(ctx, args, output)
            else:
                output = cls.forward(ctx, *args, **kwargs)
        if not record or not any(ctx.needs_input_grad):
            return output
        if anomaly_mode.active:
            ctx.forward_trace = anomaly_mode.forward_trace()
        is_tuple = isinstance(output, tuple)
        wrapped = ctx._wrap_outputs(output if is_tuple else (output,))
        return wrapped if is_tuple else wrapped[0]
