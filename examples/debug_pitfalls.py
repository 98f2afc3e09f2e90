"""Three training loops that run without an error and train wrongly; ``DDP_DEBUG=1`` names them.

    DDP_DEBUG=1 .venv/bin/python examples/debug_pitfalls.py
"""

from __future__ import annotations

import ddp as torch
import ddp.nn as nn
import ddp.nn.functional as F


class Net(nn.Module):
    def __init__(self, detach_hidden: bool = False):
        super().__init__()
        self.encoder = nn.Linear(4, 8)
        self.head = nn.Linear(8, 1)
        self.detach_hidden = detach_hidden

    def forward(self, x):
        hidden = torch.tanh(self.encoder(x))
        if self.detach_hidden:
            hidden = hidden.clone().detach()  # bug 1: the encoder never gets a gradient
        return self.head(hidden)


def train(model, optimizer, steps: int = 3, zero_grad: bool = True) -> None:
    torch.manual_seed(0)
    for _ in range(steps):
        x, y = torch.randn(16, 4), torch.randn(16, 1)
        if zero_grad:
            optimizer.zero_grad()
        F.mse_loss(model(x), y).backward()
        optimizer.step()


def main() -> None:
    if not torch.debug.is_enabled():
        print("run with DDP_DEBUG=1 to see the warnings (or call ddp.debug.enable())")

    print("1. a detached hidden layer")
    model = Net(detach_hidden=True)
    train(model, torch.optim.SGD(model.parameters(), lr=0.1))

    print("2. no zero_grad(): gradients pile up across steps")
    model = Net()
    train(model, torch.optim.SGD(model.parameters(), lr=0.1), zero_grad=False)

    print("3. an optimizer built from another model instance")
    model = Net()
    train(model, torch.optim.SGD(Net().parameters(), lr=0.1))

    print("4. the correct loop (silent), after model.to(float64) (moves in place)")
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.to(torch.float64)
    model.to(torch.float32)
    train(model, optimizer)


if __name__ == "__main__":
    main()
