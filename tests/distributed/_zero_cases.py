"""ZeRO and checkpoint cases shared by the threads tests (test_zero.py, test_checkpoint.py) and
the MPI tests (test_zero_mpi.py).

Each ``case_*`` runs on every rank of the default group (inside ``dist.spawn`` or under
``mpiexec``) and asserts on its own rank. Parameters have 7, 13 and 5x3 = 15 elements (35 in
all), which no world size from 2 to 4 divides. Every rank can compute the single-process
reference on the whole global batch itself.
"""

from __future__ import annotations

import math
import os
import tempfile

import numpy as np

import ddp
import ddp.distributed as dist
from ddp import nn
from ddp.backend import to_numpy
from ddp.distributed import checkpoint
from ddp.distributed.checkpoint import storage
from ddp.distributed.optim import ZeroRedundancyOptimizer
from ddp.nn.parallel import DistributedDataParallel as DDP

PER_RANK = 4
TOTAL = 35
# Buckets of 5 and (first) 2 elements, rounded down to multiples of N (at least N): several
# buckets that split parameters, so a rank owns several pieces.
SMALL = {"bucket_cap_mb": 20 / 2**20, "first_bucket_cap_mb": 8 / 2**20}


class Net(nn.Module):
    def __init__(self, seed: int):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.a = nn.Parameter(ddp.tensor(rng.standard_normal(7).astype(np.float32)))
        self.b = nn.Parameter(ddp.tensor(rng.standard_normal(13).astype(np.float32)))
        self.w = nn.Parameter(ddp.tensor(rng.standard_normal((5, 3)).astype(np.float32)))

    def forward(self, x, z, q):
        h = (x @ self.w.t()).tanh().sum(1)
        return h + (z * self.b).tanh().sum(1) * (q * self.a).sum(1) * 0.1


def batch(step: int, rows: int, lo: int = 0, hi: int | None = None) -> list[ddp.Tensor]:
    rng = np.random.default_rng(100 + step)
    arrays = [rng.standard_normal((rows, n)).astype(np.float32) for n in (3, 13, 7, 1)]
    return [ddp.tensor(a[lo:hi]) for a in arrays]


def loss_of(model, step: int, rows: int, lo: int = 0, hi: int | None = None):
    x, z, q, y = batch(step, rows, lo, hi)
    return ((model(x, z, q) - y.reshape(-1)) ** 2).mean()


OPTIMIZERS = {
    "sgd": (ddp.optim.SGD, {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01}, 1),
    "adamw": (ddp.optim.AdamW, {"lr": 0.02, "weight_decay": 0.1}, 2),
}


def groups_of(model: Net) -> list[dict]:
    """Two groups (no decay for ``b``), so a rank's slice can straddle a group boundary."""
    return [{"params": [model.a, model.w]}, {"params": [model.b], "weight_decay": 0.0}]


def params_of(model: Net) -> list[np.ndarray]:
    """Host copies of the parameters (the suites also run with the GPU as default device)."""
    return [p.detach().cpu().numpy().copy() for p in model.parameters()]


def train_reference(name: str, steps: int, rows: int,
                    schedule: bool = False) -> list[np.ndarray]:
    cls, kw, _ = OPTIMIZERS[name]
    model = Net(0)
    opt = cls(groups_of(model), **kw)
    sched = ddp.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5) if schedule else None
    for step in range(steps):
        opt.zero_grad()
        loss_of(model, step, rows).backward()
        opt.step()
        if sched is not None:
            sched.step()
    return params_of(model)


