"""Dim-0 sharding of one unit's parameters (torch FSDP2's ``Shard(0)``), and its flat buffers.

Every parameter is cut along dim 0 with ``torch.chunk``'s rule: chunks of ``c = ceil(rows / N)``
rows, rank ``r`` holds rows ``[min(r c, rows), min((r + 1) c, rows))`` (the last ranks may hold
fewer rows, or none: ``Linear(7, 5)``'s weight of 5 rows over 4 ranks is 2, 2, 1, 0 rows). A
0-d parameter counts as one row. For the collectives every chunk is padded to ``c`` rows, so
rank ``r``'s *section* of a unit is its padded chunks one after another (``section`` elements,
the same on every rank) and a unit moves with one all-gather (``N * section`` elements,
``[rank 0's section | rank 1's | ...]``) and one reduce-scatter of that shape. The padding is
never part of a parameter: ``ShardSpec`` gives the real rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ShardSpec:
    """Where a rank's shard sits in its parameter (public: checkpoints and the ledger read it).

    ``global_shape`` is the parameter's shape; the shard is rows ``[row_start, row_stop)`` of
    dim 0 (padding excluded; a 0-d parameter has one row).
    """

    global_shape: tuple[int, ...]
    row_start: int
    row_stop: int


def chunk_rows(rows: int, world: int) -> int:
    """Rows per chunk: ``ceil(rows / world)`` (``torch.chunk``)."""
    return -(-rows // world)


def row_range(rows: int, world: int, rank: int) -> tuple[int, int]:
    """``[start, stop)`` of the rows ``rank`` holds."""
    c = chunk_rows(rows, world)
    return min(rank * c, rows), min((rank + 1) * c, rows)


class UnitLayout:
    """The sections and gathered storage of parameters of ``shapes`` (one dtype) for ``world``.

    Args:
        shapes: the parameters' global shapes.
        world: the number of ranks sharded over.
    """

    def __init__(self, shapes: list[tuple[int, ...]], world: int):
        self.world = world
        self.shapes = [tuple(int(n) for n in s) for s in shapes]
        self.rows = [s[0] if s else 1 for s in self.shapes]
        self.row_elems = [math.prod(s[1:]) if s else 1 for s in self.shapes]
        self.chunks = [chunk_rows(r, world) for r in self.rows]
        self.padded = [c * e for c, e in zip(self.chunks, self.row_elems, strict=True)]
        self.offsets, self.full_offsets = [], []  # in a section; in the unsharded storage
        section = full = 0
        for padded, rows, elems in zip(self.padded, self.rows, self.row_elems, strict=True):
            self.offsets.append(section)
            self.full_offsets.append(full)
            section += padded
            full += rows * elems
        self.section = section
        self.full_numel = full

    def spec(self, i: int, rank: int) -> ShardSpec:
        return ShardSpec(self.shapes[i], *row_range(self.rows[i], self.world, rank))

    def local_shape(self, i: int, rank: int) -> tuple[int, ...]:
        start, stop = row_range(self.rows[i], self.world, rank)
        return (stop - start,) + self.shapes[i][1:]

    def full_view(self, storage, i: int):
        """Parameter ``i``'s full value: a view of the unsharded ``storage``."""
        o = self.full_offsets[i]
        return storage[o:o + self.rows[i] * self.row_elems[i]].reshape(self.shapes[i])

    def copy_in(self, section, locals_: list) -> None:
        """Fill this rank's ``section`` with its shards (``locals_``), zero padding."""
        for o, padded, local in zip(self.offsets, self.padded, locals_, strict=True):
            n = local.size
            section[o:o + n] = local.reshape(-1)
            section[o + n:o + padded] = 0

    def copy_out(self, gathered, storage) -> None:
        """Unpack an all-gathered ``[N, section]`` buffer into the contiguous ``storage``.

        Chunks are padded to equal rows, so the padding is exactly the rows past the end.
        """
        g = gathered.reshape(self.world, self.section)
        for i in range(len(self.shapes)):
            o, elems, rows = self.offsets[i], self.row_elems[i], self.rows[i]
            block = g[:, o:o + self.padded[i]].reshape(self.world * self.chunks[i], elems)
            fo = self.full_offsets[i]
            storage[fo:fo + rows * elems].reshape(rows, elems)[...] = block[:rows]

    def grad_in(self, staging, i: int, grad) -> None:
        """Write parameter ``i``'s full gradient (None: zeros) into a reduce-scatter input
        ``[N, section]``: rank ``k``'s rows into section ``k``, padded with zeros."""
        s = staging.reshape(self.world, self.section)
        o, elems, rows = self.offsets[i], self.row_elems[i], self.rows[i]
        block = s[:, o:o + self.padded[i]]
        if grad is None:
            block[...] = 0
            return
        rows_view = block.reshape(self.world, self.chunks[i], elems)
        for k in range(self.world):
            start, stop = row_range(rows, self.world, k)
            rows_view[k, :stop - start] = grad.reshape(rows, elems)[start:stop]
            rows_view[k, stop - start:] = 0

    def shard_of(self, section, i: int, rank: int):
        """Parameter ``i``'s shard in a reduce-scattered ``section`` (a view)."""
        shape = self.local_shape(i, rank)
        n = math.prod(shape)
        return section[self.offsets[i]:self.offsets[i] + n].reshape(shape)
