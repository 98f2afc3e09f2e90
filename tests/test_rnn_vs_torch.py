"""RNN, LSTM, GRU and their cells against torch: outputs, final states and every gradient.

torch's weights are copied into the ddp module (``load_state_dict``), so both compute the same
function; float64 comparisons are at ``rtol=1e-10`` (the only differences are summation order).
"""

import itertools

import numpy as np
import pytest
from _helpers import EPS32, assert_within, torch_oracle

import ddp
from ddp import nn

torch = torch_oracle()

T_STEPS, BATCH, H_IN, HIDDEN = 5, 3, 4, 6
KINDS = ("RNN_TANH", "RNN_RELU", "LSTM", "GRU")


def _pair(kind: str, dtype=np.float64, **kw):
    """The same layer in torch (seeded init) and ddp (torch's weights loaded), in ``dtype``."""
    torch.manual_seed(0)
    kw["dtype"] = ddp.float64 if dtype == np.float64 else ddp.float32
    if kind.startswith("RNN"):
        nl = "tanh" if kind == "RNN_TANH" else "relu"
        d_mod = nn.RNN(H_IN, HIDDEN, nonlinearity=nl, **kw)
        kw.pop("dtype")
        t_mod = torch.nn.RNN(H_IN, HIDDEN, nonlinearity=nl, **kw)
    else:
        d_mod = getattr(nn, kind)(H_IN, HIDDEN, **kw)
        kw.pop("dtype")
        t_mod = getattr(torch.nn, kind)(H_IN, HIDDEN, **kw)
    t_mod = t_mod.double() if dtype == np.float64 else t_mod
    d_mod.load_state_dict({k: ddp.tensor(v.detach().numpy()) for k, v in
                           t_mod.state_dict().items()})
    return t_mod, d_mod


def _leaf(T, array):
    return T.tensor(array, requires_grad=True)


def _run_both(kind, num_layers, bidirectional, batch_first, batched, with_hx, dtype=np.float64,
              proj_size=0, bias=True):
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
              bias=bias)
    if proj_size:
        kw["proj_size"] = proj_size
    t_mod, d_mod = _pair(kind, dtype, **kw)
    rng = np.random.default_rng(1)
    x_shape = ((BATCH, T_STEPS, H_IN) if batch_first else (T_STEPS, BATCH, H_IN)) if batched \
        else (T_STEPS, H_IN)
    x = rng.standard_normal(x_shape).astype(dtype)
    d = 2 if bidirectional else 1
    state_shapes = [(num_layers * d, BATCH, proj_size or HIDDEN)]
    if kind == "LSTM":
        state_shapes.append((num_layers * d, BATCH, HIDDEN))
    if not batched:
        state_shapes = [(s[0], s[2]) for s in state_shapes]
    states = [rng.standard_normal(s).astype(dtype) for s in state_shapes] if with_hx else []
    results = {}
    for T, mod in (("torch", t_mod), ("ddp", d_mod)):
        lib = torch if T == "torch" else ddp
        xt = _leaf(lib, x)
        st = [_leaf(lib, s) for s in states]
        hx = None if not st else (tuple(st) if kind == "LSTM" else st[0])
        out, hn = mod(xt, hx)
        outs = [out] + (list(hn) if kind == "LSTM" else [hn])
        w = np.random.default_rng(2)
        loss = sum((o * lib.tensor(w.standard_normal(tuple(o.shape)).astype(dtype))).sum()
                   for o in outs)
        loss.backward()
        grads = {"input": xt.grad, **{f"state{i}": s.grad for i, s in enumerate(st)}}
        grads.update({n: p.grad for n, p in mod.named_parameters()})
        results[T] = ([o.detach().numpy() for o in outs],
                      {k: g.numpy() for k, g in grads.items()}, [o.dtype for o in outs])
    return results


