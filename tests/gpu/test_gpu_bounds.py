"""On a GPU, out-of-range indices raise as on the CPU: CuPy itself wraps them silently."""

from __future__ import annotations

import numpy as np
import pytest

import ddp
import ddp.nn.functional as F

pytestmark = pytest.mark.gpu


def _x():
    return ddp.arange(6.0, device="cuda").reshape(2, 3)


@pytest.mark.parametrize("fn, exc, fragment", [
    (lambda: _x().index_select(1, ddp.tensor([-1], device="cuda")), IndexError,
     "index out of range in self"),
    (lambda: _x().index_select(0, ddp.tensor([2], device="cuda")), IndexError,
     "index out of range in self"),
    (lambda: _x().gather(1, ddp.tensor([[3], [0]], device="cuda")), RuntimeError,
     "index 3 is out of bounds for dimension 1 with size 3"),
    (lambda: _x().gather(1, ddp.tensor([[-1], [0]], device="cuda")), RuntimeError,
     "index -1 is out of bounds"),
    (lambda: _x()[ddp.tensor([2], device="cuda")], IndexError,
     "index 2 is out of bounds for dimension 0 with size 2"),
    (lambda: _x()[:, ddp.tensor([-4], device="cuda")], IndexError,
     "index -4 is out of bounds for dimension 1 with size 3"),
    (lambda: _x().__setitem__(ddp.tensor([5], device="cuda"), 1.0), IndexError,
     "index 5 is out of bounds for dimension 0"),
    (lambda: ddp.tensor([7], device="cuda") // 0, RuntimeError, "ZeroDivisionError"),
    (lambda: ddp.tensor([7], device="cuda") % ddp.tensor([0], device="cuda"), RuntimeError,
     "ZeroDivisionError"),
    (lambda: F.embedding(ddp.tensor([5], device="cuda"), ddp.zeros(5, 2, device="cuda")),
     IndexError, "index out of range in self"),
], ids=["index_select-negative", "index_select-high", "gather-high", "gather-negative",
        "getitem", "getitem-negative", "setitem", "floordiv-zero", "remainder-zero",
        "embedding"])
def test_out_of_range_on_device_raises(fn, exc, fragment):
    with pytest.raises(exc, match=fragment.replace("(", r"\(")):
        fn()


def test_in_range_indices_on_device_compute_as_on_the_cpu():
    idx = ddp.tensor([2, 0, -1], device="cuda")
    np.testing.assert_array_equal(_x()[:, idx].cpu().numpy(), [[2, 0, 2], [5, 3, 5]])
    np.testing.assert_array_equal(
        _x().index_select(1, ddp.tensor([2, 0], device="cuda")).cpu().numpy(), [[2, 0], [5, 3]])
    np.testing.assert_array_equal(
        _x().gather(1, ddp.tensor([[2], [0]], device="cuda")).cpu().numpy(), [[2], [3]])
    np.testing.assert_array_equal(
        ddp.div(ddp.tensor([7, -7], device="cuda"), 2, rounding_mode="trunc").cpu().numpy(),
        [3, -3])
