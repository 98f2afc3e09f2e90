"""Warnings for the silent mistakes between ``loss.backward()`` and ``optimizer.step()``.

Each of these trains without an error and quietly learns nothing, or the wrong thing:

1. **No gradient**: ``step()`` runs while one of the optimizer's parameters got no gradient
   from the backward passes since its last step: the loss does not depend on it, usually
   because its graph was cut (``.detach()``, ``.clone().detach()``, ``.data``, ``no_grad``).
2. **Accumulation across steps**: a parameter's ``.grad`` was used by one ``step()`` and never
   reset (``zero_grad()``) before the next backward added to it, so the next step applies the
   sum of several iterations' gradients.
3. **Foreign tensors**: the optimizer holds a tensor that is not a parameter of any model
   that ran forward: built from another model instance, or the parameter was replaced (e.g.
   ``layer.weight = nn.Parameter(layer.weight.to(...))``) after the optimizer was built, so the
   model never sees the updates.

They hook in through public hooks only: an autograd backward-start hook (the reachable leaves
of each backward), the global module forward pre-hook (which models run) and the global
optimizer step pre-hook (the checks). Nothing is installed while disabled. State is
per thread, so simulated ranks (threads backend) are checked independently.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
import weakref

from ddp.autograd import engine
from ddp.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from ddp.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

_handles: list = []
_local = threading.local()
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MAX_NAMED = 3  # parameters listed in one warning before "and N more"


class DDPDebugWarning(UserWarning):
    """Category of every ``ddp.debug`` warning (filter it with ``warnings.filterwarnings``)."""


class _ThreadState:
    def __init__(self) -> None:
        self.serial = 0  # number of backward passes run in this thread
        self.reached: dict[int, int] = {}  # id(leaf) -> serial of the last backward reaching it
        self.stepped: set[int] = set()  # ids of params whose grad a step used, not reset since
        self.accumulated: dict[int, int] = {}  # id(param) -> backwards added to a used grad
        self.forward_depth = 0
        self.step_depth = 0  # > 1 inside a step called by a step (ZeRO's wrapped optimizer)
        self.models: weakref.WeakSet = weakref.WeakSet()  # top-level modules run in forward
        self.last_step: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # opt -> serial


def _state() -> _ThreadState:
    state = getattr(_local, "state", None)
    if state is None:
        state = _local.state = _ThreadState()
    return state


def is_enabled() -> bool:
    """True while the diagnostics are installed."""
    return bool(_handles)


def enable() -> None:
    """Install the diagnostics (idempotent); ``DDP_DEBUG=1`` does this when ddp is imported."""
    if _handles:
        return
    _handles.extend([
        engine.register_backward_start_hook(_backward_start_hook),
        register_module_forward_pre_hook(_forward_pre_hook),
        register_module_forward_hook(_forward_hook),
        register_optimizer_step_pre_hook(_step_pre_hook),
        register_optimizer_step_post_hook(_step_post_hook),
    ])


def disable() -> None:
    """Remove the diagnostics and forget what this thread recorded."""
    while _handles:
        _handles.pop().remove()
    _local.state = None


# -------------------------------------------------------------------------------- recording
def _forward_pre_hook(module, args) -> None:
    state = _state()
    if state.forward_depth == 0:
        state.models.add(module)
    state.forward_depth += 1


def _forward_hook(module, args, output) -> None:
    state = _state()
    state.forward_depth = max(0, state.forward_depth - 1)


def _backward_start_hook(task) -> None:
    state = _state()
    state.forward_depth = 0  # a forward (or step) that raised never ran its post-hook
    state.step_depth = 0
    state.serial += 1
    for leaf in task.leaves:
        key = id(leaf)
        state.reached[key] = state.serial
        if key in state.stepped:
            state.stepped.discard(key)
            grad = leaf.grad
            if grad is not None and bool(grad.array.any()):
                state.accumulated[key] = state.accumulated.get(key, 0) + 1
        elif key in state.accumulated:
            state.accumulated[key] += 1


# ---------------------------------------------------------------------------------- checking
def _step_post_hook(optimizer, args, kwargs) -> None:
    state = _state()
    state.step_depth = max(0, state.step_depth - 1)


def _step_pre_hook(optimizer, args, kwargs) -> None:
    state = _state()
    state.step_depth += 1
    if state.step_depth > 1:
        return  # an optimizer that another one drives (ZeRO's inner AdamW on its shard)
    params = [(g, i, p) for g, group in enumerate(optimizer.param_groups)
              for i, p in enumerate(group["params"])]
    names = _parameter_names(state)
    opt_name = type(optimizer).__name__
    since = state.last_step.get(optimizer, 0)
    state.last_step[optimizer] = state.serial

    foreign = [(g, i, p) for g, i, p in params if names and id(p) not in names]
    if foreign:
        models = ", ".join(sorted({type(m).__name__ for m in state.models}))
        listed = _listing([f"param_groups[{g}]['params'][{i}] (shape {tuple(p.shape)})"
                           for g, i, p in foreign])
        _warn(f"{opt_name}.step(): the optimizer holds {len(foreign)} tensor(s) that are not "
              f"parameters of the model(s) that ran forward ({models}): {listed}. step() "
              f"updates tensors the model does not use. Was the optimizer built from another "
              f"model instance, or a parameter replaced (e.g. `layer.weight = "
              f"nn.Parameter(w.to(...))`) after the optimizer was built? Build the optimizer "
              f"from model.parameters() after the model is final (Module.to() moves in place).")
    foreign_ids = {id(p) for _, _, p in foreign}

    if state.serial > since:  # at least one backward since this optimizer's last step
        missing = [p for _, _, p in params
                   if p.requires_grad and id(p) not in foreign_ids
                   and state.reached.get(id(p), 0) <= since]
        if missing:
            stale = [p for p in missing if p.grad is not None]
            effect = ("step() reuses their stale .grad" if stale else
                      "step() skips them, so they never train")
            _warn(f"{opt_name}.step(): {_listing([_describe(p, names) for p in missing])} got "
                  f"no gradient from the backward() since the last step: the loss does not "
                  f"depend on them; {effect}. Was the graph cut by .detach(), "
                  f".clone().detach(), .data or torch.no_grad() on the way to the loss?")

    accumulating = [p for _, _, p in params if id(p) in state.accumulated]
    if accumulating:
        added = max(state.accumulated.pop(id(p)) for p in accumulating)
        listed = _listing([_describe(p, names) for p in accumulating])
        _warn(f"{opt_name}.step(): the gradient of {listed} was not reset since it was used "
              f"by the previous step(): "
              f"{added} more backward() added to it, so this step applies "
              f"the sum of several iterations' gradients. Call optimizer.zero_grad() once per "
              f"iteration (before backward), unless accumulating on purpose.")

    for _, _, p in params:
        if p.grad is not None:
            state.stepped.add(id(p))


def _parameter_names(state: _ThreadState) -> dict[int, str]:
    names: dict[int, str] = {}
    # The largest model first: a parameter is named by its path in the whole model.
    models = sorted(state.models, key=lambda m: -sum(1 for _ in m.parameters()))
    for model in models:
        prefix = type(model).__name__
        for name, p in model.named_parameters():
            names.setdefault(id(p), f"{prefix}.{name}")
    return names


def _describe(p, names: dict[int, str]) -> str:
    name = names.get(id(p))
    label = f"'{name}'" if name else "a parameter"
    return f"{label} (shape {tuple(p.shape)})"


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_NAMED])
    if len(items) > _MAX_NAMED:
        shown += f" and {len(items) - _MAX_NAMED} more"
    return shown


def _warn(message: str) -> None:
    """Warn at the first frame outside the ddp package (the user's ``step()`` call)."""
    level, frame = 2, sys._getframe(1)  # stacklevel 2 is the caller of _warn
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    warnings.warn(message, DDPDebugWarning, stacklevel=level)
