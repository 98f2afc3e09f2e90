"""``torch.accelerator``: the device-agnostic accelerator API, over ``ddp.cuda``.

CUDA (through CuPy) is ddp's only accelerator, so every answer is CUDA's; on a machine
without one, ``is_available()`` is False and ``current_accelerator()`` None, as in torch.
"""

from __future__ import annotations

from ddp import cuda
from ddp.device import device


def is_available() -> bool:
    return cuda.is_available()


def current_accelerator(check_available: bool = False) -> device | None:
    """``device("cuda")`` when CUDA is usable, else None (torch: None without a backend)."""
    return device("cuda") if cuda.is_available() else None


def device_count() -> int:
    return cuda.device_count()


def current_device_index() -> int:
    return cuda.current_device()


current_device_idx = current_device_index


def set_device_index(device_spec) -> None:
    cuda.set_device(device_spec)


set_device_idx = set_device_index


def synchronize(device_spec=None) -> None:
    cuda.synchronize(device_spec)
