"""``GradScaler``: dynamic loss scaling for float16 training, torch's ``torch.amp.GradScaler``.

float16 gradients underflow to zero below ~6e-8; scaling the loss by ``S`` (65536 at first)
scales every gradient by ``S`` too. Before the step the gradients are divided by ``S`` again
(``unscale_``) and checked: if any is inf or NaN the step is skipped and ``S`` halves
(``backoff_factor``); after ``growth_interval`` clean steps ``S`` doubles (``growth_factor``).

Distributed: every rank must skip or step together. Under DDP the averaged gradients are equal
on every rank already; still, when a process group is initialised, ``unscale_`` all-reduces the
found-inf flag (MAX) over the default group, so ``step`` is a collective there. An optimizer
that holds only a shard of the gradients (``ZeroRedundancyOptimizer``) unscales and checks its
shard itself (``unscale_grads_``, a collective) and the flag it returns is already global.

Beyond torch: a skipped step logs one line (logger ``ddp.nonfinite``, WARNING, rank 0 only)
naming the first parameter with a non-finite gradient, the rank and micro-batch where it
appeared, the ranks that had one, and the last loss scales. The found-inf all-reduce carries
this (``ddp/distributed/nonfinite.py``), so it is still one tiny collective. Parameter names,
the source rank and the micro-batch need ``scaler.track_nonfinite(model)``; without it the line
names ``param_groups[g][i]`` and the ranks where the averaged gradient was non-finite.
"""

from __future__ import annotations

import collections
import enum
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from ddp import dtypes
from ddp.autograd.grad_mode import no_grad
from ddp.backend import get_array_module
from ddp.distributed import api, nonfinite
from ddp.tensor import Tensor


class _Stage(enum.Enum):
    READY = 0
    UNSCALED = 1
    STEPPED = 2


