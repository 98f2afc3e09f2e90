"""Mixed precision (torch's ``torch.amp``): ``autocast`` regions and ``GradScaler`` for float16
loss scaling. ``docs/mixed_precision.md`` walks through the dtype of every tensor in a step."""

from ddp.amp.autocast_mode import (
    autocast,
    clear_autocast_cache,
    custom_bwd,
    custom_fwd,
    get_autocast_dtype,
    is_autocast_available,
    is_autocast_cache_enabled,
    is_autocast_enabled,
)
from ddp.amp.grad_scaler import GradScaler

__all__ = ["GradScaler", "autocast", "clear_autocast_cache", "custom_bwd", "custom_fwd",
           "get_autocast_dtype",
           "is_autocast_available", "is_autocast_cache_enabled", "is_autocast_enabled"]
