"""Data parallelism on 2 ranks: ddp over MPI against torch DDP over gloo, same models, same run.

    .venv/bin/python benchmarks/bench_distributed.py [--models mlp cnn gpt resnet] [--rounds 2]
    .venv/bin/python benchmarks/bench_distributed.py --comm-hooks [plain fp16 powersgd1 ...]

One BLAS thread per rank (OMP_NUM_THREADS=1, OPENBLAS_NUM_THREADS=1, torch.set_num_threads(1)),
the reference models of ``models.py`` at their per-rank batch (MLP 256 SGD-momentum, MNIST
CNN 64 Adam, GPT 16 AdamW; the BatchNorm ResNet-18, 16 SGD-momentum, with ``--models ...
resnet``: opt-in, as in ``bench_models.py``, since it is the slowest). Each round launches,
one after the other:

* ddp, 2 ranks: ``mpiexec -n 2 python _dist_worker.py --lib ddp`` (DistributedDataParallel);
* torch, 2 ranks: two processes with RANK/WORLD_SIZE/MASTER_ADDR=127.0.0.1 and a free port,
  ``torch.nn.parallel.DistributedDataParallel`` over gloo on loopback;
* ddp and torch alone: one plain process each, the undistributed model (the scaling baseline);
* with ``--extra-worlds 3 4``: ddp at those world sizes too (a weak-scaling table).

Rounds interleave the four so machine noise hits all alike; the table shows median step times
over all rounds, the ratio ddp/torch at 2 ranks, and weak-scaling efficiency (step time alone /
step time at 2 ranks, same per-rank batch, each framework against itself). The last line times
DDP's gradient synchronisation of the MLP's gradients (``GradSyncScheduler.sync_now``: buckets,
all-reduce, averaging, write-back) against a raw mpi4py ``Allreduce`` of the same bytes, and
the table after it the end-to-end sync of ``--sync-sizes`` MiB of gradients (backward finished
to every ``.grad`` averaged, with and without ``gradient_as_bucket_view``) against raw
``Allreduce`` of the same bytes started the same way, and of the very gradients backward
just wrote, plus backward + sync less a plain backward (``_dist_worker.time_sync_sizes``).
``--sync-only`` runs just those timings (at ``--sync-world`` ranks, default 2).

``--comm-hooks``: instead, ddp on 2 ranks once per DDP communication hook (plain, fp16, bf16,
PowerSGD of rank 1, 2, 4, compressing from the first timed step): the bytes per step handed to
the process group's collectives (exact, ``ddp.distributed.traffic.count_traffic``, payload) and the
median step time, each beside plain DDP.
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


def run_worker(lib: str, world: int, args, out: str, sync: int = 0, hook: str = "plain") -> dict:
    common = [WORKER, "--lib", lib, "--world", str(world), "--models", *args.models,
              "--steps", json.dumps(args.steps), "--warmup", str(args.warmup),
              "--ddp-kwargs", json.dumps(args.ddp_kwargs), "--sync", str(sync), "--out", out,
              "--comm-hook", hook]
    if sync and args.sync_sizes:
        common += ["--sync-sizes", *map(str, args.sync_sizes)]
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
    parser.add_argument("--sync-sizes", type=float, nargs="*", default=[1, 4, 16],
                        help="MiB of gradients for the end-to-end sync table (none: skip it)")
    parser.add_argument("--sync-only", action="store_true",
                        help="only the gradient-sync timings (no model steps)")
    parser.add_argument("--sync-world", type=int, default=2,
                        help="ranks of the gradient-sync timings (with --sync-only; else 2)")
    parser.add_argument("--no-single", action="store_true", help="skip the world-1 runs")
    parser.add_argument("--extra-worlds", type=int, nargs="*", default=[],
                        help="also run ddp alone at these world sizes (weak scaling; more "
                             "ranks than cores oversubscribes them)")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--comm-hooks", nargs="*", default=None,
                        help="instead of the torch comparison: ddp x2 with each communication "
                             "hook (default: plain fp16 powersgd1 powersgd2 powersgd4), bytes "
                             "and step time per step")
    args = parser.parse_args()
    args.steps = {**DEFAULT_STEPS, **args.steps}
    if args.comm_hooks is not None:
        compare_hooks(args, args.comm_hooks or ["plain", "fp16", "bf16", "powersgd1", "powersgd2",
                                                "powersgd4"])
        return

    if args.sync_only:
        args.models, args.no_single = [], True
    sync_world = args.sync_world if args.sync_only else 2
    configs = [("ddp", sync_world)] if args.sync_only else [("ddp", 2), ("torch", 2)]
    if not args.no_single:
        configs += [("ddp", 1), ("torch", 1)]
    configs += [("ddp", w) for w in args.extra_worlds if w not in (1, 2)]
    times: dict = {(lib, world, m): [] for lib, world in configs for m in args.models}
    sync: dict = {"ddp": [], "raw": [], "transport": []}
    sizes: dict = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            for lib, world in configs:
                out = os.path.join(tmp, f"{lib}{world}_{rnd}.json")
                reps = args.sync_reps if (lib, world) == ("ddp", sync_world) else 0
                result = run_worker(lib, world, args, out, sync=reps)
                for m, values in result["steps"].items():
                    times[(lib, world, m)] += values
                if "sync" in result:
                    sync["ddp"] += result["sync"]["ddp"]
                    sync["raw"] += result["sync"]["raw"]
                    sync["transport"] += result["sync"]["transport"]
                    sync["bytes"] = result["sync"]["bytes"]
                for mib, entry in result.get("sync_sizes", {}).items():
                    into = sizes.setdefault(mib, {"bytes": entry["bytes"]})
                    for key, values in entry.items():
                        if key != "bytes":
                            into[key] = into.get(key, []) + values

    print(f"2 ranks, 1 BLAS thread each; {args.rounds} interleaved rounds, median step times "
          f"(spread = interquartile range / median); ddp kwargs {args.ddp_kwargs or 'default'}; "
          f"{time.perf_counter() - started:.0f} s")
    header = (f"{'model':5} {'batch':>5} | {'ddp x2 ms':>9} {'torch x2 ms':>11} {'ratio':>5} | "
              f"{'ddp x1 ms':>9} {'torch x1 ms':>11} | {'ddp eff':>7} {'torch eff':>9} | spread")
    if args.models:
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
        row += " ".join(spread(times[(lib, w, m)]) for lib, w in configs if w <= 2)
        print(row)
    extra = [w for lib, w in configs if w > 2]
    if extra and args.models and not args.no_single:
        cores = os.cpu_count() or 1
        print(f"ddp weak scaling (same per-rank batch; efficiency = step alone / step at N "
              f"ranks; {cores} cores, so N > {cores} is oversubscribed)")
        for m in args.models:
            d1 = median_ms(times[("ddp", 1, m)])
            cells = [f"x{w} {median_ms(times[('ddp', w, m)]):8.1f} ms eff "
                     f"{d1 / median_ms(times[('ddp', w, m)]):.2f}" for w in [2, *extra]]
            print(f"  {m:5} x1 {d1:8.1f} ms | " + " | ".join(cells))
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
    if sizes:
        print_sync_sizes(sizes, sync_world)


def print_sync_sizes(sizes: dict, world: int = 2) -> None:
    """The end-to-end sync table (``_dist_worker.time_sync_sizes`` says what each column is)."""
    print(f"end-to-end gradient sync, {world} ranks, comm_mode='sync' (all-reduce after backward); "
          "medians; bandwidth ratio = raw time / DDP time")
    print(f"{'MiB':>6} | {'raw after bwd':>13} {'e2e view':>13} {'e2e copy':>13} | "
          f"{'raw grads':>9} {'e2e view':>13} | {'raw':>6} {'sync_now view':>13} "
          f"{'sync_now copy':>13} | {'bwd':>6} {'in-bwd view':>13} {'in-bwd copy':>13}")
    for entry in sizes.values():
        med = {k: median_ms(v) for k, v in entry.items() if k != "bytes"}
        for name in ("view", "copy"):  # all sync costs: the step less the plain backward
            med[f"cost_{name}"] = med[f"step_{name}"] - med["bwd_plain"]

        def cell(key: str, base: str, med=med) -> str:
            return f"{med[key]:6.2f} ({med[base] / med[key]:.2f})"

        print(f"{entry['bytes'] / 2**20:6.2f} | {med['raw_after']:10.2f} ms "
              f"{cell('e2e_view', 'raw_after')} {cell('e2e_copy', 'raw_after')} | "
              f"{med['raw_grads']:9.2f} {cell('e2e_view', 'raw_grads')} | "
              f"{med['raw']:6.2f} {cell('sync_now_view', 'raw')} "
              f"{cell('sync_now_copy', 'raw')} | {med['bwd_plain']:6.2f} "
              f"{cell('cost_view', 'raw_after')} {cell('cost_copy', 'raw_after')}")
    print("raw grads: raw Allreduce of the gradients a backward just wrote (same cache state "
          "as DDP's); in-bwd: backward + sync less the plain backward (everything syncing "
          "costs, the work in backward's hooks included), against raw after bwd")


def compare_hooks(args, hooks: list[str]) -> None:
    """ddp on 2 ranks with each hook, interleaved rounds: bytes per step (exact: the payload
    rank 0 handed to the process group's collectives, ``count_traffic``) and median step
    time, both beside plain DDP."""
    times = {(h, m): [] for h in hooks for m in args.models}
    sent: dict = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            for hook in hooks:
                out = os.path.join(tmp, f"{hook}_{rnd}.json")
                result = run_worker("ddp", 2, args, out, hook=hook)
                for m in args.models:
                    times[(hook, m)] += result["steps"][m]
                    sent[(hook, m)] = sorted(set(result["bytes"][m]))
    print(f"ddp x2 (MPI), 1 BLAS thread each, per communication hook; {args.rounds} "
          f"interleaved rounds, median step times; {time.perf_counter() - started:.0f} s")
    header = (f"{'model':5} {'hook':9} | {'bytes/step':>12} {'vs plain':>8} | "
              f"{'step ms':>8} {'vs plain':>8} | spread")
    print(header)
    print("-" * len(header))
    for m in args.models:
        base_t = median_ms(times[(hooks[0], m)])
        base_b = sent[(hooks[0], m)][0]
        for hook in hooks:
            b = sent[(hook, m)]
            t = median_ms(times[(hook, m)])
            note = "" if len(b) == 1 else f" (varies: {b})"
            print(f"{m:5} {hook:9} | {b[0]:12d} {b[0] / base_b:8.3f} | {t:8.1f} "
                  f"{t / base_t:8.2f} | {spread(times[(hook, m)])}{note}")


def models_batch(name: str) -> int:
    sys.path.insert(0, HERE)
    import models

    return models.DEFAULT_BATCH[name]


if __name__ == "__main__":
    main()