def case_matches_unsharded(stage: int, name: str, steps: int = 4, exact: bool = True,
                           buckets: dict | None = None, wrap: bool = True,
                           accumulate: int = 1) -> None:
    """ZeRO (+ DDP when ``wrap``; a plain model otherwise) equals DDP + the plain optimizer
    (bitwise where ``exact``) and the single-process reference on the global batch.
    ``accumulate`` backwards (half batches) run before each step."""
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = PER_RANK * world
    cls, kw, _ = OPTIMIZERS[name]
    results = []
    for sharded in (True, False):
        model = DDP(Net(0)) if wrap or not sharded else Net(0)
        module = model.module if isinstance(model, DDP) else model
        groups = groups_of(module)
        if sharded:
            opt = ZeroRedundancyOptimizer(groups, cls, stage=stage, **(buckets or {}), **kw)
        else:
            opt = cls(groups, **kw)
        sched = ddp.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        part = PER_RANK // accumulate
        for step in range(steps):
            opt.zero_grad()
            for k in range(accumulate):
                lo = rank * PER_RANK + k * part
                (loss_of(model, step, rows, lo, lo + part) / accumulate).backward()
            if sharded:
                assert all(p.grad is None for p in model.parameters()), "ZeRO keeps p.grad"
            opt.step()
            sched.step()
        results.append(params_of(module))
    reference = train_reference(name, steps, rows, schedule=True)
    for mine, ddp_plain in zip(results[0], results[1], strict=True):
        if exact:
            np.testing.assert_array_equal(mine, ddp_plain)
        else:
            np.testing.assert_allclose(mine, ddp_plain, rtol=1e-6, atol=1e-7)
    for mine, ref in zip(results[0], reference, strict=True):
        np.testing.assert_allclose(mine, ref, rtol=2e-4, atol=2e-5)


def case_memory(stage: int, name: str) -> None:
    """Optimizer state is exactly ceil(35 / N) elements per state array on every rank."""
    world = dist.get_world_size()
    cls, kw, n_state = OPTIMIZERS[name]
    model = DDP(Net(0))
    opt = ZeroRedundancyOptimizer(groups_of(model.module), cls, stage=stage, **SMALL, **kw)
    loss_of(model, 0, PER_RANK * world).backward()
    shard = math.ceil(TOTAL / world)
    grad_bytes = opt.memory_bytes()["grads"]
    opt.step()
    state_bytes = sum(v.array.nbytes for s in opt.optim.state.values() for v in s.values()
                      if isinstance(v, ddp.Tensor) and v.array.ndim > 0)
    assert state_bytes == shard * 4 * n_state, (state_bytes, shard, n_state)
    assert opt.memory_bytes()["params"] == shard * world * 4
    assert grad_bytes == (shard * 4 if stage == 2 else shard * world * 4)
    assert sum(p.array.nbytes for p in model.parameters()) == TOTAL * 4


def case_clip(stage: int, norm_type: float) -> None:
    """clip_grad_norm_ returns and applies the global norm of the averaged gradient."""
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = PER_RANK * world
    model = DDP(Net(0))
    opt = ZeroRedundancyOptimizer(model.parameters(), ddp.optim.SGD, stage=stage, lr=0.1,
                                  **SMALL)
    loss_of(model, 0, rows, rank * PER_RANK, (rank + 1) * PER_RANK).backward()
    norm = opt.clip_grad_norm_(0.05, norm_type)
    assert not opt.has_nonfinite_grad()
    opt.step()

    ref = Net(0)
    loss_of(ref, 0, rows).backward()
    ref_norm = nn.utils.clip_grad_norm_(ref.parameters(), 0.05, norm_type)
    assert float(ref_norm) > 0.05  # the clip is active
    np.testing.assert_allclose(float(norm), float(ref_norm), rtol=1e-5)
    for p in ref.parameters():
        p.array -= 0.1 * p.grad.array
    for mine, theirs in zip(params_of(model.module), params_of(ref), strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-6)


