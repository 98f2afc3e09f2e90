"""``nn.MultiheadAttention`` against torch: parameters, init, values and gradients (float64)."""

import numpy as np
import pytest
from _helpers import torch_oracle

import ddp

torch = torch_oracle()

E, H, L, S, N = 8, 2, 4, 5, 3


def _pair(seed=0, **kw):
    """A torch module and a ddp module holding the same (torch-initialised) float64 weights."""
    torch.manual_seed(seed)
    t = torch.nn.MultiheadAttention(E, H, **kw).double()
    d = ddp.nn.MultiheadAttention(E, H, dtype=ddp.float64, **kw)
    d.load_state_dict({k: ddp.tensor(v.detach().numpy()) for k, v in t.state_dict().items()})
    return t, d


def _run(T, module, arrays, masks, **kw):
    """Output, weights, input grads and parameter grads of ``module`` on ``arrays``."""
    xs = [T.tensor(a, requires_grad=True) for a in arrays]
    m = {k: T.tensor(v) for k, v in masks.items()}
    out, weights = module(*xs, **m, **kw)
    rng = np.random.default_rng(7)
    loss = (out * T.tensor(rng.standard_normal(tuple(out.shape)))).sum()
    if weights is not None:
        loss = loss + (weights * T.tensor(rng.standard_normal(tuple(weights.shape)))).sum()
    loss.backward()
    params = {k: p.grad.numpy() for k, p in module.named_parameters()}
    return (out.detach().numpy(), None if weights is None else weights.detach().numpy(),
            [x.grad.numpy() for x in xs], params)


def _compare(shapes, masks=None, module_kw=None, seed=0, **kw):
    t, d = _pair(seed, **(module_kw or {}))
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(s) for s in shapes]
    got = _run(ddp, d, arrays, masks or {}, **kw)
    want = _run(torch, t, arrays, masks or {}, **kw)
    close = dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got[0], want[0], **close, err_msg="attn_output")
    if want[1] is None:
        assert got[1] is None
    else:
        np.testing.assert_allclose(got[1], want[1], **close, err_msg="attn_weights")
    for i, (g, w) in enumerate(zip(got[2], want[2], strict=True)):
        np.testing.assert_allclose(g, w, **close, err_msg=f"grad of input {i}")
    assert list(got[3]) == list(want[3])
    for k in want[3]:
        np.testing.assert_allclose(got[3][k], want[3][k], **close, err_msg=f"grad of {k}")


SELF = [(L, N, E)] * 3
CROSS = [(L, N, E), (S, N, E), (S, N, E)]


def test_parameters_and_init_match_torch():
    t = torch.nn.MultiheadAttention(E, H)
    d = ddp.nn.MultiheadAttention(E, H)
    assert [(k, tuple(p.shape)) for k, p in d.named_parameters()] == \
        [(k, tuple(p.shape)) for k, p in t.named_parameters()]
    assert isinstance(d.out_proj, ddp.nn.Linear)
    assert np.all(d.in_proj_bias.detach().numpy() == 0)
    assert np.all(d.out_proj.bias.detach().numpy() == 0)
    bound = np.sqrt(6.0 / (E + 3 * E))  # xavier_uniform_ on (3E, E)
    w = d.in_proj_weight.detach().numpy()
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.8 * bound
    sep = ddp.nn.MultiheadAttention(E, H, kdim=3, vdim=5, add_bias_kv=True)
    t_sep = torch.nn.MultiheadAttention(E, H, kdim=3, vdim=5, add_bias_kv=True)
    assert [(k, tuple(p.shape)) for k, p in sep.named_parameters()] == \
        [(k, tuple(p.shape)) for k, p in t_sep.named_parameters()]
    with pytest.raises(AssertionError, match="divisible"):
        ddp.nn.MultiheadAttention(E, 3)


@pytest.mark.parametrize("shapes", [SELF, CROSS])
@pytest.mark.parametrize("average", [True, False])
def test_values_and_gradients(shapes, average):
    _compare(shapes, average_attn_weights=average)


def test_need_weights_false_uses_sdpa_path():
    mask = np.triu(np.ones((L, S), bool), 1)
    _compare(CROSS, {"attn_mask": mask}, need_weights=False)
    _compare(CROSS, {"key_padding_mask": np.eye(N, S, dtype=bool)}, need_weights=False)


