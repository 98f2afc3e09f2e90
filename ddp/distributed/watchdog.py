"""End an MPI job whose collective cannot complete, instead of hanging it, and say why.

A collective that some ranks never issue (an extra ``backward()`` on one rank, a collective in
a rank-dependent branch whose fingerprint check is off, a rank stuck in its own work, a rank
that has already left) blocks the others forever. Every collective of a ``ProcessGroup``
registers here while it waits (the base class does it, for all backends; only MPI jobs install
a watchdog), with the world ranks of its group and the user's line that issued it (the first
frame outside ddp). A daemon thread checks a few times a second and ends the job (as an
unhandled exception does, ``ddp.distributed.failure``) when

* a collective has waited past the timeout: it first asks every rank where it is, over the
  job's out-of-band :class:`~ddp.distributed.peer_channel.PeerChannel` (the other ranks'
  watchdog threads answer while their main threads stay blocked), and names the ranks that
  are behind or elsewhere;
* a rank of the collective's group has left the job (its script ended or called
  ``sys.exit``, see ``ddp.distributed.exit_protocol``) and the collective is still blocked
  ``DDP_EXIT_GRACE`` seconds later: the message names the rank that left and its last
  collective.

The timeout: ``init_process_group(timeout=timedelta(...))``, else ``DDP_TIMEOUT`` (seconds),
else 1800 s (torch's default for CPU backends: long single-rank work, such as an evaluation on
rank 0 while the others wait, must not be killed). GPU work queued by the ``nccl`` backend is
not watched: the host does not wait for it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import threading
import time
from dataclasses import dataclass

from ddp import config
from ddp.distributed.failure import abort_job
from ddp.distributed.peer_channel import ASK, LEFT, STATE, PeerChannel

DEFAULT_TIMEOUT_S = 1800.0
_GATHER_S = 2.0  # how long a firing watchdog waits for the other ranks' answers
_PEER_POLL_S = 0.2  # how often the thread reads the peer channel
_DDP_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


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


_is_ddp_file: dict[str, bool] = {}


def call_site() -> str:
    """``"train.py:88 in <module>"``: the innermost caller outside ddp, or the thread's name.

    A collective issued by one of ddp's own threads (DDP's communication thread) has no user
    frame above it; it is named by its thread.
    """
    return _site_text(_site())


def _site():
    """What :func:`call_site` names, cheaply: ``(code, lasti)`` or the thread's name.

    Per collective, so the line number (``f_lineno`` decodes the line table) is left for
    :func:`_site_text`, which only reports need.
    """
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename
        inside = _is_ddp_file.get(name)
        if inside is None:
            # contextlib: the frames of ``with watch(...)`` between ddp's own
            inside = _is_ddp_file[name] = (os.path.abspath(name).startswith(_DDP_DIR)
                                           or name == contextlib.__file__)
        if not inside:
            break
        frame = frame.f_back
    if frame is None or frame.f_code.co_filename.endswith(os.sep + "threading.py"):
        return f"thread {threading.current_thread().name!r}"
    return frame.f_code, frame.f_lasti


def _site_text(site) -> str:
    if isinstance(site, str):
        return site
    code, lasti = site
    line = next((line for start, end, line in code.co_lines() if start <= lasti < end),
                code.co_firstlineno)
    return f"{os.path.basename(code.co_filename)}:{line} in {code.co_name}"


@dataclass
class _Wait:
    what: str
    site: object  # see _site(); _site_text() formats it
    ranks: list[int] | None  # world ranks of the group (the group's own list); None: all
    start: float
    blocked_since: float | None  # None: an async collective not waited on yet


class Watchdog:
    """In-flight collectives of this process and the thread that watches them.

    Args:
        rank: this process's world rank.
        size: the world size.
        timeout_s: how long a collective may wait.
        peers: the job's peer channel; without one, the watchdog only times collectives.
        exit_grace_s: how long a collective may stay blocked after a rank of its group left.
    """

    def __init__(self, rank: int, size: int, timeout_s: float,
                 peers: PeerChannel | None = None, exit_grace_s: float = 2.0):
        self.rank = rank
        self.size = size
        self.timeout_s = timeout_s
        self.exit_grace_s = exit_grace_s
        self._peers = peers
        self._inflight: dict[int, _Wait] = {}
        self._last: tuple[str, object, float] | None = None  # what, site, when it ended
        self._left: dict[int, tuple[float, dict]] = {}  # rank -> (noticed at, its notice)
        self._leaving: str | None = None  # this rank's own reason, once it leaves
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        if peers is not None:
            self._start()  # the thread must answer the others from the start

    # ---------------------------------------------------------------- registration (hot path)
    def begin(self, what: str, *, ranks=None, blocked: bool = True) -> int:
        """Register a collective about to wait; returns the token for :meth:`end`.

        Args:
            what: its description (sequence number, kind, dtype, size, group).
            ranks: the world ranks of its group (None: every rank); kept, not copied.
            blocked: False for an async collective whose ``wait()`` has not started yet
                (:meth:`blocked` marks when it does).
        """
        token = next(self._ids)
        now = time.monotonic()
        wait = _Wait(what, _site(), ranks, now, now if blocked else None)
        with self._lock:
            self._inflight[token] = wait
        if self._thread is None:
            self._start()
        return token

    def blocked(self, token: int) -> None:
        """The async collective ``token`` is now being waited on."""
        with self._lock:
            wait = self._inflight.get(token)
            if wait is not None and wait.blocked_since is None:
                wait.blocked_since = time.monotonic()

    def end(self, token: int) -> None:
        with self._lock:
            wait = self._inflight.pop(token, None)
            if wait is not None:
                self._last = (wait.what, wait.site, time.monotonic())

    @contextlib.contextmanager
    def watch(self, what: str, *, ranks=None):
        token = self.begin(what, ranks=ranks)
        try:
            yield
        finally:
            self.end(token)

    # ----------------------------------------------------------------------------- lifecycle
    def last(self) -> tuple[str, str] | None:
        """``(what, site)`` of the last collective that completed here, if any."""
        with self._lock:
            last = self._last
        return None if last is None else (last[0], _site_text(last[1]))

    def leaving(self, reason: str) -> None:
        """This rank has left its script; answers to the other ranks say so."""
        self._leaving = reason

    def stop(self) -> None:
        """Stop the thread and wait for it (it may be reading the peer channel)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def state(self) -> dict:
        """Where this rank is: its blocked collectives, its last one, whether it has left."""
        now = time.monotonic()
        with self._lock:
            waits = sorted(self._inflight.values(), key=lambda w: w.start)
            last = self._last
        return {
            "rank": self.rank,
            "waits": [(w.what, _site_text(w.site), now - w.start) for w in waits
                      if w.blocked_since is not None],
            "last": None if last is None else (last[0], _site_text(last[1]), now - last[2]),
            "left": self._leaving,
        }

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="ddp-watchdog", daemon=True)
            self._thread.start()

    # ---------------------------------------------------------------------------- the thread
    def _run(self) -> None:
        period = min(1.0 if self._peers is None else _PEER_POLL_S, self.timeout_s / 4)
        while not self._stop.wait(period):
            if self._peers is not None:
                self._serve(self._peers.poll())
            now = time.monotonic()
            with self._lock:
                waits = list(self._inflight.values())
                left = dict(self._left)
            late = [w for w in waits if now - w.start > self.timeout_s]
            if late:
                self._expire(min(late, key=lambda w: w.start), now)
                return
            for rank, (noticed, notice) in left.items():
                for w in waits:
                    if (w.blocked_since is not None and (w.ranks is None or rank in w.ranks)
                            and now - max(noticed, w.blocked_since) > self.exit_grace_s):
                        self._peer_left(rank, notice, w, now)
                        return

    def _serve(self, messages, answers: dict | None = None) -> None:
        """Act on peer messages: answer requests, note ranks that left, keep answers."""
        for kind, source, payload in messages:
            if kind == ASK:
                self._peers.send(source, STATE, self.state())
            elif kind == LEFT:
                with self._lock:
                    self._left.setdefault(source, (time.monotonic(), payload))
            elif kind == STATE and answers is not None:
                answers[source] = payload

    def _gather(self) -> dict[int, dict]:
        """Every rank's :meth:`state` that arrives within ``_GATHER_S`` (this rank's too)."""
        states = {self.rank: self.state()}
        if self._peers is None:
            return states
        self._peers.send_all(ASK)
        deadline = time.monotonic() + _GATHER_S
        while len(states) < self.size and time.monotonic() < deadline:
            self._serve(self._peers.poll(), states)
            time.sleep(0.02)
        return states

    def _expire(self, wait: _Wait, now: float) -> None:
        states = self._gather()
        abort_job(self.rank, self.size, (
            f"collective {wait.what} from {_site_text(wait.site)} waited "
            f"{now - wait.start:.1f} s, past the timeout of {self.timeout_s:g} s: not every "
            f"rank of its group issued it. "
            f"{explain(states, self.size)} Typical causes: ranks running different numbers "
            f"of backward()/step() (uneven data), a collective in a rank-dependent branch, a "
            f"rank stuck in its own work, or a dead node. Set the limit with "
            f"init_process_group(timeout=...) or DDP_TIMEOUT (seconds)."))

    def _peer_left(self, rank: int, notice: dict, wait: _Wait, now: float) -> None:
        last = notice.get("last")
        after = ("before it issued any collective" if last is None
                 else f"after its last collective {last[0]} from {last[1]}")
        abort_job(self.rank, self.size, (
            f"rank {rank} left the job ({notice.get('reason')}) {after}, while rank "
            f"{self.rank} waits in {wait.what} from {_site_text(wait.site)} "
            f"({now - wait.blocked_since:.1f} s), which rank {rank} will never join; ending "
            f"the job."))


