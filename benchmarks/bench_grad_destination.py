"""What writing gradients straight into their bucket slots saves inside backward, one process.

    .venv/bin/python benchmarks/bench_grad_destination.py [--sizes 4 16 64] [--reps 15]

The model of ``_dist_worker.time_sync_sizes`` (four square float32 ``Linear`` layers holding
``--sizes`` MiB of parameters, a batch of 4 rows). Every parameter gets a grad storage hook
supplying its slot of one flat buffer, as DDP's ``gradient_as_bucket_view`` does; timed, in
alternation within every repetition (so load on a shared machine hits all alike), medians:

* ``direct``: ``zero_grad(set_to_none=True)``, backward: each op writes its weight and bias
  gradient into the slot (``ddp/autograd/grad_destination.py``);
* ``copy``: the same with a no-op tensor hook on every parameter, which sends each gradient
  down the copy path (a fresh array from the op, copied into the slot by ``AccumulateGrad``),
  what every backward did before;
* ``plain``: no storage hooks at all (fresh arrays adopted as ``.grad``, no bucket);
* ``divide``: the in-place division of every slot by the world size that DDP's hook runs
  next at 2 ranks (``view *= 0.5``), alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _dist_worker import _sync_model  # noqa: E402

import ddp  # noqa: E402


def build(mib: float, variant: str):
    ddp.manual_seed(0)
    model = _sync_model(ddp, mib)
    params = list(model.parameters())
    flat = np.zeros(sum(p.numel() for p in params), dtype=np.float32)
    slots, offset = [], 0
    for p in params:
        slots.append(flat[offset:offset + p.numel()].reshape(p.shape))
        offset += p.numel()
        if variant != "plain":
            p.register_grad_storage_hook(lambda t, s=slots[-1]: s)
        if variant == "copy":
            p.register_hook(lambda g: None)
    return model, params, slots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[4, 16, 64])
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args()
    print(f"backward of four Linear layers, batch 4, one process; medians of {args.reps} "
          f"alternated repetitions; load {os.getloadavg()[0]:.1f}")
    print(f"{'MiB':>6} | {'plain ms':>8} {'copy ms':>8} {'direct ms':>9} {'saved':>7} | "
          f"{'divide ms':>9}")
    for mib in args.sizes:
        variants = {v: build(mib, v) for v in ("direct", "copy", "plain")}
        width = variants["direct"][1][0].shape[1]
        x = ddp.from_numpy(np.random.default_rng(0).standard_normal((4, width),
                                                                    dtype=np.float32))
        times: dict = {v: [] for v in (*variants, "divide")}
        for rep in range(args.reps + 2):
            order = list(variants) if rep % 2 == 0 else list(reversed(variants))
            for v in order:
                model, params, _ = variants[v]
                for p in params:
                    p.grad = None
                loss = model(x).sum()
                start = time.perf_counter()
                loss.backward()
                if rep >= 2:
                    times[v].append(time.perf_counter() - start)
            start = time.perf_counter()
            for slot in variants["direct"][2]:
                slot *= 0.5
            if rep >= 2:
                times["divide"].append(time.perf_counter() - start)
        med = {v: 1e3 * statistics.median(t) for v, t in times.items()}
        print(f"{mib:6.1f} | {med['plain']:8.2f} {med['copy']:8.2f} {med['direct']:9.2f} "
              f"{med['copy'] - med['direct']:7.2f} | {med['divide']:9.2f}")


if __name__ == "__main__":
    main()
