"""Fully sharded (``fully_shard``) cases shared by the threads tests (test_fsdp.py) and the MPI
tests (test_fsdp_mpi.py).

Each ``case_*`` runs on every rank of the default group and asserts on its own rank. Every rank
builds the same weights from one seed (what a broadcast of rank 0's weights gives) and computes
the single-process reference on the whole global batch itself. Layer sizes (3 -> 7 -> 5 -> 2,
an embedding of 11 rows) are divisible by no world size from 2 to 4, so some ranks hold short
or empty shards.

Tolerances: the reference sums the batch's gradients in one matmul, the sharded run sums per
rank and then averages over ranks, so float32 results differ by rounding (a few ulps per step,
amplified by Adam's division by sqrt(v)); rtol 1e-4 / atol 1e-5 after 4 steps covers that with
margin, while a wrong shard, a missing rank or a doubled gradient is off by > 1e-2.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

import ddp
import ddp.distributed as dist
from ddp import nn
from ddp.distributed.fsdp import (
    FSDPModule,
    MixedPrecisionPolicy,
    ShardedParameter,
    fully_shard,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import models  # noqa: E402 - benchmarks/models.py: the GPT, written once for both libraries

PER_RANK = 4
RTOL, ATOL = 1e-4, 1e-5


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(3, 7)
        self.l2 = nn.Linear(7, 5)
        self.l3 = nn.Linear(5, 2)

    def forward(self, x):
        return self.l3(self.l2(self.l1(x).tanh()).tanh())


class Reused(nn.Module):
    """A unit called twice in one forward, a tied embedding/head in the root, a spare unit that
    forward never calls."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.block = nn.Linear(6, 6)
        self.spare = nn.Linear(6, 6)
        self.head = nn.Linear(6, 11, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, idx):
        h = self.emb(idx)
        h = self.block(self.block(h).tanh()).tanh()
        return self.head(h).mean(1)


def make(kind: str):
    ddp.manual_seed(0)
    if kind == "mlp":
        return MLP()
    if kind == "reused":
        return Reused()
    return models.gpt(ddp, vocab=11, context=5, width=6, heads=2, layers=2)


def shard(model, kind: str, **kw):
    units = {"mlp": [model.l1, model.l2, model.l3] if kind == "mlp" else [],
             "reused": [model.block, model.spare] if kind == "reused" else [],
             "gpt": list(model.blocks) if kind == "gpt" else []}[kind]
    for unit in units:
        fully_shard(unit, **kw)
    return fully_shard(model, **kw)


def batch(kind: str, step: int, rows: int, lo: int = 0, hi: int | None = None):
    rng = np.random.default_rng(100 + step)
    if kind == "mlp":
        x = rng.standard_normal((rows, 3)).astype(np.float32)
        y = rng.standard_normal((rows, 2)).astype(np.float32)
        return ddp.tensor(x[lo:hi]), ddp.tensor(y[lo:hi])
    idx = rng.integers(0, 11, size=(rows, 5))
    if kind == "reused":
        y = rng.standard_normal((rows, 11)).astype(np.float32)
        return ddp.tensor(idx[lo:hi]), ddp.tensor(y[lo:hi])
    return ddp.tensor(idx[lo:hi]), ddp.tensor(rng.integers(0, 11, size=(rows, 5))[lo:hi])


def loss_of(kind: str, model, step: int, rows: int, lo: int = 0, hi: int | None = None):
    x, y = batch(kind, step, rows, lo, hi)
    out = model(x)
    if kind == "gpt":
        return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    return ((out - y) ** 2).mean()


OPTIMIZERS = {
    "sgd": (ddp.optim.SGD, {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01}, 1),
    "adamw": (ddp.optim.AdamW, {"lr": 0.02, "weight_decay": 0.1}, 2),
}


