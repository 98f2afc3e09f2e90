"""``ddp.distributed.memory_report``: measured bytes per category against exact formulas.

Ψ = 53 (prime: no world size divides it), so ZeRO's padding shows: P = N * ceil(53 / N).
Run on the threads backend at 1, 2 and 3 ranks; every expected number is computed here by
hand from the layout rules, not read back from the code under test.
"""

from __future__ import annotations

import math

import pytest

import ddp
import ddp.distributed as dist
from ddp import nn
from ddp.distributed.fsdp import fully_shard
from ddp.distributed.memory_ledger import Category, GatheredPeak
from ddp.distributed.optim import ZeroRedundancyOptimizer
from ddp.nn.parallel import DistributedDataParallel as DDP

PSI = 6 * 5 + 5 + 5 * 3 + 3  # 53
N_PARAMS = 4
STEP_BYTES = 4  # Adam's float32 "step" scalar per parameter (per shard parameter in ZeRO)


def _model():
    ddp.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def _train(model, opt):
    ddp.manual_seed(1 + dist.get_rank())
    model(ddp.randn(4, 6)).pow(2).mean().backward()
    opt.step()


def _bytes(report, name):
    return report.category(name).measured


def case_ddp(as_view: bool, optimizer: str):
    model = DDP(_model(), gradient_as_bucket_view=as_view)
    if optimizer == "adam":
        opt, state = ddp.optim.Adam(model.parameters(), lr=1e-3), 8 * PSI
    elif optimizer == "momentum":
        opt, state = ddp.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), 4 * PSI
    else:
        opt, state = ddp.optim.SGD(model.parameters(), lr=0.1), 0
    _train(model, opt)
    r = dist.memory_report(model, opt, print_report=False)
    n = dist.get_world_size()
    assert (r.strategy, r.world_size, r.psi) == ("ddp", n, PSI)
    assert _bytes(r, "parameters") == 4 * PSI
    assert _bytes(r, "gradients") == 4 * PSI
    assert _bytes(r, "optimizer state") == state
    assert _bytes(r, "optimizer scalars") == (STEP_BYTES * N_PARAMS if optimizer == "adam" else 0)
    assert _bytes(r, "communication buffers") == (0 if as_view else 4 * PSI)
    assert r.category("activations (peak)").measured is None
    assert r.flags == [], r.flags
    assert [d["rank"] for d in r.ranks] == list(range(n))
    assert all(d["total"] == r.total for d in r.ranks)


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("as_view", [False, True])
def test_ddp_bytes_equal_formula(world_size, as_view):
    dist.spawn(case_ddp, world_size, args=(as_view, "adam"))


@pytest.mark.parametrize("optimizer", ["sgd", "momentum"])
def test_ddp_state_follows_the_optimizer(optimizer):
    dist.spawn(case_ddp, 2, args=(False, optimizer))


def case_zero(stage: int, wrap: bool):
    n = dist.get_world_size()
    model = DDP(_model()) if wrap else _model()
    opt = ZeroRedundancyOptimizer(model.parameters(), ddp.optim.Adam, stage=stage, lr=1e-3)
    _train(model, opt)
    r = dist.memory_report(model, opt, print_report=False)
    padded = n * math.ceil(PSI / n)
    shard = padded // n
    assert r.strategy == f"zero-{stage}"
    assert _bytes(r, "parameters") == 4 * padded
    assert _bytes(r, "gradients") == 4 * (padded if stage == 1 else shard)
    # one shard parameter per param group (one group here) on every rank: one step scalar
    assert _bytes(r, "optimizer state") == 8 * shard
    assert _bytes(r, "optimizer scalars") == STEP_BYTES
    assert r.category("optimizer state").predicted == 8 * shard
    assert r.category("communication buffers").predicted is None
    assert r.flags == [], r.flags
    total = 4 * padded + 4 * (padded if stage == 1 else shard) + 8 * shard + STEP_BYTES
    assert r.total == total + _bytes(r, "communication buffers")


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("stage", [1, 2])
def test_zero_bytes_equal_formula(world_size, stage):
    dist.spawn(case_zero, world_size, args=(stage, True))


