"""The backward engine: accumulation, graph lifetime, grad mode, hooks and their order."""

from __future__ import annotations

import gc
import threading
import weakref

import numpy as np
import pytest

import ddp
from ddp.autograd import engine


def leaf(values, **kw):
    return ddp.tensor(values, requires_grad=True, **kw)


# ------------------------------------------------------------------------ accumulation
def test_grads_accumulate_across_backwards():
    x = leaf([1.0, 2.0])
    (x * 3).sum().backward()
    (x * x).sum().backward()
    assert x.grad.tolist() == [3.0 + 2.0, 3.0 + 4.0]


def test_value_used_twice_gets_both_contributions():
    x = leaf([2.0])
    y = x * 3
    z = y * y + y  # y feeds two consumers; dz/dx = (2y + 1) * 3
    z.backward()
    assert x.grad.tolist() == [(2 * 6.0 + 1) * 3]


def test_leaf_used_in_several_ops_and_as_both_operands():
    x = leaf([1.5, -2.0])
    (x * x + x.exp() - x).sum().backward()
    expected = 2 * np.array([1.5, -2.0]) + np.exp([1.5, -2.0]) - 1
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-6)


def test_incoming_gradient_is_not_modified():
    x = leaf([1.0, 2.0])
    g = ddp.tensor([1.0, 1.0])
    (x + 0).backward(g)
    (x * 1).backward(g)
    assert g.tolist() == [1.0, 1.0]
    assert x.grad.tolist() == [2.0, 2.0]


def test_grad_is_independent_of_other_arrays():
    x = leaf([1.0, 2.0])
    y = x + 0
    g = ddp.tensor([1.0, 1.0])
    y.backward(g)
    x.grad.add_(5)
    assert g.tolist() == [1.0, 1.0]


def test_multiple_roots():
    x = leaf([1.0, 2.0])
    ddp.autograd.backward([(x * 2).sum(), (x * x).sum()])
    assert x.grad.tolist() == [4.0, 6.0]


# ------------------------------------------------------------------------ graph lifetime
def test_retain_graph_allows_second_backward():
    x = leaf([1.0, 2.0])
    y = (x.exp() * x).sum()
    y.backward(retain_graph=True)
    first = x.grad.numpy().copy()
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * first)


def test_second_backward_without_retain_graph_raises():
    x = leaf([1.0, 2.0])
    y = (x.exp() * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        y.backward()


def test_graph_is_freed_after_backward():
    x = leaf(np.ones(1000, dtype=np.float32))
    y = x * 2
    saved = weakref.ref(y.array)
    loss = y.sin().sum()  # Sin saves its input, y's array
    del y
    gc.collect()
    assert saved() is not None
    loss.backward()
    gc.collect()
    assert saved() is None


def test_graph_is_kept_with_retain_graph():
    x = leaf(np.ones(10, dtype=np.float32))
    y = x * 2
    saved = weakref.ref(y.array)
    loss = y.sin().sum()
    del y
    loss.backward(retain_graph=True)
    gc.collect()
    assert saved() is not None


def test_deep_graph_does_not_recurse():
    x = leaf([1.0])
    y = x
    for _ in range(10_000):
        y = y * 1.0001
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), [1.0001**10_000], rtol=1e-3)
    del y  # freeing a 10k-node chain must not overflow the stack either
    gc.collect()


# ------------------------------------------------------------------------ errors
def test_non_scalar_backward_needs_gradient():
    x = leaf([1.0, 2.0])
    with pytest.raises(RuntimeError, match="grad can be implicitly created only for scalar"):
        (x * 2).backward()


def test_gradient_shape_mismatch_raises():
    x = leaf([1.0, 2.0])
    with pytest.raises(RuntimeError, match=r"Mismatch in shape.*\(3,\).*\(2,\)"):
        (x * 2).backward(ddp.ones(3))


def test_backward_on_tensor_without_grad_raises():
    with pytest.raises(RuntimeError, match="does not require grad"):
        ddp.ones(2).sum().backward()


def test_requires_grad_on_integer_tensor_raises():
    with pytest.raises(RuntimeError, match="floating point"):
        ddp.tensor([1, 2], requires_grad=True)
    with pytest.raises(RuntimeError, match="floating point"):
        ddp.tensor([1, 2]).requires_grad_()


def test_clone_detach_cuts_the_graph():
    x = leaf([1.0, 2.0])
    y = (x * 2).clone().detach()
    assert not y.requires_grad and y.grad_fn is None
    z = leaf([3.0, 4.0])
    (y * z).sum().backward()
    assert x.grad is None
    assert z.grad.tolist() == [2.0, 4.0]


def test_detach_shares_storage():
    x = leaf([1.0, 2.0])
    d = x.detach()
    d[0] = 5.0
    assert x.tolist() == [5.0, 2.0]


