"""ZeroRedundancyOptimizer and checkpoints under MPI, one process per rank.

Run with (any N >= 2; the cases compute their references themselves)::

    OMP_NUM_THREADS=1 .venv/bin/mpiexec -n 2 .venv/bin/python -m pytest -q --with-mpi -m mpi \\
        tests/distributed/test_zero_mpi.py
"""

from __future__ import annotations

import math

import pytest

from ddp.distributed.checkpoint import storage

from . import _zero_cases as cases


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_matches_unsharded(mpi_world, stage, name):
    # ZeRO reduce-scatters (both stages; small buckets split the parameters), DDP all-reduces:
    # MPI may sum in another order in the two collectives, so the comparison is to tolerance.
    cases.case_matches_unsharded(stage, name, exact=False)
    cases.case_matches_unsharded(stage, name, exact=False, buckets=cases.SMALL)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_state_is_exactly_one_nth(mpi_world, stage, name):
    cases.case_memory(stage, name)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_clip_grad_norm_is_global(mpi_world, stage, norm_type):
    cases.case_clip(stage, norm_type)


@pytest.mark.mpi(min_size=2)
@pytest.mark.filterwarnings("ignore:invalid value encountered")
@pytest.mark.parametrize("stage", [1, 2])
def test_nonfinite_agreed(mpi_world, stage):
    cases.case_nonfinite(stage)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("stage", [1, 2])
def test_consolidate_state_dict(mpi_world, stage):
    cases.case_consolidate(stage, "adamw")


@pytest.mark.mpi(min_size=2)
def test_checkpoint_reshard_down_and_up(mpi_world):
    """N -> N-1 and N-1 -> N (3 -> 2 and 2 -> 3 under -n 3; 2 -> 1 and 1 -> 2 under -n 2)."""
    n = mpi_world.size()
    cases.case_reshard_resume(n, n - 1)
    cases.case_reshard_resume(n - 1, n)
    cases.case_reshard_resume(n, n, "plain", "zero")


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("stage", [1, 2])
def test_checkpoint_sharded_state_roundtrip(mpi_world, stage):
    cases.case_sharded_state_roundtrip(stage)


@pytest.mark.mpi(min_size=2)
def test_interrupted_save_keeps_previous(mpi_world, monkeypatch):
    monkeypatch.setattr(storage, "write_array", cases.failing_write_array)
    cases.case_interrupted_save()


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
def test_reduce_dtype_halves_bytes_and_averages_low_precision_grads(mpi_world, stage,
                                                                    dtype_name):
    cases.case_reduce_dtype(stage, dtype_name)
    cases.case_reduce_dtype(stage, dtype_name, accumulate=2)
