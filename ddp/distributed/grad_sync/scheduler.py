"""``GradSyncScheduler``: the one machine that synchronises gradients during backward.

DDP's all-reduce and ZeRO's reduce-scatter (stages 1 and 2) are *strategies* of this scheduler
(``strategy.py``): a strategy says how a bucket is filled, reduced and written back; the
scheduler owns everything else, once:

1. **Arming.** At backward start (the engine's start hook, which knows the reachable leaves) the
   scheduler arms itself for that engine task when the backward reaches its parameters, and
   when it is due: after ``expect_backward()`` in the same thread (DDP's forward) or, with
   ``every_backward=True``, always (ZeRO). Parameters the loss cannot reach are marked ready
   at once, so nothing waits for a hook that never fires, and the end-of-task callback is
   queued.
2. **Ready.** A parameter's post-accumulate-grad hook hands its gradient to the strategy
   (``fill``); when every member of a bucket is in, that bucket and any ready successors are
   launched, strictly in bucket order, the same on every rank.
3. **Overlap** (``overlap``, the same on all ranks): ``"thread"`` hands each bucket to a
   communication thread running blocking collectives while backward goes on (NumPy and MPI
   release the GIL); ``"nonblocking"`` starts a non-blocking collective from the backward
   thread, tested at every later hook so MPI progresses it; ``"sync"`` reduces everything at
   the end of backward (the strategy may coalesce: DDP does one all-reduce per dtype).
4. **Finish.** At the end of the task, parameters still missing (reachable, but their gradient
   stayed None) are marked ready, the strategy's closing collectives run (DDP's usage bitmap),
   every collective is waited for and the strategy writes the result back. A failure drains
   whatever is in flight (MPI must be done with the buffers) and raises on this rank, naming it.

**Ownership.** A parameter's gradient is synchronised by at most one scheduler. A scheduler
built with ``exclusive=True`` (ZeRO's) takes its parameters over from the others (DDP's), in
whichever order the two were built: the other one is handed over (``hand_over``) and stops
synchronising for good. This is the seam by which ZeRO takes gradient sync over from DDP; no
attribute is written onto the parameters.

State is per scheduler; hooks are process-wide (the threads backend runs every rank's backward
in one process), so a scheduler acts only on backwards that reach its own parameters.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from functools import partial

from ddp.autograd import engine
from ddp.config import COMM_MODES
from ddp.distributed.grad_sync.comm_thread import CommThread
from ddp.distributed.grad_sync.strategy import SyncStrategy
from ddp.profiler import timeline
from ddp.tensor import Tensor

OVERLAP_MODES = COMM_MODES  # named in the configuration table too (DDP_COMM_MODE)

_live: weakref.WeakSet = weakref.WeakSet()  # every scheduler not yet handed over or closed
_live_lock = threading.Lock()


def check_overlap(overlap: str) -> None:
    """Raise ValueError unless ``overlap`` is one of ``OVERLAP_MODES``."""
    if overlap not in OVERLAP_MODES:
        raise ValueError(f"Invalid comm_mode: {overlap!r} (expected one of {OVERLAP_MODES})")


class GradSyncScheduler:
    """Synchronise the gradients of ``params`` over ``process_group`` during backward.

    Args:
        params: the parameters whose gradients are synchronised (the strategy's order).
        names: their names, for error messages.
        strategy: how buckets are filled, reduced and written back.
        process_group: a group used by this scheduler only (a ``dup()``), so its collectives
            never interleave with the user's; with ``overlap="thread"`` they run on the
            scheduler's communication thread (``comm``), which its owner may also use for
            collectives that must stay in order with the buckets (ZeRO's step all-gathers).
        overlap: ``"thread"``, ``"nonblocking"`` or ``"sync"`` (module docstring). The
            strategy must support it (``strategy.overlap_modes``).
        every_backward: synchronise every backward that reaches ``params``; otherwise only the
            backward after ``expect_backward()`` in the same thread.
        exclusive: take ``params`` over from every other scheduler (see Ownership).

    Raises:
        ValueError: an unknown or unsupported ``overlap``; an exclusive scheduler that would
            take over only part of another's parameters (the rest would silently go unsynced).
    """

    def __init__(self, params: list[Tensor], names: list[str], strategy: SyncStrategy,
                 process_group, *, overlap: str = "thread", every_backward: bool = False,
                 exclusive: bool = False):
        check_overlap(overlap)
        if overlap not in strategy.overlap_modes:
            raise ValueError(f"{strategy.owner} does not support comm_mode {overlap!r} "
                             f"(supported: {strategy.overlap_modes})")
        self.params = list(params)
        self.names = list(names)
        self.strategy = strategy
        self.process_group = process_group
        self.overlap = overlap
        self.every_backward = every_backward
        self.exclusive = exclusive
        self.handed_over = False
        self._overlap = _OVERLAPS[overlap]
        self._rank = process_group.rank()
        self._global_rank = process_group.global_ranks[self._rank]
        self._ids = {id(p) for p in self.params}
        self._param_buckets: list[list[int]] = [[] for _ in self.params]
        for position, bucket in enumerate(strategy.buckets):
            for i in strategy.members(bucket):
                self._param_buckets[i].append(position)
        self._pending = [0] * len(strategy.buckets)
        self._launched_at = [0.0] * len(strategy.buckets)
        self._ready = [False] * len(self.params)
        self._next = 0
        self._works: list = []  # "nonblocking": (bucket position, Work) in launch order
        self._launch_error: BaseException | None = None  # "nonblocking": a failed launch
        self._task = None  # the engine task this scheduler is armed for
        self._expect = False
        self._forward_thread: int | None = None
        self._backward_start = 0.0
        self._shadowing = False  # shadow(): collectives of a backward this rank does not run
        self.last_timeline: dict | None = None

        self.comm = CommThread(f"{strategy.thread_prefix}-comm-rank{self._rank}")
        ref = weakref.ref(self)
        handles = [p.register_post_accumulate_grad_hook(partial(_grad_ready_hook, ref, i))
                   for i, p in enumerate(self.params) if p.requires_grad]
        handles.append(engine.register_backward_start_hook(partial(_backward_start_hook, ref)))
        self._handles = handles
        weakref.finalize(self, _release, handles, self.comm)
        _settle_ownership(self)

    @property
    def buckets(self) -> list:
        """The strategy's buckets, in launch order."""
        return self.strategy.buckets

    # ----------------------------------------------------------------------------- arming
    def expect_backward(self) -> None:
        """Make the next backward started in this thread synchronise (DDP's forward)."""
        self._expect = True
        self._forward_thread = threading.get_ident()

    def _on_backward_start(self, task) -> None:
        if self.handed_over:
            return
        if not self.every_backward and (
                not self._expect or threading.get_ident() != self._forward_thread):
            return
        reachable = {id(t) for t in task.leaves}
        if self._ids.isdisjoint(reachable):
            return  # a backward through something else: keep waiting for ours
        if self._task is not None:  # the previous backward raised before finishing
            self._drain()
        self._arm(task)
        task.queue_callback(self._finalize)
        for i, p in enumerate(self.params):
            if id(p) not in reachable:
                self._mark_ready(i, hooked=False)

    def _arm(self, task) -> None:
        self._task = task
        self._ready = [False] * len(self.params)
        self._next = 0
        for position, bucket in enumerate(self.strategy.buckets):
            self._pending[position] = len(self.strategy.members(bucket))
        self.comm.events.clear()
        self._works.clear()
        self._backward_start = time.perf_counter()
        self.strategy.begin()

    # ------------------------------------------------------------------------------ ready
    def _on_grad_ready(self, index: int) -> None:
        if self._task is None or engine.current_task() is not self._task:
            return
        if self._ready[index]:
            raise RuntimeError(
                f"{self.strategy.owner}: parameter '{self.names[index]}' was marked ready "
                f"twice in one backward on rank {self._rank}"
            )
        self._mark_ready(index, hooked=True)

    def _mark_ready(self, index: int, hooked: bool) -> None:
        if not self._shadowing:
            self.strategy.fill(index, hooked)
        self._ready[index] = True
        completed = False
        for position in self._param_buckets[index]:
            self._pending[position] -= 1
            completed = completed or self._pending[position] == 0
        if completed:
            self._launch_ready()
        elif self._works:
            self._works[-1][1].is_completed()  # an MPI test call: lets the collectives progress

    def _launch_ready(self) -> None:
        buckets = self.strategy.buckets
        while self._next < len(buckets) and self._pending[self._next] == 0:
            position = self._next
            self._launched_at[position] = time.perf_counter()
            self._next += 1
            self._overlap.launch(self, position)

    # ------------------------------------------------------------------------ collectives
    def _label(self, position: int) -> str:
        return f"bucket {position}"

    def _reduce(self, position: int) -> None:
        bucket = self.strategy.buckets[position]
        with timeline.span(f"{self.strategy.collective} {self._label(position)}", "comm",
                           rank=self._global_rank, bytes=self.strategy.nbytes(bucket)):
            self.strategy.reduce(bucket, self.process_group)

    def _run_inline(self, jobs: list[tuple[str, Callable[[], None]]]) -> None:
        for label, job in jobs:
            start = time.perf_counter()
            with timeline.span(f"{self.strategy.collective} {label}", "comm",
                               rank=self._global_rank):
                job()
            self.comm.events.append((label, start, time.perf_counter()))

    # ----------------------------------------------------------------------------- finish
    def _finalize(self) -> None:
        backward_end = time.perf_counter()
        try:
            for i, ready in enumerate(self._ready):
                if not ready:
                    self._mark_ready(i, hooked=False)
            self._launch_ready()  # buckets with no members left after the last one
            self._overlap.complete(self)
        except BaseException as exc:
            self._drain()
            raise _failure(self.strategy, self._rank, exc) from exc
        self._disarm()
        self.strategy.finish()
        self.last_timeline = {
            "backward_start": self._backward_start,
            "backward_end": backward_end,
            "end": time.perf_counter(),
            "launched": list(self._launched_at),
            "comm": list(self.comm.events),
        }

    def _disarm(self) -> None:
        self._task = None
        self._expect = False
        self._launch_error = None

    def _drain(self) -> None:
        try:
            self.comm.wait()
        except BaseException:  # noqa: S110 - already failing; the caller reports
            pass
        works, self._works = self._works, []
        for _, work in works:  # MPI must be done with the buffers before they are reused
            try:
                work.wait()
            except BaseException:  # noqa: S110
                pass
        self.strategy.abandon()
        self._disarm()

    # ------------------------------------------------------------------------ public API
    def sync_now(self) -> None:
        """Collective: synchronise every parameter's current gradient now, outside backward.

        The same buckets and write-back as a synchronised backward, for gradients produced
        outside one (and to time the synchronisation alone). With no backward to overlap, it
        reduces the way ``overlap="sync"`` does, whatever ``overlap`` is. Call it on all ranks,
        outside backward; a forward that armed synchronisation stays armed.

        Raises:
            RuntimeError: during a synchronised backward, or after ``hand_over``.
        """
        if self._task is not None or self.handed_over:
            raise RuntimeError("sync_now() cannot run during a synchronised backward or after "
                               "the gradient sync was handed over")
        expect, forward_thread, overlap = self._expect, self._forward_thread, self._overlap
        self._overlap = _OVERLAPS["sync"]
        try:
            self._arm(object())
            for i in range(len(self.params)):
                self._mark_ready(i, hooked=False)
            self._finalize()
        finally:
            self._expect, self._forward_thread, self._overlap = expect, forward_thread, overlap

    def use_overlap(self, overlap: str) -> None:
        """Launch buckets in ``overlap`` mode from the next backward on (between backwards, on
        every rank alike: DDP's ``register_comm_hook`` runs hooks in the backward thread).

        Raises:
            ValueError: an unknown mode, or one the strategy does not support.
            RuntimeError: during a synchronised backward.
        """
        check_overlap(overlap)
        if overlap not in self.strategy.overlap_modes:
            raise ValueError(f"{self.strategy.owner} does not support comm_mode {overlap!r}")
        if self._task is not None:
            raise RuntimeError("use_overlap() cannot run during a synchronised backward")
        self.overlap = overlap
        self._overlap = _OVERLAPS[overlap]

    def shadow(self) -> None:
        """Collective: issue exactly the collectives of one synchronised backward, in the same
        overlap mode and order, contributing zero gradients; then finish as a backward would.

        For a rank that has run out of inputs while others still train (``Join``): it matches
        their bucket collectives without running a backward. Does nothing after ``hand_over``
        (the new owner shadows instead).
        """
        if self.handed_over:
            return
        if self._task is not None:
            raise RuntimeError("shadow() cannot run during a synchronised backward")
        self._arm(object())
        self.strategy.zero_buckets()
        self._shadowing = True
        try:
            for i in range(len(self.params)):
                self._mark_ready(i, hooked=False)
            self._finalize()
        finally:
            self._shadowing = False

    def hand_over(self, to: GradSyncScheduler | None = None) -> None:
        """Stop synchronising for good: another component (``to``) reduces these gradients.

        Called by the ownership rule (module docstring) on every rank alike, since every rank
        builds the same components; not a collective. The strategy releases its buffers.
        """
        self.handed_over = True
        self.strategy.release()
        with _live_lock:
            _live.discard(self)

    def close(self) -> None:
        """Remove the hooks and stop the communication thread (unusable afterwards)."""
        with _live_lock:
            _live.discard(self)
        _release(self._handles, self.comm)


class _Overlap:
    """When, and from which thread, a scheduler's bucket collectives run (one stateless
    instance per mode, so a scheduler holds no reference cycle and is freed promptly)."""

    def launch(self, s: GradSyncScheduler, position: int) -> None:
        raise NotImplementedError

    def complete(self, s: GradSyncScheduler) -> None:
        raise NotImplementedError


class _OnCommThread(_Overlap):
    """``"thread"``: blocking collectives on the communication thread, overlapping backward."""

    def launch(self, s: GradSyncScheduler, position: int) -> None:
        s.comm.submit(s._label(position), partial(s._reduce, position))

    def complete(self, s: GradSyncScheduler) -> None:
        for label, job in s.strategy.closing_jobs(s.process_group):
            s.comm.submit(label, job)
        with timeline.span(s.strategy.wait_label, "comm"):
            s.comm.wait()


class _Nonblocking(_Overlap):
    """``"nonblocking"``: non-blocking collectives started and progressed by backward."""

    def launch(self, s: GradSyncScheduler, position: int) -> None:
        # Like the communication thread: after a failure, later buckets are not launched, and
        # the error is raised at the end of backward, not inside a hook.
        if s._launch_error is None:
            try:
                work = s.strategy.reduce_async(s.strategy.buckets[position], s.process_group)
                s._works.append((position, work))
            except BaseException as exc:
                s._launch_error = exc

    def complete(self, s: GradSyncScheduler) -> None:
        works, s._works = s._works, []
        if s._launch_error is not None:
            for _, work in works:  # MPI must be done with the buffers before they are reused
                work.wait()
            raise s._launch_error
        with timeline.span(s.strategy.wait_label, "comm"):
            for position, work in works:
                bucket = s.strategy.buckets[position]
                start = time.perf_counter()
                work.wait()
                s.strategy.complete_async(bucket)
                end = time.perf_counter()
                s.comm.events.append((s._label(position), start, end))
                # In flight from its launch during backward until it completed here.
                timeline.record(f"{s.strategy.collective} {s._label(position)}", "comm",
                                s._launched_at[position], end, rank=s._global_rank,
                                bytes=s.strategy.nbytes(bucket), mode="nonblocking")
            s._run_inline(s.strategy.closing_jobs(s.process_group))


class _AfterBackward(_Overlap):
    """``"sync"``: nothing during backward; every collective at its end, in this thread."""

    def launch(self, s: GradSyncScheduler, position: int) -> None:
        pass

    def complete(self, s: GradSyncScheduler) -> None:
        with timeline.span(s.strategy.wait_label, "comm"):
            s._run_inline(s.strategy.after_backward_jobs(s.process_group))
            s._run_inline(s.strategy.closing_jobs(s.process_group))


_OVERLAPS = {"thread": _OnCommThread(), "nonblocking": _Nonblocking(), "sync": _AfterBackward()}


def _settle_ownership(new: GradSyncScheduler) -> None:
    """Apply the ownership rule between ``new`` and every live scheduler sharing parameters."""
    with _live_lock:
        others = [s for s in _live if not s._ids.isdisjoint(new._ids)]
        _live.add(new)
    for other in others:
        if other.exclusive == new.exclusive:
            continue
        owner, loser = (new, other) if new.exclusive else (other, new)
        missing = [name for p, name in zip(loser.params, loser.names, strict=True)
                   if id(p) not in owner._ids]
        if missing:
            raise ValueError(
                f"{owner.strategy.owner} takes gradient synchronisation over from "
                f"{loser.strategy.owner}, but manages only {len(loser.params) - len(missing)} "
                f"of its {len(loser.params)} parameters; these would go unsynchronised: "
                f"{missing[:5]}{' ...' if len(missing) > 5 else ''}. Give it all of them."
            )
        loser.hand_over(owner)


def _failure(strategy: SyncStrategy, rank: int, exc: BaseException) -> BaseException:
    message = (f"{strategy.owner}: {strategy.failure_what} failed on rank {rank}: "
               f"{type(exc).__name__}: {exc}")
    # Keep RuntimeError subclasses (a peer-aborted error stays recognisable as such).
    error_type = type(exc) if isinstance(exc, RuntimeError) else RuntimeError
    try:
        return error_type(message)
    except Exception:
        return RuntimeError(message)


def _grad_ready_hook(ref: weakref.ref, index: int, _param) -> None:
    scheduler = ref()
    if scheduler is not None:
        scheduler._on_grad_ready(index)


def _backward_start_hook(ref: weakref.ref, task) -> None:
    scheduler = ref()
    if scheduler is not None:
        scheduler._on_backward_start(task)


def _release(handles: list, comm: CommThread) -> None:
    for handle in handles:
        handle.remove()
    comm.close()
