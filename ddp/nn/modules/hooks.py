"""Module hooks: forward pre/post hooks (per module and global) and full backward hooks.

Forward hooks follow torch's contract: ``register_forward_pre_hook(hook, *, prepend,
with_kwargs)`` and ``register_forward_hook(hook, *, prepend, with_kwargs, always_call)``; the
global ``register_module_forward_(pre_)hook`` run for every module, before its own.

Full backward hooks (``register_full_backward_hook``, ``register_full_backward_pre_hook``) use
torch's mechanism, for one call of a module: the input tensor goes through an identity node on
its way in, the output through another on its way out. In backward the output's node sees
``grad_output`` first (pre-hooks may replace it); the input's node sees ``grad_input`` once the
whole module has been differentiated, calls ``hook(module, grad_input, grad_output)`` and passes
on what the hook returns. ``grad_input`` has one entry per positional argument, None for
non-tensors and for tensors that do not require grad; when no input requires grad the hooks run
at the output's node with ``grad_input`` all None (and torch's warning), as in torch.

ddp's limit, said here: the output must be one tensor and at most one positional input may
require grad (torch also takes tuples); other modules raise ``NotImplementedError`` naming the
module when a backward hook would run.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from ddp.autograd.function import Function
from ddp.autograd.grad_mode import is_grad_enabled
from ddp.tensor import Tensor
from ddp.utils.hooks import HookRegistry, RemovableHandle

# torch.nn.modules.module's global hooks: they run for every module, before its own hooks.
_global_forward_pre_hooks = HookRegistry()
_global_forward_hooks = HookRegistry()


def register_module_forward_pre_hook(hook: Callable) -> RemovableHandle:
    """``hook(module, args)`` runs before the ``forward`` of every module."""
    handle = RemovableHandle(_global_forward_pre_hooks)
    _global_forward_pre_hooks[handle.id] = hook
    return handle


def register_module_forward_hook(hook: Callable) -> RemovableHandle:
    """``hook(module, args, output)`` runs after the ``forward`` of every module."""
    handle = RemovableHandle(_global_forward_hooks)
    _global_forward_hooks[handle.id] = hook
    return handle


def any_global_forward_hooks() -> bool:
    """True when a global forward (pre-)hook is registered (``Module.__call__``'s fast path)."""
    return bool(_global_forward_pre_hooks or _global_forward_hooks)


class ModuleHooks:
    """The hook registries of ``nn.Module`` and the hooked call (``Module.__call__`` takes it
    when any hook is registered)."""

    def _init_hooks(self) -> None:
        object.__setattr__(self, "_forward_pre_hooks", OrderedDict())
        object.__setattr__(self, "_forward_hooks", OrderedDict())
        object.__setattr__(self, "_backward_hooks", OrderedDict())
        object.__setattr__(self, "_backward_pre_hooks", OrderedDict())
        # ids of the hooks registered with_kwargs / always_call (torch keeps the same sets)
        object.__setattr__(self, "_forward_pre_hooks_with_kwargs", {})
        object.__setattr__(self, "_forward_hooks_with_kwargs", {})
        object.__setattr__(self, "_forward_hooks_always_called", {})

    def _call_with_hooks(self, args: tuple, kwargs: dict):
        """torch's order: forward pre-hooks (global first), the input's backward hook point,
        forward, forward hooks (global first), the output's backward hook point. When any of
        it raises, the ``always_call`` forward hooks run (output None) before it propagates."""
        try:
            return self._hooked_forward(args, kwargs)
        except Exception:
            for hook_id, hook in tuple(self._forward_hooks.items()):
                if hook_id in self._forward_hooks_always_called:
                    self._run_forward_hook(hook_id, hook, args, kwargs, None)
            raise

    def _hooked_forward(self, args: tuple, kwargs: dict):
        for hook in _global_forward_pre_hooks.snapshot:
            args = _new_args(hook(self, args), args)
        for hook_id, hook in tuple(self._forward_pre_hooks.items()):
            if hook_id in self._forward_pre_hooks_with_kwargs:
                result = hook(self, args, kwargs)
                if result is not None:
                    if not (isinstance(result, tuple) and len(result) == 2):
                        raise RuntimeError(
                            "forward pre-hook must return None or a tuple of (new_args, "
                            f"new_kwargs), but got {result}.")
                    args, kwargs = result
            else:
                args = _new_args(hook(self, args), args)
        backward_hook = None
        if (self._backward_hooks or self._backward_pre_hooks) and is_grad_enabled():
            backward_hook = BackwardHook(self, tuple(self._backward_hooks.values()),
                                         tuple(self._backward_pre_hooks.values()))
            args = backward_hook.setup_input(args)
        output = self.forward(*args, **kwargs)
        for hook in _global_forward_hooks.snapshot:
            result = hook(self, args, output)
            if result is not None:
                output = result
        for hook_id, hook in tuple(self._forward_hooks.items()):
            result = self._run_forward_hook(hook_id, hook, args, kwargs, output)
            if result is not None:
                output = result
        if backward_hook is not None:
            output = backward_hook.setup_output(output)
        return output

    def _run_forward_hook(self, hook_id: int, hook: Callable, args: tuple, kwargs: dict,
                          output):
        if hook_id in self._forward_hooks_with_kwargs:
            return hook(self, args, kwargs, output)
        return hook(self, args, output)

    def register_forward_pre_hook(self, hook: Callable, *, prepend: bool = False,
                                  with_kwargs: bool = False) -> RemovableHandle:
        """``hook(module, args)`` runs before ``forward``; it may return new args (a tuple, or
        one value that becomes the only argument).

        Args:
            hook: the function; with ``with_kwargs`` it is ``hook(module, args, kwargs)`` and
                may return a tuple ``(new_args, new_kwargs)``.
            prepend: run before the hooks already registered (global hooks still run first).
            with_kwargs: pass the keyword arguments too.
        """
        handle = RemovableHandle(self._forward_pre_hooks)
        self._forward_pre_hooks[handle.id] = hook
        if with_kwargs:
            self._forward_pre_hooks_with_kwargs[handle.id] = True
        if prepend:
            self._forward_pre_hooks.move_to_end(handle.id, last=False)
        return handle

    def register_forward_hook(self, hook: Callable, *, prepend: bool = False,
                              with_kwargs: bool = False,
                              always_call: bool = False) -> RemovableHandle:
        """``hook(module, args, output)`` runs after ``forward``; it may return a new output.

        Args:
            hook: the function; with ``with_kwargs`` it is ``hook(module, args, kwargs, output)``.
            prepend: run before the hooks already registered (global hooks still run first).
            with_kwargs: pass the keyword arguments too.
            always_call: also run (with output None) when ``forward`` raises; the exception
                then propagates.
        """
        handle = RemovableHandle(self._forward_hooks)
        self._forward_hooks[handle.id] = hook
        if with_kwargs:
            self._forward_hooks_with_kwargs[handle.id] = True
        if always_call:
            self._forward_hooks_always_called[handle.id] = True
        if prepend:
            self._forward_hooks.move_to_end(handle.id, last=False)
        return handle

    def register_full_backward_pre_hook(self, hook: Callable,
                                        prepend: bool = False) -> RemovableHandle:
        """``hook(module, grad_output)`` runs when the gradient of the module's output is known;
        it may return a new ``grad_output`` (a tuple of one tensor). See the module docstring
        for the contract and ddp's limits (one output tensor)."""
        handle = RemovableHandle(self._backward_pre_hooks)
        self._backward_pre_hooks[handle.id] = hook
        if prepend:
            self._backward_pre_hooks.move_to_end(handle.id, last=False)
        return handle

    def register_full_backward_hook(self, hook: Callable,
                                    prepend: bool = False) -> RemovableHandle:
        """``hook(module, grad_input, grad_output)`` runs once the gradients with respect to the
        module's positional inputs are computed; it may return a new ``grad_input`` tuple (one
        entry per positional input). ``grad_input`` and ``grad_output`` are tuples; entries for
        non-tensors and inputs that need no gradient are None. ddp's limits (one output tensor,
        at most one input requiring grad) are in the module docstring."""
        handle = RemovableHandle(self._backward_hooks)
        self._backward_hooks[handle.id] = hook
        if prepend:
            self._backward_hooks.move_to_end(handle.id, last=False)
        return handle


def _new_args(result, args: tuple) -> tuple:
    """What a forward pre-hook's ``result`` makes of ``args`` (torch: a non-tuple is one arg)."""
    if result is None:
        return args
    return result if isinstance(result, tuple) else (result,)


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
