"""``ddp.cuda``: torch.cuda's device-management names, over CuPy.

Everything here works without CuPy or without a GPU: ``is_available()`` is False,
``device_count()`` is 0, seeding is a no-op (as in torch, which seeds CUDA lazily), and the
calls that need a device raise ``RuntimeError`` saying why CuPy cannot be used.

One exception, where ddp differs from torch on purpose: ``set_device`` without CUDA warns once
and does nothing, as ``init_process_group("nccl")`` warns once and runs on the CPU, so that a
torchrun script (``torch.cuda.set_device(local_rank)``; ``init_process_group("nccl")``) runs on
a CPU-only machine. Placing a tensor on CUDA (``.cuda()``, ``.to("cuda")``, ``device="cuda"``)
still raises, as in torch: computing elsewhere than asked would be a silent difference.

Random numbers: ``ddp.randn(..., device="cuda")`` and friends draw on the host generator and
copy, so a seeded program gives the same numbers on CPU and GPU. ``manual_seed`` seeds CuPy's
own generator (``cupy.random``), which device-side sampling uses.
"""

from __future__ import annotations

import threading
import warnings
from types import ModuleType

from ddp import backend
from ddp.device import device as _device

_fallbacks_warned: set[str] = set()  # per process: one warning per kind of call
_fallbacks_lock = threading.Lock()


def warn_cpu_fallback(call: str, consequence: str) -> None:
    """Warn, once per process for each ``call``, that a CUDA request runs on the CPU instead.

    Args:
        call: what asked for CUDA, e.g. ``"torch.cuda.set_device(0)"``; its text up to the first
            ``(`` is the key of the once-only rule.
        consequence: what ddp does instead, e.g. ``"the call does nothing"``.
    """
    key = call.split("(", 1)[0]
    with _fallbacks_lock:
        if key in _fallbacks_warned:
            return
        _fallbacks_warned.add(key)
    warnings.warn(f"{call}: CUDA is not available ({backend.cupy_unavailable_reason()}); ddp "
                  f"falls back to the CPU: {consequence}", UserWarning, stacklevel=3)


def _cupy() -> ModuleType:
    cp = backend.cupy_module()
    if cp is None:
        raise RuntimeError(f"CUDA is not available: {backend.cupy_unavailable_reason()}")
    return cp


def _index(device_spec) -> int:
    """A CUDA device index from None (the current one), an int, "cuda[:N]" or a device."""
    if device_spec is None:
        return current_device()
    if isinstance(device_spec, int):
        return device_spec
    dev = _device(device_spec)
    if dev.type != "cuda":
        raise ValueError(f"Expected a cuda device, but got: {dev}")
    return current_device() if dev.index is None else dev.index


def is_available() -> bool:
    """True when CuPy is importable and sees at least one GPU."""
    return backend.cupy_module() is not None


def device_count() -> int:
    """Number of visible GPUs (0 without CuPy or a GPU)."""
    cp = backend.cupy_module()
    return 0 if cp is None else int(cp.cuda.runtime.getDeviceCount())


def current_device() -> int:
    """Index of this thread's current GPU."""
    return int(_cupy().cuda.runtime.getDevice())


def set_device(device_spec) -> None:
    """Make ``device_spec`` (an int, "cuda:N" or a device) this thread's current GPU.

    Without CUDA it warns once (``UserWarning`` naming the fallback) and does nothing, so a
    torchrun script's ``torch.cuda.set_device(local_rank)`` runs on the CPU (see the module
    docstring). A negative index does nothing, as in torch.

    Raises:
        ValueError: ``device_spec`` names a device that is not CUDA.
        RuntimeError: the index is not one of the visible GPUs.
    """
    if not is_available():
        if not isinstance(device_spec, int) and _device(device_spec).type != "cuda":
            raise ValueError(f"Expected a cuda device, but got: {_device(device_spec)}")
        warn_cpu_fallback(f"torch.cuda.set_device({device_spec!r})",
                          "the call does nothing and tensors stay on the CPU")
        return
    idx = _index(device_spec)
    if idx < 0:
        return
    count = device_count()
    if not 0 <= idx < count:
        raise RuntimeError(f"set_device: invalid device ordinal {idx} ({count} GPU(s) visible)")
    _cupy().cuda.Device(idx).use()


def synchronize(device_spec=None) -> None:
    """Wait until all work queued on the GPU (all its streams) has finished."""
    cp = _cupy()
    with cp.cuda.Device(_index(device_spec)):
        cp.cuda.Device().synchronize()


def get_device_name(device_spec=None) -> str:
    """The GPU's product name, e.g. ``"NVIDIA H100 80GB HBM3"``."""
    props = _cupy().cuda.runtime.getDeviceProperties(_index(device_spec))
    name = props["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def manual_seed(seed: int) -> None:
    """Seed CuPy's generator on the current GPU; does nothing without CUDA (as torch)."""
    cp = backend.cupy_module()
    if cp is not None:
        cp.random.seed(int(seed))


def manual_seed_all(seed: int) -> None:
    """Seed CuPy's generator on every GPU; does nothing without CUDA."""
    cp = backend.cupy_module()
    if cp is None:
        return
    for idx in range(device_count()):
        with cp.cuda.Device(idx):
            cp.random.seed(int(seed))


def memory_allocated(device_spec=None) -> int:
    """Bytes held by live arrays in CuPy's memory pool (of the current device)."""
    cp = _cupy()
    with cp.cuda.Device(_index(device_spec)):
        return int(cp.get_default_memory_pool().used_bytes())


def empty_cache() -> None:
    """Return the cached, unused blocks of CuPy's memory pool to the driver."""
    cp = backend.cupy_module()
    if cp is not None:
        cp.get_default_memory_pool().free_all_blocks()


class device:  # noqa: N801 - torch.cuda.device
    """Context manager selecting a GPU: ``with ddp.cuda.device(1): ...``."""

    def __init__(self, device_spec):
        self.index = _index(device_spec)
        self._ctx = None

    def __enter__(self):
        self._ctx = _cupy().cuda.Device(self.index)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)
        return False


class Event:
    """A CUDA event on the current stream (``torch.cuda.Event(enable_timing=True)``)."""

    def __init__(self, enable_timing: bool = False):
        cp = _cupy()
        self._event = cp.cuda.Event(disable_timing=not enable_timing)

    def record(self, stream=None) -> None:
        self._event.record(stream)

    def synchronize(self) -> None:
        self._event.synchronize()

    def elapsed_time(self, end: Event) -> float:
        """Milliseconds between this event and ``end`` (both recorded and complete)."""
        return float(_cupy().cuda.get_elapsed_time(self._event, end._event))
