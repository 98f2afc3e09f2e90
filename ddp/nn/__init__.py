"""``ddp.nn``: modules, ``functional``, ``init`` and ``utils`` with PyTorch's names and semantics.

Every layer is listed once, in ``ddp.nn.modules``; ``ddp.nn.parallel``
(``DistributedDataParallel``) is imported on first access.
"""

from ddp.nn import functional, init, modules, utils
from ddp.nn.modules import *  # noqa: F403 - every layer (ddp.nn.modules.__all__)
from ddp.nn.parameter import Parameter


def __getattr__(name: str):
    if name == "parallel":
        import importlib

        return importlib.import_module("ddp.nn.parallel")
    raise AttributeError(f"module 'ddp.nn' has no attribute '{name}'")


__all__ = [*modules.__all__, "Parameter", "functional", "init", "utils"]
