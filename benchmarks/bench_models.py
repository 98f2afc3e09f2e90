"""Single-process training step: ddp against torch CPU eager, same weights and data.

    .venv/bin/python benchmarks/bench_models.py [--models mlp cnn gpt resnet] [--steps 20]

(the BatchNorm ResNet-18 is opt-in: ``--models ... resnet``.)

For each reference model it times ``zero_grad(); loss = f(model(x), y); loss.backward();
opt.step()`` in ddp and in torch (same thread count, interleaved rounds so machine noise hits
both alike), prints the median step times and the ratio ddp/torch (below 1 means ddp is faster).
A hand-written NumPy MLP step is also timed: it is the floor this engine can reach.

``import ddp`` comes before NumPy here, as in a script that starts ``import ddp as torch``:
it sets ``OPENBLAS_THREAD_TIMEOUT`` before OpenBLAS loads (docs/configuration.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import ddp  # before NumPy, as in a user's script: sets OpenBLAS's spin time

# isort: split
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import models  # noqa: E402


def numpy_mlp_step(params, x, y, lr=0.01, momentum=0.9, state=None):
    """One SGD-momentum step of the 784-1024-1024-10 ReLU MLP by hand: the floor for the engine."""
    w1, b1, w2, b2, w3, b3 = params
    h1 = x @ w1.T + b1
    a1 = np.maximum(h1, 0)
    h2 = a1 @ w2.T + b2
    a2 = np.maximum(h2, 0)
    logits = a2 @ w3.T + b3
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    probs = exp / exp.sum(axis=1, keepdims=True)
    n = len(y)
    probs[np.arange(n), y] -= 1
    g = probs / n
    grads = [None] * 6
    grads[4] = g.T @ a2
    grads[5] = g.sum(0)
    g = (g @ w3) * (h2 > 0)
    grads[2] = g.T @ a1
    grads[3] = g.sum(0)
    g = (g @ w2) * (h1 > 0)
    grads[0] = g.T @ x
    grads[1] = g.sum(0)
    for p, grad, buf in zip(params, grads, state, strict=True):
        buf *= momentum
        buf += grad
        p -= lr * buf


def time_steps(step, steps: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def bench(name: str, steps: int, rounds: int) -> dict:
    import torch

    batch_size = models.DEFAULT_BATCH[name]
    torch.manual_seed(0)
    torch_model = models.BUILDERS[name](torch)
    ddp_model = models.BUILDERS[name](ddp)
    models.copy_weights(torch_model, ddp_model)
    x_np, y_np = models.batch(name, batch_size)
    tx, ty = torch.from_numpy(x_np), torch.from_numpy(y_np)
    dx, dy = ddp.from_numpy(x_np), ddp.from_numpy(y_np)
    t_opt = models.make_optimizer(torch, name, torch_model.parameters())
    d_opt = models.make_optimizer(ddp, name, ddp_model.parameters())

    def torch_step():
        t_opt.zero_grad()
        loss = models.loss_fn(torch, torch_model(tx), ty)
        loss.backward()
        t_opt.step()

    def ddp_step():
        d_opt.zero_grad()
        loss = models.loss_fn(ddp, ddp_model(dx), dy)
        loss.backward()
        d_opt.step()

    t_times, d_times, n_times = [], [], []
    numpy_step = None
    if name == "mlp":
        params = [p.detach().numpy().copy() for p in torch_model.parameters()]
        state = [np.zeros_like(p) for p in params]

        def numpy_step():
            numpy_mlp_step(params, x_np, y_np, state=state)

    for _ in range(rounds):
        t_times += time_steps(torch_step, steps)
        d_times += time_steps(ddp_step, steps)
        if numpy_step is not None:
            n_times += time_steps(numpy_step, steps)
    result = {"model": name, "batch": batch_size, "torch_ms": 1e3 * statistics.median(t_times),
              "ddp_ms": 1e3 * statistics.median(d_times)}
    result["ratio"] = result["ddp_ms"] / result["torch_ms"]
    if n_times:
        result["numpy_ms"] = 1e3 * statistics.median(n_times)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn", "gpt"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import torch

    threads = int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))
    torch.set_num_threads(threads)
    print(f"threads: {threads}  numpy {np.__version__}  torch {torch.__version__}")
    print(f"{'model':6} {'batch':>5} {'torch ms':>9} {'ddp ms':>9} {'ratio':>6} {'numpy ms':>9}")
    for name in args.models:
        r = bench(name, args.steps, args.rounds)
        numpy_ms = f"{r['numpy_ms']:9.2f}" if "numpy_ms" in r else f"{'-':>9}"
        print(f"{r['model']:6} {r['batch']:5d} {r['torch_ms']:9.2f} {r['ddp_ms']:9.2f} "
              f"{r['ratio']:6.2f} {numpy_ms}", flush=True)


if __name__ == "__main__":
    main()
