"""What of the CUDA support can be checked without a GPU (runs in the CPU suite, not marked gpu).

The fused kernels' NumPy references must equal the composed ops they replace (and torch), device
strings must parse as torch's, and ``import ddp`` must work with CuPy missing.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from _helpers import EPS32, GELU_DDP_FORWARD, GELU_TORCH_FORWARD, assert_within, torch_oracle

import ddp
import ddp.nn.functional as F
from ddp import kernels
from ddp.device import same_device
from ddp.kernels import reference
from ddp.optim import _functional

torch = torch_oracle()


def _rng(seed=0):
    return np.random.default_rng(seed)


# ------------------------------------------------------------------------------------ devices
def test_device_parsing_matches_torch():
    for spec in ("cpu", "cuda", "cuda:0", "cuda:3"):
        ours, theirs = ddp.device(spec), torch.device(spec)
        assert (ours.type, ours.index, str(ours)) == (theirs.type, theirs.index, str(theirs))
    assert ddp.device("cuda", 2) == "cuda:2"
    assert ddp.device(ddp.device("cuda:1")).index == 1
    with pytest.raises(RuntimeError, match="'tpu'"):
        ddp.device("tpu")


def test_same_device_distinguishes_gpus():
    assert same_device(ddp.device("cuda:0"), ddp.device("cuda:0"))
    assert not same_device(ddp.device("cuda:0"), ddp.device("cuda:1"))
    assert not same_device(ddp.device("cpu"), ddp.device("cuda:0"))
    assert same_device(ddp.device("cpu"), ddp.device("cpu"))


def test_cuda_calls_without_gpu_are_harmless_or_explain_why():
    if ddp.cuda.is_available():
        pytest.skip("a GPU is present; tests/gpu covers this")
    assert ddp.cuda.device_count() == 0
    ddp.cuda.manual_seed(0)  # no-op without CUDA, as torch
    ddp.cuda.manual_seed_all(0)
    ddp.cuda.empty_cache()
    reason = ddp.backend.cupy_unavailable_reason()
    assert reason
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        ddp.cuda.current_device()
    with pytest.raises(RuntimeError, match="cannot move a tensor to cuda"):
        ddp.zeros(2, device="cuda")
    with pytest.raises(RuntimeError, match="cannot move a tensor to cuda:0"):
        ddp.ones(2).to("cuda:0")
    with pytest.raises(RuntimeError, match="needs CuPy"):
        from ddp.distributed.nccl_backend import nccl_module

        nccl_module()


_NO_CUPY = textwrap.dedent("""
    import sys
    sys.modules["cupy"] = None  # any `import cupy` now raises ImportError
    import ddp
    import ddp.distributed as dist
    assert not ddp.cuda.is_available() and ddp.cuda.device_count() == 0
    assert "CuPy is not importable" in ddp.backend.cupy_unavailable_reason()
    x = ddp.ones(3, requires_grad=True)
    (x * 2).sum().backward()
    assert x.grad.tolist() == [2.0, 2.0, 2.0] and x.cpu() is x and x.to("cpu") is x
    try:
        x.cuda()
    except RuntimeError as exc:
        assert "CuPy is not importable" in str(exc), exc
    else:
        raise AssertionError("cuda() without CuPy must raise")
    dist.init_process_group("nccl")  # no GPU: falls back to a CPU backend
    assert dist.get_backend() == "local", dist.get_backend()
    dist.destroy_process_group()
    print("ok")
