"""``ddp.device``: where a tensor lives (``cpu`` or ``cuda:N``), as in torch."""

from __future__ import annotations

from ddp import backend


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
        """``with ddp.device("cuda"):`` makes this the default device inside the block (torch)."""
        _DEFAULT_STACK.append(_state.default)
        set_default_device(self)
        return self

    def __exit__(self, *exc) -> bool:
        _state.default = _DEFAULT_STACK.pop()
        return False


CPU = device("cpu")


class _DefaultDevice:
    default: device = CPU


_state = _DefaultDevice()
_DEFAULT_STACK: list[device] = []


def set_default_device(spec) -> None:
    """Where factory functions (``tensor``, ``zeros``, ``randn`` ...) put tensors given no
    ``device`` (``torch.set_default_device``); ``None`` restores the CPU. Process-wide."""
    _state.default = CPU if spec is None else as_device(spec)


def get_default_device() -> device:
    """The device factory functions use when given none (``torch.get_default_device``)."""
    return _state.default


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
    index = int(cp.cuda.runtime.getDevice()) if target.index is None else target.index
    if backend.is_cupy_array(array) and array.device.id == index:
        return array
    with cp.cuda.Device(index):
        return cp.asarray(array)
