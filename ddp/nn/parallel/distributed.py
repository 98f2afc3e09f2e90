"""``DistributedDataParallel``: synchronous data parallelism by gradient averaging.

Each rank runs the same model on its own shard of the batch; during ``loss.backward()`` the
gradients are averaged over the ranks in buckets, overlapping the communication with the rest
of backward (the one gradient-sync scheduler of ``ddp/distributed/grad_sync`` running its
``AllReduceBuckets`` strategy), so that after backward every rank holds the gradient
of the global batch and ``optimizer.step()`` keeps the replicas identical.

Collective points (every rank must reach them, in the same order):
  * construction: model check (one small all-gather), parameter and buffer broadcast from
    rank 0, and the creation (and bucket-layout check) of the reducer's private group;
  * every ``forward`` with grad enabled outside ``no_sync()``: buffer broadcast from rank 0
    (when ``broadcast_buffers`` and the module has buffers); inside ``join()``, first the join
    all-reduce (active ranks) and one small all-reduce agreeing on this iteration;
  * the ``backward`` that follows such a forward: the bucket all-reduces (plus one bitmap
    all-reduce with ``find_unused_parameters=True``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from ddp import config
from ddp.autograd.grad_mode import is_grad_enabled
from ddp.backend import get_array_module
from ddp.distributed.algorithms.join import Join, Joinable, JoinHook
from ddp.distributed.api import resolve_group
from ddp.distributed.grad_sync import AllReduceBuckets, GradSyncScheduler, check_overlap
from ddp.distributed.reduce_op import ReduceOp
from ddp.nn.modules.module import Module

_BROADCAST_CHUNK_BYTES = 256 * 1024 * 1024


class DistributedDataParallel(Module, Joinable):
    """Wrap ``module`` so that backward averages its gradients over ``process_group``.

    Must be constructed on every rank of the group, with the same model (same parameter
    names, shapes, dtypes, in the same registration order: that order fixes the buckets).

    Args:
        module: the model; its parameters are overwritten with rank 0's values.
        device_ids: accepted for torch compatibility: None, or one device index that must be
            the device of the module's parameters (CPU modules take None).
        output_device: accepted for torch compatibility; outputs stay where the module puts them.
        broadcast_buffers: broadcast the module's buffers from rank 0 at every forward that
            will synchronise (grad enabled, outside ``no_sync``), as torch does.
        process_group: the group to average over; the default group when None.
        bucket_cap_mb: largest gradient bucket, in MiB.
        find_unused_parameters: reduce a per-parameter usage bitmap in every synchronised
            backward, so a parameter that got no gradient on ANY rank keeps ``.grad`` None (as
            it would without DDP). When False (default, no extra collective), a parameter
            unused on this rank contributes zeros and always ends with a ``.grad`` (the average,
            zero when no rank used it). Either way an unused parameter never causes a hang.
        gradient_as_bucket_view: each ``.grad`` is a view of its slot in a communication
            bucket: backward writes the gradient into the slot and the all-reduce averages it
            there in place, saving two copies per step and the memory of separate grads.
            **ddp's default is True; torch's is False.** Torch's documented consequences hold:
            ``.grad`` shares memory with the bucket (a reference to it kept across steps sees
            later steps' values), ``zero_grad(set_to_none=True)`` drops it and the next
            backward writes into the slot again, a ``.grad`` assigned by hand is copied into
            the slot and ``.grad`` points at the slot again after the average. ``False``
            keeps ``.grad`` separate and copies it into the bucket and back, as torch's
            default does.
        comm_mode: how buckets are all-reduced (an extension; torch has no such argument):
            ``"thread"`` (a communication thread overlapping backward), ``"nonblocking"``
            (``MPI_Iallreduce`` started from backward and progressed at every gradient hook)
            or ``"sync"`` (one all-reduce per dtype after backward, no overlap). None reads
            ``DDP_COMM_MODE`` from the environment, default ``"thread"``. Results are identical;
            only speed differs (docs/benchmarks.md). Must be the same on all ranks (checked at
            construction: a mismatch raises instead of hanging).

    Raises:
        RuntimeError: on every rank, when the ranks' models differ (naming the ranks and the
            first differing parameter).

    Example::

        model = DistributedDataParallel(Net())
        loss = loss_fn(model(x_shard), y_shard)   # mean over the local batch
        loss.backward()                           # grads now averaged over all ranks
        optimizer.step()
    """

    def __init__(self, module: Module, device_ids=None, output_device=None,
                 broadcast_buffers: bool = True, process_group=None, bucket_cap_mb: float = 25,
                 find_unused_parameters: bool = False, gradient_as_bucket_view: bool = True,
                 comm_mode: str | None = None):
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(
                f"DistributedDataParallel wraps a ddp.nn.Module, got {type(module).__name__}"
            )
        if bucket_cap_mb is None:
            bucket_cap_mb = 25
        if bucket_cap_mb <= 0:
            raise ValueError(f"Invalid bucket_cap_mb: {bucket_cap_mb} (must be positive)")
        named = list(module.named_parameters())
        if not any(p.requires_grad for _, p in named):
            raise RuntimeError(
                "DistributedDataParallel is not needed when a module doesn't have any parameter "
                "that requires a gradient."
            )
        _check_device_ids(device_ids, named)
        self.module = module
        self.device_ids = device_ids
        self.output_device = output_device
        self.broadcast_buffers = broadcast_buffers
        self.find_unused_parameters = find_unused_parameters
        self.gradient_as_bucket_view = gradient_as_bucket_view
        self.require_backward_grad_sync = True
        self.process_group = _resolve_group(process_group)
        pg = self.process_group

        _verify_same_model(pg, named, list(module.named_buffers()))
        _broadcast_coalesced(pg, [p.array for _, p in named] +
                             [b.array for b in module.buffers()], src=0)

        trained = [(name, p) for name, p in named if p.requires_grad]
        params, names = [p for _, p in trained], [name for name, _ in trained]
        mode = comm_mode or default_comm_mode()
        check_overlap(mode)
        buckets = AllReduceBuckets(params, names, pg.size(), bucket_cap_mb=bucket_cap_mb,
                                   find_unused_parameters=find_unused_parameters,
                                   gradient_as_bucket_view=gradient_as_bucket_view)
        # The reducer's own channel: never interleaves with user collectives. The bucket layout,
        # verified identical on all ranks by this dup, alone fixes the order of its collectives,
        # so the channel needs no per-collective check.
        comm_pg = pg.dup(description=f"DDP buckets find_unused={find_unused_parameters} "
                                     f"comm_mode={mode}: {buckets.describe()}")
        # A ZeroRedundancyOptimizer over these parameters (built before or after) takes the
        # gradient sync over: see the scheduler's ownership rule.
        self.reducer = GradSyncScheduler(params, names, buckets, comm_pg, overlap=mode)
        self._join_divide_by_initial_world_size = True
        self._comm_hook = None

    def forward(self, *inputs, **kwargs):
        """Run the wrapped module; arms gradient synchronisation for the next backward."""
        sync = is_grad_enabled() and self.require_backward_grad_sync
        source = 0
        active = Join.notify_join_context(self)
        if active is not None:  # inside join(): agree with the ranks that have joined
            sync, source = _join_round(self.process_group, sync, self.process_group.rank())
            self.reducer.strategy.average_over(
                None if self._join_divide_by_initial_world_size else active)
        if sync:
            self._sync_buffers(source)
            self.reducer.expect_backward()
        return self.module(*inputs, **kwargs)

    def _sync_buffers(self, source: int) -> None:
        if self.broadcast_buffers and self.process_group.size() > 1:
            buffers = [b.array for b in self.module.buffers()]
            if buffers:
                _broadcast_coalesced(self.process_group, buffers, src=source)

    # ------------------------------------------------------------------------- comm hooks
    def register_comm_hook(self, state: object, hook) -> None:
        """Reduce each gradient bucket with ``hook(state, bucket)`` (torch's contract).

        ``bucket`` is a ``ddp.distributed.GradBucket``; the hook returns a ``ddp.futures.Future``
        (torch.futures.Future) whose value is the reduced bucket (a Tensor of
        ``bucket.buffer().numel()`` elements); DDP writes it back and does not divide by the
        world size itself (the hook averages, as ``default_hooks.allreduce_hook`` does). Ready
        hooks: ``ddp.distributed.algorithms.ddp_comm_hooks.default_hooks``
        (``allreduce_hook``, ``fp16_compress_hook``). As in torch, hooks run in the backward
        thread: with ``comm_mode="thread"`` DDP switches to ``"nonblocking"`` (the hook's
        asynchronous collectives are progressed by the later gradient hooks). Call once, on
        every rank, before training.

        Raises:
            TypeError: ``hook`` is not callable.
            RuntimeError: a hook is already registered, or a ZeroRedundancyOptimizer owns the
                gradient sync of this model.
        """
        if not callable(hook):
            raise TypeError("Communication hook must be callable.")
        if self._comm_hook is not None:
            raise RuntimeError(
                "register_comm_hook or register_builtin_comm_hook can only be called once.")
        if self.reducer.handed_over:
            raise RuntimeError("register_comm_hook: a ZeroRedundancyOptimizer owns the gradient "
                               "synchronisation of this model (it reduce-scatters every bucket)")
        self._comm_hook = hook
        self.reducer.strategy.set_comm_hook(state, hook)
        if self.reducer.overlap == "thread":
            self.reducer.use_overlap("nonblocking")

    # ------------------------------------------------------------------------------- join
    def memory_bytes(self) -> dict[str, int]:
        """Bytes of DDP's bucket buffers on this rank (no communication): ``comm`` (0 once a
        ZeroRedundancyOptimizer took the gradient sync over) and ``grads_in_comm``, the part
        of them that ``.grad`` tensors view (``gradient_as_bucket_view``)."""
        return self.reducer.strategy.memory_bytes()

    def join(self, divide_by_initial_world_size: bool = True, enable: bool = True,
             throw_on_early_termination: bool = False) -> Join:
        """Context manager for uneven inputs: ``with model.join(): for batch in my_batches:``.

        A rank whose loop ends first shadows the others' collectives (buffer broadcast,
        gradient buckets) with zero gradients until every rank is done; then the last rank to
        finish broadcasts its model so all replicas are equal. Gradients are the sum over the
        active ranks divided by the initial world size (``divide_by_initial_world_size``) or
        by the number of active ranks. Must be entered on every rank.
        """
        return Join([self], enable, throw_on_early_termination,
                    divide_by_initial_world_size=divide_by_initial_world_size)

    def join_hook(self, divide_by_initial_world_size: bool = True, **kwargs) -> JoinHook:
        """The hook a joined rank runs (``Joinable``); every rank builds it (``Join``)."""
        self._join_divide_by_initial_world_size = divide_by_initial_world_size
        return _DDPJoinHook(self)

    @property
    def join_device(self):
        return next(self.module.parameters()).device

    @property
    def join_process_group(self):
        return self.process_group

    @contextmanager
    def no_sync(self) -> Iterator[None]:
        """Context manager: backward passes inside accumulate gradients locally, without
        communication. The first synchronised backward after it (forward outside ``no_sync``)
        averages everything accumulated.

        Example::

            with ddp_model.no_sync():
                ddp_model(x1).sum().backward()     # local accumulation
            ddp_model(x2).sum().backward()         # synchronises grads of x1 and x2
        """
        if self.reducer.handed_over:
            raise RuntimeError(
                "no_sync() has no effect here: a ZeroRedundancyOptimizer owns gradient "
                "synchronisation of this model's parameters and reduce-scatters every backward. "
                "Accumulate by calling backward() several times before step() instead (ZeRO "
                "sums the averaged gradients of every backward), or drop ZeRO."
            )
        previous = self.require_backward_grad_sync
        self.require_backward_grad_sync = False
        try:
            yield
        finally:
            self.require_backward_grad_sync = previous


class _DDPJoinHook(JoinHook):
    """A joined rank's side of DDP's iteration: the agreement, the buffers, the buckets."""

    def __init__(self, model: DistributedDataParallel):
        self.model = model

    def main_hook(self) -> None:
        model = self.model
        sync, source = _join_round(model.process_group, False, -1)
        if sync:
            model._sync_buffers(source)
            model.reducer.shadow()

    def post_hook(self, is_last_joiner: bool) -> None:
        model, pg = self.model, self.model.process_group
        model.reducer.strategy.average_over(None)
        # The replicas of ranks that joined early missed steps: the last joiner's is current.
        source = np.array([pg.rank() if is_last_joiner else -1], dtype=np.int64)
        pg.allreduce(source, ReduceOp.MAX)
        _broadcast_coalesced(pg, [p.array for p in model.module.parameters()] +
                             [b.array for b in model.module.buffers()], src=int(source[0]))


def _join_round(pg, sync: bool, rank: int) -> tuple[bool, int]:
    """Collective inside ``join()``: does this iteration synchronise (any active rank says so),
    and the highest active rank (the source of the buffers; joined ranks pass -1)."""
    flags = np.array([int(sync), rank], dtype=np.int64)
    pg.allreduce(flags, ReduceOp.MAX)
    return bool(flags[0]), int(flags[1])


def default_comm_mode() -> str:
    """``DDP_COMM_MODE`` from the environment, else ``"thread"`` (see ``comm_mode``).

    ``"thread"`` is the default from measurement (docs/benchmarks.md): ``"nonblocking"`` gained
    ~5 % on compute-heavy steps with ranks filling the cores, but lost ~40 % on a
    communication-heavy one, where MPI only progresses at the few gradient hooks.
    """
    return config.get("DDP_COMM_MODE")


def _resolve_group(process_group):
    return resolve_group(process_group)  # None or group.WORLD: the default group


def _check_device_ids(device_ids, named: list) -> None:
    if device_ids is None:
        return
    device_ids = list(device_ids)
    devices = {str(p.device) for _, p in named}
    if len(device_ids) > 1 or len(devices) > 1:
        raise ValueError(
            f"DistributedDataParallel supports single-device modules only, got device_ids "
            f"{device_ids} and module parameters on {sorted(devices)}"
        )
    if device_ids and devices == {"cpu"}:
        raise ValueError(
            f"DistributedDataParallel device_ids and output_device arguments only work with "
            f"single-device GPU modules, but got device_ids {device_ids} and module parameters "
            f"on {sorted(devices)}; pass device_ids=None for a CPU module"
        )


def _describe(named: list, buffers: list) -> list[tuple]:
    return ([("parameter", name, tuple(p.shape), str(p.dtype), bool(p.requires_grad))
             for name, p in named] +
            [("buffer", name, tuple(b.shape), str(b.dtype), False) for name, b in buffers])


def _verify_same_model(pg, named: list, buffers: list) -> None:
    """Collective: raise on every rank unless all ranks have the same parameters and buffers."""
    description = _describe(named, buffers)
    digest = hashlib.blake2b(repr(description).encode(), digest_size=16).hexdigest()
    digests = pg.allgather_object(digest)
    if len(set(digests)) == 1:
        return
    # Every rank sees the same digests, so every rank takes this branch: safe collective.
    descriptions = pg.allgather_object(description)
    differing = [r for r, d in enumerate(digests) if d != digests[0]]
    detail = _first_difference(descriptions[0], descriptions[differing[0]], differing[0])
    raise RuntimeError(
        f"DistributedDataParallel: the model differs across ranks: rank(s) {differing} differ "
        f"from rank 0; first difference (rank {differing[0]} vs rank 0): {detail}. Every rank "
        f"must build the same model, registering parameters in the same order."
    )


def _first_difference(reference: list[tuple], other: list[tuple], rank: int) -> str:
    def show(entry: tuple) -> str:
        kind, name, shape, dtype, requires_grad = entry
        grad = f", requires_grad={requires_grad}" if kind == "parameter" else ""
        return f"{kind} '{name}' (shape {shape}, {dtype}{grad})"

    for position, (mine, theirs) in enumerate(zip(reference, other, strict=False)):
        if mine != theirs:
            return f"entry #{position} is {show(theirs)} on rank {rank} but {show(mine)} on rank 0"
    if len(other) > len(reference):
        return (f"rank {rank} has {len(other)} parameters and buffers, rank 0 has "
                f"{len(reference)}; first extra on rank {rank}: {show(other[len(reference)])}")
    return (f"rank {rank} has {len(other)} parameters and buffers, rank 0 has {len(reference)}; "
            f"first missing on rank {rank}: {show(reference[len(other)])}")


def _broadcast_coalesced(pg, arrays: list, src: int) -> None:
    """Collective: overwrite ``arrays`` in place with rank ``src``'s values.

    Arrays are packed per dtype into flat buffers of at most 256 MiB, so a model costs a few
    broadcasts rather than one per tensor. Non-contiguous arrays are handled.
    """
    if pg.size() == 1 or not arrays:
        return
    groups: dict = {}
    for a in arrays:
        groups.setdefault((str(a.dtype), type(a).__module__), []).append(a)
    for members in groups.values():
        chunk: list = []
        nbytes = 0
        for a in members + [None]:
            if a is None or (chunk and nbytes + a.nbytes > _BROADCAST_CHUNK_BYTES):
                _broadcast_flat(pg, chunk, src)
                chunk, nbytes = [], 0
            if a is not None:
                chunk.append(a)
                nbytes += a.nbytes


def _broadcast_flat(pg, arrays: list, src: int) -> None:
    if not arrays:
        return
    xp = get_array_module(arrays[0])
    flat = xp.concatenate([a.reshape(-1) for a in arrays])
    pg.broadcast(flat, src)
    offset = 0
    for a in arrays:
        a[...] = flat[offset:offset + a.size].reshape(a.shape)
        offset += a.size
