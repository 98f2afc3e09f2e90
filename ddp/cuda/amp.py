"""``torch.cuda.amp``: the deprecated CUDA spellings of ``torch.amp``.

``GradScaler(...)`` is ``ddp.amp.GradScaler("cuda", ...)`` with torch's FutureWarning.
``autocast`` is ``ddp.amp.autocast("cuda", ...)``: where CUDA is unavailable it warns and is
disabled, as torch's is. ``custom_fwd``/``custom_bwd`` are ``ddp.amp``'s with
``device_type="cuda"``.
"""

from __future__ import annotations

import warnings

from ddp import cuda
from ddp.amp.autocast_mode import autocast as _autocast
from ddp.amp.autocast_mode import custom_bwd as _custom_bwd
from ddp.amp.autocast_mode import custom_fwd as _custom_fwd
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


class autocast(_autocast):  # noqa: N801 - torch's name
    """``torch.cuda.amp.autocast(...)``: ``ddp.amp.autocast("cuda", ...)`` with torch's
    FutureWarning; where CUDA is unavailable it warns and is disabled, as torch's is."""

    def __init__(self, enabled: bool = True, dtype=None, cache_enabled: bool = True) -> None:
        warnings.warn("`torch.cuda.amp.autocast(args...)` is deprecated. Please use "
                      "`torch.amp.autocast('cuda', args...)` instead.", FutureWarning,
                      stacklevel=2)
        if enabled and not cuda.is_available():
            warnings.warn("CUDA is not available or torch_xla is imported. Disabling "
                          "autocast.", stacklevel=2)
            enabled = False
        super().__init__("cuda", dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)


def custom_fwd(fwd=None, *, cast_inputs=None):
    """``torch.cuda.amp.custom_fwd``: ``ddp.amp.custom_fwd(device_type="cuda")``, deprecated."""
    warnings.warn("`torch.cuda.amp.custom_fwd(args...)` is deprecated. Please use "
                  "`torch.amp.custom_fwd(args..., device_type='cuda')` instead.",
                  FutureWarning, stacklevel=2)
    return _custom_fwd(fwd, device_type="cuda", cast_inputs=cast_inputs)


def custom_bwd(bwd):
    """``torch.cuda.amp.custom_bwd``: ``ddp.amp.custom_bwd(device_type="cuda")``, deprecated."""
    warnings.warn("`torch.cuda.amp.custom_bwd(args...)` is deprecated. Please use "
                  "`torch.amp.custom_bwd(args..., device_type='cuda')` instead.",
                  FutureWarning, stacklevel=2)
    return _custom_bwd(bwd, device_type="cuda")
