"""Transformer encoder/decoder layers, stacks and ``nn.Transformer`` against torch (float64).

Weights are torch's, copied through ``load_state_dict``; dropout is 0 for equality. Inputs
require grad, so torch takes its slow path (its inference fast path returns nested results).
"""

import copy

import numpy as np
import pytest
from _helpers import torch_oracle

import ddp

torch = torch_oracle()

D, H, FF, S, T, N = 8, 2, 16, 5, 4, 3
CLOSE = dict(rtol=1e-10, atol=1e-12)


def _load(t_module, d_module):
    assert list(d_module.state_dict()) == list(t_module.state_dict())
    d_module.load_state_dict({k: ddp.tensor(v.detach().numpy())
                              for k, v in t_module.state_dict().items()})
    return d_module


def _run(T, module, arrays, masks, **kw):
    xs = [T.tensor(a, requires_grad=True) for a in arrays]
    out = module(*xs, **{k: T.tensor(v) for k, v in masks.items()}, **kw)
    w = np.random.default_rng(5).standard_normal(tuple(out.shape))
    (out * T.tensor(w)).sum().backward()
    return (out.detach().numpy(), [x.grad.numpy() for x in xs],
            {k: p.grad.numpy() for k, p in module.named_parameters()})


def _compare(make, shapes, masks=None, seed=0, **kw):
    """``make(T)`` builds the module in ``T``; compare outputs, input and parameter grads."""
    torch.manual_seed(seed)
    t = make(torch).double()
    d = _load(t, make(ddp).double())
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(s) for s in shapes]
    got, want = _run(ddp, d, arrays, masks or {}, **kw), _run(torch, t, arrays, masks or {}, **kw)
    np.testing.assert_allclose(got[0], want[0], **CLOSE, err_msg="output")
    for i, (g, w) in enumerate(zip(got[1], want[1], strict=True)):
        np.testing.assert_allclose(g, w, **CLOSE, err_msg=f"grad of input {i}")
    assert list(got[2]) == list(want[2])
    for k in want[2]:
        np.testing.assert_allclose(got[2][k], want[2][k], **CLOSE, err_msg=f"grad of {k}")


def _causal(n):
    return np.triu(np.ones((n, n), bool), 1)


def _kpm(n, s):
    m = np.zeros((n, s), bool)
    m[0, -2:] = True
    m[2, 1] = True
    return m


@pytest.mark.parametrize("kw", [
    {}, {"activation": "gelu"}, {"norm_first": True}, {"bias": False},
    {"batch_first": True, "layer_norm_eps": 1e-3},
])
def test_encoder_layer(kw):
    shape = (N, S, D) if kw.get("batch_first") else (S, N, D)
    _compare(lambda T: T.nn.TransformerEncoderLayer(D, H, FF, dropout=0.0, **kw), [shape],
             {"src_key_padding_mask": _kpm(N, S), "src_mask": _causal(S)})


def test_encoder_layer_callable_activation_unbatched_float_mask():
    def make(T):
        return T.nn.TransformerEncoderLayer(D, H, FF, dropout=0.0, activation=T.tanh)
    mask = np.random.default_rng(1).standard_normal((S, S))
    _compare(make, [(S, D)], {"src_mask": mask})


def test_encoder_stack_deep_copies_and_matches():
    layer = ddp.nn.TransformerEncoderLayer(D, H, FF, dropout=0.0)
    enc = ddp.nn.TransformerEncoder(layer, 3)
    ptrs = {id(p) for p in enc.parameters()}
    assert len(ptrs) == 3 * len(list(layer.parameters()))
    assert not ptrs & {id(p) for p in layer.parameters()}

    def make(T):
        lay = T.nn.TransformerEncoderLayer(D, H, FF, dropout=0.0)
        return T.nn.TransformerEncoder(lay, 2, norm=T.nn.LayerNorm(D),
                                       enable_nested_tensor=False)
    _compare(make, [(S, N, D)], {"src_key_padding_mask": _kpm(N, S)})
    causal = torch.nn.Transformer.generate_square_subsequent_mask(S).double().numpy()
    _compare(make, [(S, N, D)], {"mask": causal})  # detected causal: the same numbers
    _compare(make, [(S, N, D)], {"mask": causal}, is_causal=True)


@pytest.mark.parametrize("kw", [{}, {"norm_first": True, "activation": "gelu"},
                                {"batch_first": True}])
