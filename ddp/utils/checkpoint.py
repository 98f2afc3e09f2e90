"""``ddp.utils.checkpoint``: activation checkpointing (``torch.utils.checkpoint.checkpoint``).

``checkpoint(fn, *args, use_reentrant=False)`` returns what ``fn(*args)`` returns, but keeps none
of ``fn``'s intermediate results for backward: backward runs ``fn`` again (with the random
generator state of the first run) and backpropagates through that recomputation. Gradients equal
those of the plain call; memory held between forward and backward is the inputs and outputs.

How: the first run records ``fn``'s graph only to learn its boundary, the leaves it reads
(parameters, inputs) and then drops it. One graph node per output tensor stands for the whole
segment, with one edge per boundary leaf, so the engine orders the leaves' ``AccumulateGrad``
(and DDP's hooks) exactly as without checkpointing. In backward, that node recomputes ``fn`` and
asks the engine for the gradients of the recomputed graph's boundary leaves (``engine.grad``,
torch's ``autograd.grad``), which returns them instead of accumulating them; the node hands them
to the outer backward, so DDP and ``.grad`` see one contribution, at the usual time.

Differences from torch, said here: ``use_reentrant=True`` takes the same path (torch's reentrant
variant gives parameters no gradient when no input requires grad; ddp gives them their
gradient). ``fn`` must not read a tensor that requires grad and was computed outside it (a
closure over an intermediate result): pass such tensors as arguments, or ``NotImplementedError``
says which. ``context_fn`` other than the default is not supported.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from ddp.autograd import engine
from ddp.autograd.function import AccumulateGrad, Function, Node
from ddp.autograd.grad_mode import enable_grad, is_grad_enabled
from ddp.random import get_rng_state, set_rng_state
from ddp.tensor import Tensor

__all__ = ["checkpoint", "checkpoint_sequential", "noop_context_fn"]


def noop_context_fn() -> tuple:
    """torch's default ``context_fn``: no contexts around the forward and the recomputation."""
    return _NullContext(), _NullContext()


class _NullContext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def checkpoint(function: Callable[..., Any], *args: Any, use_reentrant: bool | None = None,
               context_fn: Callable[[], tuple] = noop_context_fn,
               determinism_check: str = "default", debug: bool = False,
               early_stop: bool = True, **kwargs: Any) -> Any:
    """Run ``function(*args, **kwargs)`` without keeping its activations for backward.

    Args:
        function: the segment to checkpoint; it must compute the same thing when run again
            (same control flow and shapes; the random generator is replayed).
        *args: its positional arguments; tensors among them may require grad.
        use_reentrant: pass it explicitly, as torch asks (None warns with torch's message);
            both values take ddp's one implementation (see the module docstring).
        context_fn, determinism_check, debug, early_stop: torch's options; only the defaults
            of ``context_fn`` are supported, the others are accepted.
        **kwargs: ``preserve_rng_state`` (default True: the recomputation replays this thread's
            default generator); the rest go to ``function``.

    Returns:
        What ``function`` returns: a tensor or a tuple/list holding tensors and other values.

    Raises:
        NotImplementedError: a non-default ``context_fn``, or ``function`` reads a tensor that
            requires grad and was computed outside it.
        RuntimeError: in backward, the recomputation read other leaves or produced other
            shapes than the first run.
    """
    if use_reentrant is None:
        warnings.warn(
            "torch.utils.checkpoint: the use_reentrant parameter should be passed explicitly. "
            "use_reentrant=False is recommended; ddp runs both values the same way (see "
            "ddp.utils.checkpoint).", UserWarning, stacklevel=2)
    if context_fn is not noop_context_fn:
        raise NotImplementedError("checkpoint: ddp supports only the default context_fn")
    preserve_rng_state = kwargs.pop("preserve_rng_state", True)
    if not is_grad_enabled():
        return function(*args, **kwargs)
    segment = _Segment(function, args, kwargs, preserve_rng_state)
    return segment.run()


def checkpoint_sequential(functions, segments: int, input: Any,  # noqa: A002 - torch's name
                          use_reentrant: bool | None = None, **kwargs: Any) -> Any:
    """Run ``functions`` (an ``nn.Sequential`` or a list of callables) in ``segments`` pieces,
    checkpointing every piece but the last (torch's ``checkpoint_sequential``).

    Raises:
        ValueError: a keyword argument other than ``preserve_rng_state``.
    """
    preserve = kwargs.pop("preserve_rng_state", True)
    if kwargs:
        raise ValueError("Unexpected keyword arguments: " + ",".join(arg for arg in kwargs))
    if hasattr(functions, "children"):
        functions = list(functions.children())

    def run(start: int, end: int) -> Callable[[Any], Any]:
        def forward(x):
            for j in range(start, end + 1):
                x = functions[j](x)
            return x
        return forward

    size = len(functions) // segments
    end = -1
    for start in range(0, size * (segments - 1), size):
        end = start + size - 1
        input = checkpoint(run(start, end), input, use_reentrant=use_reentrant,
                           preserve_rng_state=preserve)
    return run(end + 1, len(functions) - 1)(input)


