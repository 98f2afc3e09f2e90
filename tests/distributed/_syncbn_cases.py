"""SyncBatchNorm cases shared by the threads tests (test_syncbn.py) and the MPI tests
(test_syncbn_mpi.py).

Each ``case_*`` runs on every rank of the default process group. Every rank generates the global
batch of each step from a fixed seed and computes the single-process reference (the same net
with plain BatchNorm on the whole batch) itself, then checks that its shard under SyncBatchNorm
+ DDP gives the reference's outputs, input gradients, averaged parameter gradients, parameters
and running statistics.
"""

from __future__ import annotations

import numpy as np

import ddp
import ddp.distributed as dist
from ddp import nn
from ddp.nn import functional as F
from ddp.nn.parallel import DistributedDataParallel as DDP

ATOL = 1e-10  # float64 throughout: only summation order differs from the reference


class ConvNet(nn.Module):
    """conv-BN-ReLU, strided conv-BN-ReLU, global average pool, linear, BatchNorm1d."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False, dtype=ddp.float64)
        self.bn1 = nn.BatchNorm2d(4, dtype=ddp.float64)
        self.conv2 = nn.Conv2d(4, 5, 3, stride=2, padding=1, dtype=ddp.float64)
        self.bn2 = nn.BatchNorm2d(5, momentum=None, dtype=ddp.float64)
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(5, 3, dtype=ddp.float64)
        self.bn3 = nn.BatchNorm1d(3, eps=1e-3, dtype=ddp.float64)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.bn3(self.fc(ddp.flatten(self.pool(x), 1)))


def _counts(size: int, uneven: bool) -> list[int]:
    """Samples per rank: 3 each, or 1, 2, 3, ... (rank 0 alone has a single sample)."""
    return [r + 1 if uneven else 3 for r in range(size)]


def _batch(step: int, total: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(500 + step)
    return rng.standard_normal((total, 3, 6, 6)) * 2 + 1, rng.standard_normal((total, 3))


def _close(actual, expected, what: str) -> None:
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=1e-9, atol=ATOL,
                               err_msg=f"rank {dist.get_rank()}: {what}")


def case_matches_single_process(uneven: bool = False, steps: int = 3,
                                comm_mode: str | None = None) -> None:
    """N ranks x B_r samples with SyncBatchNorm + DDP == one process on the sum(B_r) samples.

    The loss of a rank is ``size / total * sum(out * w)`` over its samples, so that DDP's
    average of the ranks' gradients is the gradient of the global ``sum(out * w) / total``
    whatever the per-rank batch sizes; each rank's input gradient is then ``size`` times the
    reference's rows for its shard. ``comm_mode`` is DDP's (None: the default thread): the
    SyncBatchNorm all-reduces of backward interleave with DDP's bucket all-reduces.
    """
    rank, size = dist.get_rank(), dist.get_world_size()
    counts = _counts(size, uneven)
    total, start = sum(counts), sum(counts[:rank])
    rows = slice(start, start + counts[rank])
    ddp.manual_seed(0)
    reference = ConvNet()
    ddp.manual_seed(rank)  # different on every rank but 0: DDP broadcasts rank 0's
    model = nn.SyncBatchNorm.convert_sync_batchnorm(ConvNet())
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules()) == 3
    ddp_model = DDP(model, comm_mode=comm_mode)
    ref_opt = ddp.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    opt = ddp.optim.SGD(ddp_model.parameters(), lr=0.1, momentum=0.9)
    for step in range(steps):
        x, w = _batch(step, total)
        x_ref = ddp.tensor(x, requires_grad=True)
        out_ref = reference(x_ref)
        ((out_ref * ddp.tensor(w)).sum() / total).backward()
        x_local = ddp.tensor(x[rows], requires_grad=True)
        out = ddp_model(x_local)
        ((out * ddp.tensor(w[rows])).sum() * (size / total)).backward()
        _close(out.detach().numpy(), out_ref.detach().numpy()[rows], f"output, step {step}")
        _close(x_local.grad.numpy(), size * x_ref.grad.numpy()[rows], f"input grad, step {step}")
        for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
            _close(p.grad.numpy(), q.grad.numpy(), f"{name}.grad, step {step}")
        ref_opt.step()
        opt.step()
        ref_opt.zero_grad()
        opt.zero_grad()
    for (name, b), c in zip(model.named_buffers(), reference.buffers(), strict=True):
        assert b.dtype == c.dtype, name
        _close(b.numpy(), c.numpy(), f"buffer {name}")
    assert int(model.bn1.num_batches_tracked.item()) == steps
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        _close(p.detach().numpy(), q.detach().numpy(), f"parameter {name}")
    model.eval()  # eval: running statistics, no collective
    reference.eval()
    x, _ = _batch(steps, total)
    with ddp.no_grad():
        _close(model(ddp.tensor(x[rows])).numpy(), reference(ddp.tensor(x)).numpy()[rows],
               "eval output")


def case_statistics_without_ddp(uneven: bool = True) -> None:
    """One SyncBatchNorm layer, no DDP: batch statistics and the running variance span the
    ranks (count-weighted), and the weight gradient is this rank's share of the global one."""
    rank, size = dist.get_rank(), dist.get_world_size()
    counts = _counts(size, uneven)
    total, start = sum(counts), sum(counts[:rank])
    rows = slice(start, start + counts[rank])
    rng = np.random.default_rng(7)
    x = rng.standard_normal((total, 4, 5)) * 3 + 2
    g = rng.standard_normal((total, 4, 5))
    sync, plain = nn.SyncBatchNorm(4, dtype=ddp.float64), nn.BatchNorm1d(4, dtype=ddp.float64)
    xs = ddp.tensor(x[rows], requires_grad=True)
    (sync(xs) * ddp.tensor(g[rows])).sum().backward()
    xp = ddp.tensor(x, requires_grad=True)
    (plain(xp) * ddp.tensor(g)).sum().backward()
    _close(sync.running_mean.numpy(), plain.running_mean.numpy(), "running_mean")
    _close(sync.running_var.numpy(), plain.running_var.numpy(), "running_var")
    _close(xs.grad.numpy(), xp.grad.numpy()[rows], "input grad")
    total_weight_grad = ddp.tensor(sync.weight.grad.numpy().copy())
    dist.all_reduce(total_weight_grad)
    _close(total_weight_grad.numpy(), plain.weight.grad.numpy(), "sum of weight grads")


