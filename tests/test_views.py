"""``view``, ``reshape`` and ``view(dtype)`` keep torch's memory contract, with torch as oracle.

A view shares memory with its base in both directions and raises where torch raises; ``reshape``
aliases exactly when a view exists; ``view(dtype)`` reinterprets bits. Every layout below is
built the same way in both libraries, so strides (and so the answers) are torch's.
"""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import check_torch, torch_oracle

import ddp
from ddp.ops.views import NOT_VIEWABLE, view_strides

torch = torch_oracle()

# Layouts of a (2, 3, 4) base: contiguous, permuted, sliced with steps and offsets, expanded.
LAYOUTS = {
    "contiguous": lambda x: x,
    "permute_102": lambda x: x.permute(1, 0, 2),
    "permute_201": lambda x: x.permute(2, 0, 1),
    "transpose_02": lambda x: x.transpose(0, 2),
    "step_last": lambda x: x[:, :, ::2],
    "offset_middle": lambda x: x[:, 1:, :],
    "narrow_last": lambda x: x.narrow(2, 1, 2),
    "step_first": lambda x: x[::2],
    "select_middle": lambda x: x[:, 1],
    "expand_middle": lambda x: x[:, :1, :].expand(2, 3, 4),
    "unsqueeze_expand": lambda x: x.unsqueeze(1).expand(2, 2, 3, 4),
    "unsqueeze_permuted": lambda x: x.permute(2, 1, 0).unsqueeze(1),
    "t_of_select": lambda x: x[0].t(),
    "flatten_rows": lambda x: x.reshape(6, 4),
    "narrow_rows_t": lambda x: x.reshape(6, 4)[1:5].t(),
}


