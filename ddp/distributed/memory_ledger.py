"""``memory_report``: the bytes each rank holds, by category, beside the ZeRO formulas.

Every number is measured from the arrays ddp holds (``nbytes``), found through public seams:
the model's parameters and ``.grad``, the optimizer's ``state``,
``DistributedDataParallel.memory_bytes()`` (bucket buffers) and
``ZeroRedundancyOptimizer.memory_bytes()`` (flat buffers, gradient shards, state, scratch).
Each category is set beside the prediction of the ZeRO paper's formulas evaluated for this
model's real sizes and ddp's real layout (below), and flagged when the two differ by more
than 5 %.

The formulas, Ψ = trained parameter elements, b = bytes per parameter element (4 for float32),
k = optimizer state elements per parameter element (SGD without momentum 0, SGD with momentum
1, Adam/AdamW 2, with amsgrad 3, RMSprop 1 + momentum + centered, Adagrad 1, Adadelta 2), the
state held in the parameters' dtype as ddp's optimizers do:

=============  ==========  ==========  ===========  =====================
strategy       parameters  gradients   state        fp32 Adam (b=4, k=2)
=============  ==========  ==========  ===========  =====================
plain / DDP    bΨ          bΨ          kbΨ          16Ψ
ZeRO stage 1   bP          bP          kbP/N        8Ψ + 8Ψ/N
ZeRO stage 2   bP          bP/N        kbP/N        4Ψ + 12Ψ/N
fully sharded  bΨ_r        bΨ_r        kbΨ_r        16Ψ/N
=============  ==========  ==========  ===========  =====================

P is ZeRO's padded length: per dtype, Ψ rounded up to a multiple of N (one flat buffer cut into
N equal shards; the padding's state is real memory too). Communication buffers: DDP's buckets
hold bΨ (0 beyond the gradients with ``gradient_as_bucket_view``, whose ``.grad`` *are* the
buckets); ZeRO's reduce-scatter scratch and staging pool depend on the buckets in flight and
have no formula. Fully sharded (``fully_shard``): Ψ_r is the elements of rank r's dim-0 rows
(``torch.chunk``: ``ceil(rows / N)`` rows per rank, the last ranks fewer), about Ψ/N; the
gathered parameters' peak is predicted as the root unit's whole parameters plus the largest
two neighbouring units' (``reshard_after_forward=True``: the running unit and the next one,
whose all-gather is prefetched, beside the root, which stays gathered through forward), and
measured by :class:`GatheredPeak` at the units' forward hooks, where the prefetched unit
counts only if its all-gather already finished; so the prediction is the range from root +
largest unit to root + largest pair (backward's re-gathers are not sampled), in the sharded
parameters' dtype (a
``MixedPrecisionPolicy`` with another ``param_dtype`` gathers smaller and is flagged). The
reduce-scatter staging of ``fully_shard`` lives within backward (``FSDPModule.comm_nbytes``): 0.
The paper's mixed-precision variants (fp16 parameters and gradients plus an
fp32 master copy and Adam state, K = 12: DDP 2Ψ + 2Ψ + 12Ψ, stage 1 4Ψ + 12Ψ/N, stage 2
2Ψ + 14Ψ/N, stage 3 16Ψ/N) apply only where such a master copy exists; ddp's autocast keeps
float32 parameters, so the float32 rows above apply to it, and a model cast to bfloat16 whole
gets b = 2 with its state in bfloat16.

Activations: ddp's graph nodes keep the arrays their backward needs as op-private attributes
and there are no saved-tensor hooks to count them, so the activations' peak is reported as
"not measured" rather than estimated.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ddp.distributed import api
from ddp.distributed.fsdp import ShardedParameter
from ddp.distributed.gathered_peak import GatheredPeak, fsdp_root, predicted_rows, unit_bytes
from ddp.distributed.local_backend import LocalProcessGroup
from ddp.distributed.memory_table import format_table, k_label, mib
from ddp.distributed.optim.zero_redundancy_optimizer import ZeroRedundancyOptimizer
from ddp.nn.parallel import DistributedDataParallel
from ddp.optim import SGD, Adadelta, Adagrad, Adam, RMSprop
from ddp.tensor import Tensor

TOLERANCE = 0.05  # a category whose measurement differs from its prediction by more is flagged


@dataclass
class Category:
    """One line of the ledger: bytes measured on this rank beside the formula's prediction.

    ``measured`` is None when it cannot be measured; ``predicted`` is None when no formula
    applies. ``formula`` is the formula in Ψ/N (empty without one). ``predicted_min``, when
    set, makes the prediction a range ``[predicted_min, predicted]`` (a sampled peak that may
    or may not see a concurrent all-gather).
    """

    name: str
    measured: int | None
    predicted: int | None
    formula: str = ""
    note: str = ""
    predicted_min: int | None = None

    @property
    def flagged(self) -> bool:
        """The measurement differs from the prediction (or leaves its range) by more than 5 %
        of the prediction."""
        if self.measured is None or self.predicted is None:
            return False
        lo = self.predicted if self.predicted_min is None else self.predicted_min
        slack = TOLERANCE * max(self.predicted, 1)
        return self.measured < lo - slack or self.measured > self.predicted + slack


@dataclass
class MemoryReport:
    """This rank's ledger; ``ranks`` holds every rank's ``to_dict()`` (rank order) on every
    rank, since the report is gathered with a collective."""

    rank: int
    world_size: int
    strategy: str  # "plain", "ddp", "zero-1", "zero-2", "fully-sharded"
    psi: int  # trained parameter elements
    dtype: str
    optimizer: str | None
    state_per_param: float | None  # k
    categories: list[Category]
    ranks: list[dict] = field(default_factory=list)

    @property
    def flags(self) -> list[str]:
        """This rank's categories that differ from their prediction by more than 5 %."""
        return [c.name for c in self.categories if c.flagged]

    @property
    def total(self) -> int:
        """Measured bytes of every measured category."""
        return sum(c.measured for c in self.categories if c.measured is not None)

    def category(self, name: str) -> Category:
        for c in self.categories:
            if c.name == name:
                return c
        raise KeyError(f"memory report has no category {name!r} "
                       f"(it has {[c.name for c in self.categories]})")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for c, d in zip(self.categories, out["categories"], strict=True):
            d["flagged"] = c.flagged
        out["flags"] = self.flags
        out["total"] = self.total
        return out

    def __str__(self) -> str:
        return format_table(self.to_dict(), self.ranks or [self.to_dict()])

    def summary(self) -> str:
        """One line: this rank's categories that have a formula, their total in Ψ units beside
        the formulas' total (the rest apart), and the flags of every rank."""
        unit = max(self.psi, 1)
        both = [c for c in self.categories if c.measured is not None and c.predicted is not None
                and c.predicted_min is None]
        rest = [c for c in self.categories if c.measured and c not in both]
        parts = ", ".join(f"{c.name} {mib(c.measured)}" for c in both if c.measured)
        measured = sum(c.measured for c in both) / unit
        predicted = sum(c.predicted for c in both) / unit
        extra = "".join(f", {c.name} {mib(c.measured)}" for c in rest)
        flagged = [f"rank {r['rank']} {name}" for r in self.ranks or [self.to_dict()]
                   for name in r["flags"]]
        return (f"memory per rank ({self.strategy}, N = {self.world_size}, Ψ = {self.psi:,}): "
                f"{parts} = {measured:.2f}Ψ (formula {predicted:.2f}Ψ){extra}; "
                + ("FLAGGED >5 % off: " + ", ".join(flagged) if flagged
                   else "every category within 5 % of its formula"))


