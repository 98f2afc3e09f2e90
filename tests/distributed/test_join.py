"""Join for uneven inputs on the threads backend (cases in _join_cases.py, also run under MPI)."""

from __future__ import annotations

import pytest

import ddp.distributed as dist

from . import _join_cases as cases


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("divide", [True, False])
def test_uneven_inputs(world_size, divide):
    dist.spawn(cases.case_uneven_inputs, world_size, args=(divide,))


@pytest.mark.parametrize("comm_mode", ["nonblocking", "sync"])
def test_uneven_inputs_comm_modes(comm_mode):
    dist.spawn(cases.case_uneven_inputs, 3, args=(True, comm_mode))


@pytest.mark.parametrize("stage", [1, 2])
def test_uneven_inputs_zero(stage):
    dist.spawn(cases.case_uneven_inputs_zero, 3, args=(stage,))


def test_throw_on_early_termination():
    dist.spawn(cases.case_throw_on_early_termination, 3)


def test_zero_cannot_lead():
    dist.spawn(cases.case_zero_cannot_lead, 2)