def _targets(shape: tuple) -> list[tuple]:
    """New shapes of as many elements: flat, merges, splits, inserted 1s, reordered sizes."""
    out = [(-1,), tuple(shape), tuple(reversed(shape))]
    for i in range(len(shape) - 1):
        out.append(shape[:i] + (shape[i] * shape[i + 1],) + shape[i + 2:])
    for i, size in enumerate(shape):
        for f in range(2, size):
            if size % f == 0:
                out.append(shape[:i] + (f, size // f) + shape[i + 1:])
        out.append(shape[:i] + (1,) + shape[i:])
    out.append(shape[:-1] + (1, -1))
    return list(dict.fromkeys(out))


def _cases() -> list:
    return [pytest.param(layout, target, id=f"{name}->{list(target)}")
            for name, layout in LAYOUTS.items()
            for target in _targets(tuple(layout(torch.zeros(2, 3, 4)).shape))]


def _bases():
    return ddp.arange(24.0).reshape(2, 3, 4), torch.arange(24.0).reshape(2, 3, 4)


def _torch_shares(a, b) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _outcome(fn):
    try:
        return fn(), None
    except RuntimeError as exc:
        return None, str(exc)


@pytest.mark.parametrize(("layout", "target"), _cases())
def test_view_aliases_or_raises_exactly_where_torch_does(layout, target):
    base, tbase = _bases()
    x, tx = layout(base), layout(tbase)
    expected, expected_error = _outcome(lambda: tx.view(target))
    got, error = _outcome(lambda: x.view(target))
    assert error == expected_error
    if expected is None:
        return
    assert tuple(got.shape) == tuple(expected.shape)
    np.testing.assert_array_equal(got.numpy(), expected.numpy())
    assert np.shares_memory(got.array, base.array)
    itemsize = got.array.itemsize
    for d, size in enumerate(got.shape):
        if size != 1:  # a size-1 dimension's stride is arbitrary in both libraries
            assert got.array.strides[d] // itemsize == expected.stride(d), f"stride of dim {d}"


@pytest.mark.parametrize(("layout", "target"), _cases())
def test_reshape_aliases_exactly_when_torch_does(layout, target):
    base, tbase = _bases()
    x, tx = layout(base), layout(tbase)
    expected, got = tx.reshape(target), x.reshape(target)
    np.testing.assert_array_equal(got.numpy(), expected.numpy())
    assert np.shares_memory(got.array, base.array) == _torch_shares(expected, tbase)


@pytest.mark.parametrize(("layout", "target"), _cases())
def test_view_strides_is_torchs_compute_stride(layout, target):
    tx = layout(torch.zeros(2, 3, 4))
    shape = tuple(tx.reshape(target).shape)  # -1 resolved
    strides = view_strides(tuple(tx.shape), tuple(tx.stride()), shape)
    try:
        expected = tuple(tx.view(shape).stride())
    except RuntimeError:
        assert strides is None
        return
    assert strides is not None
    assert [s for s, n in zip(strides, shape, strict=True) if n != 1] == [
        s for s, n in zip(expected, shape, strict=True) if n != 1]


def test_writes_through_a_view_reach_the_base_and_back():
    x = ddp.arange(6.0).reshape(2, 3)
    y = x.view(-1)
    y[0] = 100.0
    assert x[0, 0].item() == 100.0
    x[1, 2] = -5.0
    assert y[5].item() == -5.0
    y.mul_(2)  # no graph: the in-place op writes the shared memory
    np.testing.assert_array_equal(x.numpy(), [[200, 2, 4], [6, 8, -10]])
    q = ddp.arange(24.0).reshape(2, 12)[:, 4:8]  # a column block: viewable, not contiguous
    heads = q.view(2, 2, 2)
    heads[1, 1, 1] = 0.0
    assert q[1, 3].item() == 0.0
    z = x.view_as(ddp.zeros(3, 2))
    z[2, 1] = 7.0
    assert x[1, 2].item() == 7.0


def test_view_that_needs_a_copy_raises_torchs_error():
    x = ddp.arange(6.0).reshape(2, 3)
    with pytest.raises(RuntimeError) as exc:
        torch.arange(6.0).reshape(2, 3).t().view(-1)
    assert str(exc.value) == NOT_VIEWABLE
    with pytest.raises(RuntimeError, match=r"Use \.reshape\(\.\.\.\) instead"):
        x.t().view(-1)
    with pytest.raises(RuntimeError, match=r"Use \.reshape"):
        x.t().view_as(ddp.zeros(6))
    flat = x.t().reshape(-1)  # reshape copies instead
    assert not np.shares_memory(flat.array, x.array)
    np.testing.assert_array_equal(flat.numpy(), [0, 3, 1, 4, 2, 5])


@pytest.mark.parametrize("shape", [(4, 4), (-1, 4), (-1, -1), (-2, 3), (0, -1), (7,)])
@pytest.mark.parametrize("method", ["view", "reshape"])
def test_shape_errors_match_torch(shape, method):
    _, expected = _outcome(lambda: getattr(torch.arange(6.0), method)(shape))
    _, error = _outcome(lambda: getattr(ddp.arange(6.0), method)(shape))
    assert expected is not None and error == expected


@pytest.mark.parametrize("shape", [(-1,), (0, -1), (3, 0), (-1, 0), (0,)])
def test_views_of_empty_tensors_match_torch(shape):
    got, error = _outcome(lambda: ddp.zeros(0, 3).view(shape))
    expected, expected_error = _outcome(lambda: torch.zeros(0, 3).view(shape))
    assert error == expected_error
    if expected is not None:
        assert tuple(got.shape) == tuple(expected.shape)


def test_view_argument_forms():
    x = ddp.arange(6.0)
    assert x.view(2, 3).shape == (2, 3) and x.view((3, 2)).shape == (3, 2)
    assert x.view([6]).shape == (6,) and x.view(size=(2, 3)).shape == (2, 3)
    assert x.view(ddp.Size([1, 6])).shape == (1, 6)
    assert ddp.tensor(5.0).view(1, 1).shape == (1, 1) and ddp.tensor(5.0).view(-1).shape == (1,)
    assert x.view(dtype=ddp.int32).dtype == ddp.int32
    assert ddp.tensor(5.0).view(()).shape == ()
    for bad in (lambda T: T.ones(1).view(1, dtype=T.int32), lambda T: T.ones(1).view()):
        for T in (torch, ddp):
            with pytest.raises(TypeError, match="invalid combination"):
                bad(T)
    with pytest.raises(TypeError, match="float"):
        x.view(2.0, 3)


# Other ops that torch documents as views (or as copies): ddp aliases exactly where torch does.
ALIASING_OPS = {
    "flatten": lambda x: x.flatten(),
    "flatten_t": lambda x: x.t().flatten(),
    "unflatten": lambda x: x.unflatten(1, (3, 1)),
    "unflatten_t": lambda x: x.t().unflatten(0, (3, 1)),
    "view_as": lambda x: x.view_as(x.t()),
    "reshape_as_t": lambda x: x.t().reshape_as(x),
    "squeeze": lambda x: x.unsqueeze(1).squeeze(),
    "unsqueeze_t": lambda x: x.t().unsqueeze(1),
    "t": lambda x: x.t(),
    "transpose": lambda x: x.transpose(0, 1),
    "permute": lambda x: x.permute(1, 0),
    "T": lambda x: x.T,
    "mT": lambda x: x.mT,
    "narrow": lambda x: x.narrow(1, 1, 2),
    "split": lambda x: x.split(1, dim=0)[1],
    "chunk": lambda x: x.chunk(3, dim=1)[2],
    "unbind": lambda x: x.unbind(1)[1],
    "getitem": lambda x: x[1, 1:],
    "flip": lambda x: x.flip(0),
    "flip_t": lambda x: x.t().flip(1),
    "contiguous_t": lambda x: x.t().contiguous(),
    "repeat": lambda x: x.repeat(1, 1),
    "fancy_index": lambda x: x[[0, 1]],
    "detach": lambda x: x.detach(),
    "clone": lambda x: x.clone(),
}


@pytest.mark.parametrize("op", ALIASING_OPS.values(), ids=list(ALIASING_OPS))
def test_ops_alias_their_input_exactly_when_torch_does(op):
    x, tx = ddp.arange(6.0).reshape(2, 3), torch.arange(6.0).reshape(2, 3)
    got, expected = op(x), op(tx)
    np.testing.assert_array_equal(got.numpy(), expected.numpy())
    shares = _torch_shares(expected, tx)
    assert np.shares_memory(got.array, x.array) == shares
    if shares:  # and a write through the result is seen by the input, as in torch
        last = (-1,) * got.ndim
        got[last] = expected[last] = -1.0
        np.testing.assert_array_equal(x.numpy(), tx.numpy())


@pytest.mark.parametrize(("shape", "dims"), [((2, 3), (1, 1)), ((2, 3), (-1, 1)), ((3,), (0, -1)),
                                            ((2, 3), (0, 1)), ((), (0, -1))])
def test_flatten_returns_the_tensor_itself_where_torch_does(shape, dims):
    x, tx = ddp.zeros(shape), torch.zeros(shape)
    got, expected = x.flatten(*dims), tx.flatten(*dims)
    assert (got is x) == (expected is tx)
    assert tuple(got.shape) == tuple(expected.shape)


# ------------------------------------------------------------------------- view(dtype)
DTYPE_NAMES = ["float32", "int32", "uint8", "float64", "int64", "float16", "int16", "int8"]
BYTE_LAYOUTS = {
    "contiguous": lambda x: x,
    "row_step": lambda x: x[::2],
    "rows_from_1": lambda x: x[1:],
    "cols_from_2": lambda x: x[:, 2:],
    "cols_from_1": lambda x: x[:, 1:],
    "col_step": lambda x: x[:, ::2],
    "t": lambda x: x.t(),
    "one_col_t": lambda x: x[:, :1].t(),
    "scalar": lambda x: x[0, 0],
}


def _random_bytes(src: str) -> np.ndarray:
    raw = np.random.default_rng(0).integers(0, 256, size=192, dtype=np.uint8)
    return raw.view(np.dtype(src)).reshape(4, -1)


@pytest.mark.parametrize("layout", BYTE_LAYOUTS.values(), ids=list(BYTE_LAYOUTS))
@pytest.mark.parametrize("dst", DTYPE_NAMES)
@pytest.mark.parametrize("src", ["float32", "uint8", "float64", "int16"])
def test_view_dtype_reinterprets_bits_as_torch(src, dst, layout):
    data = _random_bytes(src)
    x = layout(ddp.tensor(data.copy()))
    tx = layout(torch.from_numpy(data.copy()))
    expected, expected_error = _outcome(lambda: tx.view(getattr(torch, dst)))
    got, error = _outcome(lambda: x.view(getattr(ddp, dst)))
    assert error == expected_error
    if expected is None:
        return
    assert got.dtype == getattr(ddp, dst) and tuple(got.shape) == tuple(expected.shape)
    np.testing.assert_array_equal(np.ascontiguousarray(got.numpy()).view(np.uint8),
                                  np.ascontiguousarray(expected.numpy()).view(np.uint8))
    assert np.shares_memory(got.array, x.array)


def test_view_dtype_shares_memory_and_scales_the_last_dim():
    x = ddp.arange(6.0).reshape(2, 3)
    as_int = x.view(ddp.int32)
    np.testing.assert_array_equal(as_int.numpy(), torch.arange(6.0).reshape(2, 3)
                                  .view(torch.int32).numpy())
    as_int[0, 1] = 0x40490FDB  # the bits of float32 pi
    assert x[0, 1].item() == pytest.approx(3.14159274)
    assert x.view(ddp.uint8).shape == (2, 12) and x.view(ddp.float16).shape == (2, 6)
    assert x.view(ddp.float32).shape == (2, 3)
    flags = ddp.tensor(np.array([0, 1, 1], dtype=np.uint8)).view(ddp.bool)
    assert flags.tolist() == [False, True, True]
    assert torch.zeros(2, 4).view(float).dtype == torch.float64  # torch reads float as float64
    assert ddp.zeros(2, 4).view(float).dtype == ddp.float64


@pytest.mark.parametrize("dst", ["float32", "int32", "float16", "float64"])
def test_view_dtype_is_outside_the_graph_as_in_torch(dst):
    w = ddp.ones(2, 4, requires_grad=True)
    tw = torch.ones(2, 4, requires_grad=True)
    for d, t in ((w.view(getattr(ddp, dst)), tw.view(getattr(torch, dst))),
                 ((w * 2).view(getattr(ddp, dst)), (tw * 2).view(getattr(torch, dst)))):
        assert d.requires_grad == t.requires_grad and d.grad_fn is None and t.grad_fn is None


# ------------------------------------------------------------------------------ gradients
def test_gradient_through_views_matches_torch():
    def heads(T, qkv):
        q, k = qkv.split(8, dim=2)  # column blocks: views that are not contiguous
        q = q.view(2, 5, 2, 4).transpose(1, 2)
        k = k.view(2, 5, 2, 4).transpose(1, 2)
        return (q @ k.transpose(-2, -1)).flatten(2).view(2, -1)

    check_torch(heads, [(2, 5, 16)])
    check_torch(lambda T, x: x.t().reshape(-1) * x.view(-1), [(3, 4)])
    check_torch(lambda T, x: x.view_as(T.zeros(4, 3)).t().unflatten(0, (3, 1)), [(3, 4)])


def test_gradient_of_a_view_does_not_alias_data_or_the_incoming_gradient():
    w = ddp.arange(6.0).reshape(2, 3).requires_grad_()
    g = ddp.ones(6)
    w.view(-1).backward(g)
    assert not np.shares_memory(w.grad.array, g.array)
    assert not np.shares_memory(w.grad.array, w.array)
    g.fill_(5.0)  # the caller's gradient buffer changing later must not reach w.grad
    w.view(3, 2).sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), np.full((2, 3), 2.0))
    np.testing.assert_array_equal(w.detach().numpy(), np.arange(6.0).reshape(2, 3))


