"""``ddp.device``: where a tensor lives (``cpu`` or ``cuda:N``), as in torch.

The default device of factory functions is per thread, as torch's is: ``with ddp.device(...)``
and ``set_default_device`` in a thread change that thread only, so one simulated rank of the
``threads`` backend never moves another's tensors. Called in the main thread,
``set_default_device`` also sets the process default, which every thread that has set none of
its own uses (so a default chosen before ``spawn`` reaches the ranks). A ``with`` block is
never inherited, not even by threads started inside it.
"""

from __future__ import annotations

import threading

from ddp import backend, dtypes


class device:  # noqa: N801 - torch spells it in lower case
    """A device: ``device("cpu")``, ``device("cuda")``, ``device("cuda:1")``,
    ``device("cuda", 1)``."""

    def __init__(self, type_or_spec, index: int | None = None):
        if isinstance(type_or_spec, device):
            type_, idx = type_or_spec.type, type_or_spec.index
        else:
            spec = str(type_or_spec)
            type_, _, idx_text = spec.partition(":")
            idx = int(idx_text) if idx_text else None
        if index is not None:
            idx = index
        if type_ not in ("cpu", "cuda"):
            raise RuntimeError(f"Expected one of cpu, cuda device type at start of device string: "
                               f"{type_or_spec!r}")
        if type_ == "cpu":
            idx = None
        self.type = type_
        self.index = idx

    def __repr__(self) -> str:
        return f"device(type='{self.type}'" + (f", index={self.index})" if self.index is not None
                                               else ")")

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"

    def __eq__(self, other) -> bool:
        if isinstance(other, str):
            other = device(other)
        if not isinstance(other, device):
            return NotImplemented
        return self.type == other.type and self.index == other.index

    def __hash__(self) -> int:
        return hash((self.type, self.index))

    def __enter__(self) -> device:
        """``with ddp.device("cuda"):`` makes this the calling thread's default device inside
        the block (torch); other threads keep theirs."""
        stack = _thread_stack()
        stack.append(getattr(_local, "default", None))
        _local.default = self
        return self

    def __exit__(self, *exc) -> bool:
        _local.default = _thread_stack().pop()
        return False


CPU = device("cpu")


_process_default: device = CPU  # set by set_default_device in the main thread
_local = threading.local()  # .default: this thread's own (None: none); .stack: enclosing ones


def _thread_stack() -> list[device | None]:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def set_default_device(spec) -> None:
    """Where factory functions (``tensor``, ``zeros``, ``randn`` ...) put tensors given no
    ``device`` (``torch.set_default_device``); ``None`` restores the CPU.

    Per thread; in the main thread it also sets the process default, which threads that set
    none of their own use (see the module docstring).
    """
    global _process_default
    target = CPU if spec is None else as_device(spec)
    _local.default = target
    if threading.current_thread() is threading.main_thread():
        _process_default = target


def get_default_device() -> device:
    """The calling thread's default device for factory functions (``torch.get_default_device``):
    its own if it set one, else the process default."""
    own = getattr(_local, "default", None)
    return _process_default if own is None else own


def device_of(array) -> device:
    """The device an array lives on."""
    if backend.is_cupy_array(array):
        return device("cuda", array.device.id)
    return CPU


def as_device(spec) -> device:
    """Normalise ``None``/str/int/device into a device (an int means ``cuda:int``)."""
    if spec is None:
        return CPU
    if isinstance(spec, int):
        return device("cuda", spec)
    return device(spec)


def same_device(a: device, b: device) -> bool:
    """True when ``a`` and ``b`` name one device (``cuda`` means the current GPU)."""
    if a.type != b.type:
        return False
    if a.type == "cuda" and (a.index is None or b.index is None):
        return _cuda_index(a) == _cuda_index(b)
    return a.index == b.index


def _cuda_index(dev: device) -> int | None:
    if dev.index is not None or dev.type != "cuda":
        return dev.index
    cp = backend.cupy_module()
    return None if cp is None else int(cp.cuda.runtime.getDevice())


def move_array(array, target: device):
    """Return ``array`` on ``target`` (the same object when it is already there).

    ``cuda`` without an index means the current GPU (``ddp.cuda.set_device``).
    """
    if target.type == "cpu":
        return backend.to_numpy(array)
    cp = backend.cupy_module()
    if cp is None:
        raise RuntimeError(f"cannot move a tensor to {target}: {backend.cupy_unavailable_reason()}")
    if array.dtype == dtypes.BFLOAT16 and backend.cupy_bfloat16_problem() is not None:
        raise RuntimeError(
            f"cannot move a bfloat16 tensor to {target}: {backend.cupy_bfloat16_problem()}. "
            f"ddp's bfloat16 is ml_dtypes' NumPy type and runs on the CPU only; on the GPU use "
            f"float16 (autocast('cuda') defaults to it)")
    index = int(cp.cuda.runtime.getDevice()) if target.index is None else target.index
    if backend.is_cupy_array(array) and array.device.id == index:
        return array
    with cp.cuda.Device(index):
        return cp.asarray(array)