# torch warns that a float attn_mask with a bool key_padding_mask is deprecated; still supported
@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
def test_bool_and_float_masks():
    causal = np.triu(np.ones((L, L), bool), 1)  # True = not allowed (torch's MHA convention)
    _compare(SELF, {"attn_mask": causal})
    _compare(SELF, {"attn_mask": causal}, is_causal=True)
    kpm = np.zeros((N, S), bool)
    kpm[0, 3:] = True
    kpm[2, 0] = True
    _compare(CROSS, {"key_padding_mask": kpm})
    fl = np.random.default_rng(2).standard_normal((N * H, L, S))
    _compare(CROSS, {"attn_mask": fl, "key_padding_mask": kpm})


def test_separate_kdim_vdim_no_bias():
    _compare([(L, N, E), (S, N, 3), (S, N, 5)], module_kw={"kdim": 3, "vdim": 5})
    _compare(CROSS, module_kw={"bias": False})


def test_bias_kv_and_zero_attn():
    kpm = np.zeros((N, S), bool)
    kpm[1, :2] = True
    _compare(CROSS, {"key_padding_mask": kpm, "attn_mask": np.triu(np.ones((L, S), bool), 2)},
             module_kw={"add_bias_kv": True, "add_zero_attn": True})


def test_batch_first_and_unbatched():
    _compare([(N, L, E), (N, S, E), (N, S, E)], module_kw={"batch_first": True})
    _compare([(L, E), (S, E), (S, E)], {"key_padding_mask": np.array([0, 0, 1, 0, 1], bool)})


def test_dropout_train_changes_eval_does_not():
    d = ddp.nn.MultiheadAttention(E, H, dropout=0.5, dtype=ddp.float64)
    x = ddp.tensor(np.random.default_rng(0).standard_normal((L, N, E)))
    d.eval()
    a, _ = d(x, x, x)
    b, _ = d(x, x, x)
    np.testing.assert_array_equal(a.detach().numpy(), b.detach().numpy())
    d.train()
    ddp.manual_seed(0)
    c, _ = d(x, x, x)
    assert not np.allclose(c.detach().numpy(), a.detach().numpy())


def test_shape_errors_name_shapes():
    d = ddp.nn.MultiheadAttention(E, H)
    x = ddp.randn(L, N, E)
    with pytest.raises(RuntimeError, match=r"2D attn_mask is \(4, 4\), but should be \(4, 5\)"):
        d(x, ddp.randn(S, N, E), ddp.randn(S, N, E), attn_mask=ddp.ones(L, L, dtype=ddp.bool))
    with pytest.raises(RuntimeError, match="Need attn_mask"):
        d(x, x, x, is_causal=True)
    with pytest.raises(AssertionError, match="embedding dimension of 8"):
        d(ddp.randn(L, N, 4), x, x)


def test_fully_padded_batch_entry_need_weights_false_gives_zeros():
    kpm = np.zeros((N, S), bool)
    kpm[1] = True  # batch entry 1 has no key to attend to: torch's SDPA path returns zeros
    _compare(CROSS, {"key_padding_mask": kpm}, need_weights=False)
    d = ddp.nn.MultiheadAttention(E, H, bias=False)
    x = ddp.randn(L, N, E)
    out, _ = d(x, x, x, key_padding_mask=ddp.tensor(kpm[:, :L]), need_weights=False)
    assert np.all(out.detach().numpy()[:, 1] == 0)


def test_float32_within_rounding():
    """float32 ddp against the float64 truth (same weights, rounded to float32 first).

    Projections over E=8 terms, a softmax over S=5 and the output projection, on O(1) values:
    measured errors are at most 5 float32 ulps of 1.0 (2**-23, parameter gradients); 3e-5 (250
    ulps) leaves a factor 50 for another summation order (BLAS, SIMD width) on any x86-64.
    """
    torch.manual_seed(0)
    t = torch.nn.MultiheadAttention(E, H).float().double()
    d = ddp.nn.MultiheadAttention(E, H)
    d.load_state_dict({k: ddp.tensor(v.detach().numpy().astype(np.float32))
                       for k, v in t.state_dict().items()})
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in CROSS]
    got = _run(ddp, d, arrays, {})
    want = _run(torch, t, [a.astype(np.float64) for a in arrays], {})
    assert got[0].dtype == np.float32 and got[1].dtype == np.float32
    np.testing.assert_allclose(got[0], want[0], rtol=3e-5, atol=3e-5)
    np.testing.assert_allclose(got[1], want[1], rtol=3e-5, atol=3e-5)
    for g, w in zip(got[2], want[2], strict=True):
        np.testing.assert_allclose(g, w, rtol=3e-5, atol=3e-5)
    for k in want[3]:
        assert got[3][k].dtype == np.float32
        np.testing.assert_allclose(got[3][k], want[3][k], rtol=3e-5, atol=3e-5, err_msg=k)