def test_writing_through_an_expanded_tensor_is_refused_loudly():
    # torch lets a write reach the base through an expanded view; ddp's expand is a read-only
    # NumPy broadcast, so the write raises rather than going anywhere else.
    x = ddp.zeros(3)
    y = x.expand(2, 3)
    assert np.shares_memory(y.array, x.array)
    with pytest.raises(ValueError, match="read-only"):
        y[0, 0] = 5.0


# ------------------------------------------------------------- in-place ops through views
@pytest.mark.parametrize("make_view", [
    lambda t: t.view(-1), lambda t: t.t(), lambda t: t[0], lambda t: t.narrow(0, 0, 1),
    lambda t: t.unsqueeze(0),
], ids=["view", "t", "select", "narrow", "unsqueeze"])
def test_inplace_on_a_view_of_a_leaf_that_requires_grad_raises_like_torch(make_view, torch):
    expected = "a view of a leaf Variable that requires grad is being used in an in-place"
    for lib in (ddp, torch):
        w = lib.ones(2, 2, requires_grad=True)
        with pytest.raises(RuntimeError, match=expected):
            make_view(w).mul_(3)
    w = ddp.ones(2, 2, requires_grad=True)
    with pytest.raises(RuntimeError, match=expected):
        w.view(-1)[0] = 5.0


