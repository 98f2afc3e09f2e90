"""Ranks sharing a node share its cores unless the user chose a thread count."""

from __future__ import annotations

import os

import pytest
import threadpoolctl  # a declared dependency (pyproject.toml): missing is a broken install

from ddp.distributed import cpu_threads


@pytest.fixture
def no_thread_settings(monkeypatch):
    for name in cpu_threads._USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    yield
    if cpu_threads._limiter is not None:
        cpu_threads._limiter.restore_original_limits()
        cpu_threads._limiter = None


def test_ranks_on_one_node_split_the_cores(no_thread_settings, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert cpu_threads.share_cores(4) == 2
    blas = [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
    assert blas and all(n == 2 for n in blas)


def test_more_ranks_than_cores_get_one_thread(no_thread_settings, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert cpu_threads.share_cores(4) == 1


def test_user_setting_and_single_rank_are_left_alone(no_thread_settings, monkeypatch):
    assert cpu_threads.share_cores(1) is None
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads.share_cores(4) is None
