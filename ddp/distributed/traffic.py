"""``count_traffic``: the bytes the array collectives move, counted while a counter is open.

Every array-level collective of every ``ProcessGroup`` (the user's and the private channels
DDP, ZeRO and ``fully_shard`` ``dup`` for themselves) reports to the open counters two
measures, per world rank and per collective kind:

* **payload**: the bytes the rank hands to the collective: ``allreduce`` and ``broadcast`` the
  array, ``allgather`` the rank's piece, ``reduce_scatter`` the full input. What a
  communication hook compresses (fp16 halves it, PowerSGD of rank r sends r(m+n) per m x n
  gradient).
* **sent**: the bytes the rank sends under the bandwidth-optimal algorithms, B being the
  buffer's size and N the group's size: all-reduce ``2 (N-1)/N B`` (ring: reduce-scatter +
  all-gather), reduce-scatter ``(N-1)/N B_in``, all-gather ``(N-1)/N B_out``, broadcast
  ``(N-1)/N B`` (pipelined). Exact for ring implementations and what the ZeRO paper's volumes
  count; MPI may pick other algorithms for small messages.

Not counted: the consensus fingerprints, barriers and the pickled ``*_object`` collectives
(small control messages). A collective that one group forwards to another (NCCL's host-array
path runs MPI's) counts once. Counting costs one list check per collective when no counter is
open.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

_lock = threading.Lock()
_open: list[TrafficCounter] = []
_nesting = threading.local()  # depth of counted collectives on this thread (forwarding)


@dataclass(eq=False)  # counters are removed by identity: two may hold equal numbers
class TrafficCounter:
    """What the counted ranks' collectives moved while the counter was open.

    ``rank`` is the world rank counted, or None for every rank of this process (the threads
    backend's simulated ranks each under its own number; under MPI only this process's rank).
    ``total`` / ``by_kind``: bytes sent (ring model, see the module docstring);
    ``payload_by_rank`` / ``payload_by_kind``: bytes handed to the collectives; ``calls``.
    """

    rank: int | None = None
    total: float = 0.0
    by_kind: dict[str, float] = field(default_factory=dict)
    payload_by_rank: dict[int, int] = field(default_factory=dict)
    payload_by_kind: dict[str, int] = field(default_factory=dict)
    calls: int = 0

    def payload(self, rank: int | None = None) -> int:
        """Bytes world rank ``rank`` handed to collectives; every counted rank's when None."""
        if rank is None:
            return sum(self.payload_by_rank.values())
        return self.payload_by_rank.get(rank, 0)

    def _add(self, rank: int, kind: str, payload: int, sent: float) -> None:
        self.total += sent
        self.by_kind[kind] = self.by_kind.get(kind, 0.0) + sent
        self.payload_by_rank[rank] = self.payload_by_rank.get(rank, 0) + payload
        self.payload_by_kind[kind] = self.payload_by_kind.get(kind, 0) + payload
        self.calls += 1


def sent_bytes(kind: str, nbytes: int, size: int) -> float:
    """Bytes one rank sends in collective ``kind`` of a ``nbytes`` buffer over ``size`` ranks
    (the buffer: the all-gather's output, the reduce-scatter's input, else the array)."""
    if size <= 1:
        return 0.0
    factor = (size - 1) / size
    return 2 * factor * nbytes if kind == "allreduce" else factor * nbytes


class _Scope:
    def __init__(self, world_rank: int, kind: str, payload: int, buffer: int, size: int):
        self.args = (world_rank, kind, payload, buffer, size)

    def __enter__(self):
        depth = getattr(_nesting, "depth", 0)
        if depth == 0:
            rank, kind, payload, buffer, size = self.args
            sent = sent_bytes(kind, buffer, size)
            with _lock:
                for counter in _open:
                    if counter.rank is None or counter.rank == rank:
                        counter._add(rank, kind, payload, sent)
        _nesting.depth = depth + 1
        return self

    def __exit__(self, *exc) -> bool:
        _nesting.depth -= 1
        return False


_NOTHING = contextlib.nullcontext()


def counted(world_rank: int, kind: str, payload: int, buffer: int, size: int):
    """The scope of one collective (``ProcessGroup`` wraps each in it): counts it on entry
    unless it runs inside another counted collective of this thread; a shared no-op while no
    counter is open. ``payload``/``buffer``: see the module docstring and :func:`sent_bytes`."""
    return _NOTHING if not _open else _Scope(world_rank, kind, payload, buffer, size)


@contextlib.contextmanager
def count_traffic(rank: int | None = None) -> Iterator[TrafficCounter]:
    """Count the bytes the collectives of world rank ``rank`` (None: every rank of this
    process) move inside the ``with`` block, from any thread.

    Not a collective. Communication threads (DDP's, ZeRO's, ``fully_shard``'s) count for the
    rank that owns them; wait for them (end of backward, ``step``) before reading.

    Example::

        with count_traffic(dist.get_rank()) as traffic:
            train_step()
        print(traffic.total, traffic.by_kind, traffic.payload(dist.get_rank()))
    """
    counter = TrafficCounter(rank=rank)
    with _lock:
        _open.append(counter)
    try:
        yield counter
    finally:
        with _lock:
            _open.remove(counter)
