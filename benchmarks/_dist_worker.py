"""One rank of ``bench_distributed.py``: times training steps of the reference models.

Not meant to be run by hand; ``bench_distributed.py`` launches it as::

    mpiexec -n 2 python _dist_worker.py --lib ddp --out r.json ...      # ddp over MPI
    python _dist_worker.py --lib torch --out r.json ...                 # torch, one process per
                                                                        # rank (RANK, WORLD_SIZE,
                                                                        # MASTER_ADDR/PORT set)
    python _dist_worker.py --lib ddp --world 1 ...                      # a plain, undistributed
                                                                        # model (scaling baseline)

With ``--comm-hook fp16|bf16|powersgdR`` (ddp, world > 1) DDP reduces through that communication
hook; the bytes each step hands to the process group's collectives (``count_traffic``'s payload) are
recorded beside the times.

Every rank runs the same steps on its own batch (seeded by rank); rank 0 writes the per-step
wall times (and, with ``--sync``, the gradient-synchronisation timings) as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
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


def register_hook(model, hook: str, warmup: int) -> None:
    """``hook``: plain, fp16, or powersgdR (PowerSGD of rank R, compressing from the first
    timed step on)."""
    from ddp.distributed.algorithms.ddp_comm_hooks import default_hooks
    from ddp.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as powerSGD

    if hook in ("fp16", "bf16"):
        model.register_comm_hook(None, default_hooks.fp16_compress_hook if hook == "fp16"
                                 else default_hooks.bf16_compress_hook)
    elif hook.startswith("powersgd"):
        state = powerSGD.PowerSGDState(None, matrix_approximation_rank=int(hook[8:]),
                                       start_powerSGD_iter=max(2, warmup))
        model.register_comm_hook(state, powerSGD.powerSGD_hook)
    elif hook != "plain":
        raise ValueError(f"unknown comm hook {hook!r}")


def time_model(lib, lib_name: str, name: str, rank: int, world: int, steps: int, warmup: int,
               barrier, ddp_kwargs: dict, hook: str = "plain") -> tuple[list[float], list[int]]:
    """Step times, and (ddp at world > 1) the bytes this rank handed to collectives per step."""
    lib.manual_seed(0)
    model = wrap(lib, lib_name, models.BUILDERS[name](lib), world, ddp_kwargs)
    counting = lib_name == "ddp" and world > 1
    if counting:
        from ddp.distributed.traffic import count_traffic

        register_hook(model, hook, warmup)
    x_np, y_np = models.batch(name, models.DEFAULT_BATCH[name], seed=rank)
    x, y = lib.from_numpy(x_np), lib.from_numpy(y_np)
    opt = models.make_optimizer(lib, name, model.parameters())
    times, sent = [], []
    barrier()
    for step in range(warmup + steps):
        timed = step >= warmup
        count = count_traffic(rank) if counting and timed else contextlib.nullcontext()
        start = time.perf_counter()
        with count as bytes_sent:
            opt.zero_grad()
            loss = models.loss_fn(lib, model(x), y)
            loss.backward()
            opt.step()
        if timed:
            times.append(time.perf_counter() - start)
            if counting:
                sent.append(bytes_sent.payload(rank))
    barrier()
    return times, sent


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


def _sync_model(lib, mib: float):
    """Four square Linear layers holding ``mib`` MiB of float32 parameters in all."""
    width = int(round((mib * 2**20 / 4 / 4) ** 0.5))
    return lib.nn.Sequential(*[lib.nn.Linear(width, width) for _ in range(4)])


def _span(comm, start: float, end: float) -> float:
    """From the last rank's ``start`` to the last rank's ``end`` (one machine: one clock), so
    a rank that finished backward early and waits for the other is not counted as sync time."""
    starts, ends = zip(*comm.allgather((start, end)), strict=True)
    return max(ends) - max(starts)


def time_sync_sizes(reps: int, sizes: list[float]) -> dict:
    """End-to-end gradient sync of ``sizes`` MiB of gradients against raw ``Allreduce``.

    For each size and each ``gradient_as_bucket_view`` setting, one DDP model with
    ``comm_mode="sync"`` (every all-reduce after backward, none overlapped). Timed, each from the
    last rank's start to the last rank's end (``_span``):

    * ``e2e_<view|copy>``: ``zero_grad(set_to_none=True)``, a forward on 4 rows, a backward; from
      the end of backward (its last node run) to every ``.grad`` holding the average (the
      scheduler's ``last_timeline``: the all-reduce of the flat buffer, averaging, write-back;
      the copy into the buckets or, for views, the in-place division ran in backward's hooks).
    * ``raw_after``: its baseline: the same forward and backward on the unwrapped module (no
      sync), then mpi4py ``Allreduce(IN_PLACE)`` of a flat float32 array of the same bytes:
      both start the same way, straight out of a backward.
    * ``raw_grads``: the same, but the raw ``Allreduce`` is of the gradients that backward
      just wrote (the unwrapped module's parameters keep DDP's storage hooks, so its backward
      writes into the bucket buffer): the same bytes in the same cache state as DDP's
      all-reduce sees them (freshly written data costs write-backs that an idle array does not).
    * ``step_<view|copy>``: the same backward from its start to every ``.grad`` averaged, and
      ``bwd_plain``, the unwrapped module's backward alone: ``step - bwd_plain`` is all that
      synchronising costs, the work DDP adds inside backward (copies into the buckets or, with
      views, nothing but the division; the ready bookkeeping) included.
    * ``sync_now_<view|copy>``: ``GradSyncScheduler.sync_now()`` on the gradients already in
      ``.grad`` (division or copy into the buckets, all-reduce, write-back) after a barrier,
      against ``raw``: the same raw ``Allreduce`` after a barrier.

    Variants alternate within every repetition, so machine noise hits them alike.
    """
    from mpi4py import MPI

    import ddp

    comm = MPI.COMM_WORLD.Dup()
    rng = np.random.default_rng(comm.rank)
    out: dict = {}
    for mib in sizes:
        models_ = {}
        for as_view in (True, False):
            ddp.manual_seed(0)
            models_[as_view] = ddp.nn.parallel.DistributedDataParallel(
                _sync_model(ddp, mib), comm_mode="sync", gradient_as_bucket_view=as_view)
        params = list(models_[True].parameters())
        numel = sum(p.numel() for p in params)
        x = ddp.from_numpy(rng.standard_normal((4, params[0].shape[1]), dtype=np.float32))
        flat = rng.standard_normal(numel, dtype=np.float32)
        times: dict = {name: [] for name in ("e2e_view", "e2e_copy", "raw_after",
                                             "raw_grads", "step_view", "step_copy",
                                             "bwd_plain",
                                             "sync_now_view", "sync_now_copy", "raw")}

        def raw_allreduce(flat=flat):
            start = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
            end = time.perf_counter()
            flat[...] *= 0.5
            return _span(comm, start, end)

        for rep in range(reps + 2):
            sample: dict = {name: [] for name in times}
            for as_view in ((True, False) if rep % 2 == 0 else (False, True)):
                model = models_[as_view]
                name = "view" if as_view else "copy"
                for module in (model, model.module):  # synchronised, then the baseline
                    for p in model.parameters():
                        p.grad = None
                    loss = module(x).sum()
                    comm.Barrier()
                    start = time.perf_counter()
                    loss.backward()
                    if module is model:
                        timeline = model.reducer.last_timeline
                        sample[f"e2e_{name}"].append(
                            _span(comm, timeline["backward_end"], timeline["end"]))
                        sample[f"step_{name}"].append(_span(comm, start, timeline["end"]))
                    elif as_view:  # the slots hold what this backward wrote (storage hooks)
                        sample["raw_grads"].append(raw_allreduce(model.reducer.strategy
                                                                 .flat_buffers[0]))
                    else:  # no storage hooks: a plain backward, fresh .grad arrays
                        sample["bwd_plain"].append(_span(comm, start, time.perf_counter()))
                        sample["raw_after"].append(raw_allreduce())
                comm.Barrier()
                start = time.perf_counter()
                model.reducer.sync_now()
                sample[f"sync_now_{name}"].append(_span(comm, start, time.perf_counter()))
                comm.Barrier()
                sample["raw"].append(raw_allreduce())
            if rep >= 2:
                for key, values in sample.items():
                    times[key] += values
        out[str(mib)] = {"bytes": 4 * numel, **times}
        for model in models_.values():
            model.reducer.close()
    comm.Free()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lib", choices=["ddp", "torch"], required=True)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--models", nargs="*", default=["mlp", "cnn", "gpt"])
    parser.add_argument("--steps", type=json.loads, default={"mlp": 20, "cnn": 10, "gpt": 4,
                                                                "resnet": 3})
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--ddp-kwargs", type=json.loads, default={})
    parser.add_argument("--sync", type=int, default=0, help="repetitions of the sync timing")
    parser.add_argument("--sync-sizes", type=float, nargs="*", default=[],
                        help="MiB of gradients for the end-to-end sync timing (time_sync_sizes)")
    parser.add_argument("--comm-hook", default="plain", help="plain, fp16, bf16, powersgd1, ...")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    lib = load(args.lib)
    rank, barrier = init(lib, args.lib, args.world)
    result: dict = {"lib": args.lib, "world": args.world, "steps": {}, "bytes": {}}
    for name in args.models:
        result["steps"][name], result["bytes"][name] = time_model(
            lib, args.lib, name, rank, args.world, args.steps[name], args.warmup, barrier,
            args.ddp_kwargs, args.comm_hook)
    if args.sync and args.lib == "ddp" and args.world > 1:
        result["sync"] = time_sync(args.sync, args.ddp_kwargs)
    if args.sync and args.sync_sizes and args.lib == "ddp" and args.world > 1:
        result["sync_sizes"] = time_sync_sizes(args.sync, args.sync_sizes)
    if rank == 0:
        with open(args.out, "w") as f:
            json.dump(result, f)
    if args.world > 1 and args.lib == "torch":
        import torch.distributed as dist

        dist.destroy_process_group()


if __name__ == "__main__":
    main()
