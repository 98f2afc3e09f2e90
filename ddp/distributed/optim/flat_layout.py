"""``FlatLayout``: where every parameter lives in one flat buffer per dtype, and who owns what.

Parameters are laid out in optimizer order (group 0's parameters, then group 1's, ...), one flat
buffer per dtype, padded at its end to a multiple of the world size ``N``.

The buffer is cut into *buckets*: contiguous ranges taken from the end (backward produces the
last parameters' gradients first), each a multiple of ``N`` elements long (the first one at most
``first_bucket_elems``, the others at most ``bucket_elems``; a bucket may split a parameter).
Each bucket is cut into ``N`` equal pieces, and rank ``r`` owns the ``r``-th piece of every
bucket: exactly what a reduce-scatter of that bucket leaves it, so every bucket's gradients are
reduce-scattered as soon as they are final, and every bucket's parameters are all-gathered back
with one all-gather. A rank's *shard* is its pieces in ascending order, ``S = padded / N``
elements: optimizer state is exactly ``S`` elements per state array on every rank (a greedy
split by parameter would be uneven). With one bucket (the default), rank ``r`` owns
``[r * S, (r + 1) * S)``.

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
    buckets: list[tuple[int, int]] = field(default_factory=list)  # launch order: descending

    def owned(self, rank: int, world: int) -> list[tuple[int, int, int]]:
        """``(lo, hi, pos)`` for each piece ``rank`` owns, ascending; ``pos`` is where the piece
        starts in the rank's ``S``-element shard (padding included)."""
        pieces, pos = [], 0
        for lo, hi in reversed(self.buckets):
            step = (hi - lo) // world
            pieces.append((lo + rank * step, lo + (rank + 1) * step, pos))
            pos += step
        return pieces

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
        bucket_elems: the largest bucket, in elements (None: one bucket per dtype).
        first_bucket_elems: the largest first bucket (the end of the buffer), so that the
            first reduce-scatter starts early in backward (None: ``bucket_elems``).
    """

    def __init__(self, names: list[str], shapes: list[tuple[int, ...]], dtypes: list[str],
                 groups: list[int], world: int, bucket_elems: int | None = None,
                 first_bucket_elems: int | None = None):
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
            buf.buckets = _cut(buf.padded, world, bucket_elems, first_bucket_elems)

    @classmethod
    def of_groups(cls, param_groups: list[dict], names: dict[int, str] | None,
                  world: int, bucket_elems: int | None = None,
                  first_bucket_elems: int | None = None) -> FlatLayout:
        """The layout of an optimizer's ``param_groups``; ``names`` maps ``id(param)`` to name."""
        params = [(g, p) for g, group in enumerate(param_groups) for p in group["params"]]
        names = names or {}
        return cls(
            [names.get(id(p), f"param.{i}") for i, (_, p) in enumerate(params)],
            [tuple(p.array.shape) for _, p in params],
            [str(p.array.dtype) for _, p in params],
            [g for g, _ in params],
            world,
            bucket_elems,
            first_bucket_elems,
        )

    def describe(self) -> str:
        """A text that is equal on two ranks exactly when their layouts are equal."""
        return "; ".join(
            f"{d}[{b.total}/{b.padded} buckets {b.buckets}]:"
            + ",".join(f"{e.name}{list(e.shape)}g{e.group}" for e in b.entries)
            for d, b in self.buffers.items()
        )


def _cut(padded: int, world: int, cap: int | None, first_cap: int | None) -> list[tuple[int, int]]:
    """Buckets of ``[0, padded)`` from the end, each a multiple of ``world`` elements."""
    if cap is None:
        return [(0, padded)]
    buckets, hi, limit = [], padded, first_cap or cap
    while hi > 0:
        size = min(hi, max(world, limit // world * world))
        buckets.append((hi - size, hi))
        hi -= size
        limit = cap
    return buckets
