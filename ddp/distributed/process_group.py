"""``ProcessGroup``: one rank's handle on a group of ranks, with array-level collectives.

A concrete group (local, threads, mpi) implements the underscored primitives; this base class
validates arguments and, unless ``check_collectives`` is False, verifies before every collective
that all ranks issued the same one. The check sends a fingerprint of (sequence number, kind,
dtype, element count, op or root) through the backend's cheapest consensus (one ``Allreduce``
of ``[h, -h]`` with MAX on MPI), so ranks that disagree raise a ``RuntimeError`` on every rank
naming what each rank issued instead of hanging or summing unrelated buffers.

Every method is a collective: all ranks of the group must call it, in the same order. A group
object may be used from any thread, but by one thread at a time; use :meth:`dup` for an
independent channel (e.g. for a communication thread).
"""

from __future__ import annotations

import hashlib
from typing import Any

from ddp.distributed.reduce_op import ReduceOp, Work, as_reduce_op


def fingerprint(description: str) -> int:
    """A rank-independent 62-bit hash of ``description`` (``hash()`` is salted per process)."""
    digest = hashlib.blake2b(description.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 62) - 1)


def mismatch_message(group_name: str, backend: str, descriptions: list[str]) -> str:
    """The error for ranks that issued different collectives: who issued what."""
    by_desc: dict[str, list[int]] = {}
    for rank, desc in enumerate(descriptions):
        by_desc.setdefault(desc, []).append(rank)
    parts = []
    for desc, ranks in by_desc.items():
        who = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {ranks}"
        parts.append(f"{who} issued {desc}")
    return (
        f"Collective mismatch in process group {group_name!r} (backend {backend}): "
        + "; ".join(parts)
        + ". Every rank must call the same collectives in the same order with the same dtype "
        "and element count (is a collective inside a rank-dependent branch?)."
    )


def _check_array(array, what: str) -> None:
    flags = getattr(array, "flags", None)
    if flags is None:
        raise TypeError(f"{what}: expected a NumPy or CuPy array, got {type(array).__name__}")
    if not flags.c_contiguous:
        raise ValueError(
            f"{what}: array of shape {tuple(array.shape)} is not C-contiguous; collectives work "
            "in place on contiguous memory (pass a contiguous copy and copy back)"
        )


