"""``GatheredStorage``: a unit's unsharded parameters, whose memory can be given back while
views of it are still alive.

ddp's ops keep the arrays they save for backward, so a gathered parameter that FSDP merely
stopped referencing would stay in memory until backward anyway. torch frees an unsharded
parameter by resizing its storage to zero, and the all-gather before backward refills the same
storage, which the saved tensors alias. On the CPU ddp does the same with the operating system:
the storage is a private anonymous mapping; ``release`` returns its pages (``madvise
MADV_DONTNEED``: the views stay valid and read zeros until refilled) and ``materialize`` makes
it writable again for the next all-gather, at the same addresses. Correctness therefore needs
the re-gather before backward to run before any node that saved these arrays, which the
schedule guarantees (``root.py``). On the GPU (CuPy) there is no such call: ``release`` drops
the storage and ``materialize`` allocates a new one; arrays the graph saved keep the old one
alive until backward frees them.
"""

from __future__ import annotations

import mmap

import numpy as np


class GatheredStorage:
    """``numel`` elements of ``dtype`` from array module ``xp`` (NumPy or CuPy)."""

    def __init__(self, numel: int, dtype, xp):
        self.numel = numel
        self.dtype = np.dtype(dtype)
        self._xp = xp
        self._mmap = None
        self.array = None
        self.resident = False
        if xp is np and numel:
            self._mmap = mmap.mmap(-1, numel * self.dtype.itemsize,
                                   flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            self.array = np.frombuffer(self._mmap, dtype=self.dtype, count=numel)

    @property
    def nbytes(self) -> int:
        """Bytes held now (0 once released)."""
        return self.numel * self.dtype.itemsize if self.resident else 0

    def materialize(self):
        """The storage, writable (its contents are undefined until written)."""
        if self.array is None:
            self.array = self._xp.empty(self.numel, dtype=self.dtype)
        self.resident = True
        return self.array

    def release(self) -> None:
        """Give the memory back; views read zeros (CPU) or keep the old array alive (GPU)."""
        if self._mmap is not None:
            self._mmap.madvise(mmap.MADV_DONTNEED)
        elif self._xp is not np:
            self.array = None
        self.resident = False
