"""On a GPU the ResNet layers (batch/group norm, conv1d, conv_transpose2d, average pooling) give
the CPU's numbers, running statistics included (float32 tolerance, as test_gpu_ops.py)."""

from __future__ import annotations

import numpy as np
import pytest

import ddp
import ddp.nn as nn
import ddp.nn.functional as F

pytestmark = pytest.mark.gpu

OPS = {
    "batch_norm_train": (lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
                         [(4, 3, 5, 5), (3,), (3,)]),
    "batch_norm_1d": (lambda x: F.batch_norm(x, None, None, training=True), [(6, 3)]),
    "group_norm": (lambda x, w, b: F.group_norm(x, 2, w, b), [(2, 4, 3, 5), (4,), (4,)]),
    "conv1d": (lambda x, w, b: F.conv1d(x, w, b, stride=2, padding=1),
               [(2, 3, 9), (4, 3, 3), (4,)]),
    "conv_transpose2d": (lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2, padding=1,
                                                            output_padding=1),
                         [(2, 3, 4, 5), (3, 4, 3, 3), (4,)]),
    "avg_pool2d": (lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False), [(2, 3, 7, 6)]),
    "avg_pool2d_ceil": (lambda x: F.avg_pool2d(x, 2, ceil_mode=True), [(2, 3, 5, 7)]),
    "adaptive_avg_pool2d": (lambda x: F.adaptive_avg_pool2d(x, (2, 3)), [(2, 3, 5, 7)]),
    "adaptive_avg_pool2d_1": (lambda x: F.adaptive_avg_pool2d(x, 1), [(2, 3, 4, 4)]),
}


def _run(dev: str, fn, arrays):
    ts = [ddp.tensor(a, device=dev, requires_grad=True) for a in arrays]
    out = fn(*ts)
    assert out.device.type == dev
    w = ddp.tensor(np.random.default_rng(9).standard_normal(tuple(out.shape)).astype(np.float32),
                   device=dev)
    (out * w).sum().backward()
    return [out.detach().cpu().numpy()] + [t.grad.cpu().numpy() for t in ts]


@pytest.mark.parametrize("name", sorted(OPS))
def test_layer_on_gpu_equals_cpu(name):
    fn, shapes = OPS[name]
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    for c, g in zip(_run("cpu", fn, arrays), _run("cuda", fn, arrays), strict=True):
        np.testing.assert_allclose(g, c, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("cls", [nn.BatchNorm2d, nn.SyncBatchNorm])
def test_batchnorm_module_running_stats_on_gpu(cls):
    rng = np.random.default_rng(2)
    xs = [(rng.standard_normal((4, 3, 4, 4)) * 2 + 1).astype(np.float32) for _ in range(3)]
    results = []
    for dev in ("cpu", "cuda"):
        m = cls(3, momentum=None).to(dev)
        outs = [m(ddp.tensor(x, device=dev)).detach().cpu().numpy() for x in xs]
        m.eval()
        outs.append(m(ddp.tensor(xs[0], device=dev)).detach().cpu().numpy())
        assert m.running_mean.device.type == dev
        outs += [b.cpu().numpy() for b in m.buffers()]
        results.append(outs)
    for c, g in zip(*results, strict=True):
        assert c.dtype == g.dtype
        np.testing.assert_allclose(g, c, rtol=1e-4, atol=1e-5)
