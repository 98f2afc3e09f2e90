"""Module backward hooks: ``register_full_backward_hook`` and ``register_full_backward_pre_hook``.

Torch's mechanism, for one call of a module: the input tensor goes through an identity node on
its way in, the output through another on its way out. In backward the output's node sees
``grad_output`` first (pre-hooks may replace it); the input's node sees ``grad_input`` once the
whole module has been differentiated, calls ``hook(module, grad_input, grad_output)`` and passes
on what the hook returns. ``grad_input`` has one entry per positional argument, None for
non-tensors and for tensors that do not require grad; when no input requires grad the hooks run
at the output's node with ``grad_input`` all None, as in torch.

ddp's limit, said here: the output must be one tensor and at most one positional input may
require grad (torch also takes tuples); other modules raise ``NotImplementedError`` naming the
module when a backward hook would run.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

from ddp.autograd.function import Function
from ddp.tensor import Tensor


class _HookPoint(Function):
    """Identity on the way forward; ``on_grad(grad) -> grad`` on the way back."""

    backward_name = "BackwardHookFunctionBackward"

    @staticmethod
    def forward(ctx, array, on_grad: Callable):
        ctx.on_grad = on_grad
        return array

    @staticmethod
    def backward(ctx, grad):
        return ctx.on_grad(grad), None


class BackwardHook:
    """The backward hooks of one module call (torch's ``torch.utils.hooks.BackwardHook``).

    Args:
        module: the module being called (the hooks' first argument).
        hooks: ``hook(module, grad_input, grad_output) -> tuple | None`` in order.
        pre_hooks: ``hook(module, grad_output) -> tuple | None`` in order.
    """

    def __init__(self, module, hooks: Sequence[Callable], pre_hooks: Sequence[Callable]):
        self.module = module
        self.hooks = tuple(hooks)
        self.pre_hooks = tuple(pre_hooks)
        self.n_args = 0
        self.input_index: int | None = None
        self.grad_output: tuple | None = None

    def setup_input(self, args: tuple) -> tuple:
        """``args`` with the tensor that requires grad routed through the input's hook point."""
        self.n_args = len(args)
        wanting = [i for i, a in enumerate(args) if isinstance(a, Tensor) and a.requires_grad]
        if len(wanting) > 1:
            raise NotImplementedError(
                f"{type(self.module).__name__}: ddp's full backward hooks support modules with "
                f"at most one positional input that requires grad, got {len(wanting)} (positions "
                f"{wanting})")
        if not wanting:
            return args
        self.input_index = index = wanting[0]
        routed = _HookPoint.apply(args[index], self._on_grad_input)
        return (*args[:index], routed, *args[index + 1:])

    def setup_output(self, output: Any) -> Any:
        """``output`` routed through the output's hook point (unchanged if it needs no grad)."""
        if not isinstance(output, Tensor):
            if isinstance(output, (tuple, list)) and not any(
                    isinstance(o, Tensor) and o.requires_grad for o in output):
                return output
            raise NotImplementedError(
                f"{type(self.module).__name__}: ddp's full backward hooks support modules whose "
                f"output is one tensor, got {type(output).__name__}")
        if not output.requires_grad:
            return output
        return _HookPoint.apply(output, self._on_grad_output)

    def _on_grad_output(self, grad):
        grad_output: tuple = (Tensor(grad),)
        for hook in self.pre_hooks:
            result = hook(self.module, grad_output)
            if result is not None:
                grad_output = _checked(result, 1, "Backward pre hook", "grad_output")
        self.grad_output = grad_output
        if self.input_index is None and self.hooks:
            warnings.warn(
                "Full backward hook is firing when gradients are computed with respect to module "
                "outputs since no inputs require gradients. See https://docs.pytorch.org/docs/"
                "main/generated/torch.nn.Module.html#torch.nn.Module.register_full_backward_hook"
                " for more details.", UserWarning, stacklevel=2)
            none = (None,) * self.n_args
            for hook in self.hooks:
                result = hook(self.module, none, grad_output)
                if result is not None and any(r is not None for r in _as_tuple(result)):
                    raise RuntimeError(
                        "Backward hook for Modules where no input requires gradient should "
                        "always return None or None for all gradients.")
        return _array_or_none(grad_output[0])

    def _on_grad_input(self, grad):
        grad_input = tuple(Tensor(grad) if i == self.input_index else None
                           for i in range(self.n_args))
        for hook in self.hooks:
            result = hook(self.module, grad_input, self.grad_output)
            if result is not None:
                grad_input = _checked(result, self.n_args, "Backward hook", "grad_input")
        return _array_or_none(grad_input[self.input_index])


def _as_tuple(result: Any) -> tuple:
    return (result,) if isinstance(result, Tensor) or result is None else tuple(result)


def _checked(result: Any, expected: int, who: str, what: str) -> tuple:
    values = _as_tuple(result)
    if len(values) != expected:
        raise RuntimeError(
            f"{who} returned an invalid number of {what}, got {len(values)}, but expected "
            f"{expected}")
    for value in values:
        if value is not None and not isinstance(value, Tensor):
            raise TypeError(f"{who} must return Tensors or None in {what}, got "
                            f"{type(value).__name__}")
    return values


def _array_or_none(value: Tensor | None):
    return None if value is None else value.array
