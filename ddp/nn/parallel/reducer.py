"""Gradient buckets and the reducer that all-reduces them during backward.

Life of one synchronised backward (see ``DistributedDataParallel`` for the user-facing contract):

1. ``prepare_for_backward()`` (called by DDP's forward) records that the next backward in this
   thread must synchronise.
2. At backward start (engine start hook, only in that thread) the reducer arms itself for this
   engine task, marks every parameter the loss cannot reach as ready at once (so nothing waits
   for a hook that will never fire) and queues ``_finalize`` for the end of the task.
3. A leaf's post-accumulate-grad hook copies its ``.grad`` into its slot of a flat bucket
   buffer, divided by the world size on the way when that is exact (see ``__init__``). When a
   bucket's last slot is filled, the bucket and any ready successors are launched, strictly in
   bucket-index order, according to ``comm_mode``:

   * ``"thread"``: handed to the communication thread, which runs blocking all-reduces while
     backward goes on (NumPy and MPI release the GIL);
   * ``"nonblocking"``: started at once with a non-blocking all-reduce (``MPI_Iallreduce``)
     from the backward thread, which tests it at every later hook so MPI progresses it;
   * ``"sync"``: nothing yet; ``_finalize`` all-reduces every bucket in the backward thread.
4. ``_finalize`` marks any parameter still missing as ready (a reachable leaf whose gradient was
   None never fires its hook), optionally all-reduces the usage bitmap, waits for every bucket
   and writes the averages back into ``.grad``.

The modes differ only in when and from which thread the same collectives run; which is fastest
depends on the machine (see docs/benchmarks.md): a communication thread needs a spare core to
overlap, and costs a GIL hand-off per bucket.

Every rank issues the same collectives in the same order: bucket ``k`` is launched only after
buckets ``0..k-1``, bucket membership is a function of the (verified identical) parameter list,
and the usage bitmap is reduced on every iteration or on none.
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from ddp.autograd import engine
from ddp.backend import get_array_module
from ddp.nn.parallel.comm_thread import CommThread
from ddp.profiler import timeline
from ddp.tensor import Tensor

_MB = 1024 * 1024
COMM_MODES = ("thread", "nonblocking", "sync")


@dataclass
class Bucket:
    """One flat buffer holding the gradients of ``params`` (indices into the reducer's list)."""

    index: int
    buffer: object  # 1-D NumPy/CuPy array
    params: list[int]
    pending: int = 0  # slots not yet filled in the current backward
    launched_at: float = field(default=0.0, repr=False)


def _buffer_key(array) -> tuple:
    """Arrays with the same key may share a bucket: same dtype, array library and device."""
    return (str(array.dtype), type(array).__module__,
            getattr(getattr(array, "device", None), "id", None))


def assign_buckets(arrays: list, cap_bytes: int, first_cap_bytes: int) -> list[list[int]]:
    """Group parameter indices into buckets of at most ``cap_bytes`` (one dtype and device each).

    Parameters are taken in reverse registration order, since backward produces the gradients
    of the last layers first. A parameter larger than the cap gets a bucket of its own. The
    first bucket of each dtype is capped at ``first_cap_bytes`` so communication starts early.
    Buckets are returned ordered by when backward is expected to fill them.
    """
    open_buckets: dict = {}  # key -> [indices, bytes, limit]
    closed: list[list[int]] = []
    for i in reversed(range(len(arrays))):
        a = arrays[i]
        key = _buffer_key(a)
        entry = open_buckets.setdefault(key, [[], 0, first_cap_bytes])
        if entry[0] and entry[1] + a.nbytes > entry[2]:
            closed.append(entry[0])
            entry[0], entry[1], entry[2] = [], 0, cap_bytes
        entry[0].append(i)
        entry[1] += a.nbytes
    closed.extend(entry[0] for entry in open_buckets.values() if entry[0])
    closed.sort(key=lambda indices: -indices[0])
    return closed


def _allreduce_sum(process_group, buffer, divisor: int | None, label: str = "allreduce",
                   rank: int | None = None) -> None:
    with timeline.span(label, "comm", rank=rank, bytes=int(buffer.nbytes)):
        process_group.allreduce(buffer)
        if divisor is not None:
            buffer /= divisor


class Reducer:
    """Buckets the gradients of ``params`` and averages them over ``process_group``.

    Args:
        params: the parameters that require grad, in registration order.
        names: their names, for error messages.
        process_group: a group used by this reducer only (DDP passes a ``dup()``); its
            collectives run on the communication thread.
        bucket_cap_mb: largest bucket size in MiB.
        find_unused_parameters: all-reduce a usage bitmap every iteration so that a parameter
            unused on every rank keeps ``.grad`` None. When False, a parameter unused on this
            rank contributes zeros and ends with the averaged (possibly zero) gradient.
        gradient_as_bucket_view: after a synchronised backward, ``p.grad`` is a view into its
            bucket buffer (no copy back; the next backward accumulates directly into the bucket).
        first_bucket_cap_mb: cap of the first bucket (at most ``bucket_cap_mb``).
        comm_mode: ``"thread"``, ``"nonblocking"`` or ``"sync"``: how buckets are all-reduced
            (module docstring). Must be the same on all ranks.
    """

    def __init__(self, params: list[Tensor], names: list[str], process_group,
                 bucket_cap_mb: float = 25.0, find_unused_parameters: bool = False,
                 gradient_as_bucket_view: bool = False, first_bucket_cap_mb: float = 1.0,
                 comm_mode: str = "thread"):
        if bucket_cap_mb <= 0:
            raise ValueError(f"Invalid bucket_cap_mb: {bucket_cap_mb} (must be positive)")
        if comm_mode not in COMM_MODES:
            raise ValueError(f"Invalid comm_mode: {comm_mode!r} (expected one of {COMM_MODES})")
        self.comm_mode = comm_mode
        self._works: list = []  # comm_mode "nonblocking": (bucket, Work) in launch order
        self._launch_error: BaseException | None = None  # "nonblocking": a failed launch
        self._params = list(params)
        self._names = list(names)
        self._pg = process_group
        self._rank = process_group.rank()
        self._world = process_group.size()
        # Averaging: divide each gradient by the world size while copying it into its bucket
        # (as torch's reducer does), so the SUM all-reduce yields the average with no extra pass.
        # Exact only for a power-of-two world ((a/2 + b/2) == (a + b)/2 bitwise); otherwise the
        # bucket is divided after the all-reduce, so results equal sum-then-divide either way.
        exact = self._world & (self._world - 1) == 0
        self._prescale = 1.0 / self._world if exact and self._world > 1 else None
        self._postdivide = None if exact else self._world  # Python numbers: float32 stays so
        self.find_unused_parameters = find_unused_parameters
        self.gradient_as_bucket_view = gradient_as_bucket_view

        cap = max(1, int(bucket_cap_mb * _MB))
        first_cap = min(cap, max(1, int(first_bucket_cap_mb * _MB)))
        arrays = [p.array for p in self._params]
        self.buckets: list[Bucket] = []
        self._slots: list = [None] * len(arrays)  # param index -> (bucket, view of its slot)
        # The buckets of one dtype and device are consecutive slices of one flat buffer, so
        # comm_mode "sync" all-reduces them all with a single collective.
        layout = assign_buckets(arrays, cap, first_cap)
        keys = [_buffer_key(arrays[indices[0]]) for indices in layout]
        sizes = [sum(arrays[i].size for i in indices) for indices in layout]
        flat_of: dict = {}  # key -> flat buffer
        for key, indices in zip(keys, layout, strict=True):
            if key not in flat_of:
                a = arrays[indices[0]]
                numel = sum(n for k, n in zip(keys, sizes, strict=True) if k == key)
                flat_of[key] = get_array_module(a).zeros(numel, dtype=a.dtype)
        self._flats: list = list(flat_of.values())
        used = dict.fromkeys(flat_of, 0)
        for b, (key, indices, numel) in enumerate(zip(keys, layout, sizes, strict=True)):
            buffer = flat_of[key][used[key]:used[key] + numel]
            used[key] += numel
            bucket = Bucket(b, buffer, indices)
            offset = 0
            for i in indices:
                size = arrays[i].size
                self._slots[i] = (bucket, buffer[offset:offset + size].reshape(arrays[i].shape))
                offset += size
            self.buckets.append(bucket)
        self._used = np.zeros(len(arrays), dtype=np.int32)

        self._comm = CommThread(f"ddp-comm-rank{self._rank}")
        ref = weakref.ref(self)
        handles = [p.register_post_accumulate_grad_hook(partial(_grad_ready_hook, ref, i))
                   for i, p in enumerate(self._params)]
        handles.append(engine.register_backward_start_hook(partial(_backward_start_hook, ref)))
        weakref.finalize(self, _release, handles, self._comm)

        self._expect_backward = False  # DDP's forward ran since the last synchronisation
        self._forward_thread: int | None = None
        self._task = None  # the engine task this reducer is armed for
        self._ready = [False] * len(arrays)
        self._next_bucket = 0
        self._backward_start = 0.0
        self.last_timeline: dict | None = None
        self.sync_handed_over = False  # see hand_over_gradient_sync

    # ---------------------------------------------------------------------------- lifecycle
    def prepare_for_backward(self) -> None:
        """Make the next backward started in this thread synchronise gradients."""
        self._expect_backward = True
        self._forward_thread = threading.get_ident()

    def _on_backward_start(self, task) -> None:
        if self.sync_handed_over:
            return
        if not self._expect_backward or threading.get_ident() != self._forward_thread:
            return
        if self._task is not None:  # the previous backward raised before finishing
            self._reset(drain=True)
        reachable = {id(t) for t in task.leaves}
        if not any(id(p) in reachable for p in self._params):
            return  # a backward through something else: keep waiting for the real one
        self._arm(task)
        task.queue_callback(self._finalize)
        for i, p in enumerate(self._params):
            if id(p) not in reachable:
                self._mark_ready(i)

    def _arm(self, task) -> None:
        self._task = task
        self._ready = [False] * len(self._params)
        self._used[:] = 0
        self._next_bucket = 0
        for bucket in self.buckets:
            bucket.pending = len(bucket.params)
        self._comm.events.clear()
        self._works.clear()
        self._backward_start = time.perf_counter()

    def allreduce_grads(self) -> None:
        """Collective: average every parameter's current ``.grad`` over the group, now.

        The same buckets and write-back as a synchronised backward, for gradients produced
        outside one (and to time the synchronisation alone); as there is no backward to overlap,
        it all-reduces the way ``comm_mode="sync"`` does (one collective per dtype), whatever
        ``comm_mode`` is. Call it on all ranks, outside backward; a forward that armed
        synchronisation stays armed.
        """
        if self._task is not None or self.sync_handed_over:
            raise RuntimeError("allreduce_grads() cannot run during a synchronised backward "
                               "or after hand_over_gradient_sync()")
        expect, forward_thread, mode = self._expect_backward, self._forward_thread, self.comm_mode
        self.comm_mode = "sync"
        try:
            self._arm(object())
            for i in range(len(self._params)):
                self._mark_ready(i)
            self._finalize()
        finally:
            self._expect_backward, self._forward_thread = expect, forward_thread
            self.comm_mode = mode

    def _on_grad_ready(self, index: int) -> None:
        if self._task is None or engine.current_task() is not self._task:
            return
        if self._ready[index]:
            raise RuntimeError(
                f"DistributedDataParallel: parameter '{self._names[index]}' was marked ready "
                f"twice in one backward on rank {self._rank}"
            )
        self._mark_ready(index)

    def _mark_ready(self, index: int) -> None:
        bucket, view = self._slots[index]
        grad = self._params[index].grad
        if grad is None:
            view[...] = 0
        else:
            self._used[index] = 1
            if grad.array is view:  # gradient_as_bucket_view: it already is the slot
                if self._prescale is not None:
                    view *= self._prescale
            elif self._prescale is not None:
                get_array_module(view).multiply(grad.array, self._prescale, out=view)
            else:
                view[...] = grad.array
        self._ready[index] = True
        bucket.pending -= 1
        if bucket.pending == 0:
            self._launch_ready_buckets()
        elif self._works:
            self._works[-1][1].is_completed()  # an MPI test call: lets the collectives progress

    def _launch_ready_buckets(self) -> None:
        buckets = self.buckets
        while self._next_bucket < len(buckets) and buckets[self._next_bucket].pending == 0:
            bucket = buckets[self._next_bucket]
            bucket.launched_at = time.perf_counter()
            self._next_bucket += 1
            if self.comm_mode == "sync":
                continue  # all-reduced by _finalize
            if self.comm_mode == "nonblocking":
                # Like the communication thread: after a failure, later buckets are not
                # launched, and the error is raised at the end of backward, not inside a hook.
                if self._launch_error is None:
                    try:
                        self._works.append((bucket, self._pg.allreduce_async(bucket.buffer)))
                    except BaseException as exc:
                        self._launch_error = exc
                continue
            self._comm.submit(f"bucket {bucket.index}",
                              partial(_allreduce_sum, self._pg, bucket.buffer, self._postdivide,
                                      f"allreduce bucket {bucket.index}",
                                      self._pg.global_ranks[self._rank]))

    def _finalize(self) -> None:
        backward_end = time.perf_counter()
        try:
            for i, ready in enumerate(self._ready):
                if not ready:
                    self._mark_ready(i)
            if self.find_unused_parameters and self.comm_mode == "thread":
                self._comm.submit("unused bitmap", partial(self._pg.allreduce, self._used))
            with timeline.span("ddp wait", "comm"):
                self._comm.wait()
                self._complete_in_this_thread()
        except BaseException as exc:
            self._reset(drain=True)
            message = (f"DistributedDataParallel: gradient synchronisation failed on rank "
                       f"{self._rank}: {type(exc).__name__}: {exc}")
            # Keep RuntimeError subclasses (a peer-aborted error stays recognisable as such).
            error_type = type(exc) if isinstance(exc, RuntimeError) else RuntimeError
            try:
                error = error_type(message)
            except Exception:
                error = RuntimeError(message)
            raise error from exc
        self._reset(drain=False)
        self._write_back()
        self.last_timeline = {
            "backward_start": self._backward_start,
            "backward_end": backward_end,
            "end": time.perf_counter(),
            "launched": [b.launched_at for b in self.buckets],
            "comm": list(self._comm.events),
        }

    def _complete_in_this_thread(self) -> None:
        """Finish the collectives of comm modes "nonblocking" and "sync", in bucket order."""
        events = self._comm.events
        if self.comm_mode == "nonblocking":
            works, self._works = self._works, []
            if self._launch_error is not None:
                for _, work in works:  # MPI must be done with the buffers before they are reused
                    work.wait()
                raise self._launch_error
            rank = self._pg.global_ranks[self._rank]
            for bucket, work in works:
                start = time.perf_counter()
                work.wait()
                if self._postdivide is not None:
                    bucket.buffer /= self._postdivide
                end = time.perf_counter()
                events.append((f"bucket {bucket.index}", start, end))
                # In flight from its launch during backward until it completed here.
                timeline.record(f"allreduce bucket {bucket.index}", "comm", bucket.launched_at,
                                end, rank=rank, bytes=int(bucket.buffer.nbytes),
                                mode="nonblocking")
        elif self.comm_mode == "sync":
            for k, flat in enumerate(self._flats):
                start = time.perf_counter()
                _allreduce_sum(self._pg, flat, self._postdivide, f"allreduce buckets {k}",
                               self._pg.global_ranks[self._rank])
                events.append((f"buckets {k}", start, time.perf_counter()))
        if self.comm_mode != "thread" and self.find_unused_parameters:
            self._pg.allreduce(self._used)

    def _reset(self, drain: bool) -> None:
        if drain:
            try:
                self._comm.wait()
            except BaseException:  # noqa: S110 - already failing; the caller reports
                pass
            works, self._works = self._works, []
            for _, work in works:  # MPI must be done with the buffers before they are reused
                try:
                    work.wait()
                except BaseException:  # noqa: S110
                    pass
        self._task = None
        self._expect_backward = False
        self._launch_error = None

    def _write_back(self) -> None:
        as_view = self.gradient_as_bucket_view
        skip_unused = self.find_unused_parameters
        for i, p in enumerate(self._params):
            if skip_unused and self._used[i] == 0:
                continue  # unused on every rank: .grad stays None, as without DDP
            view = self._slots[i][1]
            grad = p.grad
            if as_view:
                if grad is None or grad.array is not view:
                    p.grad = Tensor(view)
            elif grad is None:
                p.grad = Tensor(view.copy())
            else:
                grad.array[...] = view

    def hand_over_gradient_sync(self) -> None:
        """Stop synchronising gradients for good: another component reduces them itself.

        ZeRO stage 2 calls this (it reduce-scatters the same gradients), so gradients are not
        all-reduced AND reduce-scattered. Must be called on every rank (not a collective); the
        bucket buffers are released.
        """
        self.sync_handed_over = True
        for bucket in self.buckets:
            bucket.buffer = bucket.buffer[:0]
        self._flats = []
        self._slots = [None] * len(self._slots)

    def close(self) -> None:
        """Stop the communication thread (the reducer is unusable afterwards)."""
        self._comm.close()


def _grad_ready_hook(ref: weakref.ref, index: int, _param) -> None:
    reducer = ref()
    if reducer is not None:
        reducer._on_grad_ready(index)


def _backward_start_hook(ref: weakref.ref, task) -> None:
    reducer = ref()
    if reducer is not None:
        reducer._on_backward_start(task)


def _release(handles: list, comm: CommThread) -> None:
    for handle in handles:
        handle.remove()
    comm.close()