def case_nonfinite(stage: int) -> None:
    """An inf in one rank's data is reported on every rank, whoever owns the slice."""
    rank, world = dist.get_rank(), dist.get_world_size()
    model = DDP(Net(0))
    opt = ZeroRedundancyOptimizer(model.parameters(), ddp.optim.SGD, stage=stage, lr=0.1)
    x, z, q, y = batch(0, PER_RANK * world, rank * PER_RANK, (rank + 1) * PER_RANK)
    if rank == world - 1:
        q.array[0, 0] = np.inf  # only the gradient of ``a`` becomes non-finite
    ((model(x, z, q) - y.reshape(-1)) ** 2).mean().backward()
    assert opt.has_nonfinite_grad()
    opt.zero_grad()
    loss_of(model, 0, PER_RANK * world, rank * PER_RANK, (rank + 1) * PER_RANK).backward()
    assert not opt.has_nonfinite_grad()


def case_consolidate(stage: int, name: str) -> None:
    """consolidate_state_dict gives the plain optimizer's state_dict; loading it back works."""
    rank, world = dist.get_rank(), dist.get_world_size()
    cls, kw, _ = OPTIMIZERS[name]
    model, ref = DDP(Net(0)), Net(0)
    opt = ZeroRedundancyOptimizer(groups_of(model.module), cls, stage=stage, **SMALL, **kw)
    ref_opt = cls(groups_of(ref), **kw)
    rows = PER_RANK * world
    for step in range(2):
        opt.zero_grad()
        ref_opt.zero_grad()
        loss_of(model, step, rows, rank * PER_RANK, (rank + 1) * PER_RANK).backward()
        loss_of(ref, step, rows).backward()
        opt.step()
        ref_opt.step()
    opt.consolidate_state_dict(to=world - 1)
    if rank != world - 1:
        return
    full, expected = opt.state_dict(), ref_opt.state_dict()
    assert [g["params"] for g in full["param_groups"]] == \
        [g["params"] for g in expected["param_groups"]]
    assert full["param_groups"][1]["weight_decay"] == 0.0
    assert sorted(full["state"]) == sorted(expected["state"])
    for i, state in expected["state"].items():
        assert list(full["state"][i]) == list(state)
        for key, value in state.items():
            np.testing.assert_allclose(to_numpy(full["state"][i][key].array),
                                       to_numpy(value.array), rtol=1e-4, atol=1e-6)


def shared_tmpdir(pg=None) -> str:
    """A directory every rank sees (rank 0 creates it; threads and MPI share a filesystem)."""
    pg = pg or dist.get_default_group()
    path = tempfile.mkdtemp(prefix="ddp-ckpt-") if pg.rank() == 0 else None
    return pg.broadcast_object(path, 0)


def _replicated_step(model: Net, opt, step: int) -> None:
    """Every rank computes the full-batch gradient itself (no communication) on a twin sharing
    the parameters' storage, and assigns it by hand: ZeRO takes such gradients as replicated,
    so it performs exactly the single-process arithmetic at any world size (a reduce-scatter
    average of N equal values need not be bitwise equal to the value)."""
    opt.zero_grad()
    twin = Net(0)
    for mine, theirs in zip(twin.parameters(), model.parameters(), strict=True):
        mine.array = theirs.array
    loss_of(twin, step, 8).backward()
    for mine, theirs in zip(twin.parameters(), model.parameters(), strict=True):
        theirs.grad = mine.grad
    opt.step()


def _build(kind: str, pg, seed: int):
    model = Net(seed)
    cls, kw, _ = OPTIMIZERS["adamw"]
    if kind == "plain":
        return model, cls(groups_of(model), **kw)
    return model, ZeroRedundancyOptimizer(groups_of(model), cls, process_group=pg, stage=1,
                                          **SMALL, **kw)


