"""``AllReduceBuckets``: DDP's strategy: average every gradient with one all-reduce per bucket.

Every parameter has a slot in a flat bucket buffer; a bucket is all-reduced (SUM) in place as
soon as its last slot is filled, and divided by the world size (before the all-reduce when that
is exact, see ``__init__``). The buckets of one dtype and device are consecutive slices of one
flat buffer, so overlap ``"sync"`` all-reduces them all with a single collective. With
``find_unused_parameters`` a usage bitmap is all-reduced after the buckets, so a parameter no
rank used keeps ``.grad`` None.

How a gradient gets into its slot (``gradient_as_bucket_view``, torch's argument):

* True: ``p.grad`` *is* the slot. Each parameter carries a grad storage hook
  (``Tensor.register_grad_storage_hook``), so when backward creates ``.grad`` (it was None,
  e.g. after ``zero_grad(set_to_none=True)``) it writes it straight into the slot (ops that
  can, Linear's GEMM and Embedding's scatter, compute it there: ``ddp/autograd/
  grad_destination.py``), and later backwards (``no_sync``) accumulate there in place.
  Synchronising is then the in-place all-reduce alone: no copy in, no copy back. A ``.grad``
  the user assigned (not the slot) is copied in and ``p.grad`` is pointed back at the slot
  after the average, as in torch.
* False: ``.grad`` is separate memory; it is copied into the slot (scaled on the way) and the
  average is copied back after the all-reduce (torch's default).

A communication hook (``set_comm_hook``, torch's ``register_comm_hook`` contract) replaces the
averaging all-reduce: each full bucket is handed to ``hook(state, GradBucket)``, which returns
a ``Future`` of the reduced buffer; DDP neither pre-scales nor divides (the hook averages).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from functools import partial

import numpy as np

from ddp.backend import get_array_module
from ddp.distributed.grad_sync.grad_bucket import GradBucket
from ddp.distributed.grad_sync.strategy import Job, SyncStrategy
from ddp.distributed.reduce_op import Work
from ddp.futures import Future
from ddp.tensor import Tensor

_MB = 1024 * 1024


@dataclass
class Bucket:
    """One flat buffer holding the gradients of ``params`` (indices into the strategy's list)."""

    index: int
    buffer: object  # 1-D NumPy/CuPy array
    params: list[int]


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


class AllReduceBuckets(SyncStrategy):
    """Average the gradients of ``params`` over ``world`` ranks, bucket by bucket.

    Args:
        params: the parameters that require grad, in registration order.
        names: their names (for ``describe``).
        world: the number of ranks averaged over.
        bucket_cap_mb: largest bucket size in MiB.
        first_bucket_cap_mb: cap of the first bucket (at most ``bucket_cap_mb``).
        find_unused_parameters: all-reduce a usage bitmap every synchronised backward so that a
            parameter unused on every rank keeps ``.grad`` None. When False, a parameter unused
            on this rank contributes zeros and ends with the averaged (possibly zero) gradient.
        gradient_as_bucket_view: ``p.grad`` is a view of its bucket slot: backward writes
            into it and the all-reduce averages it in place (module docstring).
    """

    owner = "DistributedDataParallel"
    failure_what = "gradient synchronisation"
    collective = "allreduce"
    thread_prefix = "ddp"
    wait_label = "ddp wait"
    overlap_modes = ("thread", "nonblocking", "sync")

    def __init__(self, params: list[Tensor], names: list[str], world: int,
                 bucket_cap_mb: float = 25.0, first_bucket_cap_mb: float = 1.0,
                 find_unused_parameters: bool = False, gradient_as_bucket_view: bool = False):
        if bucket_cap_mb <= 0:
            raise ValueError(f"Invalid bucket_cap_mb: {bucket_cap_mb} (must be positive)")
        self._params = list(params)
        self._names = list(names)
        self.find_unused_parameters = find_unused_parameters
        self.gradient_as_bucket_view = gradient_as_bucket_view
        # Averaging: divide each gradient by the world size while copying it into its bucket
        # (as torch's reducer does), so the SUM all-reduce yields the average with no extra pass.
        # Exact only for a power-of-two world ((a/2 + b/2) == (a + b)/2 bitwise); otherwise the
        # bucket is divided after the all-reduce, so results equal sum-then-divide either way.
        exact = world & (world - 1) == 0
        self._prescale = 1.0 / world if exact and world > 1 else None
        self._postdivide = None if exact else world  # Python numbers: float32 stays so
        self._world = world
        self._rescale: float | None = None  # average_over(): world / contributing ranks
        self._hook = None  # (state, hook) of set_comm_hook

        cap = max(1, int(bucket_cap_mb * _MB))
        first_cap = min(cap, max(1, int(first_bucket_cap_mb * _MB)))
        arrays = [p.array for p in self._params]
        self.buckets: list[Bucket] = []
        self._slots: list = [None] * len(arrays)  # param index -> view of its slot
        layout = assign_buckets(arrays, cap, first_cap)
        keys = [_buffer_key(arrays[indices[0]]) for indices in layout]
        sizes = [sum(arrays[i].size for i in indices) for indices in layout]
        flat_of: dict = {}  # key -> flat buffer
        for key, indices in zip(keys, layout, strict=True):
            if key not in flat_of:
                a = arrays[indices[0]]
                numel = sum(n for k, n in zip(keys, sizes, strict=True) if k == key)
                flat_of[key] = get_array_module(a).zeros(numel, dtype=a.dtype)
        self.flat_buffers: list = list(flat_of.values())
        used = dict.fromkeys(flat_of, 0)
        for b, (key, indices, numel) in enumerate(zip(keys, layout, sizes, strict=True)):
            buffer = flat_of[key][used[key]:used[key] + numel]
            used[key] += numel
            offset = 0
            for i in indices:
                size = arrays[i].size
                self._slots[i] = buffer[offset:offset + size].reshape(arrays[i].shape)
                offset += size
            self.buckets.append(Bucket(b, buffer, indices))
        self._used = np.zeros(len(arrays), dtype=np.int32)
        self._storage_handles: list = []
        if gradient_as_bucket_view:
            ref = weakref.ref(self)
            self._storage_handles = [p.register_grad_storage_hook(partial(_slot_of, ref, i))
                                     for i, p in enumerate(self._params)]
            weakref.finalize(self, _remove_all, self._storage_handles)

    def set_comm_hook(self, state, hook) -> None:
        """Reduce each bucket with ``hook(state, bucket)`` instead of the averaging all-reduce
        (DDP's ``register_comm_hook``); between backwards, on every rank alike."""
        self._hook = (state, hook)
        self._prescale = self._postdivide = None  # the hook averages

    def describe(self) -> str:
        """The bucket layout, for the ranks' one-time agreement check."""
        return "; ".join(f"{b.buffer.dtype}[{','.join(self._names[i] for i in b.params)}]"
                         for b in self.buckets)

    # --------------------------------------------------------------------- the strategy
    def members(self, bucket: Bucket) -> list[int]:
        return bucket.params

    def begin(self) -> None:
        self._used[:] = 0

    def slot(self, index: int):
        """The bucket memory of parameter ``index``'s gradient (None once released)."""
        return self._slots[index]

    def fill(self, index: int, hooked: bool) -> None:
        view = self._slots[index]
        grad = self._params[index].grad
        if grad is None:
            view[...] = 0
            return
        self._used[index] = 1
        if grad.array is view:  # gradient_as_bucket_view: backward wrote into the slot
            if self._prescale is not None:
                view *= self._prescale
        elif self._prescale is not None:
            get_array_module(view).multiply(grad.array, self._prescale, out=view)
        else:
            view[...] = grad.array

    def zero_buckets(self) -> None:
        for flat in self.flat_buffers:
            flat[...] = 0
        self._used[:] = 0

    def average_over(self, ranks: int | None) -> None:
        """Divide the sums by ``ranks`` instead of the world size from now on (None: the world
        size again). ``Join(divide_by_initial_world_size=False)``: only the active ranks count."""
        self._rescale = None if ranks in (None, self._world) else self._world / ranks

    def nbytes(self, bucket: Bucket) -> int:
        return int(bucket.buffer.nbytes)

    def reduce(self, bucket: Bucket, process_group) -> None:
        if self._hook is not None:
            self._take_hook_result(bucket, self._run_hook(bucket))
            return
        self._allreduce(bucket.buffer, process_group)

    def _run_hook(self, bucket: Bucket) -> Future:
        state, hook = self._hook
        grad_bucket = GradBucket(bucket.index, len(self.buckets), bucket.buffer,
                                 [self._params[i] for i in bucket.params],
                                 [self._slots[i] for i in bucket.params])
        future = hook(state, grad_bucket)
        if not isinstance(future, Future):
            raise TypeError(f"communication hook {getattr(hook, '__name__', hook)!r} must return "
                            f"a ddp.futures.Future (torch.futures.Future), got "
                            f"{type(future).__name__}")
        return future

    def _take_hook_result(self, bucket: Bucket, future: Future) -> None:
        value = future.wait()
        if isinstance(value, (list, tuple)) and len(value) == 1:
            value = value[0]  # a collective's own future: [tensor]
        if not isinstance(value, Tensor) or value.numel() != bucket.buffer.size:
            raise RuntimeError(
                f"communication hook: the future of bucket {bucket.index} must hold a Tensor of "
                f"{bucket.buffer.size} elements (the bucket), got "
                f"{value.shape if isinstance(value, Tensor) else type(value).__name__}")
        if value.array is not bucket.buffer:
            bucket.buffer[...] = value.array.reshape(-1)
        self._finish_average(bucket.buffer)

    def _allreduce(self, buffer, process_group) -> None:
        process_group.allreduce(buffer)
        self._finish_average(buffer)

    def reduce_async(self, bucket: Bucket, process_group):
        if self._hook is not None:
            future = self._run_hook(bucket)
            return _HookWork(lambda: self._take_hook_result(bucket, future), future)
        return process_group.allreduce_async(bucket.buffer)

    def complete_async(self, bucket: Bucket) -> None:
        if self._hook is None:  # a hook's result was taken when its work completed
            self._finish_average(bucket.buffer)

    def _finish_average(self, buffer) -> None:
        if self._postdivide is not None:
            buffer /= self._postdivide
        if self._rescale is not None:
            buffer *= self._rescale

    def after_backward_jobs(self, process_group) -> list[Job]:
        if self._hook is not None:
            return super().after_backward_jobs(process_group)  # one hook call per bucket
        return [(f"buckets {k}", partial(self._allreduce, flat, process_group))
                for k, flat in enumerate(self.flat_buffers)]

    def closing_jobs(self, process_group) -> list[Job]:
        if not self.find_unused_parameters:
            return []
        return [("unused bitmap", partial(process_group.allreduce, self._used))]

    def finish(self) -> None:
        as_view = self.gradient_as_bucket_view
        skip_unused = self.find_unused_parameters
        for i, p in enumerate(self._params):
            if skip_unused and self._used[i] == 0:
                continue  # unused on every rank: .grad stays None, as without DDP
            view = self._slots[i]
            grad = p.grad
            if as_view:
                if grad is None or grad.array is not view:
                    p.grad = Tensor(view)
            elif grad is None:
                p.grad = Tensor(view.copy())
            else:
                grad.array[...] = view

    def memory_bytes(self) -> dict[str, int]:
        viewed = sum(p.grad.array.nbytes for p, slot in zip(self._params, self._slots, strict=True)
                     if slot is not None and p.grad is not None and p.grad.array is slot)
        return {"comm": sum(int(flat.nbytes) for flat in self.flat_buffers),
                "grads_in_comm": int(viewed)}

    def release(self) -> None:
        _remove_all(self._storage_handles)  # backward allocates .grad again
        for bucket in self.buckets:
            bucket.buffer = bucket.buffer[:0]
        self.flat_buffers = []
        self._slots = [None] * len(self._slots)


def _slot_of(ref: weakref.ref, index: int, _param):
    """A parameter's grad storage hook: its bucket slot (None once the strategy is gone)."""
    strategy = ref()
    return None if strategy is None else strategy.slot(index)


def _remove_all(handles: list) -> None:
    for handle in handles:
        handle.remove()


class _HookWork(Work):
    """A communication hook's future, as the scheduler's non-blocking path waits for it."""

    def __init__(self, finish, future: Future):
        super().__init__(finish)
        self._future = future

    def is_completed(self) -> bool:
        return self._done or self._future.done()
