"""On a GPU the newer activations, element-wise losses, helpers, channel dropout and adaptive
optimizers give the CPU's numbers (float32 tolerance), and keep their results on the GPU."""

from __future__ import annotations

import math

import numpy as np
import pytest

import ddp
import ddp.nn.functional as F
from ddp import optim
from ddp.nn.utils import rnn

pytestmark = pytest.mark.gpu

_r = np.random.default_rng(3)
PROBS = _r.uniform(0.05, 0.95, (4, 3)).astype(np.float32)
TARGETS = _r.uniform(0.0, 1.0, (4, 3)).astype(np.float32)

CASES = {
    "silu": (lambda x: F.silu(x), [(4, 5)]),
    "mish": (lambda x: F.mish(x * 3), [(4, 5)]),
    "leaky_relu": (lambda x: F.leaky_relu(x, 0.2), [(4, 5)]),
    "elu": (lambda x: F.elu(x, 0.7), [(4, 5)]),
    "softplus": (lambda x: F.softplus(x * 4, beta=2.0, threshold=5.0), [(4, 5)]),
    "hardtanh_relu6": (lambda x: F.hardtanh(x) + F.relu6(x * 4), [(4, 5)]),
    "prelu": (lambda x, w: F.prelu(x, w), [(2, 3, 4), (3,)]),
    "bce": (lambda x, t: F.binary_cross_entropy(x, t, reduction="none"), [PROBS, TARGETS]),
    "bce_logits": (lambda x, t: F.binary_cross_entropy_with_logits(
        x, t, pos_weight=ddp.tensor([2.0, 0.5, 1.0]), reduction="none"), [(4, 3), TARGETS]),
    "l1_smooth_huber": (lambda a, b: F.l1_loss(a, b) + F.smooth_l1_loss(a, b, beta=0.5)
                        + F.huber_loss(a, b, delta=0.7), [(4, 5), (4, 5)]),
    "kl_div": (lambda x, t: F.kl_div(F.log_softmax(x, 1), t, reduction="batchmean"),
               [(4, 3), PROBS / PROBS.sum(1, keepdims=True)]),
    "normalize": (lambda x: F.normalize(x, p=3.0) + F.normalize(x, p=math.inf, dim=0),
                  [(4, 5)]),
    "cosine_similarity": (lambda a, b: F.cosine_similarity(a, b), [(4, 5), (1, 5)]),
    "pad_constant": (lambda x: F.pad(x, (1, -1, 2, 0), value=0.5), [(2, 3, 4)]),
    "pad_reflect": (lambda x: F.pad(x, (2, 1, 1, 2), mode="reflect"), [(2, 3, 4, 5)]),
    "pad_replicate": (lambda x: F.pad(x, (2, 1), mode="replicate"), [(2, 3, 4)]),
    "pad_circular": (lambda x: F.pad(x, (3, 1), mode="circular"), [(2, 3, 4)]),
    "pad_crop_reflect": (lambda x: F.pad(x, (-1, 2, 1, -1), mode="reflect"), [(2, 3, 4, 5)]),
    "interpolate_bilinear": (lambda x: F.interpolate(x, size=(5, 7), mode="bilinear",
                                                     align_corners=True), [(1, 2, 3, 4)]),
    "interpolate_bicubic": (lambda x: F.interpolate(x, scale_factor=1.5, mode="bicubic"),
                            [(1, 2, 3, 4)]),
    "interpolate_nearest": (lambda x: F.interpolate(x, scale_factor=(2.5, 0.5)),
                            [(1, 2, 3, 4)]),
    "pack_pad": (lambda x: rnn.pad_packed_sequence(
        rnn.pack_padded_sequence(x, [2, 4, 1], enforce_sorted=False), total_length=5)[0],
        [(4, 3, 2)]),
    "lstm_packed": (lambda x: _packed_lstm(x), [(4, 3, 2)]),
}


def _packed_lstm(x):
    ddp.manual_seed(0)
    lstm = ddp.nn.LSTM(2, 3, num_layers=2, bidirectional=True).to(x.device)
    out, (h, c) = lstm(rnn.pack_padded_sequence(x, [2, 4, 1], enforce_sorted=False))
    return rnn.pad_packed_sequence(out)[0].sum(0).sum(-1, keepdim=True) + h.sum(0) + c.sum(0)


def _run(dev, fn, specs):
    rng = np.random.default_rng(0)
    arrays = [s if isinstance(s, np.ndarray) else rng.standard_normal(s).astype(np.float32)
              for s in specs]
    with ddp.device(dev):
        ts = [ddp.tensor(a, requires_grad=True) for a in arrays]
        out = fn(*ts)
        assert out.device.type == dev
        w = ddp.tensor(np.random.default_rng(9).standard_normal(tuple(out.shape))
                       .astype(np.float32))
        (out * w).sum().backward()
    return [out.detach().cpu().numpy()] + [t.grad.cpu().numpy() for t in ts]


@pytest.mark.parametrize("name", sorted(CASES))
def test_function_on_gpu_equals_cpu(name):
    fn, specs = CASES[name]
    cpu, gpu = _run("cpu", fn, specs), _run("cuda", fn, specs)
    for k, (c, g) in enumerate(zip(cpu, gpu, strict=True)):
        assert g.dtype == c.dtype == np.float32 and g.shape == c.shape
        np.testing.assert_allclose(g, c, rtol=2e-4, atol=1e-5, err_msg=f"{name}: item {k}")


def test_one_hot_and_channel_dropout_stay_on_the_gpu():
    idx = ddp.tensor([[0, 2], [1, 1]], device="cuda")
    hot = F.one_hot(idx, 4)
    assert hot.device.type == "cuda" and hot.dtype == ddp.int64
    np.testing.assert_array_equal(hot.cpu().numpy(), np.eye(4, dtype=np.int64)[[[0, 2], [1, 1]]])
    x = ddp.ones(8, 16, 2, 2, device="cuda", requires_grad=True)
    y = F.dropout2d(x, 0.5)
    assert y.device.type == "cuda"
    y.sum().backward()
    out = y.detach().cpu().numpy()
    assert ((out == 0) | (out == 2)).all() and (out == out[:, :, :1, :1]).all()
    np.testing.assert_array_equal(x.grad.cpu().numpy(), out)


@pytest.mark.parametrize("cls,kwargs", [(optim.RMSprop, {"centered": True, "momentum": 0.5}),
                                        (optim.Adagrad, {"lr_decay": 0.1}),
                                        (optim.Adadelta, {"weight_decay": 0.1})])
def test_adaptive_optimizers_on_gpu_equal_cpu(cls, kwargs):
    init = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    results = []
    for dev in ("cpu", "cuda"):
        p = ddp.tensor(init, device=dev, requires_grad=True)
        opt = cls([p], **kwargs)
        for step in range(4):
            g = np.random.default_rng(step).standard_normal((3, 4)).astype(np.float32)
            p.grad = ddp.tensor(g, device=dev)
            opt.step()
        assert p.device.type == dev
        results.append(p.detach().cpu().numpy())
    np.testing.assert_allclose(results[1], results[0], rtol=1e-5, atol=1e-6)
