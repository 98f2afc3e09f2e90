"""``ZeroRedundancyOptimizer``: ZeRO stages 1 and 2 over an exact, equal flat partition.

Construction (a collective) lays the parameters out in one flat buffer per dtype, cut into
buckets (see ``flat_layout.py``), copies them in and makes every ``p.array`` a view of its slot,
so the model keeps using the same Parameter objects. Rank ``r`` owns the ``r``-th of ``world``
equal pieces of every bucket and runs the wrapped optimizer on *shard parameters*, tensors
viewing those pieces (one per piece and param group it intersects), so optimizer state is
exactly ``1/world``.

Gradients (both stages, with or without DDP): ZeRO's strategies (``sharded_grads.py``) of the
one gradient-sync scheduler (``ddp/distributed/grad_sync``) reduce-scatter (average) each bucket
during backward on the scheduler's communication thread as soon as its gradients are final;
stage 1 keeps a full-size gradient buffer, stage 2 only the shard. The scheduler is exclusive:
it takes these parameters' gradient sync over from a DDP wrapping the same model. ``step()`` (a
collective): the wrapped optimizer updates this rank's pieces in place, bucket by bucket, and
each updated bucket is all-gathered on the communication thread while the next one is stepped,
writing every rank's pieces into every rank's flat buffer and so into the parameters.
Communication per step: reduce-scatter + all-gather = one all-reduce, plain DDP's bytes.

Collective points (every rank, same order): construction, every ``step``, the end of every
backward through these parameters, ``clip_grad_norm_``, ``has_nonfinite_grad``,
``consolidate_state_dict``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from functools import partial
from typing import Any

import numpy as np

from ddp import dtypes
from ddp.backend import get_array_module
from ddp.distributed.algorithms.join import Joinable, JoinHook
from ddp.distributed.api import resolve_group
from ddp.distributed.grad_sync import GradSyncScheduler
from ddp.distributed.nonfinite import (
    REDUCED,
    NonfiniteCensus,
    describe,
    param_label,
    report,
)
from ddp.distributed.optim import shard_state
from ddp.distributed.optim.flat_layout import FlatLayout
from ddp.distributed.optim.shard_state import ShardParam
from ddp.distributed.optim.sharded_grads import sharded_grads
from ddp.distributed.reduce_op import ReduceOp
from ddp.optim.optimizer import Optimizer
from ddp.tensor import Tensor


class _GroupView(MutableMapping):
    """A user-facing param group: the real ``params``, every other key read from and written
    to the wrapped optimizer's group (so an lr scheduler setting ``group["lr"]`` just works)."""

    def __init__(self, params: list[Tensor], inner: dict):
        self._params = params
        self._inner = inner

    def __getitem__(self, key: str) -> Any:
        return self._params if key == "params" else self._inner[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if key == "params":
            raise KeyError("ZeroRedundancyOptimizer: the parameters of a group are fixed")
        self._inner[key] = value

    def __delitem__(self, key: str) -> None:
        del self._inner[key]

    def __iter__(self) -> Iterator[str]:
        yield "params"
        yield from (k for k in self._inner if k != "params")

    def __len__(self) -> int:
        return len(self._inner)

    def __repr__(self) -> str:
        return repr(dict(self))


class ZeroRedundancyOptimizer(Optimizer, Joinable):
    """Shard ``optimizer_class``'s state (stage 1) and the gradients (stage 2) over the ranks.

    Training code is unchanged: ``loss.backward(); opt.step(); opt.zero_grad()``.

    Args:
        params: tensors or param-group dicts, as for any optimizer. Every rank must pass the
            same shapes and dtypes in the same order (verified at construction).
        optimizer_class: e.g. ``ddp.optim.AdamW``; built on this rank's shard parameters with
            the group hyperparameters and ``defaults``.
        process_group: the ranks to shard over (default: the default group).
        stage: 1 (shard optimizer state; keep a full-size gradient buffer) or 2 (also shard
            gradients). Both average the gradients during backward by bucketed reduce-scatters
            (taking gradient sync over from DDP, or on a plain model); ``p.grad`` is None
            afterwards. Gradients assigned by hand are taken as already averaged.
        bucket_cap_mb: largest reduce-scatter bucket in MiB (buckets may split parameters).
        first_bucket_cap_mb: the first (last-layer) bucket, so communication starts early.
        reduce_dtype: reduce-scatter floating gradients in this dtype (``ddp.float16`` or
            ``ddp.bfloat16``: half the bytes), as FSDP2's ``MixedPrecisionPolicy.reduce_dtype``;
            the averages arrive in the parameters' dtype and the optimizer steps on them.
            None (default): the gradients' own dtype.
        defaults: hyperparameters for ``optimizer_class`` (``lr=...``).

    A parameter without a gradient in a step counts as a zero gradient (its weight decay and
    momentum still apply), since its elements share a flat shard with the others.

    Raises:
        ValueError: ``stage`` is not 1 or 2, or the ranks' parameters differ (on every rank).
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], optimizer_class: type,
                 process_group=None, stage: int = 1, bucket_cap_mb: float = 4.0,
                 first_bucket_cap_mb: float = 1.0, reduce_dtype=None, **defaults: Any):
        if stage not in (1, 2):
            raise ValueError(f"ZeroRedundancyOptimizer: stage must be 1 or 2, got {stage!r}")
        reduce_dtype = _floating_dtype(reduce_dtype)
        if not callable(optimizer_class):
            raise TypeError(
                "ZeroRedundancyOptimizer: optimizer_class must be an optimizer class such as "
                f"ddp.optim.SGD, got {type(optimizer_class).__name__} {optimizer_class!r}"
            )
        super().__init__(params, dict(defaults))
        self.stage = stage
        self.reduce_dtype = reduce_dtype
        self.optimizer_class = optimizer_class
        user_groups, self.param_groups = self.param_groups, []
        self._params = [p for g in user_groups for p in g["params"]]
        pg = resolve_group(process_group)
        self._join_group = pg  # Join's counting runs on the user's group, beside DDP's
        self.rank, self.world = pg.rank(), pg.size()
        if bucket_cap_mb <= 0 or first_bucket_cap_mb <= 0:
            raise ValueError(f"Invalid bucket caps: bucket_cap_mb={bucket_cap_mb}, "
                             f"first_bucket_cap_mb={first_bucket_cap_mb} (must be positive)")
        itemsize = max((p.array.itemsize for p in self._params), default=4)
        self.layout = FlatLayout.of_groups(
            user_groups, None, self.world, max(1, int(bucket_cap_mb * 2**20) // itemsize),
            max(1, int(min(first_bucket_cap_mb, bucket_cap_mb) * 2**20) // itemsize))
        # A private channel: never interleaves with the user's collectives. Checked once here,
        # then the per-collective consensus check is skipped (the order is fixed by the layout).
        self.process_group = pg.dup(description=f"ZeroRedundancyOptimizer stage={stage} "
                                                f"{optimizer_class.__name__}: "
                                                f"{self.layout.describe()}")

        self.flat_params: dict = {}
        for d, buf in self.layout.buffers.items():
            first = self._params[buf.entries[0].index].array
            self.flat_params[d] = get_array_module(first).zeros(buf.padded, dtype=first.dtype)
        self._views = []
        for e in self.layout.entries:
            view = self.flat_params[e.dtype][e.offset:e.stop].reshape(e.shape)
            view[...] = self._params[e.index].array
            self._params[e.index].array = view
            self._views.append(view)

        self.shard_params = self._make_shard_params()
        inner_groups = []
        for g, group in enumerate(user_groups):
            inner = {k: v for k, v in group.items() if k != "params"}
            inner["params"] = [sp.tensor for sp in self.shard_params if sp.group == g]
            inner_groups.append(inner)
        self.optim = optimizer_class(inner_groups, **defaults)
        self.param_groups = [_GroupView(g["params"], inner)
                             for g, inner in zip(user_groups, self.optim.param_groups,
                                                 strict=True)]
        self.defaults = self.optim.defaults
        self.state = self.optim.state
        self.grads = sharded_grads(stage, self._params, self.layout, self.flat_params,
                                   self.rank, self.world,
                                   None if reduce_dtype is None else reduce_dtype.np_dtype)
        self.sync = GradSyncScheduler(self._params, [e.name for e in self.layout.entries],
                                      self.grads, self.process_group, every_backward=True,
                                      exclusive=True)
        self._consolidated: dict | None = None

    # ------------------------------------------------------------------------------- join
    can_lead_join = False  # its iteration's first collective is in backward: Join([model, opt])

    def join_hook(self, **kwargs: Any) -> JoinHook:
        """A joined rank's ZeRO iteration: reduce-scatter zero gradients with the active ranks
        (its shard receives their average), then step its shard and all-gather, as they do."""
        return _ZeROJoinHook(self)

    @property
    def join_device(self):
        return self._params[0].device

    @property
    def join_process_group(self):
        return self._join_group

    def _make_shard_params(self) -> list[ShardParam]:
        shards = []
        for d, buf in self.layout.buffers.items():
            runs = buf.group_ranges()
            g_last, r_lo, _ = runs[-1]
            runs[-1] = (g_last, r_lo, buf.padded)  # padding joins the last group: exactly S
            for lo, hi, pos in buf.owned(self.rank, self.world):
                for g, a, b in runs:
                    a, b = max(a, lo), min(b, hi)
                    if a < b:
                        shards.append(ShardParam(Tensor(self.flat_params[d][a:b]), g, d, a, b,
                                                 pos + a - lo))
        return shards

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "layout" in vars(self):  # built: the base class's __init__ adds the groups first
            raise NotImplementedError(
                "ZeroRedundancyOptimizer: the flat layout is fixed at construction; pass every "
                "param group to the constructor"
            )
        super().add_param_group(param_group)

    # -------------------------------------------------------------------------------- steps
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop (or zero) every gradient: the parameters' ``.grad`` and this rank's slices."""
        self.grads.zero_grad(set_to_none)

    def _readopt(self) -> None:
        # Something (``p.data = ...``) replaced a parameter's array: copy it back into its slot.
        for e, view in zip(self.layout.entries, self._views, strict=True):
            p = self._params[e.index]
            if p.array is not view:
                view[...] = p.array
                p.array = view

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Collective: update this rank's slice, then all-gather every rank's slice.

        Does nothing (and communicates nothing) when no gradient exists since ``zero_grad``.
        """
        loss = self._run_closure(closure)
        self._readopt()
        self.grads.absorb_manual_grads()
        if not self.grads.has_grads:
            return loss
        comm = self.sync.comm
        try:
            # Bucket by bucket, in backward's order: bucket k is all-gathered on the
            # communication thread while bucket k + 1 is stepped here.
            for shard_params, bucket in self._step_order():
                for sp in shard_params:
                    sp.tensor.grad = Tensor(self.grads.shard_grad(sp.dtype, sp.lo, sp.hi,
                                                                  sp.pos))
                self.optim.step()
                for sp in shard_params:
                    sp.tensor.grad = None
                if self.world > 1:
                    comm.submit("all-gather", partial(self._allgather_bucket, *bucket))
        finally:
            for sp in self.shard_params:
                sp.tensor.grad = None
            comm.wait()
        return loss

    def _step_order(self) -> list:
        """``(shard params, (dtype, lo, hi, plo, phi))`` per bucket, in launch order."""
        order = getattr(self, "_order", None)
        if order is None:
            order = []
            for b in self.grads.buckets:
                sps = [sp for sp in self.shard_params
                       if sp.dtype == b.dtype and b.plo <= sp.lo < b.phi]
                order.append((sps, (b.dtype, b.lo, b.hi, b.plo, b.phi)))
            self._order = order
        return order

    def _allgather_bucket(self, d: str, lo: int, hi: int, plo: int, phi: int) -> None:
        flat = self.flat_params[d]
        self.process_group.allgather(flat[lo:hi], flat[plo:phi].copy())  # MPI forbids aliasing

    def gather_params(self) -> None:
        """Collective: refresh every rank's full parameters from their owners' pieces (after
        installing state or parameters into this rank's shard only, e.g. a checkpoint load)."""
        if self.world == 1:
            return
        for _, bucket in self._step_order():
            self._allgather_bucket(*bucket)

    # ------------------------------------------------------------------------- global checks
    def clip_grad_norm_(self, max_norm: float, norm_type: float = 2.0,
                        error_if_nonfinite: bool = False) -> Tensor:
        """Collective: clip by the GLOBAL gradient norm and return it (as a 0-d tensor).

        Each rank takes the norm of its own slice only (replicated stage-1 gradients are thus
        counted once) and one all-reduce combines them; equals ``nn.utils.clip_grad_norm_``
        over the full, averaged gradients. Scales by ``max_norm / (norm + 1e-6)`` when below 1.
        """
        max_norm, norm_type = float(max_norm), float(norm_type)
        self.grads.absorb_manual_grads()
        slices = self.grads.owned_arrays() if self.grads.has_grads else []
        dtype = next(iter(self.flat_params.values())).dtype
        local = np.zeros(1, dtype=np.float64)
        for g in slices:
            if norm_type == math.inf:
                local[0] = max(local[0], float(abs(g).max()) if g.size else 0.0)
            elif norm_type == 2.0:
                local[0] += float(g.dot(g))
            else:
                local[0] += float((abs(g.astype(np.float64)) ** norm_type).sum())
        if norm_type == math.inf:
            self.process_group.allreduce(local, ReduceOp.MAX)
            total = local[0]
        else:
            self.process_group.allreduce(local, ReduceOp.SUM)
            total = local[0] ** (1.0 / norm_type)
        total = np.asarray(total, dtype=dtype)
        if error_if_nonfinite and not np.isfinite(total):
            raise RuntimeError(
                f"The total norm of order {norm_type} for gradients is non-finite, so it cannot "
                "be clipped. To disable this error and scale the gradients by the non-finite "
                "norm anyway, set `error_if_nonfinite=False`"
            )
        coef = max_norm / (float(total) + 1e-6)
        if coef < 1.0 and slices:
            self.grads.scale_(coef)
        return Tensor(total)

    def unscale_grads_(self, inv_scale: float, census: NonfiniteCensus | None = None) -> bool:
        """Collective: multiply this rank's averaged gradient shard by ``inv_scale``
        (``GradScaler.unscale_``); True on every rank when any rank's shard holds inf/NaN.
        ``census``: see :meth:`has_nonfinite_grad`."""
        self.grads.absorb_manual_grads()
        if self.grads.has_grads:
            self.grads.scale_(inv_scale)
        return self.has_nonfinite_grad(census)

    def has_nonfinite_grad(self, census: NonfiniteCensus | None = None) -> bool:
        """Collective: True on every rank when any rank's gradient slice holds inf or nan.

        One all-reduce of a ``NonfiniteCensus`` (``ddp/distributed/nonfinite.py``): each rank
        names the first parameter whose owned slice is non-finite. Without ``census`` (a direct
        call) a hit is logged as one line on rank 0 (logger ``ddp.nonfinite``); with one (the
        caller's, e.g. ``GradScaler``, which may have marked this rank's local gradients
        already) it is filled and reduced here (re-laid for this optimizer's group) and the
        caller reports.
        """
        self.grads.absorb_manual_grads()
        own = census is None
        if own:
            census = NonfiniteCensus(self.rank, self.world)
        census.regroup(self.rank, self.world)  # the caller's may be of the default group
        if self.grads.has_grads:
            census.mark(self._first_nonfinite_param(), None, REDUCED)
        census.allreduce(self.process_group)
        if own and census.found():
            label = param_label(self.param_groups, {})
            report(self.rank, f"ZeroRedundancyOptimizer: non-finite gradient, "
                              f"{describe(census, label)}")
        return census.found()

    def _first_nonfinite_param(self) -> int | None:
        """Index (in ``param_groups`` order) of the first parameter whose slice this rank owns
        holds inf/NaN; the search runs only when a slice is non-finite."""
        for sp in self.shard_params:
            g = self.grads.shard_grad(sp.dtype, sp.lo, sp.hi, sp.pos)
            xp = get_array_module(g)
            bad = ~xp.isfinite(g)
            if bool(bad.any()):
                offset = sp.lo + int(xp.argmax(bad))
                for e in self.layout.entries:
                    if e.dtype == sp.dtype and e.offset <= offset < e.stop:
                        return e.index
        return None

    # ---------------------------------------------------------------------------- memory
    def memory_bytes(self) -> dict[str, int]:
        """Bytes this rank holds now: ``params`` (flat buffers), ``grads`` (stage 1: the full
        flat buffer, stage 2: the shard), ``state``, and ``comm`` (reduce-scatter scratch and,
        stage 2, the pool of bucket staging buffers, reused across steps)."""
        state = sum(v.array.nbytes for s in self.optim.state.values() for v in s.values()
                    if isinstance(v, Tensor))
        return {"params": sum(a.nbytes for a in self.flat_params.values()),
                "grads": self.grads.nbytes_held(), "state": state,
                "comm": self.grads.comm_bytes()}

    # ------------------------------------------------------------------------ state dicts
    def local_state(self) -> shard_state.LocalState:
        """This rank's optimizer state as slices of flat state buffers (no communication)."""
        shard = {d: b.shard for d, b in self.layout.buffers.items()}
        return shard_state.local_state(self.shard_params, self.optim.state, shard)

    def load_local_state(self, read_slice, group_keys: dict, scalars: dict) -> None:
        """Install state from slices; see ``shard_state.install_state`` (no communication)."""
        shard_state.install_state(self.shard_params, self.optim.state, read_slice, group_keys,
                                  scalars)

    def consolidate_state_dict(self, to: int = 0) -> None:
        """Collective: assemble the full, torch-layout state on rank ``to``.

        Afterwards ``state_dict()`` on rank ``to`` returns what ``optimizer_class`` over the
        unsharded parameters would return. (Every rank transiently holds one full state array
        at a time: the assembly is an all-gather per state key and dtype.)
        """
        local = self.local_state()
        meta = ({k: str(a.dtype) for k, a in local.slices.items()}, local.group_keys,
                local.scalars)
        metas = self.process_group.allgather_object(meta)
        dtypes, group_keys, scalars = shard_state.merge_meta(metas)
        full: dict = {}
        for (d, key), sdtype in sorted(dtypes.items()):
            buf = self.layout.buffers[d]
            xp = get_array_module(self.flat_params[d])
            mine = local.slices.get((d, key))
            if mine is None:
                mine = xp.zeros(buf.shard, dtype=sdtype)
            out = xp.empty(buf.padded, dtype=sdtype)
            self.process_group.allgather(out, mine)
            if self.rank == to:  # rank-major shards -> global order
                ordered = xp.empty_like(out)
                for r in range(self.world):
                    for lo, hi, pos in buf.owned(r, self.world):
                        ordered[lo:hi] = out[r * buf.shard + pos:r * buf.shard + pos + hi - lo]
                full[(d, key)] = ordered
        if self.rank != to:
            self._consolidated = None
            return
        state = {}
        for e in self.layout.entries:
            entry = {k: (Tensor(np.array(v)) if isinstance(v, np.ndarray) else v)
                     for k, v in scalars.get(e.group, {}).items()}
            for key in group_keys.get(e.group, []):
                entry[key] = Tensor(full[(e.dtype, key)][e.offset:e.stop].reshape(e.shape).copy())
            if entry:
                state[e.index] = entry
        self._consolidated = {"state": state, "param_groups": self._packed_groups()}

    def _packed_groups(self) -> list[dict]:
        packed, index = [], 0
        for group in self.param_groups:
            g = {k: v for k, v in group.items() if k != "params"}
            g["params"] = list(range(index, index + len(group["params"])))
            index += len(group["params"])
            packed.append(g)
        return packed

    def state_dict(self) -> dict[str, Any]:
        """The full torch-layout state; only on the rank a ``consolidate_state_dict`` targeted.

        Raises:
            RuntimeError: ``consolidate_state_dict(to=this rank)`` was not called.
        """
        if self._consolidated is None:
            raise RuntimeError(
                f"Optimizer state has not been consolidated on rank {self.rank}. Please call "
                "`consolidate_state_dict(to=...)` on all ranks beforehand."
            )
        return self._consolidated

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a full torch-layout state (from ``state_dict()`` here or from the unsharded
        optimizer); each rank keeps the slice it owns. Not a collective.

        Raises:
            ValueError: the group structure differs from this optimizer's.
        """
        saved_groups = state_dict["param_groups"]
        sizes = [len(g["params"]) for g in saved_groups]
        if sizes != [len(g["params"]) for g in self.param_groups]:
            raise ValueError(
                f"loaded state dict has groups of sizes {sizes}, this optimizer has "
                f"{[len(g['params']) for g in self.param_groups]}"
            )
        saved_ids = [i for g in saved_groups for i in g["params"]]
        per_entry = [state_dict["state"].get(i, {}) for i in saved_ids]
        group_keys: dict = {}
        scalars: dict = {}
        for e, entry in zip(self.layout.entries, per_entry, strict=True):
            for key, value in entry.items():
                if isinstance(value, Tensor) and tuple(value.shape) == e.shape and e.shape:
                    keys = group_keys.setdefault(e.group, [])
                    if key not in keys:
                        keys.append(key)
                else:
                    array = value.array if isinstance(value, Tensor) else None
                    scalars.setdefault(e.group, {}).setdefault(
                        key, np.array(shard_state._to_host(array)) if array is not None else value)

        def read_slice(d, key, lo, hi, like):
            xp = get_array_module(like)
            out = xp.zeros(hi - lo, dtype=like.dtype)
            for e, entry in zip(self.layout.entries, per_entry, strict=True):
                a, b = max(lo, e.offset), min(hi, e.stop)
                if e.dtype == d and a < b and key in entry:
                    src = entry[key].array.reshape(-1)[a - e.offset:b - e.offset]
                    out[a - lo:b - lo] = src
            return out

        self.load_local_state(read_slice, group_keys, scalars)
        for group, saved in zip(self.param_groups, saved_groups, strict=True):
            for k, v in saved.items():
                if k != "params":
                    group[k] = v


class _ZeROJoinHook(JoinHook):
    def __init__(self, optimizer: ZeroRedundancyOptimizer):
        self.optimizer = optimizer

    def main_hook(self) -> None:
        opt = self.optimizer
        opt.zero_grad()
        opt.sync.shadow()
        opt.step()


def _floating_dtype(value):
    """``reduce_dtype`` as a ddp floating dtype (None stays None); TypeError otherwise."""
    if value is None:
        return None
    if not isinstance(value, dtypes.dtype) or not value.is_floating_point:
        raise TypeError(f"ZeroRedundancyOptimizer: reduce_dtype must be a floating ddp dtype "
                        f"(ddp.float16, ddp.bfloat16, ddp.float32), got {value!r}")
    return value
