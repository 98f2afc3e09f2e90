"""DDP correctness cases shared by the threads tests (test_ddp.py) and the MPI tests.

Each ``case_*`` runs on every rank of the default process group (inside ``dist.spawn`` or under
``mpiexec``) and asserts on its own rank. The data of every step is generated from a fixed seed,
so each rank can also compute the single-process reference on the whole global batch itself.
"""

from __future__ import annotations

import numpy as np
import pytest

import ddp
import ddp.distributed as dist
from ddp import nn
from ddp.nn import functional as F
from ddp.nn.parallel import DistributedDataParallel as DDP

IN, HIDDEN, OUT = 5, 7, 3


class Net(nn.Module):
    """Three layers in float64, so DDP and the reference agree to ~1e-12."""

    def __init__(self, extra: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(IN, HIDDEN, dtype=ddp.float64)
        self.fc2 = nn.Linear(HIDDEN, HIDDEN, dtype=ddp.float64)
        self.fc3 = nn.Linear(HIDDEN, OUT, dtype=ddp.float64)
        if extra:  # never used in forward
            self.spare = nn.Linear(IN, OUT, dtype=ddp.float64)

    def forward(self, x, use_fc2: bool = True):
        h = F.tanh(self.fc1(x))
        if use_fc2:
            h = F.tanh(self.fc2(h))
        return self.fc3(h)


def make_net(seed: int, **kw) -> Net:
    ddp.manual_seed(seed)
    return Net(**kw)


def global_batch(step: int, size: int, per_rank: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1000 + step)
    return rng.standard_normal((size * per_rank, IN)), rng.standard_normal((size * per_rank, OUT))


def shard(array: np.ndarray, rank: int, per_rank: int) -> ddp.Tensor:
    return ddp.tensor(array[rank * per_rank:(rank + 1) * per_rank])


def loss_of(model, x, y, **kw):
    return F.mse_loss(model(x, **kw), y)  # mean over the (local) batch


def make_optimizer(name: str, params):
    if name == "sgd":
        return ddp.optim.SGD(params, lr=0.1, momentum=0.9)
    return ddp.optim.AdamW(params, lr=0.01, weight_decay=0.1)


def assert_params_equal(model, reference, atol: float = 1e-12) -> None:
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        np.testing.assert_allclose(p.detach().cpu().numpy(), q.detach().cpu().numpy(), rtol=0,
                                   atol=atol, err_msg=name)


def case_matches_single_process(optimizer: str = "sgd", bucket_cap_mb: float = 25,
                                gradient_as_bucket_view: bool = False, steps: int = 3) -> None:
    """N ranks x B samples == one process on N*B samples, parameters after several steps."""
    rank, size, per_rank = dist.get_rank(), dist.get_world_size(), 4
    reference = make_net(0)
    model = make_net(rank)  # deliberately different on every rank but 0
    if rank > 0:
        assert not np.allclose(model.fc1.weight.array, reference.fc1.weight.array)
    ddp_model = DDP(model, bucket_cap_mb=bucket_cap_mb,
                    gradient_as_bucket_view=gradient_as_bucket_view)
    assert_params_equal(model, reference, atol=0)  # broadcast from rank 0
    opt = make_optimizer(optimizer, ddp_model.parameters())
    ref_opt = make_optimizer(optimizer, reference.parameters())
    for step in range(steps):
        x, y = global_batch(step, size, per_rank)
        opt.zero_grad()
        loss_of(ddp_model, shard(x, rank, per_rank), shard(y, rank, per_rank)).backward()
        opt.step()
        ref_opt.zero_grad()
        loss_of(reference, ddp.tensor(x), ddp.tensor(y)).backward()
        ref_opt.step()
        for p, q in zip(model.parameters(), reference.parameters(), strict=True):
            np.testing.assert_allclose(p.grad.cpu().numpy(), q.grad.cpu().numpy(), rtol=0,
                                       atol=1e-12)
        assert_params_equal(model, reference)
    if gradient_as_bucket_view:
        buffers = [b.buffer for b in ddp_model.reducer.buckets]
        for p in model.parameters():  # a view into a bucket, not a copy
            assert any(np.shares_memory(p.grad.array, buffer) for buffer in buffers)


def case_float32_matches(bucket_cap_mb: float = 0.0002) -> None:
    """The same invariant in float32 (the dtype of real training), at float32 tolerance."""
    rank, size, per_rank = dist.get_rank(), dist.get_world_size(), 3
    ddp.manual_seed(0)
    reference = nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, OUT))
    ddp.manual_seed(rank)
    model = nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, OUT))
    ddp_model = DDP(model, bucket_cap_mb=bucket_cap_mb)
    x, y = (a.astype(np.float32) for a in global_batch(0, size, per_rank))
    F.mse_loss(ddp_model(shard(x, rank, per_rank)), shard(y, rank, per_rank)).backward()
    F.mse_loss(reference(ddp.tensor(x)), ddp.tensor(y)).backward()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert p.grad.dtype == ddp.float32
        np.testing.assert_allclose(p.grad.cpu().numpy(), q.grad.cpu().numpy(), rtol=1e-5, atol=1e-6)