def test_decoder_layer_and_stack(kw):
    bf = kw.get("batch_first")
    shapes = [(N, T, D), (N, S, D)] if bf else [(T, N, D), (S, N, D)]
    masks = {"tgt_mask": _causal(T), "tgt_key_padding_mask": _kpm(N, T),
             "memory_key_padding_mask": _kpm(N, S)}
    _compare(lambda M: M.nn.TransformerDecoderLayer(D, H, FF, dropout=0.0, **kw), shapes, masks)

    def make(M):
        return M.nn.TransformerDecoder(M.nn.TransformerDecoderLayer(D, H, FF, dropout=0.0, **kw),
                                       2, norm=M.nn.LayerNorm(D))
    _compare(make, shapes, masks)


# torch warns that its nested-tensor fast path needs batch_first; the slow path is compared
@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")
def test_transformer_end_to_end():
    def make(M):
        return M.nn.Transformer(D, H, 2, 2, FF, dropout=0.0)
    mask = torch.nn.Transformer.generate_square_subsequent_mask(T).double().numpy()
    _compare(make, [(S, N, D), (T, N, D)],
             {"tgt_mask": mask, "src_key_padding_mask": _kpm(N, S),
              "memory_key_padding_mask": _kpm(N, S)})


def test_transformer_init_and_mask():
    m = ddp.nn.Transformer.generate_square_subsequent_mask(4)
    want = torch.nn.Transformer.generate_square_subsequent_mask(4)
    assert m.dtype == ddp.float32
    np.testing.assert_array_equal(m.numpy(), want.numpy())
    tr = ddp.nn.Transformer(D, H, 1, 1, FF)
    w = tr.encoder.layers[0].linear1.weight.detach().numpy()  # xavier_uniform_, not kaiming
    bound = np.sqrt(6.0 / (D + FF))
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.7 * bound
    with pytest.raises(RuntimeError, match="batch number of src and tgt"):
        tr(ddp.randn(S, N, D), ddp.randn(T, N + 1, D))
    with pytest.raises(RuntimeError, match="activation should be relu/gelu, not tanh"):
        ddp.nn.TransformerEncoderLayer(D, H, activation="tanh")


def test_dropout_train_changes_eval_does_not():
    layer = ddp.nn.TransformerEncoderLayer(D, H, FF, dropout=0.5, dtype=ddp.float64)
    x = ddp.tensor(np.random.default_rng(0).standard_normal((S, N, D)))
    layer.eval()
    a = layer(x).detach().numpy()
    np.testing.assert_array_equal(layer(x).detach().numpy(), a)
    layer.train()
    assert not np.allclose(layer(x).detach().numpy(), a)
    clone = copy.deepcopy(layer).eval()
    np.testing.assert_array_equal(clone(x).detach().numpy(), a)


def test_float32_encoder_layer_within_rounding():
    """float32 ddp against the float64 truth (torch's, same weights rounded to float32).

    Two LayerNorms, a softmax and matmuls over D=8 / FF=16 terms of O(1) values: measured
    errors are 2 float32 ulps of 1.0 (2**-23) on the output, 3 on the input gradient, 8 on
    parameter gradients (up to 7 in size); 3e-5 (250 ulps) leaves a factor 30 for another
    summation order (BLAS, SIMD width) on any x86-64.
    """
    torch.manual_seed(0)
    t = torch.nn.TransformerEncoderLayer(D, H, FF, dropout=0.0).float().double()
    d = ddp.nn.TransformerEncoderLayer(D, H, FF, dropout=0.0)
    d.load_state_dict({k: ddp.tensor(v.detach().numpy().astype(np.float32))
                       for k, v in t.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((S, N, D)).astype(np.float32)
    masks = {"src_key_padding_mask": _kpm(N, S)}
    got = _run(ddp, d, [x], masks)
    want = _run(torch, t, [x.astype(np.float64)], masks)
    assert got[0].dtype == np.float32
    np.testing.assert_allclose(got[0], want[0], rtol=3e-5, atol=3e-5)
    np.testing.assert_allclose(got[1][0], want[1][0], rtol=3e-5, atol=3e-5)
    for k in want[2]:
        assert got[2][k].dtype == np.float32
        np.testing.assert_allclose(got[2][k], want[2][k], rtol=3e-5, atol=3e-5, err_msg=k)


@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")
def test_state_dict_loads_into_torch():
    d = ddp.nn.Transformer(D, H, 1, 1, FF, dropout=0.0)
    t = torch.nn.Transformer(D, H, 1, 1, FF, dropout=0.0)
    t.load_state_dict({k: torch.tensor(v.numpy()) for k, v in d.state_dict().items()})
    x, y = np.ones((S, N, D), np.float32), np.zeros((T, N, D), np.float32)
    with torch.no_grad():
        want = t(torch.tensor(x), torch.tensor(y)).numpy()
    np.testing.assert_allclose(d(ddp.tensor(x), ddp.tensor(y)).detach().numpy(), want,
                               rtol=6e-5, atol=6e-5)  # both float32: twice the bound above
