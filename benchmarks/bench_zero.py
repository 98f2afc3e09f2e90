"""ZeRO and fully sharded against DDP: per-rank memory, bytes sent per step, step time.

    # memory and communication at N = 2, 3, 4 (threads backend; bytes do not need MPI)
    .venv/bin/python benchmarks/bench_zero.py
    # step time, one process per rank
    OMP_NUM_THREADS=1 .venv/bin/mpiexec -n 2 .venv/bin/python benchmarks/bench_zero.py --time

Memory is ``ddp.distributed.memory_report`` right after ``opt.step()`` (before ``zero_grad``),
when all three kinds of training memory are live: parameters (the arrays the model holds; ZeRO:
its flat padded buffers; fully sharded: this rank's dim-0 rows), gradients (DDP: the ``.grad``
arrays; stage 1: ZeRO's flat gradient buffer; stage 2: the reduce-scattered slices; fully
sharded: the rows' gradients), optimizer state (every per-element state tensor). They are
compared with the fp32 Adam formulas in bytes, Psi = parameter count: DDP 16 Psi, stage 1
8 Psi + 8 Psi / N, stage 2 4 Psi + 12 Psi / N, fully sharded 16 Psi / N. Communication buffers
are listed apart: DDP's buckets (``gradient_as_bucket_view=True`` makes the grads of the DDP
run *be* the buckets, so 0 beyond them), ZeRO's reduce-scatter scratch and (stage 2) its pool
of bucket staging buffers (ZeRO releases DDP's); fully sharded: the peak of gathered
parameters (``GatheredPeak``, one unit at a time; its staging buffers have no accessor).

Bytes sent per rank and step are counted by ``ddp.distributed.traffic.count_traffic`` (every
collective of every group, ring costs: all-reduce ``2 (N-1)/N B``, reduce-scatter
``(N-1)/N B_in``, all-gather ``(N-1)/N B_out``, broadcast ``(N-1)/N B``). Fully sharded with
``reshard_after_forward=True`` sends 1.5x DDP's: two all-gathers (forward, backward) and one
reduce-scatter per unit, against one all-reduce (= reduce-scatter + all-gather).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import ddp
import ddp.distributed as dist
from ddp import nn
from ddp.distributed.fsdp import fully_shard
from ddp.distributed.memory_ledger import GatheredPeak
from ddp.distributed.optim import ZeroRedundancyOptimizer
from ddp.distributed.traffic import count_traffic
from ddp.nn.parallel import DistributedDataParallel as DDP

WIDTH = 512
BATCH = 16
CONFIGS = ("ddp", "zero1", "zero2", "fsdp")
FORMULAS = {"ddp": lambda n: 16.0, "zero1": lambda n: 8 + 8 / n, "zero2": lambda n: 4 + 12 / n,
            "fsdp": lambda n: 16 / n}


def make_model(seed: int = 0) -> nn.Module:
    ddp.manual_seed(seed)
    return nn.Sequential(nn.Linear(WIDTH, 2 * WIDTH), nn.ReLU(), nn.Linear(2 * WIDTH, 2 * WIDTH),
                         nn.ReLU(), nn.Linear(2 * WIDTH, WIDTH))


def build(config: str):
    if config == "fsdp":  # one unit per Linear; the root holds no parameter of its own
        model = make_model()
        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        fully_shard(model)
        return model, ddp.optim.Adam(model.parameters(), lr=1e-3)
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


# ------------------------------------------------------------------------------- measurement
def measure(config: str) -> dict:
    model, opt = build(config)
    train_step(model, opt, 0)  # state exists from here on
    dist.get_default_group().barrier()
    with GatheredPeak(model) as peak, count_traffic(dist.get_rank()) as sent:
        train_step(model, opt, 1)
    report = dist.memory_report(model, opt, print_report=False,
                                gathered_peak=peak if config == "fsdp" else None)

    def got(name):
        return report.category(name).measured

    return {"psi": report.psi, "params": got("parameters"), "grads": got("gradients"),
            "state": got("optimizer state"), "buckets": got("communication buffers"),
            "gathered": got("gathered parameters (peak)"), "flags": report.flags,
            "sent": sent.total, "by_kind": dict(sent.by_kind)}


def _psi(nbytes, psi: int) -> str:
    return "not measured" if nbytes is None else f"{nbytes / psi:.3f} Ψ"


def memory_tables(worlds=(2, 3, 4)) -> None:
    print("| N | config | params | grads | Adam state | total | formula | total/formula "
          "| comm buffers | gathered peak | bytes sent/step | sent / DDP's |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in worlds:
        rows = {c: dist.spawn(measure, n, args=(c,))[0] for c in CONFIGS}
        psi = rows["ddp"]["psi"]
        for c in CONFIGS:
            r = rows[c]
            total = r["params"] + r["grads"] + r["state"]
            formula = FORMULAS[c](n) * psi
            print(f"| {n} | {c} | {r['params'] / psi:.3f} Ψ | {r['grads'] / psi:.3f} Ψ | "
                  f"{r['state'] / psi:.3f} Ψ | {total / psi:.3f} Ψ | {formula / psi:.3f} Ψ | "
                  f"{total / formula:.4f} | {_psi(r['buckets'], psi)} | "
                  f"{r['gathered'] / psi:.3f} Ψ | "
                  f"{r['sent'] / 2**20:.2f} MiB | {r['sent'] / rows['ddp']['sent']:.3f} |")
            if r["flags"]:
                print(f"|   | {c}: ledger flags {r['flags']} |")
        kinds = ", ".join(f"{k} {v / 2**20:.3f} MiB" for k, v in rows["fsdp"]["by_kind"].items())
        print(f"|   | fsdp bytes by collective at N = {n}: {kinds} |")
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
