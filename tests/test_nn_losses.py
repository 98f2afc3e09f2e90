"""Element-wise losses (BCE, BCE with logits, L1, smooth L1, Huber, KL divergence): functional
forms and modules against torch (values and every input's gradient, float32 and float64),
finite differences, clamping, reductions and errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from _helpers import check_grad, check_torch, torch_oracle

import ddp
import ddp.nn.functional as F
from ddp import nn

torch = torch_oracle()

REDUCTIONS = ["mean", "sum", "none"]
_rng = np.random.default_rng(7)
PROBS = _rng.uniform(0.05, 0.95, (4, 3))
SOFT_TARGETS = _rng.uniform(0.0, 1.0, (4, 3))
WEIGHT = np.array([0.5, 1.0, 2.0])
POS_WEIGHT = np.array([3.0, 0.5, 1.0])


def _both(fn, inputs, **kwargs):
    """float32 at the repo's tolerance (``check_torch``'s rtol 1e-4, atol 1e-5): each loss is
    a handful of float32 operations per element (relative error a few EPS32 = 1.2e-7 each,
    no cancellation) and a sum of <= 20 terms ((n - 1)/2 EPS32 of their magnitude), so both
    libraries stay well inside 1e-5 of the truth; float64 to rounding; finite differences."""
    check_torch(fn, inputs, **kwargs)
    check_torch(fn, inputs, dtype=np.float64, rtol=1e-11, atol=1e-13, **kwargs)
    assert check_grad(fn, inputs, **kwargs)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_binary_cross_entropy_vs_torch(reduction, weighted):
    def f(T, x, t):
        w = T.tensor(WEIGHT, dtype=x.dtype) if weighted else None
        return T.nn.functional.binary_cross_entropy(x, t, weight=w, reduction=reduction)

    _both(f, [PROBS, SOFT_TARGETS])


def test_binary_cross_entropy_clamps_logs_at_minus_100_like_torch():
    x = np.array([0.0, 1.0, 0.0, 1.0, 1e-50, 0.5])
    t = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 0.25])
    check_torch(lambda T, a, b: T.nn.functional.binary_cross_entropy(a, b, reduction="none"),
                [x, t], dtype=np.float64, rtol=1e-12, atol=0)
    loss = F.binary_cross_entropy(ddp.tensor(x[:2]), ddp.tensor(t[:2]))
    assert loss.item() == 100.0


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted,pos", [(False, False), (True, False), (False, True),
                                          (True, True)])
def test_binary_cross_entropy_with_logits_vs_torch(reduction, weighted, pos):
    def f(T, x, t):
        w = T.tensor(WEIGHT, dtype=x.dtype) if weighted else None
        p = T.tensor(POS_WEIGHT, dtype=x.dtype) if pos else None
        return T.nn.functional.binary_cross_entropy_with_logits(
            x, t, weight=w, reduction=reduction, pos_weight=p)

    _both(f, [(4, 3), SOFT_TARGETS])


def test_binary_cross_entropy_with_logits_is_stable_for_large_logits():
    x = np.array([[-1000.0, -100.0, -20.0, 20.0, 100.0, 1000.0]])
    t = np.array([[1.0, 0.0, 0.3, 0.7, 1.0, 0.0]])
    for dtype in (np.float32, np.float64):
        check_torch(lambda T, a, b: T.nn.functional.binary_cross_entropy_with_logits(
            a, b, pos_weight=T.tensor(np.array([2.0]), dtype=a.dtype), reduction="none"),
            [x, t], dtype=dtype, rtol=1e-6,
            atol=1e-30)  # 1 - sigmoid(100) is 0 in torch, 4e-44 here: a difference of nothing


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_l1_loss_vs_torch(reduction):
    _both(lambda T, a, b: T.nn.functional.l1_loss(a, b, reduction=reduction), [(3, 4), (3, 4)])


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_weighted_l1_loss_mean_divides_by_the_weights(reduction):
    w = np.abs(_rng.standard_normal((3, 4)))
    _both(lambda T, a, b: T.nn.functional.l1_loss(a, b, reduction=reduction,
                                                  weight=T.tensor(w, dtype=a.dtype)),
          [(3, 4), (3, 4)])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("beta", [1.0, 0.3, 2.5, 0.0])
def test_smooth_l1_loss_vs_torch(reduction, beta):
    _both(lambda T, a, b: T.nn.functional.smooth_l1_loss(a, b, reduction=reduction, beta=beta),
          [(3, 5), (3, 5)])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("delta", [1.0, 0.3, 2.5])
def test_huber_loss_vs_torch(reduction, delta):
    _both(lambda T, a, b: T.nn.functional.huber_loss(a, b, reduction=reduction, delta=delta),
          [(3, 5), (3, 5)])
    w = np.abs(_rng.standard_normal((3, 5)))
    _both(lambda T, a, b: T.nn.functional.huber_loss(a, b, reduction=reduction, delta=delta,
                                                     weight=T.tensor(w, dtype=a.dtype)),
          [(3, 5), (3, 5)])


def test_smooth_l1_and_huber_at_the_kinks():
    d = np.array([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0])
    zero = np.zeros_like(d)
    for fn in (lambda T, a, b: T.nn.functional.smooth_l1_loss(a, b, reduction="none"),
               lambda T, a, b: T.nn.functional.smooth_l1_loss(a, b, reduction="none", beta=0.5),
               lambda T, a, b: T.nn.functional.huber_loss(a, b, reduction="none", delta=0.5),
               lambda T, a, b: T.nn.functional.l1_loss(a, b, reduction="none")):
        check_torch(fn, [d, zero], dtype=np.float64, rtol=1e-12, atol=0)


def test_regression_losses_broadcast_with_torchs_warning():
    def f(T, a, b):
        return T.nn.functional.smooth_l1_loss(a, b)

    with pytest.warns(UserWarning, match="different to the input size"):
        check_torch(f, [(3, 4), (4,)], dtype=np.float64, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none", "mean"])
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div_vs_torch(reduction, log_target):
    target = _rng.dirichlet(np.ones(5), size=4)
    if log_target:
        target = np.log(target)

    def f(T, x, t):
        return T.nn.functional.kl_div(T.nn.functional.log_softmax(x, dim=1), t,
                                      reduction=reduction, log_target=log_target)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="reduction: 'mean' divides")
        _both(f, [(4, 5), target])


def test_kl_div_zero_targets_contribute_nothing_and_warn_for_mean():
    # the target's gradient at 0 is NaN in both (d/dt t log t does not exist there)
    t = np.array([[0.0, 0.25, 0.75], [0.5, 0.0, 0.5]])
    x = np.log(np.array([[0.2, 0.3, 0.5], [0.1, 0.6, 0.3]]))
    check_torch(lambda T, a, b: T.nn.functional.kl_div(a, b, reduction="none"), [x, t],
                dtype=np.float64, rtol=1e-12, atol=0)
    with pytest.warns(UserWarning, match="'batchmean' divides only by the batch size"):
        F.kl_div(ddp.tensor(x), ddp.tensor(t))


LOSS_MODULES = [
    ("BCELoss", {}, "probs"),
    ("BCELoss", {"weight": WEIGHT, "reduction": "sum"}, "probs"),
    ("BCEWithLogitsLoss", {"pos_weight": POS_WEIGHT}, "logits"),
    ("BCEWithLogitsLoss", {"weight": WEIGHT, "reduction": "none"}, "logits"),
    ("L1Loss", {}, "logits"), ("L1Loss", {"reduction": "sum"}, "logits"),
    ("SmoothL1Loss", {"beta": 0.5}, "logits"), ("HuberLoss", {"delta": 0.7}, "logits"),
    ("KLDivLoss", {"reduction": "batchmean"}, "log"),
    ("KLDivLoss", {"reduction": "sum", "log_target": True}, "log"),
]


@pytest.mark.parametrize("name,kwargs,kind", LOSS_MODULES, ids=lambda v: str(v))
def test_loss_modules_match_torch(name, kwargs, kind):
    x = {"probs": PROBS, "logits": _rng.standard_normal((4, 3)),
         "log": np.log(PROBS)}[kind]
    t = np.log(SOFT_TARGETS) if kwargs.get("log_target") else SOFT_TARGETS
    results = []
    for T in (ddp, torch):
        args = {k: T.tensor(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
        module = getattr(T.nn, name)(**args)
        xt = T.tensor(x, requires_grad=True)
        loss = module(xt, T.tensor(t))
        loss.sum().backward()
        results.append((loss.detach().numpy(), xt.grad.numpy(), sorted(module.state_dict())))
    (ours, ours_grad, ours_keys), (theirs, theirs_grad, theirs_keys) = results
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ours_grad, theirs_grad, rtol=1e-12, atol=1e-14)
    assert ours_keys == theirs_keys  # weight and pos_weight are buffers, as in torch


def test_legacy_size_average_and_reduce_map_like_torch():
    a, b = ddp.tensor([1.0, -2.0, 3.0]), ddp.tensor([0.0, 0.0, 0.0])
    with pytest.warns(UserWarning, match="please use reduction='sum' instead"):
        assert F.l1_loss(a, b, size_average=False).item() == 6.0
    with pytest.warns(UserWarning, match="reduction='none'"):
        assert nn.L1Loss(reduce=False).reduction == "none"


def test_loss_errors_use_torchs_messages():
    x = ddp.rand(2, 3)
    with pytest.raises(ValueError, match="Using a target size .* different to the input size"):
        F.binary_cross_entropy(x, ddp.rand(3, 2))
    with pytest.raises(RuntimeError, match="all elements of input should be between 0 and 1"):
        F.binary_cross_entropy(x * 2 + 1, ddp.rand(2, 3))
    with pytest.raises(ValueError, match=r"Target size \(torch.Size\(\[2\]\)\) must be the same"):
        F.binary_cross_entropy_with_logits(x, ddp.rand(2))
    with pytest.raises(RuntimeError, match="does not support negative values for beta"):
        F.smooth_l1_loss(x, x, beta=-1.0)
    with pytest.raises(RuntimeError, match="non-positive values for delta"):
        F.huber_loss(x, x, delta=0.0)
    with pytest.raises(ValueError, match="Weights and input must have the same size"):
        F.l1_loss(x, x, weight=ddp.ones(3))
    for fn in (F.l1_loss, F.smooth_l1_loss, F.binary_cross_entropy_with_logits):
        with pytest.raises(ValueError, match="elementwise is not a valid value for reduction"):
            fn(x, x, reduction="elementwise")
    for T in (torch, ddp):
        w = T.ones(3, requires_grad=True)
        with pytest.raises(RuntimeError, match="not differentiable with respect to argument "
                                               "'pos_weight'"):
            T.nn.functional.binary_cross_entropy_with_logits(T.zeros(2, 3), T.ones(2, 3),
                                                             pos_weight=w)
        with pytest.raises(RuntimeError, match="not differentiable with respect to argument "
                                               "'weight'"):
            T.nn.functional.binary_cross_entropy(T.ones(2, 3) / 2, T.ones(2, 3), weight=w)
    with pytest.raises(ValueError, match="batchmean is not a valid value for reduction"):
        F.l1_loss(x, x, reduction="batchmean")