def _where(state: dict) -> str:
    """Where one rank is, after "is"/"are", without timings (equal places compare equal)."""
    if state["waits"]:
        what, site, _ = state["waits"][0]
        return f"in {what} from {site}"
    if state["left"]:
        return f"past the end of its script ({state['left']}), waiting for the others at exit"
    if state["last"] is None:
        return "outside any collective, and has issued none"
    what, site, _ = state["last"]
    return f"outside any collective, last in {what} from {site}"


def _since(state: dict) -> str:
    """How long a rank has been where :func:`_where` says (shown for ranks alone there)."""
    if state["waits"]:
        return f" (waiting {state['waits'][0][2]:.1f} s)"
    if state["last"] is not None and not state["left"]:
        return f" ({state['last'][2]:.1f} s ago)"
    return ""


def explain(states: dict[int, dict], size: int) -> str:
    """One paragraph: where each rank is, grouped, and which ranks are behind or elsewhere.

    Args:
        states: :meth:`Watchdog.state` by world rank, for the ranks that answered.
        size: the world size (ranks absent from ``states`` did not answer).
    """
    places: dict[str, list[int]] = {}
    for rank in sorted(states):
        places.setdefault(_where(states[rank]), []).append(rank)

    def who(ranks: list[int]) -> str:
        return (f"rank {ranks[0]} is" if len(ranks) == 1
                else f"ranks {', '.join(map(str, ranks))} are")

    parts = [f"{who(ranks)} {place}{_since(states[ranks[0]]) if len(ranks) == 1 else ''}"
             for place, ranks in places.items()]
    silent = [r for r in range(size) if r not in states]
    if silent:
        parts.append(f"{who(silent)} not answering within {_GATHER_S:g} s (dead, or stuck in "
                     f"code that holds the GIL)")
    waiting = [p for p in places if p.startswith("in ")]
    counts = sorted((len(places[p]) for p in waiting), reverse=True)
    if not waiting:
        verdict = ""
    elif len(places) == 1 and not silent:
        verdict = (" Every rank is in the same collective: it cannot complete (a dead node or "
                   "a broken network?).")
    elif len(waiting) > 1 and counts[0] == counts[1]:  # no majority to be behind of
        verdict = (" The ranks wait in different collectives (a collective in a "
                   "rank-dependent branch, or unchecked groups used in different orders?).")
    else:
        crowd = max(waiting, key=lambda p: len(places[p]))
        behind = sorted([r for p, rs in places.items() if p != crowd for r in rs] + silent)
        verdict = (f" Behind or elsewhere: {'rank' if len(behind) == 1 else 'ranks'} "
                   f"{', '.join(map(str, behind))}.")
    return "Where every rank is: " + "; ".join(parts) + "." + verdict


_watchdog: Watchdog | None = None


def install(rank: int, size: int, timeout=None, peers: PeerChannel | None = None
            ) -> Watchdog | None:
    """The process's watchdog for a world of ``size`` ranks (None for a world of one).

    Args:
        rank, size: this process's world rank and the world size.
        timeout: as ``init_process_group(timeout=...)``; None reads ``DDP_TIMEOUT``.
        peers: the job's peer channel (only the first install of a process takes it).
    """
    global _watchdog
    if size <= 1:
        return None
    seconds = timeout_seconds(timeout)
    if _watchdog is None:
        _watchdog = Watchdog(rank, size, seconds, peers, config.get("DDP_EXIT_GRACE"))
    else:
        _watchdog.timeout_s = seconds
    return _watchdog


def current() -> Watchdog | None:
    return _watchdog
