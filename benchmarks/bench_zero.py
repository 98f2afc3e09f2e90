"""ZeRO against DDP: per-rank memory, bytes sent per step, step time.

    # memory and communication at N = 2, 3, 4 (threads backend; bytes do not need MPI)
    .venv/bin/python benchmarks/bench_zero.py
    # step time, one process per rank
    OMP_NUM_THREADS=1 .venv/bin/mpiexec -n 2 .venv/bin/python benchmarks/bench_zero.py --time

Memory is measured with ``nbytes`` right after ``opt.step()`` (before ``zero_grad``), when all
three kinds of memory are live: parameters (the arrays the model holds; ZeRO: its flat padded
buffers), gradients (DDP: the ``.grad`` arrays; stage 1: ZeRO's flat gradient buffer; stage 2:
the reduce-scattered slices), optimizer state (every state tensor). They are compared with the
fp32 Adam formulas in bytes, Psi = parameter count: DDP 16 Psi, stage 1 8 Psi + 8 Psi / N, stage 2
4 Psi + 12 Psi / N. Communication buffers are listed apart: DDP's buckets
(``gradient_as_bucket_view=True`` makes the grads of the DDP run *be* the buckets), ZeRO's
reduce-scatter scratch and (stage 2) its pool of bucket staging buffers (ZeRO releases DDP's).

Bytes sent per rank and step count what each collective moves under the bandwidth-optimal ring
algorithms: all-reduce ``2 (N-1)/N B``, reduce-scatter ``(N-1)/N B_in``, all-gather
``(N-1)/N B_out``, broadcast ``B`` (upper bound), where B is the buffer size in bytes.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import numpy as np

import ddp
import ddp.distributed as dist
from ddp import nn
from ddp.distributed.optim import ZeroRedundancyOptimizer
from ddp.distributed.process_group import ProcessGroup
from ddp.nn.parallel import DistributedDataParallel as DDP

WIDTH = 512
BATCH = 16
CONFIGS = ("ddp", "zero1", "zero2")
FORMULAS = {"ddp": lambda n: 16.0, "zero1": lambda n: 8 + 8 / n, "zero2": lambda n: 4 + 12 / n}


def make_model(seed: int = 0) -> nn.Module:
    ddp.manual_seed(seed)
    return nn.Sequential(nn.Linear(WIDTH, 2 * WIDTH), nn.ReLU(), nn.Linear(2 * WIDTH, 2 * WIDTH),
                         nn.ReLU(), nn.Linear(2 * WIDTH, WIDTH))


def build(config: str):
    model = DDP(make_model(), gradient_as_bucket_view=True)
    if config == "ddp":
        opt = ddp.optim.Adam(model.parameters(), lr=1e-3)
    else:
        opt = ZeroRedundancyOptimizer(model.parameters(), ddp.optim.Adam,
                                      stage=int(config[-1]), lr=1e-3)
    return model, opt


def train_step(model, opt, step: int) -> None:
    rng = np.random.default_rng(step * 1000 + dist.get_rank())
    x = ddp.tensor(rng.standard_normal((BATCH, WIDTH)).astype(np.float32))
    y = ddp.tensor(rng.standard_normal((BATCH, WIDTH)).astype(np.float32))
    opt.zero_grad()
    ((model(x) - y) ** 2).mean().backward()
    opt.step()


# ------------------------------------------------------------------------ communication count
_sent: dict[int, float] = {}
_lock = threading.Lock()


def _count(pg: ProcessGroup, nbytes: float) -> None:
    with _lock:
        key = pg.global_ranks[pg.rank()]
        _sent[key] = _sent.get(key, 0.0) + nbytes


def install_counters() -> None:
    """Wrap the array-level collectives of every ProcessGroup to count bytes sent per rank."""
    originals = {name: getattr(ProcessGroup, name)
                 for name in ("allreduce", "allgather", "reduce_scatter", "broadcast")}

    def allreduce(self, array, *args, **kw):
        _count(self, 2 * (self.size() - 1) / self.size() * array.nbytes)
        return originals["allreduce"](self, array, *args, **kw)

    def allgather(self, out, inp):
        _count(self, (self.size() - 1) / self.size() * out.nbytes)
        return originals["allgather"](self, out, inp)

    def reduce_scatter(self, out, inp, *args, **kw):
        _count(self, (self.size() - 1) / self.size() * inp.nbytes)
        return originals["reduce_scatter"](self, out, inp, *args, **kw)

    def broadcast(self, array, src):
        _count(self, array.nbytes if self.size() > 1 else 0)
        return originals["broadcast"](self, array, src)

    ProcessGroup.allreduce = allreduce
    ProcessGroup.allgather = allgather
    ProcessGroup.reduce_scatter = reduce_scatter
    ProcessGroup.broadcast = broadcast


# ------------------------------------------------------------------------------- measurement
def measure(config: str) -> dict:
    model, opt = build(config)
    train_step(model, opt, 0)  # state exists from here on
    dist.get_default_group().barrier()
    rank = dist.get_rank()
    with _lock:
        _sent.pop(rank, None)
    train_step(model, opt, 1)
    params = list(model.parameters())
    psi = sum(p.array.size for p in params)
    if config == "ddp":
        param_bytes = sum(p.array.nbytes for p in params)
        grad_bytes = sum(p.grad.array.nbytes for p in params)
        state = opt.state
    else:
        mem = opt.memory_bytes()
        param_bytes, grad_bytes = mem["params"], mem["grads"]
        state = opt.optim.state
    state_bytes = sum(v.array.nbytes for s in state.values() for v in s.values()
                      if isinstance(v, ddp.Tensor))
    buckets = sum(b.buffer.nbytes for b in model.reducer.buckets)
    if config != "ddp":
        buckets += opt.memory_bytes()["comm"]
    dist.get_default_group().barrier()
    with _lock:
        sent = _sent.get(rank, 0.0)
    return {"psi": psi, "params": param_bytes, "grads": grad_bytes, "state": state_bytes,
            "buckets": buckets, "sent": sent}


def memory_tables(worlds=(2, 3, 4)) -> None:
    install_counters()
    print("| N | config | params | grads | Adam state | total | formula | total/formula "
          "| comm buffers | bytes sent/step | sent / DDP's |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n in worlds:
        rows = {c: dist.spawn(measure, n, args=(c,))[0] for c in CONFIGS}
        psi = rows["ddp"]["psi"]
        for c in CONFIGS:
            r = rows[c]
            total = r["params"] + r["grads"] + r["state"]
            formula = FORMULAS[c](n) * psi
            print(f"| {n} | {c} | {r['params'] / psi:.3f} Ψ | {r['grads'] / psi:.3f} Ψ | "
                  f"{r['state'] / psi:.3f} Ψ | {total / psi:.3f} Ψ | {formula / psi:.3f} Ψ | "
                  f"{total / formula:.4f} | {r['buckets'] / psi:.3f} Ψ | "
                  f"{r['sent'] / 2**20:.2f} MiB | {r['sent'] / rows['ddp']['sent']:.3f} |")
    print(f"\nΨ = {psi} parameters (fp32), batch {BATCH} per rank")


def step_times(steps: int) -> None:
    """Configs interleaved step by step (the machine is shared and noisy); medians."""
    dist.init_process_group()
    pg = dist.get_default_group()
    built = {c: build(c) for c in CONFIGS}
    for c in CONFIGS:
        for s in range(3):
            train_step(*built[c], s)
    times: dict = {c: [] for c in CONFIGS}
    for s in range(steps):
        for c in CONFIGS:
            pg.barrier()
            t0 = time.perf_counter()
            train_step(*built[c], s)
            times[c].append(time.perf_counter() - t0)
    results = {c: max(pg.allgather_object(statistics.median(times[c]))) for c in CONFIGS}
    if pg.rank() == 0:
        psi = sum(p.array.size for p in make_model().parameters())
        print(f"backend {pg.backend}, N = {pg.size()}, Ψ = {psi}, batch {BATCH} per rank, "
              f"median of {steps} interleaved steps (slowest rank)")
        print("| config | step time (ms) | vs DDP |")
        print("|---|---|---|")
        for c in CONFIGS:
            print(f"| {c} | {results[c] * 1e3:.1f} | {results[c] / results['ddp']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time", action="store_true", help="time steps (run under mpiexec)")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    if args.time:
        step_times(args.steps)
    else:
        memory_tables()


if __name__ == "__main__":
    main()