def _assert_close(results, rtol=1e-10, atol=1e-12):
    (t_outs, t_grads, _), (d_outs, d_grads, _) = results["torch"], results["ddp"]
    for i, (t, d) in enumerate(zip(t_outs, d_outs, strict=True)):
        assert d.shape == t.shape, f"output {i}: shape {d.shape} != torch {t.shape}"
        np.testing.assert_allclose(d, t, rtol=rtol, atol=atol, err_msg=f"output {i}")
    assert set(d_grads) == set(t_grads)
    for name in t_grads:
        np.testing.assert_allclose(d_grads[name], t_grads[name], rtol=rtol, atol=atol,
                                   err_msg=f"grad of {name}")


CONFIGS = list(itertools.product(KINDS, (1, 2), (False, True), (False, True), (False, True)))


@pytest.mark.parametrize("kind,num_layers,bidirectional,batch_first,batched", CONFIGS)
def test_float64_vs_torch(kind, num_layers, bidirectional, batch_first, batched):
    # initial states given: their gradients are compared too
    _assert_close(_run_both(kind, num_layers, bidirectional, batch_first, batched, True))


@pytest.mark.parametrize("kind", KINDS)
def test_default_zero_state_and_no_bias(kind):
    _assert_close(_run_both(kind, 2, True, False, True, False))
    _assert_close(_run_both(kind, 1, False, True, True, True, bias=False))


@pytest.mark.parametrize("bidirectional", (False, True))
def test_lstm_proj_size(bidirectional):
    _assert_close(_run_both("LSTM", 2, bidirectional, False, True, True, proj_size=3))
    _assert_close(_run_both("LSTM", 1, bidirectional, True, False, False, proj_size=3))


@pytest.mark.parametrize("kind", KINDS)
def test_float32(kind):
    results = _run_both(kind, 2, True, True, True, True, dtype=np.float32)
    truth = _run_both(kind, 2, True, True, True, True, dtype=np.float64)
    assert all(dt == ddp.float32 for dt in results["ddp"][2])
    # Values are O(1) and each output is at most T_STEPS * num_layers * 2 steps of a few
    # roundings deep; 512 ulps of 1.0 bounds ddp's float32 error against the float64 truth
    # on any x86-64 (it holds for torch's own float32 result too, checked alongside).
    bound = 512 * EPS32
    for lib in ("ddp", "torch"):
        for i, (got, want) in enumerate(zip(results[lib][0], truth["torch"][0], strict=True)):
            assert_within(got, want, bound * np.maximum(1, np.abs(want)), f"{lib} output {i}")
        for name, want in truth["torch"][1].items():
            got = results[lib][1][name]
            scale = max(1.0, float(np.abs(want).max()))
            assert_within(got, want, bound * scale, f"{lib} grad of {name}")


def test_dropout_train_only():
    torch.manual_seed(0)
    drop = nn.LSTM(H_IN, HIDDEN, num_layers=2, dropout=0.5, dtype=ddp.float64)
    plain = nn.LSTM(H_IN, HIDDEN, num_layers=2, dtype=ddp.float64)
    plain.load_state_dict(drop.state_dict())
    x = ddp.tensor(np.random.default_rng(0).standard_normal((T_STEPS, BATCH, H_IN)))
    ref = plain(x)[0].detach().numpy()
    drop.train()
    ddp.manual_seed(0)
    train_out = drop(x)[0].detach().numpy()
    assert not np.allclose(train_out, ref), "dropout=0.5 in train mode left outputs unchanged"
    drop.eval()
    np.testing.assert_array_equal(drop(x)[0].detach().numpy(), ref)
    # dropout is never applied after the last layer: a 1-layer model is unaffected (torch warns)
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        one = nn.GRU(H_IN, HIDDEN, dropout=0.5, dtype=ddp.float64)
    one_plain = nn.GRU(H_IN, HIDDEN, dtype=ddp.float64)
    one_plain.load_state_dict(one.state_dict())
    np.testing.assert_array_equal(one(x)[0].detach().numpy(), one_plain(x)[0].detach().numpy())


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_round_trip(kind):
    t_mod, d_mod = _pair(kind, num_layers=2, bidirectional=True)
    t_keys = list(t_mod.state_dict())
    assert list(d_mod.state_dict()) == t_keys
    for (k, tv), dv in zip(t_mod.state_dict().items(), d_mod.state_dict().values(), strict=True):
        assert tuple(dv.shape) == tuple(tv.shape), k
    # ddp -> torch: a fresh torch module takes ddp's (freshly initialised) weights
    fresh = nn.GRU(H_IN, HIDDEN, 2, bidirectional=True) if kind == "GRU" else None
    if fresh is not None:
        back = torch.nn.GRU(H_IN, HIDDEN, 2, bidirectional=True)
        back.load_state_dict({k: torch.from_numpy(v.numpy().copy())
                              for k, v in fresh.state_dict().items()})
        x = np.random.default_rng(0).standard_normal((T_STEPS, BATCH, H_IN)).astype(np.float32)
        np.testing.assert_allclose(fresh(ddp.tensor(x))[0].detach().numpy(),
                                   back(torch.tensor(x))[0].detach().numpy(), rtol=1e-5,
                                   atol=1e-6)


