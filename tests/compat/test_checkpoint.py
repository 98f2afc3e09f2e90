"""``ddp.utils.checkpoint.checkpoint``: recompute in backward, gradients equal the plain run;
and ``engine.grad`` (torch.autograd.grad), the seam it is built on."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import torch_oracle

import ddp
import ddp.distributed as dist
import ddp.nn as nn
import ddp.nn.functional as F
from ddp.autograd import engine
from ddp.nn.parallel import DistributedDataParallel as DDP
from ddp.utils.checkpoint import checkpoint, checkpoint_sequential

torch = torch_oracle()


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 12), nn.Linear(12, 6)

    def forward(self, x):
        return x + self.fc2(F.dropout(F.gelu(self.fc1(x)), 0.3, training=self.training))


class Net(nn.Module):
    def __init__(self, use_checkpoint: bool):
        super().__init__()
        self.blocks = nn.ModuleList([Block() for _ in range(3)])
        self.head = nn.Linear(6, 1)
        self.use_checkpoint = use_checkpoint

    def forward(self, x):
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if self.use_checkpoint else block(x)
        return self.head(x)


def _grads(use_checkpoint: bool, input_requires_grad: bool):
    ddp.manual_seed(0)
    net = Net(use_checkpoint)
    x = ddp.randn(5, 6, requires_grad=input_requires_grad)
    ddp.manual_seed(1)  # the dropout masks
    loss = net(x).pow(2).mean()
    loss.backward()
    grads = {name: p.grad.numpy().copy() for name, p in net.named_parameters()}
    return loss.item(), grads, None if x.grad is None else x.grad.numpy().copy()


@pytest.mark.parametrize("input_requires_grad", [True, False])
def test_gradients_equal_the_plain_run(input_requires_grad):
    loss, grads, x_grad = _grads(False, input_requires_grad)
    loss_c, grads_c, x_grad_c = _grads(True, input_requires_grad)
    assert loss_c == loss
    assert grads_c.keys() == grads.keys()
    for name in grads:
        np.testing.assert_allclose(grads_c[name], grads[name], rtol=1e-6, atol=1e-7,
                                   err_msg=name)
    if input_requires_grad:
        np.testing.assert_allclose(x_grad_c, x_grad, rtol=1e-6, atol=1e-7)
    else:
        assert x_grad_c is None


def test_activations_are_not_kept_and_are_recomputed():
    calls = []
    lin = nn.Linear(4, 4)

    def segment(x):
        calls.append(ddp.is_grad_enabled())
        return lin(x).tanh()

    x = ddp.randn(2, 4, requires_grad=True)
    y = checkpoint(segment, x, use_reentrant=False)
    assert y.grad_fn.name() == "CheckpointFunctionBackward"
    assert calls == [True]
    y.sum().backward()
    assert calls == [True, True]  # recomputed once, in backward
    w_grad = lin.weight.grad.numpy().copy()
    lin.weight.grad = None
    segment(x).sum().backward()
    np.testing.assert_allclose(w_grad, lin.weight.grad.numpy(), rtol=1e-6)


def test_tuple_outputs_and_kwargs():
    lin = nn.Linear(3, 3)

    def segment(x, scale=1.0):
        h = lin(x)
        return h * scale, h.sum(), "meta"

    x = ddp.randn(4, 3, requires_grad=True)
    a, s, meta = checkpoint(segment, x, use_reentrant=False, scale=2.0)
    assert meta == "meta"
    (a.sum() + 3 * s).backward()
    w_grad, x_grad = lin.weight.grad.numpy().copy(), x.grad.numpy().copy()
    lin.weight.grad = x.grad = None
    a, s, _ = segment(x, scale=2.0)
    (a.sum() + 3 * s).backward()
    np.testing.assert_allclose(w_grad, lin.weight.grad.numpy(), rtol=1e-6)
    np.testing.assert_allclose(x_grad, x.grad.numpy(), rtol=1e-6)


def test_checkpoint_sequential_equals_the_plain_run():
    ddp.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(4, 4) if i % 2 == 0 else nn.Tanh() for i in range(7)])
    x = ddp.randn(3, 4, requires_grad=True)
    model(x).sum().backward()
    plain = [p.grad.numpy().copy() for p in model.parameters()] + [x.grad.numpy().copy()]
    model.zero_grad()
    x.grad = None
    out = checkpoint_sequential(model, 3, x, use_reentrant=False)
    assert out.grad_fn.name() != "CheckpointFunctionBackward"  # the last piece runs plainly
    out.sum().backward()
    for a, b in zip([p.grad.numpy() for p in model.parameters()] + [x.grad.numpy()], plain,
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    with pytest.raises(ValueError, match="Unexpected keyword arguments: bogus"):
        checkpoint_sequential(model, 2, x, use_reentrant=False, bogus=1)


def test_under_no_grad_and_errors():
    lin = nn.Linear(2, 2)
    with ddp.no_grad():
        assert not checkpoint(lin, ddp.ones(1, 2), use_reentrant=False).requires_grad
    with pytest.warns(UserWarning, match="use_reentrant parameter should be passed explicitly"):
        checkpoint(lin, ddp.ones(1, 2))
    outside = lin(ddp.ones(1, 2))  # an intermediate result that requires grad
    with pytest.raises(NotImplementedError, match="reads a tensor computed outside it"):
        checkpoint(lambda x: x + outside, ddp.ones(1, 2), use_reentrant=False)
    sizes = iter([1, 2])

    def unstable(x):
        return lin(x)[:, : next(sizes)] * 1.0

    y = checkpoint(unstable, ddp.ones(1, 2), use_reentrant=False)
    with pytest.raises(RuntimeError, match="recomputation returned tensors of shapes"):
        y.sum().backward()


def _ddp_rank(use_checkpoint: bool):
    ddp.manual_seed(0)
    net = Net(use_checkpoint)
    net.eval()  # no dropout: ranks differ only by data
    model = DDP(net)
    ddp.manual_seed(10 + dist.get_rank())
    model(ddp.randn(4, 6)).pow(2).mean().backward()
    return {name: p.grad.numpy().copy() for name, p in net.named_parameters()}


def test_ddp_with_checkpointed_blocks_equals_ddp_without():
    plain = dist.spawn(_ddp_rank, 2, args=(False,))
    checkpointed = dist.spawn(_ddp_rank, 2, args=(True,))
    for rank in range(2):
        for name, grad in plain[rank].items():
            np.testing.assert_allclose(checkpointed[rank][name], grad, rtol=1e-6, atol=1e-7,
                                       err_msg=f"rank {rank} {name}")
    for name in plain[0]:
        np.testing.assert_array_equal(checkpointed[0][name], checkpointed[1][name])


@pytest.mark.parametrize("lib", ["ddp", "torch"])
def test_autograd_grad_contract(lib):
    T = ddp if lib == "ddp" else torch
    grad = engine.grad if lib == "ddp" else torch.autograd.grad
    x = T.tensor([1.0, 2.0], requires_grad=True)
    y = T.tensor([3.0], requires_grad=True)
    h = x * x
    out = (h * 3).sum()
    gh, gx = grad(out, [h, x], retain_graph=True)
    assert gh.tolist() == [3.0, 3.0] and gx.tolist() == [6.0, 12.0]
    assert x.grad is None  # nothing accumulates
    with pytest.raises(RuntimeError, match="index 1 appears to not have been used"):
        grad(out, [x, y], retain_graph=True)
    gx, gy = grad(out, [x, y], allow_unused=True, retain_graph=True)
    assert gy is None
    assert grad(out, [y], materialize_grads=True)[0].tolist() == [0.0]
    with pytest.raises(RuntimeError, match="does not require grad"):
        grad((x * 2).sum(), [T.ones(2)])
