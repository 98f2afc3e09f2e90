"""Gradient destinations (``ddp/autograd/grad_destination.py``): a backward writes a leaf's new
gradient straight into the memory its grad storage hook supplies (DDP's bucket slot).

Proved two ways: the op's GEMM is handed the slot as ``out`` (a spy on ``kernels.matmul``), and
backward allocates no array of the gradient's size (tracemalloc: the copy path must allocate
one). Every case where writing there would differ from the copy keeps the copy and torch's
semantics: tensor hooks, an existing ``.grad``, a weight used twice, ``autograd.grad``,
bfloat16 (computed in float32), checkpointing. Values are checked against torch in float64.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import ddp
from ddp import kernels
from tests._helpers import torch_oracle

IN, OUT, ROWS = 64, 48, 5


def _slots(module) -> dict:
    """Give every parameter of ``module`` a storage hook over a NaN-filled array (must be
    overwritten, never added to); returns name -> that array."""
    slots = {}
    for name, p in module.named_parameters():
        slots[name] = np.full(p.shape, np.nan, dtype=p.array.dtype)
        p.register_grad_storage_hook(lambda t, s=slots[name]: s)
    return slots


def _linear(seed: int = 0, dtype=ddp.float64) -> ddp.nn.Linear:
    ddp.manual_seed(seed)
    return ddp.nn.Linear(IN, OUT, dtype=dtype)


def _x(shape=(ROWS, IN), seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def _torch_linear_grads(lin, x: np.ndarray, weight_hook=None, backwards: int = 1) -> dict:
    torch = torch_oracle()
    w = torch.tensor(lin.weight.detach().numpy().astype(np.float64), requires_grad=True)
    b = torch.tensor(lin.bias.detach().numpy().astype(np.float64), requires_grad=True)
    if weight_hook is not None:
        w.register_hook(weight_hook)
    for _ in range(backwards):
        (torch.nn.functional.linear(torch.tensor(x), w, b) ** 2).sum().backward()
    return {"weight": w.grad.numpy(), "bias": b.grad.numpy()}


def _assert_grads(lin, expected: dict, rtol: float = 1e-12) -> None:
    for name, p in lin.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), expected[name], rtol=rtol, atol=1e-12,
                                   err_msg=name)


@pytest.fixture
def matmul_outs(monkeypatch) -> list:
    """Every ``out`` that ``kernels.matmul`` is given (None when it allocates)."""
    seen: list = []
    real = kernels.matmul

    def spy(a, b, out=None):
        seen.append(out)
        return real(a, b, out=out)

    monkeypatch.setattr(kernels, "matmul", spy)
    return seen


@pytest.mark.parametrize("x_shape", [(ROWS, IN), (2, 3, IN)])
def test_linear_writes_its_weight_gradient_into_the_slot(matmul_outs, x_shape):
    lin = _linear()
    slots = _slots(lin)
    x = _x(x_shape)
    (lin(ddp.tensor(x)) ** 2).sum().backward()
    assert any(out is slots["weight"] for out in matmul_outs)  # the GEMM wrote there
    for name, p in lin.named_parameters():
        assert p.grad.array is slots[name], name  # adopted as .grad, no copy
    _assert_grads(lin, _torch_linear_grads(lin, x.reshape(-1, IN)))


def _big_linear():
    ddp.manual_seed(0)  # weight gradient: 1 MiB of float64
    return ddp.nn.Linear(512, 256, dtype=ddp.float64), ddp.tensor(_x((2, 512)))


def _big_embedding():
    ddp.manual_seed(0)  # weight gradient: 2 MiB of float64
    return ddp.nn.Embedding(4096, 64, dtype=ddp.float64), ddp.tensor(np.array([[3, 7, 3]]))


@pytest.mark.parametrize("make", [_big_linear, _big_embedding])
def test_no_gradient_sized_array_is_allocated_on_the_direct_path(make):
    module, x = make()
    nbytes = module.weight.array.nbytes

    def peak_of_backward() -> int:
        loss = module(x).sum()
        tracemalloc.start()
        try:
            loss.backward()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    _slots(module)
    assert peak_of_backward() < nbytes / 2
    for p in module.parameters():
        p.grad = None
    module.weight.register_hook(lambda g: None)  # a tensor hook: the copy path
    assert peak_of_backward() >= nbytes  # the fresh gradient the slot is copied from


def test_without_a_storage_hook_nothing_changes(matmul_outs):
    lin = _linear()
    x = _x()
    (lin(ddp.tensor(x)) ** 2).sum().backward()
    assert all(out is None for out in matmul_outs)
    _assert_grads(lin, _torch_linear_grads(lin, x))


def test_a_tensor_hook_sees_the_gradient_before_it_lands_and_may_replace_it(matmul_outs):
    lin = _linear()
    slots = _slots(lin)
    seen = []

    def double(g):
        seen.append(g)  # kept: must not alias the slot, which DDP later averages in place
        return g * 2

    lin.weight.register_hook(double)
    x = _x()
    (lin(ddp.tensor(x)) ** 2).sum().backward()
    assert all(out is not slots["weight"] for out in matmul_outs)
    assert lin.weight.grad.array is slots["weight"]  # the hook's result, copied into the slot
    assert not np.shares_memory(seen[0].array, slots["weight"])
    expected = _torch_linear_grads(lin, x, weight_hook=lambda g: g * 2)
    np.testing.assert_allclose(lin.weight.grad.numpy(), expected["weight"], rtol=1e-12)
    slots["weight"][...] = 0  # what DDP's in-place average does to the slot
    np.testing.assert_allclose(seen[0].numpy(), expected["weight"] / 2, rtol=1e-12)


def test_an_existing_grad_accumulates_in_place(matmul_outs):
    lin = _linear()
    slots = _slots(lin)
    x = _x()
    for _ in range(2):
        (lin(ddp.tensor(x)) ** 2).sum().backward()
    assert sum(out is slots["weight"] for out in matmul_outs) == 1  # the first backward only
    for name, p in lin.named_parameters():
        assert p.grad.array is slots[name]
    _assert_grads(lin, _torch_linear_grads(lin, x, backwards=2))


def test_a_weight_used_twice_sums_both_contributions():
    torch = torch_oracle()
    lin = _linear()
    square = ddp.nn.Linear(OUT, OUT, dtype=ddp.float64)
    slots = _slots(square)
    x = _x((ROWS, OUT))
    ddp.tanh(square(ddp.tanh(square(ddp.tensor(x))))).sum().backward()
    w = torch.tensor(square.weight.detach().numpy(), requires_grad=True)
    b = torch.tensor(square.bias.detach().numpy(), requires_grad=True)
    f = torch.nn.functional.linear
    torch.tanh(f(torch.tanh(f(torch.tensor(x), w, b)), w, b)).sum().backward()
    for name, p in square.named_parameters():
        assert p.grad.array is slots[name], name
    np.testing.assert_allclose(square.weight.grad.numpy(), w.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(square.bias.grad.numpy(), b.grad.numpy(), rtol=1e-12)
    del lin


def test_autograd_grad_never_writes_the_slot(matmul_outs):
    lin = _linear()
    slots = _slots(lin)
    x = _x()
    gw, gb = ddp.autograd.grad((lin(ddp.tensor(x)) ** 2).sum(), [lin.weight, lin.bias])
    assert all(out is None for out in matmul_outs)
    assert lin.weight.grad is None and np.isnan(slots["weight"]).all()
    expected = _torch_linear_grads(lin, x)
    np.testing.assert_allclose(gw.numpy(), expected["weight"], rtol=1e-12)
    np.testing.assert_allclose(gb.numpy(), expected["bias"], rtol=1e-12)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpointed_linear_writes_into_the_slot_once(use_reentrant):
    from ddp.utils.checkpoint import checkpoint

    lin = _linear()
    slots = _slots(lin)
    x = _x()
    y = checkpoint(lin, ddp.tensor(x), use_reentrant=use_reentrant)
    (y ** 2).sum().backward()
    for name, p in lin.named_parameters():
        assert p.grad.array is slots[name], name
    _assert_grads(lin, _torch_linear_grads(lin, x))


def test_bfloat16_weights_are_computed_in_float32_and_copied(matmul_outs):
    lin = _linear(dtype=ddp.bfloat16)
    slots = _slots(lin)
    x = ddp.tensor(_x()).to(ddp.bfloat16)
    (lin(x) ** 2).sum().backward()
    assert all(out is None for out in matmul_outs)  # float32 result, bfloat16 slot
    assert lin.weight.grad.array is slots["weight"]
    reference = _linear(dtype=ddp.bfloat16)
    (reference(x) ** 2).sum().backward()
    np.testing.assert_array_equal(lin.weight.grad.float().numpy(),
                                  reference.weight.grad.float().numpy())


@pytest.mark.parametrize("padding_idx", [None, 2])
def test_embedding_scatters_into_the_slot(padding_idx):
    torch = torch_oracle()
    ddp.manual_seed(0)
    emb = ddp.nn.Embedding(10, 6, padding_idx=padding_idx, dtype=ddp.float64)
    slots = _slots(emb)
    indices = np.array([[1, 2, 2], [7, 1, 9]])
    weights = _x((2, 3, 6))
    (emb(ddp.tensor(indices)) * ddp.tensor(weights)).sum().backward()
    assert emb.weight.grad.array is slots["weight"]
    w = torch.tensor(emb.weight.detach().numpy(), requires_grad=True)
    out = torch.nn.functional.embedding(torch.tensor(indices), w, padding_idx=padding_idx)
    (out * torch.tensor(weights)).sum().backward()
    np.testing.assert_allclose(emb.weight.grad.numpy(), w.grad.numpy(), rtol=1e-12, atol=0)


def test_autocast_puts_a_cast_between_and_keeps_the_copy(matmul_outs):
    lin = _linear(dtype=ddp.float32)
    slots = _slots(lin)
    reference = _linear(dtype=ddp.float32)
    x = ddp.tensor(_x()).float()
    for module in (lin, reference):
        with ddp.autocast("cpu", dtype=ddp.bfloat16):
            loss = module(x).float().pow(2).sum()
        loss.backward()
    assert all(out is not slots["weight"] for out in matmul_outs)
    assert lin.weight.grad.array is slots["weight"]
    for name, p in lin.named_parameters():
        np.testing.assert_array_equal(p.grad.numpy(), reference.get_parameter(name).grad.numpy())


def test_a_non_leaf_weight_gets_no_destination(matmul_outs):
    lin = _linear()
    slots = _slots(lin)
    x = _x()
    weight = lin.weight * 1.0  # not a leaf: its gradient flows on to MulBackward
    weight.retain_grad()
    (ddp.nn.functional.linear(ddp.tensor(x), weight, lin.bias) ** 2).sum().backward()
    assert all(out is None for out in matmul_outs)
    expected = _torch_linear_grads(lin, x)
    np.testing.assert_allclose(weight.grad.numpy(), expected["weight"], rtol=1e-12)
    assert lin.weight.grad.array is slots["weight"]
    _assert_grads(lin, expected)
