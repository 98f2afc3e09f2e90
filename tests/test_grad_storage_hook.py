"""``Tensor.register_grad_storage_hook``: backward writes a new ``.grad`` into supplied memory.

The seam DDP's ``gradient_as_bucket_view`` uses (tests/distributed/test_bucket_view.py); here
the engine's side alone: when the hook is asked, what lands in the memory, accumulation in
place, fallbacks, removal and the errors.
"""

from __future__ import annotations

import numpy as np
import pytest

import ddp


def _leaf(seed: int = 0) -> ddp.Tensor:
    rng = np.random.default_rng(seed)
    return ddp.tensor(rng.standard_normal((3, 4)), requires_grad=True)


def _expected_grad(w: ddp.Tensor, x: np.ndarray) -> np.ndarray:
    # d/dw sum(tanh(w) * x) = (1 - tanh(w)^2) * x
    return (1 - np.tanh(w.detach().numpy()) ** 2) * x


def _backward(w: ddp.Tensor, x: np.ndarray) -> None:
    (ddp.tanh(w) * ddp.tensor(x)).sum().backward()


def test_new_grad_is_written_into_the_supplied_memory_and_accumulates_there():
    w = _leaf()
    storage = np.full((3, 4), np.nan)  # must be overwritten, not added to
    asked = []
    w.register_grad_storage_hook(lambda t: asked.append(t) or storage)
    x1, x2 = np.arange(12.0).reshape(3, 4), np.ones((3, 4))
    _backward(w, x1)
    assert asked == [w]
    assert w.grad.array is storage
    np.testing.assert_allclose(storage, _expected_grad(w, x1), rtol=1e-12, atol=0)
    _backward(w, x2)  # .grad exists: accumulated in place, the hook is not asked again
    assert len(asked) == 1 and w.grad.array is storage
    np.testing.assert_allclose(storage, _expected_grad(w, x1 + x2), rtol=1e-12, atol=1e-15)


def test_grad_set_to_none_is_reattached_to_the_same_memory():
    w = _leaf()
    storage = np.zeros((3, 4))
    w.register_grad_storage_hook(lambda t: storage)
    x = np.ones((3, 4))
    for _ in range(3):
        w.grad = None  # optimizer.zero_grad(set_to_none=True)
        _backward(w, x)
        assert w.grad.array is storage
        np.testing.assert_allclose(storage, _expected_grad(w, x), rtol=1e-12, atol=0)


def test_grad_assigned_by_hand_is_accumulated_into_not_replaced():
    w = _leaf()
    storage = np.zeros((3, 4))
    w.register_grad_storage_hook(lambda t: storage)
    mine = ddp.full((3, 4), 2.0, dtype=ddp.float64)
    w.grad = mine
    x = np.ones((3, 4))
    _backward(w, x)
    assert w.grad is mine and not storage.any()
    np.testing.assert_allclose(mine.numpy(), 2.0 + _expected_grad(w, x), rtol=1e-12, atol=0)


def test_none_falls_back_to_earlier_hooks_then_to_a_fresh_array_and_handles_remove():
    w = _leaf()
    first, second = np.zeros((3, 4)), np.zeros((3, 4))
    h1 = w.register_grad_storage_hook(lambda t: first)
    h2 = w.register_grad_storage_hook(lambda t: second)  # the most recent is asked first
    x = np.ones((3, 4))
    _backward(w, x)
    assert w.grad.array is second
    h2.remove()
    w.grad = None
    _backward(w, x)
    assert w.grad.array is first
    h1.remove()
    w.register_grad_storage_hook(lambda t: None)
    w.grad = None
    _backward(w, x)
    assert w.grad.array is not first and w.grad.array is not second
    np.testing.assert_allclose(w.grad.numpy(), _expected_grad(w, x), rtol=1e-12, atol=0)


def test_tensor_hooks_and_dtype_cast_apply_before_the_write():
    w = ddp.tensor(np.ones((2, 2), dtype=np.float32), requires_grad=True)
    storage = np.zeros((2, 2), dtype=np.float32)
    w.register_grad_storage_hook(lambda t: storage)
    w.register_hook(lambda g: g * 3)
    (w * 2).sum().backward()
    assert w.grad.array is storage
    np.testing.assert_array_equal(storage, 6.0)  # 2 * 3, exact in float32


@pytest.mark.parametrize("bad", [np.zeros((4, 3)), np.zeros((3, 4), dtype=np.float32)])
def test_wrong_memory_is_refused_naming_shapes_and_dtypes(bad):
    w = _leaf()
    w.register_grad_storage_hook(lambda t: bad)
    with pytest.raises(RuntimeError, match=r"grad storage hook returned .* for a leaf of shape "
                                           r"\(3, 4\) and dtype float64"):
        _backward(w, np.ones((3, 4)))


def test_only_leaves_that_require_grad():
    w = _leaf()
    with pytest.raises(RuntimeError, match="non-leaf"):
        (w * 2).register_grad_storage_hook(lambda t: None)
    with pytest.raises(RuntimeError, match="doesn't require gradient"):
        ddp.zeros(3).register_grad_storage_hook(lambda t: None)
