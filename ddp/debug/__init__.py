"""``ddp.debug``: diagnostics for silent training mistakes (``DDP_DEBUG=1`` switches them on).

``ddp.debug.enable()`` installs warnings (category :class:`DDPDebugWarning`) for a step that
finds a parameter without a gradient (detached graph), gradients accumulating across steps
without ``zero_grad()``, and an optimizer holding tensors that are not in the model it trains.
See :mod:`ddp.debug.diagnostics` and docs/debugging.md. Nothing is installed while disabled.
"""

from ddp import config
from ddp.debug.diagnostics import DDPDebugWarning, disable, enable, is_enabled

__all__ = ["DDPDebugWarning", "disable", "enable", "is_enabled"]

if config.get("DDP_DEBUG"):
    enable()
