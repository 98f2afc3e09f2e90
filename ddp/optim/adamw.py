"""``AdamW``: Adam with decoupled weight decay (Loshchilov & Hutter)."""

from __future__ import annotations

from collections.abc import Iterable

from ddp.optim.adam import Adam
from ddp.tensor import Tensor


class AdamW(Adam):
    """Adam whose weight decay scales the parameter (``p *= 1 - lr * weight_decay``) before
    the Adam update instead of entering the gradient; torch's defaults (``weight_decay=0.01``).

    Args: as :class:`~ddp.optim.Adam`, without ``decoupled_weight_decay`` (always True).
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=True)