class _Segment:
    """One checkpointed call: what it needs to run again, and the nodes standing for it."""

    def __init__(self, function, args: tuple, kwargs: dict, preserve_rng_state: bool):
        self.function = function
        self.args = args
        self.kwargs = kwargs
        self.rng_state = get_rng_state() if preserve_rng_state else None
        self.boundary: list[Tensor] = []  # inputs first, then the leaves fn reads
        self.shapes: list[tuple] = []
        self.pending = 0  # output nodes whose backward has not run yet
        self.recomputed: tuple | None = None  # (detached inputs, output tensors) in backward

    def _call(self) -> tuple[list[Tensor], Any, int]:
        """Run ``function`` on detached inputs with grad mode on; return the detached inputs,
        its result and a node number below every node it creates."""
        detached = [a.detach().requires_grad_(a.requires_grad) if isinstance(a, Tensor) else a
                    for a in self.args]
        kwargs = {k: v.detach().requires_grad_(v.requires_grad) if isinstance(v, Tensor) else v
                  for k, v in self.kwargs.items()}
        inputs = [d for d in detached if isinstance(d, Tensor)] + [
            v for v in kwargs.values() if isinstance(v, Tensor)]
        start = Node().sequence_nr
        with enable_grad():
            result = self.function(*detached, **kwargs)
        return inputs, result, start

    def run(self) -> Any:
        inputs, result, start = self._call()
        originals = [a for a in self.args if isinstance(a, Tensor)] + [
            v for v in self.kwargs.values() if isinstance(v, Tensor)]
        outputs = _tensors_of(result)
        leaves = _boundary_leaves(outputs, start, inputs)
        by_input = {id(d): o for d, o in zip(inputs, originals, strict=True)}
        self.boundary = [by_input.get(id(leaf), leaf) for leaf in leaves]
        self.shapes = [tuple(t.shape) for t in outputs]
        if not any(t.requires_grad for t in outputs):
            return result
        wrapped = {}
        for index, tensor in enumerate(outputs):
            if tensor.requires_grad:
                self.pending += 1
                wrapped[id(tensor)] = _CheckpointOutput.apply(self, index, tensor.detach(),
                                                              *self.boundary)
            else:
                wrapped[id(tensor)] = tensor
        return _replace_tensors(result, wrapped)  # fn's graph is dropped with ``result``

    def backward(self, index: int, grad) -> tuple:
        """Gradients of the boundary leaves from output ``index``'s gradient ``grad``."""
        if self.recomputed is None:
            self.recomputed = self._recompute()
        leaves, outputs = self.recomputed
        self.pending -= 1
        last = self.pending <= 0
        wanted = [leaf for leaf in leaves if leaf.requires_grad]
        grads = engine.grad([outputs[index]], wanted, [Tensor(grad)], retain_graph=not last,
                            allow_unused=True)
        if last:
            self.recomputed = None
        by_leaf = {id(leaf): g for leaf, g in zip(wanted, grads, strict=True)}
        return tuple(None if by_leaf.get(id(leaf)) is None else by_leaf[id(leaf)].array
                     for leaf in leaves)

    def _recompute(self) -> tuple[list[Tensor], list[Tensor]]:
        saved = None
        if self.rng_state is not None:
            saved = get_rng_state()
            set_rng_state(self.rng_state)
        try:
            inputs, result, start = self._call()
        finally:
            if saved is not None:
                set_rng_state(saved)
        outputs = _tensors_of(result)
        shapes = [tuple(t.shape) for t in outputs]
        if shapes != self.shapes:
            raise RuntimeError(
                f"torch.utils.checkpoint: the recomputation returned tensors of shapes {shapes}, "
                f"the first run {self.shapes}; the checkpointed function must compute the same "
                "thing when run again")
        leaves = _boundary_leaves(outputs, start, inputs)
        n_inputs = len(inputs)
        first_leaves = self.boundary[n_inputs:]
        later = [leaf for leaf in leaves if not any(leaf is d for d in inputs)]
        if [id(t) for t in later] != [id(t) for t in first_leaves]:
            raise RuntimeError(
                "torch.utils.checkpoint: the recomputation read other tensors that require grad "
                f"({len(later)}) than the first run ({len(first_leaves)}); the checkpointed "
                "function must compute the same thing when run again")
        return inputs + later, outputs


def _boundary_leaves(outputs: list[Tensor], start: int, inputs: list[Tensor]) -> list[Tensor]:
    """The detached inputs (all of them, in order), then every other leaf requiring grad that
    the graph of ``outputs`` reads, in a fixed order (first reached, depth first)."""
    found: list[Tensor] = []
    seen_nodes: set[int] = set()
    stack = [t.grad_fn for t in reversed(outputs) if t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if type(node) is AccumulateGrad:
            found.append(node.variable)
            continue
        if node.sequence_nr < start:
            raise NotImplementedError(
                f"checkpoint: the function reads a tensor computed outside it that requires "
                f"grad (through {node.name()}); ddp's checkpoint needs such tensors passed as "
                "arguments")
        stack.extend(child for child in reversed(node.next_edges) if child is not None)
    input_ids = {id(d) for d in inputs}
    return list(inputs) + [leaf for leaf in _unique(found) if id(leaf) not in input_ids]


def _unique(tensors: list[Tensor]) -> list[Tensor]:
    seen: set[int] = set()
    out = []
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def _tensors_of(result: Any) -> list[Tensor]:
    if isinstance(result, Tensor):
        return [result]
    if isinstance(result, (tuple, list)):
        return [r for r in result if isinstance(r, Tensor)]
    return []


def _replace_tensors(result: Any, wrapped: dict) -> Any:
    if isinstance(result, Tensor):
        return wrapped[id(result)]
    if isinstance(result, (tuple, list)):
        items = [wrapped[id(r)] if isinstance(r, Tensor) else r for r in result]
        return type(result)(items) if type(result) in (tuple, list) else type(result)(*items)
    return result


class _CheckpointOutput(Function):
    """Output ``index`` of a checkpointed segment; its inputs are the segment's boundary."""

    backward_name = "CheckpointFunctionBackward"

    @staticmethod
    def forward(ctx, segment: _Segment, index: int, output, *boundary):
        ctx.segment = segment
        ctx.index = index
        return output

    @staticmethod
    def backward(ctx, grad):
        return (None, None, None, *ctx.segment.backward(ctx.index, grad))
