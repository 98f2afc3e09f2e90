"""The ``threads`` backend: N simulated ranks as threads of one process.

Each collective is an exchange on a *channel*: every rank puts (fingerprint, payload) in its
slot and meets the others at a rendezvous; each rank then reads all slots and computes its own
result (reductions in rank order, so every rank gets bit-identical, deterministic results); a
second rendezvous guarantees nobody reuses its buffer while others still read it. Payloads are
the callers' arrays themselves (no copies until the result is written back).

A ``Universe`` holds what all channels of one ``spawn`` share: a condition variable, the ranks
that have exited and the failure that aborted the job. A rank that waits for a rank that failed
or returned gets a ``RuntimeError`` instead of hanging, and so does one that waits longer than
``DDP_TIMEOUT`` seconds (default 1800) for ranks that never come.
"""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Callable
from typing import Any

from ddp.backend import get_array_module
from ddp.distributed.process_group import ProcessGroup, mismatch_message
from ddp.distributed.reduce_op import ReduceOp


class PeerAbortedError(RuntimeError):
    """Raised in a rank whose collective was abandoned because another rank failed."""


class Universe:
    """State shared by all channels of one simulated job."""

    def __init__(self, size: int):
        from ddp.distributed.watchdog import timeout_seconds

        self.size = size
        self.cond = threading.Condition()
        self.exited: set[int] = set()
        self.failure: str | None = None
        self.timeout_s = timeout_seconds()  # DDP_TIMEOUT, else the default

    def abort(self, message: str) -> None:
        """Make every current and future rendezvous raise ``PeerAbortedError(message)``."""
        with self.cond:
            if self.failure is None:
                self.failure = message
            self.cond.notify_all()

    def rank_exited(self, rank: int) -> None:
        with self.cond:
            self.exited.add(rank)
            self.cond.notify_all()


class Channel:
    """One independent sequence of collectives among ``members`` (world ranks)."""

    def __init__(self, universe: Universe, members: list[int]):
        self.universe = universe
        self.members = list(members)
        self.slots: list[Any] = [None] * len(members)
        self._count = 0
        self._generation = 0

    def _raise_if_dead(self, group_rank: int, what: str) -> None:
        u = self.universe
        if u.failure is not None:
            raise PeerAbortedError(
                f"rank {self.members[group_rank]}: {what} abandoned because {u.failure}"
            )
        gone = [r for r in self.members if r in u.exited]
        if gone:
            raise RuntimeError(
                f"rank {self.members[group_rank]} waits in {what} for rank(s) {gone}, which "
                "already returned: ranks issued different numbers of collectives"
            )

    def rendezvous(self, group_rank: int, what: str) -> None:
        """Block until all members arrived (a reusable barrier that cannot hang on a dead rank)."""
        with self.universe.cond:
            self._raise_if_dead(group_rank, what)
            generation = self._generation
            self._count += 1
            if self._count == len(self.members):
                self._count = 0
                self._generation += 1
                self.universe.cond.notify_all()
                return
            deadline = time.monotonic() + self.universe.timeout_s
            while self._generation == generation:
                self._raise_if_dead(group_rank, what)
                left = deadline - time.monotonic()
                if left <= 0:  # nobody failed or returned: some rank never issues this one
                    waiting = self.members[group_rank]
                    raise RuntimeError(
                        f"rank {waiting} waited in {what} past the timeout of "
                        f"{self.universe.timeout_s:g} s: the other ranks never issued it "
                        f"(ranks running different numbers of backward()/step(), or a "
                        f"collective in a rank-dependent branch?). DDP_TIMEOUT sets the limit."
                    )
                self.universe.cond.wait(min(left, 1.0))

    def exchange(self, group_rank: int, desc: str | None, payload: Any, what: str,
                 compute: Callable[[list], Any], group_name: str) -> Any:
        """Publish ``payload``, then return ``compute(all payloads)``; checks fingerprints."""
        self.slots[group_rank] = (desc, payload)
        self.rendezvous(group_rank, what)
        error = None
        result = None
        try:
            descs = [s[0] for s in self.slots]
            if any(d is not None for d in descs) and any(d != desc for d in descs):
                texts = [d if d is not None else "a collective with checks off" for d in descs]
                error = RuntimeError(mismatch_message(group_name, "threads", texts))
            else:
                result = compute([s[1] for s in self.slots])
        except Exception as exc:  # keep the second rendezvous, then re-raise
            error = exc
        self.rendezvous(group_rank, what)
        self.slots[group_rank] = None
        if error is not None:
            raise error
        return result


