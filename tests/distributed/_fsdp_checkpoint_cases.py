"""Checkpoints of fully sharded models (``ShardedParameter``s) at other world sizes and kinds.

Shared by the threads tests (test_checkpoint_fsdp.py) and the MPI tests
(test_checkpoint_fsdp_mpi.py). The model is ``_zero_cases.Net`` (parameters of 7, 13 and 5x3
elements: dim-0 rows that no world size from 2 to 4 divides; at 4 ranks the last rank holds no
row of ``w``). A "fsdp" model holds only this rank's dim-0 rows of every parameter, in the
``ShardedParameter`` and ``ShardSpec`` of ``ddp.distributed.fsdp`` that ``fully_shard``
leaves between steps. Every kind trains with the full-batch gradient computed on every rank
(``step``), so any world size performs exactly the single-process arithmetic and resuming is
bit-identical to the uninterrupted run.
"""

from __future__ import annotations

import json
import os

import numpy as np

import ddp
import ddp.distributed as dist
from ddp import nn
from ddp.backend import get_array_module
from ddp.distributed import checkpoint
from ddp.distributed.fsdp import fully_shard
from ddp.distributed.fsdp.shard_layout import ShardSpec, row_range
from ddp.distributed.fsdp.sharded_param import ShardedParameter
from ddp.distributed.optim import ZeroRedundancyOptimizer
from ddp.nn.parallel import DistributedDataParallel as DDP
from ddp.tensor import Tensor

from ._zero_cases import OPTIMIZERS, SMALL, Net, groups_of, loss_of, params_of, shared_tmpdir
from ._zero_cases import train_reference as _train_reference

ROWS = 8


def shard_rows(model: Net, pg) -> Net:
    """Replace every parameter by this rank's dim-0 rows (``torch.chunk``'s rule)."""
    rank, world = pg.rank(), pg.size()
    for name, p in list(model.named_parameters()):
        a, b = row_range(p.shape[0], world, rank)
        model.register_parameter(
            name, ShardedParameter(p.array[a:b].copy(), ShardSpec(tuple(p.shape), a, b), pg))
    return model


def build(kind: str, pg, seed: int):
    """``(model, optimizer, module)`` of ``kind``: plain, ddp, zero or fsdp, on group ``pg``."""
    cls, kw, _ = OPTIMIZERS["adamw"]
    net = Net(seed)
    if kind == "fsdp":
        shard_rows(net, pg)
        return net, cls(groups_of(net), **kw), net
    if kind == "ddp":
        model = DDP(net, process_group=pg)
        return model, cls(groups_of(net), **kw), net
    if kind == "zero":
        return net, ZeroRedundancyOptimizer(groups_of(net), cls, process_group=pg, stage=2,
                                            **SMALL, **kw), net
    return net, cls(groups_of(net), **kw), net


def full_params(module: Net) -> list[np.ndarray]:
    """Host copies of the whole parameters (a collective for sharded ones)."""
    if isinstance(module.a, ShardedParameter):
        return [p.full_tensor().cpu().numpy().copy() for p in module.parameters()]
    return params_of(module)


def step(module: Net, opt, step_index: int) -> None:
    """One step on the full-batch gradient, computed by every rank on a full twin."""
    opt.zero_grad()
    twin = Net(0)
    for mine, value in zip(twin.parameters(), full_params(module), strict=True):
        mine.array = get_array_module(mine.array).asarray(value)  # on the default device
    loss_of(twin, step_index, ROWS).backward()
    for mine, theirs in zip(twin.parameters(), module.parameters(), strict=True):
        g = mine.grad.array
        if isinstance(theirs, ShardedParameter):
            spec = theirs.shard_spec
            g = g[spec.row_start:spec.row_stop].copy()
        theirs.grad = Tensor(g)
    opt.step()


def train_reference(steps: int) -> list[np.ndarray]:
    return _train_reference("adamw", steps, ROWS)


def case_resume(save_kind: str, save_ranks: int, load_kind: str, load_ranks: int,
                with_optimizer: bool = True) -> None:
    """Save after 2 steps as ``save_kind`` on ``save_ranks`` ranks, load as ``load_kind`` on
    ``load_ranks`` ranks (different initial values), train 2 more: bit-identical to 4
    uninterrupted single-process steps. Without the optimizer only the parameters are
    checked (the state starts afresh). Ranks beyond a size sit out."""
    world = dist.get_default_group()
    directory = shared_tmpdir(world)
    save_pg = world.new_subgroup(list(range(save_ranks)))
    if save_pg is not None:
        model, opt, module = build(save_kind, save_pg, 0)
        for s in range(2):
            step(module, opt, s)
        saved = full_params(module)
        checkpoint.save(directory, model=model, optimizer=opt if with_optimizer else None,
                        process_group=save_pg, step=2)
    world.barrier()
    saved = world.broadcast_object(saved if world.rank() == 0 else None, 0)
    load_pg = world.new_subgroup(list(range(load_ranks)))
    if load_pg is not None:
        model, opt, module = build(load_kind, load_pg, 7)
        extra = checkpoint.load(directory, model=model,
                                optimizer=opt if with_optimizer else None,
                                process_group=load_pg)
        assert extra == {"step": 2}
        for mine, ref in zip(full_params(module), saved, strict=True):
            np.testing.assert_array_equal(mine, ref)
        if with_optimizer:
            for s in range(2, 4):
                step(module, opt, s)
            for mine, ref in zip(full_params(module), train_reference(4), strict=True):
                np.testing.assert_array_equal(mine, ref)
    world.barrier()


