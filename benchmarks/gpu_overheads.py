"""Where a small GPU step's time goes: per-call host cost of CuPy and torch primitives, ddp's
per-op cost, a forward/backward/step split of the GPT step, and large GEMMs in both libraries.

A diagnostic for tuning (its numbers feed docs/gpu.md), not a pass/fail check:

    PYTHONPATH=$PWD python3 benchmarks/gpu_overheads.py
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def per_call_us(fn, sync, n: int = 200) -> float:
    """Host microseconds per call of ``fn`` when queued back to back (sync at the end)."""
    for _ in range(10):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    return 1e6 * (time.perf_counter() - start) / n


def primitives() -> None:
    import cupy as cp
    import torch

    import ddp

    sync = cp.cuda.Device().synchronize
    a, b = cp.ones((64, 256), cp.float32), cp.ones((64, 256), cp.float32)
    w = cp.ones((256, 256), cp.float32)
    ta, tb, tw = (torch.ones(64, 256, device="cuda"), torch.ones(64, 256, device="cuda"),
                  torch.ones(256, 256, device="cuda"))
    da, db = ddp.ones(64, 256, device="cuda"), ddp.ones(64, 256, device="cuda")
    dw = ddp.ones(256, 256, device="cuda", requires_grad=True)
    ek = cp.ElementwiseKernel("T x, T y", "T z", "z = x + y", "ddp_probe_add")
    rk = cp.RawKernel(r'extern "C" __global__ void probe(float* x) {}', "probe")
    rows = [
        ("cupy a + b", lambda: a + b),
        ("torch a + b", lambda: ta + tb),
        ("ddp a + b (no grad)", lambda: da + db),
        ("cupy a * 2.0", lambda: a * 2.0),
        ("cupy a.sum(axis=0)", lambda: a.sum(axis=0)),
        ("torch a.sum(0)", lambda: ta.sum(0)),
        ("cupy a @ w", lambda: a @ w),
        ("torch a @ w", lambda: ta @ tw),
        ("ddp linear fwd (grad)", lambda: ddp.nn.functional.linear(da, dw)),
        ("cupy ElementwiseKernel", lambda: ek(a, b)),
        ("cupy RawKernel launch", lambda: rk((1,), (32,), (a,))),
        ("cupy asarray(2.0) (H2D)", lambda: cp.asarray(2.0)),
        ("cupy empty_like", lambda: cp.empty_like(a)),
        ("cupy where(m, a, b)", lambda: cp.where(a > 0, a, b)),
        ("cupy exp(a)", lambda: cp.exp(a)),
        ("cupy a.max(axis=1)", lambda: a.max(axis=1, keepdims=True)),
    ]
    print("per-call host cost, queued back to back (microseconds):")
    for name, fn in rows:
        print(f"  {name:28s} {per_call_us(fn, sync):7.1f}")
    sync_rows = [("cupy float(a.sum()) (D2H sync)", lambda: float(a.sum())),
                 ("torch float(a.sum())", lambda: float(ta.sum()))]
    for name, fn in sync_rows:
        print(f"  {name:28s} {per_call_us(fn, sync, 50):7.1f}")


def step_split() -> None:
    for name in ("gpt", "mlp4096"):
        _split(name)


def _split(name: str) -> None:
    import models
    import torch
    from bench_gpu import _setup

    import ddp

    print(f"{name} step split (ms; each phase synced):")
    build, (x_np, y_np), opt_name = _setup(name)
    for lib, sync in ((torch, torch.cuda.synchronize), (ddp, ddp.cuda.synchronize)):
        torch.manual_seed(0)
        model = build(lib).cuda()
        x, y = lib.tensor(x_np, device="cuda"), lib.tensor(y_np, device="cuda")
        opt = models.make_optimizer(lib, opt_name, model.parameters())
        phases = {"forward": 0.0, "backward": 0.0, "step": 0.0}
        for i in range(13):
            opt.zero_grad()
            sync()
            t0 = time.perf_counter()
            loss = models.loss_fn(lib, model(x), y)
            sync()
            t1 = time.perf_counter()
            loss.backward()
            sync()
            t2 = time.perf_counter()
            opt.step()
            sync()
            t3 = time.perf_counter()
            if i >= 3:
                phases["forward"] += (t1 - t0) / 10
                phases["backward"] += (t2 - t1) / 10
                phases["step"] += (t3 - t2) / 10
        print(f"  {lib.__name__:6s} " + "  ".join(f"{k} {1e3 * v:6.2f}" for k, v in phases.items()))


def column_sums() -> None:
    import cupy as cp
    import torch

    from ddp import kernels

    print("bias gradient, sum over rows (ms):")
    for shape in ((8192, 256), (8192, 768), (4096, 4096)):
        x = cp.random.standard_normal(shape, dtype=cp.float32)
        tx = torch.as_tensor(x, device="cuda")
        sync = cp.cuda.Device().synchronize
        a = per_call_us(lambda x=x: x.sum(axis=0), sync, 50) / 1e3
        b = per_call_us(lambda x=x: kernels.column_sums(x), sync, 50) / 1e3
        c = per_call_us(lambda tx=tx: tx.sum(0), torch.cuda.synchronize, 50) / 1e3
        print(f"  {shape}: cupy sum(axis=0) {a:6.3f}  ones @ x {b:6.3f}  torch sum(0) "
              f"{c:6.3f}")


def gemms() -> None:
    import cupy as cp
    import torch

    n = 4096
    print(f"{n}^3 float32 GEMM (ms):")
    a, b = cp.random.standard_normal((n, n), dtype=cp.float32), cp.random.standard_normal(
        (n, n), dtype=cp.float32)
    ta, tb = torch.as_tensor(a, device="cuda"), torch.as_tensor(b, device="cuda")
    for name, fc, ft in (("NN", lambda: a @ b, lambda: ta @ tb),
                         ("NT", lambda: a @ b.T, lambda: ta @ tb.T),
                         ("TN", lambda: a.T @ b, lambda: ta.T @ tb)):
        c = per_call_us(fc, cp.cuda.Device().synchronize, 10) / 1e3
        t = per_call_us(ft, torch.cuda.synchronize, 10) / 1e3
        print(f"  {name}: cupy {c:6.2f}  torch {t:6.2f}  ratio {c / t:5.2f}")


if __name__ == "__main__":
    for part in (primitives, column_sums, step_split, gemms):
        try:
            part()
        except Exception as exc:  # a diagnostic: report and go on
            print(f"{part.__name__} failed: {type(exc).__name__}: {exc}")
