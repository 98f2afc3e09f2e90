"""Every op of ``tests/test_ops.py``'s table gives on a GPU what it gives on the CPU.

The table's functions create their own helper tensors (indices, masks) with ``T.tensor``; under
``with ddp.device("cuda")`` those land on the GPU too, as in torch with a default device.
"""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import _loss, _weights, ddp_forward, make_inputs
from test_ops import CASES

import ddp

pytestmark = pytest.mark.gpu


def _run(dev: str, shapes, fn, low):
    arrays = make_inputs(shapes, np.float32, 0, low)
    with ddp.device(dev):
        tensors, outputs = ddp_forward(fn, arrays)
        loss = _loss(ddp, outputs, _weights(outputs))
        if loss is not None:
            loss.backward()
    for k, o in enumerate(outputs):
        assert o.device.type == dev, f"output {k} is on {o.device}, expected {dev}"
    return ([o.detach().cpu().numpy() for o in outputs],
            [None if t.grad is None else t.grad.cpu().numpy() for t in tensors])


@pytest.mark.parametrize("shapes,fn,torch_fn,opts", CASES)
def test_op_on_gpu_equals_cpu(shapes, fn, torch_fn, opts):
    cpu_out, cpu_grads = _run("cpu", shapes, fn, opts.get("low"))
    gpu_out, gpu_grads = _run("cuda", shapes, fn, opts.get("low"))
    atol = max(opts.get("atol", 0.0), 1e-4)
    for k, (c, g) in enumerate(zip(cpu_out, gpu_out, strict=True)):
        assert g.dtype == c.dtype and g.shape == c.shape, f"output {k}: {g.dtype}{g.shape}"
        np.testing.assert_allclose(g, c, rtol=2e-4, atol=atol, err_msg=f"output {k}")
    for i, (c, g) in enumerate(zip(cpu_grads, gpu_grads, strict=True)):
        assert (c is None) == (g is None), f"input {i}: gradient present on one device only"
        if c is not None:
            np.testing.assert_allclose(g, c, rtol=2e-4, atol=atol, err_msg=f"grad of input {i}")
