"""The benchmarks' ResNet-18 (benchmarks/models.py, narrow) trained a few steps in ddp and in
torch from the same weights: losses, gradients, parameters and BatchNorm running statistics."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from _helpers import torch_oracle

import ddp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import models  # noqa: E402 - benchmarks/models.py: written once for both libraries

torch = torch_oracle()


def test_resnet_float64_matches_torch_over_steps():
    torch.manual_seed(0)
    t_model = models.resnet(torch, width=4).double()
    d_model = models.resnet(ddp, width=4).double()
    assert list(d_model.state_dict()) == list(t_model.state_dict())
    models.copy_weights(t_model, d_model)
    t_opt = models.make_optimizer(torch, "resnet", t_model.parameters())
    d_opt = models.make_optimizer(ddp, "resnet", d_model.parameters())
    for step in range(3):
        x, y = models.batch("resnet", 6, seed=step)
        x = x[:, :, :16, :16].astype(np.float64)
        t_loss = models.loss_fn(torch, t_model(torch.from_numpy(x)), torch.from_numpy(y))
        d_loss = models.loss_fn(ddp, d_model(ddp.from_numpy(x)), ddp.from_numpy(y))
        t_opt.zero_grad()
        d_opt.zero_grad()
        t_loss.backward()
        d_loss.backward()
        assert abs(d_loss.item() - t_loss.item()) < 1e-12, step
        for (name, p), q in zip(d_model.named_parameters(), t_model.parameters(), strict=True):
            np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-9, atol=1e-11,
                                       err_msg=f"{name}.grad, step {step}")
        t_opt.step()
        d_opt.step()
    t_state = t_model.state_dict()
    for name, value in d_model.state_dict().items():
        np.testing.assert_allclose(value.numpy(), t_state[name].numpy(), rtol=1e-9, atol=1e-11,
                                   err_msg=name)
    d_model.eval()
    t_model.eval()
    x = models.batch("resnet", 4, seed=9)[0][:, :, :16, :16].astype(np.float64)
    with ddp.no_grad(), torch.no_grad():
        np.testing.assert_allclose(d_model(ddp.from_numpy(x)).numpy(),
                                   t_model(torch.from_numpy(x)).numpy(), rtol=1e-9, atol=1e-11)
