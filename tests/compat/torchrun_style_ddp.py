"""A DDP training script as written for torchrun on GPUs, unchanged but for its first import.

It reads its rank from the environment before init, asks for CUDA and NCCL, and moves its model
where ``torch.cuda.is_available()`` says. On a CPU-only machine under ``mpiexec -n N`` it must run
on the CPU (one warning per fallback) and end with the same weights on every rank.
"""

import os
import sys

import ddp as torch
import ddp.distributed as dist
import ddp.nn as nn
from ddp.nn.parallel import DistributedDataParallel as DDP


def main() -> None:
    local_rank = int(os.environ["LOCAL_RANK"])
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl", rank=rank, world_size=world_size)
    device = (torch.device("cuda", local_rank) if torch.cuda.is_available()
              else torch.device("cpu"))
    torch.backends.cudnn.benchmark = True

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1)).to(device)
    ddp_model = DDP(model, device_ids=[local_rank] if device.type == "cuda" else None)
    optimizer = torch.optim.SGD(ddp_model.parameters(), lr=0.1)

    torch.manual_seed(1 + rank)  # every rank its own batches
    for _ in range(3):
        x = torch.randn(4, 8, device=device)
        y = x.sum(dim=1, keepdim=True)
        loss = nn.functional.mse_loss(ddp_model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    weights = [p.detach().cpu().numpy().round(6).tolist() for p in model.parameters()]
    gathered = [None] * world_size
    dist.all_gather_object(gathered, weights)
    same = all(g == gathered[0] for g in gathered)
    # one write: print() writes the text and its newline separately, and ranks run at once
    sys.stdout.write(f"rank {rank}/{world_size} local {local_rank} backend "
                     f"{dist.get_backend()} device {device.type} same-weights {same}\n")
    sys.stdout.flush()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