def test_casting_to_int_leaves_the_graph():
    x = leaf([1.5, 2.5])
    assert not x.long().requires_grad
    assert x.double().requires_grad


# ------------------------------------------------------------------------ in-place ops
def test_inplace_on_leaf_requiring_grad_raises():
    x = leaf([1.0, 2.0])
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        x.add_(1)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        x[0] = 3.0


def test_inplace_on_leaf_allowed_under_no_grad():
    x = leaf([1.0, 2.0])
    with ddp.no_grad():
        x.mul_(2).add_(1)
    assert x.tolist() == [3.0, 5.0] and x.is_leaf and x.requires_grad


def test_inplace_on_non_leaf_is_recorded():
    x = leaf([1.0, 2.0])
    y = x * 2
    y.add_(1)
    y.mul_(y)  # d/dx (2x + 1)^2 = 4 (2x + 1)
    y.sum().backward()
    assert x.grad.tolist() == [12.0, 20.0]


def test_inplace_with_grad_requiring_argument_records_graph():
    x = leaf([1.0, 2.0])
    buf = ddp.zeros(2)
    buf.add_(x * 3)
    assert buf.grad_fn is not None
    buf.sum().backward()
    assert x.grad.tolist() == [3.0, 3.0]


# ------------------------------------------------------------------------ grad mode
def test_no_grad_enable_grad_set_grad_enabled():
    x = leaf([1.0])
    with ddp.no_grad():
        assert not (x * 2).requires_grad
        with ddp.enable_grad():
            assert (x * 2).requires_grad
        assert not ddp.is_grad_enabled()
    with ddp.set_grad_enabled(False):
        assert not (x * 2).requires_grad
    assert ddp.is_grad_enabled()
    ddp.set_grad_enabled(False)
    assert not ddp.is_grad_enabled()
    ddp.set_grad_enabled(True)
    assert (x * 2).requires_grad


def test_grad_mode_decorators():
    @ddp.no_grad()
    def called(t):
        return t * 2

    @ddp.no_grad
    def bare(t):
        return t * 2

    @ddp.enable_grad()
    def enabled(t):
        return t * 2

    @ddp.set_grad_enabled(False)
    def disabled(t):
        return t * 2

    x = leaf([1.0])
    assert ddp.is_grad_enabled()  # building set_grad_enabled(False) for a decorator restores
    assert not called(x).requires_grad and not bare(x).requires_grad
    assert not disabled(x).requires_grad
    with ddp.no_grad():
        assert enabled(x).requires_grad
    assert ddp.is_grad_enabled()


def test_grad_mode_is_thread_local():
    seen = []

    def other():
        seen.append(ddp.is_grad_enabled())

    with ddp.no_grad():
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert seen == [True]


def test_no_grad_restores_after_exception():
    with pytest.raises(ValueError), ddp.no_grad():
        raise ValueError
    assert ddp.is_grad_enabled()


# ------------------------------------------------------------------------ tensor hooks
def test_register_hook_on_leaf_sees_and_replaces_grad():
    x = leaf([1.0, 2.0])
    seen = []
    x.register_hook(lambda g: seen.append(g.tolist()))
    x.register_hook(lambda g: g * 10)
    (x * 3).sum().backward()
    assert seen == [[3.0, 3.0]]
    assert x.grad.tolist() == [30.0, 30.0]


def test_register_hook_on_non_leaf_changes_upstream_grad():
    x = leaf([1.0, 2.0])
    y = x * 2
    y.register_hook(lambda g: g + 1)
    y.sum().backward()
    assert x.grad.tolist() == [4.0, 4.0]


def test_hook_handle_remove():
    x = leaf([1.0])
    handle = x.register_hook(lambda g: g * 0)
    handle.remove()
    (x * 3).sum().backward()
    assert x.grad.tolist() == [3.0]


def test_hook_kept_gradient_is_not_mutated_by_later_accumulation():
    x = leaf([1.0])
    kept = []
    x.register_hook(lambda g: kept.append(g))
    (x * 3).sum().backward()
    (x * 3).sum().backward()
    assert [k.tolist() for k in kept] == [[3.0], [3.0]]
    assert x.grad.tolist() == [6.0]


def test_retain_grad():
    x = leaf([1.0, 2.0])
    y = x * 2
    y.retain_grad()
    z = x * 5  # no retain_grad: stays None
    (y * y + z).sum().backward()
    assert y.grad.tolist() == [4.0, 8.0]
    assert z.grad is None


def test_register_hook_requires_grad():
    with pytest.raises(RuntimeError, match="doesn't require gradient"):
        ddp.ones(2).register_hook(lambda g: g)


