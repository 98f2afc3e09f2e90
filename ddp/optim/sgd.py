"""``SGD``: stochastic gradient descent with momentum, dampening, Nesterov and weight decay."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ddp.optim import _functional
from ddp.optim.optimizer import Optimizer
from ddp.tensor import Tensor


class SGD(Optimizer):
    """Stochastic gradient descent, torch's update rule exactly.

    With ``g = grad (+ weight_decay * p)``: ``buf = momentum * buf + (1 - dampening) * g``
    (the first buffer is ``g`` itself), ``g = g + momentum * buf`` with Nesterov or ``buf``
    without, then ``p -= lr * g``. ``maximize`` negates the gradient first.

    Args:
        params: tensors to optimize, or dicts defining parameter groups.
        lr: learning rate.
        momentum: momentum factor; 0 keeps no state.
        dampening: dampening of the momentum.
        weight_decay: L2 penalty added to the gradient.
        nesterov: use Nesterov momentum (needs ``momentum > 0`` and ``dampening == 0``).
        maximize: maximize the objective instead of minimizing it.

    Raises:
        ValueError: a hyperparameter is out of range (torch's messages).

    Example:
        >>> opt = ddp.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        >>> opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], lr: float = 1e-3,
                 momentum: float = 0, dampening: float = 0, weight_decay: float = 0,
                 nesterov: bool = False, *, maximize: bool = False):
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = {"lr": lr, "momentum": momentum, "dampening": dampening,
                    "weight_decay": weight_decay, "nesterov": nesterov, "maximize": maximize}
        super().__init__(params, defaults)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every parameter that has a gradient; returns the closure's loss or None."""
        loss = self._run_closure(closure)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            momentum = group["momentum"]
            buffers = []
            if momentum != 0:
                for p in params:
                    buf = self.state[p].get("momentum_buffer")
                    buffers.append(None if buf is None else buf.array)
            _functional.sgd(
                [p.array for p in params], [p.grad.array for p in params], buffers,
                lr=group["lr"], weight_decay=group["weight_decay"], momentum=momentum,
                dampening=group["dampening"], nesterov=group["nesterov"],
                maximize=group["maximize"],
            )
            if momentum != 0:
                for p, buf in zip(params, buffers, strict=True):
                    state = self.state[p]
                    old = state.get("momentum_buffer")
                    if old is None or old.array is not buf:
                        state["momentum_buffer"] = Tensor(buf)
        return loss