def case_reshard_resume(save_ranks: int, load_ranks: int, save_kind: str = "zero",
                        load_kind: str = "zero") -> None:
    """Save after 2 steps on ``save_ranks`` ranks, load on ``load_ranks`` ranks, train 2 more:
    bit-identical to 4 uninterrupted single-process steps. Ranks beyond a size sit out."""
    world = dist.get_default_group()
    directory = shared_tmpdir(world)
    reference = train_reference("adamw", 4, 8)
    save_pg = world.new_subgroup(list(range(save_ranks)))
    if save_pg is not None:
        model, opt = _build(save_kind, save_pg, 0)
        for step in range(2):
            _replicated_step(model, opt, step)
        checkpoint.save(directory, model=model, optimizer=opt, process_group=save_pg,
                        step=2, note="resume")
    world.barrier()
    load_pg = world.new_subgroup(list(range(load_ranks)))
    if load_pg is not None:
        model, opt = _build(load_kind, load_pg, 7)  # different init: everything is loaded
        extra = checkpoint.load(directory, model=model, optimizer=opt, process_group=load_pg)
        assert extra == {"step": 2, "note": "resume"}
        for step in range(extra["step"], 4):
            _replicated_step(model, opt, step)
        for mine, ref in zip(params_of(model), reference, strict=True):
            np.testing.assert_array_equal(mine, ref)
    world.barrier()