# ------------------------------------------------------------------------ post-accumulate hooks
def _mlp(depth, seed=0):
    rng = np.random.default_rng(seed)
    weights = [leaf(rng.standard_normal((4, 4)).astype(np.float32)) for _ in range(depth)]
    for i, w in enumerate(weights):
        w.name = f"w{i}"
    return weights


def _forward(weights, x):
    for w in weights:
        x = (x @ w).tanh()
    return x.sum()


def test_post_accumulate_hook_fires_once_with_final_grad():
    x = leaf([1.0, 2.0])
    calls = []
    x.register_post_accumulate_grad_hook(lambda p: calls.append(p.grad.tolist()))
    y = x * 2
    (y * 3 + y + x).sum().backward()  # x reached by three paths
    assert calls == [[9.0, 9.0]]


def test_post_accumulate_hook_fires_during_backward_in_reverse_layer_order():
    weights = _mlp(4)
    events = []
    for w in weights:
        w.register_post_accumulate_grad_hook(lambda p: events.append(("hook", p.name)))
    # A hook on the first layer's output gradient tells when that layer's grads are computed.
    x = ddp.ones(2, 4)
    h = (x @ weights[0]).tanh()
    h.register_hook(lambda g: events.append(("first layer grad", None)))
    _forward(weights[1:], h).backward()
    assert events.index(("hook", "w3")) < events.index(("first layer grad", None))
    assert [e[1] for e in events if e[0] == "hook"] == ["w3", "w2", "w1", "w0"]
    assert events[-1] == ("hook", "w0")


def test_post_accumulate_hook_runs_before_backward_returns_and_order_is_deterministic():
    orders = []
    for _ in range(2):
        weights = _mlp(3)
        order = []
        for w in weights:
            w.register_post_accumulate_grad_hook(lambda p, order=order: order.append(p.name))
        _forward(weights, ddp.ones(2, 4)).backward()
        orders.append(order)
    assert orders[0] == orders[1] == ["w2", "w1", "w0"]


def test_post_accumulate_hook_only_on_leaves():
    x = leaf([1.0])
    with pytest.raises(RuntimeError, match="non-leaf"):
        (x * 2).register_post_accumulate_grad_hook(lambda p: None)


# ------------------------------------------------------------------------ engine services
def test_backward_start_hook_sees_reachable_leaves_only():
    used, unused, also = leaf([1.0]), leaf([2.0]), leaf([3.0])
    seen = []
    handle = engine.register_backward_start_hook(lambda task: seen.append(list(task.leaves)))
    try:
        (used * also + used).sum().backward()
    finally:
        handle.remove()
    assert len(seen) == 1
    ids = [id(t) for t in seen[0]]
    assert sorted(ids) == sorted([id(used), id(also)]) and id(unused) not in ids
    (used * 2).sum().backward()
    assert len(seen) == 1  # removed


def test_queue_callback_runs_at_end_of_backward():
    x = leaf([1.0])
    y = leaf([2.0])
    events = []

    def start(task):
        task.queue_callback(lambda: events.append(("end", x.grad.tolist(), y.grad.tolist())))

    handle = engine.register_backward_start_hook(start)
    x.register_post_accumulate_grad_hook(lambda p: events.append("x"))
    try:
        (x * y).sum().backward()
    finally:
        handle.remove()
    assert events == ["x", ("end", [2.0], [1.0])]


def test_queue_callback_from_hook_and_outside_backward():
    x = leaf([1.0])
    events = []
    x.register_post_accumulate_grad_hook(
        lambda p: engine.queue_callback(lambda: events.append("callback")))
    (x * 2).sum().backward()
    assert events == ["callback"]
    with pytest.raises(RuntimeError, match="during backward"):
        engine.queue_callback(lambda: None)


def test_reachable_leaf_without_gradient_still_fires_post_hook():
    x = leaf([1.5])
    fired = []
    x.register_post_accumulate_grad_hook(lambda p: fired.append(p.grad))
    y = (x // 1.0) + 0.0  # floor_divide is reachable but yields no gradient
    y.sum().backward()
    assert fired == [None]



def test_backward_start_hooks_are_read_from_an_immutable_snapshot():
    """Simulated ranks register engine hooks (DDP, ZeRO) while other ranks are inside backward:
    the engine iterates a snapshot that later registrations and removals never mutate."""
    from ddp.autograd import engine

    seen = []
    before = engine._start_hooks.snapshot
    handle = engine.register_backward_start_hook(lambda task: seen.append(len(task.leaves)))
    during = engine._start_hooks.snapshot
    assert len(during) == len(before) + 1 and before == engine._start_hooks.snapshot[:-1]
    x = ddp.ones(3, requires_grad=True)
    (x * 2).sum().backward()
    handle.remove()
    assert len(engine._start_hooks.snapshot) == len(before)
    assert len(during) == len(before) + 1  # the published tuple did not change
    (x * 2).sum().backward()
    assert seen == [1]
