"""Anomaly mode (``detect_anomaly``/``set_detect_anomaly``) against torch's behaviour."""

import threading
import warnings

import numpy as np
import pytest
from _helpers import torch_oracle

import ddp


def _nan_backward(T):
    """x * nan: MulBackward0's gradient for x is NaN. Returns (error text, warning texts)."""
    x = T.tensor([0.0, 1.0], requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with T.autograd.detect_anomaly():
            y = x * float("nan")  # the forward call site the warning must name
            with pytest.raises(RuntimeError) as info:
                y.sum().backward()
    return str(info.value), [str(w.message) for w in caught]


def test_nan_error_and_forward_traceback_match_torch():
    torch = torch_oracle()
    ours, our_warnings = _nan_backward(ddp)
    theirs, their_warnings = _nan_backward(torch)
    assert ours == theirs == "Function 'MulBackward0' returned nan values in its 0th output."
    for texts in (our_warnings, their_warnings):
        assert texts[0].startswith("Anomaly Detection has been enabled.")
        detected = [t for t in texts if t.startswith("Error detected in MulBackward0.")]
        assert len(detected) == 1
        assert "Traceback of forward call that caused the error:" in detected[0]
        assert 'y = x * float("nan")' in detected[0]


def test_error_inside_custom_backward_is_raised_after_the_forward_traceback():
    class Boom(ddp.autograd.Function):
        @staticmethod
        def forward(ctx, a):
            return a * 2

        @staticmethod
        def backward(ctx, g):
            raise ValueError("boom in backward")

    x = ddp.ones(3, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ddp.autograd.set_detect_anomaly(True):
            z = Boom.apply(x)  # the call site to name
            with pytest.raises(ValueError, match="boom in backward"):
                z.sum().backward()
    texts = [str(w.message) for w in caught]
    assert any(t.startswith("Error detected in BoomBackward.") and "z = Boom.apply(x)" in t
               for t in texts), texts


def test_off_by_default_records_nothing_and_lets_nan_through():
    assert not ddp.is_anomaly_enabled() and ddp.is_anomaly_check_nan_enabled()
    assert ddp.autograd.anomaly_mode.active == 0
    x = ddp.tensor([0.0, 1.0], requires_grad=True)
    y = x * float("nan")
    assert y.grad_fn.forward_trace is None
    y.sum().backward()
    assert np.isnan(x.grad.cpu().numpy()).all()


def test_check_nan_false_records_the_trace_but_does_not_raise():
    x = ddp.tensor([0.0, 1.0], requires_grad=True)
    with pytest.warns(UserWarning, match="Anomaly Detection"), \
            ddp.autograd.detect_anomaly(check_nan=False):
        assert ddp.is_anomaly_enabled() and not ddp.is_anomaly_check_nan_enabled()
        y = x * float("nan")
        y.sum().backward()
    assert y.grad_fn.forward_trace is not None
    assert np.isnan(x.grad.cpu().numpy()).all()
    assert not ddp.is_anomaly_enabled() and ddp.is_anomaly_check_nan_enabled()


def test_set_detect_anomaly_as_a_call_and_nested_restore():
    ddp.autograd.set_detect_anomaly(True, check_nan=False)
    try:
        assert ddp.is_anomaly_enabled() and not ddp.is_anomaly_check_nan_enabled()
        with ddp.autograd.set_detect_anomaly(False):
            assert not ddp.is_anomaly_enabled()
        assert ddp.is_anomaly_enabled() and not ddp.is_anomaly_check_nan_enabled()
    finally:
        ddp.autograd.set_detect_anomaly(False)
    assert not ddp.is_anomaly_enabled()
    assert ddp.autograd.anomaly_mode.active == 0


def test_decorator_turns_it_on_inside_only():
    with pytest.warns(UserWarning, match="Anomaly Detection"):
        @ddp.autograd.detect_anomaly()
        def inside():
            return ddp.is_anomaly_enabled()

    assert inside() is True
    assert not ddp.is_anomaly_enabled()


def test_anomaly_mode_is_per_thread():
    seen = {}
    entered, release = threading.Event(), threading.Event()

    def other():
        entered.wait()
        x = ddp.tensor([1.0], requires_grad=True)
        seen["enabled"] = ddp.is_anomaly_enabled()
        seen["trace"] = (x * 2).grad_fn.forward_trace
        release.set()

    thread = threading.Thread(target=other)
    thread.start()
    with ddp.autograd.set_detect_anomaly(True):
        entered.set()
        release.wait(10)
    thread.join(10)
    assert seen == {"enabled": False, "trace": None}


def test_finite_backward_unchanged_under_anomaly_mode():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3))
    grads = []
    for mode in (False, True):
        x = ddp.tensor(w, requires_grad=True)
        with ddp.autograd.set_detect_anomaly(mode):
            (x.tanh() @ x.T).sum().backward()
        grads.append(x.grad.cpu().numpy())
    np.testing.assert_array_equal(grads[0], grads[1])