def memory_report(model, optimizer=None, *, print_report: bool = True,
                  process_group=None, gathered_peak: GatheredPeak | None = None) -> MemoryReport:
    """Collective: measure the bytes this rank holds, by category, beside the formulas.

    Must be called on all ranks of the group (the ranks' reports are gathered with one
    ``allgather_object``), between steps: right after ``optimizer.step()`` (before
    ``zero_grad``) all three kinds of training memory are live, which is what the formulas
    describe. Rank 0 prints a table with every rank's numbers when ``print_report``.

    Args:
        model: a Module, plain or wrapped in DistributedDataParallel.
        optimizer: a plain optimizer, a ZeroRedundancyOptimizer, or None (no state counted).
        print_report: print the table on rank 0.
        process_group: the group to gather over (default: the DDP model's or the ZeRO
            optimizer's user group, the fully sharded parameters' group, else the default
            group, else a world of one).
        gathered_peak: for a fully sharded model, the :class:`GatheredPeak` that watched a
            step (without it the peak is "not measured").

    Returns:
        This rank's :class:`MemoryReport`, with every rank's numbers in ``ranks``.
    """
    pg = _group(model, optimizer, process_group)
    report = _measure(model, optimizer, pg.rank(), pg.size(), gathered_peak)
    report.ranks = pg.allgather_object(report.to_dict())
    if print_report and pg.rank() == 0:
        print(report, flush=True)
    return report


