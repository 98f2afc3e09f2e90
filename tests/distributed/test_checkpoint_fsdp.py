"""Checkpoints of fully sharded models on the threads backend: each rank writes its dim-0 rows
with global offsets; loads at another world size, into DDP, ZeRO and one process, and back.

The cases live in ``_fsdp_checkpoint_cases.py`` (the MPI versions: test_checkpoint_fsdp_mpi.py).
"""

from __future__ import annotations

import pytest

import ddp.distributed as dist

from . import _fsdp_checkpoint_cases as cases


@pytest.mark.parametrize(("save_ranks", "load_ranks"), [(3, 2), (2, 3), (3, 1), (1, 3), (4, 3)])
def test_fsdp_reshard_resume_bit_identical(save_ranks, load_ranks):
    dist.spawn(cases.case_resume, max(save_ranks, load_ranks),
               args=("fsdp", save_ranks, "fsdp", load_ranks))


@pytest.mark.parametrize(("save_kind", "save_ranks", "load_kind", "load_ranks"), [
    ("fsdp", 3, "plain", 1), ("fsdp", 3, "ddp", 2), ("fsdp", 3, "zero", 2),
    ("ddp", 2, "fsdp", 3), ("plain", 1, "fsdp", 3), ("zero", 3, "fsdp", 2)])
def test_fsdp_and_other_kinds_interchange(save_kind, save_ranks, load_kind, load_ranks):
    dist.spawn(cases.case_resume, max(save_ranks, load_ranks),
               args=(save_kind, save_ranks, load_kind, load_ranks))


@pytest.mark.parametrize(("save_ranks", "load_kind", "load_ranks"),
                         [(3, "fsdp", 2), (3, "plain", 1), (2, "ddp", 3)])
def test_fsdp_model_without_optimizer(save_ranks, load_kind, load_ranks):
    dist.spawn(cases.case_resume, max(save_ranks, load_ranks),
               args=("fsdp", save_ranks, load_kind, load_ranks, False))


@pytest.mark.parametrize("world_size", [3, 4])
def test_each_rank_writes_its_rows(world_size):
    dist.spawn(cases.case_rows_in_the_index, world_size, args=(world_size,))


@pytest.mark.parametrize(("save_ranks", "load_ranks"), [(3, 2), (2, 3)])
def test_fully_shard_training_resumes(save_ranks, load_ranks):
    dist.spawn(cases.case_fully_shard_resume, max(save_ranks, load_ranks),
               args=(save_ranks, load_ranks))


def test_sharded_parameter_outside_the_optimizer_is_refused():
    dist.spawn(cases.case_sharded_param_outside_the_optimizer, 3)
