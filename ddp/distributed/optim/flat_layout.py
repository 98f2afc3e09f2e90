"""``FlatLayout``: where every parameter lives in one flat buffer per dtype, and who owns what.

Parameters are laid out in optimizer order (group 0's parameters, then group 1's, ...), one flat
buffer per dtype. Each buffer is padded to a multiple of the world size and cut into ``world``
equal contiguous slices: rank ``r`` owns elements ``[r * S, (r + 1) * S)`` with
``S = ceil(total / world)``. Because slices are equal and contiguous, optimizer state is exactly
``S`` elements per state array per rank (a greedy split by parameter would be uneven), and the
all-gather of the updated slices is one collective per dtype.

Global offsets do not depend on the world size (only the padding does), so a checkpoint that
records ``(dtype, offset, numel)`` per parameter can be re-sliced at any world size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Entry:
    """One parameter: its name, group, shape and ``[offset, offset + numel)`` in its buffer."""

    index: int  # position in optimizer order
    name: str
    group: int
    dtype: str
    shape: tuple[int, ...]
    offset: int
    numel: int

    @property
    def stop(self) -> int:
        return self.offset + self.numel


@dataclass
class Buffer:
    """The layout of one dtype's flat buffer."""

    dtype: str
    total: int  # real elements
    padded: int  # a multiple of the world size
    shard: int  # elements per rank
    entries: list[Entry] = field(default_factory=list)

    def slice_of(self, rank: int) -> tuple[int, int]:
        """``[lo, hi)`` owned by ``rank`` (padding included)."""
        return rank * self.shard, (rank + 1) * self.shard

    def group_ranges(self) -> list[tuple[int, int, int]]:
        """``(group, lo, hi)`` for each run of consecutive entries of one group."""
        runs: list[tuple[int, int, int]] = []
        for e in self.entries:
            if runs and runs[-1][0] == e.group and runs[-1][2] == e.offset:
                runs[-1] = (e.group, runs[-1][1], e.stop)
            else:
                runs.append((e.group, e.offset, e.stop))
        return runs


class FlatLayout:
    """The flat layout of ``shapes``/``dtypes`` (optimizer order) for ``world`` ranks.

    Args:
        names: one name per parameter (for indexes and error messages).
        shapes: each parameter's shape.
        dtypes: each parameter's dtype name (``"float32"``).
        groups: each parameter's param-group index.
        world: the number of ranks the buffers are cut for.
    """

    def __init__(self, names: list[str], shapes: list[tuple[int, ...]], dtypes: list[str],
                 groups: list[int], world: int):
        if world < 1:
            raise ValueError(f"FlatLayout: world must be >= 1, got {world}")
        if len(set(names)) != len(names):
            raise ValueError(f"FlatLayout: parameter names are not unique: {names}")
        self.world = world
        self.buffers: dict[str, Buffer] = {}
        self.entries: list[Entry] = []
        offsets: dict[str, int] = {}
        for i, (name, shape, dtype, group) in enumerate(
                zip(names, shapes, dtypes, groups, strict=True)):
            numel = int(np.prod(shape, dtype=np.int64))
            offset = offsets.get(dtype, 0)
            entry = Entry(i, name, group, dtype, tuple(int(s) for s in shape), offset, numel)
            offsets[dtype] = offset + numel
            self.entries.append(entry)
            self.buffers.setdefault(dtype, Buffer(dtype, 0, 0, 0)).entries.append(entry)
        for dtype, buf in self.buffers.items():
            buf.total = offsets[dtype]
            buf.shard = max(1, -(-buf.total // world))
            buf.padded = buf.shard * world

    @classmethod
    def of_groups(cls, param_groups: list[dict], names: dict[int, str] | None,
                  world: int) -> FlatLayout:
        """The layout of an optimizer's ``param_groups``; ``names`` maps ``id(param)`` to name."""
        params = [(g, p) for g, group in enumerate(param_groups) for p in group["params"]]
        names = names or {}
        return cls(
            [names.get(id(p), f"param.{i}") for i, (_, p) in enumerate(params)],
            [tuple(p.array.shape) for _, p in params],
            [str(p.array.dtype) for _, p in params],
            [g for g, _ in params],
            world,
        )

    def describe(self) -> str:
        """A text that is equal on two ranks exactly when their layouts are equal."""
        return "; ".join(
            f"{d}[{b.total}/{b.padded}]:" + ",".join(f"{e.name}{list(e.shape)}g{e.group}"
                                                   for e in b.entries)
            for d, b in self.buffers.items()
        )
