"""``fully_shard`` on the threads backend (simulated ranks; no MPI needed).

The cases live in ``_fsdp_cases.py`` and run unchanged under mpiexec (test_fsdp_mpi.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import torch_oracle

import ddp
import ddp.distributed as dist
from ddp.distributed.fsdp import CPUOffloadPolicy, fully_shard
from ddp.distributed.fsdp.shard_layout import UnitLayout, row_range

from . import _fsdp_cases as cases


def run(fn, world_size: int, *args, **kwargs) -> None:
    dist.spawn(fn, world_size, args=args, kwargs=kwargs)


def test_rows_follow_torch_chunk():
    torch = torch_oracle()  # the sharding rule is torch.chunk's
    for rows in (0, 1, 5, 7, 11):
        for world in (1, 2, 3, 4):
            chunks = torch.arange(rows).chunk(world) if rows else ()
            got = [row_range(rows, world, r) for r in range(world)]
            want = [(int(c[0]), int(c[-1]) + 1) for c in chunks]
            want += [(rows, rows)] * (world - len(want))
            assert got == want, (rows, world)


def test_layout_round_trip():
    shapes = [(5, 3), (7,), (), (2, 2, 2)]
    world = 3
    layout = UnitLayout(shapes, world)
    rng = np.random.default_rng(0)
    full = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    sections = []
    for r in range(world):
        section = np.full(layout.section, np.nan, np.float32)
        locals_ = [np.atleast_1d(f)[slice(*row_range(layout.rows[i], world, r))]
                   for i, f in enumerate(full)]
        layout.copy_in(section, locals_)
        sections.append(section)
    storage = np.empty(layout.full_numel, np.float32)
    layout.copy_out(np.concatenate(sections), storage)
    for i, f in enumerate(full):
        np.testing.assert_array_equal(layout.full_view(storage, i), f)
    staging = np.full(layout.section * world, np.nan, np.float32)
    for i, f in enumerate(full):
        layout.grad_in(staging, i, f)
    np.testing.assert_array_equal(staging, np.concatenate(sections))


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_mlp_matches_unsharded(world_size, name):
    run(cases.case_matches_unsharded, world_size, "mlp", name)


@pytest.mark.parametrize("world_size", [2, 3])
def test_mlp_keep_after_forward_accumulate_and_clip(world_size):
    run(cases.case_matches_unsharded, world_size, "mlp", "adamw", accumulate=2, clip=0.05,
        reshard_after_forward=False)
    run(cases.case_matches_unsharded, world_size, "mlp", "sgd", accumulate=2, clip=0.05)


@pytest.mark.parametrize("world_size", [2, 3])
def test_gpt_matches_unsharded(world_size):
    # SGD: the key bias's gradient is zero up to rounding (softmax ignores a shift of the keys),
    # and Adam would blow that rounding up to full-size steps in both runs differently.
    run(cases.case_matches_unsharded, world_size, "gpt", "sgd", clip=1.0)


@pytest.mark.parametrize("world_size", [2, 3])
def test_unit_used_twice_tied_weights_and_unused_unit(world_size):
    run(cases.case_matches_unsharded, world_size, "reused", "adamw")
    run(cases.case_unused_unit_keeps_grad_none, world_size)


@pytest.mark.parametrize("world_size", [2, 3, 4])
@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_state_is_the_local_shard(world_size, name):
    run(cases.case_state_is_the_local_shard, world_size, name)


@pytest.mark.parametrize("world_size", [2, 3])
def test_full_tensor_and_resharding(world_size):
    run(cases.case_full_tensor, world_size)
    run(cases.case_reshard_frees, world_size)


@pytest.mark.parametrize("reduce_dtype", [None, ddp.float32])
def test_float16_mixed_precision(reduce_dtype):
    run(cases.case_mixed_precision, 2, reduce_dtype)


@pytest.mark.parametrize("reduce_dtype", [None, ddp.float32])
def test_bfloat16_mixed_precision(reduce_dtype):
    run(cases.case_mixed_precision, 3, reduce_dtype, ddp.bfloat16)


def test_misuse_raises():
    run(cases.case_misuse, 2)


def test_cpu_offload_is_a_noted_no_op():
    def fn():
        model = cases.make("mlp")
        with pytest.warns(UserWarning, match="no-op"):
            fully_shard(model, offload_policy=CPUOffloadPolicy())
    import ddp.distributed.fsdp.fully_shard as module  # noqa: PLC0415 - reset the one-time note
    module._offload_noted = False
    run(fn, 1)


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("reshard", [True, False])
def test_bytes_sent_are_1_5x_or_1x_ddp(world_size, reshard, monkeypatch):
    """Ring costs of every all-gather and reduce-scatter in one step: 2 all-gathers + 1
    reduce-scatter of the (padded) parameters = 1.5 DDP all-reduces with
    reshard_after_forward, 1 + 1 = one all-reduce without."""
    from ddp.distributed.process_group import ProcessGroup as group_class  # noqa: PLC0415

    sent: dict = {}
    ring = (world_size - 1) / world_size

    def counting(name, nbytes):
        original = getattr(group_class, name)

        def wrapper(self, out, inp, *args, **kw):
            rank = self.global_ranks[self.rank()]
            sent[rank] = sent.get(rank, 0.0) + ring * nbytes(out, inp)
            return original(self, out, inp, *args, **kw)

        monkeypatch.setattr(group_class, name, wrapper)

    counting("allgather", lambda out, inp: out.nbytes)
    counting("reduce_scatter", lambda out, inp: inp.nbytes)

    def fn():
        model = cases.shard(cases.make("mlp"), "mlp", reshard_after_forward=reshard)
        rows = cases.PER_RANK * world_size
        cases.loss_of("mlp", model, 0, rows, 0, cases.PER_RANK).backward()

    run(fn, world_size)
    padded = sum(-(-rows // world_size) * world_size * cols
                 for rows, cols in ((7, 3), (7, 1), (5, 7), (5, 1), (2, 5), (2, 1))) * 4
    ddp_allreduce = 2 * ring * padded
    assert sent == {r: pytest.approx((1.5 if reshard else 1.0) * ddp_allreduce)
                    for r in range(world_size)}


def _comm_bytes_within_backward():
    ddp.manual_seed(0)
    first, last = ddp.nn.Linear(3, 5), ddp.nn.Linear(5, 4)
    model = ddp.nn.Sequential(first, ddp.nn.Tanh(), last)
    fully_shard(first)
    fully_shard(last)
    fully_shard(model)
    seen = []
    x = ddp.ones(2, 3, requires_grad=True)
    h = x * 1.0  # the input's gradient comes last: every unit's gradients are staged by then
    h.register_hook(lambda g: seen.append(model.comm_nbytes()))
    model(h).sum().backward()
    assert model.comm_nbytes() == 0  # freed when backward ended
    return seen[0]


@pytest.mark.parametrize("world_size", [2, 3])
def test_comm_nbytes_counts_reduce_scatter_buffers_only_within_backward(world_size):
    held = dist.spawn(_comm_bytes_within_backward, world_size)
    # each unit's reduced shard (float32, padded rows) is held until backward ends
    assert all(h > 0 for h in held), held
