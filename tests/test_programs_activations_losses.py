"""Small torch programs that use the newer layers, losses, optimizers and schedulers, run once
with ``T = torch`` and once with ``T = ddp`` from the same initial weights (float64): losses,
parameters and learning rates must agree after every step."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import torch_oracle
from test_models_vs_torch import _copy_weights

import ddp

torch = torch_oracle()


def tabular_net(T):
    nn = T.nn
    return nn.Sequential(
        nn.Linear(8, 16), nn.PReLU(16), nn.Linear(16, 16), nn.SiLU(), nn.LeakyReLU(0.1),
        nn.Linear(16, 16), nn.ELU(0.8), nn.Mish(), nn.Linear(16, 16), nn.Softplus(beta=2.0),
        nn.Hardtanh(-2.0, 2.0), nn.Linear(16, 4),
    )


def conv_net(T):
    nn = T.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 4, 3)
            self.act = nn.ReLU6()
            self.prelu = nn.PReLU()
            self.head = nn.Linear(4 * 7 * 7, 5)  # reflect to 8x8, conv to 6x6, pads to 7x7

        def forward(self, x):
            x = nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
            x = self.prelu(self.act(self.conv(x) * 3))
            x = nn.functional.pad(x, (0, 0, 1, 0), mode="replicate")
            x = nn.functional.pad(x, (1, 0, 0, 0))
            return self.head(x.flatten(1))

    return Net()


def _multi_label_loss(T, out, y):
    pos_weight = T.tensor(np.array([2.0, 0.5, 1.0, 3.0]))
    bce = T.nn.BCEWithLogitsLoss(pos_weight=pos_weight)(out, y)
    probs = T.sigmoid(out)
    return (bce + 0.5 * T.nn.BCELoss()(probs, y) + 0.1 * T.nn.SmoothL1Loss(beta=0.5)(out, y)
            + 0.1 * T.nn.HuberLoss(delta=0.3)(out, y) + 0.05 * T.nn.L1Loss()(out, y))


def _distribution_loss(T, out, y):
    logp = T.nn.functional.log_softmax(out, dim=1)
    kl = T.nn.KLDivLoss(reduction="batchmean")(logp, y)
    cos = T.nn.functional.cosine_similarity(out, y, dim=1).mean()
    unit = T.nn.functional.normalize(out, dim=1)
    return kl - 0.1 * cos + 0.01 * (unit * unit).sum()


PROGRAMS = {
    "rmsprop-onecycle": (tabular_net, "multi-label",
                         lambda T, p: T.optim.RMSprop(p, lr=0.01, momentum=0.9, centered=True),
                         lambda T, o: T.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05,
                                                                      total_steps=8)),
    "adagrad-plateau": (conv_net, "distribution",
                        lambda T, p: T.optim.Adagrad(p, lr=0.05, lr_decay=0.01),
                        lambda T, o: T.optim.lr_scheduler.ReduceLROnPlateau(o, patience=0,
                                                                            factor=0.5)),
    "adadelta-multistep": (tabular_net, "multi-label",
                           lambda T, p: T.optim.Adadelta(p, lr=2.0, weight_decay=1e-3),
                           lambda T, o: T.optim.lr_scheduler.MultiStepLR(o, [3, 5], 0.3)),
    "sgd-onecycle-three-phase": (conv_net, "distribution",
                                 lambda T, p: T.optim.SGD(p, lr=0.1, momentum=0.9),
                                 lambda T, o: T.optim.lr_scheduler.OneCycleLR(
                                     o, max_lr=0.2, total_steps=8, three_phase=True,
                                     anneal_strategy="linear")),
}


def _data(kind: str):
    rng = np.random.default_rng(4)
    if kind == "multi-label":
        return rng.standard_normal((12, 8)), (rng.random((12, 4)) > 0.5).astype(np.float64)
    return rng.standard_normal((6, 2, 6, 6)), rng.dirichlet(np.ones(5), size=6)


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_program_trains_like_torch(name):
    build, kind, make_opt, make_sched = PROGRAMS[name]
    loss_fn = _multi_label_loss if kind == "multi-label" else _distribution_loss
    x, y = _data(kind)
    torch.manual_seed(0)
    t_model, d_model = build(torch), build(ddp)
    t_model.double()
    d_model.double()
    _copy_weights(d_model, t_model)
    runs = []
    for T, model in ((ddp, d_model), (torch, t_model)):
        opt = make_opt(T, model.parameters())
        sched = make_sched(T, opt)
        xt, yt = T.tensor(x), T.tensor(y)
        record = []
        for _ in range(8):
            opt.zero_grad()
            loss = loss_fn(T, model(xt), yt)
            loss.backward()
            opt.step()
            if isinstance(sched, T.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(loss.item())
            else:
                sched.step()
            record.append((loss.item(), [g["lr"] for g in opt.param_groups],
                           [p.detach().numpy().copy() for p in model.parameters()]))
        runs.append(record)
    for step, (ours, theirs) in enumerate(zip(*runs, strict=True)):
        np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-9, err_msg=f"loss, step {step}")
        assert ours[1] == pytest.approx(theirs[1], rel=1e-12), f"lr at step {step}"
        for k, (a, b) in enumerate(zip(ours[2], theirs[2], strict=True)):
            np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10,
                                       err_msg=f"parameter {k} after step {step}")