def host(t) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def train(kind: str, name: str, steps: int, sharded: bool, accumulate: int = 1,
          clip: float | None = None, **shard_kw):
    """Train ``steps`` steps; returns (full parameters, norms before clipping, model, opt)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = PER_RANK * world
    model = make(kind)
    if sharded:
        shard(model, kind, **shard_kw)
    cls, kw, _ = OPTIMIZERS[name]
    opt = cls(model.parameters(), **kw)
    sched = ddp.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    norms = []
    for step in range(steps):
        opt.zero_grad()
        if sharded:
            lo, n = rank * PER_RANK, PER_RANK
        else:
            lo, n = 0, rows
        part = n // accumulate
        for k in range(accumulate):
            if sharded:
                model.set_requires_gradient_sync(k == accumulate - 1)
            (loss_of(kind, model, step, rows, lo + k * part, lo + (k + 1) * part)
             / accumulate).backward()
        if clip is not None:
            norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), clip)))
        opt.step()
        sched.step()
    params = [host(p.full_tensor()) if isinstance(p, ShardedParameter) else host(p)
              for p in model.parameters()]
    return params, norms, model, opt


def case_matches_unsharded(kind: str, name: str, steps: int = 4, accumulate: int = 1,
                           clip: float | None = None, **shard_kw) -> None:
    """Fully sharded on a 1/N batch each == one process on the whole batch."""
    mine, my_norms, model, _ = train(kind, name, steps, True, accumulate, clip, **shard_kw)
    ref, ref_norms, _, _ = train(kind, name, steps, False, accumulate, clip)
    assert len(mine) == len(ref)
    for a, b in zip(mine, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(my_norms, ref_norms, rtol=RTOL)
    assert isinstance(model, FSDPModule) and type(model).__name__.startswith("FSDP")
    assert all(isinstance(p, ShardedParameter) for p in model.parameters())
    assert model.gathered_nbytes(recurse=True) == 0, "everything is resharded after backward"


def case_state_is_the_local_shard(name: str) -> None:
    """Optimizer state: exactly the local shards' bytes, per state tensor (no padding)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    _, _, model, opt = train("mlp", name, 1, True)
    _, _, n_state = OPTIMIZERS[name]
    expected = 0
    for p in model.parameters():
        start, stop = p.shard_spec.row_start, p.shard_spec.row_stop
        shape = p.shard_spec.global_shape
        assert tuple(p.shape) == shape and p.numel() == math.prod(shape)
        chunk = -(-shape[0] // world)
        assert (start, stop) == (min(rank * chunk, shape[0]), min((rank + 1) * chunk, shape[0]))
        assert tuple(p.to_local().shape) == (stop - start,) + shape[1:]
        assert tuple(p.grad.shape) == (stop - start,) + shape[1:]
        expected += (stop - start) * math.prod(shape[1:]) * 4 * n_state
    held = sum(v.array.nbytes for state in opt.state.values() for k, v in state.items()
               if k != "step" and isinstance(v, ddp.Tensor))
    assert held == expected
    total = 7 * 3 + 7 + 5 * 7 + 5 + 2 * 5 + 2
    every = [None] * world
    dist.all_gather_object(every, held)
    assert sum(every) == total * 4 * n_state, "the shards cover every element exactly once"


def case_full_tensor() -> None:
    """``full_tensor()`` equals the unsharded parameter; shapes are global."""
    reference = [host(p) for p in make("gpt").parameters()]
    model = shard(make("gpt"), "gpt")
    for p, ref in zip(model.parameters(), reference, strict=True):
        assert tuple(p.shape) == ref.shape and p.size() == ref.shape
        np.testing.assert_array_equal(host(p.full_tensor()), ref)


def case_reshard_frees() -> None:
    """Non-root units free their gathered storage after forward (reshard_after_forward) and
    keep it with set_reshard_after_forward(False); every unit is resharded after backward."""
    rows = PER_RANK * dist.get_world_size()
    model = shard(make("mlp"), "mlp")
    seen = {}
    hook = model.l3.register_forward_hook(
        lambda m, a, o: seen.update(l1=model.l1.gathered_nbytes(), l3=m.gathered_nbytes(),
                                    root=model.gathered_nbytes()),
        prepend=True)  # before fully_shard's own forward hook, which reshards
    loss = loss_of("mlp", model, 0, rows, 0, PER_RANK)
    assert seen["l1"] == 0 and seen["l3"] == (5 * 2 + 2) * 4 and seen["root"] == 0
    assert model.l3.gathered_nbytes() == 0
    loss.backward()
    model.set_reshard_after_forward(False)
    loss = loss_of("mlp", model, 0, rows, 0, PER_RANK)
    assert seen["l1"] == (7 * 3 + 7) * 4
    loss.backward()
    assert model.gathered_nbytes(recurse=True) == 0
    hook.remove()
    model.unshard()  # one unit only (as torch): the root manages no parameter here
    assert all(isinstance(p, ShardedParameter) for p in model.parameters())
    model.l1.unshard()
    assert [type(p) for p in model.l1.parameters()] == [nn.Parameter, nn.Parameter]
    assert tuple(model.l1.weight.array.shape) == (7, 3)
    assert model.gathered_nbytes(recurse=True) == (7 * 3 + 7) * 4
    model.l1.reshard()
    assert all(isinstance(p, ShardedParameter) for p in model.parameters())


def case_unused_unit_keeps_grad_none() -> None:
    """A unit forward never calls keeps ``.grad`` None (torch FSDP2 skips it), on every rank."""
    rows = PER_RANK * dist.get_world_size()
    model = shard(make("reused"), "reused")
    loss_of("reused", model, 0, rows, dist.get_rank() * PER_RANK,
            (dist.get_rank() + 1) * PER_RANK).backward()
    assert model.spare.weight.grad is None and model.spare.bias.grad is None
    assert model.block.weight.grad is not None and model.emb.weight.grad is not None


def case_mixed_precision(reduce_dtype, param_dtype=ddp.float16) -> None:
    """16-bit compute (and reduction when asked): the unsharded parameters the layers see are
    ``param_dtype``, the sharded ones and the optimizer stay float32, and training follows the
    float32 reference to 16-bit accuracy (rtol 2e-2: five bfloat16 roundings, 40 of float16)."""
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype,
                                  output_dtype=ddp.float32)
    seen = []
    mine, _, model, _ = train("mlp", "sgd", 3, True, mp_policy=policy)
    ref, _, _, _ = train("mlp", "sgd", 3, False)
    rows = PER_RANK * dist.get_world_size()
    model.l2.register_forward_hook(lambda m, a, o: seen.append((m.weight.dtype, o.dtype)),
                                   prepend=True)  # before the unit casts to output_dtype
    out = model(batch("mlp", 0, rows, 0, PER_RANK)[0])
    assert seen == [(param_dtype, param_dtype)] and out.dtype == ddp.float32
    assert all(p.dtype == ddp.float32 for p in model.parameters())
    for a, b in zip(mine, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-2, atol=5e-3)