class ProcessGroup:
    """Base of all process groups; see the module docstring.

    Args:
        rank: this process's rank within the group.
        size: the number of ranks.
        global_ranks: the world rank of each member, indexed by group rank.
        name: a label used in error messages.
        check_collectives: verify before each collective that all ranks issued the same one.
            Fixed for the group's lifetime and the same on all ranks; a group made by
            ``dup(description=...)`` has it off (see :meth:`dup`).

    Attributes:
        global_ranks: the world rank of each member, indexed by group rank.
        name: a label used in error messages.
    """

    backend = "base"

    def __init__(self, rank: int, size: int, global_ranks: list[int], name: str = "WORLD", *,
                 check_collectives: bool = True):
        self._rank = rank
        self._size = size
        self.global_ranks = list(global_ranks)
        self.name = name
        self._check_collectives = bool(check_collectives)
        self._seq = 0

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.name!r} backend={self.backend} "
            f"rank={self._rank} size={self._size}>"
        )

    @property
    def check_collectives(self) -> bool:
        """Whether each collective first checks that all ranks issued the same one (read-only)."""
        return self._check_collectives

    def rank(self) -> int:
        """This process's rank within the group."""
        return self._rank

    def size(self) -> int:
        """Number of ranks in the group."""
        return self._size

    # ------------------------------------------------------------------ array-level collectives
    def allreduce(self, array, op: ReduceOp = ReduceOp.SUM) -> None:
        """Reduce ``array`` over all ranks, in place; every rank gets the result."""
        op, desc = self._allreduce_args(array, op)
        self._allreduce(array, op, desc)

    def allreduce_async(self, array, op: ReduceOp = ReduceOp.SUM) -> Work:
        """Start :meth:`allreduce`; the result is in ``array`` after ``Work.wait()``."""
        op, desc = self._allreduce_args(array, op)
        return self._allreduce_async(array, op, desc)

    def _allreduce_args(self, array, op) -> tuple[ReduceOp, str | None]:
        op = as_reduce_op(op)
        _check_array(array, "allreduce")
        if op is ReduceOp.AVG and array.dtype.kind not in "fc":
            raise TypeError(f"allreduce: ReduceOp.AVG needs a floating array, got {array.dtype}")
        return op, self._describe("allreduce", array, f"op={op.name}")

    def broadcast(self, array, src: int) -> None:
        """Copy ``array`` of group rank ``src`` into ``array`` on every rank, in place."""
        self._check_rank(src, "broadcast src")
        _check_array(array, "broadcast")
        self._broadcast(array, src, self._describe("broadcast", array, f"src={src}"))

    def allgather(self, out_array, in_array) -> None:
        """Concatenate every rank's ``in_array`` into ``out_array`` in rank order."""
        _check_array(out_array, "allgather out")
        _check_array(in_array, "allgather in")
        if out_array.size != self._size * in_array.size or out_array.dtype != in_array.dtype:
            raise ValueError(
                f"allgather: out has {out_array.size} {out_array.dtype} elements, expected "
                f"size * in.size = {self._size} * {in_array.size} of {in_array.dtype}"
            )
        self._allgather(out_array, in_array, self._describe("allgather", in_array, ""))

    def reduce_scatter(self, out_array, in_array, op: ReduceOp = ReduceOp.SUM) -> None:
        """Reduce ``in_array`` over ranks; rank r gets the r-th of ``size`` equal slices."""
        op = as_reduce_op(op)
        _check_array(out_array, "reduce_scatter out")
        _check_array(in_array, "reduce_scatter in")
        if in_array.size != self._size * out_array.size or out_array.dtype != in_array.dtype:
            raise ValueError(
                f"reduce_scatter: in has {in_array.size} {in_array.dtype} elements, expected "
                f"size * out.size = {self._size} * {out_array.size} of {out_array.dtype}"
            )
        if op is ReduceOp.AVG and in_array.dtype.kind not in "fc":
            raise TypeError(f"reduce_scatter: AVG needs a floating array, got {in_array.dtype}")
        desc = self._describe("reduce_scatter", in_array, f"op={op.name}")
        self._reduce_scatter(out_array, in_array, op, desc)

    def barrier(self) -> None:
        """Block until every rank of the group has called ``barrier``."""
        self._barrier(self._describe("barrier", None, ""))

    def allgather_object(self, obj: Any) -> list:
        """Every rank's picklable ``obj``, in rank order (pickles: small objects only)."""
        return self._allgather_object(obj, self._describe("allgather_object", None, ""))

    def broadcast_object(self, obj: Any, src: int) -> Any:
        """Rank ``src``'s picklable ``obj`` on every rank (pickles: small objects only)."""
        self._check_rank(src, "broadcast_object src")
        desc = self._describe("broadcast_object", None, f"src={src}")
        return self._broadcast_object(obj, src, desc)

    def verify(self, description: str) -> None:
        """Collective: raise RuntimeError on every rank unless all passed the same description.

        Always checks, whatever ``check_collectives`` says.
        """
        self._seq += 1
        self._verify(f"#{self._seq} verify({description})")

    def dup(self, description: str | None = None) -> ProcessGroup:
        """A new group on the same ranks with its own channel; a collective of this group.

        Args:
            description: what fixes the order of every collective the new group will issue
                (e.g. a bucket layout). When given, all ranks must pass the same text, and the
                new group skips the per-collective consensus check: its order is fixed by the
                verified description. When None, the new group checks as this one does.

        Returns:
            The new group; its ``check_collectives`` is False with a description, else this
            group's.

        Raises:
            RuntimeError: on every rank, naming what each rank passed, when ranks passed
                different descriptions (or issued something else than ``dup``).
        """
        self._seq += 1
        if description is None:
            return self._dup(f"#{self._seq} dup()", self._check_collectives)
        return self._dup(f"#{self._seq} dup({description})", False)

    def new_subgroup(self, ranks: list[int]) -> ProcessGroup | None:
        """A group of the given group ranks (sorted); None on non-members. Call on all ranks."""
        ranks = sorted(int(r) for r in ranks)
        if len(set(ranks)) != len(ranks) or not ranks:
            raise ValueError(f"new_group: ranks must be distinct and non-empty, got {ranks}")
        for r in ranks:
            self._check_rank(r, "new_group rank")
        self._seq += 1
        return self._new_subgroup(ranks, f"#{self._seq} new_group(ranks={ranks})")

    # ------------------------------------------------------------------------------- helpers
    def _check_rank(self, rank: int, what: str) -> None:
        if not 0 <= rank < self._size:
            raise ValueError(f"{what} {rank} is out of range for a group of size {self._size}")

    def _describe(self, kind: str, array, extra: str) -> str | None:
        """The fingerprint text of the next collective, or None when checks are off."""
        self._seq += 1
        if not self._check_collectives:
            return None
        if array is None:
            return f"#{self._seq} {kind}({extra})"
        sep = ", " if extra else ""
        # The shape is part of the check unless 1-D: (2, 3) on one rank and (3, 2) on another
        # would otherwise be reduced element by element into a silently wrong result.
        shape = f", shape={tuple(array.shape)}" if array.ndim != 1 else ""
        return f"#{self._seq} {kind}({array.dtype}, numel={array.size}{shape}{sep}{extra})"

    # ---------------------------------------------------- backend primitives (all collectives)
    def _verify(self, description: str) -> None:
        raise NotImplementedError

    def _allreduce(self, array, op: ReduceOp, desc: str | None) -> None:
        raise NotImplementedError

    def _allreduce_async(self, array, op: ReduceOp, desc: str | None) -> Work:
        self._allreduce(array, op, desc)
        return Work()

    def _broadcast(self, array, src: int, desc: str | None) -> None:
        raise NotImplementedError

    def _allgather(self, out_array, in_array, desc: str | None) -> None:
        raise NotImplementedError

    def _reduce_scatter(self, out_array, in_array, op: ReduceOp, desc: str | None) -> None:
        raise NotImplementedError

    def _barrier(self, desc: str | None) -> None:
        raise NotImplementedError

    def _allgather_object(self, obj: Any, desc: str | None) -> list:
        raise NotImplementedError

    def _broadcast_object(self, obj: Any, src: int, desc: str | None) -> Any:
        raise NotImplementedError

    def _dup(self, desc: str, check_collectives: bool) -> ProcessGroup:
        """A new group on the same ranks after verifying ``desc`` (always, checks on or off)."""
        raise NotImplementedError

    def _new_subgroup(self, ranks: list[int], desc: str) -> ProcessGroup | None:
        raise NotImplementedError

    def _destroy(self) -> None:
        """Release backend resources (not a collective)."""
