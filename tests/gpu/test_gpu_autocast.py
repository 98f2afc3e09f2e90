"""``autocast("cuda")``: float16 by default and torch's CUDA policy (softmax, layer_norm, sum and
the losses in float32), gradients reaching float32 parameters in float32."""

from __future__ import annotations

import pytest

import ddp
from ddp import backend

pytestmark = pytest.mark.gpu


def test_cuda_policy_and_gradients():
    model = ddp.nn.Linear(4, 3).cuda()
    x = ddp.randn(2, 4).cuda()
    with ddp.autocast("cuda"):
        assert ddp.get_autocast_dtype("cuda") == ddp.float16
        h = model(x)
        assert h.dtype == ddp.float16 and h.is_cuda
        assert h.softmax(-1).dtype == ddp.float32  # CUDA's float32 list, unlike CPU's
        assert ddp.nn.functional.layer_norm(h, (3,)).dtype == ddp.float32
        assert h.sum().dtype == ddp.float32
        loss = ddp.nn.functional.cross_entropy(h, ddp.tensor([0, 1]).cuda())
        assert loss.dtype == ddp.float32
        with pytest.raises(RuntimeError, match="unsafe to autocast"):
            ddp.nn.functional.binary_cross_entropy(h.sigmoid(), ddp.ones(2, 3).cuda())
    loss.backward()
    assert model.weight.grad.dtype == ddp.float32 and model.weight.grad.is_cuda


def test_bfloat16_on_the_gpu_works_or_names_the_limitation():
    t = ddp.ones(3, dtype=ddp.bfloat16)
    if backend.cupy_bfloat16_problem() is None:
        assert t.cuda().dtype == ddp.bfloat16 and t.cuda().cpu().tolist() == [1.0, 1.0, 1.0]
    else:
        with pytest.raises(RuntimeError, match="bfloat16 tensor to cuda"):
            t.cuda()