def test_zero_on_a_plain_model():
    dist.spawn(case_zero, 3, args=(2, False))


def case_flags_missing_gradients():
    model = DDP(_model())
    opt = ddp.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    r = dist.memory_report(model, opt, print_report=False)  # before any backward
    assert "gradients" in r.flags and "optimizer state" in r.flags
    text = str(r)
    assert "FLAG" in text and "gradients measured 0 B, predicted 212 B" in text


def test_flags_a_category_off_its_formula():
    dist.spawn(case_flags_missing_gradients, 2)


def test_tolerance_is_five_percent():
    assert not Category("x", 105, 100).flagged
    assert Category("x", 106, 100).flagged
    assert Category("x", 94, 100).flagged
    assert Category("x", 1, 0).flagged
    assert not Category("x", None, 100).flagged
    assert not Category("x", 100, None).flagged


def test_plain_model_one_process_prints_a_table(capsys):
    model = _model()
    opt = ddp.optim.AdamW(model.parameters(), lr=1e-3)
    model(ddp.randn(2, 6)).sum().backward()
    opt.step()
    r = dist.memory_report(model, opt)
    out = capsys.readouterr().out
    assert r.strategy == "plain" and r.world_size == 1 and r.flags == []
    assert "memory report: plain, N = 1, Ψ = 53 float32" in out
    assert "rank 0" in out and "not measured" in out
    d = r.to_dict()
    assert d["categories"][0] == {"name": "parameters", "measured": 4 * PSI,
                                  "predicted": 4 * PSI, "formula": "4Ψ", "note": "",
                                  "predicted_min": None, "flagged": False}


# ------------------------------------------------------------------------- fully sharded
FSDP_SHAPES = [(5, 6), (5,), (3, 5), (3,), (7, 3), (7,)]  # Ψ = 81


def _rows_elements(shape, n, r):
    """Elements of rank r's torch.chunk rows: chunks of ceil(rows / n) rows."""
    c = math.ceil(shape[0] / n)
    rows = max(0, min(shape[0], (r + 1) * c) - min(shape[0], r * c))
    return rows * math.prod(shape[1:])


def case_fully_sharded():
    n, rank = dist.get_world_size(), dist.get_rank()
    ddp.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3), nn.Linear(3, 7))
    fully_shard(m[0])
    fully_shard(m[2])
    fully_shard(m)
    opt = ddp.optim.Adam(m.parameters(), lr=1e-3)
    with GatheredPeak(m) as peak:
        m(ddp.randn(4, 6)).pow(2).mean().backward()
        opt.step()
    r = dist.memory_report(m, opt, gathered_peak=peak, print_report=False)
    local = sum(_rows_elements(s, n, rank) for s in FSDP_SHAPES)
    assert (r.strategy, r.psi) == ("fully-sharded", 81)
    assert _bytes(r, "parameters") == 4 * local
    assert _bytes(r, "gradients") == 4 * local
    assert _bytes(r, "optimizer state") == 8 * local
    assert sum(d["categories"][0]["measured"] for d in r.ranks) == 4 * 81  # exactly 4Ψ in all
    assert _bytes(r, "gathered parameters (now)") == 0
    # root (Linear(3, 7): 28 elements) + the running unit (Linear(6, 5): 35) + the prefetched
    # next one (Linear(5, 3): 18) when its all-gather finished before the sample
    assert _bytes(r, "gathered parameters (peak)") in (4 * (28 + 35), 4 * (28 + 35 + 18))
    peak = r.category("gathered parameters (peak)")
    assert (peak.predicted_min, peak.predicted) == (4 * (28 + 35), 4 * (28 + 35 + 18))
    # between steps fully_shard holds no reduce-scatter buffers (FSDPModule.comm_nbytes)
    assert (_bytes(r, "communication buffers"), r.category("communication buffers").predicted) \
        == (0, 0)
    assert r.flags == [], str(r)


@pytest.mark.parametrize("world_size", [2, 3])
def test_fully_sharded_bytes_equal_formula(world_size):
    dist.spawn(case_fully_sharded, world_size)
