"""``gradient_as_bucket_view`` cases (DDP's default), shared by the threads and MPI tests.

With views, ``p.grad`` is the parameter's slot of a communication bucket: backward writes into
it and the all-reduce averages it in place. Each case checks that memory sharing and that the
numbers still equal one process on the whole global batch (every rank computes the reference
itself), through the edge cases torch documents: ``zero_grad(set_to_none=True/False)``,
``no_sync`` accumulation, a ``.grad`` assigned by hand, unused parameters, comm hooks.
"""

from __future__ import annotations

import threading

import numpy as np

import ddp
import ddp.distributed as dist
from ddp.distributed.algorithms.ddp_comm_hooks import default_hooks

from ._ddp_cases import (
    DDP,
    assert_params_equal,
    global_batch,
    loss_of,
    make_net,
    make_optimizer,
    shard,
)


def bucket_buffers(ddp_model) -> list:
    return [b.buffer for b in ddp_model.reducer.buckets]


def assert_grads_are_bucket_views(ddp_model) -> None:
    buffers = bucket_buffers(ddp_model)
    for name, p in ddp_model.module.named_parameters():
        assert p.grad is not None, name
        assert any(np.shares_memory(p.grad.array, buffer) for buffer in buffers), name


def case_matches_single_process(set_to_none: bool, comm_mode: str = "thread",
                                steps: int = 3) -> None:
    """Views (the default) == one process on the whole batch, with either ``zero_grad``.

    ``set_to_none=True`` drops ``.grad`` every step: the next backward must write into the same
    slot again (re-attach), not allocate; ``False`` zeroes the slot in place.
    """
    rank, size, per_rank = dist.get_rank(), dist.get_world_size(), 3
    reference, model = make_net(0), make_net(rank)
    ddp_model = DDP(model, bucket_cap_mb=0.0005, comm_mode=comm_mode)
    written: list[bool] = []  # at accumulation time, before DDP's hook: .grad is the slot

    def check(p):
        written.append(any(np.shares_memory(p.grad.array, b) for b in bucket_buffers(ddp_model)))

    for p in model.parameters():
        p.register_post_accumulate_grad_hook(check)
    opt = make_optimizer("adamw", ddp_model.parameters())
    ref_opt = make_optimizer("adamw", reference.parameters())
    slots = None
    for step in range(steps):
        x, y = global_batch(step, size, per_rank)
        opt.zero_grad(set_to_none=set_to_none)
        if set_to_none:
            assert all(p.grad is None for p in model.parameters())
        elif step > 0:
            assert all(not p.grad.array.any() for p in model.parameters())
        loss_of(ddp_model, shard(x, rank, per_rank), shard(y, rank, per_rank)).backward()
        assert_grads_are_bucket_views(ddp_model)
        addresses = [p.grad.array.__array_interface__["data"][0] for p in model.parameters()]
        assert slots is None or addresses == slots  # the same slot every step
        slots = addresses
        opt.step()
        ref_opt.zero_grad(set_to_none=set_to_none)
        loss_of(reference, ddp.tensor(x), ddp.tensor(y)).backward()
        ref_opt.step()
        for p, q in zip(model.parameters(), reference.parameters(), strict=True):
            np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=0, atol=1e-12)
        assert_params_equal(model, reference)
    assert len(written) == steps * len(slots) and all(written)


def case_copies_without_views() -> None:
    """``gradient_as_bucket_view=False`` (torch's default): ``.grad`` is separate memory."""
    rank, size, per_rank = dist.get_rank(), dist.get_world_size(), 2
    reference, model = make_net(0), make_net(rank)
    ddp_model = DDP(model, bucket_cap_mb=0.0005, gradient_as_bucket_view=False)
    x, y = global_batch(0, size, per_rank)
    loss_of(ddp_model, shard(x, rank, per_rank), shard(y, rank, per_rank)).backward()
    loss_of(reference, ddp.tensor(x), ddp.tensor(y)).backward()
    buffers = bucket_buffers(ddp_model)
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert not any(np.shares_memory(p.grad.array, buffer) for buffer in buffers)
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=0, atol=1e-12)


