"""Per-layer convolution timings, ddp against torch CPU eager (forward + backward).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_conv_layers.py [--repeat 15]

Each layer shape of the ResNet-18 (CIFAR, width 64, batch 16) and of the MNIST CNN (batch 64)
runs ``y = conv(x); y.backward(g)`` in ddp and in torch, alternated, medians in milliseconds;
``count`` is how many times the shape occurs in the model (its weight in the step).
``--cpu-time`` measures CPU time instead of wall time: steadier on a shared machine, meaningful
at one thread only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

# (name, count, batch, cin, cout, size, kernel, stride, padding, bias, input needs grad)
LAYERS = [
    ("cnn.conv1", 1, 64, 1, 32, 28, 3, 1, 0, True, False),
    ("cnn.conv2", 1, 64, 32, 64, 26, 3, 1, 0, True, True),
    ("res.stem", 1, 16, 3, 64, 32, 3, 1, 1, False, False),
    ("res.l1", 4, 16, 64, 64, 32, 3, 1, 1, False, True),
    ("res.l2.down", 1, 16, 64, 128, 32, 3, 2, 1, False, True),
    ("res.l2", 3, 16, 128, 128, 16, 3, 1, 1, False, True),
    ("res.l2.sc", 1, 16, 64, 128, 32, 1, 2, 0, False, True),
    ("res.l3.down", 1, 16, 128, 256, 16, 3, 2, 1, False, True),
    ("res.l3", 3, 16, 256, 256, 8, 3, 1, 1, False, True),
    ("res.l3.sc", 1, 16, 128, 256, 16, 1, 2, 0, False, True),
    ("res.l4.down", 1, 16, 256, 512, 8, 3, 2, 1, False, True),
    ("res.l4", 3, 16, 512, 512, 4, 3, 1, 1, False, True),
    ("res.l4.sc", 1, 16, 256, 512, 8, 1, 2, 0, False, True),
]


def _timed(fn, repeat, clock=time.perf_counter):
    fn()
    times = []
    for _ in range(repeat):
        start = clock()
        fn()
        times.append(clock() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--cpu-time", action="store_true",
                        help="time with the process's CPU time (a loaded machine, 1 thread)")
    args = parser.parse_args()
    import torch

    import ddp

    clock = time.process_time if args.cpu_time else time.perf_counter
    threads = int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))
    torch.set_num_threads(threads)
    print(f"threads: {threads}")
    print(f"{'layer':12} {'n':>2} {'torch ms':>9} {'ddp ms':>9} {'ratio':>6}")
    total_t = total_d = 0.0
    rng = np.random.default_rng(0)
    for name, count, n, cin, cout, size, k, s, p, bias, grad_in in LAYERS:
        if args.only and name not in args.only:
            continue
        x = rng.standard_normal((n, cin, size, size), dtype=np.float32)
        w = rng.standard_normal((cout, cin, k, k), dtype=np.float32) * 0.1
        out_size = (size + 2 * p - k) // s + 1
        g = rng.standard_normal((n, cout, out_size, out_size), dtype=np.float32)
        pair = []
        for lib in (torch, ddp):
            tx = lib.from_numpy(x.copy()).requires_grad_(grad_in)
            tw = lib.from_numpy(w.copy()).requires_grad_(True)
            tb = lib.zeros(cout).requires_grad_(True) if bias else None
            tg = lib.from_numpy(g)

            def step(lib=lib, tx=tx, tw=tw, tb=tb, tg=tg, s=s, p=p):
                y = lib.nn.functional.conv2d(tx, tw, tb, stride=s, padding=p)
                y.backward(tg)

            pair.append(step)
        t_times, d_times = [], []
        for _ in range(3):
            t_times += _timed(pair[0], args.repeat // 3 + 1, clock)
            d_times += _timed(pair[1], args.repeat // 3 + 1, clock)
        t, d = 1e3 * statistics.median(t_times), 1e3 * statistics.median(d_times)
        total_t += count * t
        total_d += count * d
        print(f"{name:12} {count:2d} {t:9.2f} {d:9.2f} {d / t:6.2f}", flush=True)
    print(f"{'weighted':12} {'':2} {total_t:9.2f} {total_d:9.2f} {total_d / total_t:6.2f}")


if __name__ == "__main__":
    main()
