"""BatchNorm1d/2d/3d, ``F.batch_norm`` and SyncBatchNorm on one process, against torch (values,
gradients of input, weight and bias, running statistics over several steps) and finite
differences. The multi-rank behaviour of SyncBatchNorm: tests/distributed/test_syncbn*.py."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import EPS32, assert_within, check_grad, check_torch

import ddp
import ddp.distributed as dist
import ddp.nn as nn
import ddp.nn.functional as F

SHAPES = [(6, 3), (4, 3, 7), (4, 3, 5, 5), (2, 3, 2, 3, 4)]


def _bn_class(lib, ndim: int):
    return {2: lib.nn.BatchNorm1d, 3: lib.nn.BatchNorm1d, 4: lib.nn.BatchNorm2d,
            5: lib.nn.BatchNorm3d}[ndim]


def _numpy(t) -> np.ndarray:
    return t.detach().cpu().numpy()


@pytest.mark.parametrize("shape", SHAPES)
def test_batch_norm_training_vs_torch_float64(shape):
    def f(T, x, w, b):
        return T.nn.functional.batch_norm(x * 3 + 1, None, None, w, b, training=True)

    check_torch(f, [shape, (3,), (3,)], dtype=np.float64, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES[:3])
def test_batch_norm_eval_and_without_affine_vs_torch_float64(shape, torch):
    rng = np.random.default_rng(3)
    mean, var = rng.standard_normal(3), rng.random(3) + 0.5

    def f(T, x, w, b):
        rm, rv = T.tensor(mean), T.tensor(var)
        return (T.nn.functional.batch_norm(x, rm, rv, w, b, training=False, eps=1e-3),
                T.nn.functional.batch_norm(x, None, None, training=True))

    check_torch(f, [shape, (3,), (3,)], dtype=np.float64, rtol=1e-12, atol=1e-12)


def test_batch_norm_finite_differences():
    rng = np.random.default_rng(4)
    mean, var = ddp.tensor(rng.standard_normal(3)), ddp.tensor(rng.random(3) + 0.5)
    assert check_grad(lambda T, x, w, b: F.batch_norm(x, None, None, w, b, training=True),
                      [(4, 3, 5), (3,), (3,)])
    assert check_grad(lambda T, x, w, b: F.batch_norm(x, mean, var, w, b, training=False),
                      [(4, 3, 2, 2), (3,), (3,)])
    assert check_grad(lambda T, x: F.batch_norm(x, None, None, training=True), [(5, 2)])


@pytest.mark.parametrize("shape", SHAPES[:3])
def test_running_stats_update_in_place_like_torch(shape, torch):
    x = np.random.default_rng(5).standard_normal(shape) * 2 + 3
    stats = {}
    for T in (ddp, torch):
        rm, rv = T.zeros(3, dtype=T.float64), T.ones(3, dtype=T.float64)
        for momentum in (0.1, 0.5, 1.0):
            T.nn.functional.batch_norm(T.tensor(x), rm, rv, training=True, momentum=momentum)
        stats[T.__name__] = _numpy(rm), _numpy(rv)
    np.testing.assert_allclose(stats["ddp"][0], stats["torch"][0], rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(stats["ddp"][1], stats["torch"][1], rtol=1e-13, atol=1e-14)
    # momentum 1.0 last: the running var is the unbiased batch variance
    axes = tuple(i for i in range(len(shape)) if i != 1)
    np.testing.assert_allclose(stats["ddp"][1], x.var(axis=axes, ddof=1), rtol=1e-13)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("settings", [
    {}, {"momentum": None}, {"affine": False}, {"track_running_stats": False},
    {"momentum": 0.3, "eps": 1e-3}, {"bias": False},
])
def test_module_several_steps_train_then_eval_vs_torch(shape, settings, torch):
    rng = np.random.default_rng(6)
    mods = {}
    for T in (ddp, torch):
        mods[T.__name__] = _bn_class(T, len(shape))(3, dtype=T.float64, **settings)
    t_mod, d_mod = mods["torch"], mods["ddp"]
    assert list(d_mod.state_dict()) == list(t_mod.state_dict())
    if t_mod.affine:  # load a torch state_dict with non-trivial values
        with torch.no_grad():
            t_mod.weight.copy_(torch.tensor(rng.random(3) + 0.5))
            if t_mod.bias is not None:
                t_mod.bias.copy_(torch.tensor(rng.standard_normal(3)))
    d_mod.load_state_dict({k: ddp.tensor(_numpy(v)) for k, v in t_mod.state_dict().items()})
    for step in range(4):
        x = rng.standard_normal(shape) * (step + 1) + step
        g = rng.standard_normal(shape)
        xs = {"ddp": ddp.tensor(x, requires_grad=True), "torch": torch.tensor(x,
                                                                            requires_grad=True)}
        for name, T in (("ddp", ddp), ("torch", torch)):
            out = mods[name](xs[name])
            (out * T.tensor(g)).sum().backward()
            xs[name + "_out"] = out
        np.testing.assert_allclose(_numpy(xs["ddp_out"]), _numpy(xs["torch_out"]), rtol=1e-12,
                                   atol=1e-12, err_msg=f"output, step {step}")
        np.testing.assert_allclose(_numpy(xs["ddp"].grad), _numpy(xs["torch"].grad),
                                   rtol=1e-11, atol=1e-11, err_msg=f"input grad, step {step}")
    d_state, t_state = d_mod.state_dict(), t_mod.state_dict()
    for key, value in t_state.items():
        assert str(d_state[key].dtype) == str(value.dtype).replace("torch", "ddp"), key
        np.testing.assert_allclose(_numpy(d_state[key]), _numpy(value), rtol=1e-12,
                                   atol=1e-12, err_msg=key)
    if t_mod.affine:
        for name in ("weight", "bias")[:1 + (t_mod.bias is not None)]:
            np.testing.assert_allclose(_numpy(getattr(d_mod, name).grad),
                                       _numpy(getattr(t_mod, name).grad), rtol=1e-11,
                                       atol=1e-11, err_msg=f"{name}.grad")
    d_mod.eval()
    t_mod.eval()
    x = rng.standard_normal(shape)
    np.testing.assert_allclose(_numpy(d_mod(ddp.tensor(x))), _numpy(t_mod(torch.tensor(x))),
                               rtol=1e-12, atol=1e-12, err_msg="eval output")
    if t_mod.track_running_stats:
        assert int(d_mod.num_batches_tracked.item()) == 4


def test_float32_within_rounding_of_float64_truth(torch):
    # x with mean 3 and spread 2 over n = 4*8*8 = 256 values per channel. The float32 mean and
    # variance carry at most ~(log2(n) + 2) EPS32 relative error from pairwise sums (a bound of
    # 12 EPS32 covers it), which shift xhat = (x - mean)/std by at most 12 EPS32 (|mean|/std +
    # |xhat|); the subtraction, product, scale and shift add a few EPS32 of |xhat * w| + |b|.
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((4, 3, 8, 8)) * 2 + 3).astype(np.float32)
    w, b = (rng.random(3) + 0.5).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    out = F.batch_norm(ddp.tensor(x), None, None, ddp.tensor(w), ddp.tensor(b), training=True)
    assert out.dtype == ddp.float32
    truth = torch.nn.functional.batch_norm(torch.tensor(x, dtype=torch.float64), None, None,
                                           torch.tensor(w, dtype=torch.float64),
                                           torch.tensor(b, dtype=torch.float64),
                                           training=True).numpy()
    xhat = (truth - b[:, None, None]) / w[:, None, None]
    ratio = 3 / 2
    bound = EPS32 * (12 * (ratio + np.abs(xhat)) * w[:, None, None] + 4 * (np.abs(truth) + 1))
    assert_within(out.numpy(), truth, bound, "batch_norm float32")


def test_float32_module_vs_torch(torch):
    # Both within the bound above of the float64 truth: 2 x 12 EPS32 x (1.5 + |xhat| <= 4) is
    # 2e-5 relative to the unit-scale output; the input gradient is a product of O(1) terms.
    check_torch(lambda T, x: T.nn.BatchNorm2d(3)(x * 2 + 3), [(4, 3, 6, 6)], atol=3e-5,
                rtol=1e-4)


def test_errors_name_the_offending_input():
    with pytest.raises(ValueError, match=r"Expected more than 1 value per channel when "
                                         r"training, got input size ddp.Size\(\[1, 3\]\)"):
        nn.BatchNorm1d(3)(ddp.ones(1, 3))
    with pytest.raises(ValueError, match=r"expected 4D input \(got 3D input\)"):
        nn.BatchNorm2d(3)(ddp.ones(2, 3, 4))
    with pytest.raises(ValueError, match=r"expected 2D or 3D input \(got 4D input\)"):
        nn.BatchNorm1d(3)(ddp.ones(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"expected 5D input \(got 4D input\)"):
        nn.BatchNorm3d(3)(ddp.ones(2, 3, 4, 4))
    with pytest.raises(RuntimeError, match=r"running_mean should contain 4 elements not 3"):
        nn.BatchNorm2d(3)(ddp.ones(2, 4, 2, 2))
    with pytest.raises(RuntimeError, match="must be defined in evaluation mode"):
        F.batch_norm(ddp.ones(2, 3), None, None, training=False)
    with pytest.raises(ValueError, match=r"expected at least 2D input \(got 1D input\)"):
        nn.SyncBatchNorm(3)(ddp.ones(3))


def test_repr_buffers_and_dtypes_as_torch(torch):
    for T in (ddp, torch):
        m = T.nn.BatchNorm2d(4, momentum=None)
        assert repr(m) == ("BatchNorm2d(4, eps=1e-05, momentum=None, affine=True, bias=True, "
                           "track_running_stats=True)")
        assert [n for n, _ in m.named_buffers()] == ["running_mean", "running_var",
                                                     "num_batches_tracked"]
        assert str(m.num_batches_tracked.dtype).endswith("int64")
        assert m.num_batches_tracked.shape == ()
        m.double()  # only floating buffers change dtype
        assert str(m.running_mean.dtype).endswith("float64")
        assert str(m.num_batches_tracked.dtype).endswith("int64")
    none = nn.BatchNorm1d(2, affine=False, track_running_stats=False)
    assert none.weight is None and none.running_mean is None and list(none.state_dict()) == []


def _nested(lib):
    nn_ = lib.nn
    return nn_.Sequential(nn_.Conv2d(3, 4, 3), nn_.BatchNorm2d(4, momentum=0.2),
                          nn_.Sequential(nn_.ReLU(), nn_.BatchNorm2d(4, affine=False)),
                          nn_.Flatten(), nn_.BatchNorm1d(16, eps=1e-3, bias=False))


def test_convert_sync_batchnorm_matches_torch_structure(torch):
    models = {T.__name__: _nested(T) for T in (ddp, torch)}
    models["ddp"][2][1].eval()
    models["torch"][2][1].eval()
    old = {name: m for name, m in models["ddp"].named_modules()}
    converted = {name: T.nn.SyncBatchNorm.convert_sync_batchnorm(models[name])
                 for name, T in (("ddp", ddp), ("torch", torch))}
    d_mods = [(n, type(m).__name__, m.training) for n, m in converted["ddp"].named_modules()]
    t_mods = [(n, type(m).__name__, m.training) for n, m in converted["torch"].named_modules()]
    assert d_mods == t_mods
    assert sum(1 for _, kind, _ in d_mods if kind == "SyncBatchNorm") == 3
    assert list(converted["ddp"].state_dict()) == list(converted["torch"].state_dict())
    assert repr(converted["ddp"]).replace("ddp", "torch") == repr(converted["torch"])
    for name, module in converted["ddp"].named_modules():
        if isinstance(module, nn.SyncBatchNorm):
            assert module.weight is old[name].weight  # the same Parameters and buffers
            assert module.running_mean is old[name].running_mean
            assert module.num_batches_tracked is old[name].num_batches_tracked
    bn = nn.BatchNorm1d(3)
    assert isinstance(nn.SyncBatchNorm.convert_sync_batchnorm(bn), nn.SyncBatchNorm)
    assert nn.SyncBatchNorm.convert_sync_batchnorm(nn.ReLU()).__class__ is nn.ReLU


@pytest.mark.parametrize("with_local_group", [False, True])
def test_sync_batchnorm_alone_is_batchnorm(with_local_group):
    if with_local_group:
        dist.init_process_group("local")
    try:
        rng = np.random.default_rng(8)
        mods = []
        for cls in (nn.BatchNorm2d, nn.SyncBatchNorm):
            ddp.manual_seed(0)
            mods.append(cls(3, dtype=ddp.float64))
        for _ in range(3):
            x = rng.standard_normal((4, 3, 5, 5))
            g = rng.standard_normal((4, 3, 5, 5))
            results = []
            for m in mods:
                xt = ddp.tensor(x, requires_grad=True)
                out = m(xt)
                (out * ddp.tensor(g)).sum().backward()
                results.append((out.detach().numpy(), xt.grad.numpy()))
            np.testing.assert_array_equal(results[0][0], results[1][0])
            np.testing.assert_array_equal(results[0][1], results[1][1])
        for a, b in zip(mods[0].state_dict().values(), mods[1].state_dict().values(),
                        strict=True):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    finally:
        if with_local_group:
            dist.destroy_process_group()
