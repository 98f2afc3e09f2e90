"""``FSDPUnit``: the parameters one ``fully_shard`` call manages, gathered and resharded together.

A unit owns, per dtype of its parameters, a ``UnitLayout`` (the dim-0 shards and the flat
collective buffers) and a ``GatheredStorage`` (the unsharded parameters, contiguous). Its
parameters exist twice: a ``ShardedParameter`` per parameter (what ``model.parameters()`` and
the optimizer see between steps) and an unsharded ``nn.Parameter`` (a view of the storage, a
leaf of the graph while the unit runs). ``unshard`` all-gathers (one collective per dtype, so
one per unit in the usual case) and registers the unsharded parameters on their modules (torch
FSDP2 swaps the registered parameter the same way); ``reshard`` registers the sharded ones back
and releases the storage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ddp import dtypes
from ddp.backend import get_array_module, to_numpy
from ddp.distributed.fsdp.gathered_storage import GatheredStorage
from ddp.distributed.fsdp.shard_layout import UnitLayout
from ddp.distributed.fsdp.sharded_param import ShardedParameter
from ddp.nn.parameter import Parameter


@dataclass
class ShardGroup:
    """The parameters of one unit that share a dtype: one all-gather, one reduce-scatter."""

    layout: UnitLayout
    sharded: list[ShardedParameter]
    unsharded: list[Parameter]
    names: list[str]
    storage: GatheredStorage
    param_dtype: object  # NumPy dtype of the unsharded parameters
    reduce_dtype: object  # NumPy dtype of the reduce-scatter
    xp: object  # the array module of the compute (unsharded parameters, collective buffers)
    grad_indices: list[int] = field(default_factory=list)  # scheduler indices, set by the root


class FSDPUnit:
    """The state of one ``fully_shard(module)`` (see the module docstring).

    Args:
        module: the module ``fully_shard`` was applied to.
        managed: ``(name, [(owner module, attribute)], parameter)`` for each distinct parameter
            the unit manages (a tied parameter has several slots).
        process_group: the ranks sharded over.
        reshard_after_forward: free the gathered parameters after forward.
        mp_policy: the mixed-precision policy.
        offload: keep the sharded parameters (so their gradients and the optimizer state) in
            host memory while the compute runs on the GPU (``CPUOffloadPolicy``).
    """

    def __init__(self, module, managed: list, process_group, reshard_after_forward: bool,
                 mp_policy, offload: bool = False):
        self.module = module
        self.process_group = process_group
        self.rank, self.world = process_group.rank(), process_group.size()
        self.reshard_after_forward = reshard_after_forward
        self.mp_policy = mp_policy
        self.offload = offload
        self.requires_gradient_sync = True
        self.gathered = False
        self.pending = False  # a prefetch all-gather is queued or running
        self.root = None  # the FSDPRoot that schedules this unit (set at the first forward)
        self.gather_group = None  # set by the root: a group for parameter all-gathers
        self.groups: list[ShardGroup] = []
        self._slots: list[list[tuple]] = []  # per group: per parameter, its (module, attr)s
        self.has_frozen = any(not p.requires_grad for _, _, p in managed)
        by_dtype: dict = {}
        for entry in managed:
            by_dtype.setdefault(str(entry[2].array.dtype), []).append(entry)
        for entries in by_dtype.values():
            self._add_group(entries)

    def _add_group(self, entries: list) -> None:
        params = [p for _, _, p in entries]
        xp = get_array_module(params[0].array)
        layout = UnitLayout([tuple(p.array.shape) for p in params], self.world)
        own = params[0].array.dtype
        pd = self.mp_policy.param_dtype
        param_dtype = own if pd is None else dtypes.to_numpy_dtype(pd)
        rd = self.mp_policy.reduce_dtype
        reduce_dtype = param_dtype if rd is None else dtypes.to_numpy_dtype(rd)
        storage = GatheredStorage(layout.full_numel, param_dtype, xp)
        sharded, unsharded = [], []
        for i, p in enumerate(params):
            spec = layout.spec(i, self.rank)
            start, stop = spec.row_start, spec.row_stop
            full = p.array.reshape(1) if p.array.ndim == 0 else p.array
            local = to_numpy(full[start:stop]).copy() if self.offload else full[start:stop].copy()
            sharded.append(ShardedParameter(local, spec, self.process_group, p.requires_grad))
            # a view of the storage once gathered; an empty array (a loud shape error if
            # autograd ever reached it) while resharded
            unsharded.append(Parameter(xp.empty((0,), dtype=param_dtype),
                                       requires_grad=p.requires_grad))
        self.groups.append(ShardGroup(layout, sharded, unsharded, [n for n, _, _ in entries],
                                      storage, param_dtype, reduce_dtype, xp))
        self._slots.append([slots for _, slots, _ in entries])
        self._register(len(self.groups) - 1, sharded)

    def _register(self, g: int, params: list) -> None:
        for slots, p in zip(self._slots[g], params, strict=True):
            for owner, attr in slots:
                owner.register_parameter(attr, p)

    # ------------------------------------------------------------------- gather / reshard
    def unshard(self) -> None:
        """Collective on the unit's group: all-gather the parameters (no-op when gathered).

        Under a root the all-gather runs on the root's gather thread (where prefetches run
        too, so the group is driven by one thread); this waits for it.
        """
        if self.gathered:
            return
        if self.root is None:
            self._gather(self.process_group)
        else:
            if not self.pending:
                self.prefetch(self.root.gather_thread)
            self.root.gather_thread.wait()
        self.pending = False
        for g, sg in enumerate(self.groups):
            for i, q in enumerate(sg.unsharded):
                q.array = sg.layout.full_view(sg.storage.array, i)
            self._register(g, sg.unsharded)
        self.gathered = True

    def prefetch(self, thread) -> None:
        """Start this unit's all-gather on ``thread`` (a ``CommThread``); ``unshard`` waits
        for it. No-op when gathered or already started."""
        if self.gathered or self.pending:
            return
        self.pending = True
        thread.submit(f"all-gather {type(self.module).__name__}",
                      lambda: self._gather(self.gather_group))

    def _gather(self, group) -> None:
        for sg in self.groups:
            xp = sg.xp
            section = xp.empty(sg.layout.section, dtype=sg.param_dtype)
            # offloaded shards travel host -> device here (xp.asarray: no copy otherwise)
            sg.layout.copy_in(section, [xp.asarray(p.array) for p in sg.sharded])
            gathered = xp.empty(sg.layout.section * self.world, dtype=sg.param_dtype)
            group.allgather(gathered, section)
            sg.layout.copy_out(gathered, sg.storage.materialize())

    def reshard(self) -> None:
        """Register the sharded parameters back and release the gathered storage."""
        if self.pending:  # a prefetch that no forward used: let it land, then drop it
            self.root.gather_thread.wait()
            self.pending = False
            self.gathered = True
        if not self.gathered:
            return
        for g, sg in enumerate(self.groups):
            self._register(g, sg.sharded)
            sg.storage.release()
            if sg.storage.array is None:  # GPU: let the unsharded views go too
                for q in sg.unsharded:
                    q.array = sg.xp.empty((0,), dtype=sg.param_dtype)
        self.gathered = False

    def gathered_nbytes(self) -> int:
        """Bytes of this unit's unsharded parameter storage held now (0 when resharded)."""
        return sum(sg.storage.nbytes for sg in self.groups)

    def sharded_params(self) -> list[ShardedParameter]:
        return [p for sg in self.groups for p in sg.sharded]
