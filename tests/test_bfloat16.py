"""``ddp.bfloat16``: casts, printing, ``finfo``, float32 compute with bfloat16 rounding, gradients
against float64 finite differences, save/load, and the GPU limitation.

bfloat16 keeps 8 significant bits (7 stored, eps = 2**-7): one rounding to nearest has relative
error at most u = 2**-8. Tolerances below count roundings in units of u.
"""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import torch_oracle

import ddp
from ddp import backend

torch = torch_oracle()
BF16 = ddp.bfloat16.np_dtype
U = 2.0 ** -8  # unit roundoff of bfloat16


def _bits(t) -> np.ndarray:
    return t.array.view(np.uint16) if isinstance(t, ddp.Tensor) else \
        t.view(torch.int16).numpy().view(np.uint16)


def test_dtype_casts_and_printing_follow_torch():
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32) * 100
    x[:4] = [np.inf, -np.inf, 3.0e38, 1e-40]
    ours, ref = ddp.tensor(x).bfloat16(), torch.tensor(x).bfloat16()
    np.testing.assert_array_equal(_bits(ours), _bits(ref))  # round to nearest even, both
    assert ours.dtype == ddp.bfloat16 and ours.dtype.is_floating_point
    assert ours.element_size() == 2 and repr(ddp.bfloat16) == "ddp.bfloat16"
    assert ddp.tensor(x).to(ddp.bfloat16).dtype == ddp.bfloat16
    np.testing.assert_array_equal(ours.float().numpy(), ref.float().numpy())
    assert repr(ddp.tensor([1.5, 2.3]).bfloat16()) == \
        "tensor([1.5000, 2.2969], dtype=ddp.bfloat16)"
    assert ours.type() == "ddp.BFloat16Tensor"
    assert ddp.ones(2, dtype=ddp.bfloat16).requires_grad_().requires_grad


@pytest.mark.parametrize("name", ["bfloat16", "float16", "float32", "float64"])
def test_finfo_matches_torch(name):
    ours, ref = ddp.finfo(getattr(ddp, name)), torch.finfo(getattr(torch, name))
    for field in ("bits", "eps", "max", "min", "tiny", "smallest_normal", "resolution"):
        assert getattr(ours, field) == getattr(ref, field), field
    with pytest.raises(TypeError, match="floating point"):
        ddp.finfo(ddp.int32)


def test_module_half_and_bfloat16():
    model = ddp.nn.Sequential(ddp.nn.Linear(3, 4), ddp.nn.LayerNorm(4))
    assert {p.dtype for p in model.bfloat16().parameters()} == {ddp.bfloat16}
    assert {p.dtype for p in model.half().parameters()} == {ddp.float16}
    assert {p.dtype for p in model.float().parameters()} == {ddp.float32}
    model.bfloat16()
    out = model(ddp.randn(2, 3).bfloat16())
    assert out.dtype == ddp.bfloat16
    out.float().sum().backward()
    assert {p.grad.dtype for p in model.parameters()} == {ddp.bfloat16}


def test_matmul_and_sum_compute_in_float32_and_round_once():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((64, 300)).astype(BF16)
    b = rng.standard_normal((300, 32)).astype(BF16)
    product = (ddp.tensor(a) @ ddp.tensor(b)).array
    assert product.dtype == BF16
    exact = a.astype(np.float64) @ b.astype(np.float64)
    # float32 accumulation (300 terms, error ~1e-5 relative) then one rounding: <= u (+ slack)
    assert np.all(np.abs(product.astype(np.float64) - exact) <= 1.01 * U * np.abs(exact) + 1e-6)
    ref = (torch.tensor(a.astype(np.float32)).bfloat16()
           @ torch.tensor(b.astype(np.float32)).bfloat16()).float().numpy()
    assert np.all(np.abs(product.astype(np.float32) - ref) <= 2 * U * np.abs(ref) + 1e-6)
    # 20000 terms summed in bfloat16 itself would drift by ~20000 * u; ours rounds once
    x = rng.uniform(0.5, 1.5, 20000).astype(BF16)
    total = float(ddp.tensor(x).sum())
    exact_sum = x.astype(np.float64).sum()
    assert abs(total - exact_sum) <= U * exact_sum
    assert ddp.tensor(x).mean().dtype == ddp.bfloat16