def case_misuse() -> None:
    model = shard(make("mlp"), "mlp")
    try:
        fully_shard(model)
    except ValueError as err:
        assert "already been applied" in str(err)
    else:
        raise AssertionError("fully_shard twice must raise")
    plain = make("mlp")
    fully_shard(plain)
    try:
        fully_shard(plain.l1)
    except ValueError as err:
        assert "already managed" in str(err) and "bottom-up" in str(err)
    else:
        raise AssertionError("fully_shard below a unit must raise")
    tied = make("reused")
    fully_shard(tied.emb)  # the head shares emb.weight but lies outside the unit
    try:
        fully_shard(tied)
    except ValueError as err:
        assert "head.weight" in str(err) and "within one unit" in str(err)
    else:
        raise AssertionError("a parameter tied across units must raise")
    mixed = shard(make("mlp"), "mlp")
    mixed.l1.set_requires_gradient_sync(False, recurse=False)
    try:
        mixed(batch("mlp", 0, PER_RANK)[0])
    except NotImplementedError as err:
        assert "set_requires_gradient_sync" in str(err)
    else:
        raise AssertionError("per-unit gradient sync settings must raise")
    for bad, error in (({"mesh": "world"}, TypeError), ({"reshard_after_forward": 2},
                                                         NotImplementedError)):
        try:
            fully_shard(make("mlp"), **bad)
        except error:
            pass
        else:
            raise AssertionError(f"fully_shard({bad}) must raise {error.__name__}")
