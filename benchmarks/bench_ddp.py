"""How much of DDP's gradient communication overlaps backward, and what it costs per step.

Run under MPI (one process per rank)::

    OMP_NUM_THREADS=1 .venv/bin/mpiexec -n 2 .venv/bin/python benchmarks/bench_ddp.py \\
        --bucket-cap-mb 1000 25 4 1 --trace /tmp/ddp_trace.json

or with simulated ranks (``--threads N``). For each bucket cap it times training steps of an MLP
and reads the reducer's timeline of the last step of each repetition:

* ``backward``: from the start of backward to the end of the autograd walk (compute, plus the
  hooks copying gradients into buckets);
* ``comm``: total time the communication thread spent in all-reduces;
* ``overlapped``: the part of ``comm`` that ran before the autograd walk ended;
* ``exposed``: time backward waited for communication after the walk (what overlap could not
  hide), and ``step`` the whole forward + backward + optimizer step.

``--trace`` writes rank 0's last step as a Chrome trace (chrome://tracing, ui.perfetto.dev):
one row for backward, one for the communication thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

import ddp
import ddp.distributed as dist
from ddp import nn
from ddp.nn import functional as F
from ddp.nn.parallel import DistributedDataParallel as DDP


def make_model(width: int, layers: int) -> nn.Module:
    blocks: list[nn.Module] = []
    for _ in range(layers):
        blocks += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*blocks, nn.Linear(width, 10))


def measure(args, bucket_cap_mb: float) -> dict:
    rank = dist.get_rank()
    ddp.manual_seed(0)
    model = DDP(make_model(args.width, args.layers), bucket_cap_mb=bucket_cap_mb)
    opt = ddp.optim.SGD(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(rank)
    x = ddp.tensor(rng.standard_normal((args.batch, args.width)).astype(np.float32))
    y = ddp.tensor(rng.integers(0, 10, args.batch))
    rows = []
    for step in range(args.warmup + args.steps):
        dist.barrier()
        start = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        end = time.perf_counter()
        if step >= args.warmup:
            rows.append(summarise(model.reducer.last_timeline, end - start))
    result = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
    result["buckets"] = len(model.reducer.buckets)
    result["timeline"] = model.reducer.last_timeline
    return result


def summarise(timeline: dict, step_s: float) -> dict:
    walk_end = timeline["backward_end"]
    comm = sum(end - start for _, start, end in timeline["comm"])
    overlapped = sum(max(0.0, min(end, walk_end) - start) for _, start, end in timeline["comm"])
    return {
        "step_ms": 1e3 * step_s,
        "backward_ms": 1e3 * (walk_end - timeline["backward_start"]),
        "comm_ms": 1e3 * comm,
        "overlapped_ms": 1e3 * overlapped,
        "exposed_ms": 1e3 * (timeline["end"] - walk_end),
    }


def chrome_trace(timeline: dict, path: str) -> None:
    t0 = timeline["backward_start"]

    def us(t: float) -> float:
        return 1e6 * (t - t0)

    events = [{"name": "backward (autograd walk)", "ph": "X", "pid": 0, "tid": 0, "ts": 0.0,
               "dur": us(timeline["backward_end"])},
              {"name": "wait + write back", "ph": "X", "pid": 0, "tid": 0,
               "ts": us(timeline["backward_end"]),
               "dur": us(timeline["end"]) - us(timeline["backward_end"])}]
    for (label, start, end), launched in zip(timeline["comm"], timeline["launched"],
                                             strict=False):
        events.append({"name": f"all-reduce {label}", "ph": "X", "pid": 0, "tid": 1,
                       "ts": us(start), "dur": us(end) - us(start)})
        events.append({"name": f"{label} ready", "ph": "i", "s": "t", "pid": 0, "tid": 0,
                       "ts": us(launched)})
    events.append({"name": "thread_name", "ph": "M", "pid": 0, "tid": 0,
                   "args": {"name": "main (backward)"}})
    events.append({"name": "thread_name", "ph": "M", "pid": 0, "tid": 1,
                   "args": {"name": "ddp comm thread"}})
    with open(path, "w") as f:
        json.dump({"traceEvents": events}, f)


def main(args) -> None:
    dist.init_process_group()
    rank, size = dist.get_rank(), dist.get_world_size()
    if rank == 0:
        params = sum(p.numel() for p in make_model(args.width, args.layers).parameters())
        print(f"{dist.get_backend()} x{size}: MLP {args.layers}x{args.width} "
              f"({params * 4 / 2**20:.1f} MiB of float32 grads), batch {args.batch}/rank, "
              f"median of {args.steps} steps")
        print(f"{'cap MiB':>8} {'buckets':>7} {'step ms':>8} {'bwd ms':>7} {'comm ms':>8} "
              f"{'overlap ms':>10} {'exposed ms':>10}")
    for cap in args.bucket_cap_mb:
        r = measure(args, cap)
        if rank == 0:
            print(f"{cap:>8g} {r['buckets']:>7} {r['step_ms']:>8.1f} {r['backward_ms']:>7.1f} "
                  f"{r['comm_ms']:>8.1f} {r['overlapped_ms']:>10.1f} {r['exposed_ms']:>10.1f}")
            if args.trace:
                chrome_trace(r["timeline"], args.trace.replace(".json", f"_cap{cap:g}.json"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--bucket-cap-mb", type=float, nargs="+", default=[1000, 25, 4, 1])
    parser.add_argument("--threads", type=int, default=0, help="simulate N ranks as threads")
    parser.add_argument("--trace", default="", help="write Chrome traces (rank 0) to this path")
    arguments = parser.parse_args()
    if arguments.threads:
        dist.spawn(main, arguments.threads, args=(arguments,))
    else:
        main(arguments)