def test_inplace_on_a_view_of_a_graph_tensor_raises_instead_of_detaching(torch):
    # torch updates h through the view (CopySlices): grad 6. ddp cannot yet, so it must say so.
    w_t = torch.ones(2, 2, requires_grad=True)
    h_t = w_t * 2
    h_t.view(-1).mul_(3)
    h_t.sum().backward()
    assert w_t.grad.tolist() == [[6.0, 6.0], [6.0, 6.0]]
    w = ddp.ones(2, 2, requires_grad=True)
    h = w * 2
    with pytest.raises(RuntimeError, match=r"in-place operation on a view \(ViewBackward0\)"):
        h.view(-1).mul_(3)


def test_inplace_through_views_without_a_graph_writes_the_base():
    x = ddp.zeros(2, 3)
    x.view(-1)[4] = 7.0
    x.t()[0].add_(1.0)
    with ddp.no_grad():
        w = ddp.ones(2, 2, requires_grad=True)
        w.view(-1).mul_(3)
    assert x.tolist() == [[1.0, 0.0, 0.0], [1.0, 7.0, 0.0]]
    assert w.tolist() == [[3.0, 3.0], [3.0, 3.0]]


def test_inplace_on_a_reshape_copy_is_allowed_as_in_torch():
    w = ddp.arange(6.0).reshape(2, 3).requires_grad_()
    y = w.t().reshape(-1)  # a copy: not a view of w
    y.mul_(2)
    y.sum().backward()
    assert w.grad.tolist() == [[2.0] * 3] * 2
