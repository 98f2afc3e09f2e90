"""``RMSprop``: gradients scaled by a running root mean square (Hinton), optionally centered
and with momentum."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from ddp.backend import get_array_module
from ddp.optim import _functional_adaptive
from ddp.optim.optimizer import Optimizer
from ddp.tensor import Tensor


class RMSprop(Optimizer):
    """RMSprop, torch's update rule exactly.

    Per parameter, with ``g = grad (+ weight_decay * p)``: ``v = alpha * v + (1 - alpha) * g^2``;
    centered: ``m = lerp(m, g, 1 - alpha)`` and ``v - m^2`` in place of ``v``;
    ``d = sqrt(v) + eps``; with momentum ``b = momentum * b + g / d``, ``p -= lr * b``, else
    ``p -= lr * g / d``. State per parameter: ``step`` (0-d float32 tensor), ``square_avg``,
    ``momentum_buffer`` (``momentum > 0``) and ``grad_avg`` (``centered``).

    Args:
        params: tensors to optimize, or dicts defining parameter groups.
        lr: learning rate.
        alpha: smoothing constant of the running average of ``g^2``.
        eps: added to the denominator for numerical stability.
        weight_decay: L2 penalty added to the gradient.
        momentum: momentum factor; 0 keeps no buffer.
        centered: normalise by an estimate of the gradient's variance.
        maximize: maximize the objective instead of minimizing it.

    Raises:
        ValueError: a hyperparameter is out of range (torch's messages).
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], lr: float = 1e-2,
                 alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0,
                 momentum: float = 0, centered: bool = False, *, maximize: bool = False):
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= momentum:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not 0.0 <= alpha:
            raise ValueError(f"Invalid alpha value: {alpha}")
        defaults = {"lr": lr, "momentum": momentum, "alpha": alpha, "eps": eps,
                    "centered": centered, "weight_decay": weight_decay, "maximize": maximize}
        super().__init__(params, defaults)

    def _init_state(self, p: Tensor, group: dict) -> dict[str, Tensor]:
        state = self.state[p]
        if len(state) == 0:
            xp = get_array_module(p.array)
            state["step"] = Tensor(np.zeros((), dtype=np.float32))
            state["square_avg"] = Tensor(xp.zeros_like(p.array))
            if group["momentum"] > 0:
                state["momentum_buffer"] = Tensor(xp.zeros_like(p.array))
            if group["centered"]:
                state["grad_avg"] = Tensor(xp.zeros_like(p.array))
        return state

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every parameter that has a gradient; returns the closure's loss or None."""
        loss = self._run_closure(closure)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            states = [self._init_state(p, group) for p in params]
            momentum, centered = group["momentum"], group["centered"]
            _functional_adaptive.rmsprop(
                [p.array for p in params],
                [p.grad.array for p in params],
                [s["square_avg"].array for s in states],
                [s["grad_avg"].array for s in states] if centered else [],
                [s["momentum_buffer"].array for s in states] if momentum > 0 else [],
                [s["step"].array for s in states],
                lr=group["lr"], alpha=group["alpha"], eps=group["eps"],
                weight_decay=group["weight_decay"], momentum=momentum, centered=centered,
                maximize=group["maximize"],
            )
        return loss
