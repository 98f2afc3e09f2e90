"""End an MPI job whose collective waits too long, instead of hanging it (torch's watchdog).

A collective that some ranks never issue (an extra ``backward()`` on one rank, a collective in
a rank-dependent branch whose fingerprint check is off, a rank stuck in its own work) blocks the
others forever. Every collective of a ``ProcessGroup`` registers here while it waits (the base
class does it, for all backends; only MPI jobs install a watchdog); a daemon thread
checks once a second (or faster for short timeouts) and, past the timeout, prints which rank
waited in which collective and aborts all ranks, as an unhandled exception does
(``ddp.distributed.failure``).

The timeout: ``init_process_group(timeout=timedelta(...))``, else ``DDP_TIMEOUT`` (seconds),
else 1800 s (torch's default for CPU backends: long single-rank work, such as an evaluation on
rank 0 while the others wait, must not be killed). GPU work queued by the ``nccl`` backend is
not watched: the host does not wait for it.
"""

from __future__ import annotations

import itertools
import threading
import time
from contextlib import contextmanager

from ddp import config
from ddp.distributed.failure import abort_job

DEFAULT_TIMEOUT_S = 1800.0


def timeout_seconds(timeout=None) -> float:
    """Seconds from a ``timedelta``, a number, ``DDP_TIMEOUT`` or the default."""
    if timeout is None:
        timeout = config.get("DDP_TIMEOUT")
        if timeout is None:
            return DEFAULT_TIMEOUT_S
    seconds = timeout.total_seconds() if hasattr(timeout, "total_seconds") else float(timeout)
    if not seconds > 0:
        raise ValueError(f"init_process_group: timeout must be positive, got {timeout!r}")
    return seconds


class Watchdog:
    """In-flight collectives of this process and the thread that times them."""

    def __init__(self, rank: int, size: int, timeout_s: float):
        self.rank = rank
        self.size = size
        self.timeout_s = timeout_s
        self._inflight: dict[int, tuple[float, str]] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def begin(self, what: str) -> int:
        """Register a collective that is about to wait; returns the token for :meth:`end`."""
        token = next(self._ids)
        with self._lock:
            self._inflight[token] = (time.monotonic(), what)
        if self._thread is None:
            self._start()
        return token

    def end(self, token: int) -> None:
        with self._lock:
            self._inflight.pop(token, None)

    @contextmanager
    def watch(self, what: str):
        token = self.begin(what)
        try:
            yield
        finally:
            self.end(token)

    def stop(self) -> None:
        self._stop.set()

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="ddp-watchdog", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        period = min(1.0, self.timeout_s / 4)
        while not self._stop.wait(period):
            now = time.monotonic()
            with self._lock:
                late = [(start, what) for start, what in self._inflight.values()
                        if now - start > self.timeout_s]
            if late:
                start, what = min(late)
                self._expire(what, now - start)
                return

    def _expire(self, what: str, waited: float) -> None:
        abort_job(self.rank, self.size, (
            f"collective {what} waited {waited:.1f} s, past the timeout of "
            f"{self.timeout_s:g} s: the other ranks never issued it. Typical causes: ranks "
            f"running different numbers of backward()/step() (uneven data), a collective in a "
            f"rank-dependent branch, a rank stuck in its own work, or a dead node. Set the "
            f"limit with init_process_group(timeout=...) or DDP_TIMEOUT (seconds)."))


_watchdog: Watchdog | None = None


def install(rank: int, size: int, timeout=None) -> Watchdog | None:
    """The process's watchdog for a world of ``size`` ranks (None for a world of one)."""
    global _watchdog
    if size <= 1:
        return None
    seconds = timeout_seconds(timeout)
    if _watchdog is None:
        _watchdog = Watchdog(rank, size, seconds)
    else:
        _watchdog.timeout_s = seconds
    return _watchdog


def current() -> Watchdog | None:
    return _watchdog
