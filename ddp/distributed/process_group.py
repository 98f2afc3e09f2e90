"""``ProcessGroup``: one rank's handle on a group of ranks, with array-level collectives.

Every public collective is a template method of this base class: it validates the arguments,
counts the collective, checks consensus, registers the wait with the watchdog
(``ddp.distributed.watchdog``, when one is installed) and only then calls the backend's
primitive (``_allreduce_impl`` ...), which just moves the bytes. A concrete group (local,
threads, mpi, nccl) implements those primitives and ``_verify``, its cheapest consensus.

The consensus check, unless ``check_collectives`` is False, sends a fingerprint of (sequence
number, kind, dtype, element count, op or root) through ``_verify`` (one ``Allreduce`` of
``[h, -h]`` with MAX on MPI), so ranks that disagree raise a ``RuntimeError`` on every rank
naming what each rank issued instead of hanging or summing unrelated buffers.

Bytes: every array collective reports its payload and the bytes it sends to the counters of
``ddp.distributed.traffic.count_traffic`` (for benchmarks, the memory ledger and tests of
communication hooks); it costs nothing when no counter is open.

Every method is a collective: all ranks of the group must call it, in the same order. A group
object may be used from any thread, but by one thread at a time; use :meth:`dup` for an
independent channel (e.g. for a communication thread).
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

from ddp import dtypes
from ddp.distributed import traffic, watchdog
from ddp.distributed.reduce_op import ReduceOp, Work, as_reduce_op

_UNWATCHED = contextlib.nullcontext()  # reusable: the watchdog is off or the text not needed
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


class _WatchedWork(Work):
    """An async collective's Work that stays registered with the watchdog until waited on."""

    def __init__(self, work: Work, dog: watchdog.Watchdog, token: int):
        super().__init__(self._finish_watched)
        self._work = work
        self._dog = dog
        self._token = token

    def _finish_watched(self) -> None:
        self._dog.blocked(self._token)  # until now the caller was free to compute
        try:
            self._work.wait()
        finally:
            self._dog.end(self._token)

    def is_completed(self) -> bool:
        return self._done or self._work.is_completed()


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
        local_rank: this process's rank among the group's processes on its node, when the
            backend knows it (``get_local_rank()``); None otherwise.

    Attributes:
        global_ranks: the world rank of each member, indexed by group rank.
        name: a label used in error messages.
        local_rank: see Args.
    """

    backend = "base"

    def __init__(self, rank: int, size: int, global_ranks: list[int], name: str = "WORLD", *,
                 check_collectives: bool = True, local_rank: int | None = None):
        self._rank = rank
        self._size = size
        self.global_ranks = list(global_ranks)
        self.name = name
        self.local_rank = local_rank
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
        op = self._check_allreduce(array, op)
        with self._watched(self._begin("allreduce", array, f"op={op.name}")), \
                self._counted("allreduce", array, array):
            self._allreduce_impl(array, op)

    def allreduce_async(self, array, op: ReduceOp = ReduceOp.SUM) -> Work:
        """Start :meth:`allreduce`; the result is in ``array`` after ``Work.wait()``.

        The consensus check (when on) runs before this returns; the watchdog times the
        collective until ``wait()``.
        """
        op = self._check_allreduce(array, op)
        text = self._begin("allreduce", array, f"op={op.name}")
        dog = watchdog.current()
        if text is None or dog is None:
            with self._counted("allreduce", array, array):
                return self._allreduce_async_impl(array, op)
        token = dog.begin(self._watch_label(text, " (started asynchronously)"),
                          ranks=self.global_ranks, blocked=False)
        try:
            with self._counted("allreduce", array, array):
                work = self._allreduce_async_impl(array, op)
        except BaseException:
            dog.end(token)
            raise
        return _WatchedWork(work, dog, token)

    def _check_allreduce(self, array, op) -> ReduceOp:
        op = as_reduce_op(op)
        _check_array(array, "allreduce")
        if op is ReduceOp.AVG and not dtypes.is_inexact(array.dtype):
            raise TypeError(f"allreduce: ReduceOp.AVG needs a floating array, got {array.dtype}")
        return op

    def broadcast(self, array, src: int) -> None:
        """Copy ``array`` of group rank ``src`` into ``array`` on every rank, in place."""
        self._check_rank(src, "broadcast src")
        _check_array(array, "broadcast")
        with self._watched(self._begin("broadcast", array, f"src={src}")), \
                self._counted("broadcast", array, array):
            self._broadcast_impl(array, src)

    def allgather(self, out_array, in_array) -> None:
        """Concatenate every rank's ``in_array`` into ``out_array`` in rank order."""
        _check_array(out_array, "allgather out")
        _check_array(in_array, "allgather in")
        if out_array.size != self._size * in_array.size or out_array.dtype != in_array.dtype:
            raise ValueError(
                f"allgather: out has {out_array.size} {out_array.dtype} elements, expected "
                f"size * in.size = {self._size} * {in_array.size} of {in_array.dtype}"
            )
        with self._watched(self._begin("allgather", in_array, "")), \
                self._counted("allgather", in_array, out_array):
            self._allgather_impl(out_array, in_array)

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
        if op is ReduceOp.AVG and not dtypes.is_inexact(in_array.dtype):
            raise TypeError(f"reduce_scatter: AVG needs a floating array, got {in_array.dtype}")
        with self._watched(self._begin("reduce_scatter", in_array, f"op={op.name}")), \
                self._counted("reduce_scatter", in_array, in_array):
            self._reduce_scatter_impl(out_array, in_array, op)

    def barrier(self) -> None:
        """Block until every rank of the group has called ``barrier``."""
        with self._watched(self._begin("barrier", None, "")):
            self._barrier_impl()

    def allgather_object(self, obj: Any) -> list:
        """Every rank's picklable ``obj``, in rank order (pickles: small objects only)."""
        with self._watched(self._begin("allgather_object", None, "")):
            return self._allgather_object_impl(obj)

    def broadcast_object(self, obj: Any, src: int) -> Any:
        """Rank ``src``'s picklable ``obj`` on every rank (pickles: small objects only)."""
        self._check_rank(src, "broadcast_object src")
        with self._watched(self._begin("broadcast_object", None, f"src={src}")):
            return self._broadcast_object_impl(obj, src)

    # ------------------------------------------------------------------------ group lifecycle
    def verify(self, description: str) -> None:
        """Collective: raise RuntimeError on every rank unless all passed the same description.

        Always checks, whatever ``check_collectives`` says.
        """
        self._seq += 1
        text = f"#{self._seq} verify({description})"
        self._consensus(text, text)

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
                different descriptions (or issued something else than ``dup``). The check runs
                whatever this group's ``check_collectives`` says.
        """
        self._seq += 1
        text = f"#{self._seq} dup({'' if description is None else description})"
        self._consensus(text, "dup")
        with self._watched(text):
            return self._dup_impl(self._check_collectives if description is None else False)

    def new_subgroup(self, ranks: list[int]) -> ProcessGroup | None:
        """A group of the given group ranks (sorted); None on non-members. Call on all ranks.

        The ranks are always checked to agree; the new group checks its collectives as this
        one does.
        """
        ranks = sorted(int(r) for r in ranks)
        if len(set(ranks)) != len(ranks) or not ranks:
            raise ValueError(f"new_group: ranks must be distinct and non-empty, got {ranks}")
        for r in ranks:
            self._check_rank(r, "new_group rank")
        self._seq += 1
        text = f"#{self._seq} new_group(ranks={ranks})"
        self._consensus(text, "new_group")
        with self._watched(text):
            return self._new_subgroup_impl(ranks, self._check_collectives)

    def destroy(self) -> None:
        """Release the backend's resources (not a collective); the group is unusable after."""
        self._destroy_impl()

    # ------------------------------------------------------------------------------- helpers
    def _counted(self, kind: str, payload, buffer):
        """The traffic-counting scope of one collective (``ddp.distributed.traffic``)."""
        return traffic.counted(self.global_ranks[self._rank], kind, int(payload.nbytes),
                               int(buffer.nbytes), self._size)

    def _check_rank(self, rank: int, what: str) -> None:
        if not 0 <= rank < self._size:
            raise ValueError(f"{what} {rank} is out of range for a group of size {self._size}")


    def _begin(self, kind: str, array, extra: str) -> str | None:
        """Count the next collective and check consensus when on; its text for the watchdog.

        The text is None when neither the check nor a watchdog needs it, so the unchecked,
        unwatched hot path formats nothing.
        """
        self._seq += 1
        if not self._check_collectives:
            return None if watchdog.current() is None else self._describe(kind, array, extra)
        text = self._describe(kind, array, extra)
        self._consensus(text, kind)
        return text

    def _describe(self, kind: str, array, extra: str) -> str:
        """The fingerprint text of the collective numbered ``self._seq``."""
        if array is None:
            return f"#{self._seq} {kind}({extra})"
        sep = ", " if extra else ""
        # The shape is part of the check unless 1-D: (2, 3) on one rank and (3, 2) on another
        # would otherwise be reduced element by element into a silently wrong result.
        shape = f", shape={tuple(array.shape)}" if array.ndim != 1 else ""
        return f"#{self._seq} {kind}({array.dtype}, numel={array.size}{shape}{sep}{extra})"

    def _consensus(self, text: str, what: str) -> None:
        """Raise RuntimeError on every rank unless every rank passed ``text`` (a collective).

        ``what`` names the collective in errors about ranks that never arrive.
        """
        with self._watched(text, note=" (in the check that every rank issued it)"):
            self._verify(text, what)

    def _watch_label(self, text: str, note: str = "") -> str:
        # The same on every rank, so the watchdog's report can group ranks that wait alike.
        return f"{text} of group {self.name!r}{note}"

    def _watched(self, text: str | None, note: str = ""):
        """A context registering the collective ``text`` with the watchdog while it waits."""
        dog = watchdog.current()
        if text is None or dog is None:
            return _UNWATCHED
        return dog.watch(self._watch_label(text, note), ranks=self.global_ranks)

    # -------------------------------------------------------------------- backend primitives
    # Collectives that only move bytes: arguments are valid, consensus is checked and the
    # watchdog is armed by the public method that calls them.
    def _verify(self, description: str, what: str) -> None:
        """Raise RuntimeError on every rank unless all passed ``description`` (a collective).

        ``what`` is the short name of the checked collective, for errors raised while waiting.
        """
        raise NotImplementedError

    def _allreduce_impl(self, array, op: ReduceOp) -> None:
        raise NotImplementedError

    def _allreduce_async_impl(self, array, op: ReduceOp) -> Work:
        self._allreduce_impl(array, op)
        return Work()

    def _broadcast_impl(self, array, src: int) -> None:
        raise NotImplementedError

    def _allgather_impl(self, out_array, in_array) -> None:
        raise NotImplementedError

    def _reduce_scatter_impl(self, out_array, in_array, op: ReduceOp) -> None:
        raise NotImplementedError

    def _barrier_impl(self) -> None:
        raise NotImplementedError

    def _allgather_object_impl(self, obj: Any) -> list:
        raise NotImplementedError

    def _broadcast_object_impl(self, obj: Any, src: int) -> Any:
        raise NotImplementedError

    def _dup_impl(self, check_collectives: bool) -> ProcessGroup:
        """A new group on the same ranks with its own channel."""
        raise NotImplementedError

    def _new_subgroup_impl(self, ranks: list[int], check_collectives: bool) -> ProcessGroup | None:
        raise NotImplementedError

    def _destroy_impl(self) -> None:
        """Release backend resources (not a collective)."""
