"""The ResNet-18 step's BatchNorm and SGD pieces: ddp against torch CPU eager, same threads.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_resnet_ops.py [--rounds 3]

Times BatchNorm2d training forward + backward at the four stage shapes of ``models.resnet``
(batch 16, width 64, 32x32 input) and one ``SGD(lr=0.05, momentum=0.9, weight_decay=5e-4)``
step over the ResNet-18's 11.2M parameters, ddp and torch in alternating rounds; prints the
best round's median per op and the ratio ddp/torch (below 1: ddp faster).
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

SHAPES = [(16, 64, 32, 32), (16, 128, 16, 16), (16, 256, 8, 8), (16, 512, 4, 4)]


def median_ms(fn, repeats: int = 15, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def batch_norm_step(lib, shape):
    rng = np.random.default_rng(0)
    layer = lib.nn.BatchNorm2d(shape[1])
    x = lib.tensor(rng.standard_normal(shape, dtype=np.float32), requires_grad=True)
    g = lib.tensor(rng.standard_normal(shape, dtype=np.float32))

    def step():
        layer(x).backward(g)

    return step


def sgd_step(lib):
    model = models.resnet(lib)
    rng = np.random.default_rng(0)
    for p in model.parameters():
        p.grad = lib.tensor(rng.standard_normal(tuple(p.shape), dtype=np.float32))
    return models.make_optimizer(lib, "resnet", model.parameters()).step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import torch

    import ddp

    threads = ddp.kernels.parallel.num_threads()
    torch.set_num_threads(threads)
    cases = [(f"batchnorm2d fwd+bwd {shape}", batch_norm_step(ddp, shape),
              batch_norm_step(torch, shape)) for shape in SHAPES]
    cases.append(("sgd step resnet18 (11.2M)", sgd_step(ddp), sgd_step(torch)))
    print(f"threads: {threads}  numpy {np.__version__}  torch {torch.__version__}")
    print(f"{'op':40s} {'torch ms':>9s} {'ddp ms':>9s} {'ratio':>6s}")
    for name, ours, theirs in cases:
        best_ours, best_theirs = [], []
        for _ in range(args.rounds):
            best_ours.append(median_ms(ours))
            best_theirs.append(median_ms(theirs))
        d, t = min(best_ours), min(best_theirs)
        print(f"{name:40s} {t:9.3f} {d:9.3f} {d / t:6.2f}")


if __name__ == "__main__":
    main()