def test_init_bounds_and_defaults():
    mod = nn.LSTM(H_IN, 16, num_layers=2)
    assert mod.weight_ih_l0.dtype == ddp.float32
    for name, p in mod.named_parameters():
        a = p.detach().numpy()
        assert np.abs(a).max() <= 0.25, name  # 1/sqrt(16)
        assert np.abs(a).max() > 0.2, name  # uniform over the whole range, not zeros
    assert mod.weight_ih_l1.shape == (64, 16)
    mod.flatten_parameters()
    assert repr(mod) == repr(torch.nn.LSTM(H_IN, 16, num_layers=2))


@pytest.mark.parametrize("cell", ("RNNCell", "LSTMCell", "GRUCell"))
@pytest.mark.parametrize("batched", (False, True))
@pytest.mark.parametrize("with_hx", (False, True))
def test_cells_vs_torch(cell, batched, with_hx):
    torch.manual_seed(0)
    t_mod = getattr(torch.nn, cell)(H_IN, HIDDEN).double()
    d_mod = getattr(nn, cell)(H_IN, HIDDEN, dtype=ddp.float64)
    d_mod.load_state_dict({k: ddp.tensor(v.detach().numpy()) for k, v in
                           t_mod.state_dict().items()})
    rng = np.random.default_rng(3)
    lead = (BATCH,) if batched else ()
    x = rng.standard_normal(lead + (H_IN,))
    states = [rng.standard_normal(lead + (HIDDEN,)) for _ in range(2 if cell == "LSTMCell"
                                                                    else 1)]
    res = {}
    for lib, mod in ((torch, t_mod), (ddp, d_mod)):
        xt = _leaf(lib, x)
        st = [_leaf(lib, s) for s in states] if with_hx else []
        hx = None if not st else (tuple(st) if cell == "LSTMCell" else st[0])
        out = mod(xt, hx)
        outs = list(out) if cell == "LSTMCell" else [out]
        w = np.random.default_rng(4)
        sum((o * lib.tensor(w.standard_normal(tuple(o.shape)))).sum() for o in outs).backward()
        grads = [xt.grad] + [s.grad for s in st] + [p.grad for _, p in mod.named_parameters()]
        res[lib.__name__] = ([o.detach().numpy() for o in outs], [g.numpy() for g in grads])
    for a, b in zip(res["ddp"][0] + res["ddp"][1], res["torch"][0] + res["torch"][1],
                    strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def _torch_error(fn):
    with pytest.raises(Exception) as info:
        fn(torch)
    return type(info.value), str(info.value)


@pytest.mark.parametrize("kind", ("RNN", "LSTM", "GRU"))
def test_errors_match_torch(kind):
    def make(T, **kw):
        return getattr(T.nn, kind)(H_IN, HIDDEN, **kw)

    cases = [
        lambda T: make(T)(T.zeros(T_STEPS, BATCH, 3)),
        lambda T: make(T)(T.zeros(2, T_STEPS, BATCH, H_IN)),
        lambda T: make(T)(T.zeros(T_STEPS, BATCH, H_IN, dtype=T.float64)),
        lambda T: make(T, dropout=1.5),
        lambda T: make(T, dropout="0.1"),
        lambda T: make(T, dropout=True),
        lambda T: make(T, num_layers=0),
    ]
    if kind == "LSTM":
        cases += [
            lambda T: make(T)(T.zeros(T_STEPS, BATCH, H_IN),
                              (T.zeros(1, 2, HIDDEN), T.zeros(1, BATCH, HIDDEN))),
            lambda T: make(T)(T.zeros(T_STEPS, BATCH, H_IN),
                              (T.zeros(1, BATCH, HIDDEN), T.zeros(1, BATCH, 2))),
            lambda T: make(T)(T.zeros(T_STEPS, BATCH, H_IN),
                              (T.zeros(BATCH, HIDDEN), T.zeros(BATCH, HIDDEN))),
            lambda T: make(T, proj_size=HIDDEN),
        ]
    else:
        cases += [
            lambda T: make(T)(T.zeros(T_STEPS, BATCH, H_IN), T.zeros(1, 2, HIDDEN)),
            lambda T: make(T)(T.zeros(T_STEPS, H_IN), T.zeros(1, 1, HIDDEN)),
            lambda T: make(T, proj_size=2),
        ]
    for case in cases:
        t_type, t_msg = _torch_error(case)
        with pytest.raises(t_type) as info:
            case(ddp)
        assert str(info.value) == t_msg.replace("torch.", "ddp.")


@pytest.mark.parametrize("cell", ("RNNCell", "LSTMCell", "GRUCell"))
def test_cell_errors_match_torch(cell):
    def make(T):
        return getattr(T.nn, cell)(H_IN, HIDDEN)

    def states(T, *shapes):
        return tuple(T.zeros(*s) for s in shapes) if cell == "LSTMCell" else T.zeros(*shapes[0])

    cases = [
        lambda T: make(T)(T.zeros(BATCH, 5)),
        lambda T: make(T)(T.zeros(BATCH, H_IN, 1)),
        lambda T: make(T)(T.zeros(BATCH, H_IN), states(T, (1, BATCH, HIDDEN), (BATCH, HIDDEN))),
        lambda T: make(T)(T.zeros(BATCH, H_IN), states(T, (2, HIDDEN), (2, HIDDEN))),
        lambda T: make(T)(T.zeros(BATCH, H_IN), states(T, (BATCH, 5), (BATCH, 5))),
    ]
    if cell == "LSTMCell":
        cases.append(lambda T: make(T)(T.zeros(BATCH, H_IN),
                                       states(T, (BATCH, HIDDEN), (BATCH, 5))))
        cases.append(lambda T: make(T)(T.zeros(BATCH, H_IN),
                                       states(T, (BATCH, HIDDEN), (1, BATCH, HIDDEN))))
    if cell == "RNNCell":
        cases.append(lambda T: T.nn.RNNCell(H_IN, HIDDEN, nonlinearity="x")(T.zeros(1, H_IN)))
    for case in cases:
        t_type, t_msg = _torch_error(case)
        with pytest.raises(t_type) as info:
            case(ddp)
        assert str(info.value) == t_msg


def test_reprs_match_torch():
    for build in (lambda T: T.nn.RNN(4, 6, nonlinearity="relu"),
                  lambda T: T.nn.GRU(4, 6, 2, bias=False, batch_first=True, dropout=0.25,
                                     bidirectional=True),
                  lambda T: T.nn.LSTM(4, 6, proj_size=2),
                  lambda T: T.nn.RNNCell(4, 6, nonlinearity="relu"),
                  lambda T: T.nn.GRUCell(4, 6, bias=False),
                  lambda T: T.nn.LSTMCell(4, 6)):
        assert repr(build(ddp)) == repr(build(torch))


def test_nonlinearity():
    with pytest.raises(ValueError, match="Unknown nonlinearity 'sigmoid'"):
        nn.RNN(H_IN, HIDDEN, nonlinearity="sigmoid")
    # torch's positional order: nonlinearity is the fourth argument of RNN
    assert nn.RNN(H_IN, HIDDEN, 1, "relu").nonlinearity == "relu"
    # packed input: tests/test_packed_sequence.py
