"""Bytes handed to collectives per DDP step, per communication hook (threads and MPI tests).

The model is known: two float32 Linear layers, weights 24x32 and 16x24, biases 24 and 16.
Plain DDP sends every gradient once (4 bytes an element); the fp16 and bf16 hooks half of
that; PowerSGD of rank r sends r(m + n) elements per compressed m x n weight plus the
uncompressed tensors (the biases) in float32.
"""

from __future__ import annotations

import numpy as np

import ddp
import ddp.distributed as dist
from ddp import nn
from ddp.distributed.algorithms.ddp_comm_hooks import default_hooks
from ddp.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as powerSGD
from ddp.distributed.traffic import count_traffic
from ddp.nn.parallel import DistributedDataParallel

WEIGHTS = [(24, 32), (16, 24)]
BIASES = [24, 16]
START = 2  # PowerSGD's first compressed iteration


def _model():
    ddp.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 24), nn.Tanh(), nn.Linear(24, 16))


def _step_bytes(hook_name: str, rank: int = 1, steps: int = START + 2) -> list[int]:
    """Bytes this rank handed to collectives in each of ``steps`` backward passes."""
    model = DistributedDataParallel(_model())
    if hook_name == "fp16":
        model.register_comm_hook(None, default_hooks.fp16_compress_hook)
    elif hook_name == "bf16":
        model.register_comm_hook(None, default_hooks.bf16_compress_hook)
    elif hook_name == "powersgd":
        state = powerSGD.PowerSGDState(None, matrix_approximation_rank=rank,
                                       start_powerSGD_iter=START)
        model.register_comm_hook(state, powerSGD.powerSGD_hook)
    me = dist.get_rank()
    rng = np.random.default_rng(me)
    sent = []
    for _ in range(steps):
        x = ddp.tensor(rng.standard_normal((4, 32), dtype=np.float32))
        model.zero_grad()
        with count_traffic() as count:
            y = model(x)
            (y * y).sum().backward()
        sent.append(count.payload(me))  # the default group: world rank = group rank
    return sent


def case_bytes_per_step() -> None:
    full = 4 * (sum(m * n for m, n in WEIGHTS) + sum(BIASES))
    plain = _step_bytes("plain")
    assert plain == [full] * len(plain), plain
    fp16 = _step_bytes("fp16")
    assert fp16 == [full // 2] * len(fp16), fp16
    bf16 = _step_bytes("bf16")
    assert bf16 == [full // 2] * len(bf16), bf16
    for r in (1, 2, 4):
        got = _step_bytes("powersgd", rank=r)
        compressed = 4 * (sum(r * (m + n) for m, n in WEIGHTS) + sum(BIASES))
        assert got[:START] == [full] * START, (r, got)  # plain all-reduce before the start
        assert got[START:] == [compressed] * (len(got) - START), (r, got, compressed)