def case_no_sync_accumulation(set_to_none: bool) -> None:
    """Three micro-batches, two under ``no_sync``, accumulated in the slots: the sum of the
    three global-batch gradients, and inside ``no_sync`` this rank's own sums."""
    rank, size, per_rank = dist.get_rank(), dist.get_world_size(), 2
    reference, local, model = make_net(0), make_net(0), make_net(rank)
    ddp_model = DDP(model, bucket_cap_mb=0.0005)
    opt = make_optimizer("sgd", ddp_model.parameters())
    for step in range(2):  # the second round starts from slots holding last round's average
        opt.zero_grad(set_to_none=set_to_none)
        local.zero_grad(set_to_none=set_to_none)
        reference.zero_grad(set_to_none=set_to_none)
        batches = [global_batch(10 * step + k, size, per_rank) for k in range(3)]
        with ddp_model.no_sync():
            for x, y in batches[:2]:
                loss_of(ddp_model, shard(x, rank, per_rank), shard(y, rank, per_rank)).backward()
                loss_of(local, shard(x, rank, per_rank), shard(y, rank, per_rank)).backward()
        assert_grads_are_bucket_views(ddp_model)  # no_sync also accumulates into the slots
        for p, q in zip(model.parameters(), local.parameters(), strict=True):
            np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=0, atol=1e-12)
        x, y = batches[2]
        loss_of(ddp_model, shard(x, rank, per_rank), shard(y, rank, per_rank)).backward()
        for x, y in batches:
            loss_of(reference, ddp.tensor(x), ddp.tensor(y)).backward()
        assert_grads_are_bucket_views(ddp_model)
        for p, q in zip(model.parameters(), reference.parameters(), strict=True):
            np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=0, atol=1e-12)
        opt.step()
        reference.load_state_dict(model.state_dict())
        local.load_state_dict(model.state_dict())


def case_user_assigned_grad() -> None:
    """``p.grad = t`` by hand between steps: backward accumulates into ``t`` (as torch does),
    DDP copies it into the slot and ``p.grad`` is the slot again, holding the average of every
    rank's ``t + local gradient``; ``t`` itself is no longer ``p.grad``."""
    rank, size, per_rank = dist.get_rank(), dist.get_world_size(), 2
    reference, model = make_net(0), make_net(0)
    ddp_model = DDP(model, bucket_cap_mb=0.0005)
    x, y = global_batch(0, size, per_rank)
    loss_of(ddp_model, shard(x, rank, per_rank), shard(y, rank, per_rank)).backward()
    weight = model.fc2.weight
    mine = ddp.full(tuple(weight.shape), float(rank + 1), dtype=ddp.float64)
    weight.grad = mine
    for p in (model.fc1.weight, model.fc3.bias):
        p.grad = None
    x, y = global_batch(1, size, per_rank)
    loss_of(ddp_model, shard(x, rank, per_rank), shard(y, rank, per_rank)).backward()
    assert_grads_are_bucket_views(ddp_model)
    assert weight.grad is not mine and not np.shares_memory(weight.grad.array, mine.array)
    reference.zero_grad()
    loss_of(reference, ddp.tensor(x), ddp.tensor(y)).backward()
    expected = reference.fc2.weight.grad.numpy() + (size + 1) / 2  # mean of rank + 1
    np.testing.assert_allclose(weight.grad.numpy(), expected, rtol=0, atol=1e-12)
    for name in ("fc1.weight", "fc3.bias"):  # set to None: re-attached, this step's average
        np.testing.assert_allclose(model.get_parameter(name).grad.numpy(),
                                   reference.get_parameter(name).grad.numpy(), rtol=0,
                                   atol=1e-12, err_msg=name)


def case_unused_parameters(find_unused_parameters: bool, set_to_none: bool) -> None:
    """``spare`` unused everywhere, ``fc2`` skipped on rank 0: their slots count as zeros.

    With ``set_to_none=False`` the slots hold zeros from ``zero_grad`` (never a stale value);
    with ``find_unused_parameters`` a parameter no rank used keeps ``.grad`` None, as without
    DDP.
    """
    rank, size, per_rank = dist.get_rank(), dist.get_world_size(), 2
    model = make_net(0, extra=True)
    ddp_model = DDP(model, bucket_cap_mb=0.0003, find_unused_parameters=find_unused_parameters)
    opt = make_optimizer("sgd", ddp_model.parameters())
    for step in range(3):
        x, y = global_batch(step, size, per_rank)
        expected = {name: np.zeros(p.shape) for name, p in model.named_parameters()}
        for r in range(size):
            replica = make_net(0, extra=True)
            replica.load_state_dict(model.state_dict())
            loss_of(replica, shard(x, r, per_rank), shard(y, r, per_rank), use_fc2=r > 0).backward()
            for name, p in replica.named_parameters():
                if p.grad is not None:
                    expected[name] += p.grad.numpy() / size
        opt.zero_grad(set_to_none=set_to_none)
        loss_of(ddp_model, shard(x, rank, per_rank), shard(y, rank, per_rank),
                use_fc2=rank > 0).backward()
        for name, p in model.named_parameters():
            unused = name.startswith("spare") or (name.startswith("fc2") and size == 1)
            if unused and find_unused_parameters:  # None before, and no rank used it
                assert p.grad is None, name
                continue
            np.testing.assert_allclose(p.grad.numpy(), expected[name], rtol=0, atol=1e-12,
                                       err_msg=name)
        if not find_unused_parameters:
            assert_grads_are_bucket_views(ddp_model)
        opt.step()


