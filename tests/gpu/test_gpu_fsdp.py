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


def _offloaded_training():
    import numpy as np

    mine, norms, model, opt = cases.train("mlp", "adamw", 3, True, clip=0.5,
                                          offload_policy=CPUOffloadPolicy())
    ref, ref_norms, _, _ = cases.train("mlp", "adamw", 3, False, clip=0.5)
    # the shards, their gradients and AdamW's state live on the host; the compute on the GPU
    params = list(model.parameters())
    assert all(not p.is_cuda and not p.grad.is_cuda for p in params)
    assert all(isinstance(v.array, np.ndarray) for st in opt.state.values()
               for v in st.values() if isinstance(v, ddp.Tensor))
    assert model.l1.weight.to_local().numel() == params[0].to_local().numel()
    for a, b in zip(mine, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(norms, ref_norms, rtol=1e-5)


def test_cpu_offload_keeps_shards_grads_and_state_on_the_host():
    _on_gpu(_offloaded_training)


def test_cpu_offload_needs_one_device_per_unit():
    def fn():
        model = cases.make("mlp")
        model.l3.cpu()
        with pytest.raises(ValueError, match="CPUOffloadPolicy needs the unit's parameters on "
                                             "one device"):
            fully_shard(model, offload_policy=CPUOffloadPolicy())
    _on_gpu(fn)
