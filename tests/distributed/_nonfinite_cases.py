"""The non-finite report of GradScaler and ZeRO (threads tests and MPI tests share these).

The model has two heads on two inputs; the loss sums both, so an inf in input ``x2`` makes only
``b.weight``'s gradient non-finite (``b.bias`` and head ``a`` stay finite). The last rank gets
the inf in one micro-batch; the report must name that rank, ``b.weight`` and the micro-batch.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

import ddp
import ddp.distributed as dist
from ddp import nn
from ddp.distributed.optim import ZeroRedundancyOptimizer
from ddp.nn.parallel import DistributedDataParallel

MICRO_BATCHES = 3


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(5, 2)

    def forward(self, x, x2):
        return self.a(x).sum() + self.b(x2).sum()


class Lines(logging.Handler):
    """Collects the messages of logger ``ddp.nonfinite`` logged by this thread (this rank,
    under the threads backend) while installed."""

    def __init__(self):
        super().__init__()
        self.lines: list[str] = []
        self.thread = threading.get_ident()

    def emit(self, record):
        if record.thread == self.thread:
            self.lines.append(record.getMessage())

    def __enter__(self):
        logging.getLogger("ddp.nonfinite").addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger("ddp.nonfinite").removeHandler(self)


def _batch(rank: int, micro: int, poisoned: bool):
    rng = np.random.default_rng(10 * rank + micro)
    x = rng.standard_normal((2, 4), dtype=np.float32)
    x2 = rng.standard_normal((2, 5), dtype=np.float32)
    if poisoned:
        x2[1, 3] = np.inf
    return ddp.tensor(x), ddp.tensor(x2)


def _steps(model, opt, scaler, poison_rank: int, poison_micro: int, sync_model=None) -> None:
    """Step 0 clean, step 1 poisoned at (poison_rank, poison_micro)."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    for step in range(2):
        opt.zero_grad()
        for micro in range(MICRO_BATCHES):
            poisoned = step == 1 and rank == poison_rank and micro == poison_micro
            x, x2 = _batch(rank, micro, poisoned)
            last = micro == MICRO_BATCHES - 1
            if sync_model is not None and not last:
                with sync_model.no_sync():
                    scaler.scale(model(x, x2)).backward()
            else:
                scaler.scale(model(x, x2)).backward()
        scaler.step(opt)
        scaler.update()


def _check_line(lines: list[str], rank: int, poison_rank: int, poison_micro: int) -> None:
    if rank != 0:
        assert lines == [], lines
        return
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("GradScaler: skipped step 1: non-finite gradient first in b.weight "
                           f"on rank {poison_rank} at micro-batch {poison_micro} "
                           f"(ranks with non-finite local gradients: {poison_rank});"), line
    assert line.endswith("loss scale (last 2, oldest first): 1024, 1024"), line


def case_ddp_report_names_rank_parameter_micro_batch() -> None:
    world, rank = dist.get_world_size(), dist.get_rank()
    for poison_micro in (1, MICRO_BATCHES - 1):  # inside no_sync, and the synced backward
        ddp.manual_seed(0)
        net = TwoHeads()
        model = DistributedDataParallel(net)
        opt = ddp.optim.SGD(model.parameters(), lr=0.1)
        scaler = ddp.amp.GradScaler("cpu", init_scale=1024.0)
        scaler.track_nonfinite(model)
        with Lines() as log:
            _steps(model, opt, scaler, world - 1, poison_micro, sync_model=model)
        _check_line(log.lines, rank, world - 1, poison_micro)
        assert scaler.get_scale() == 512.0  # every rank skipped and backed off alike


def case_zero_report_names_rank_parameter_micro_batch(stage: int) -> None:
    world, rank = dist.get_world_size(), dist.get_rank()
    ddp.manual_seed(0)
    model = TwoHeads()
    opt = ZeroRedundancyOptimizer(model.parameters(), ddp.optim.SGD, stage=stage, lr=0.1)
    scaler = ddp.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.track_nonfinite(model)
    with Lines() as log:
        _steps(model, opt, scaler, world - 1, 1)
    _check_line(log.lines, rank, world - 1, 1)
    assert scaler.get_scale() == 512.0


def case_zero_check_alone_names_the_owner() -> None:
    """``has_nonfinite_grad()`` called directly: one line, from the averaged shards."""
    world, rank = dist.get_world_size(), dist.get_rank()
    ddp.manual_seed(0)
    model = TwoHeads()
    opt = ZeroRedundancyOptimizer(model.parameters(), ddp.optim.SGD, stage=2, lr=0.1)
    x, x2 = _batch(rank, 0, rank == world - 1)
    model(x, x2).backward()
    with Lines() as log:
        assert opt.has_nonfinite_grad()
    if rank == 0:
        assert len(log.lines) == 1, log.lines
        assert log.lines[0].startswith(
            "ZeroRedundancyOptimizer: non-finite gradient, first in param_groups[0][2] shape "
            "(2, 5) (seen after averaging on ranks "), log.lines
    else:
        assert log.lines == []
