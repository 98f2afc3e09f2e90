"""Device placement, ``ddp.cuda``, device-mismatch errors and the GPU process groups."""

from __future__ import annotations

import numpy as np
import pytest

import ddp

pytestmark = pytest.mark.gpu


def test_cuda_module_and_placement():
    assert ddp.cuda.is_available() and ddp.cuda.device_count() >= 1
    ddp.cuda.set_device(0)
    assert ddp.cuda.current_device() == 0
    assert ddp.cuda.get_device_name()
    x = ddp.arange(6.0).reshape(2, 3)
    g = x.to("cuda")
    assert g.is_cuda and str(g.device) == "cuda:0" and g.device == ddp.device("cuda:0")
    assert g.to("cuda") is g and g.cuda() is g and g.to("cuda:0") is g
    assert x.cuda().device == g.device
    np.testing.assert_array_equal(g.cpu().numpy(), x.numpy())
    assert g.tolist() == x.tolist() and float(g.sum()) == 15.0
    with pytest.raises(TypeError, match="cuda:0"):
        g.numpy()
    ddp.cuda.synchronize()
    for t in (ddp.zeros(2, 3, device="cuda"), ddp.ones(2, device="cuda:0"),
              ddp.randn(4, device="cuda"), ddp.arange(5, device="cuda"),
              ddp.full((2,), 3.0, device="cuda"), ddp.tensor([1, 2], device="cuda"),
              ddp.zeros_like(g), ddp.randn_like(g), ddp.eye(3, device="cuda")):
        assert t.is_cuda, t


def test_seeded_random_numbers_are_the_same_on_cpu_and_gpu():
    ddp.manual_seed(3)
    a = ddp.randn(5)
    ddp.manual_seed(3)
    b = ddp.randn(5, device="cuda")
    np.testing.assert_array_equal(a.numpy(), b.cpu().numpy())
    ddp.cuda.manual_seed_all(0)


def test_gradients_flow_across_to():
    x = ddp.ones(3, requires_grad=True)
    (x.cuda() * 2).sum().backward()
    assert not x.grad.is_cuda and x.grad.tolist() == [2.0, 2.0, 2.0]


def test_device_mismatch_names_both_devices():
    a, b = ddp.ones(2), ddp.ones(2, device="cuda")
    with pytest.raises(RuntimeError, match=r"cpu, cuda:0|cuda:0, cpu"):
        a + b
    if ddp.cuda.device_count() < 2:
        pytest.skip("one GPU: cuda:0 vs cuda:1 needs two")
    c = ddp.ones(2, device="cuda:1")
    with pytest.raises(RuntimeError, match="cuda:0, cuda:1"):
        b * c


def test_module_to_cuda_moves_parameters_in_place_and_optimizer_keeps_working():
    model = ddp.nn.Linear(4, 2)
    params = list(model.parameters())
    optimizer = ddp.optim.Adam(model.parameters(), lr=0.1)
    assert model.to("cuda") is model
    assert [id(p) for p in model.parameters()] == [id(p) for p in params]
    assert all(p.is_cuda for p in model.parameters())
    before = model.weight.detach().cpu().numpy().copy()
    x = ddp.randn(8, 4).cuda()
    model(x).pow(2).mean().backward()
    assert model.weight.grad.is_cuda
    optimizer.step()
    assert model.weight.is_cuda and not np.allclose(model.weight.detach().cpu().numpy(), before)
    model.cpu()
    assert not model.weight.is_cuda and optimizer.param_groups[0]["params"][0] is model.weight


def test_dataloader_batches_move_to_gpu():
    from ddp.utils.data import DataLoader, TensorDataset

    ds = TensorDataset(ddp.arange(10.0).reshape(5, 2), ddp.arange(5))
    for xb, yb in DataLoader(ds, batch_size=2):
        xb, yb = xb.to("cuda"), yb.to("cuda")
        assert xb.is_cuda and yb.is_cuda
        assert (xb[:, 0] / 2).tolist() == yb.float().tolist()


def _mpi_self(check: bool = True):
    from mpi4py import MPI

    from ddp.distributed.mpi_backend import MPIProcessGroup

    return MPIProcessGroup(MPI.COMM_SELF.Dup(), [0], "SELF", 0, check_collectives=check)


