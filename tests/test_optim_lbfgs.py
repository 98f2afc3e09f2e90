"""``optim.LBFGS``: torch's algorithm (two-loop recursion, fixed steps or strong Wolfe)."""

import numpy as np
import pytest

import ddp


def _problem(lib, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 5))
    y = np.sin(x @ rng.standard_normal(5))[:, None]
    w1, w2 = rng.standard_normal((5, 16)) * 0.5, rng.standard_normal((16, 1)) * 0.5
    params = [lib.tensor(w.astype(dtype), requires_grad=True) for w in (w1, w2)]
    data = lib.tensor(x.astype(dtype)), lib.tensor(y.astype(dtype))
    return params, data


def _train(lib, line_search_fn, steps=4, dtype=np.float64):
    (p1, p2), (x, y) = _problem(lib, dtype)
    opt = lib.optim.LBFGS([p1, p2], lr=1 if line_search_fn else 0.8, history_size=10,
                          line_search_fn=line_search_fn)

    def closure():
        opt.zero_grad()
        loss = ((lib.tanh(x @ p1) @ p2 - y) ** 2).mean()
        loss.backward()
        return loss

    losses = [float(opt.step(closure).detach()) for _ in range(steps)]
    state = opt.state[p1]
    return np.array(losses), state["func_evals"], state["n_iter"], p1.detach().numpy()


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_lbfgs_vs_torch_float64(torch, line_search_fn):
    # float64: both run the same algorithm, so the iterates agree far below the loss scale
    # (differences are float64 reduction orders, amplified by at most a few digits in 80
    # iterations of a well-conditioned problem) and take the same branches.
    mine, theirs = _train(ddp, line_search_fn), _train(torch, line_search_fn)
    np.testing.assert_allclose(mine[0], theirs[0], rtol=1e-6)
    assert mine[1:3] == theirs[1:3]  # evaluations and iterations
    np.testing.assert_allclose(mine[3], theirs[3], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_lbfgs_solves_least_squares_to_the_float64_truth(line_search_fn):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((40, 6))
    b = rng.standard_normal(40)
    truth = np.linalg.lstsq(a, b, rcond=None)[0]
    w = ddp.zeros(6, dtype=ddp.float64, requires_grad=True)
    at, bt = ddp.tensor(a), ddp.tensor(b)
    opt = ddp.optim.LBFGS([w], lr=1, max_iter=50, line_search_fn=line_search_fn,
                          tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure():
        opt.zero_grad()
        loss = ((at @ w - bt) ** 2).sum() / 2
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    np.testing.assert_allclose(w.detach().numpy(), truth, rtol=0, atol=1e-7)


def test_lbfgs_float32_close_to_torch(torch):
    # float32: rounding differences grow along the iterations; after 4 steps (80 iterations)
    # the losses still agree to 1e-3 of the initial loss on any x86-64.
    mine, theirs = _train(ddp, "strong_wolfe", dtype=np.float32), _train(
        torch, "strong_wolfe", dtype=np.float32)
    np.testing.assert_allclose(mine[0], theirs[0], atol=1e-3 * theirs[0][0])


def test_lbfgs_state_dict_resumes_identically():
    (p1, p2), (x, y) = _problem(ddp, np.float64)
    opt = ddp.optim.LBFGS([p1, p2], history_size=5, max_iter=5)

    def closure_for(o, a, b):
        def closure():
            o.zero_grad()
            loss = ((ddp.tanh(x @ a) @ b - y) ** 2).mean()
            loss.backward()
            return loss
        return closure

    opt.step(closure_for(opt, p1, p2))
    saved = opt.state_dict()
    q1, q2 = (ddp.tensor(p.detach().numpy().copy(), requires_grad=True) for p in (p1, p2))
    resumed = ddp.optim.LBFGS([q1, q2], history_size=5, max_iter=5)
    resumed.load_state_dict(saved)
    opt.step(closure_for(opt, p1, p2))
    resumed.step(closure_for(resumed, q1, q2))
    np.testing.assert_array_equal(q1.detach().numpy(), p1.detach().numpy())


def test_lbfgs_errors_as_torch(torch):
    for lib in (ddp, torch):
        a, b = lib.zeros(2, requires_grad=True), lib.zeros(2, requires_grad=True)
        with pytest.raises(ValueError, match="doesn't support per-parameter options"):
            lib.optim.LBFGS([{"params": [a]}, {"params": [b]}])
        with pytest.raises(ValueError, match="Invalid learning rate"):
            lib.optim.LBFGS([a], lr=-1)
        opt = lib.optim.LBFGS([a], line_search_fn="backtracking")

        def closure(opt=opt, a=a):
            opt.zero_grad()
            loss = (a * a).sum() + a.sum()
            loss.backward()
            return loss

        with pytest.raises(RuntimeError, match="only 'strong_wolfe' is supported"):
            opt.step(closure)
