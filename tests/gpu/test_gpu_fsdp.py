"""``fully_shard`` with parameters on the GPU (the CuPy path of the gathered storage: no
``madvise``, the storage is dropped and reallocated), on the threads backend."""

from __future__ import annotations

import pytest
from distributed import _fsdp_cases as cases  # tests/ is on sys.path (conftest.py)

import ddp
import ddp.distributed as dist
from ddp.distributed.fsdp import CPUOffloadPolicy, fully_shard

pytestmark = pytest.mark.gpu


def _on_gpu(fn, *args):
    def rank():
        ddp.set_default_device("cuda")
        assert next(cases.make("mlp").parameters()).is_cuda
        fn(*args)
    dist.spawn(rank, 2)


@pytest.mark.parametrize("kind", ["mlp", "reused"])
def test_matches_unsharded_on_gpu(kind):
    _on_gpu(cases.case_matches_unsharded, kind, "adamw")


def test_state_and_resharding_on_gpu():
    _on_gpu(cases.case_state_is_the_local_shard, "sgd")
    _on_gpu(cases.case_reshard_frees)


def test_cpu_offload_of_gpu_parameters_is_refused():
    def fn():
        with pytest.raises(NotImplementedError, match="CPUOffloadPolicy for GPU parameters"):
            fully_shard(cases.make("mlp"), offload_policy=CPUOffloadPolicy())
    _on_gpu(fn)
