"""``torch.cuda.amp``: the deprecated CUDA spellings of ``torch.amp``.

``GradScaler(...)`` is ``ddp.amp.GradScaler("cuda", ...)`` with torch's FutureWarning.
``autocast`` exists for scripts that enter it unconditionally: where CUDA is unavailable it
warns and does nothing, as torch does; on a GPU it raises, since ddp has no autocast (it
would silently compute in float32 otherwise).
"""

from __future__ import annotations

import contextlib
import functools
import warnings

from ddp import cuda
from ddp.amp.grad_scaler import GradScaler as _GradScaler


class GradScaler(_GradScaler):
    def __init__(self, init_scale: float = 2.0**16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000,
                 enabled: bool = True) -> None:
        warnings.warn("`torch.cuda.amp.GradScaler(args...)` is deprecated. Please use "
                      "`torch.amp.GradScaler('cuda', args...)` instead.", FutureWarning,
                      stacklevel=2)
        super().__init__("cuda", init_scale, growth_factor, backoff_factor, growth_interval,
                         enabled)


class autocast(contextlib.ContextDecorator):  # noqa: N801 - torch's name
    """A no-op with torch's warning without CUDA; NotImplementedError when it would cast."""

    def __init__(self, enabled: bool = True, dtype=None, cache_enabled: bool = True) -> None:
        warnings.warn("`torch.cuda.amp.autocast(args...)` is deprecated. Please use "
                      "`torch.amp.autocast('cuda', args...)` instead.", FutureWarning,
                      stacklevel=2)
        self.enabled = enabled
        if enabled and not cuda.is_available():
            warnings.warn("CUDA is not available or torch_xla is imported. Disabling "
                          "autocast.", stacklevel=2)
            self.enabled = False

    def __enter__(self):
        if self.enabled:
            raise NotImplementedError("torch.cuda.amp.autocast: ddp has no automatic mixed "
                                      "precision; run in float32 (autocast(enabled=False))")
        return self

    def __exit__(self, *exc) -> bool:
        return False


def custom_fwd(fwd=None, **kwargs):
    """Decorator kept for scripts; there is no autocast state to change."""
    if fwd is None:
        return functools.partial(custom_fwd, **kwargs)
    return fwd


def custom_bwd(bwd):
    return bwd
