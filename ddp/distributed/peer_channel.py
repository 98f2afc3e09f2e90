"""Out-of-band messages between the ranks of an MPI job, on a communicator of their own.

A rank blocked in a collective cannot learn through that collective that a peer has left, nor
where the others are. So every MPI job keeps a second channel: a ``Dup`` of COMM_WORLD that
carries only small pickled point-to-point messages between the ranks' watchdog threads (a rank
that left, a request for every rank's state, the answers) and the exit barrier
(``ddp.distributed.exit_protocol``). MPI itself is the transport; this is only a second
communicator, so its messages never match the program's own.

Only the watchdog thread receives (:meth:`PeerChannel.poll`); any thread may send. The channel
needs ``MPI_THREAD_MULTIPLE`` (mpi4py's default), which :func:`open_channel` checks.
"""

from __future__ import annotations

import threading
from typing import Any

_TAG = 7  # every message of this communicator; the payload says what it is

LEFT = "left"  # payload: {"reason": str, "last": (what, site) | None}
ASK = "ask"  # payload: None; answer with STATE
STATE = "state"  # payload: a Watchdog.state() dict


class PeerChannel:
    """Small messages to and from the other ranks, and the exit barrier.

    Args:
        comm: an mpi4py communicator over all ranks that nobody else uses; owned from now on.
    """

    def __init__(self, comm):
        from mpi4py import MPI  # imported lazily: only MPI jobs open a channel

        self._MPI = MPI
        self._comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self._sends: list = []
        self._lock = threading.Lock()

    def send(self, dest: int, kind: str, payload: Any = None) -> None:
        """Start sending ``(kind, payload)`` to rank ``dest``; never blocks."""
        request = self._comm.isend((kind, payload), dest=dest, tag=_TAG)
        with self._lock:
            self._sends.append(request)

    def send_all(self, kind: str, payload: Any = None) -> None:
        """:meth:`send` to every other rank."""
        for dest in range(self.size):
            if dest != self.rank:
                self.send(dest, kind, payload)

    def poll(self) -> list[tuple[str, int, Any]]:
        """Every message that has arrived, as ``(kind, source rank, payload)``; never blocks.

        Call from one thread only (the watchdog's).
        """
        MPI = self._MPI
        received = []
        if self._comm == MPI.COMM_NULL or MPI.Is_finalized():
            return received  # the program finalized MPI itself: nothing more will come
        status = MPI.Status()
        while True:
            message = self._comm.improbe(source=MPI.ANY_SOURCE, tag=_TAG, status=status)
            if message is None:
                break
            source = status.Get_source()
            kind, payload = message.recv()
            received.append((kind, source, payload))
        with self._lock:
            self._sends = [r for r in self._sends if not r.Test()]
        return received

    def exit_barrier(self):
        """Start the non-blocking barrier every rank enters at exit; returns its request."""
        return self._comm.Ibarrier()

    def close(self) -> None:
        """Free the communicator (after the exit barrier completed on every rank)."""
        MPI = self._MPI
        if self._comm != MPI.COMM_NULL and not MPI.Is_finalized():
            self._comm.Free()
        self._comm = MPI.COMM_NULL


def open_channel(world) -> PeerChannel | None:
    """A channel over a ``Dup`` of ``world`` (a collective), or None below THREAD_MULTIPLE.

    Every rank returns the same kind of answer: the thread level is the same job-wide setting
    (``mpi4py.rc.thread_level``), and ``Dup`` runs on every rank either way.
    """
    from mpi4py import MPI

    comm = world.Dup()
    if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
        comm.Free()
        return None
    return PeerChannel(comm)