def case_comm_hook(hook_name: str) -> None:
    """A comm hook sees the gradients in its bucket: ``bucket.buffer()`` shares memory with
    each member's ``p.grad``; the averages land in ``p.grad`` (still the slots)."""
    rank, size, per_rank = dist.get_rank(), dist.get_world_size(), 2
    reference, model = make_net(0), make_net(0)
    ddp_model = DDP(model, bucket_cap_mb=0.0005)
    seen: list[bool] = []

    def hook(state, bucket):
        buffer = bucket.buffer().array
        seen.extend(np.shares_memory(p.grad.array, buffer) for p in bucket.parameters())
        return getattr(default_hooks, hook_name)(state, bucket)

    ddp_model.register_comm_hook(None, hook)
    for step in range(2):
        x, y = global_batch(step, size, per_rank)
        for p in model.parameters():
            p.grad = None
        reference.zero_grad()
        loss_of(ddp_model, shard(x, rank, per_rank), shard(y, rank, per_rank)).backward()
        loss_of(reference, ddp.tensor(x), ddp.tensor(y)).backward()
        assert_grads_are_bucket_views(ddp_model)
        atol = 1e-12 if hook_name == "allreduce_hook" else 2e-3  # fp16: 11-bit mantissa
        for p, q in zip(model.parameters(), reference.parameters(), strict=True):
            np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-3 * (atol > 1e-6),
                                       atol=atol)
    assert seen and all(seen)


class EmbeddingNet(ddp.nn.Module):
    """An Embedding, a Linear on 3-D input and a Linear: every op that writes its weight
    gradient straight into the bucket slot (``ddp/autograd/grad_destination.py``)."""

    def __init__(self):
        super().__init__()
        self.emb = ddp.nn.Embedding(11, 5, dtype=ddp.float64)
        self.fc1 = ddp.nn.Linear(5, 7, dtype=ddp.float64)
        self.fc2 = ddp.nn.Linear(7, 3, dtype=ddp.float64)

    def forward(self, idx):
        return self.fc2(ddp.tanh(self.fc1(self.emb(idx))).mean(1))


def case_direct_write(outs: dict, as_view: bool, hooked: bool, steps: int = 3) -> None:
    """Backward writes each gradient into its slot (no copy), and the result still equals one
    process on the whole batch, steps of SGD included.

    ``outs[thread id]`` collects every ``out`` given to ``kernels.matmul`` in that thread (a
    spy the test installs; the threads backend runs a rank per thread):
    with views, each Linear weight's slot is among them and ``p.grad`` is that slot; without
    views (``gradient_as_bucket_view=False``) no slot is. ``hooked``: a tensor hook on
    ``fc1.weight`` scales its gradient (on the reference too): that weight takes the copy path
    (the hook must see the gradient before it lands), and the hook result is what is averaged.
    """
    rank, size, per_rank = dist.get_rank(), dist.get_world_size(), 3
    ddp.manual_seed(0)
    reference = EmbeddingNet()
    ddp.manual_seed(rank)
    model = EmbeddingNet()
    model.load_state_dict(reference.state_dict())
    ddp_model = DDP(model, bucket_cap_mb=0.0002, gradient_as_bucket_view=as_view)
    if hooked:
        for net in (model, reference):
            net.fc1.weight.register_hook(lambda g: g * 3)
    opt = ddp.optim.SGD(ddp_model.parameters(), lr=0.1, momentum=0.9)
    ref_opt = ddp.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    names = [name for name, _ in model.named_parameters()]
    strategy = ddp_model.reducer.strategy
    for step in range(steps):
        rng = np.random.default_rng(100 + step)
        idx = rng.integers(0, 11, (size * per_rank, 4))
        y = rng.standard_normal((size * per_rank, 3))
        opt.zero_grad(set_to_none=True)
        mine_outs = outs.setdefault(threading.get_ident(), [])
        mine_outs.clear()
        mine = slice(rank * per_rank, (rank + 1) * per_rank)
        F_loss = ddp.nn.functional.mse_loss
        F_loss(ddp_model(ddp.tensor(idx[mine])), ddp.tensor(y[mine])).backward()
        for i, (name, p) in enumerate(model.named_parameters()):
            slot = strategy.slot(i)
            written = any(out is slot for out in mine_outs)
            direct = as_view and not (hooked and name == "fc1.weight")
            if name.endswith("weight") and name != "emb.weight":
                assert written == direct, (name, written)
            assert (p.grad.array is slot) == as_view, name
        opt.step()
        ref_opt.zero_grad(set_to_none=True)
        F_loss(reference(ddp.tensor(idx)), ddp.tensor(y)).backward()
        ref_opt.step()
        for name, p, q in zip(names, model.parameters(), reference.parameters(), strict=True):
            np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=0, atol=1e-12,
                                       err_msg=name)
        assert_params_equal(model, reference)