def _reduce(arrays: list, op: ReduceOp, size: int):
    xp = get_array_module(arrays[0])
    acc = arrays[0].copy()
    for a in arrays[1:]:
        if op in (ReduceOp.SUM, ReduceOp.AVG):
            acc += a
        elif op is ReduceOp.PRODUCT:
            acc *= a
        elif op is ReduceOp.MAX:
            xp.maximum(acc, a, out=acc)
        else:
            xp.minimum(acc, a, out=acc)
    if op is ReduceOp.AVG:
        acc /= size
    return acc


def _copy_object(obj: Any) -> Any:
    # Ranks must not share mutable objects: the MPI backend pickles, so do the same.
    return pickle.loads(pickle.dumps(obj))


class ThreadsProcessGroup(ProcessGroup):
    """One simulated rank's view of a channel."""

    backend = "threads"

    def __init__(self, channel: Channel, rank: int, name: str = "WORLD", *,
                 check_collectives: bool = True):
        super().__init__(rank, len(channel.members), channel.members, name,
                         check_collectives=check_collectives)
        self.channel = channel

    def _exchange(self, desc, payload, what, compute):
        return self.channel.exchange(self._rank, desc, payload, what, compute, self.name)

    def _verify(self, description: str) -> None:
        self._exchange(description, None, description, lambda _: None)

    def _allreduce(self, array, op: ReduceOp, desc: str | None) -> None:
        result = self._exchange(desc, array, "allreduce", lambda xs: _reduce(xs, op, self._size))
        array[...] = result

    def _broadcast(self, array, src: int, desc: str | None) -> None:
        def compute(arrays):
            if arrays[src].size != array.size:
                raise ValueError(
                    f"broadcast: rank {self._rank} has {array.size} elements, src {src} has "
                    f"{arrays[src].size}"
                )
            if self._rank != src:
                array.reshape(-1)[...] = arrays[src].reshape(-1)

        self._exchange(desc, array, "broadcast", compute)

    def _allgather(self, out_array, in_array, desc: str | None) -> None:
        def compute(arrays):
            xp = get_array_module(out_array)
            return xp.concatenate([a.reshape(-1) for a in arrays])

        out_array.reshape(-1)[...] = self._exchange(desc, in_array, "allgather", compute)

    def _reduce_scatter(self, out_array, in_array, op: ReduceOp, desc: str | None) -> None:
        n = out_array.size
        lo, hi = self._rank * n, (self._rank + 1) * n

        def compute(arrays):
            return _reduce([a.reshape(-1)[lo:hi] for a in arrays], op, self._size)

        out_array.reshape(-1)[...] = self._exchange(desc, in_array, "reduce_scatter", compute)

    def _barrier(self, desc: str | None) -> None:
        self._exchange(desc, None, "barrier", lambda _: None)

    def _allgather_object(self, obj: Any, desc: str | None) -> list:
        payload = pickle.dumps(obj)
        return self._exchange(desc, payload, "allgather_object",
                              lambda xs: [pickle.loads(x) for x in xs])

    def _broadcast_object(self, obj: Any, src: int, desc: str | None) -> Any:
        payload = pickle.dumps(obj) if self._rank == src else None
        if self._rank == src:
            return self._exchange(desc, payload, "broadcast_object", lambda xs: obj)
        return self._exchange(desc, payload, "broadcast_object", lambda xs: pickle.loads(xs[src]))

    def _dup(self, desc: str, check_collectives: bool) -> ProcessGroup:
        # Rank 0 makes the channel and publishes it; the others adopt it.
        fresh = Channel(self.channel.universe, self.channel.members) if self._rank == 0 else None
        channel = self._exchange(desc, fresh, "dup", lambda xs: xs[0])
        return ThreadsProcessGroup(channel, self._rank, self.name + ".dup",
                                   check_collectives=check_collectives)

    def _new_subgroup(self, ranks: list[int], desc: str) -> ProcessGroup | None:
        members = [self.global_ranks[r] for r in ranks]
        fresh = Channel(self.channel.universe, members) if self._rank == 0 else None
        channel = self._exchange(desc, fresh, "new_group", lambda xs: xs[0])
        if self._rank not in ranks:
            return None
        return ThreadsProcessGroup(channel, ranks.index(self._rank), f"group{members}")


def make_world(size: int) -> tuple[Universe, list[ThreadsProcessGroup]]:
    """A new simulated job of ``size`` ranks: its universe and each rank's WORLD group."""
    if size < 1:
        raise ValueError(f"world_size must be >= 1, got {size}")
    universe = Universe(size)
    channel = Channel(universe, list(range(size)))
    return universe, [ThreadsProcessGroup(channel, r) for r in range(size)]
