"""Whole models trained for a few steps in ddp and in torch from the same weights.

Each model is written once against a namespace ``T`` (``ddp`` or ``torch``), built in both,
torch's initial weights are copied into ddp, and both train for 5 steps. Losses, every
parameter's gradient and the parameters after each step must agree.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from _helpers import torch_oracle

import ddp
import ddp.optim  # noqa: F401 - our own package: an import error is a failure, never a skip

torch = torch_oracle()

STEPS = 5


def mlp(T):
    return T.nn.Sequential(T.nn.Linear(10, 32), T.nn.ReLU(), T.nn.Linear(32, 32), T.nn.Tanh(),
                           T.nn.Linear(32, 3))


def cnn(T):
    return T.nn.Sequential(
        T.nn.Conv2d(1, 4, 3, padding=1), T.nn.ReLU(), T.nn.MaxPool2d(2),
        T.nn.Conv2d(4, 6, 3, stride=1, padding=1), T.nn.ReLU(), T.nn.MaxPool2d(2),
        T.nn.Flatten(), T.nn.Linear(6 * 2 * 2, 3),
    )


def gpt(T, vocab=11, block=8, width=16, heads=2, layers=2, tied=True):
    nn = T.nn

    class SelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(width, 3 * width)
            self.proj = nn.Linear(width, width)
            self.register_buffer("mask", T.tril(T.ones(block, block)).view(1, 1, block, block),
                                 persistent=False)

        def forward(self, x):
            b, t, c = x.shape
            q, k, v = self.qkv(x).split(width, dim=2)
            q = q.view(b, t, heads, c // heads).transpose(1, 2)
            k = k.view(b, t, heads, c // heads).transpose(1, 2)
            v = v.view(b, t, heads, c // heads).transpose(1, 2)
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(c // heads))
            att = att.masked_fill(self.mask[:, :, :t, :t] == 0, float("-inf"))
            att = nn.functional.softmax(att, dim=-1)
            y = (att @ v).transpose(1, 2).reshape(b, t, c)
            return self.proj(y)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1 = nn.LayerNorm(width)
            self.attn = SelfAttention()
            self.ln2 = nn.LayerNorm(width)
            self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(),
                                     nn.Linear(4 * width, width))

        def forward(self, x):
            x = x + self.attn(self.ln1(x))
            return x + self.mlp(self.ln2(x))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(vocab, width)
            self.wpe = nn.Embedding(block, width)
            self.blocks = nn.ModuleList([Block() for _ in range(layers)])
            self.ln_f = nn.LayerNorm(width)
            self.head = nn.Linear(width, vocab, bias=False)
            if tied:
                self.head.weight = self.wte.weight

        def forward(self, idx):
            t = idx.shape[1]
            x = self.wte(idx) + self.wpe(T.arange(t))
            for blk in self.blocks:
                x = blk(x)
            return self.head(self.ln_f(x))

    return GPT()


def _copy_weights(d_model, t_model):
    state = {k: ddp.tensor(v.detach().numpy()) for k, v in t_model.state_dict().items()}
    d_model.load_state_dict(state)


def _train_and_compare(build, make_opt, x, y, loss_fn, rtol=1e-4, atol=1e-5, double=False,
                       steps=STEPS):
    torch.manual_seed(0)
    t_model = build(torch)
    d_model = build(ddp)
    if double:
        t_model.double()
        d_model.double()
        x = x.astype(np.float64) if x.dtype.kind == "f" else x
    _copy_weights(d_model, t_model)
    d_params = dict(d_model.named_parameters())
    t_params = dict(t_model.named_parameters())
    assert list(d_params) == list(t_params)
    d_opt, t_opt = make_opt(ddp, d_model.parameters()), make_opt(torch, t_model.parameters())
    dx, tx = ddp.tensor(x), torch.tensor(x)
    dy, ty = ddp.tensor(y), torch.tensor(y)
    for step in range(steps):
        d_opt.zero_grad()
        t_opt.zero_grad()
        d_loss = loss_fn(ddp, d_model(dx), dy)
        t_loss = loss_fn(torch, t_model(tx), ty)
        d_loss.backward()
        t_loss.backward()
        np.testing.assert_allclose(float(d_loss), float(t_loss.detach()), rtol=rtol,
                                   err_msg=f"loss at step {step}")
        for name, tp in t_params.items():
            np.testing.assert_allclose(d_params[name].grad.numpy(), tp.grad.numpy(), rtol=rtol,
                                       atol=atol, err_msg=f"grad of {name} at step {step}")
        d_opt.step()
        t_opt.step()
        for name, tp in t_params.items():
            np.testing.assert_allclose(d_params[name].detach().numpy(), tp.detach().numpy(),
                                       rtol=rtol, atol=atol,
                                       err_msg=f"{name} after step {step}")


def _cross_entropy(T, logits, target):
    return T.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                         target.reshape(-1))


def test_mlp_sgd_momentum_matches_torch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 10)).astype(np.float32)
    y = rng.integers(0, 3, 16)
    _train_and_compare(
        mlp, lambda T, p: T.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-4), x, y,
        _cross_entropy)


def test_cnn_adam_matches_torch():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, 4)
    _train_and_compare(cnn, lambda T, p: T.optim.Adam(p, lr=1e-3), x, y, _cross_entropy)


@pytest.mark.parametrize("tied", [True, False])
def test_gpt_adamw_matches_torch(tied):
    # float64: some gradients are exactly zero in exact arithmetic (the key bias of attention:
    # softmax ignores a per-row constant) and Adam turns their float32 rounding noise (~1e-9,
    # close to eps) into full-size steps in both frameworks, differently. In float64 the noise
    # is far below eps; the float32 forward/backward is checked by the next test.
    rng = np.random.default_rng(2)
    idx = rng.integers(0, 11, (2, 8))
    target = rng.integers(0, 11, (2, 8))
    _train_and_compare(lambda T: gpt(T, tied=tied),
                       lambda T, p: T.optim.AdamW(p, lr=1e-3, weight_decay=0.1), idx, target,
                       _cross_entropy, rtol=1e-9, atol=1e-11, double=True)


def test_gpt_float32_step_matches_torch():
    rng = np.random.default_rng(3)
    idx = rng.integers(0, 11, (2, 8))
    target = rng.integers(0, 11, (2, 8))
    _train_and_compare(gpt, lambda T, p: T.optim.SGD(p, lr=0.1), idx, target, _cross_entropy,
                       steps=3)