OPS = {
    "matmul": (lambda x, w: x @ w, 2),
    "linear": (lambda x, w: ddp.nn.functional.linear(x, w.t()), 2),
    "mul_add": (lambda x, w: x * w + w, 1),
    "exp": (lambda x, w: (x * w).exp(), 1),
    "tanh": (lambda x, w: (x * w).tanh(), 1),
    "softmax": (lambda x, w: (x @ w).softmax(-1), 2),
    "log_softmax": (lambda x, w: (x @ w).log_softmax(-1), 2),
    "layer_norm": (lambda x, w: ddp.nn.functional.layer_norm(x @ w, (4,)), 2),
    "gelu": (lambda x, w: ddp.nn.functional.gelu(x * w), 1),
    "sum": (lambda x, w: (x * w).sum(-1), 1),
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_backward_matches_float64_finite_differences(name):
    """The gradient of sum(f(x, w) * c) in bfloat16 against central differences of the same
    expression in float64 at the same (bfloat16-exact) inputs. Each op's forward and backward
    round their results to bfloat16 once or twice, and the chain composes up to 4 such ops:
    8 u (3%) of the gradient's largest entry bounds it (a wrong formula is off by O(1))."""
    fn, kind = OPS[name]
    rng = np.random.default_rng(2)
    x0 = rng.standard_normal((3, 4)).astype(BF16).astype(np.float64)
    w0 = (rng.standard_normal((4, 4)) if kind == 2 else rng.standard_normal((3, 4)))
    w0 = (w0 * 0.5).astype(BF16).astype(np.float64)
    out_shape = fn(ddp.tensor(x0), ddp.tensor(w0)).shape
    c = rng.standard_normal(tuple(out_shape))

    def loss64(x):
        return float((fn(ddp.tensor(x), ddp.tensor(w0)).numpy() * c).sum())

    x = ddp.tensor(x0.astype(BF16), requires_grad=True)
    w = ddp.tensor(w0.astype(BF16), requires_grad=True)
    y = fn(x, w)
    assert y.dtype == ddp.bfloat16
    (y * ddp.tensor(c.astype(BF16))).float().sum().backward()
    assert x.grad.dtype == ddp.bfloat16 and w.grad.dtype == ddp.bfloat16
    h, fd = 1e-6, np.zeros_like(x0)
    for i in np.ndindex(x0.shape):
        e = np.zeros_like(x0)
        e[i] = h
        fd[i] = (loss64(x0 + e) - loss64(x0 - e)) / (2 * h)
    got = x.grad.numpy().astype(np.float64)
    assert np.abs(got - fd).max() <= 8 * U * np.abs(fd).max() + 1e-30, (got, fd)


def test_save_load_round_trip_bits(tmp_path):
    t = ddp.randn(5, 3).bfloat16()
    model = ddp.nn.Linear(3, 2).bfloat16()
    ddp.save({"t": t, "array": t.numpy(), "model": model.state_dict()}, tmp_path / "f.pt")
    back = ddp.load(tmp_path / "f.pt")
    assert back["t"].dtype == ddp.bfloat16 and back["array"].dtype == BF16
    np.testing.assert_array_equal(_bits(back["t"]), _bits(t))
    np.testing.assert_array_equal(back["array"].view(np.uint16), _bits(t))
    assert back["model"]["weight"].dtype == ddp.bfloat16


def test_distributed_checkpoint_round_trip(tmp_path):
    import ddp.distributed.checkpoint as dcp

    model = ddp.nn.Linear(3, 2).bfloat16()
    dcp.save(str(tmp_path), model)
    again = ddp.nn.Linear(3, 2).bfloat16()
    dcp.load(str(tmp_path), again)
    for a, b in zip(model.parameters(), again.parameters(), strict=True):
        assert b.dtype == ddp.bfloat16
        np.testing.assert_array_equal(_bits(a), _bits(b))


def test_bfloat16_on_a_gpu_without_support_names_the_limitation(monkeypatch):
    monkeypatch.setattr(backend, "cupy_module", lambda: object())
    monkeypatch.setattr(backend, "cupy_bfloat16_problem", lambda: "CuPy 13.0 has no bfloat16")
    with pytest.raises(RuntimeError, match="bfloat16 tensor to cuda.*CuPy 13.0 has no bfloat16"):
        ddp.ones(2, dtype=ddp.bfloat16).to("cuda")
    with pytest.raises(RuntimeError, match="dtype=float16"):
        ddp.autocast("cuda", dtype=ddp.bfloat16)
