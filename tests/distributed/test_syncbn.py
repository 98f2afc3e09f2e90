"""SyncBatchNorm on the threads backend (simulated ranks): the cases of _syncbn_cases.py.

The same cases run under MPI in test_syncbn_mpi.py.
"""

from __future__ import annotations

import pytest

import ddp.distributed as dist

from . import _syncbn_cases as cases


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("uneven", [False, True])
def test_matches_single_process(world_size, uneven, kernel_path):
    dist.spawn(cases.case_matches_single_process, world_size, args=(uneven,))


@pytest.mark.parametrize("world_size", [2, 3])
def test_statistics_without_ddp(world_size, kernel_path):
    dist.spawn(cases.case_statistics_without_ddp, world_size)


def test_one_collective_per_forward_and_backward():
    dist.spawn(cases.case_eval_and_no_grad_input_run_no_collective, 2)
