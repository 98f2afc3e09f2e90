"""PowerSGD communication-hook cases shared by the threads tests and the MPI tests.

Weights stay fixed (no optimizer step) except in the training case, so each rank can compute
every rank's local gradients itself and build the exact references from them.
"""

from __future__ import annotations

import numpy as np

import ddp
import ddp.distributed as dist
from ddp import nn
from ddp.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as powerSGD

from ._ddp_cases import DDP, IN, OUT, loss_of, make_net

PER_RANK = 4
BUCKET_MB = 0.0003  # a few parameters a bucket: several buckets, several matrices


def _data(step: int, rank: int):
    rng = np.random.default_rng(100 * step + rank)
    return (ddp.tensor(rng.standard_normal((PER_RANK, IN))),
            ddp.tensor(rng.standard_normal((PER_RANK, OUT))))


def _local_grads(step: int, rank: int) -> list[np.ndarray]:
    model = make_net(0)
    loss_of(model, *_data(step, rank)).backward()
    return [p.grad.array.copy() for p in model.parameters()]


def _average(step: int) -> list[np.ndarray]:
    size = dist.get_world_size()
    every = [_local_grads(step, r) for r in range(size)]
    return [sum(e[i] for e in every) / size for i in range(len(every[0]))]


class _Recorder:
    """Wraps powerSGD_hook: remembers each call's bucket (index, parameters), in call order."""

    def __init__(self):
        self.calls: list[tuple[int, list]] = []

    def __call__(self, state, bucket):
        self.calls.append((bucket.index(), bucket.parameters()))
        return powerSGD.powerSGD_hook(state, bucket)


def _run(state: powerSGD.PowerSGDState, steps: int, model=None, recorder=None,
         hook=powerSGD.powerSGD_hook):
    """DDP with PowerSGD for ``steps`` backward passes; each step's gradients (and errors)."""
    model = model if model is not None else DDP(make_net(0), bucket_cap_mb=BUCKET_MB)
    model.register_comm_hook(state, recorder if recorder is not None else hook)
    grads, errors = [], []
    for step in range(steps):
        model.zero_grad()
        loss_of(model, *_data(step, dist.get_rank())).backward()
        grads.append([p.grad.array.copy() for p in model.parameters()])
        errors.append({k: e.array.copy() for k, e in state.error_dict.items()})
    return model, grads, errors


def _assert_same_on_every_rank(arrays: list[np.ndarray]) -> None:
    for a in arrays:
        high, low = ddp.tensor(a.copy()), ddp.tensor(a.copy())
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        assert np.array_equal(high.array, a) and np.array_equal(low.array, a)


def _per_param(flat_by_bucket: dict[int, np.ndarray], calls, model) -> dict[int, np.ndarray]:
    """Cut each bucket's flat array into its parameters' shapes: {id(param): array}."""
    out = {}
    for index, params in calls:
        flat = flat_by_bucket[index]
        assert flat.size == sum(p.numel() for p in params)  # the bucket is its slots, no gaps
        offset = 0
        for p in params:
            out[id(p)] = flat[offset:offset + p.numel()].reshape(p.shape)
            offset += p.numel()
    return out


def case_plain_average_before_start() -> None:
    size = dist.get_world_size()
    state = powerSGD.PowerSGDState(None, start_powerSGD_iter=10)
    _, grads, _ = _run(state, 3)
    assert state.iter == 3 and not state.error_dict and not state.p_memory_dict
    tol = 0 if size & (size - 1) == 0 else 1e-15  # divided before the sum, as torch's
    for step, got in enumerate(grads):
        for g, want in zip(got, _average(step), strict=True):
            np.testing.assert_allclose(g, want, rtol=0, atol=tol)
    _assert_same_on_every_rank(grads[-1])


def case_full_rank_is_exact(warm_start: bool) -> None:
    """Rank >= min(n, m) of every matrix: P spans the column space, P P^T M = M exactly."""
    state = powerSGD.PowerSGDState(None, matrix_approximation_rank=7, start_powerSGD_iter=2,
                                   min_compression_rate=0, use_error_feedback=False,
                                   warm_start=warm_start)
    _, grads, _ = _run(state, 4)
    assert state.iter == 4
    # min_compression_rate 0: every gradient was compressed, none sent as it is.
    rate, before, after = state.compression_stats()
    assert before == after * rate and before == 2 * sum(p.size for p in grads[0])
    assert bool(state.p_memory_dict) == warm_start
    for step, got in enumerate(grads):
        for g, want in zip(got, _average(step), strict=True):
            np.testing.assert_allclose(g, want, rtol=0, atol=1e-12)
    _assert_same_on_every_rank(grads[-1])


