"""An alpha-beta model of DDP's weak-scaling efficiency at 8-64 ranks, from measurements here.

    OMP_NUM_THREADS=1 .venv/bin/mpiexec -n 2 .venv/bin/python benchmarks/allreduce_model.py \\
        --step-ms cnn=190 gpt=950 [--backward-share 0.6]

1. Times an mpi4py ``Allreduce`` of ``n`` bytes (8 B to 16 MiB, medians) between the ranks it
   runs on. A ring all-reduce over ``p`` ranks costs ``T = 2 (p-1) alpha + 2 (p-1)/p * n * beta``:
   ``alpha`` comes from the 8-byte time, ``beta`` from the slope over the sizes >= 256 KiB.
2. Takes DDP's bucket layout of each reference model (``assign_buckets``: 1 MiB first bucket,
   ``--bucket-cap-mb`` cap (DDP's default 25), reverse registration order) and predicts, per
   world size ``p``, the all-reduce time of every bucket,
   ``T_k(p) = 2 (p-1) alpha + 2 (p-1)/p * bytes_k * beta``.
3. Prints the efficiency ``step / (step + exposed communication)`` for two bounds:
   *no overlap* (every bucket after backward: exposed = sum of ``T_k``) and *overlap* (buckets
   all-reduced while the rest of backward runs, one at a time, in order, starting when backward
   has produced them; exposed = what is left after backward ends). ``--step-ms`` is the
   measured step time alone (1 rank, 1 thread), ``--backward-share`` the part of it that is
   backward, during which gradients appear at a uniform rate in bucket order (per byte: a
   simplification; the CNN's 4.5 MiB fc1 gradient really appears early, before the costly
   convolution backward, so its overlap bound is pessimistic).

The fit is for the transport measured here (shared memory on one machine); for a cluster,
pass ``--alpha-us`` and ``--beta-ns-per-byte`` of its network instead.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import models  # noqa: E402

_MB = 1024 * 1024


def measure(reps: int) -> tuple[float, float, list]:
    """Least-squares ``a + b n`` through median all-reduce times; returns (alpha, beta, rows)."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rows = []
    for nbytes in [8, 1024, 64 * 1024, 256 * 1024, _MB, 4 * _MB, 16 * _MB]:
        a = np.ones(max(1, nbytes // 4), dtype=np.float32)
        times = []
        for _ in range(reps + 2):
            comm.Barrier()
            start = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, a)
            times.append(time.perf_counter() - start)
            a[...] = 1
        rows.append((a.nbytes, statistics.median(times[2:])))
    # Latency from the smallest message (a least-squares intercept through all sizes is
    # dominated by the large ones); bandwidth from the slope over the sizes of >= 256 KiB.
    size = comm.Get_size()
    alpha = rows[0][1] / (2 * (size - 1))
    large = [(n, t) for n, t in rows if n >= 256 * 1024]
    slope = np.polyfit([n for n, _ in large], [t for _, t in large], 1)[0]
    beta = slope / (2 * (size - 1) / size)
    return alpha, beta, rows


def bucket_bytes(name: str, cap_mb: float) -> list[int]:
    import ddp
    from ddp.distributed.grad_sync import assign_buckets

    ddp.manual_seed(0)
    arrays = [p.array for p in models.BUILDERS[name](ddp).parameters() if p.requires_grad]
    cap = int(cap_mb * _MB)
    return [sum(arrays[i].nbytes for i in b)
            for b in assign_buckets(arrays, cap, min(cap, _MB))]


def efficiency(step: float, backward: float, buckets: list[int], p: int, alpha: float,
               beta: float) -> tuple[float, float]:
    """(no overlap, overlap) efficiency of a step of ``step`` s at ``p`` ranks."""
    cost = [2 * (p - 1) * alpha + 2 * (p - 1) / p * nbytes * beta for nbytes in buckets]
    no_overlap = step / (step + sum(cost))
    total = sum(buckets)
    ready, clock, produced = step - backward, step - backward, 0
    for nbytes, c in zip(buckets, cost, strict=True):
        produced += nbytes
        ready = step - backward + backward * produced / total  # bucket filled
        clock = max(clock, ready) + c
    exposed = max(0.0, clock - step)
    return no_overlap, step / (step + exposed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step-ms", nargs="+", default=["cnn=190", "gpt=950"],
                        help="model=milliseconds of one step alone (1 rank, 1 thread)")
    parser.add_argument("--backward-share", type=float, default=0.6)
    parser.add_argument("--bucket-cap-mb", type=float, default=25.0, help="DDP's bucket_cap_mb")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--alpha-us", type=float, help="use this alpha instead of measuring")
    parser.add_argument("--beta-ns-per-byte", type=float, help="use this beta (with --alpha-us)")
    args = parser.parse_args()

    if args.alpha_us is not None and args.beta_ns_per_byte is not None:
        alpha, beta, rows, rank = args.alpha_us * 1e-6, args.beta_ns_per_byte * 1e-9, [], 0
    else:
        from mpi4py import MPI

        alpha, beta, rows = measure(args.reps)
        rank = MPI.COMM_WORLD.Get_rank()
    if rank:
        return
    for nbytes, t in rows:
        print(f"  allreduce {nbytes:>9d} B: {t * 1e6:9.1f} us")
    print(f"alpha = {alpha * 1e6:.1f} us, beta = {beta * 1e9:.3f} ns/B "
          f"({1 / beta / 1e9:.2f} GB/s)")
    worlds = [2, 4, 8, 16, 32, 64]
    print(f"{'model':5} {'step ms':>7} {'grad MiB':>8} {'buckets':>7} | " +
          " ".join(f"{'p=' + str(p):>11}" for p in worlds) + "   (no overlap / overlap)")
    for item in args.step_ms:
        name, ms = item.split("=")
        step = float(ms) / 1e3
        buckets = bucket_bytes(name, args.bucket_cap_mb)
        cells = []
        for p in worlds:
            lo, hi = efficiency(step, args.backward_share * step, buckets, p, alpha, beta)
            cells.append(f"{lo:.2f} / {hi:.2f}")
        print(f"{name:5} {float(ms):7.0f} {sum(buckets) / _MB:8.2f} {len(buckets):7d} | " +
              " ".join(f"{c:>11}" for c in cells))


if __name__ == "__main__":
    main()
