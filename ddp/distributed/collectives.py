"""Tensor collectives with torch's names and signatures (``dist.all_reduce(t)`` ...).

Each works in place on ``Tensor.array`` through the group's array-level method, so nothing is
pickled except in the ``*_object`` functions. A tensor that is a non-contiguous view goes
through a contiguous copy that is written back. Every function is a collective: all ranks of
the group must call it in the same order with the same dtype and element count, otherwise every
rank gets a ``RuntimeError`` naming what each rank issued.
"""

from __future__ import annotations

from typing import Any

from ddp.backend import get_array_module
from ddp.distributed.api import get_group_rank, resolve_group
from ddp.distributed.reduce_op import ReduceOp, Work


def _array_of(tensor, what: str):
    array = getattr(tensor, "array", None)
    if array is None:
        raise TypeError(f"{what}: expected a ddp Tensor, got {type(tensor).__name__}")
    return array


class _Contiguous:
    """A contiguous stand-in for a tensor's array, written back by ``commit()``."""

    def __init__(self, tensor, what: str):
        self.target = _array_of(tensor, what)
        self.array = self.target
        if not self.target.flags.c_contiguous:
            xp = get_array_module(self.target)
            self.array = xp.ascontiguousarray(self.target)

    def commit(self) -> None:
        if self.array is not self.target:
            self.target[...] = self.array


def all_reduce(tensor, op: ReduceOp = ReduceOp.SUM, group=None, async_op: bool = False):
    """Reduce ``tensor`` across ranks in place; every rank gets the result.

    Returns:
        None, or a ``Work`` whose ``wait()`` completes the reduction when ``async_op``.
    """
    pg = resolve_group(group)
    buf = _Contiguous(tensor, "all_reduce")
    if not async_op:
        pg.allreduce(buf.array, op)
        buf.commit()
        return None
    work = pg.allreduce_async(buf.array, op)
    return Work(lambda: (work.wait(), buf.commit()), result=[tensor])


def broadcast(tensor, src: int, group=None, async_op: bool = False):
    """Copy ``tensor`` of world rank ``src`` into ``tensor`` on every rank of ``group``."""
    pg = resolve_group(group)
    buf = _Contiguous(tensor, "broadcast")
    pg.broadcast(buf.array, get_group_rank(pg, src))
    buf.commit()
    return Work(result=[tensor]) if async_op else None


def barrier(group=None, async_op: bool = False, device_ids=None):
    """Block until all ranks of ``group`` reach the barrier."""
    resolve_group(group).barrier()
    return Work() if async_op else None


def all_gather(tensor_list: list, tensor, group=None, async_op: bool = False):
    """Fill ``tensor_list[r]`` with rank r's ``tensor`` (all same shape and dtype)."""
    pg = resolve_group(group)
    array = _Contiguous(tensor, "all_gather").array
    if len(tensor_list) != pg.size():
        raise ValueError(
            f"all_gather: tensor_list has {len(tensor_list)} tensors, the group has "
            f"{pg.size()} ranks"
        )
    for i, t in enumerate(tensor_list):
        a = _array_of(t, "all_gather")
        if a.shape != array.shape or a.dtype != array.dtype:
            raise ValueError(
                f"all_gather: tensor_list[{i}] is {a.dtype}{tuple(a.shape)}, input is "
                f"{array.dtype}{tuple(array.shape)}"
            )
    xp = get_array_module(array)
    out = xp.empty((pg.size(),) + array.shape, dtype=array.dtype)
    pg.allgather(out, array)
    for i, t in enumerate(tensor_list):
        t.array[...] = out[i]
    return Work(result=[tensor_list]) if async_op else None


def all_gather_into_tensor(output_tensor, input_tensor, group=None, async_op: bool = False):
    """Concatenate every rank's ``input_tensor`` (rank-major) into ``output_tensor``."""
    pg = resolve_group(group)
    out = _Contiguous(output_tensor, "all_gather_into_tensor")
    inp = _Contiguous(input_tensor, "all_gather_into_tensor").array
    pg.allgather(out.array, inp)
    out.commit()
    return Work(result=[output_tensor]) if async_op else None


def reduce_scatter_tensor(output, input, op: ReduceOp = ReduceOp.SUM, group=None,  # noqa: A002
                          async_op: bool = False):
    """Reduce ``input`` across ranks; rank r receives the r-th of ``size`` equal slices."""
    pg = resolve_group(group)
    out = _Contiguous(output, "reduce_scatter_tensor")
    inp = _Contiguous(input, "reduce_scatter_tensor").array
    pg.reduce_scatter(out.array, inp, op)
    out.commit()
    return Work(result=[output]) if async_op else None


def all_gather_object(object_list: list, obj: Any, group=None) -> None:
    """Fill ``object_list`` (length = group size) with every rank's picklable ``obj``."""
    pg = resolve_group(group)
    if len(object_list) != pg.size():
        raise ValueError(
            f"all_gather_object: object_list has {len(object_list)} entries, the group has "
            f"{pg.size()} ranks"
        )
    object_list[:] = pg.allgather_object(obj)


def broadcast_object_list(object_list: list, src: int = 0, group=None, device=None) -> None:
    """Replace ``object_list``'s entries on every rank with those of world rank ``src``."""
    pg = resolve_group(group)
    group_src = get_group_rank(pg, src)
    payload = list(object_list) if pg.rank() == group_src else None
    received = pg.broadcast_object(payload, group_src)
    if len(received) != len(object_list):
        raise ValueError(
            f"broadcast_object_list: rank {pg.rank()} passed {len(object_list)} entries, src "
            f"{src} sent {len(received)}"
        )
    object_list[:] = received