class GradScaler:
    """Scale the loss, unscale and check the gradients, skip steps that overflowed.

    Args:
        device: accepted as in torch (``"cuda"``, ``"cpu"``); the scale lives on the host.
        init_scale: the first scale factor.
        growth_factor: multiplies the scale after ``growth_interval`` steps without inf/NaN.
        backoff_factor: multiplies the scale when a step is skipped.
        growth_interval: clean steps between growths.
        enabled: False makes every method a pass-through (``step`` just steps).

    Example::

        scaler = ddp.amp.GradScaler()
        scaler.scale(loss).backward()
        scaler.step(optimizer)      # skipped when a gradient is inf/NaN
        scaler.update()
    """

    def __init__(self, device: str = "cuda", init_scale: float = 2.0**16,
                 growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, enabled: bool = True):
        if growth_factor <= 1.0:
            raise ValueError("The growth factor must be > 1.0.")
        if backoff_factor >= 1.0:
            raise ValueError("The backoff factor must be < 1.0.")
        self._device = device
        self._enabled = enabled
        self._scale = np.float32(init_scale)
        self._growth_factor = float(growth_factor)
        self._backoff_factor = float(backoff_factor)
        self._growth_interval = int(growth_interval)
        self._growth_tracker = 0
        self._per_optimizer: dict[int, dict[str, Any]] = {}
        self._micro_batches = 0  # scale() calls since the last update(): the micro-batch index
        self._updates = 0
        self._scale_history: collections.deque = collections.deque(maxlen=8)
        self._names: dict[int, str] = {}
        self._local_first: tuple[int, int] | None = None  # (id(param), micro-batch)
        self._tracking_handles: list = []

    # --------------------------------------------------------------- non-finite tracking
    def track_nonfinite(self, model) -> None:
        """ddp extension: name ``model``'s parameters in skip reports and find the source.

        Registers a gradient hook on every parameter of ``model`` (a ``Module``, or a
        ``DistributedDataParallel``, whose ``module`` is named) that checks each backward's
        gradient contribution before it is accumulated or averaged, so a skipped step's line
        names the parameter (``blocks.3.attn.c_proj.weight``), the rank and the micro-batch
        where the first inf/NaN appeared. Costs one ``isfinite`` pass over every gradient per
        backward (until the first hit of a step) and a copy where the engine would adopt the
        gradient array. Call again to re-register; ``untrack_nonfinite()`` removes the hooks.
        """
        self.untrack_nonfinite()
        module = getattr(model, "module", model)
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            self._names[id(p)] = name
            self._tracking_handles.append(p.register_hook(self._checker(id(p))))

    def untrack_nonfinite(self) -> None:
        """Remove the hooks of :meth:`track_nonfinite` (names are forgotten too)."""
        for handle in self._tracking_handles:
            handle.remove()
        self._tracking_handles = []
        self._names = {}

    def _checker(self, key: int):
        def check(grad):
            if self._local_first is None and nonfinite.first_nonfinite([grad.array]) == 0:
                self._local_first = (key, max(self._micro_batches - 1, 0))
            return None

        return check

    # ----------------------------------------------------------------------------- scaling
    def scale(self, outputs):
        """``outputs`` (a Tensor or an iterable of them) multiplied by the current scale."""
        if not self._enabled:
            return outputs
        self._micro_batches += 1
        return self._scaled(outputs)

    def _scaled(self, outputs):
        if isinstance(outputs, Tensor):
            return outputs * float(self._scale)
        if isinstance(outputs, Iterable):
            scaled = [self._scaled(o) for o in outputs]
            return type(outputs)(scaled) if isinstance(outputs, (list, tuple)) else scaled
        raise ValueError("outputs must be a Tensor or an iterable of Tensors")

    def unscale_(self, optimizer) -> None:
        """Divide ``optimizer``'s gradients by the scale, in place, and record inf/NaN.

        Optional before ``step`` (e.g. to clip gradients at their true size); at most once per
        optimizer between ``update`` calls. A collective when a process group is initialised.

        Raises:
            RuntimeError: called twice since ``update()``, or after ``step()``.
            ValueError: a gradient is float16 (keep master weights in float32).
        """
        if not self._enabled:
            return
        state = self._state(optimizer)
        if state["stage"] is _Stage.UNSCALED:
            raise RuntimeError(
                "unscale_() has already been called on this optimizer since the last update().")
        if state["stage"] is _Stage.STEPPED:
            raise RuntimeError("unscale_() is being called after step().")
        inv_scale = np.float32(np.float64(1.0) / np.float64(self._scale))
        distributed = api.is_initialized() and api.get_world_size() > 1
        group = api.resolve_group(None) if distributed else None
        census = nonfinite.NonfiniteCensus(group.rank() if group else 0,
                                           group.size() if group else 1)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if self._local_first is not None:
            key, micro = self._local_first
            index = next((i for i, p in enumerate(params) if id(p) == key), None)
            census.mark(index, micro, nonfinite.LOCAL)
        unscale_shard = getattr(optimizer, "unscale_grads_", None)
        if unscale_shard is not None:  # a sharded optimizer reduces the census on its group
            found_inf = bool(unscale_shard(float(inv_scale), census=census))
        else:
            census.mark(_unscale_grads(optimizer, inv_scale), None, nonfinite.REDUCED)
            census.allreduce(group)
            found_inf = census.found()
        state["found_inf"] = found_inf
        state["census"] = census
        state["stage"] = _Stage.UNSCALED

    def step(self, optimizer, *args, **kwargs):
        """``optimizer.step(*args, **kwargs)`` unless a gradient was inf/NaN (then skipped).

        Unscales first if ``unscale_`` was not called. Returns what ``step`` returned, or None
        when skipped.

        Raises:
            RuntimeError: a ``closure`` is passed, or ``step`` was already called since
                ``update()``.
        """
        if not self._enabled:
            return optimizer.step(*args, **kwargs)
        if "closure" in kwargs:
            raise RuntimeError(
                "Closure use is not currently supported if GradScaler is enabled.")
        state = self._state(optimizer)
        if state["stage"] is _Stage.STEPPED:
            raise RuntimeError("step() has already been called since the last update().")
        if state["stage"] is _Stage.READY:
            self.unscale_(optimizer)
        if state["found_inf"]:
            self._report_skip(optimizer, state["census"])
            result = None
        else:
            result = optimizer.step(*args, **kwargs)
        state["stage"] = _Stage.STEPPED
        return result

    def _report_skip(self, optimizer, census: nonfinite.NonfiniteCensus) -> None:
        """One line on rank 0: where the non-finite gradient came from, the last scales."""
        if not census.entries():
            return
        label = nonfinite.param_label(optimizer.param_groups, self._names)
        where = nonfinite.describe(census, label, self._micro_batches or None)
        history = ", ".join(f"{s:g}" for s in (*self._scale_history, float(self._scale)))
        nonfinite.report(census.rank, f"GradScaler: skipped step {self._updates}: non-finite "
                                      f"gradient {where}; loss scale (last "
                                      f"{len(self._scale_history) + 1}, oldest first): "
                                      f"{history}")

    def update(self, new_scale: float | Tensor | None = None) -> None:
        """Set the next scale: ``new_scale`` if given, else back off (some optimizer skipped
        its step) or grow (``growth_interval`` clean steps in a row).

        Raises:
            RuntimeError: no optimizer was stepped or unscaled since the last update.
            ValueError: ``new_scale`` is neither a float nor a one-element float32 tensor.
        """
        if not self._enabled:
            return
        self._scale_history.append(float(self._scale))
        self._updates += 1
        self._micro_batches = 0
        self._local_first = None
        if new_scale is not None:
            if isinstance(new_scale, Tensor):
                if new_scale.numel() != 1 or new_scale.dtype != dtypes.float32 or \
                        new_scale.requires_grad:
                    raise ValueError("new_scale should be a float or a 1-element "
                                     "torch.FloatTensor with requires_grad=False.")
                new_scale = float(new_scale.item())
            self._scale = np.float32(new_scale)
        else:
            recorded = [s["found_inf"] for s in self._per_optimizer.values()
                        if "found_inf" in s]
            if not recorded:
                raise RuntimeError("No inf checks were recorded prior to update.")
            if any(recorded):
                self._scale = np.float32(self._scale * np.float32(self._backoff_factor))
                self._growth_tracker = 0
            else:
                self._growth_tracker += 1
                if self._growth_tracker == self._growth_interval:
                    grown = np.float32(self._scale * np.float32(self._growth_factor))
                    if math.isfinite(grown):
                        self._scale = grown
                    self._growth_tracker = 0
        self._per_optimizer = {}

    def _state(self, optimizer) -> dict[str, Any]:
        return self._per_optimizer.setdefault(id(optimizer), {"stage": _Stage.READY})

    # --------------------------------------------------------------------------- accessors
    def is_enabled(self) -> bool:
        return self._enabled

    def get_scale(self) -> float:
        """The current scale (1.0 when disabled)."""
        return float(self._scale) if self._enabled else 1.0

    def get_growth_factor(self) -> float:
        return self._growth_factor

    def set_growth_factor(self, new_factor: float) -> None:
        self._growth_factor = float(new_factor)

    def get_backoff_factor(self) -> float:
        return self._backoff_factor

    def set_backoff_factor(self, new_factor: float) -> None:
        self._backoff_factor = float(new_factor)

    def get_growth_interval(self) -> int:
        return self._growth_interval

    def set_growth_interval(self, new_interval: int) -> None:
        self._growth_interval = int(new_interval)

    def state_dict(self) -> dict[str, Any]:
        """torch's keys: scale, growth_factor, backoff_factor, growth_interval,
        _growth_tracker (empty when disabled)."""
        if not self._enabled:
            return {}
        return {"scale": self.get_scale(), "growth_factor": self._growth_factor,
                "backoff_factor": self._backoff_factor,
                "growth_interval": self._growth_interval,
                "_growth_tracker": self._growth_tracker}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load what ``state_dict()`` returned (here or from torch's GradScaler).

        Raises:
            RuntimeError: the state dict is empty (saved from a disabled scaler).
        """
        if not self._enabled:
            return
        if len(state_dict) == 0:
            raise RuntimeError("The source state dict is empty, possibly because it was saved "
                               "from a disabled instance of GradScaler.")
        self._scale = np.float32(state_dict["scale"])
        self._growth_factor = float(state_dict["growth_factor"])
        self._backoff_factor = float(state_dict["backoff_factor"])
        self._growth_interval = int(state_dict["growth_interval"])
        self._growth_tracker = int(state_dict["_growth_tracker"])


def _unscale_grads(optimizer, inv_scale: np.float32) -> int | None:
    """Multiply every gradient of ``optimizer`` by ``inv_scale``; the index (``param_groups``
    order) of the first one holding inf/NaN, or None."""
    first = None
    with no_grad():
        index = -1
        for group in optimizer.param_groups:
            for p in group["params"]:
                index += 1
                if p.grad is None:
                    continue
                grad = p.grad.array
                if grad.dtype == np.float16:
                    raise ValueError("Attempting to unscale FP16 gradients.")
                xp = get_array_module(grad)
                grad *= inv_scale.astype(grad.dtype)
                if first is None and not bool(xp.isfinite(grad).all()):
                    first = index
    return first
