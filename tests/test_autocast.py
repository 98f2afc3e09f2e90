"""``ddp.autocast`` against torch's CPU autocast on the benchmarks' MLP, CNN and GPT.

Both frameworks build the same model (benchmarks/models.py) with the same weights; a forward
hook on every module records the dtype of its output. Under ``autocast("cpu")`` (bfloat16) the
dtypes must be equal module by module, the losses close and the parameter gradients float32 and
close.

Tolerances come from bfloat16's 8 significant bits (eps = 2**-7): one rounding has relative
error at most u = 2**-8, and a value rounded in one framework may land one bfloat16 step (2u)
away from the other's when their float32 accumulations differ in the last bits (summation
order). The loss (a mean of log-softmax terms, Lipschitz in the logits) and each gradient,
relative to its largest entry, are compared at 4u = 2**-6 (1.6%, two bfloat16 steps): measured
differences are 0 (MLP), 0.6% (CNN and GPT gradients) and 4e-5 (GPT loss), while a float16 or
float32 slip in one layer changes the dtype check itself.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from _helpers import torch_oracle

import ddp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import models  # noqa: E402 - benchmarks/models.py: written once for both libraries

torch = torch_oracle()

TOLERANCE = 4 * 2.0 ** -8  # relative, justified in the module docstring
SMALL = {
    "mlp": (lambda lib: models.mlp(lib), 8),
    "cnn": (lambda lib: models.mnist_cnn(lib), 4),
    "gpt": (lambda lib: models.gpt(lib, context=16, width=32, heads=4, layers=2), 2),
}


def _dtype_name(out) -> str | None:
    if isinstance(out, (tuple, list)):
        out = out[0] if out else None
    return str(out.dtype).split(".")[-1] if hasattr(out, "dtype") else None


def _record(model) -> dict:
    seen: dict = {}

    def hook(name):
        def record(module, args, output):
            seen.setdefault(name or "<root>", _dtype_name(output))
        return record

    for name, module in model.named_modules():
        module.register_forward_hook(hook(name))
    return seen


def _inputs(name: str, lib):
    x, y = models.batch(name, SMALL[name][1])
    if name == "gpt":
        x, y = x[:, :16], y[:, :16]
    return lib.tensor(x), lib.tensor(y)


def _run(name: str, lib, model):
    seen = _record(model)
    x, y = _inputs(name, lib)
    with lib.autocast("cpu", dtype=lib.bfloat16):
        logits = model(x)
        loss = models.loss_fn(lib, logits, y)
    loss.backward()
    return seen, loss


@pytest.mark.parametrize("name", sorted(SMALL))
def test_intermediate_dtypes_loss_and_grads_match_torch_cpu_autocast(name):
    torch.manual_seed(0)
    ref_model = SMALL[name][0](torch)
    model = SMALL[name][0](ddp)
    models.copy_weights(ref_model, model)
    ref_seen, ref_loss = _run(name, torch, ref_model)
    seen, loss = _run(name, ddp, model)

    assert seen == ref_seen
    assert "bfloat16" in seen.values()
    assert loss.dtype == ddp.float32 and ref_loss.dtype == torch.float32
    assert abs(loss.item() - ref_loss.item()) <= TOLERANCE * abs(ref_loss.item())
    ref_params = dict(ref_model.named_parameters())
    for pname, p in model.named_parameters():
        assert p.dtype == ddp.float32 and p.grad.dtype == ddp.float32, pname
        ref = ref_params[pname].grad.numpy()
        scale = max(float(np.abs(ref).max()), 1e-30)
        assert np.abs(p.grad.numpy() - ref).max() <= TOLERANCE * scale, pname


def test_lower_fp32_and_promote_policies():
    x = ddp.randn(4, 3)
    w = ddp.randn(5, 3, requires_grad=True)
    with ddp.autocast("cpu"):
        assert ddp.get_autocast_dtype("cpu") == ddp.bfloat16
        assert ddp.is_autocast_enabled("cpu") and not ddp.is_autocast_enabled("cuda")
        low = ddp.nn.functional.linear(x, w)  # lower-precision list
        assert low.dtype == ddp.bfloat16
        assert (x @ w.t()).dtype == ddp.bfloat16
        assert ddp.nn.functional.mse_loss(low, low.detach()).dtype == ddp.float32  # fp32 list
        assert ddp.cat([low, x.matmul(ddp.ones(3, 5))]).dtype == ddp.bfloat16
        assert ddp.cat([low, ddp.ones(4, 5)]).dtype == ddp.float32  # promote: widest
        # float64 is not cast (nor counted by promote); then cat promotes as always
        assert ddp.cat([low, ddp.ones(4, 5, dtype=ddp.float64)]).dtype == ddp.float64
        assert low.softmax(-1).dtype == ddp.bfloat16  # not listed on CPU: runs as given
        assert (ddp.ones(2, dtype=ddp.float64) @ ddp.ones(2, dtype=ddp.float64)).dtype \
            == ddp.float64  # float64 is never cast
        with ddp.autocast("cpu", enabled=False):
            assert ddp.nn.functional.linear(x, w).dtype == ddp.float32
            assert not ddp.is_autocast_enabled("cpu")
        with ddp.autocast("cpu", dtype=ddp.float16):
            assert ddp.nn.functional.linear(x, w).dtype == ddp.float16
        assert ddp.get_autocast_dtype("cpu") == ddp.bfloat16
    assert not ddp.is_autocast_enabled("cpu")
    assert ddp.nn.functional.linear(x, w).dtype == ddp.float32


def test_decorator_and_weight_cast_cache():
    w = ddp.randn(5, 3, requires_grad=True)

    @ddp.autocast("cpu")
    def twice(x):
        a, b = ddp.nn.functional.linear(x, w), ddp.nn.functional.linear(x, w)
        return a, b

    a, b = twice(ddp.randn(2, 3))
    assert a.dtype == b.dtype == ddp.bfloat16
    # one cached cast node feeds both products (torch's cache_enabled), under each product's
    # own transpose (torch's graph: MmBackward0 -> TBackward0 -> ToCopyBackward0)
    cast_a = a.grad_fn.next_functions[1][0].next_functions[0][0]
    assert cast_a.name() == "ToCopyBackward0"
    assert cast_a is b.grad_fn.next_functions[1][0].next_functions[0][0]
    (a.float().sum() + b.float().sum()).backward()
    assert w.grad.dtype == ddp.float32
    with ddp.autocast("cpu", cache_enabled=False):
        c, d = ddp.nn.functional.linear(ddp.ones(1, 3), w), ddp.nn.functional.linear(
            ddp.ones(1, 3), w)
        assert c.grad_fn.next_functions[1][0] is not d.grad_fn.next_functions[1][0]


def test_autocast_state_is_per_thread():
    seen = {}

    def other():
        seen["enabled"] = ddp.is_autocast_enabled("cpu")
        seen["dtype"] = ddp.nn.functional.linear(ddp.ones(1, 2), ddp.ones(2, 2)).dtype

    with ddp.autocast("cpu"):
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert seen == {"enabled": False, "dtype": ddp.float32}


def test_gradient_through_autocast_matches_float64_finite_differences():
    rng = np.random.default_rng(0)
    x0, w0 = rng.standard_normal((3, 4)), rng.standard_normal((2, 4))

    def f(w_array):
        x = ddp.tensor(x0.astype(np.float32))
        w = ddp.tensor(w_array.astype(np.float32), requires_grad=True)
        with ddp.autocast("cpu"):
            loss = ddp.nn.functional.linear(x, w).float().pow(2).sum()
        return loss, w

    loss, w = f(w0)
    loss.backward()
    exact = 2 * (x0 @ w0.T).T @ x0  # d/dW sum((x W^T)^2), float64
    # inputs and product rounded to bfloat16 (3 roundings of u = 2**-9 each, relative)
    assert np.abs(w.grad.numpy() - exact).max() <= 4 * 2.0 ** -8 * np.abs(exact).max()


def test_bad_arguments():
    with pytest.raises(RuntimeError, match="unsupported autocast device_type"):
        ddp.autocast("tpu")
    with pytest.raises(ValueError, match="device_type"):
        ddp.autocast(0)
    with pytest.warns(UserWarning, match="Disabling autocast"):
        region = ddp.autocast("cpu", dtype=ddp.float64)
    with region:
        assert not ddp.is_autocast_enabled("cpu")


def test_custom_fwd_casts_inputs_and_custom_bwd_replays_the_forward_state():
    # torch.amp.custom_fwd(cast_inputs=float32): inside autocast the inputs arrive as float32
    # and the forward runs with autocast off; custom_bwd runs backward under forward's state.
    seen = {}

    def make(lib):
        class Square(lib.autograd.Function):
            @staticmethod
            @lib.amp.custom_fwd(device_type="cpu", cast_inputs=lib.float32)
            def forward(ctx, x):
                seen[lib.__name__, "fwd"] = (x.dtype, lib.is_autocast_enabled("cpu"))
                ctx.save_for_backward(x)
                return x * x

            @staticmethod
            @lib.amp.custom_bwd(device_type="cpu")
            def backward(ctx, g):
                seen[lib.__name__, "bwd"] = lib.is_autocast_enabled("cpu")
                (x,) = ctx.saved_tensors
                return 2 * x * g

        return Square

    torch = torch_oracle()
    for lib in (ddp, torch):
        x = lib.ones(3, dtype=lib.bfloat16, requires_grad=True)
        with lib.autocast("cpu"):
            y = make(lib).apply(x)
        y.sum().backward()
        assert y.dtype == lib.float32
        assert x.grad.dtype == lib.bfloat16 and x.grad.float().tolist() == [2.0, 2.0, 2.0]
    assert seen[("ddp", "fwd")] == (ddp.float32, False)
    assert seen[("torch", "fwd")] == (torch.float32, False)
    assert seen[("ddp", "bwd")] is seen[("torch", "bwd")] is False