def case_no_sync(gradient_as_bucket_view: bool = False) -> None:
    """Two micro-batches, the first under no_sync: equals the sum of both global-batch grads."""
    rank, size, per_rank = dist.get_rank(), dist.get_world_size(), 3
    reference, local = make_net(0), make_net(0)
    model = make_net(rank)
    ddp_model = DDP(model, bucket_cap_mb=0.0005, gradient_as_bucket_view=gradient_as_bucket_view)
    (x1, y1), (x2, y2) = global_batch(1, size, per_rank), global_batch(2, size, per_rank)
    with ddp_model.no_sync():
        loss_of(ddp_model, shard(x1, rank, per_rank), shard(y1, rank, per_rank)).backward()
    # Inside no_sync nothing is communicated: the grads are this rank's own.
    loss_of(local, shard(x1, rank, per_rank), shard(y1, rank, per_rank)).backward()
    for p, q in zip(model.parameters(), local.parameters(), strict=True):
        np.testing.assert_allclose(p.grad.cpu().numpy(), q.grad.cpu().numpy(), rtol=0, atol=1e-12)
    loss_of(ddp_model, shard(x2, rank, per_rank), shard(y2, rank, per_rank)).backward()
    loss_of(reference, ddp.tensor(x1), ddp.tensor(y1)).backward()
    loss_of(reference, ddp.tensor(x2), ddp.tensor(y2)).backward()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        np.testing.assert_allclose(p.grad.cpu().numpy(), q.grad.cpu().numpy(), rtol=0, atol=1e-12)


def case_unused_parameters(find_unused_parameters: bool) -> None:
    """``spare`` is unused everywhere, ``fc2`` is skipped on rank 0 only: no hang, right grads.

    The expected gradient of each parameter is the average over ranks of each rank's local
    gradient (zero where that rank did not use it), computed here for every rank.
    """
    rank, size, per_rank = dist.get_rank(), dist.get_world_size(), 2
    model = make_net(rank, extra=True)
    ddp_model = DDP(model, bucket_cap_mb=0.0003, find_unused_parameters=find_unused_parameters)
    for step in range(2):  # twice: the reducer must re-arm cleanly
        x, y = global_batch(step, size, per_rank)
        expected = {name: np.zeros(p.shape) for name, p in model.named_parameters()}
        for r in range(size):
            replica = make_net(0, extra=True)
            replica.load_state_dict(model.state_dict())
            loss_of(replica, shard(x, r, per_rank), shard(y, r, per_rank), use_fc2=r > 0).backward()
            for name, p in replica.named_parameters():
                if p.grad is not None:
                    expected[name] += p.grad.cpu().numpy() / size
        model.zero_grad()
        loss_of(ddp_model, shard(x, rank, per_rank), shard(y, rank, per_rank),
                use_fc2=rank > 0).backward()
        # Bucket 0 holds ``spare`` (registered last): marked ready at backward start, so it is
        # launched during backward instead of waiting for the end-of-backward fallback.
        timeline = ddp_model.reducer.last_timeline
        assert timeline["launched"][0] < timeline["backward_end"]
        for name, p in model.named_parameters():
            if name.startswith("spare") and find_unused_parameters:
                assert p.grad is None, name  # unused on every rank: stays None
                continue
            if name.startswith("fc2") and size == 1 and find_unused_parameters:
                assert p.grad is None, name
                continue
            np.testing.assert_allclose(p.grad.cpu().numpy(), expected[name], rtol=0, atol=1e-12,
                                       err_msg=name)


def case_model_mismatch() -> None:
    """A model that differs on the last rank is refused on every rank, naming rank and param."""
    rank, size = dist.get_rank(), dist.get_world_size()
    last = size - 1
    ddp.manual_seed(0)
    width = 4 if rank == last else 3
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, width))
    with pytest.raises(RuntimeError, match=rf"rank\(s\) \[{last}\].*'1\.weight'"):
        DDP(model)
    dist.barrier()  # the group still works afterwards: nobody is stuck in a collective


