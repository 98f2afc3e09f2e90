"""One rank of ``bench_distributed.py``: times training steps of the reference models.

Not meant to be run by hand; ``bench_distributed.py`` launches it as::

    mpiexec -n 2 python _dist_worker.py --lib ddp --out r.json ...      # ddp over MPI
    python _dist_worker.py --lib torch --out r.json ...                 # torch, one process per
                                                                        # rank (RANK, WORLD_SIZE,
                                                                        # MASTER_ADDR/PORT set)
    python _dist_worker.py --lib ddp --world 1 ...                      # a plain, undistributed
                                                                        # model (scaling baseline)

Every rank runs the same steps on its own batch (seeded by rank); rank 0 writes the per-step
wall times (and, with ``--sync``, the gradient-synchronisation timings) as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import models  # noqa: E402


def load(lib_name: str):
    if lib_name == "torch":
        import torch

        torch.set_num_threads(1)
        return torch
    import ddp

    return ddp


def init(lib, lib_name: str, world: int) -> tuple[int, object]:
    """Initialise the default group (world > 1); returns (rank, barrier function)."""
    if world == 1:
        return 0, lambda: None
    if lib_name == "torch":
        import torch.distributed as dist

        dist.init_process_group("gloo")
    else:
        import ddp.distributed as dist

        dist.init_process_group("mpi")
    if dist.get_world_size() != world:
        raise RuntimeError(f"expected a world of {world}, got {dist.get_world_size()}")
    return dist.get_rank(), dist.barrier


def wrap(lib, lib_name: str, model, world: int, ddp_kwargs: dict):
    if world == 1:
        return model
    if lib_name == "torch":
        return lib.nn.parallel.DistributedDataParallel(model)
    return lib.nn.parallel.DistributedDataParallel(model, **ddp_kwargs)


def time_model(lib, lib_name: str, name: str, rank: int, world: int, steps: int, warmup: int,
               barrier, ddp_kwargs: dict) -> list[float]:
    lib.manual_seed(0)
    model = wrap(lib, lib_name, models.BUILDERS[name](lib), world, ddp_kwargs)
    x_np, y_np = models.batch(name, models.DEFAULT_BATCH[name], seed=rank)
    x, y = lib.from_numpy(x_np), lib.from_numpy(y_np)
    opt = models.make_optimizer(lib, name, model.parameters())
    times = []
    barrier()
    for step in range(warmup + steps):
        start = time.perf_counter()
        opt.zero_grad()
        loss = models.loss_fn(lib, model(x), y)
        loss.backward()
        opt.step()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    barrier()
    return times


def time_sync(reps: int, ddp_kwargs: dict) -> dict:
    """DDP's gradient synchronisation of the MLP's gradients against raw ``Allreduce``.

    Both move the same bytes between the same processes; interleaved so noise hits both alike.
    """
    from mpi4py import MPI

    import ddp
    import ddp.distributed as dist

    ddp.manual_seed(0)
    model = ddp.nn.parallel.DistributedDataParallel(models.mlp(ddp), **ddp_kwargs)
    params = list(model.parameters())
    rng = np.random.default_rng(dist.get_rank())
    for p in params:
        p.grad = ddp.from_numpy(rng.standard_normal(p.shape, dtype=np.float32))
    numel = sum(p.numel() for p in params)
    flat = rng.standard_normal(numel, dtype=np.float32)
    comm = MPI.COMM_WORLD.Dup()
    ddp_times, raw_times, transport_times = [], [], []
    reducer = model.reducer
    for rep in range(reps + 2):
        comm.Barrier()
        start = time.perf_counter()
        reducer.sync_now()
        ddp_time = time.perf_counter() - start
        comm.Barrier()
        # The transport alone: DDP's own process group all-reducing its flat bucket buffers.
        start = time.perf_counter()
        for buffer in reducer.strategy.flat_buffers:
            reducer.process_group.allreduce(buffer)
        transport_time = time.perf_counter() - start
        comm.Barrier()
        start = time.perf_counter()
        comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
        raw_time = time.perf_counter() - start
        if rep >= 2:
            ddp_times.append(ddp_time)
            raw_times.append(raw_time)
            transport_times.append(transport_time)
    comm.Free()
    return {"bytes": 4 * numel, "ddp": ddp_times, "raw": raw_times,
            "transport": transport_times}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lib", choices=["ddp", "torch"], required=True)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn", "gpt"])
    parser.add_argument("--steps", type=json.loads, default={"mlp": 20, "cnn": 10, "gpt": 4,
                                                                "resnet": 3})
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--ddp-kwargs", type=json.loads, default={})
    parser.add_argument("--sync", type=int, default=0, help="repetitions of the sync timing")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    lib = load(args.lib)
    rank, barrier = init(lib, args.lib, args.world)
    result: dict = {"lib": args.lib, "world": args.world, "steps": {}}
    for name in args.models:
        result["steps"][name] = time_model(lib, args.lib, name, rank, args.world,
                                           args.steps[name], args.warmup, barrier,
                                           args.ddp_kwargs)
    if args.sync and args.lib == "ddp" and args.world > 1:
        result["sync"] = time_sync(args.sync, args.ddp_kwargs)
    if rank == 0:
        with open(args.out, "w") as f:
            json.dump(result, f)
    if args.world > 1 and args.lib == "torch":
        import torch.distributed as dist

        dist.destroy_process_group()


if __name__ == "__main__":
    main()
