"""``split``/``chunk`` of a recorded tensor: one multi-output node (``ddp/ops/split.py``)."""

import numpy as np
import pytest
from _helpers import check_grad, check_torch

import ddp


def _used_pieces(T, x, pick, dim=1, sizes=(1, 3, 2)):
    pieces = (x * 1.5).split(list(sizes), dim=dim)
    return [pieces[k] * (k + 2) for k in pick]


@pytest.mark.parametrize("pick", [(0, 1, 2), (1,), (2, 0), (0, 0, 2)])
def test_split_gradient_finite_differences(pick):
    # every piece, one piece (the others' parts zero), out of order, one piece used twice
    assert check_grad(lambda T, x: _used_pieces(T, x, pick), [(2, 6, 3)])


@pytest.mark.parametrize("pick", [(0, 1, 2), (1,), (2, 0)])
def test_split_and_chunk_vs_torch(pick):
    check_torch(lambda T, x: _used_pieces(T, x, pick, dim=2, sizes=(1, 1, 1)), [(2, 3, 3)])
    check_torch(lambda T, x: [p.sin() for p in (x * 2).chunk(3, dim=0)[: len(pick)]],
                [(7, 2)])


def test_split_names_views_and_retained_graph_as_torch(torch):
    for lib, name in ((ddp, "ddp"), (torch, "torch")):
        x = lib.arange(12.0).reshape(3, 4).requires_grad_()
        y = x * 2
        a, b = y.split(2, dim=1)
        c, d = y.split([1, 3], dim=1)
        assert a.grad_fn.name() == "SplitBackward0", name
        assert c.grad_fn.name() == "SplitWithSizesBackward0", name
        assert a.grad_fn.next_functions[0][0].name() == "MulBackward0", name
        assert np.shares_memory(a.detach().numpy(), y.detach().numpy()), name
        loss = (a * 3).sum() + d.sum()
        loss.backward(retain_graph=True)
        loss.backward()  # twice: the gradients of the second run are not those of the first
        # d loss / d y = [3, 3 + 1, 1, 1] per row, dy/dx = 2, and two backward passes
        np.testing.assert_array_equal(x.grad.numpy(), 2 * np.array([[6.0, 8, 2, 2]] * 3), name)


def test_in_place_on_a_recorded_split_piece_raises():
    y = ddp.ones(2, 4, requires_grad=True) * 2
    a, _ = y.split(2, dim=1)
    with pytest.raises(RuntimeError, match="in-place operation on a view"):
        a.add_(1)


def test_hook_on_a_piece_sees_its_gradient():
    x = ddp.ones(2, 4, requires_grad=True)
    a, b = (x * 1).split(2, dim=1)
    seen = []
    b.register_hook(lambda g: seen.append(g.numpy().copy()))
    (a.sum() + (b * 5).sum()).backward()
    np.testing.assert_array_equal(seen[0], np.full((2, 2), 5.0))
    np.testing.assert_array_equal(x.grad.numpy(), [[1, 1, 5, 5]] * 2)


def test_split_of_a_leaf_is_one_node_as_torch(torch):
    for lib, name in ((ddp, "ddp"), (torch, "torch")):
        x = lib.arange(12.0).reshape(3, 4).requires_grad_()
        a, b = x.split([1, 3], dim=1)
        c, _ = x.chunk(2, dim=0)
        assert a.grad_fn.name() == "SplitWithSizesBackward0", name
        assert c.grad_fn.name() == "SplitBackward0", name
        assert a.grad_fn.next_functions[0][0].name() == "torch::autograd::AccumulateGrad", name
        assert np.shares_memory(a.detach().numpy(), x.detach().numpy()), name
        ((a * 3).sum() + c.sum()).backward()
        np.testing.assert_array_equal(
            x.grad.numpy(), [[4.0, 1, 1, 1], [4, 1, 1, 1], [3, 0, 0, 0]], name)
        with pytest.raises(RuntimeError):
            b.mul_(2)  # an in-place change of a leaf's split piece
