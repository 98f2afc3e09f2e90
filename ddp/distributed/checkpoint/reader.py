"""``Reader``: element ranges of the flat spaces of one validated checkpoint directory.

Each file is read whole and verified (``files.read_array``) the first time a range needs it,
then kept for the rest of the load; a rank touches only the files that hold its ranges.
"""

from __future__ import annotations

import numpy as np

from ddp.distributed.checkpoint import files


class Reader:
    """Reads a checkpoint directory whose index body :func:`index.decode` validated.

    Args:
        path: the version directory.
        body: its validated index body.
    """

    def __init__(self, path: str, body: dict):
        self.path = path
        self.body = body
        self._arrays: dict[str, np.ndarray] = {}

    def file(self, name: str) -> np.ndarray:
        """The verified array of index file ``name`` (read-only)."""
        array = self._arrays.get(name)
        if array is None:
            array = files.read_array(self.path, name, self.body["files"][name])
            self._arrays[name] = array
        return array

    def read(self, space: str, lo: int, hi: int) -> np.ndarray:
        """Elements ``[lo, hi)`` of flat space ``space``; zeros past its end (padding).

        The index's pieces tile ``[0, numel)`` exactly (validated), so every element below
        ``numel`` comes from exactly one file.

        Raises:
            ValueError: the checkpoint has no such space.
        """
        info = self.body["spaces"].get(space)
        if info is None:
            raise ValueError(f"checkpoint {self.path!r} has no space {space!r} (it has "
                             f"{sorted(self.body['spaces'])})")
        out = np.zeros(max(0, hi - lo), dtype=np.dtype(info["dtype"]))
        for piece in info["files"]:
            a, b = max(lo, piece["start"]), min(hi, piece["stop"])
            if a < b:
                base = piece["offset"] - piece["start"]  # file position of element ``start``
                out[a - lo:b - lo] = self.file(piece["file"])[base + a:base + b]
        return out
