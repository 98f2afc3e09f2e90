"""``Adadelta``: step sizes from running averages of squared gradients and squared updates
(Zeiler)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from ddp.backend import get_array_module
from ddp.optim import _functional_adaptive
from ddp.optim.optimizer import Optimizer
from ddp.tensor import Tensor


class Adadelta(Optimizer):
    """Adadelta, torch's update rule exactly.

    Per parameter, with ``g = grad (+ weight_decay * p)``: ``v = rho * v + (1 - rho) * g^2``,
    ``d = sqrt(u + eps) / sqrt(v + eps) * g``, ``u = rho * u + (1 - rho) * d^2``,
    ``p -= lr * d``. State per parameter: ``step`` (0-d float32 tensor), ``square_avg`` (v)
    and ``acc_delta`` (u).

    Args:
        params: tensors to optimize, or dicts defining parameter groups.
        lr: scale of the update (1.0 is Zeiler's rule).
        rho: decay rate of both running averages.
        eps: added inside both square roots.
        weight_decay: L2 penalty added to the gradient.
        maximize: maximize the objective instead of minimizing it.

    Raises:
        ValueError: a hyperparameter is out of range (torch's messages).
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], lr: float = 1.0,
                 rho: float = 0.9, eps: float = 1e-6, weight_decay: float = 0, *,
                 maximize: bool = False):
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"Invalid rho value: {rho}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = {"lr": lr, "rho": rho, "eps": eps, "weight_decay": weight_decay,
                    "maximize": maximize}
        super().__init__(params, defaults)

    def _init_state(self, p: Tensor) -> dict[str, Tensor]:
        state = self.state[p]
        if len(state) == 0:
            xp = get_array_module(p.array)
            state["step"] = Tensor(np.zeros((), dtype=np.float32))
            state["square_avg"] = Tensor(xp.zeros_like(p.array))
            state["acc_delta"] = Tensor(xp.zeros_like(p.array))
        return state

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every parameter that has a gradient; returns the closure's loss or None."""
        loss = self._run_closure(closure)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            states = [self._init_state(p) for p in params]
            _functional_adaptive.adadelta(
                [p.array for p in params],
                [p.grad.array for p in params],
                [s["square_avg"].array for s in states],
                [s["acc_delta"].array for s in states],
                [s["step"].array for s in states],
                lr=group["lr"], rho=group["rho"], eps=group["eps"],
                weight_decay=group["weight_decay"], maximize=group["maximize"],
            )
        return loss
