"""Data parallelism on 2 ranks: ddp over MPI against torch DDP over gloo, same models, same run.

    .venv/bin/python benchmarks/bench_distributed.py [--models mlp cnn gpt resnet] [--rounds 2]

One BLAS thread per rank (OMP_NUM_THREADS=1, OPENBLAS_NUM_THREADS=1, torch.set_num_threads(1)),
the reference models of ``models.py`` at their per-rank batch (MLP 256 SGD-momentum, MNIST
CNN 64 Adam, GPT 16 AdamW; the BatchNorm ResNet-18, 16 SGD-momentum, with ``--models ...
resnet``: opt-in, as in ``bench_models.py``, since it is the slowest). Each round launches,
one after the other:

* ddp, 2 ranks: ``mpiexec -n 2 python _dist_worker.py --lib ddp`` (DistributedDataParallel);
* torch, 2 ranks: two processes with RANK/WORLD_SIZE/MASTER_ADDR=127.0.0.1 and a free port,
  ``torch.nn.parallel.DistributedDataParallel`` over gloo on loopback;
* ddp and torch alone: one plain process each, the undistributed model (the scaling baseline).

Rounds interleave the four so machine noise hits all alike; the table shows median step times
over all rounds, the ratio ddp/torch at 2 ranks, and weak-scaling efficiency (step time alone /
step time at 2 ranks, same per-rank batch, each framework against itself). The last line times
DDP's gradient synchronisation of the MLP's gradients (``GradSyncScheduler.sync_now``: buckets,
all-reduce, averaging, write-back) against a raw mpi4py ``Allreduce`` of the same bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "_dist_worker.py")
BIN = os.path.dirname(sys.executable)
DEFAULT_STEPS = {"mlp": 20, "cnn": 10, "gpt": 4, "resnet": 3}


def single_thread_env() -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               GLOO_SOCKET_IFNAME="lo")
    env.pop("DDP_TIMELINE", None)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_worker(lib: str, world: int, args, out: str, sync: int = 0) -> dict:
    common = [WORKER, "--lib", lib, "--world", str(world), "--models", *args.models,
              "--steps", json.dumps(args.steps), "--warmup", str(args.warmup),
              "--ddp-kwargs", json.dumps(args.ddp_kwargs), "--sync", str(sync), "--out", out]
    env = single_thread_env()
    if lib == "ddp" and world > 1:
        procs = [subprocess.Popen([os.path.join(BIN, "mpiexec"), "-n", str(world),
                                   sys.executable, *common], env=env)]
    elif lib == "torch" and world > 1:
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
                   WORLD_SIZE=str(world))
        procs = [subprocess.Popen([sys.executable, *common],
                                  env={**env, "RANK": str(r), "LOCAL_RANK": str(r)})
                 for r in range(world)]
    else:
        procs = [subprocess.Popen([sys.executable, *common], env=env)]
    codes = [p.wait(timeout=args.timeout) for p in procs]
    if any(codes):
        raise RuntimeError(f"{lib} x{world} failed with exit codes {codes}")
    with open(out) as f:
        return json.load(f)


def median_ms(values: list[float]) -> float:
    return 1e3 * statistics.median(values)


def spread(values: list[float]) -> str:
    """Interquartile range relative to the median: how noisy the measurement was."""
    q = statistics.quantiles(values, n=4) if len(values) >= 4 else [min(values), 0, max(values)]
    return f"{100 * (q[2] - q[0]) / statistics.median(values):.0f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn", "gpt"])
    parser.add_argument("--steps", type=json.loads, default={},
                        help='timed steps per model and launch, JSON: {"mlp": 20, ...} '
                             f'(default {DEFAULT_STEPS}; models not given keep theirs)')
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sync-reps", type=int, default=20)
    parser.add_argument("--ddp-kwargs", type=json.loads, default={},
                        help="extra DistributedDataParallel arguments for ddp, JSON")
    parser.add_argument("--no-single", action="store_true", help="skip the world-1 runs")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    args.steps = {**DEFAULT_STEPS, **args.steps}

    configs = [("ddp", 2), ("torch", 2)]
    if not args.no_single:
        configs += [("ddp", 1), ("torch", 1)]
    times: dict = {(lib, world, m): [] for lib, world in configs for m in args.models}
    sync: dict = {"ddp": [], "raw": [], "transport": []}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            for lib, world in configs:
                out = os.path.join(tmp, f"{lib}{world}_{rnd}.json")
                reps = args.sync_reps if (lib, world) == ("ddp", 2) else 0
                result = run_worker(lib, world, args, out, sync=reps)
                for m, values in result["steps"].items():
                    times[(lib, world, m)] += values
                if "sync" in result:
                    sync["ddp"] += result["sync"]["ddp"]
                    sync["raw"] += result["sync"]["raw"]
                    sync["transport"] += result["sync"]["transport"]
                    sync["bytes"] = result["sync"]["bytes"]

    print(f"2 ranks, 1 BLAS thread each; {args.rounds} interleaved rounds, median step times "
          f"(spread = interquartile range / median); ddp kwargs {args.ddp_kwargs or 'default'}; "
          f"{time.perf_counter() - started:.0f} s")
    header = (f"{'model':5} {'batch':>5} | {'ddp x2 ms':>9} {'torch x2 ms':>11} {'ratio':>5} | "
              f"{'ddp x1 ms':>9} {'torch x1 ms':>11} | {'ddp eff':>7} {'torch eff':>9} | spread")
    print(header)
    print("-" * len(header))
    for m in args.models:
        d2, t2 = median_ms(times[("ddp", 2, m)]), median_ms(times[("torch", 2, m)])
        row = f"{m:5} {models_batch(m):5d} | {d2:9.1f} {t2:11.1f} {d2 / t2:5.2f} | "
        if args.no_single:
            row += f"{'-':>9} {'-':>11} | {'-':>7} {'-':>9} | "
        else:
            d1, t1 = median_ms(times[("ddp", 1, m)]), median_ms(times[("torch", 1, m)])
            row += f"{d1:9.1f} {t1:11.1f} | {d1 / d2:7.2f} {t1 / t2:9.2f} | "
        row += " ".join(spread(times[(lib, w, m)]) for lib, w in configs)
        print(row)
    if sync["ddp"]:
        nbytes = sync["bytes"]
        d, r = median_ms(sync["ddp"]), median_ms(sync["raw"])
        print(f"gradient sync, MLP grads {nbytes / 2**20:.1f} MiB: DDP {d:.2f} ms "
              f"({nbytes / d / 1e6:.2f} GB/s), raw mpi4py Allreduce {r:.2f} ms "
              f"({nbytes / r / 1e6:.2f} GB/s); DDP/raw bandwidth {r / d:.2f} "
              f"(spread {spread(sync['ddp'])} / {spread(sync['raw'])})")
        t = median_ms(sync["transport"])
        print(f"  of which transport (DDP's process group on its flat buffers): {t:.2f} ms; "
              f"transport/raw bandwidth {r / t:.2f}; the rest is copying into buckets, "
              f"averaging and writing back .grad")


def models_batch(name: str) -> int:
    sys.path.insert(0, HERE)
    import models

    return models.DEFAULT_BATCH[name]


if __name__ == "__main__":
    main()
