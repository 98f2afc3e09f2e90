"""The main job: a digit classifier trained data-parallel on scikit-learn's bundled digits.

Run it on four MPI ranks, on one process, or on simulated ranks:

    mpiexec -n 4 python examples/train.py          # (bash dev.sh train does exactly this)
    python examples/train.py                       # a world of one, no MPI needed
    ddprun --threads -n 2 examples/train.py        # two ranks as threads, for debugging

Each rank trains on its shard (DistributedSampler); DistributedDataParallel averages gradients
across ranks during backward, so ``optimizer.step()`` is the plain single-machine call. Test
accuracy is summed over ranks each epoch; rank 0 writes a checkpoint each epoch and a plot of
the curves at the end. ``--resume`` continues from the last checkpoint. ``--amp bf16`` runs the
forward under ``ddp.autocast`` in bfloat16; ``--amp fp16`` in float16 with a ``GradScaler``
(docs/mixed_precision.md).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

import ddp
import ddp.distributed as dist
import ddp.nn as nn
import ddp.nn.functional as F
from ddp.distributed.algorithms.ddp_comm_hooks import default_hooks
from ddp.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as powerSGD
from ddp.nn.parallel import DistributedDataParallel
from ddp.optim.lr_scheduler import CosineAnnealingLR
from ddp.utils.data import DataLoader, Subset, TensorDataset
from ddp.utils.data.distributed import DistributedSampler


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 8x8 digits (pixels 0..16) and labels that ship inside scikit-learn.

    Read straight from sklearn's bundled ``digits.csv.gz`` (what ``load_digits`` parses):
    importing ``sklearn.datasets`` costs about 3 s per rank, which on a small machine running
    four ranks is a large part of the run.
    """
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            path = os.path.join(root, "datasets", "data", "digits.csv.gz")
            if os.path.exists(path):
                table = np.loadtxt(path, delimiter=",", dtype=np.float64)
                return table[:, :-1], table[:, -1]
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.data, digits.target


def load_digits_split(test_fraction: float = 0.2, seed: int = 0):
    """Train and test arrays, split the same way on every rank (pixels scaled to [0, 1])."""
    pixels, labels = load_digits_arrays()
    x = (pixels / 16.0).astype(np.float32)
    y = labels.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return (x[train], y[train]), (x[test], y[test])


class Classifier(nn.Module):
    """A small MLP: 64 pixels -> 256 -> 128 -> 10 classes."""

    def __init__(self, hidden: int = 256, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, hidden), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden // 2), nn.GELU(),
            nn.Linear(hidden // 2, 10),
        )

    def forward(self, x):
        return self.net(x)


def evaluate(model, loader, device="cpu", amp_dtype=None) -> tuple[float, float]:
    """Loss and accuracy over the whole test set, summed across ranks (call on all ranks);
    under autocast to ``amp_dtype`` when given, as in training."""
    model.eval()
    totals = ddp.zeros(3, dtype=ddp.float64)  # loss sum, correct, count
    with ddp.no_grad(), ddp.autocast(device, dtype=amp_dtype, enabled=amp_dtype is not None):
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            totals += ddp.tensor([
                F.cross_entropy(logits, y, reduction="sum").item(),
                (logits.argmax(dim=1) == y).sum().item(),
                len(y),
            ], dtype=ddp.float64)
    dist.all_reduce(totals)
    model.train()
    loss_sum, correct, count = totals.tolist()
    return loss_sum / count, correct / count


def save_checkpoint(path: str, model, optimizer, scheduler, epoch: int, history: dict) -> None:
    ddp.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
              "scheduler": scheduler.state_dict(), "epoch": epoch,
              "history": json.dumps(history)}, path)