def _group(model, optimizer, process_group):
    if process_group is not None:
        return api.resolve_group(process_group)
    if isinstance(model, DistributedDataParallel):
        return model.process_group
    if isinstance(optimizer, ZeroRedundancyOptimizer):
        return optimizer.join_process_group
    for p in model.parameters():
        if isinstance(p, ShardedParameter):
            return p.process_group
    return api.get_default_group() if api.is_initialized() else LocalProcessGroup()


# ----------------------------------------------------------------------------- measuring
def _distinct(tensors) -> list[Tensor]:
    seen, out = set(), []
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def state_elements_per_param(optimizer_class: type, group: dict) -> float | None:
    """k: optimizer state elements per parameter element for one param group (None: no
    formula is known for ``optimizer_class``)."""
    if issubclass(optimizer_class, SGD):
        return 1.0 if group.get("momentum", 0) else 0.0
    if issubclass(optimizer_class, Adam):  # AdamW too
        return 3.0 if group.get("amsgrad") else 2.0
    if issubclass(optimizer_class, RMSprop):
        return 1.0 + (group.get("momentum", 0) > 0) + bool(group.get("centered"))
    if issubclass(optimizer_class, Adagrad):
        return 1.0
    if issubclass(optimizer_class, Adadelta):
        return 2.0
    return None


def _state_bytes(state: dict, scalars: bool = False) -> int:
    """Bytes of the per-element state tensors (or, ``scalars``, of the 0-d ones: ``step``)."""
    return sum(int(v.array.nbytes) for s in state.values() for v in s.values()
               if isinstance(v, Tensor) and (v.array.ndim == 0) == scalars)


