"""PowerSGD communication hook on the threads backend (cases in _powersgd_cases.py, also MPI)."""

from __future__ import annotations

import pickle

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