def case_rows_in_the_index(save_ranks: int) -> None:
    """Each rank's file holds its rows; the index lists one piece per parameter and rank."""
    world = dist.get_default_group()
    directory = shared_tmpdir(world)
    model, opt, module = build("fsdp", world, 0)
    step(module, opt, 0)
    path = checkpoint.save(directory, model=model, optimizer=opt)
    if world.rank() == 0:
        with open(os.path.join(path, "index.json")) as f:
            index = json.load(f)
        pieces = index["spaces"]["params/float32"]["files"]
        # a (7), w (5x3) in group 0, then b (13): global offsets 0, 7, 22
        assert [index["params"][n]["offset"] for n in ("a", "w", "b")] == [0, 7, 22]
        expected = []
        for r in range(save_ranks):
            offset = 0
            for start, rows, per_row in ((0, 7, 1), (7, 5, 3), (22, 13, 1)):
                a, b = row_range(rows, save_ranks, r)
                if a < b:
                    expected.append({"file": f"params.float32.rank{r}.npy",
                                     "start": start + a * per_row, "stop": start + b * per_row,
                                     "offset": offset})
                    offset += (b - a) * per_row
        assert pieces == expected
        assert set(index["spaces"]) == {"params/float32", "state/exp_avg/float32",
                                        "state/exp_avg_sq/float32"}
    world.barrier()


# ------------------------------------------------------------- with fully_shard's own schedule
MLP_ROWS = 12  # the global batch: every world size from 1 to 4 divides it


def _mlp(pg=None):
    ddp.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 7), nn.Tanh(),
                          nn.Linear(7, 3))
    if pg is not None:
        for layer in (model[0], model[2], model[4]):
            fully_shard(layer, mesh=pg)
        fully_shard(model, mesh=pg)
    return model, ddp.optim.AdamW(model.parameters(), lr=0.02, weight_decay=0.1)


def _mlp_step(model, opt, step_index: int, rank: int, world: int) -> None:
    """This rank's slice of the global batch; fully_shard averages the gradients."""
    rng = np.random.default_rng(500 + step_index)
    x = rng.standard_normal((MLP_ROWS, 6)).astype(np.float32)
    y = rng.standard_normal((MLP_ROWS, 3)).astype(np.float32)
    per = MLP_ROWS // world
    lo, hi = rank * per, (rank + 1) * per
    opt.zero_grad()
    ((model(ddp.tensor(x[lo:hi])) - ddp.tensor(y[lo:hi])) ** 2).mean().backward()
    opt.step()


def case_fully_shard_resume(save_ranks: int, load_ranks: int) -> None:
    """Train 2 steps with fully_shard on ``save_ranks`` ranks, save; load into fully_shard on
    ``load_ranks`` ranks and into one plain process: the parameters come back bit-equal, and
    2 more steps agree between the two to float32 summation-order rounding (the reduce-scatter
    averages over a different number of ranks than one process's mean)."""
    world = dist.get_default_group()
    directory = shared_tmpdir(world)
    save_pg = world.new_subgroup(list(range(save_ranks)))
    saved = None
    if save_pg is not None:
        model, opt = _mlp(save_pg)
        for s in range(2):
            _mlp_step(model, opt, s, save_pg.rank(), save_ranks)
        saved = [p.full_tensor().cpu().numpy().copy() for p in model.parameters()]
        checkpoint.save(directory, model=model, optimizer=opt, process_group=save_pg, step=2)
    saved = world.broadcast_object(saved, 0)
    load_pg = world.new_subgroup(list(range(load_ranks)))
    sharded = None
    if load_pg is not None:
        model, opt = _mlp(load_pg)
        checkpoint.load(directory, model=model, optimizer=opt, process_group=load_pg)
        for p, ref in zip(model.parameters(), saved, strict=True):
            np.testing.assert_array_equal(p.full_tensor().cpu().numpy(), ref)
        for s in range(2, 4):
            _mlp_step(model, opt, s, load_pg.rank(), load_ranks)
        sharded = [p.full_tensor().cpu().numpy().copy() for p in model.parameters()]
    single = world.new_subgroup([0])  # rank 0 alone: the one-process model
    if single is not None:
        model, opt = _mlp()
        checkpoint.load(directory, model=model, optimizer=opt, process_group=single)
        for p, ref in zip(model.parameters(), saved, strict=True):
            np.testing.assert_array_equal(p.detach().cpu().numpy(), ref)
        for s in range(2, 4):
            _mlp_step(model, opt, s, 0, 1)
        for p, other in zip(model.parameters(), sharded, strict=True):
            np.testing.assert_allclose(p.detach().cpu().numpy(), other, rtol=1e-5, atol=1e-6)
    world.barrier()


def case_sharded_param_outside_the_optimizer() -> None:
    """A fully sharded parameter the optimizer does not hold cannot be saved row by row: every
    rank raises the same ValueError naming it, and nothing is published."""
    world = dist.get_default_group()
    directory = shared_tmpdir(world)
    net = shard_rows(Net(0), world)
    opt = OPTIMIZERS["adamw"][0]([net.a, net.w], lr=0.1)
    try:
        checkpoint.save(directory, model=net, optimizer=opt)
    except ValueError as exc:
        assert "fully sharded parameter 'b' is not in the optimizer" in str(exc)
    else:
        raise AssertionError("save did not refuse")
    assert not os.path.exists(os.path.join(directory, "latest"))
    world.barrier()