def case_rank1_sum_is_exact() -> None:
    """Every rank's weight gradient is delta_r x^T with the same x: the sum is rank 1, and
    rank-1 PowerSGD returns it exactly. The error left is each rank's own input minus it; the
    errors sum to zero over ranks, so the next sums stay rank 1 and exact."""
    size, rank = dist.get_world_size(), dist.get_rank()
    ddp.manual_seed(3)
    model = DDP(nn.Linear(6, 5, bias=False, dtype=ddp.float64))
    state = powerSGD.PowerSGDState(None, matrix_approximation_rank=1, start_powerSGD_iter=2)
    model.register_comm_hook(state, powerSGD.powerSGD_hook)
    weight = model.module.weight.array.copy()
    x = np.random.default_rng(0).standard_normal((1, 6))  # the same on every rank
    error = np.zeros(30)
    for step in range(5):
        y = np.random.default_rng(10 * step + rank).standard_normal((1, 5))
        model.zero_grad()
        ((model(ddp.tensor(x)) - ddp.tensor(y)) ** 2).sum().backward()
        got = model.module.weight.grad.array
        # d/dW sum((W x - y)^2) = 2 (W x - y) x^T, averaged over ranks
        ys = [np.random.default_rng(10 * step + r).standard_normal((1, 5)) for r in range(size)]
        want = sum(2 * (x @ weight.T - yr).T @ x for yr in ys) / size
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
        assert np.linalg.matrix_rank(want) == 1
        if step >= 2:  # the input (gradient + last error) minus the average
            local = 2 * (x @ weight.T - y).T @ x
            error = local.reshape(-1) + error - want.reshape(-1)
            np.testing.assert_allclose(state.error_dict[0].array, error, rtol=0, atol=1e-12)
    assert state.iter == 5 and len(state.error_dict) == 1 and np.abs(error).max() > 0.1