def plot_curves(history: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = range(1, len(history["train_loss"]) + 1)
    ax_loss.plot(epochs, history["train_loss"], label="train")
    ax_loss.plot(epochs, history["test_loss"], label="test")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.legend()
    ax_acc.plot(epochs, [100 * a for a in history["test_acc"]], color="tab:green")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("test accuracy (%)")
    ax_acc.set_ylim(80, 100)
    fig.suptitle(f"digits, {history['world_size']} rank(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)



def register_comm_hook(model: DistributedDataParallel, name: str | None, powersgd_rank: int,
                       powersgd_start: int):
    """Compress DDP's gradient all-reduce: ``fp16`` or ``bf16`` (half the bytes) or
    ``powersgd`` (rank-r factors of every matrix); None keeps plain averaging. Returns the
    hook's state."""
    if name is None:
        return None
    if name in ("fp16", "bf16"):
        model.register_comm_hook(None, default_hooks.fp16_compress_hook if name == "fp16"
                                 else default_hooks.bf16_compress_hook)
        return None
    state = powerSGD.PowerSGDState(None, matrix_approximation_rank=powersgd_rank,
                                   start_powerSGD_iter=powersgd_start)
    model.register_comm_hook(state, powerSGD.powerSGD_hook)
    return state


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64, help="global batch size")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/train", help="checkpoint and plot directory")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    parser.add_argument("--max-steps", type=int, default=0, help="stop early (for smoke tests)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--comm-hook", choices=["fp16", "bf16", "powersgd"], default=None,
                        help="compress the gradient all-reduce (DDP communication hook)")
    parser.add_argument("--powersgd-rank", type=int, default=1,
                        help="PowerSGD's matrix_approximation_rank")
    parser.add_argument("--powersgd-start", type=int, default=10,
                        help="PowerSGD's start_powerSGD_iter: plain averaging before it")
    parser.add_argument("--memory-report", action="store_true",
                        help="print the full per-rank memory table at the end (default: one line)")
    parser.add_argument("--amp", choices=["fp16", "bf16"], default=None,
                        help="mixed precision: autocast to float16 (with GradScaler) or bfloat16")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="cuda: each rank uses GPU local_rank %% device_count (needs CuPy)")
    args = parser.parse_args(argv)

    dist.init_process_group()
    rank, world = dist.get_rank(), dist.get_world_size()
    ddp.manual_seed(args.seed)

    (x_train, y_train), (x_test, y_test) = load_digits_split(seed=args.seed)
    train_set = TensorDataset(ddp.from_numpy(x_train), ddp.from_numpy(y_train))
    test_set = TensorDataset(ddp.from_numpy(x_test), ddp.from_numpy(y_test))
    sampler = DistributedSampler(train_set, shuffle=True, seed=args.seed)
    per_rank_batch = max(1, args.batch_size // world)
    train_loader = DataLoader(train_set, batch_size=per_rank_batch, sampler=sampler)
    # Each rank scores every world-th test sample. Unlike DistributedSampler, no sample is
    # repeated to even out the shards, so the summed counts are exactly the test set.
    test_shard = Subset(test_set, list(range(rank, len(test_set), world)))
    test_loader = DataLoader(test_shard, batch_size=256)

    device = args.device
    if device == "cuda":  # one GPU per rank on a node, as torch's DDP recipe does
        ddp.cuda.set_device(dist.get_local_rank() % ddp.cuda.device_count())
    model = DistributedDataParallel(Classifier().to(device))
    register_comm_hook(model, args.comm_hook, args.powersgd_rank, args.powersgd_start)
    optimizer = ddp.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = CosineAnnealingLR(optimizer, T_max=args.epochs * len(train_loader))
    amp_dtype = ddp.float16 if args.amp == "fp16" else ddp.bfloat16
    scaler = ddp.amp.GradScaler(device, enabled=args.amp == "fp16")  # bfloat16 needs none

    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.out, "checkpoint.ddp")
    history = {"train_loss": [], "test_loss": [], "test_acc": [], "world_size": world}
    start_epoch = 0
    if args.resume and os.path.exists(ckpt_path):
        state = ddp.load(ckpt_path)
        model.module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = json.loads(state["history"])
        start_epoch = int(state["epoch"]) + 1
        if rank == 0:
            print(f"resumed from {ckpt_path} at epoch {start_epoch}")

    progress = None
    if rank == 0 and not args.no_progress:
        from tqdm import tqdm

        progress = tqdm(total=(args.epochs - start_epoch) * len(train_loader), unit="step",
                        dynamic_ncols=True)
    started = time.perf_counter()
    steps = 0
    accuracy = history["test_acc"][-1] if history["test_acc"] else 0.0
    first_97 = None  # (epoch, seconds) when this run first reached 97% test accuracy
    for epoch in range(start_epoch, args.epochs):
        sampler.set_epoch(epoch)
        running, batches = 0.0, 0
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            with ddp.autocast(device, dtype=amp_dtype, enabled=args.amp is not None):
                loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            scaler.scale(loss).backward()  # fills .grad; DDP averages it across ranks meanwhile
            scaler.step(optimizer)  # reads the averaged .grad, exactly as on one machine
            scaler.update()
            scheduler.step()
            running += loss.item()
            batches += 1
            steps += 1
            if progress is not None:
                progress.update(1)
                progress.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
            if args.max_steps and steps >= args.max_steps:
                break
        test_loss, accuracy = evaluate(model, test_loader, device,
                                       amp_dtype if args.amp else None)
        train_loss = ddp.tensor([running / max(batches, 1)], dtype=ddp.float64)
        dist.all_reduce(train_loss, op=dist.ReduceOp.AVG)
        history["train_loss"].append(train_loss.item())
        history["test_loss"].append(test_loss)
        history["test_acc"].append(accuracy)
        if accuracy >= 0.97 and first_97 is None:
            first_97 = (epoch + 1, time.perf_counter() - started)
        if rank == 0:
            save_checkpoint(ckpt_path, model.module, optimizer, scheduler, epoch, history)
            message = (f"epoch {epoch + 1:3d}  train loss {train_loss.item():.4f}  "
                       f"test loss {test_loss:.4f}  test acc {100 * accuracy:.2f}%")
            (progress.write if progress is not None else print)(message)
        if args.max_steps and steps >= args.max_steps:
            break
    if progress is not None:
        progress.close()
    # Collective; after the last step every kind of training memory is still live.
    memory = dist.memory_report(model, optimizer, print_report=args.memory_report)
    if rank == 0:
        if not args.memory_report:
            print(memory.summary())
        plot_path = os.path.join(args.out, "curves.png")
        plot_curves(history, plot_path)
        hook = args.comm_hook or "none"
        if args.comm_hook == "powersgd":
            hook += f" rank {args.powersgd_rank} from step {args.powersgd_start}"
        print(f"comm hook: {hook}")
        print(f"final test accuracy {100 * accuracy:.2f}% on {world} rank(s) in "
              f"{time.perf_counter() - started:.1f} s")
        if first_97 is not None:
            print(f"reached 97% test accuracy after epoch {first_97[0]} ({first_97[1]:.1f} s)")
        print(f"plot: {plot_path}")
        print(f"checkpoint: {ckpt_path}")
    dist.destroy_process_group()
    return accuracy


if __name__ == "__main__":
    main()
