"""``Adagrad``: per-coordinate learning rates from the sum of squared gradients (Duchi et al.)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from ddp.backend import get_array_module
from ddp.optim import _functional_adaptive
from ddp.optim.optimizer import Optimizer
from ddp.tensor import Tensor


class Adagrad(Optimizer):
    """Adagrad, torch's update rule exactly.

    Per parameter, at step ``t`` with ``g = grad (+ weight_decay * p)``: ``s += g^2``,
    ``p -= lr / (1 + (t - 1) * lr_decay) * g / (sqrt(s) + eps)``. As in torch, the state
    (``step``, a 0-d float32 tensor, and ``sum``, filled with ``initial_accumulator_value``)
    is created at construction for every parameter, so ``state_dict()`` holds it before the
    first step.

    Args:
        params: tensors to optimize, or dicts defining parameter groups.
        lr: learning rate.
        lr_decay: learning-rate decay per step.
        weight_decay: L2 penalty added to the gradient.
        initial_accumulator_value: starting value of the sum of squared gradients.
        eps: added to the denominator for numerical stability.
        maximize: maximize the objective instead of minimizing it.

    Raises:
        ValueError: a hyperparameter is out of range (torch's messages).
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], lr: float = 1e-2,
                 lr_decay: float = 0, weight_decay: float = 0,
                 initial_accumulator_value: float = 0, eps: float = 1e-10, *,
                 maximize: bool = False):
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= lr_decay:
            raise ValueError(f"Invalid lr_decay value: {lr_decay}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not 0.0 <= initial_accumulator_value:
            raise ValueError(
                f"Invalid initial_accumulator_value value: {initial_accumulator_value}"
            )
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        defaults = {"lr": lr, "lr_decay": lr_decay, "eps": eps, "weight_decay": weight_decay,
                    "initial_accumulator_value": initial_accumulator_value,
                    "maximize": maximize}
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                self._init_state(p, group["initial_accumulator_value"])

    def _init_state(self, p: Tensor, initial_value: float) -> dict[str, Tensor]:
        state = self.state[p]
        if len(state) == 0:
            state["step"] = Tensor(np.zeros((), dtype=np.float32))
            state["sum"] = Tensor(get_array_module(p.array).full_like(p.array, initial_value))
        return state

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every parameter that has a gradient; returns the closure's loss or None."""
        loss = self._run_closure(closure)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            # a group added after construction: torch fills it from the defaults' value
            initial = self.defaults["initial_accumulator_value"]
            states = [self._init_state(p, initial) for p in params]
            _functional_adaptive.adagrad(
                [p.array for p in params],
                [p.grad.array for p in params],
                [s["sum"].array for s in states],
                [s["step"].array for s in states],
                lr=group["lr"], weight_decay=group["weight_decay"], lr_decay=group["lr_decay"],
                eps=group["eps"], maximize=group["maximize"],
            )
        return loss
