"""``ddp.backends.cudnn``: torch.backends.cudnn's switches; ddp does not use cuDNN.

Convolutions are im2col plus one GEMM on every device (docs/gpu.md), so ``is_available()`` is
False and ``version()`` None. ``enabled``, ``benchmark``, ``deterministic`` and ``allow_tf32``
are plain module attributes with torch's defaults: setting them is allowed and has no effect
(ddp's kernels give the same result on every run whatever ``deterministic`` says). Per process,
as in torch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

enabled: bool = True
benchmark: bool = False
deterministic: bool = False
allow_tf32: bool = True


def is_available() -> bool:
    """False: ddp has no cuDNN code path."""
    return False


def version() -> int | None:
    """None: no cuDNN library is loaded (torch's answer without cuDNN)."""
    return None


@contextlib.contextmanager
def flags(enabled: bool = False, benchmark: bool = False, deterministic: bool = False,
          allow_tf32: bool = True) -> Iterator[None]:
    """Set the four switches inside a ``with`` block and restore them after (torch's API)."""
    module = globals()
    names = ("enabled", "benchmark", "deterministic", "allow_tf32")
    previous = {name: module[name] for name in names}
    module.update(enabled=enabled, benchmark=benchmark, deterministic=deterministic,
                  allow_tf32=allow_tf32)
    try:
        yield
    finally:
        module.update(previous)
