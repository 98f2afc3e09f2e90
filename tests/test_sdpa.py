"""``F.scaled_dot_product_attention`` against torch: values and gradients, masks, GQA, errors."""

import numpy as np
import pytest
from _helpers import torch_oracle

import ddp
import ddp.nn.functional as F

torch = torch_oracle()


def _run(T, arrays, mask=None, **kw):
    """Output and q/k/v gradients of sdpa in module ``T`` (ddp or torch)."""
    qkv = [T.tensor(a, requires_grad=True) for a in arrays]
    m = None if mask is None else T.tensor(mask)
    out = T.nn.functional.scaled_dot_product_attention(*qkv, attn_mask=m, **kw)
    w = np.random.default_rng(9).standard_normal(tuple(out.shape)).astype(arrays[0].dtype)
    (out * T.tensor(w)).sum().backward()
    return out.detach().numpy(), [t.grad.numpy() for t in qkv]


def _arrays(shapes, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def _compare(shapes, mask=None, rtol=1e-10, atol=1e-12, dtype=np.float64, **kw):
    arrays = _arrays(shapes, dtype)
    out, grads = _run(ddp, arrays, mask, **kw)
    t_out, t_grads = _run(torch, arrays, mask, **kw)
    assert out.dtype == t_out.dtype
    np.testing.assert_allclose(out, t_out, rtol=rtol, atol=atol)
    for g, tg, name in zip(grads, t_grads, "qkv", strict=True):
        np.testing.assert_allclose(g, tg, rtol=rtol, atol=atol, err_msg=f"grad of {name}")


QKV = [(2, 3, 4, 5), (2, 3, 6, 5), (2, 3, 6, 7)]


@pytest.mark.parametrize("kw", [{}, {"is_causal": True}, {"scale": 0.3}])
def test_plain_causal_scale(kw):
    _compare(QKV, **kw)


def test_causal_square_and_leading_dims():
    _compare([(2, 2, 2, 5, 4)] * 3, is_causal=True)
    _compare([(5, 4), (6, 4), (6, 3)])  # no batch dims at all


def test_bool_mask_keeps_true():
    mask = np.random.default_rng(3).random((4, 6)) > 0.4
    mask[:, 0] = True  # no fully masked row (its result is backend-defined in torch)
    _compare(QKV, mask=mask)


def test_float_mask_is_added_and_broadcasts():
    mask = np.random.default_rng(4).standard_normal((3, 1, 6))
    _compare(QKV, mask=mask)


def test_gqa_repeats_kv_heads():
    _compare([(2, 6, 4, 5), (2, 2, 6, 5), (2, 2, 6, 3)], enable_gqa=True)


def test_float32_within_rounding():
    # scores of O(sqrt(E)) through exp and two length-6 dot products: tens of ulps of 1.0
    _compare(QKV, dtype=np.float32, rtol=1e-5, atol=1e-5, is_causal=True)


def test_dropout_changes_output_and_scales():
    q, k, v = (ddp.tensor(a) for a in _arrays(QKV))
    ref = F.scaled_dot_product_attention(q, k, v).numpy()
    ddp.manual_seed(0)
    dropped = F.scaled_dot_product_attention(q, k, v, dropout_p=0.5).numpy()
    assert not np.allclose(dropped, ref)
    # all-ones values: each output row is the sum of kept weights / (1 - p); E over seeds -> 1
    ones = ddp.ones(200, 1, 50, 1, dtype=ddp.float64)
    qq = ddp.zeros(200, 1, 1, 4, dtype=ddp.float64)
    kk = ddp.zeros(200, 1, 50, 4, dtype=ddp.float64)
    mean = F.scaled_dot_product_attention(qq, kk, ones, dropout_p=0.5).numpy().mean()
    assert abs(mean - 1.0) < 0.05


def test_errors_match_torch():
    q = ddp.randn(2, 3, 4)
    with pytest.raises(RuntimeError, match="Explicit attn_mask should not be set"):
        F.scaled_dot_product_attention(q, q, q, attn_mask=ddp.ones(3, 3, dtype=ddp.bool),
                                       is_causal=True)
    with pytest.raises(RuntimeError, match="same dtype"):
        F.scaled_dot_product_attention(q.double(), q, q)
    with pytest.raises(RuntimeError, match="attn_mask dtype"):
        F.scaled_dot_product_attention(q, q, q, attn_mask=ddp.ones(3, 3, dtype=ddp.int64))
    with pytest.raises(RuntimeError, match=r"\(2, 3, 5\)"):
        F.scaled_dot_product_attention(q, ddp.randn(2, 3, 5), q)


def test_fully_masked_row_gives_zeros_like_torch():
    mask = np.ones((4, 6), bool)
    mask[1] = False  # query 1 may attend to no key
    _compare(QKV, mask=mask)
    fl = np.zeros((4, 6))
    fl[2] = -np.inf
    _compare(QKV, mask=fl)
    out, grads = _run(ddp, _arrays(QKV), mask)
    assert np.all(out[:, :, 1] == 0) and np.isfinite(grads[0]).all()
