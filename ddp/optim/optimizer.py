"""``Optimizer``: the base of every optimizer, with torch's public contract.

An optimizer holds ``param_groups`` (a list of dicts: ``"params"`` plus one value per
hyperparameter, defaults filled in) and ``state`` (a dict keyed by parameter). Subclasses
implement ``step`` by collecting, per group, the parameters that have a gradient and handing
their arrays to a pure update function in :mod:`ddp.optim._functional`.

``state_dict()`` uses torch's layout: parameters are replaced by integer ids numbered across
groups in order, so a state dict saved by one process loads into an optimizer built over the
same parameters (in the same order) in another.
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from ddp import dtypes
from ddp.autograd.grad_mode import enable_grad, no_grad
from ddp.device import move_array
from ddp.tensor import Tensor
from ddp.utils.hooks import RemovableHandle


class _RequiredParameter:
    """Marks a hyperparameter that has no default (``lr`` of SGD in old torch)."""

    def __repr__(self) -> str:
        return "<required parameter>"


required = _RequiredParameter()

_SET_ORDER_MESSAGE = (
    "optimizer parameters need to be organized in ordered collections, but the "
    "ordering of tensors in sets will change between runs. Please use a list instead."
)

# torch.optim.optimizer's global hooks: they run for every optimizer, before its own hooks.
_global_step_pre_hooks: OrderedDict[int, Callable] = OrderedDict()
_global_step_post_hooks: OrderedDict[int, Callable] = OrderedDict()


def register_optimizer_step_pre_hook(hook: Callable) -> RemovableHandle:
    """Call ``hook(optimizer, args, kwargs)`` before the ``step`` of every optimizer."""
    handle = RemovableHandle(_global_step_pre_hooks)
    _global_step_pre_hooks[handle.id] = hook
    return handle


def register_optimizer_step_post_hook(hook: Callable) -> RemovableHandle:
    """Call ``hook(optimizer, args, kwargs)`` after the ``step`` of every optimizer."""
    handle = RemovableHandle(_global_step_post_hooks)
    _global_step_post_hooks[handle.id] = hook
    return handle


def _typename(obj: Any) -> str:
    cls = type(obj)
    return cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


class Optimizer:
    """Base class of all optimizers.

    Args:
        params: an iterable of Tensors, or of dicts each holding ``"params"`` and per-group
            hyperparameter overrides.
        defaults: the hyperparameters used by groups that do not set them.

    Raises:
        TypeError: ``params`` is a single Tensor or holds something other than leaf Tensors.
        ValueError: ``params`` is empty, or a parameter appears in two groups.
    """

    # Each tensor in a parameter's state has that parameter's shape (load_state_dict checks
    # it); False for optimizers whose state holds flat vectors over all parameters (LBFGS).
    state_shaped_like_params: bool = True

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], defaults: dict[str, Any]):
        self.defaults = defaults
        self.state: defaultdict[Tensor, dict[str, Any]] = defaultdict(dict)
        self.param_groups: list[dict[str, Any]] = []
        self._step_pre_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._step_post_hooks: OrderedDict[int, Callable] = OrderedDict()
        if isinstance(params, Tensor):
            raise TypeError(
                "params argument given to the optimizer should be an iterable of Tensors or "
                f"dicts, but got {_typename(params)}"
            )
        if isinstance(params, (set, frozenset)):
            # Set order follows object ids: it differs between runs and between ranks.
            raise TypeError(_SET_ORDER_MESSAGE)
        param_groups = list(params)
        if len(param_groups) == 0:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(param_groups[0], dict):
            param_groups = [{"params": param_groups}]
        for group in param_groups:
            self.add_param_group(group)

    def __init_subclass__(cls, **kwargs) -> None:
        # Every subclass's own ``step`` runs the step hooks, as torch's optimizers do.
        super().__init_subclass__(**kwargs)
        step = cls.__dict__.get("step")
        if step is not None and not getattr(step, "_runs_step_hooks", False):
            cls.step = _with_step_hooks(step)

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines.extend(f"    {key}: {group[key]}" for key in sorted(group) if key != "params")
        lines.append(")")
        return "\n".join(lines)

    # ------------------------------------------------------------------------------ groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group of parameters, filling hyperparameters it omits from ``defaults``.

        Raises:
            TypeError: a parameter is not a Tensor or not a leaf, or ``params`` is a set.
            ValueError: a parameter already belongs to another group, or a required
                hyperparameter is missing.
        """
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {_typename(param_group)}")
        if "params" not in param_group:
            raise KeyError(
                f"param_group must have a 'params' key, got keys {sorted(map(str, param_group))}"
            )
        params = param_group["params"]
        if isinstance(params, Tensor):
            param_group["params"] = [params]
        elif isinstance(params, (set, frozenset)):
            raise TypeError(_SET_ORDER_MESSAGE)
        else:
            param_group["params"] = list(params)
        for param in param_group["params"]:
            if not isinstance(param, Tensor):
                raise TypeError(
                    f"optimizer can only optimize Tensors, but one of the params is "
                    f"{_typename(param)}"
                )
            if not param.is_leaf:
                raise ValueError("can't optimize a non-leaf Tensor")
        for name, default in self.defaults.items():
            if default is required and name not in param_group:
                raise ValueError(
                    f"parameter group didn't specify a value of required optimization "
                    f"parameter {name}"
                )
            param_group.setdefault(name, default)
        ids = [id(p) for p in param_group["params"]]
        if len(set(ids)) != len(ids):
            warnings.warn(
                "optimizer contains a parameter group with duplicate parameters; in future, "
                "this will cause an error",
                stacklevel=3,
            )
        taken = {id(p) for group in self.param_groups for p in group["params"]}
        if taken.intersection(ids):
            raise ValueError("some parameters appear in more than one parameter group")
        self.param_groups.append(param_group)

    # -------------------------------------------------------------------------------- steps
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients of all parameters: drop them, or zero them in place."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    if p.grad.grad_fn is not None:
                        p.grad.detach_()
                    p.grad.array[...] = 0

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update the parameters once; subclasses implement it.

        Args:
            closure: re-evaluates the model and returns the loss; called under grad mode.

        Returns:
            The closure's loss, or None.
        """
        raise NotImplementedError

    def _run_closure(self, closure: Callable[[], Any] | None) -> Any:
        if closure is None:
            return None
        with enable_grad():
            return closure()

    def register_step_pre_hook(self, hook: Callable) -> RemovableHandle:
        """Call ``hook(optimizer, args, kwargs)`` before each ``step``.

        The hook may return ``(new_args, new_kwargs)`` to replace the step's arguments.
        """
        handle = RemovableHandle(self._step_pre_hooks)
        self._step_pre_hooks[handle.id] = hook
        return handle

    def register_step_post_hook(self, hook: Callable) -> RemovableHandle:
        """Call ``hook(optimizer, args, kwargs)`` after each ``step``."""
        handle = RemovableHandle(self._step_post_hooks)
        self._step_post_hooks[handle.id] = hook
        return handle

    # --------------------------------------------------------------------------- state dict
    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state in torch's layout: ``{"state": ..., "param_groups": ...}``.

        Parameters are replaced by integer ids numbered through the groups in order; ``state``
        maps those ids to the per-parameter state (which is referenced, not copied).
        """
        ids: dict[int, int] = {}
        packed_groups = []
        for group in self.param_groups:
            packed = {key: value for key, value in group.items() if key != "params"}
            for p in group["params"]:
                ids.setdefault(id(p), len(ids))
            packed["params"] = [ids[id(p)] for p in group["params"]]
            packed_groups.append(packed)
        packed_state = {
            (ids[id(p)] if isinstance(p, Tensor) else p): value
            for p, value in self.state.items()
        }
        return {"state": packed_state, "param_groups": packed_groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a ``state_dict()``: hyperparameters per group and state per parameter.

        State tensors are copied, floating ones cast to their parameter's dtype (except
        ``step``) and moved to its device.

        Raises:
            ValueError: the number of groups, or the size of a group, differs from this
                optimizer's.
        """
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= state_dict.keys():
            raise ValueError(
                "optimizer state dict must be a dict with keys 'state' and 'param_groups'"
            )
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"loaded state dict has a different number of parameter groups: "
                f"{len(saved_groups)} saved, {len(self.param_groups)} in this optimizer"
            )
        for i, (group, saved) in enumerate(zip(self.param_groups, saved_groups, strict=True)):
            if len(group["params"]) != len(saved["params"]):
                raise ValueError(
                    f"loaded state dict contains a parameter group that doesn't match the size "
                    f"of optimizer's group: group {i} has {len(saved['params'])} parameters "
                    f"saved and {len(group['params'])} here"
                )
        id_to_param = {
            saved_id: p
            for group, saved in zip(self.param_groups, saved_groups, strict=True)
            for saved_id, p in zip(saved["params"], group["params"], strict=True)
        }
        state: defaultdict[Any, dict[str, Any]] = defaultdict(dict)
        for key, value in state_dict["state"].items():
            param = id_to_param.get(key)
            if param is None:
                state[key] = copy.deepcopy(value)
            else:
                state[param] = {
                    name: _cast_state(param, name, item, key, self.state_shaped_like_params)
                    for name, item in value.items()
                }
        new_groups = []
        for group, saved in zip(self.param_groups, saved_groups, strict=True):
            new_group = {key: copy.deepcopy(value) for key, value in saved.items()
                         if key != "params"}
            new_group["params"] = group["params"]
            new_groups.append(new_group)
        self.state = state
        self.param_groups = new_groups


def _cast_state(param: Tensor, name: str, value: Any, saved_id: Any,
                shaped_like_param: bool = True) -> Any:
    """A copy of one state entry, placed like ``param`` (torch keeps ``step`` as saved);
    lists of tensors (LBFGS's history) entry by entry.

    Raises:
        ValueError: a non-scalar state tensor's shape differs from its parameter's, which
            would otherwise surface as a broadcasting error (or a silent broadcast) in step().
    """
    if isinstance(value, list):
        return [_cast_state(param, name, item, saved_id, shaped_like_param) for item in value]
    if not isinstance(value, Tensor):
        return copy.deepcopy(value)
    array = value.array
    # The parameter's array, not its shape: a fully sharded parameter's state has the shape
    # of its local rows, while its ``shape`` is the global one.
    if shaped_like_param and array.ndim and tuple(array.shape) != tuple(param.array.shape):
        raise ValueError(
            f"loaded optimizer state {name!r} of parameter {saved_id} has shape "
            f"{tuple(array.shape)}, but the parameter it maps to has shape "
            f"{tuple(param.array.shape)} "
            "(was the state dict saved from an optimizer over different parameters?)"
        )
    if name != "step":
        if dtypes.is_floating(array.dtype) and array.dtype != param.array.dtype:
            array = array.astype(param.array.dtype)
        array = move_array(array, param.device)
    return Tensor(array.copy())


def _with_step_hooks(step: Callable) -> Callable:
    @functools.wraps(step)
    def wrapper(self: Optimizer, *args, **kwargs):
        if self.__dict__.get("_in_step", False):  # a subclass's step calling super().step()
            return step(self, *args, **kwargs)
        self._in_step = True
        try:
            return _run_hooked(self, step, args, kwargs)
        finally:
            self._in_step = False

    wrapper._runs_step_hooks = True
    return wrapper


def _run_hooked(self: Optimizer, step: Callable, args: tuple, kwargs: dict) -> Any:
    """Pre-hooks, the step itself under ``no_grad``, post-hooks."""
    for hook in (*_global_step_pre_hooks.values(), *self._step_pre_hooks.values()):
        result = hook(self, args, kwargs)
        if result is not None:
            if not (isinstance(result, tuple) and len(result) == 2):
                raise RuntimeError(
                    f"optimizer step pre-hook must return None or a tuple of "
                    f"(new_args, new_kwargs), but got {result!r}"
                )
            args, kwargs = result
    with no_grad():
        out = step(self, *args, **kwargs)
    for hook in (*_global_step_post_hooks.values(), *self._step_post_hooks.values()):
        hook(self, args, kwargs)
    return out