def _measure(model, optimizer, rank: int, world: int, peak: GatheredPeak | None) -> MemoryReport:
    module = model.module if isinstance(model, DistributedDataParallel) else model
    params = _distinct(p for p in module.parameters() if p.requires_grad)
    psi = sum(int(p.array.size) for p in params)
    itemsize = params[0].array.itemsize if params else 4
    dtype = str(params[0].array.dtype) if params else "float32"
    zero = optimizer if isinstance(optimizer, ZeroRedundancyOptimizer) else None
    opt_class = None if optimizer is None else (
        zero.optimizer_class if zero is not None else type(optimizer))
    ks = [] if optimizer is None else [state_elements_per_param(opt_class, g)
                                       for g in optimizer.param_groups]
    k = None if optimizer is None or any(x is None for x in ks) else (
        ks[0] if len(set(ks)) == 1 else None)
    b = itemsize

    cats: list[Category] = []
    root = fsdp_root(model)
    if root is not None:
        strategy = "fully-sharded"
        psi = sum(math.prod(p.shard_spec.global_shape) if isinstance(p, ShardedParameter)
                  else int(p.array.size) for p in params)
        local = [predicted_rows(p, world, rank) for p in params]
        own = b * sum(local)
        cats.append(Category("parameters", sum(int(p.array.nbytes) for p in params), own,
                             f"{b}Ψ/N", "this rank's dim-0 rows (torch.chunk)"))
        grads = sum(int(p.grad.array.nbytes) for p in params if p.grad is not None)
        cats.append(Category("gradients", grads, own, f"{b}Ψ/N",
                             "" if grads else "no gradients held now"))
        if optimizer is not None:
            state_pred = _state_prediction(optimizer, ks, b, zip(params, local, strict=True))
            cats.append(Category("optimizer state", _state_bytes(optimizer.state), state_pred,
                                 f"{k_label(k * b)}Ψ/N" if k is not None else "",
                                 "" if k is not None else "no formula for this optimizer"))
        cats.append(Category("communication buffers", root.comm_nbytes(), 0, "0",
                             "fully_shard's reduce-scatter staging lives within backward"))
        units = unit_bytes(root)
        others = units[1:]
        pairs = [a + b for a, b in zip(others, others[1:], strict=False)]
        cats.append(Category("gathered parameters (now)", root.gathered_nbytes(recurse=True), 0,
                             "0", "between steps every unit is resharded"))
        cats.append(Category(
            "gathered parameters (peak)", None if peak is None else peak.peak,
            units[0] + max(pairs or others or [0]), "root + largest 2 neighbours",
            ("sampled in forward by GatheredPeak; the prefetched neighbour counts when its "
             "all-gather finished before the sample") if peak is not None
            else "pass gathered_peak=GatheredPeak(model) to measure",
            predicted_min=units[0] + max(others, default=0)))
        cats.append(Category("activations (peak)", None, None))
        return _finish(module, rank, world, strategy, psi, dtype, opt_class, k, cats,
                       optimizer)
    if zero is not None:
        mem = zero.memory_bytes()
        padded = sum(buf.padded for buf in zero.layout.buffers.values())
        shard = padded // world
        stage = zero.stage
        strategy = f"zero-{stage}"
        note = f"P = {padded} padded elements" if padded != psi else ""
        cats.append(Category("parameters", mem["params"], b * padded, f"{b}Ψ", note))
        if stage == 1:
            cats.append(Category("gradients", mem["grads"], b * padded, f"{b}Ψ"))
        else:
            cats.append(Category("gradients", mem["grads"], b * shard, f"{b}Ψ/N"))
        state_pred = None
        if all(x is not None for x in ks):
            state_pred = int(sum(ks[sp.group] * b * (sp.hi - sp.lo)
                                 for sp in zero.shard_params))
        cats.append(Category("optimizer state", _state_bytes(zero.state), state_pred,
                             f"{k_label(k * b)}Ψ/N" if k is not None else "",
                             "" if k is not None else "no formula for this optimizer"))
        comm = mem["comm"]
        if isinstance(model, DistributedDataParallel):
            comm += model.memory_bytes()["comm"]
        cats.append(Category("communication buffers", comm, None, "",
                             "ZeRO scratch and staging: no formula"))
    else:
        strategy = "ddp" if isinstance(model, DistributedDataParallel) else "plain"
        cats.append(Category("parameters", sum(int(p.array.nbytes) for p in params), b * psi,
                             f"{b}Ψ"))
        grads = sum(int(p.grad.array.nbytes) for p in params if p.grad is not None)
        cats.append(Category("gradients", grads, b * psi, f"{b}Ψ",
                             "" if grads else "no gradients held now"))
        if optimizer is not None:
            state_pred = _state_prediction(optimizer, ks, b,
                                           ((p, p.array.size) for p in params))
            cats.append(Category("optimizer state", _state_bytes(optimizer.state), state_pred,
                                 f"{k_label(k * b)}Ψ" if k is not None else "",
                                 "" if k is not None else "no formula for this optimizer"))
        if isinstance(model, DistributedDataParallel):
            mem = model.memory_bytes()
            viewed = mem["grads_in_comm"]
            as_view = model.gradient_as_bucket_view
            cats.append(Category(
                "communication buffers", mem["comm"] - viewed, 0 if as_view else b * psi,
                "0" if as_view else f"{b}Ψ",
                f"DDP buckets; {viewed} bytes of them are the gradients" if viewed
                else "DDP buckets"))
    if optimizer is None:
        cats.append(Category("optimizer state", None, None, "", "no optimizer given"))
    cats.append(Category("gathered parameters (peak)", 0, 0, "0"))  # replicated: none
    cats.append(Category("activations (peak)", None, None))  # see the module docstring
    return _finish(module, rank, world, strategy, psi, dtype, opt_class, k, cats,
                       optimizer)


def _state_prediction(optimizer, ks: list, itemsize: int, elements) -> int | None:
    """Predicted optimizer-state bytes: per param group ``g``, ``ks[g]`` state elements per
    parameter element held here; ``elements`` yields (parameter, elements held here). None when
    some group's optimizer has no formula."""
    if any(k is None for k in ks):
        return None
    held = dict((id(p), n) for p, n in elements)
    return sum(int(ks[g] * itemsize * sum(held.get(id(p), 0) for p in group["params"]))
               for g, group in enumerate(optimizer.param_groups))


def _finish(module, rank, world, strategy, psi, dtype, opt_class, k, cats,
            optimizer=None) -> MemoryReport:
    if optimizer is not None:  # ZeRO's ``state`` is its wrapped optimizer's
        cats.append(Category("optimizer scalars", _state_bytes(optimizer.state, True), None,
                             "", "0-d state (Adam's step): outside the formulas"))
    buffers = sum(int(t.array.nbytes) for t in _distinct(module.buffers()))
    if buffers:
        cats.append(Category("module buffers", buffers, None, "", "running statistics etc."))
    return MemoryReport(rank, world, strategy, psi, dtype,
                        None if opt_class is None else opt_class.__name__, k, cats)


__all__ = ["Category", "GatheredPeak", "MemoryReport", "memory_report", "state_elements_per_param"]
