"""``fully_shard`` under MPI, one process per rank.

Run with (any N >= 2; the cases compute their references themselves)::

    OMP_NUM_THREADS=1 .venv/bin/mpiexec -n 2 .venv/bin/python -m pytest -q --with-mpi -m mpi \\
        tests/distributed/test_fsdp_mpi.py
"""

from __future__ import annotations

import pytest

import ddp

from . import _fsdp_cases as cases


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_mlp_matches_unsharded(mpi_world, name):
    cases.case_matches_unsharded("mlp", name)
    cases.case_matches_unsharded("mlp", name, accumulate=2, clip=0.05)
    cases.case_matches_unsharded("mlp", name, reshard_after_forward=False)


@pytest.mark.mpi(min_size=2)
def test_gpt_matches_unsharded(mpi_world):
    cases.case_matches_unsharded("gpt", "sgd", clip=1.0)  # SGD: see test_fsdp.py


@pytest.mark.mpi(min_size=2)
def test_unit_used_twice_tied_weights_and_unused_unit(mpi_world):
    cases.case_matches_unsharded("reused", "adamw")
    cases.case_unused_unit_keeps_grad_none()


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_state_is_the_local_shard(mpi_world, name):
    cases.case_state_is_the_local_shard(name)


@pytest.mark.mpi(min_size=2)
def test_full_tensor_and_resharding(mpi_world):
    cases.case_full_tensor()
    cases.case_reshard_frees()


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("reduce_dtype", [None, ddp.float32])
def test_float16_mixed_precision(mpi_world, reduce_dtype):
    cases.case_mixed_precision(reduce_dtype)


@pytest.mark.mpi(min_size=2)
def test_misuse_raises(mpi_world):
    cases.case_misuse()
