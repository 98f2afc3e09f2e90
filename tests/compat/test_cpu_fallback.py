"""A torchrun script asking for CUDA and NCCL runs on a CPU-only machine, warning once per kind.

``torch.cuda.set_device`` and ``init_process_group("nccl")`` fall back to the CPU with one
``UserWarning`` each (docs/gpu.md); placing a tensor on CUDA still raises, as in torch.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import ddp
import ddp.distributed as dist
from ddp import launcher

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

pytestmark = pytest.mark.skipif(ddp.cuda.is_available(), reason="checks the CPU-only fallback")


@pytest.fixture
def fresh_warnings(monkeypatch):
    """Forget which fallbacks already warned in this process."""
    monkeypatch.setattr(ddp.cuda, "_fallbacks_warned", set())


def _fallback_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "falls back to the CPU" in str(w.message)]


def test_set_device_warns_once_and_does_nothing(fresh_warnings):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ddp.cuda.set_device(0)
        ddp.cuda.set_device("cuda:1")
        ddp.cuda.set_device(ddp.device("cuda", 0))
    messages = _fallback_warnings(record)
    assert len(messages) == 1, messages
    assert "torch.cuda.set_device(0): CUDA is not available" in messages[0]
    assert ddp.zeros(2).device == ddp.device("cpu")
    with pytest.raises(ValueError, match="Expected a cuda device, but got: cpu"):
        ddp.cuda.set_device("cpu")
    with pytest.raises(RuntimeError, match="cannot move a tensor to cuda"):
        ddp.zeros(2).cuda()  # placement still raises, as torch does without a GPU


def test_nccl_falls_back_with_one_warning(fresh_warnings):
    assert not dist.is_initialized()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        dist.init_process_group("nccl")
        try:
            assert dist.get_backend() == "local"
            t = ddp.ones(3)
            dist.all_reduce(t)
            assert t.tolist() == [1.0, 1.0, 1.0]
        finally:
            dist.destroy_process_group()
        dist.init_process_group(backend="nccl")
        dist.destroy_process_group()
    messages = _fallback_warnings(record)
    assert messages == ['init_process_group(backend="nccl"): CUDA is not available ('
                        f'{ddp.backend.cupy_unavailable_reason()}); ddp falls back to the CPU: '
                        "the 'local' backend runs the collectives on the CPU"]


@pytest.mark.parametrize("nranks", [2, 3])
def test_torchrun_style_ddp_script_runs_under_mpiexec(nranks):
    try:
        mpiexec = launcher.find_mpiexec()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PMI_", "PMIX_", "OMPI_", "MPI_LOCAL"))
           and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([mpiexec, "-n", str(nranks), sys.executable,
                           str(HERE / "torchrun_style_ddp.py")],
                          capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = sorted(proc.stdout.split("\n")[:-1])
    assert lines == [f"rank {r}/{nranks} local {r} backend mpi device cpu same-weights True"
                     for r in range(nranks)]
    # one warning per fallback and rank
    assert proc.stderr.count("CPU: the call does nothing") == nranks, proc.stderr
    assert proc.stderr.count("CPU: the 'mpi' backend runs the collectives") == nranks, proc.stderr
