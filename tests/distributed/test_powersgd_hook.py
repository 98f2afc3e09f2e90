"""PowerSGD communication hook on the threads backend (cases in _powersgd_cases.py, also MPI)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import ddp.distributed as dist
from ddp.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as powerSGD

from . import _powersgd_cases as cases


@pytest.mark.parametrize("world_size", [2, 3])
def test_plain_average_before_start(world_size):
    dist.spawn(cases.case_plain_average_before_start, world_size)


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("warm_start", [False, True])
def test_full_rank_is_exact(world_size, warm_start):
    dist.spawn(cases.case_full_rank_is_exact, world_size, args=(warm_start,))


@pytest.mark.parametrize("world_size", [2, 3])
def test_rank1_sum_is_exact(world_size):
    dist.spawn(cases.case_rank1_sum_is_exact, world_size)


@pytest.mark.parametrize("world_size", [2, 3])
def test_error_feedback(world_size):
    dist.spawn(cases.case_error_feedback, world_size)


@pytest.mark.parametrize("world_size", [2, 3])
def test_matches_numpy_reference(world_size):
    dist.spawn(cases.case_matches_numpy_reference, world_size)


@pytest.mark.parametrize("world_size", [2, 3])
def test_batched_same_shapes_match(world_size):
    dist.spawn(cases.case_batched_same_shapes_match, world_size)


@pytest.mark.parametrize("world_size", [2, 3])
def test_batched_hook(world_size):
    dist.spawn(cases.case_batched_hook, world_size)


def test_trains():
    dist.spawn(cases.case_trains, 2)


def test_state_arguments_and_pickle():
    with pytest.raises(ValueError, match="Expect `start_powerSGD_iter` > 1"):
        powerSGD.PowerSGDState(None, start_powerSGD_iter=1)
    state = powerSGD.PowerSGDState(None, use_error_feedback=False, warm_start=False,
                                   start_powerSGD_iter=1)
    assert state.start_powerSGD_iter == 1
    state = powerSGD.PowerSGDState("group", matrix_approximation_rank=4, random_seed=3)
    assert (state.matrix_approximation_rank, state.start_powerSGD_iter,
            state.min_compression_rate, state.use_error_feedback, state.warm_start,
            state.orthogonalization_epsilon, state.compression_stats()) == (4, 1000, 2, True,
                                                                           True, 0, (0, 0, 0))
    state.iter = 7
    restored = pickle.loads(pickle.dumps(state))
    assert restored.process_group is None and restored.iter == 7
    assert restored.matrix_approximation_rank == 4
    assert restored.rng.randint(1000) == state.rng.randint(1000)


@pytest.mark.parametrize("shape", [(2, 6, 2), (1, 6, 1), (3, 8, 4)])
def test_orthogonalize_keeps_the_span(shape):
    """Gram-Schmidt (rank <= 2) and QR (above): orthonormal columns spanning the same space."""
    a = np.random.default_rng(1).standard_normal(shape)
    q = a.copy()
    powerSGD._orthogonalize(q)
    for k in range(shape[0]):
        np.testing.assert_allclose(q[k].T @ q[k], np.eye(shape[2]), atol=1e-14)
        np.testing.assert_allclose(q[k] @ (q[k].T @ a[k]), a[k], atol=1e-13)


def test_orthogonalize_zero_column_and_epsilon():
    zeros = np.zeros((1, 4, 1))
    nan = zeros.copy()
    powerSGD._orthogonalize(nan)
    assert np.isnan(nan).all()
    eps = zeros.copy()
    powerSGD._orthogonalize(eps, epsilon=1e-8)
    assert (eps == 0).all()
    with pytest.raises(ValueError, match=r"tall matrices, got shape \(1, 2, 3\)"):
        powerSGD._orthogonalize(np.zeros((1, 2, 3)))