def case_eval_and_no_grad_input_run_no_collective() -> None:
    """Training runs one all-reduce in forward and, when the input needs a gradient, one in
    backward, on the layer's ``process_group`` (not the default group); eval runs none."""
    calls = []
    group = dist.new_group()  # a collective: a group of all ranks, distinct from the default
    default = dist.get_default_group()
    originals = group.allreduce, default.allreduce

    def counting(name, original):
        def allreduce(array, op=dist.ReduceOp.SUM):
            calls.append((name, array.size))
            return original(array, op)
        return allreduce

    bn = nn.SyncBatchNorm(3, dtype=ddp.float64, process_group=group)
    # this rank's own group objects: a test seam, restored below
    group.allreduce = counting("group", originals[0])
    default.allreduce = counting("default", originals[1])
    try:
        x = ddp.tensor(np.random.default_rng(dist.get_rank()).standard_normal((4, 3, 2)))
        bn(x).sum().backward()
        # (sum, sum of squares, count) of 3 channels in one all-reduce; backward needs none
        assert calls == [("group", 2 * 3 + 1)], calls
        bn.eval()
        bn(x)
        assert len(calls) == 1, calls
        bn.train()
        xg = ddp.tensor(x.numpy(), requires_grad=True)
        bn(xg).sum().backward()
        # backward: (sum of grad, sum of grad * xhat)
        assert calls == [("group", 7), ("group", 7), ("group", 6)], calls
    finally:
        group.allreduce, default.allreduce = originals
        dist.destroy_process_group(group)
