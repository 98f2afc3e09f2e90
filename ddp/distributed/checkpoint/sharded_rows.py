"""Fully sharded parameters (``fully_shard``) in a checkpoint: each rank's dim-0 rows at their
global offsets.

A ``ShardedParameter`` holds rows ``[row_start, row_stop)`` of its parameter (its
``shard_spec``, padding excluded), and its optimizer state has the same local shape. In the flat
space of a checkpoint every parameter sits at its global offset, laid out as an unsharded
optimizer lays it out (``FlatLayout`` of the global shapes), so a rank's rows of a parameter are
one contiguous element range. Saving: rank ``r``'s file of a space holds its ranges of every
sharded parameter in layout order, and rank 0's file also holds any replicated parameter whole;
the index lists one piece per (parameter, rank) with rows, tiling the space as always. Loading
reads the element ranges the target needs, from whichever files hold them: its own rows at any
world size (fully sharded), everything (DDP, one process) or ZeRO's pieces. Nothing here
communicates; the ranks' row ranges travel in the save's first agreement (``local_meta``).
"""

from __future__ import annotations

import numpy as np

from ddp.backend import get_array_module
from ddp.distributed.checkpoint import files
from ddp.distributed.fsdp.sharded_param import ShardedParameter
from ddp.distributed.optim.flat_layout import Entry, FlatLayout

Rows = tuple[int, int] | None  # a rank's [start, stop) rows of one parameter; None: all of it


def rows_of(p) -> Rows:
    """This rank's rows of ``p`` when it is a fully sharded parameter, else None."""
    if isinstance(p, ShardedParameter):
        spec = p.shard_spec
        return (int(spec.row_start), int(spec.row_stop))
    return None


def any_sharded(params) -> bool:
    return any(isinstance(p, ShardedParameter) for p in params)


def global_shape(p) -> tuple[int, ...]:
    """The shape of the whole parameter (a sharded parameter's array is only its rows)."""
    if isinstance(p, ShardedParameter):
        return tuple(int(n) for n in p.shard_spec.global_shape)
    return tuple(p.array.shape)


def global_layout(param_groups: list[dict], names: dict[int, str]) -> FlatLayout:
    """The one-rank flat layout of ``param_groups`` with every parameter's global shape."""
    params = [(g, p) for g, group in enumerate(param_groups) for p in group["params"]]
    return FlatLayout([names.get(id(p), f"param.{i}") for i, (_, p) in enumerate(params)],
                      [global_shape(p) for _, p in params],
                      [str(p.array.dtype) for _, p in params], [g for g, _ in params], 1)


def element_range(e: Entry, rows: Rows) -> tuple[int, int]:
    """Flat-space ``[lo, hi)`` of rows ``rows`` of entry ``e`` (the whole entry for None)."""
    if rows is None:
        return e.offset, e.stop
    n_rows = e.shape[0] if e.shape else 1
    per_row = e.numel // n_rows if n_rows else 0
    return e.offset + rows[0] * per_row, e.offset + rows[1] * per_row


def local_shape(e: Entry, rows: Rows) -> tuple[int, ...]:
    if rows is None or not e.shape:
        return e.shape
    return (rows[1] - rows[0],) + e.shape[1:]


def _held(rank: int, rows: Rows) -> bool:
    return rows is not None or rank == 0  # replicated parameters: rank 0 writes them


def space_entry(space: str, dtype: str, buf, rows_by_rank: list[list[Rows]],
                space_file) -> dict:
    """The index's ``spaces`` entry: one piece per (parameter, rank) that holds elements."""
    pieces = []
    for r, rows in enumerate(rows_by_rank):
        offset = 0
        for e in buf.entries:
            if not _held(r, rows[e.index]):
                continue
            lo, hi = element_range(e, rows[e.index])
            if lo < hi:
                pieces.append({"file": space_file(space, r), "start": lo, "stop": hi,
                               "offset": offset})
                offset += hi - lo
    return {"dtype": dtype, "numel": buf.total, "files": pieces}


def local_data(buf, rows: list[Rows], rank: int, arrays: list, dtype: str):
    """This rank's file of a space: its arrays (``arrays[e.index]``, None: zeros) in the order
    :func:`space_entry` lists them, on the host; None when it holds no element."""
    parts = []
    for e in buf.entries:
        if not _held(rank, rows[e.index]):
            continue
        lo, hi = element_range(e, rows[e.index])
        if lo < hi:
            a = arrays[e.index]
            if a is None:
                parts.append(np.zeros(hi - lo, dtype=dtype))
            else:
                host = files.to_host(a).reshape(-1)
                if host.size != hi - lo:
                    raise ValueError(f"parameter {e.name!r}: {host.size} local elements, its "
                                     f"rows {rows[e.index]} span {hi - lo}")
                parts.append(host)
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def read_rows(reader, space: str, e: Entry, rows: Rows) -> np.ndarray:
    """Rows ``rows`` of entry ``e`` of ``space`` from the checkpoint, in their local shape."""
    lo, hi = element_range(e, rows)
    return reader.read(space, lo, hi).reshape(local_shape(e, rows))


def install(t, host) -> None:
    """Write ``host`` into tensor ``t``'s array (a sharded parameter's local rows)."""
    t.array[...] = get_array_module(t.array).asarray(host)
