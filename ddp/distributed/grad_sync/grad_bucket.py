"""``GradBucket``: what a DDP communication hook receives (torch's ``dist.GradBucket``).

A bucket is a flat buffer holding several parameters' gradients (DDP's bucketing, see
``allreduce.py``). The hook reduces ``buffer()`` (in place or into a new tensor) and returns a
``Future`` of the result; DDP writes that result back into the bucket.
"""

from __future__ import annotations

from ddp.tensor import Tensor


class GradBucket:
    """One bucket of gradients, as a communication hook sees it.

    ``buffer()`` and ``gradients()`` share memory with the bucket: in-place changes are seen
    by DDP.
    """

    def __init__(self, index: int, count: int, buffer, params: list[Tensor], slots: list):
        self._index = index
        self._count = count
        self._buffer = buffer
        self._params = params
        self._slots = slots

    def index(self) -> int:
        """The bucket's position in launch order (0 is reduced first)."""
        return self._index

    def is_last(self) -> bool:
        """True for the last bucket of the iteration."""
        return self._index == self._count - 1

    def buffer(self) -> Tensor:
        """The flat 1-D gradient buffer (shares memory with the bucket)."""
        return Tensor(self._buffer)

    def gradients(self) -> list[Tensor]:
        """Each parameter's gradient, a view of its slot of ``buffer()``."""
        return [Tensor(slot) for slot in self._slots]

    def parameters(self) -> list[Tensor]:
        """The parameters whose gradients the bucket holds, in slot order."""
        return list(self._params)

    def set_buffer(self, tensor: Tensor) -> None:
        """Replace the bucket's contents with ``tensor`` (same number of elements).

        Raises:
            ValueError: ``tensor`` has another number of elements.
        """
        if tensor.numel() != self._buffer.size:
            raise ValueError(f"GradBucket.set_buffer: bucket {self._index} holds "
                             f"{self._buffer.size} elements, got a tensor of {tensor.numel()}")
        self._buffer[...] = tensor.array.reshape(-1)
