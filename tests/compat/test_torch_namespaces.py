"""``torch.backends``, ``torch.onnx``, ``torch.multiprocessing`` and the grad-mode managers exist
with torch's names and defaults, so scripts that touch them run."""

from __future__ import annotations

import multiprocessing as std_mp

import pytest
from _helpers import torch_oracle

import ddp
import ddp.backends.cudnn
import ddp.distributed as dist
import ddp.multiprocessing as mp

torch = torch_oracle()


def test_backends_switches_have_torchs_defaults_and_can_be_set(monkeypatch):
    import torch.backends.cudnn  # noqa: F401 - the oracle's submodule

    for name in ("enabled", "benchmark", "deterministic", "allow_tf32"):
        assert getattr(ddp.backends.cudnn, name) == getattr(torch.backends.cudnn, name), name
    assert ddp.backends.cuda.matmul.allow_tf32 == torch.backends.cuda.matmul.allow_tf32
    monkeypatch.setattr(ddp.backends.cudnn, "benchmark", False)
    ddp.backends.cudnn.benchmark = True  # what scripts do; read back, no effect
    assert ddp.backends.cudnn.benchmark is True
    with ddp.backends.cudnn.flags(enabled=False, deterministic=True):
        assert (ddp.backends.cudnn.enabled, ddp.backends.cudnn.deterministic) == (False, True)
    assert (ddp.backends.cudnn.enabled, ddp.backends.cudnn.benchmark) == (True, True)
    assert ddp.backends.cudnn.is_available() is False and ddp.backends.cudnn.version() is None
    assert ddp.backends.mps.is_available() is False and ddp.backends.mps.is_built() is False
    assert ddp.backends.cuda.is_built() == ddp.cuda.is_available()


def test_onnx_export_says_why_it_cannot():
    assert ddp.onnx.is_in_onnx_export() is False
    with pytest.raises(NotImplementedError, match=r"onnx.export\(Linear, ...\): ddp cannot "
                       r"export ONNX graphs .* torch.onnx.export there"):
        ddp.onnx.export(ddp.nn.Linear(2, 1), (ddp.ones(1, 2),), "model.onnx")


def test_multiprocessing_reexports_the_standard_module():
    for name in ("Process", "Queue", "Pool", "get_context", "set_start_method", "cpu_count",
                 "Lock", "Event"):
        assert getattr(mp, name) is getattr(std_mp, name), name
    assert mp.get_all_sharing_strategies() == torch.multiprocessing.get_all_sharing_strategies()
    assert mp.get_sharing_strategy() == "file_descriptor"
    mp.set_sharing_strategy("file_system")
    assert mp.get_sharing_strategy() == "file_system"
    mp.set_sharing_strategy("file_descriptor")
    with pytest.raises(ValueError, match="'shm'"):
        mp.set_sharing_strategy("shm")


def _worker(rank: int, world_size: int, out: dict) -> None:
    # torch's mp.spawn idiom: init with rank and world size, then collectives
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    t = ddp.ones(2) * (rank + 1)
    dist.all_reduce(t)
    out[rank] = (dist.get_rank(), dist.get_world_size(), t.tolist())


def test_spawn_passes_the_index_first_and_runs_ranks():
    out: dict = {}
    assert mp.spawn(_worker, args=(3, out), nprocs=3) is None
    assert out == {r: (r, 3, [6.0, 6.0]) for r in range(3)}
    context = mp.spawn(_worker, args=(2, out), nprocs=2, join=False)
    assert context.join(timeout=60) is True


def _failing(rank: int) -> None:
    if rank == 1:
        raise ValueError("bad batch on rank 1")


def test_spawn_raises_naming_the_rank():
    with pytest.raises(dist.SpawnError, match="rank 1 of 2 raised ValueError: bad batch"):
        mp.spawn(_failing, nprocs=2)
    context = mp.spawn(_failing, nprocs=2, join=False)
    with pytest.raises(dist.SpawnError, match="rank 1 of 2"):
        context.join()
    with pytest.raises(ValueError, match="nprocs must be a positive int, got 0"):
        mp.spawn(_failing, nprocs=0)


@pytest.mark.parametrize("lib", ["ddp", "torch"])
def test_inference_mode_and_set_grad_enabled_as_torch(lib):
    T = ddp if lib == "ddp" else torch
    x = T.ones(2, requires_grad=True)
    with T.inference_mode():
        assert not (x * 2).requires_grad
    with T.inference_mode(False):
        assert (x * 2).requires_grad

    @T.inference_mode()
    def called():
        return x * 2

    @T.inference_mode
    def bare():
        return x * 2

    assert not called().requires_grad and not bare().requires_grad
    T.set_grad_enabled(False)
    assert not T.is_grad_enabled() and not (x * 2).requires_grad
    T.set_grad_enabled(True)
    with T.set_grad_enabled(False):
        assert not (x * 2).requires_grad
    assert T.is_grad_enabled()

    @T.set_grad_enabled(False)
    def off():
        return x * 2

    assert not off().requires_grad and T.is_grad_enabled()


def test_accelerator_answers_as_torch_without_one():
    assert ddp.accelerator.is_available() is torch.accelerator.is_available() is False
    assert ddp.accelerator.current_accelerator() is None
    assert torch.accelerator.current_accelerator() is None
    assert ddp.accelerator.device_count() == torch.accelerator.device_count() == 0


def test_cuda_amp_spellings_warn_as_torch():
    import warnings

    for lib in (ddp, torch):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scaler = lib.cuda.amp.GradScaler(enabled=False)
            with lib.cuda.amp.autocast():
                pass
        assert not scaler.is_enabled()
        kinds = [(w.category, str(w.message).split(" ")[0]) for w in caught]
        assert kinds == [(FutureWarning, "`torch.cuda.amp.GradScaler(args...)`"),
                         (FutureWarning, "`torch.cuda.amp.autocast(args...)`"),
                         (UserWarning, "CUDA")], lib


def test_device_kind_properties_as_torch():
    for lib in (ddp, torch):
        x = lib.zeros(1)
        assert (x.is_cpu, x.is_cuda, x.is_xpu, x.is_mps) == (True, False, False, False)
