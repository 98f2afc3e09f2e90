"""A daemon thread that runs collectives one after another, in submission order.

Gradient buckets are reduced here (DDP all-reduces, ZeRO reduce-scatters) while the main thread
keeps running backward: the collective calls are blocking, but NumPy and mpi4py release the GIL
while they move memory, so the autograd engine and the communication genuinely overlap. The
thread serves a private (``dup()``-ed) process group, so its collectives never interleave with
the user's own.

Failure contract: an exception in a job is recorded, later jobs are skipped (their collectives
are not issued), and :meth:`CommThread.wait` re-raises it in the waiting thread.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

_STOP = object()


class CommThread:
    """Runs ``submit``-ted jobs in order on one daemon thread; ``wait`` joins them all.

    Every job's start and end time (``time.perf_counter``) is appended to ``events`` as
    ``(label, start, end)`` so callers can measure how much communication overlapped compute.
    """

    def __init__(self, name: str):
        self._name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._submitted = 0
        self._completed = 0
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.events: list[tuple[str, float, float]] = []

    def submit(self, label: str, job: Callable[[], None]) -> None:
        """Queue ``job()``; it runs after every job submitted before it."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
            self._thread.start()
        with self._cond:
            self._submitted += 1
        self._queue.put((label, job))

    def wait(self) -> None:
        """Block until every submitted job has run; re-raise the first job failure, if any.

        The failure is cleared once raised, so the thread can serve the next iteration.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._completed == self._submitted)
            error, self._error = self._error, None
        if error is not None:
            raise error

    def close(self) -> None:
        """Stop the thread after the jobs already queued (it exits without being joined)."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread = None

    def _loop(self) -> None:
        get = self._queue.get
        while True:
            item = get()
            if item is _STOP:
                return
            label, job = item
            start = time.perf_counter()
            try:
                if self._error is None:  # after a failure, issue no further collectives
                    job()
            except BaseException as exc:  # surfaced by wait() in the main thread
                self._error = exc
            end = time.perf_counter()
            self.events.append((label, start, end))
            with self._cond:
                self._completed += 1
                self._cond.notify_all()
