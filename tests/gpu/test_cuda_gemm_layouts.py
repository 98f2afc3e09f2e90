"""The direct-cuBLAS matmul's layout logic (``ddp.kernels.cuda_gemm``), checked on a CPU.

A NumPy stand-in for cuBLAS (``tests/_fake_cupy.FakeCublas``) reads the raw pointers, leading
dimensions and transpose flags that ``cuda_gemm`` passes, exactly as cuBLAS would (column-major).
So every transposed view, slice, batch and degenerate shape below is checked for the arguments
it produces; ``tests/gpu/test_gpu_ops.py`` checks the same cases against real cuBLAS on a GPU.
"""

from __future__ import annotations

import _fake_cupy
import numpy as np
import pytest

from ddp.kernels import cuda_gemm


@pytest.fixture
def fake(monkeypatch):
    fc = _fake_cupy.module()
    blas = _fake_cupy.FakeCublas()
    monkeypatch.setattr(cuda_gemm, "cupy_module", lambda: fc)
    monkeypatch.setattr(cuda_gemm, "_cublas", blas)
    monkeypatch.setattr(cuda_gemm, "ENABLED", True)
    return fc, blas


def _views(rng, shape, how, dtype):
    """A device array of logical ``shape`` built as ``how`` says (a view with odd strides)."""
    if how == "c":
        base = rng.standard_normal(shape).astype(dtype)
        return base, base
    if how == "t":  # a transposed (F-ordered) view of a C-contiguous array
        base = rng.standard_normal(shape[:-2] + shape[-2:][::-1]).astype(dtype)
        return base, np.swapaxes(base, -1, -2)
    if how == "slice":  # rows of a wider array (leading dimension > cols)
        base = rng.standard_normal(shape[:-1] + (shape[-1] + 3,)).astype(dtype)
        return base, base[..., 1:shape[-1] + 1]
    if how == "strided":  # every other column: no unit stride, needs a copy
        base = rng.standard_normal(shape[:-1] + (2 * shape[-1],)).astype(dtype)
        return base, base[..., ::2]
    raise AssertionError(how)


CASES = [((5, 4), (4, 3)), ((1, 4), (4, 3)), ((5, 1), (1, 3)), ((5, 4), (4, 1)), ((1, 1), (1, 1)),
         ((2, 5, 4), (2, 4, 3)), ((2, 3, 5, 4), (2, 3, 4, 6)), ((2, 1, 4), (2, 4, 3))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("how_a", ["c", "t", "slice", "strided"])
@pytest.mark.parametrize("how_b", ["c", "t", "slice"])
@pytest.mark.parametrize("shapes", CASES)
def test_direct_matmul_equals_numpy(fake, shapes, how_a, how_b, dtype):
    fc, blas = fake
    rng = np.random.default_rng(0)
    _, a = _views(rng, shapes[0], how_a, dtype)
    _, b = _views(rng, shapes[1], how_b, dtype)
    out = cuda_gemm.matmul(fc.ndarray(a), fc.ndarray(b))
    assert out is not None and blas.calls, "the direct path was not taken"
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out.get(), a @ b, rtol=tol, atol=tol)
    assert out.get().dtype == dtype


def test_transposed_batch_views_of_attention(fake):
    """q @ k^T with q, k views of one (B, T, H, D) projection transposed to (B, H, T, D)."""
    fc, _ = fake
    rng = np.random.default_rng(1)
    qkv = rng.standard_normal((2, 5, 3 * 8)).astype(np.float32)
    q = qkv[..., :8].reshape(2, 5, 2, 4).transpose(0, 2, 1, 3)
    k = qkv[..., 8:16].reshape(2, 5, 2, 4).transpose(0, 2, 1, 3)
    kt = np.swapaxes(k, -1, -2)
    out = cuda_gemm.matmul(fc.ndarray(q), fc.ndarray(kt))
    np.testing.assert_allclose(out.get(), q @ kt, rtol=1e-5, atol=1e-6)


def test_empty_and_zero_inner_dimension(fake):
    fc, _ = fake
    assert cuda_gemm.matmul(fc.ndarray(np.ones((0, 3), np.float32)),
                            fc.ndarray(np.ones((3, 2), np.float32))).shape == (0, 2)
    out = cuda_gemm.matmul(fc.ndarray(np.ones((2, 0), np.float32)),
                           fc.ndarray(np.ones((0, 3), np.float32)))
    np.testing.assert_array_equal(out.get(), np.zeros((2, 3), np.float32))


def test_cases_left_to_cupy(fake):
    fc, blas = fake
    f32 = np.ones((2, 3, 4), np.float32)
    assert cuda_gemm.matmul(fc.ndarray(f32), fc.ndarray(np.ones((4, 2), np.float32))) is None
    assert cuda_gemm.matmul(fc.ndarray(f32), fc.ndarray(np.ones((1, 4, 2), np.float32))) is None
    assert cuda_gemm.matmul(fc.ndarray(f32.astype(np.float16)),
                            fc.ndarray(np.ones((2, 4, 2), np.float16))) is None
    assert cuda_gemm.matmul(fc.ndarray(np.ones(4, np.float32)),
                            fc.ndarray(np.ones(4, np.float32))) is None
    assert not blas.calls


@pytest.mark.parametrize("how", ["c", "t", "slice"])
def test_column_sums_by_gemv(fake, how):
    fc, blas = fake
    _, x = _views(np.random.default_rng(2), (7, 5), how, np.float32)
    out = cuda_gemm.column_sums(fc.ndarray(x))
    np.testing.assert_allclose(out.get(), x.sum(axis=0), rtol=1e-5, atol=1e-6)
    assert blas.calls == ["gemv"]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("how_a,how_b", [("c", "c"), ("t", "c"), ("c", "t"), ("t", "t"),
                                         ("slice", "t"), ("strided", "slice")])
@pytest.mark.parametrize("shapes", CASES)
def test_direct_matmul_equals_cupy_on_gpu(shapes, how_a, how_b, dtype):
    from ddp import kernels
    from ddp.backend import cupy_module

    if not kernels.FUSED:
        pytest.skip("DDP_FUSED_KERNELS=0 (or the fake CuPy of tests/_fake_cupy.py)")
    cp = cupy_module()
    rng = np.random.default_rng(3)
    base_a, a = _views(rng, shapes[0], how_a, dtype)
    base_b, b = _views(rng, shapes[1], how_b, dtype)
    # the same views, taken on device copies of the bases
    da = _same_view(cp.asarray(base_a), how_a, shapes[0])
    db = _same_view(cp.asarray(base_b), how_b, shapes[1])
    out = cuda_gemm.matmul(da, db)
    assert out is not None
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(cp.asnumpy(out), a @ b, rtol=tol, atol=tol)
    np.testing.assert_allclose(cp.asnumpy(cuda_gemm.column_sums(da.reshape(-1, da.shape[-1]))),
                               a.reshape(-1, a.shape[-1]).sum(axis=0), rtol=tol, atol=tol)


def _same_view(base, how, shape):
    if how == "c":
        return base
    if how == "t":
        return base.swapaxes(-1, -2)
    if how == "slice":
        return base[..., 1:shape[-1] + 1]
    return base[..., ::2]
