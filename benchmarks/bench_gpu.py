"""GPU step time of ddp (CuPy) against torch CUDA eager on the reference models.

Runs the three reference models of ``benchmarks/models.py`` at larger batches and a
compute-bound MLP (width 4096, batch 4096), same weights and batches in both libraries, and
prints the median step time of each and their ratio. Targets: GPT step <= 1.5x torch, MLP 4096
<= 1.1x. Needs CuPy, a GPU and torch with CUDA; no network.

    PYTHONPATH=$PWD python3 benchmarks/bench_gpu.py [--steps 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models  # noqa: E402 - benchmarks/models.py, one source for torch and ddp

BATCH = {"mlp": 4096, "cnn": 256, "gpt": 64, "mlp4096": 4096}
TARGET = {"gpt": 1.5, "mlp4096": 1.1}


def wide_mlp(lib):
    nn = lib.nn
    return nn.Sequential(nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(),
                         nn.Linear(4096, 10))


def _setup(name: str):
    if name == "mlp4096":
        rng = np.random.default_rng(0)
        data = (rng.standard_normal((BATCH[name], 4096), dtype=np.float32),
                rng.integers(0, 10, BATCH[name]))
        return wide_mlp, data, "mlp"
    return models.BUILDERS[name], models.batch(name, BATCH[name]), name


def _time(step, sync, steps: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return times


def bench(name: str, steps: int, rounds: int) -> dict:
    import torch

    import ddp

    build, (x_np, y_np), opt_name = _setup(name)
    torch.manual_seed(0)
    t_model = build(torch)
    d_model = build(ddp)
    models.copy_weights(t_model, d_model)
    t_model.cuda()
    d_model.cuda()
    tx, ty = torch.from_numpy(x_np).cuda(), torch.from_numpy(y_np).cuda()
    dx, dy = ddp.tensor(x_np, device="cuda"), ddp.tensor(y_np, device="cuda")
    t_opt = models.make_optimizer(torch, opt_name, t_model.parameters())
    d_opt = models.make_optimizer(ddp, opt_name, d_model.parameters())

    def torch_step():
        t_opt.zero_grad()
        models.loss_fn(torch, t_model(tx), ty).backward()
        t_opt.step()

    def ddp_step():
        d_opt.zero_grad()
        models.loss_fn(ddp, d_model(dx), dy).backward()
        d_opt.step()

    t_times, d_times = [], []
    for _ in range(rounds):
        t_times += _time(torch_step, torch.cuda.synchronize, steps)
        d_times += _time(ddp_step, ddp.cuda.synchronize, steps)
    with torch.no_grad():
        t_loss = float(models.loss_fn(torch, t_model(tx), ty))
    with ddp.no_grad():
        d_loss = float(models.loss_fn(ddp, d_model(dx), dy))
    result = {"model": name, "batch": BATCH[name],
              "torch_ms": 1e3 * statistics.median(t_times),
              "ddp_ms": 1e3 * statistics.median(d_times),
              "torch_loss_after": t_loss, "ddp_loss_after": d_loss}
    result["ratio"] = result["ddp_ms"] / result["torch_ms"]
    if name in TARGET:
        result["target"] = TARGET[name]
    return result


def profile(name: str, steps: int, path: str) -> None:
    """cProfile ``steps`` ddp training steps of ``name`` (after warm-up); top functions to path."""
    import cProfile
    import io
    import pstats

    import ddp

    build, (x_np, y_np), opt_name = _setup(name)
    model = build(ddp).cuda()
    dx, dy = ddp.tensor(x_np, device="cuda"), ddp.tensor(y_np, device="cuda")
    opt = models.make_optimizer(ddp, opt_name, model.parameters())

    def step():
        opt.zero_grad()
        models.loss_fn(ddp, model(dx), dy).backward()
        opt.step()

    for _ in range(3):
        step()
    ddp.cuda.synchronize()
    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.enable()
    for _ in range(steps):
        step()
    ddp.cuda.synchronize()
    prof.disable()
    wall = (time.perf_counter() - start) / steps
    out = io.StringIO()
    print(f"{name}: {1e3 * wall:.2f} ms/step under cProfile ({steps} steps)", file=out)
    for key in ("tottime", "cumulative"):
        pstats.Stats(prof, stream=out).sort_stats(key).print_stats(45)
    with open(path, "w") as f:
        f.write(out.getvalue())
    print(f"profile of {name} written to {path} ({1e3 * wall:.2f} ms/step under cProfile)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", default="mlp,cnn,gpt,mlp4096")
    parser.add_argument("--profile", metavar="PATH",
                        help="instead of timing, cProfile ddp steps of the first model to PATH")
    args = parser.parse_args()
    import ddp

    if not ddp.cuda.is_available():
        print(f"bench_gpu: no GPU: {ddp.backend.cupy_unavailable_reason()}")
        return 1
    print(f"device: {ddp.cuda.get_device_name()}")
    if args.profile:
        profile(args.models.split(",")[0], args.steps, args.profile)
        return 0
    failed = False
    for name in args.models.split(","):
        try:
            r = bench(name, args.steps, args.rounds)
        except Exception as exc:  # report and go on with the other models
            failed = True
            print(f"{name:8s} FAILED: {type(exc).__name__}: {exc}")
            continue
        target = f" (target <= {r['target']}x)" if "target" in r else ""
        print(f"{name:8s} batch {r['batch']:5d}  torch {r['torch_ms']:8.2f} ms  "
              f"ddp {r['ddp_ms']:8.2f} ms  ratio {r['ratio']:5.2f}x{target}")
        print("  " + json.dumps(r))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
