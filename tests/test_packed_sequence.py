"""``nn.utils.rnn``: ``PackedSequence`` and its helpers against torch (values, indices and
gradients), and ``RNN``/``LSTM``/``GRU`` fed packed batches from torch's weights: outputs,
final states and every gradient must match torch's."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import check_grad, check_torch, torch_oracle

import ddp
from ddp.nn.utils import rnn

torch = torch_oracle()

LENGTHS = [[5, 3, 3, 1], [2, 5, 1, 4], [4, 4, 4]]


def _packed(T, x, lengths, batch_first, enforce_sorted):
    return T.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=batch_first,
                                               enforce_sorted=enforce_sorted)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("lengths", LENGTHS)
def test_pack_and_pad_round_trip_vs_torch(lengths, batch_first):
    enforce_sorted = lengths == sorted(lengths, reverse=True)
    b, t = len(lengths), max(lengths) + 1
    shape = (b, t, 3) if batch_first else (t, b, 3)

    def packed_data(T, x):
        return _packed(T, x, lengths, batch_first, enforce_sorted).data

    def round_trip(T, x):
        packed = _packed(T, x, lengths, batch_first, enforce_sorted)
        return T.nn.utils.rnn.pad_packed_sequence(packed, batch_first=batch_first,
                                                  padding_value=-2.0, total_length=t + 1)[0]

    for fn in (packed_data, round_trip):  # pack and pad only move values: exact
        check_torch(fn, [shape], rtol=0, atol=0)
        check_torch(fn, [shape], dtype=np.float64, rtol=0, atol=0)
        assert check_grad(fn, [shape])
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    ours = _packed(ddp, ddp.tensor(x), lengths, batch_first, enforce_sorted)
    theirs = _packed(torch, torch.tensor(x), lengths, batch_first, enforce_sorted)
    assert isinstance(ours, rnn.PackedSequence) and isinstance(ours, tuple)
    assert ours.batch_sizes.dtype == ddp.int64
    assert ours.batch_sizes.tolist() == theirs.batch_sizes.tolist()
    for name in ("sorted_indices", "unsorted_indices"):
        mine, torchs = getattr(ours, name), getattr(theirs, name)
        assert (mine is None) == (torchs is None), name
        if mine is not None:
            assert mine.tolist() == torchs.tolist(), name
    lens = rnn.pad_packed_sequence(ours, batch_first=batch_first)[1]
    assert lens.dtype == ddp.int64 and lens.tolist() == lengths


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_pad_sequence_vs_torch(batch_first, padding_side):
    def fn(T, a, b, c):
        return T.nn.utils.rnn.pad_sequence([a, b, c], batch_first=batch_first,
                                           padding_value=0.5, padding_side=padding_side)

    check_torch(fn, [(3, 2, 2), (5, 2, 2), (1, 2, 2)], rtol=0, atol=0)
    assert check_grad(fn, [(3, 2, 2), (5, 2, 2), (1, 2, 2)])
    x = np.arange(6.0).reshape(3, 2)  # a tensor is an iterable of its rows, as in torch
    np.testing.assert_array_equal(rnn.pad_sequence(ddp.tensor(x)).numpy(),
                                  torch.nn.utils.rnn.pad_sequence(torch.tensor(x)).numpy())


@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_pack_sequence_and_unpack_sequence_vs_torch(enforce_sorted):
    sizes = [4, 2, 1] if enforce_sorted else [2, 4, 1]
    rng = np.random.default_rng(1)
    seqs = [rng.normal(size=(n, 3)).astype(np.float32) for n in sizes]
    ours = rnn.pack_sequence([ddp.tensor(s) for s in seqs], enforce_sorted=enforce_sorted)
    theirs = torch.nn.utils.rnn.pack_sequence([torch.tensor(s) for s in seqs],
                                              enforce_sorted=enforce_sorted)
    np.testing.assert_array_equal(ours.data.numpy(), theirs.data.numpy())
    assert ours.batch_sizes.tolist() == theirs.batch_sizes.tolist()
    for mine, original in zip(rnn.unpack_sequence(ours), seqs, strict=True):
        np.testing.assert_array_equal(mine.numpy(), original)
    padded = rnn.pad_sequence([ddp.tensor(s) for s in seqs], batch_first=True)
    for mine, original in zip(rnn.unpad_sequence(padded, ddp.tensor(sizes), batch_first=True),
                              seqs, strict=True):
        np.testing.assert_array_equal(mine.numpy(), original)


def test_invert_permutation_and_to():
    perm = ddp.tensor([2, 0, 3, 1])
    assert rnn.invert_permutation(perm).tolist() == [1, 3, 0, 2]
    assert rnn.invert_permutation(None) is None
    packed = rnn.pack_sequence([ddp.ones(2, 1), ddp.ones(3, 1)], enforce_sorted=False)
    as64 = packed.double()
    assert as64.data.dtype == ddp.float64 and as64.batch_sizes is packed.batch_sizes
    assert as64.sorted_indices.tolist() == [1, 0] and as64.unsorted_indices.tolist() == [1, 0]
    assert packed.to(ddp.float32) is packed and packed.is_cuda is False


@pytest.mark.parametrize("call,kwargs,error,match", [
    ("pack_padded_sequence", {"lengths": [2, 3, 1]}, RuntimeError, "sorted in decreasing"),
    ("pack_padded_sequence", {"lengths": [3, 2, 0]}, RuntimeError, "greater than 0"),
    ("pack_padded_sequence", {"lengths": [3, 2]}, RuntimeError,
     r"equal to batch_size, but got 2 \(batch_size=3\)"),
    ("pack_padded_sequence", {"lengths": [[3, 2, 1]]}, RuntimeError, "1D CPU int64 tensor"),
    ("pad_sequence", {}, RuntimeError, "Expected padding_side to be one of left or right"),
])
def test_errors_are_torchs(call, kwargs, error, match):
    if call == "pad_sequence":
        args_d, args_t = ([ddp.zeros(2, 1)],), ([torch.zeros(2, 1)],)
        kwargs = {"padding_side": "mid"}
    else:
        args_d, args_t = (ddp.zeros(4, 3, 2),), (torch.zeros(4, 3, 2),)
        if isinstance(kwargs["lengths"][0], list):
            kwargs = {"lengths": torch.tensor(kwargs["lengths"])}
            with pytest.raises(error, match=match):
                getattr(torch.nn.utils.rnn, call)(*args_t, **kwargs)
            kwargs = {"lengths": ddp.tensor([[3, 2, 1]])}
            with pytest.raises(error, match=match):
                getattr(rnn, call)(*args_d, **kwargs)
            return
    with pytest.raises(error, match=match):
        getattr(torch.nn.utils.rnn, call)(*args_t, **kwargs)
    with pytest.raises(error, match=match):
        getattr(rnn, call)(*args_d, **kwargs)


def test_ddp_refuses_lengths_past_the_input_and_short_total_length():
    with pytest.raises(ValueError, match="a length of 5 exceeds the 4 time steps"):
        rnn.pack_padded_sequence(ddp.zeros(4, 2, 1), [5, 1])
    packed = rnn.pack_padded_sequence(ddp.zeros(4, 2, 1), [4, 1])
    with pytest.raises(ValueError, match="total_length=3 and max sequence length being 4"):
        rnn.pad_packed_sequence(packed, total_length=3)
    with pytest.raises(RuntimeError, match="received an empty list of sequences"):
        rnn.pad_sequence([])


RNN_CASES = [  # (class, kwargs)
    ("LSTM", {"num_layers": 2, "bidirectional": True}),
    ("LSTM", {"proj_size": 2, "batch_first": True}),
    ("GRU", {"num_layers": 2, "bidirectional": True, "batch_first": True}),
    ("RNN", {"nonlinearity": "relu", "bidirectional": True}),
    ("RNN", {"num_layers": 3}),
]


def _copy_from_torch(ours, theirs):
    ours.load_state_dict({k: ddp.tensor(v.detach().numpy())
                          for k, v in theirs.state_dict().items()})


@pytest.mark.parametrize("with_hx", [False, True])
@pytest.mark.parametrize("lengths", [[5, 3, 3, 1], [2, 5, 1, 4]])
@pytest.mark.parametrize("cls,kwargs", RNN_CASES)
def test_recurrent_layers_on_packed_batches_vs_torch(cls, kwargs, lengths, with_hx):
    """float64, so every difference is rounding of a few dozen operations per step: rtol 1e-10."""
    rng = np.random.default_rng(2)
    batch_first = kwargs.get("batch_first", False)
    b, t = len(lengths), max(lengths)
    x = rng.normal(size=(b, t, 3) if batch_first else (t, b, 3))
    theirs = getattr(torch.nn, cls)(3, 4, **kwargs).double()
    ours = getattr(ddp.nn, cls)(3, 4, **kwargs).double()
    _copy_from_torch(ours, theirs)
    layers = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
    h_size = kwargs.get("proj_size", 0) or 4
    states = [rng.normal(size=(layers, b, h_size))]
    if cls == "LSTM":
        states.append(rng.normal(size=(layers, b, 4)))
    results = {}
    for lib, T, module in (("ddp", ddp, ours), ("torch", torch, theirs)):
        xt = T.tensor(x, requires_grad=True)
        hx = None
        if with_hx:
            hs = [T.tensor(s, requires_grad=True) for s in states]
            hx = tuple(hs) if cls == "LSTM" else hs[0]
        packed = T.nn.utils.rnn.pack_padded_sequence(xt, lengths, batch_first=batch_first,
                                                     enforce_sorted=False)
        out, h_n = module(packed, hx)
        assert isinstance(out, T.nn.utils.rnn.PackedSequence)
        padded, _ = T.nn.utils.rnn.pad_packed_sequence(out, batch_first=batch_first)
        finals = list(h_n) if cls == "LSTM" else [h_n]
        loss = (padded * T.tensor(np.arange(padded.numel()).reshape(padded.shape) % 7.0)).sum()
        for k, f in enumerate(finals):
            loss = loss + (f * (k + 2)).sum() * (f * f).sum()
        loss.backward()
        grads = [xt.grad] + [p.grad for p in module.parameters()]
        if with_hx:
            grads += [h.grad for h in hs]
        results[lib] = [padded.detach().numpy(), *(f.detach().numpy() for f in finals),
                        *(g.numpy() for g in grads)]
    assert len(results["ddp"]) == len(results["torch"])
    for k, (mine, torchs) in enumerate(zip(results["ddp"], results["torch"], strict=True)):
        np.testing.assert_allclose(mine, torchs, rtol=1e-10, atol=1e-12, err_msg=str(k))


def test_packed_input_with_all_equal_lengths_equals_the_padded_run():
    lstm = ddp.nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    x = ddp.randn(5, 2, 3)
    with ddp.no_grad():
        out, (h, c) = lstm(x)
        packed_out, (hp, cp) = lstm(rnn.pack_padded_sequence(x, [5, 5]))
    np.testing.assert_allclose(rnn.pad_packed_sequence(packed_out)[0].numpy(), out.numpy(),
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(hp.numpy(), h.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(cp.numpy(), c.numpy(), rtol=1e-6, atol=1e-7)
