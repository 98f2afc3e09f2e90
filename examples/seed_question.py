"""Where is the connection between ``loss.backward()`` and ``optimizer.step()``?

There is no hidden channel: the connection is the ``.grad`` attribute of each parameter.
``backward()`` writes (adds to) ``p.grad``; ``step()`` reads ``p.grad`` of the parameters it
was given and updates ``p`` in place. Everything else follows from that, and this script
prints the values at each point:

    python examples/seed_question.py                        # one process
    .venv/bin/mpiexec -n 2 .venv/bin/python examples/seed_question.py   # two ranks: DDP

1. backward fills ``.grad``       5. ``.clone().detach()`` cuts the graph
2. step reads it                  6. ``model.to()`` after building the optimizer
3. two variables                  7. under DDP, a hook averages ``.grad`` across ranks
4. without ``zero_grad()`` gradients accumulate   in between backward and step
"""

from __future__ import annotations

import warnings

import ddp as torch  # the same program runs with `import torch`, except section 7's launcher
import ddp.distributed as dist
from ddp.nn.parallel import DistributedDataParallel


def show(values) -> str:
    """A tensor (or None) as a short list, e.g. ``[0.9, 1.9]`` (float32 noise rounded off);
    a 0-d tensor as a number."""
    if values is None:
        return "None"
    if values.dim() == 0:
        return f"{values.item():.6g}"
    return "[" + ", ".join(f"{v:.6g}" for v in values.reshape(-1).tolist()) + "]"


def say(text: str = "") -> None:
    if dist.get_rank() == 0:  # I/O only: every rank runs the same computation
        print(text, flush=True)


def backward_fills_grad() -> None:
    say("1. backward() fills .grad")
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = 100 * x
    loss = y.sum()
    say(f"   x = {show(x)}, y = 100 * x, loss = y.sum() = {loss.item():g}")
    say(f"   before backward: x.grad = {show(x.grad)}")
    loss.backward()                              # d loss / d x = 100 for each element
    say(f"   after backward:  x.grad = {show(x.grad)}")

    say("2. step() reads .grad")
    optimizer = torch.optim.SGD([x], lr=0.001)   # the optimizer holds x itself, not a copy
    optimizer.step()                             # x <- x - lr * x.grad
    say(f"   SGD(lr=0.001).step(): x = {show(x)}   (x - 0.001 * x.grad)")


def two_variables() -> None:
    say("3. z = 3x^2 + y^3 at x=1, y=2")
    x = torch.tensor(1.0, requires_grad=True)
    y = torch.tensor(2.0, requires_grad=True)
    z = 3 * x ** 2 + y ** 3
    z.backward()
    say(f"   z = {z.item():g}; x.grad = 6x = {show(x.grad)}, y.grad = 3y^2 = {show(y.grad)}")
    optimizer = torch.optim.SGD([x, y], lr=0.1)
    optimizer.step()
    say(f"   SGD(lr=0.1).step(): x = {show(x)}, y = {show(y)}   (1 - 0.6, 2 - 1.2)")

    say("4. without zero_grad() gradients accumulate")
    x = torch.tensor(1.0, requires_grad=True)
    y = torch.tensor(2.0, requires_grad=True)
    optimizer = torch.optim.SGD([x, y], lr=0.1)
    for i in (1, 2):
        (3 * x ** 2 + y ** 3).backward()         # backward ADDS to .grad
        say(f"   after backward #{i}: x.grad = {show(x.grad)}, y.grad = {show(y.grad)}")
    optimizer.zero_grad()                        # set_to_none=True, as in torch
    say(f"   after zero_grad(): x.grad = {show(x.grad)}, y.grad = {show(y.grad)}")
    (3 * x ** 2 + y ** 3).backward()
    say(f"   after one more backward: x.grad = {show(x.grad)}, y.grad = {show(y.grad)}")


def detach_cuts_the_graph() -> None:
    say("5. .clone().detach() cuts the graph: the parameter gets no gradient")
    a = torch.tensor([1.0], requires_grad=True)
    b = torch.tensor([2.0], requires_grad=True)
    optimizer = torch.optim.SGD([a, b], lr=0.1)
    debug_was_on = torch.debug.is_enabled()
    torch.debug.enable()                         # what DDP_DEBUG=1 switches on
    b_copy = b.clone().detach()                  # a new leaf, no edge back to b
    loss = (a * b_copy).sum()
    loss.backward()
    say(f"   loss = a * b.clone().detach(): a.grad = {show(a.grad)}, b.grad = {show(b.grad)}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optimizer.step()                         # skips b: it has no .grad
    if not debug_was_on:
        torch.debug.disable()
    say(f"   after step: a = {show(a)}, b = {show(b)} (b unchanged)")
    for warning in caught:
        if isinstance(warning.message, torch.debug.DDPDebugWarning):
            say(f"   DDP_DEBUG=1 warns: {str(warning.message).split(';')[0]}")


def to_after_optimizer() -> None:
    say("6. model.to() after building the optimizer still trains (the move is in place)")
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.to(torch.float64)                      # same Parameter objects, new arrays inside
    held = optimizer.param_groups[0]["params"][0]
    say(f"   optimizer holds model.weight itself: {held is model.weight}; "
        f"dtype now {model.weight.dtype}")
    before = model.weight.detach().clone()
    model(torch.ones(1, 2, dtype=torch.float64)).sum().backward()
    optimizer.step()
    say(f"   weight.grad = {show(model.weight.grad)}; weight moved by "
        f"{show(model.weight.detach() - before)}")


def ddp_averages_in_between() -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    say(f"7. DistributedDataParallel on {world} rank(s): a hook averages .grad in between")
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ddp_model = DistributedDataParallel(model)   # broadcasts rank 0's weights, hooks every leaf
    optimizer = torch.optim.SGD(ddp_model.parameters(), lr=0.1)
    seen = {}

    def record_local(grad):
        """A tensor hook sees the gradient flowing into the leaf: this rank's own, not averaged."""
        seen["local"] = show(grad)

    model.weight.register_hook(record_local)
    x = torch.tensor([[float(rank + 1)]])       # each rank has different data: x = rank + 1
    loss = ddp_model(x).sum()                    # loss = w * x, so d loss / d w = x
    optimizer.zero_grad()
    loss.backward()                              # buckets all-reduced; end of backward writes
    averaged = show(model.weight.grad)           # the average into .grad
    optimizer.step()
    lines = [None] * world                       # rank 0 prints every rank's line, in order
    dist.all_gather_object(lines, f"   rank {rank}: x = {rank + 1}, grad seen by the hook = "
                           f"{seen['local']}, .grad after backward = {averaged}, "
                           f"weight after step = {show(model.weight)}")
    for line in lines:
        say(line)
    say(f"   the mean of 1..{world} is {(world + 1) / 2:g}: every rank steps with the same "
        f".grad, so the replicas stay identical")


def main() -> None:
    dist.init_process_group()                    # MPI under mpiexec, a world of one otherwise
    backward_fills_grad()
    two_variables()
    detach_cuts_the_graph()
    to_after_optimizer()
    ddp_averages_in_between()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
