"""``count_traffic``: the bytes a rank's array collectives send, counted while it is active.

Every array-level collective of every ``ProcessGroup`` (the user's and the private channels
DDP, ZeRO and ``fully_shard`` ``dup`` for themselves) reports the bytes it moves per rank
under the bandwidth-optimal algorithms, B being the buffer's size in bytes and N the group's
size: all-reduce ``2 (N-1)/N B`` (ring: reduce-scatter + all-gather), reduce-scatter
``(N-1)/N B_in``, all-gather ``(N-1)/N B_out``, broadcast ``(N-1)/N B`` (pipelined). The
model is exact for ring implementations and what the ZeRO paper's volumes count; MPI may pick
other algorithms for small messages. Not counted: the consensus fingerprints, barriers and the
pickled ``*_object`` collectives (small control messages).

State is per world rank (keyed by the group's global rank), so the threads backend's ranks
count apart; a counter is active on its rank only.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

_lock = threading.Lock()
_active: dict[int, list[TrafficCounter]] = {}  # world rank -> counters


@dataclass
class TrafficCounter:
    """Bytes sent by this rank while active: ``total`` and ``by_kind`` (collective name)."""

    total: float = 0.0
    by_kind: dict[str, float] = field(default_factory=dict)
    calls: int = 0

    def add(self, kind: str, nbytes: float) -> None:
        self.total += nbytes
        self.by_kind[kind] = self.by_kind.get(kind, 0.0) + nbytes
        self.calls += 1


def sent_bytes(kind: str, nbytes: int, size: int) -> float:
    """Bytes one rank sends in collective ``kind`` over ``size`` ranks (module docstring)."""
    if size <= 1:
        return 0.0
    factor = (size - 1) / size
    return 2 * factor * nbytes if kind == "allreduce" else factor * nbytes


def record(world_rank: int, kind: str, nbytes: int, size: int) -> None:
    """Called by every array collective; a dictionary lookup when nothing counts."""
    counters = _active.get(world_rank)
    if not counters:
        return
    sent = sent_bytes(kind, nbytes, size)
    with _lock:
        for c in counters:
            c.add(kind, sent)


@contextmanager
def count_traffic(rank: int) -> Iterator[TrafficCounter]:
    """Count the bytes this rank's collectives send inside the ``with`` block.

    Not a collective. Communication threads (DDP's, ZeRO's, ``fully_shard``'s) count for the
    rank that owns them; wait for them (end of backward, ``step``) before reading.

    Args:
        rank: the world rank to count, ``ddp.distributed.get_rank()``.

    Example::

        with count_traffic(dist.get_rank()) as sent:
            train_step()
        print(sent.total, sent.by_kind)
    """
    counter = TrafficCounter()
    with _lock:
        _active.setdefault(rank, []).append(counter)
    try:
        yield counter
    finally:
        with _lock:
            _active[rank].remove(counter)
            if not _active[rank]:
                del _active[rank]
