"""``SyncStrategy``: what a gradient-sync strategy tells the scheduler.

The scheduler (``scheduler.py``) decides *when*: arming, readiness, in-order launch, overlap,
the end of backward, failures. A strategy decides *what*: which parameters share a bucket, how a
gradient enters its bucket, which collective reduces a bucket and where the result goes. Every
method is called by the scheduler only, from the thread the docstring names; the process group
to use is passed in (the scheduler owns the private channel).

Strategies today: ``AllReduceBuckets`` (DDP, ``allreduce.py``), ``ShardedGrads`` stage 1 and 2
(ZeRO, ``ddp/distributed/optim/sharded_grads.py``), ``FullyShardedGrads`` (``fully_shard``,
``ddp/distributed/fsdp/reduce_scatter.py``).
"""

from __future__ import annotations

from collections.abc import Callable

Job = tuple[str, Callable[[], None]]  # (label, a blocking collective)


class SyncStrategy:
    """Base class: override what your strategy does; defaults are documented per method."""

    owner = "gradient sync"  # the user-facing class, for messages ("DistributedDataParallel")
    failure_what = "gradient synchronisation"  # "<owner>: <failure_what> failed on rank r: ..."
    collective = "reduce"  # timeline span prefix: "<collective> bucket <k>"
    thread_prefix = "grad-sync"  # communication thread name: "<thread_prefix>-comm-rank<r>"
    wait_label = "grad sync wait"  # timeline span of the end of backward waiting for buckets
    overlap_modes: tuple[str, ...] = ("thread", "sync")
    buckets: list = []  # in launch order (the order backward is expected to fill them)

    def members(self, bucket) -> list[int]:
        """Indices of the parameters whose gradients ``bucket`` holds (some or all of)."""
        raise NotImplementedError

    def begin(self) -> None:
        """Backward thread: a synchronised backward starts, before any ``fill``."""

    def fill(self, index: int, hooked: bool) -> None:
        """Backward thread: parameter ``index``'s gradient is final; put it into its bucket(s).

        ``hooked`` is True when its post-accumulate-grad hook fired (``p.grad`` holds this
        backward's result), False when the scheduler marks it ready without one (unreachable
        from the loss, reachable but left None, or ``sync_now``).
        """
        raise NotImplementedError

    def zero_buckets(self) -> None:
        """Backward thread: fill every bucket with zero gradients (``GradSyncScheduler.shadow``:
        this rank contributes nothing to the reductions it joins)."""
        raise NotImplementedError

    def nbytes(self, bucket) -> int:
        """Bytes a bucket's collective moves in (for the timeline)."""
        return 0

    def reduce(self, bucket, process_group) -> None:
        """Communication thread (or backward thread in "sync"): reduce one bucket, blocking."""
        raise NotImplementedError

    def reduce_async(self, bucket, process_group):
        """Backward thread, overlap "nonblocking": start reducing ``bucket``; returns a Work."""
        raise NotImplementedError

    def complete_async(self, bucket) -> None:
        """Backward thread: the Work of ``reduce_async(bucket)`` completed."""

    def after_backward_jobs(self, process_group) -> list[Job]:
        """Overlap "sync": the collectives that reduce every bucket after backward, in order
        (default: each bucket's ``reduce``; a strategy may coalesce them)."""
        return [(f"bucket {k}", lambda b=b: self.reduce(b, process_group))
                for k, b in enumerate(self.buckets)]

    def closing_jobs(self, process_group) -> list[Job]:
        """Collectives after the last bucket, in the same order on every rank (default none)."""
        return []

    def finish(self) -> None:
        """Backward thread: every collective completed; write the results back."""

    def abandon(self) -> None:
        """Backward thread: a synchronised backward failed and was drained; forget its state."""

    def release(self) -> None:
        """The gradient sync was handed over for good: free the buffers."""

    def memory_bytes(self) -> dict[str, int]:
        """Bytes of the strategy's own buffers now (any thread, between backwards):
        ``comm`` (bucket buffers) and ``grads_in_comm`` (the part of them that parameters'
        ``.grad`` tensors view, so a ledger counts those bytes once). Default: none."""
        return {"comm": 0, "grads_in_comm": 0}