def case_sharded_state_roundtrip(stage: int) -> None:
    """A stage-2 (DDP-trained) checkpoint reloads to the same parameters and state."""
    rank, world = dist.get_rank(), dist.get_world_size()
    directory = shared_tmpdir()
    cls, kw, _ = OPTIMIZERS["adamw"]
    model = DDP(Net(0))
    opt = ZeroRedundancyOptimizer(groups_of(model.module), cls, stage=stage, **SMALL, **kw)
    for step in range(2):
        opt.zero_grad()
        loss_of(model, step, PER_RANK * world, rank * PER_RANK, (rank + 1) * PER_RANK).backward()
        opt.step()
    checkpoint.save(directory, model=model, optimizer=opt)
    saved = opt.local_state()
    model2 = DDP(Net(3))
    opt2 = ZeroRedundancyOptimizer(groups_of(model2.module), cls, stage=stage, **SMALL, **kw)
    checkpoint.load(directory, model=model2, optimizer=opt2)
    for mine, theirs in zip(params_of(model2.module), params_of(model.module), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    loaded = opt2.local_state()
    assert sorted(loaded.slices) == sorted(saved.slices)
    for key, array in saved.slices.items():
        np.testing.assert_array_equal(to_numpy(loaded.slices[key]), to_numpy(array))


ARMED: dict[int, int] = {}  # world rank -> writes that still succeed before the injected failure
_real_write_array = storage.write_array


def failing_write_array(path: str, array) -> None:
    """Stands in for ``storage.write_array`` (tests patch it in); fails where ``ARMED`` says."""
    rank = dist.get_rank()
    left = ARMED.get(rank)
    if left is not None:
        if left == 0:
            raise OSError(f"injected failure writing {os.path.basename(path)}")
        ARMED[rank] = left - 1
    return _real_write_array(path, array)


def case_interrupted_save() -> None:
    """A save that fails midway on the last rank raises on every rank, leaves no partial
    checkpoint, and the previous one still loads."""
    world = dist.get_default_group()
    rank, size = world.rank(), world.size()
    directory = shared_tmpdir(world)
    model, opt = _build("zero", world, 0)
    _replicated_step(model, opt, 0)
    first = checkpoint.save(directory, model=model, optimizer=opt, step=1)
    expected = params_of(model)
    _replicated_step(model, opt, 1)
    if rank == size - 1:
        ARMED[rank] = 1  # its second file fails
    try:
        checkpoint.save(directory, model=model, optimizer=opt, step=2)
    except OSError as exc:  # the failing rank's type and message, on every rank
        assert f"checkpoint.save: rank {size - 1}: injected failure" in str(exc), str(exc)
    else:
        raise AssertionError(f"rank {rank}: the interrupted save did not raise")
    finally:
        ARMED.pop(rank, None)
    world.barrier()
    assert sorted(os.listdir(directory)) == ["latest", os.path.basename(first)]
    model2, opt2 = _build("zero", world, 5)
    assert checkpoint.load(directory, model=model2, optimizer=opt2) == {"step": 1}
    for mine, ref in zip(params_of(model2), expected, strict=True):
        np.testing.assert_array_equal(mine, ref)


def case_bytes_equal_ddp(stage: int, sent: dict) -> None:
    """One training step sends exactly DDP's bytes: ``sent[(config, rank)]`` is filled by the
    test's counting wrappers (ring costs: all-reduce 2(N-1)/N B, reduce-scatter (N-1)/N B_in,
    all-gather (N-1)/N B_out). Equal up to the padding (< N elements)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = PER_RANK * world
    for config in ("ddp", "zero"):
        model = DDP(Net(0))
        if config == "zero":
            opt = ZeroRedundancyOptimizer(model.parameters(), ddp.optim.Adam, stage=stage,
                                          lr=0.1, **SMALL)
        else:
            opt = ddp.optim.Adam(model.parameters(), lr=0.1)
        loss_of(model, 0, rows, rank * PER_RANK, (rank + 1) * PER_RANK).backward()
        opt.step()
        dist.barrier()
        sent[("counting", rank)] = config
        opt.zero_grad()
        loss_of(model, 1, rows, rank * PER_RANK, (rank + 1) * PER_RANK).backward()
        opt.step()
        sent[("counting", rank)] = None
        dist.barrier()
    padded = math.ceil(TOTAL / world) * world
    ring = (world - 1) / world
    assert sent.get(("ddp", rank), 0.0) == 2 * ring * TOTAL * 4
    assert sent.get(("zero", rank), 0.0) == 2 * ring * padded * 4


def case_reduce_dtype(stage: int, dtype_name: str, accumulate: int = 1) -> None:
    """``reduce_dtype``: the gradients are reduce-scattered in float16/bfloat16 (half the bytes
    of float32) and SGD(lr=1) then moves each parameter by the average of the ranks'
    low-precision gradients, within the rounding of a low-precision reduction."""
    from ddp.distributed.traffic import count_traffic

    low = getattr(ddp, dtype_name)
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = PER_RANK * world
    part = PER_RANK // accumulate
    sent = {}
    moved = {}
    for reduce_dtype in (None, low):
        model = Net(0)
        opt = ZeroRedundancyOptimizer(model.parameters(), ddp.optim.SGD, stage=stage,
                                      reduce_dtype=reduce_dtype, lr=1.0, **SMALL)
        before = params_of(model)
        with count_traffic(rank) as traffic:
            for k in range(accumulate):
                lo = rank * PER_RANK + k * part
                (loss_of(model, 0, rows, lo, lo + part) / accumulate).backward()
        sent[reduce_dtype] = traffic.payload_by_kind["reduce_scatter"]
        opt.step()
        moved[reduce_dtype] = [b - a for b, a in zip(before, params_of(model), strict=True)]
    assert sent[low] * 2 == sent[None], sent
    # every rank's local gradient of each micro-batch, rounded as the wire rounds it
    expected = [np.zeros(p.shape) for p in Net(0).parameters()]
    scale = 0.0
    for r in range(world):
        for k in range(accumulate):
            replica = Net(0)
            lo = r * PER_RANK + k * part
            (loss_of(replica, 0, rows, lo, lo + part) / accumulate).backward()
            for e, p in zip(expected, replica.parameters(), strict=True):
                g = p.grad.detach().cpu().numpy()
                e += g.astype(low.np_dtype).astype(np.float64) / world
                scale = max(scale, float(np.abs(g).max()))
    eps = float(ddp.finfo(low).eps)
    for got, want, exact in zip(moved[low], expected, moved[None], strict=True):
        # a sum of `world` low-precision terms rounds up to `world` times, each <= eps * scale
        np.testing.assert_allclose(got, want, rtol=0, atol=2 * world * accumulate * eps * scale)
        assert not np.array_equal(got, exact)  # really reduced in low precision
