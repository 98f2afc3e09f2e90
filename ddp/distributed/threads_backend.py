"""The ``threads`` backend: N simulated ranks as threads of one process.

Each collective is an exchange on a *channel*: every rank puts its payload in its slot and
meets the others at a rendezvous; each rank then reads all slots and computes its own result
(reductions in rank order, so every rank gets bit-identical, deterministic results); a second
rendezvous guarantees nobody reuses its buffer while others still read it. Payloads are the
callers' arrays themselves (no copies until the result is written back). The consensus check
(``_verify``) compares the ranks' fingerprint texts at one rendezvous (``Channel.agree``).

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
from ddp.distributed.watchdog import timeout_seconds


class PeerAbortedError(RuntimeError):
    """Raised in a rank whose collective was abandoned because another rank failed."""


class Universe:
    """State shared by all channels of one simulated job."""

    def __init__(self, size: int):
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
        # Consensus texts, in two rows used alternately (see ``agree``).
        self._texts: list[list[str | None]] = [[None] * len(members), [None] * len(members)]
        self._agreements = [0] * len(members)  # per member: how many ``agree`` calls so far
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

    def agree(self, group_rank: int, text: str, what: str) -> list[str | None]:
        """Publish ``text`` and return every member's text of the same round.

        One rendezvous instead of an exchange's two: the texts are immutable, and successive
        rounds alternate between two rows, so a member that runs ahead can only write a row
        again after everyone passed the next rendezvous, that is, finished reading this one.
        """
        row = self._texts[self._agreements[group_rank] % 2]
        self._agreements[group_rank] += 1
        row[group_rank] = text
        self.rendezvous(group_rank, what)
        return list(row)

    def exchange(self, group_rank: int, payload: Any, what: str,
                 compute: Callable[[list], Any]) -> Any:
        """Publish ``payload``, then return ``compute(all payloads)`` (raising on every rank
        that ``compute`` raises on, after the others finished reading the payloads)."""
        self.slots[group_rank] = payload
        self.rendezvous(group_rank, what)
        error = None
        result = None
        try:
            result = compute(list(self.slots))
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

    def _exchange(self, payload, what, compute):
        return self.channel.exchange(self._rank, payload, what, compute)

    def _verify(self, description: str, what: str) -> None:
        texts = self.channel.agree(self._rank, description, what)
        if any(t != description for t in texts):
            # A text that is not there: that rank is in an exchange without a check.
            shown = [t if t is not None else "a collective without a consensus check"
                     for t in texts]
            raise RuntimeError(mismatch_message(self.name, "threads", shown))

    def _allreduce_impl(self, array, op: ReduceOp) -> None:
        array[...] = self._exchange(array, "allreduce", lambda xs: _reduce(xs, op, self._size))

    def _broadcast_impl(self, array, src: int) -> None:
        def compute(arrays):
            if arrays[src].size != array.size:
                raise ValueError(
                    f"broadcast: rank {self._rank} has {array.size} elements, src {src} has "
                    f"{arrays[src].size}"
                )
            if self._rank != src:
                array.reshape(-1)[...] = arrays[src].reshape(-1)

        self._exchange(array, "broadcast", compute)

    def _allgather_impl(self, out_array, in_array) -> None:
        def compute(arrays):
            xp = get_array_module(out_array)
            return xp.concatenate([a.reshape(-1) for a in arrays])

        out_array.reshape(-1)[...] = self._exchange(in_array, "allgather", compute)

    def _reduce_scatter_impl(self, out_array, in_array, op: ReduceOp) -> None:
        n = out_array.size
        lo, hi = self._rank * n, (self._rank + 1) * n

        def compute(arrays):
            return _reduce([a.reshape(-1)[lo:hi] for a in arrays], op, self._size)

        out_array.reshape(-1)[...] = self._exchange(in_array, "reduce_scatter", compute)

    def _barrier_impl(self) -> None:
        self._exchange(None, "barrier", lambda _: None)

    def _allgather_object_impl(self, obj: Any) -> list:
        payload = pickle.dumps(obj)
        return self._exchange(payload, "allgather_object", lambda xs: [pickle.loads(x) for x in xs])

    def _broadcast_object_impl(self, obj: Any, src: int) -> Any:
        payload = pickle.dumps(obj) if self._rank == src else None
        if self._rank == src:
            return self._exchange(payload, "broadcast_object", lambda xs: obj)
        return self._exchange(payload, "broadcast_object", lambda xs: pickle.loads(xs[src]))

    def _dup_impl(self, check_collectives: bool) -> ProcessGroup:
        # Rank 0 makes the channel and publishes it; the others adopt it.
        fresh = Channel(self.channel.universe, self.channel.members) if self._rank == 0 else None
        channel = self._exchange(fresh, "dup", lambda xs: xs[0])
        return ThreadsProcessGroup(channel, self._rank, self.name + ".dup",
                                   check_collectives=check_collectives)

    def _new_subgroup_impl(self, ranks: list[int], check_collectives: bool) -> ProcessGroup | None:
        members = [self.global_ranks[r] for r in ranks]
        fresh = Channel(self.channel.universe, members) if self._rank == 0 else None
        channel = self._exchange(fresh, "new_group", lambda xs: xs[0])
        if self._rank not in ranks:
            return None
        return ThreadsProcessGroup(channel, ranks.index(self._rank), f"group{members}",
                                   check_collectives=check_collectives)


def make_world(size: int) -> tuple[Universe, list[ThreadsProcessGroup]]:
    """A new simulated job of ``size`` ranks: its universe and each rank's WORLD group."""
    if size < 1:
        raise ValueError(f"world_size must be >= 1, got {size}")
    universe = Universe(size)
    channel = Channel(universe, list(range(size)))
    return universe, [ThreadsProcessGroup(channel, r) for r in range(size)]