def case_settings_mismatch() -> None:
    """DDP settings that differ on the last rank are refused on every rank by the reducer's
    verified channel (``dup(description=...)``), naming that rank."""
    rank, size = dist.get_rank(), dist.get_world_size()
    last = size - 1
    with pytest.raises(RuntimeError, match=rf"Collective mismatch.*rank {last} issued .*DDP "
                                           rf"buckets find_unused=True"):
        DDP(make_net(0), find_unused_parameters=rank == last)
    dist.barrier()  # the group still works afterwards: nobody is stuck in a collective


def case_buffers_follow_rank0() -> None:
    """Buffers are broadcast from rank 0 at construction and before each synchronised forward."""
    rank = dist.get_rank()
    model = make_net(rank)
    model.register_buffer("scale", ddp.full((2,), float(rank + 1), dtype=ddp.float64))
    ddp_model = DDP(model)
    np.testing.assert_array_equal(model.scale.cpu().numpy(), [1.0, 1.0])
    model.scale.array[...] = 10.0 + rank
    x = ddp.zeros(1, IN, dtype=ddp.float64)
    with ddp.no_grad():
        ddp_model(x)  # no synchronisation without grad: buffers untouched
    np.testing.assert_array_equal(model.scale.cpu().numpy(), [10.0 + rank] * 2)
    ddp_model(x)
    np.testing.assert_array_equal(model.scale.cpu().numpy(), [10.0, 10.0])


def case_comm_starts_during_backward() -> None:
    """The first bucket (last layer) is all-reduced while backward still runs."""
    rank = dist.get_rank()
    model = make_net(rank)
    ddp_model = DDP(model, bucket_cap_mb=0.0001)  # 104 bytes: several buckets
    assert len(ddp_model.reducer.buckets) >= 3
    loss_of(ddp_model, ddp.ones(2, IN, dtype=ddp.float64),
            ddp.zeros(2, OUT, dtype=ddp.float64)).backward()
    timeline = ddp_model.reducer.last_timeline
    assert timeline["launched"][0] < timeline["backward_end"]
    assert timeline["launched"] == sorted(timeline["launched"])  # buckets start in index order
    assert [label for label, _, _ in timeline["comm"]] == [
        f"bucket {i}" for i in range(len(ddp_model.reducer.buckets))
    ]


def case_comm_failure_raises(comm_mode: str = "thread") -> None:
    """A failing all-reduce (on the communication thread, or a failing non-blocking launch)
    surfaces as an error at the end of backward, then the next iteration works."""
    rank = dist.get_rank()
    model = make_net(rank)
    ddp_model = DDP(model, bucket_cap_mb=0.0003, comm_mode=comm_mode)
    comm_pg = ddp_model.reducer.process_group
    method = "allreduce_async" if comm_mode == "nonblocking" else "allreduce"
    real_allreduce = getattr(comm_pg, method)

    def broken(array, op=dist.ReduceOp.SUM):
        raise OSError("injected network failure")

    setattr(comm_pg, method, broken)  # fails on every rank, before any message: nobody waits
    x, y = ddp.ones(2, IN, dtype=ddp.float64), ddp.zeros(2, OUT, dtype=ddp.float64)
    with pytest.raises(RuntimeError, match=f"failed on rank {rank}.*injected network failure"):
        loss_of(ddp_model, x, y).backward()
    setattr(comm_pg, method, real_allreduce)
    model.zero_grad()
    loss_of(ddp_model, x, y).backward()
    assert all(p.grad is not None for p in model.parameters())


def case_backward_without_ddp_forward_is_local() -> None:
    """A backward through ``ddp_model.module`` does not communicate (grads stay local)."""
    rank = dist.get_rank()
    model = make_net(rank)
    ddp_model = DDP(model)
    local = make_net(0)
    x = ddp.full((2, IN), float(rank), dtype=ddp.float64)
    y = ddp.zeros(2, OUT, dtype=ddp.float64)
    loss_of(ddp_model.module, x, y).backward()
    loss_of(local, x, y).backward()
    for p, q in zip(model.parameters(), local.parameters(), strict=True):
        np.testing.assert_allclose(p.grad.cpu().numpy(), q.grad.cpu().numpy(), rtol=0, atol=1e-12)