def case_error_feedback() -> None:
    """e_t = (g_t + e_{t-1}) - applied_t on each rank, hence over the compressed steps
    sum(g) = sum(applied) + e_last on each rank, and averaged over ranks:
    sum(true averages) = sum(applied) + mean_r(e_last)."""
    size, rank = dist.get_world_size(), dist.get_rank()
    start, steps = 2, 7
    recorder = _Recorder()
    state = powerSGD.PowerSGDState(None, matrix_approximation_rank=1, start_powerSGD_iter=start)
    model, grads, errors = _run(state, steps, recorder=recorder)
    calls = recorder.calls[:len(recorder.calls) // steps]
    params = list(model.parameters())
    # The approximation lost something (rank 1 of 7 x 7 and 3 x 7 random sums).
    assert any(np.abs(e).max() > 1e-3 for e in errors[-1].values())

    previous = {id(p): np.zeros(p.shape) for p in params}
    local_sum = {id(p): np.zeros(p.shape) for p in params}
    applied_sum = {id(p): np.zeros(p.shape) for p in params}
    average_sum = {id(p): np.zeros(p.shape) for p in params}
    for step in range(start, steps):
        error = _per_param(errors[step], calls, model)
        local = _local_grads(step, rank)
        for i, p in enumerate(params):
            # The error buffer is the input (gradient + last error) minus what was applied.
            np.testing.assert_allclose(error[id(p)], local[i] + previous[id(p)] - grads[step][i],
                                       rtol=0, atol=1e-12)
            local_sum[id(p)] += local[i]
            applied_sum[id(p)] += grads[step][i]
        for i, avg in enumerate(_average(step)):
            average_sum[id(params[i])] += avg
        previous = error
    mean_error = {}
    for p in params:
        e = ddp.tensor(previous[id(p)].copy())
        dist.all_reduce(e)
        mean_error[id(p)] = e.array / size
    for p in params:
        np.testing.assert_allclose(local_sum[id(p)], applied_sum[id(p)] + previous[id(p)],
                                   rtol=0, atol=1e-12)
        np.testing.assert_allclose(average_sum[id(p)], applied_sum[id(p)] + mean_error[id(p)],
                                   rtol=0, atol=1e-12)
    # The errors are per rank (local), the applied gradients the same everywhere.
    _assert_same_on_every_rank(grads[-1])


def case_matches_numpy_reference() -> None:
    """The first compressed step, recomputed in NumPy from every rank's local gradients."""
    size = dist.get_world_size()
    recorder = _Recorder()
    state = powerSGD.PowerSGDState(None, matrix_approximation_rank=1, start_powerSGD_iter=2,
                                   random_seed=5)
    model, grads, _ = _run(state, 3, recorder=recorder)
    params = list(model.parameters())
    every = [_local_grads(2, r) for r in range(size)]
    index_of = {id(p): i for i, p in enumerate(params)}
    seeds = np.random.RandomState(5)
    buckets = recorder.calls[2 * len(recorder.calls) // 3:]  # the third step's calls
    checked = 0
    for _, bucket_params in buckets:
        generator = np.random.default_rng(seeds.randint(1_000_000_000))
        matrices = [p for p in bucket_params if p.ndim == 2]
        qs = {}
        for p in matrices:
            q = generator.standard_normal((p.shape[1], 1))
            qs[id(p)] = q / np.sqrt(np.sum(q * q))
        for p in bucket_params:
            i = index_of[id(p)]
            if p.ndim == 1:  # sent as it is
                want = sum(e[i] for e in every) / size
            else:
                pm = sum(e[i] @ qs[id(p)] for e in every)
                pm = pm / np.sqrt(np.sum(pm * pm))
                qm = sum(e[i].T @ pm for e in every) / size
                want = pm @ qm.T
                checked += 1
            np.testing.assert_allclose(grads[2][i], want, rtol=1e-12, atol=1e-14)
    assert checked == 3


def case_trains() -> None:
    """A small model learns a fixed global batch with rank-1 PowerSGD."""
    size, rank = dist.get_world_size(), dist.get_rank()
    rng = np.random.default_rng(42)
    x = rng.standard_normal((size * PER_RANK, IN))
    y = np.tanh(x @ rng.standard_normal((IN, OUT)))
    xs = ddp.tensor(x[rank * PER_RANK:(rank + 1) * PER_RANK])
    ys = ddp.tensor(y[rank * PER_RANK:(rank + 1) * PER_RANK])
    model = DDP(make_net(0), bucket_cap_mb=BUCKET_MB)
    state = powerSGD.PowerSGDState(None, matrix_approximation_rank=1, start_powerSGD_iter=3)
    model.register_comm_hook(state, powerSGD.powerSGD_hook)
    optimizer = ddp.optim.SGD(model.parameters(), lr=0.2)
    losses = []
    for _ in range(60):
        optimizer.zero_grad()
        loss = loss_of(model, xs, ys)
        loss.backward()
        optimizer.step()
        total = ddp.tensor(np.array([loss.item()]))
        dist.all_reduce(total)
        losses.append(total.item() / size)
    assert state.iter == 60 and state.compression_stats()[0] > 1
    assert losses[-1] < 0.3 * losses[0], (losses[0], losses[-1])
    _assert_same_on_every_rank([p.array for p in model.parameters()])


def case_batched_same_shapes_match() -> None:
    """batch_tensors_with_same_shape stacks the two (7, 1) biases into one product: the same
    numbers as one product each (the random Qs are drawn in the same order)."""
    results = []
    for batch in (False, True):
        state = powerSGD.PowerSGDState(None, start_powerSGD_iter=2, min_compression_rate=0,
                                       batch_tensors_with_same_shape=batch)
        model = DDP(make_net(0))  # one bucket: both (7,) biases in it
        _, grads, _ = _run(state, 4, model=model)
        results.append(grads)
    for step in range(4):
        for a, b in zip(results[0][step], results[1][step], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-14)
    # ... and compressed: rank 1 of the (7, 7) weight is not its average.
    assert np.abs(results[1][3][2] - _average(3)[2]).max() > 1e-3


def case_batched_hook() -> None:
    """batched_powerSGD_hook: the whole bucket as one padded s x s matrix. Full rank (s) is
    exact; at rank 1 the error is the padded input minus what was applied."""
    rank = dist.get_rank()
    n = sum(p.size for p in _local_grads(0, 0))
    side = int(np.ceil(np.sqrt(n)))
    exact = powerSGD.PowerSGDState(None, matrix_approximation_rank=side, start_powerSGD_iter=2,
                                   use_error_feedback=False)
    _, grads, _ = _run(exact, 4, model=DDP(make_net(0)), hook=powerSGD.batched_powerSGD_hook)
    assert exact.compression_stats()[1:] == (2 * n, 2 * 2 * side * side)
    for step, got in enumerate(grads):
        for g, want in zip(got, _average(step), strict=True):
            np.testing.assert_allclose(g, want, rtol=0, atol=1e-12)

    low = powerSGD.PowerSGDState(None, matrix_approximation_rank=1, start_powerSGD_iter=2)
    _, grads, errors = _run(low, 5, model=DDP(make_net(0)),
                            hook=powerSGD.batched_powerSGD_hook)
    previous = np.zeros(side * side)
    for step in range(2, 5):
        error = errors[step][0]  # the one bucket
        assert error.shape == (side * side,) and len(errors[step]) == 1
        # DDP's one bucket holds the parameters in reverse order (launch order).
        flat_input = np.concatenate([g.reshape(-1) for g in _local_grads(step, rank)[::-1]])
        flat_applied = np.concatenate([g.reshape(-1) for g in grads[step][::-1]])
        np.testing.assert_allclose(error[:n], flat_input + previous[:n] - flat_applied,
                                   rtol=0, atol=1e-12)
        previous = error
    assert np.abs(previous).max() > 1e-3
    _assert_same_on_every_rank(grads[-1])