def _exercise(pg):
    cp = ddp.backend.cupy_module()
    a = cp.arange(6, dtype=cp.float32)
    pg.allreduce(a)
    pg.allreduce(a, "avg")
    pg.allreduce(a, "max")
    np.testing.assert_array_equal(a.get(), np.arange(6, dtype=np.float32))
    pg.broadcast(a, 0)
    out = cp.zeros(6, cp.float32)
    pg.allgather(out, a)
    np.testing.assert_array_equal(out.get(), a.get())
    rs = cp.zeros(6, cp.float32)
    pg.reduce_scatter(rs, a * 2)
    np.testing.assert_array_equal(rs.get(), 2 * a.get())
    host = np.ones(3)
    pg.allreduce(host)  # host buffers still work on a GPU group
    assert host.tolist() == [1.0, 1.0, 1.0]
    pg.barrier()
    assert pg.allgather_object({"r": 0}) == [{"r": 0}]
    work = pg.allreduce_async(a)
    work.wait()
    np.testing.assert_array_equal(a.get(), np.arange(6, dtype=np.float32))


def test_nccl_process_group_world_size_one():
    pytest.importorskip("cupy.cuda.nccl", reason="CuPy without its NCCL bindings")
    from ddp.distributed.nccl_backend import NCCLProcessGroup

    pg = NCCLProcessGroup(_mpi_self(check=False))
    assert pg.backend == "nccl" and pg.size() == 1 and pg.device_index == 0
    _exercise(pg)
    dup = pg.dup()
    _exercise(dup)
    dup.destroy()
    pg.destroy()


def test_mpi_process_group_accepts_cupy_arrays():
    pg = _mpi_self()
    _exercise(pg)
    pg.destroy()


def test_ddp_on_gpu_with_nccl_group_matches_plain_training():
    pytest.importorskip("cupy.cuda.nccl", reason="CuPy without its NCCL bindings")
    from ddp.distributed.nccl_backend import NCCLProcessGroup
    from ddp.nn.parallel import DistributedDataParallel

    pg = NCCLProcessGroup(_mpi_self(check=False))
    ddp.manual_seed(0)
    plain = ddp.nn.Linear(5, 3).cuda()
    ddp.manual_seed(0)
    wrapped = DistributedDataParallel(ddp.nn.Linear(5, 3).cuda(), process_group=pg)
    x = ddp.randn(7, 5, device="cuda")
    for model in (plain, wrapped):
        model(x).pow(2).sum().backward()
    np.testing.assert_allclose(wrapped.module.weight.grad.cpu().numpy(),
                               plain.weight.grad.cpu().numpy(), rtol=1e-5, atol=1e-6)
    pg.destroy()


def test_main_job_on_gpu_matches_cpu(tmp_path, capsys):
    """examples/train.py --device cuda: the same steps as on the CPU, to float32 rounding."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "examples" / "train.py"
    spec = importlib.util.spec_from_file_location("train_example_gpu", path)
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    common = ["--epochs", "1", "--max-steps", "8", "--no-progress"]
    cpu = train.main(common + ["--out", str(tmp_path / "cpu")])
    gpu = train.main(common + ["--out", str(tmp_path / "gpu"), "--device", "cuda"])
    assert abs(cpu - gpu) <= 0.01, (cpu, gpu)
    state = ddp.load(str(tmp_path / "gpu" / "checkpoint.ddp"))  # written from GPU tensors
    cpu_state = ddp.load(str(tmp_path / "cpu" / "checkpoint.ddp"))
    for name, value in cpu_state["model"].items():
        assert state["model"][name].is_cuda  # loaded where it was saved, as torch.load does
        np.testing.assert_allclose(state["model"][name].cpu().numpy(), value.numpy(), rtol=1e-3,
                                   atol=1e-4, err_msg=name)
    mapped = ddp.load(str(tmp_path / "gpu" / "checkpoint.ddp"), map_location="cpu")
    assert not any(t.is_cuda for t in mapped["model"].values())
    capsys.readouterr()