""")


def test_import_ddp_without_cupy_in_a_subprocess():
    env_free = {k: v for k, v in __import__("os").environ.items()
                if k not in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")}
    proc = subprocess.run([sys.executable, "-c", _NO_CUPY], capture_output=True, text=True,
                          timeout=120, env=env_free)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


# ------------------------------------------------------------------------------ kernel dispatch
def test_dispatch_picks_the_reference_for_numpy_arrays():
    assert kernels._impl(np.zeros(3, np.float32)) is reference
    assert kernels._impl(np.zeros(3, np.float16)) is reference


@pytest.mark.parametrize("wd,decoupled,maximize", [(0.0, False, False), (0.1, False, False),
                                                    (0.1, True, False), (0.05, True, True),
                                                    (0.05, False, True)])
def test_adam_reference_equals_functional_adam_and_torch(wd, decoupled, maximize):
    rng = _rng(1)
    p0 = rng.standard_normal((5, 7), dtype=np.float32)
    grads = [rng.standard_normal((5, 7), dtype=np.float32) for _ in range(3)]
    hyper = dict(lr=1e-2, beta1=0.8, beta2=0.95, eps=1e-6, weight_decay=wd)
    p_ref, m_ref, v_ref = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    p_fun, m_fun, v_fun = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    step_t = np.zeros((), np.float32)
    tp = torch.tensor(p0.copy(), requires_grad=True)
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    topt = cls([tp], lr=1e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=wd, maximize=maximize)
    for step, g in enumerate(grads, start=1):
        kernels.adam_update(p_ref, g, m_ref, v_ref, step=step, decoupled=decoupled,
                            maximize=maximize, **hyper)
        _functional.adam([p_fun], [g], [m_fun], [v_fun], [], [step_t], amsgrad=False,
                         maximize=maximize, decoupled_weight_decay=decoupled, **hyper)
        tp.grad = torch.tensor(g)
        topt.step()
    np.testing.assert_allclose(p_ref, p_fun, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(m_ref, m_fun, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(v_ref, v_fun, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(p_ref, tp.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_reference_equals_composed_op_and_torch(approximate):
    x = _rng(2).standard_normal((4, 33), dtype=np.float32) * 3
    g = _rng(3).standard_normal((4, 33), dtype=np.float32)
    y, saved = kernels.gelu_forward(x, approximate)
    gx = kernels.gelu_backward(g, x, saved, approximate)
    xt = ddp.tensor(x, requires_grad=True)
    out = F.gelu(xt, approximate=approximate)
    out.backward(ddp.tensor(g))
    np.testing.assert_allclose(y, out.detach().numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-6, atol=1e-7)
    tx = torch.tensor(x, requires_grad=True)
    tout = torch.nn.functional.gelu(tx, approximate=approximate)
    tout.backward(torch.tensor(g))
    # each within its float32 bound of the truth (_helpers.GELU_*), on any CPU: at most the sum
    assert_within(y, tout.detach().numpy(),
                  (GELU_DDP_FORWARD + GELU_TORCH_FORWARD) * EPS32 * np.abs(x), "gelu vs torch")
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_reference_equals_composed_op_and_torch(affine):
    rng = _rng(4)
    x = rng.standard_normal((6, 40), dtype=np.float32) * 2 + 1
    g = rng.standard_normal((6, 40), dtype=np.float32)
    w = rng.standard_normal(40, dtype=np.float32) if affine else None
    b = rng.standard_normal(40, dtype=np.float32) if affine else None
    out, xhat, rstd = kernels.layer_norm_forward(x, w, b, 1e-5)
    gx = kernels.layer_norm_backward_input(g, xhat, rstd, w)
    assert rstd.shape == (6, 1)
    xt = ddp.tensor(x, requires_grad=True)
    ours = F.layer_norm(xt, (40,), None if w is None else ddp.tensor(w),
                        None if b is None else ddp.tensor(b), 1e-5)
    ours.backward(ddp.tensor(g))
    np.testing.assert_allclose(out, ours.detach().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-6, atol=1e-6)
    tx = torch.tensor(x, requires_grad=True)
    theirs = torch.nn.functional.layer_norm(tx, (40,), None if w is None else torch.tensor(w),
                                            None if b is None else torch.tensor(b), 1e-5)
    theirs.backward(torch.tensor(g))
    np.testing.assert_allclose(out, theirs.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_softmax_nll_reference_equals_composed_ops_and_torch():
    rng = _rng(5)
    x = rng.standard_normal((9, 13), dtype=np.float32) * 4
    t = rng.integers(0, 13, 9)
    prob, nll = kernels.softmax_nll(x, t)
    xt = ddp.tensor(x)
    np.testing.assert_allclose(prob, ddp.softmax(xt, dim=1).numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(nll, -ddp.log_softmax(xt, dim=1).numpy()[np.arange(9), t],
                               rtol=1e-6, atol=1e-6)
    expected = torch.nn.functional.cross_entropy(torch.tensor(x), torch.tensor(t),
                                                 reduction="none").numpy()
    np.testing.assert_allclose(nll, expected, rtol=1e-5, atol=1e-6)
    assert prob.dtype == nll.dtype == np.float32


def test_mpi_buffer_passes_numpy_arrays_through_and_stages_nothing():
    from ddp.distributed.mpi_backend import _HostStage, _mpi_buffer

    a = np.arange(4.0)
    assert _mpi_buffer(a) is a
    stage = _HostStage(a)
    assert stage.host is a
    stage.commit()  # no copy back for host arrays


def test_default_device_context_and_setter_restore_the_cpu():
    assert ddp.get_default_device() == ddp.device("cpu")
    with ddp.device("cpu") as dev:
        assert ddp.get_default_device() == dev
        assert ddp.zeros(2).device == ddp.device("cpu")
    ddp.set_default_device("cuda:1")
    try:
        assert ddp.get_default_device() == ddp.device("cuda:1")
        if not ddp.cuda.is_available():
            with pytest.raises(RuntimeError, match="cannot move a tensor to cuda:1"):
                ddp.ones(3)
    finally:
        ddp.set_default_device(None)
    assert ddp.get_default_device() == ddp.device("cpu")
    assert ddp.tensor([1.0]).device == ddp.device("cpu")


def test_softmax_reference_equals_torch_over_rows():
    rng = _rng(5)
    x = rng.standard_normal((6, 9)).astype(np.float32) * 4
    g = rng.standard_normal((6, 9)).astype(np.float32)
    y = reference.softmax_forward(x)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.softmax(tx, dim=1)
    ty.backward(torch.tensor(g))
    x64 = x.astype(np.float64)
    e = np.exp(x64 - x64.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    s = (g * p).sum(axis=1, keepdims=True)
    n = x.shape[1]
    # float32 error of p_i = exp(x_i - m) / sum_j exp(x_j - m), relative, in units of EPS32:
    # x_i - m rounds by |x_i - m|/2 (exp turns that into a relative error), the row's largest such
    # error reaches the sum, exp itself is a few ulp (<= 4 in each of the two), the n-term sum of
    # positives rounds by n/2 and the division by 1/2.
    d = np.abs(x64 - x64.max(axis=1, keepdims=True))
    rel = d / 2 + d.max(axis=1, keepdims=True) / 2 + 8 + n / 2
    # backward p * (g - s), s = sum_j g_j p_j: p's error times |g - s|, s's (n terms) times p,
    # and the roundings of the difference and the product
    grad_scale = p * (np.abs(g) + np.abs(s) + (p * np.abs(g)).sum(axis=1, keepdims=True))
    gx = reference.softmax_backward(g, y)
    assert_within(y, p, EPS32 * rel * p, "softmax forward")
    assert_within(gx, p * (g - s), EPS32 * (rel + n) * grad_scale, "softmax backward")
    # the same bounds hold for torch's float32 (measured: a fifth of them), so the two differ by
    # at most twice the bound
    assert_within(y, ty.detach().numpy(), 2 * EPS32 * rel * p, "softmax vs torch")
    assert_within(gx, tx.grad.numpy(), 2 * EPS32 * (rel + n) * grad_scale, "softmax grad vs torch")


def test_device_scalar_cache_keeps_signed_zeros_and_dtypes_apart(monkeypatch):
    import _fake_cupy

    from ddp import backend

    fc = _fake_cupy.module()
    monkeypatch.setattr(backend, "_SCALARS", {})
    pos = backend.scalar_array(fc, 0.0, np.float32)
    neg = backend.scalar_array(fc, -0.0, np.float32)
    assert np.signbit(neg.get()) and not np.signbit(pos.get())
    assert backend.scalar_array(fc, 0.0, np.float32) is pos  # cached
    assert backend.scalar_array(fc, 0.0, np.float64).get().dtype == np.float64
    assert backend.scalar_array(fc, 1, np.int64).get().dtype == np.int64
    assert np.isnan(backend.scalar_array(fc, float("nan"), np.float32).get())
