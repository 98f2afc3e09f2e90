"""A small GPT that learns characters from Python's own documentation, data-parallel.

The text is ``pydoc_data.topics`` (about 460 kB of the Python reference that ships with every
CPython), so nothing is downloaded. Each rank draws its own random windows; DDP averages the
gradients; with ``--zero-stage 1`` or ``2`` a ZeroRedundancyOptimizer shards the AdamW state
(and with stage 2 the gradients) over the ranks; with ``--fsdp`` the model is fully sharded
instead (``fully_shard`` on every block, then on the root: parameters, gradients and AdamW
state are 1/N per rank). ``--amp bf16`` runs the forward under ``ddp.autocast`` in bfloat16,
``--amp fp16`` in float16 with a ``GradScaler`` (docs/mixed_precision.md). At the end rank 0
prints the memory ledger and a sample.

    python examples/charlm.py --steps 300
    .venv/bin/mpiexec -n 2 .venv/bin/python examples/charlm.py --zero-stage 2
    .venv/bin/mpiexec -n 3 .venv/bin/python examples/charlm.py --fsdp
    ddprun --threads -n 2 examples/charlm.py --steps 20
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

import ddp
import ddp.distributed as dist
import ddp.nn as nn
import ddp.nn.functional as F
from ddp.distributed.algorithms.ddp_comm_hooks import default_hooks
from ddp.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as powerSGD
from ddp.distributed.fsdp import fully_shard
from ddp.distributed.memory_ledger import GatheredPeak
from ddp.nn.parallel import DistributedDataParallel
from ddp.optim.lr_scheduler import LambdaLR


def load_text() -> str:
    """Python's reference documentation as one string, in a fixed order on every rank."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


class CausalSelfAttention(nn.Module):
    """Multi-head attention where position t only sees positions <= t."""

    def __init__(self, d_model: int, n_head: int, block_size: int):
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model {d_model} is not divisible by n_head {n_head}")
        self.n_head = n_head
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        mask = ddp.tril(ddp.ones(block_size, block_size)) == 0
        self.register_buffer("future", mask.reshape(1, 1, block_size, block_size),
                             persistent=False)

    def forward(self, x):
        b, t, c = x.shape
        h = self.n_head
        q, k, v = self.qkv(x).split(c, dim=2)
        q = q.reshape(b, t, h, c // h).transpose(1, 2)   # (b, h, t, c/h)
        k = k.reshape(b, t, h, c // h).transpose(1, 2)
        v = v.reshape(b, t, h, c // h).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(c // h))
        scores = scores.masked_fill(self.future[:, :, :t, :t], float("-inf"))
        y = F.softmax(scores, dim=-1) @ v                 # (b, h, t, c/h)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    """Pre-norm transformer block: attention then an MLP, each with a residual connection."""

    def __init__(self, d_model: int, n_head: int, block_size: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_head, block_size)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(approximate="tanh"),
                                 nn.Linear(4 * d_model, d_model))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Token and position embeddings, ``n_layer`` blocks, a final norm and the vocabulary head."""

    def __init__(self, vocab: int, block_size: int, d_model: int = 64, n_layer: int = 2,
                 n_head: int = 4):
        super().__init__()
        self.block_size = block_size
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(block_size, d_model)
        self.blocks = nn.Sequential(*[Block(d_model, n_head, block_size)
                                      for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, idx):
        t = idx.shape[1]
        if t > self.block_size:
            raise ValueError(f"sequence length {t} exceeds block_size {self.block_size}")
        x = self.tok(idx) + self.pos(ddp.arange(t))
        return self.head(self.ln_f(self.blocks(x)))


def batches(data: np.ndarray, block_size: int, batch_size: int, rng: np.random.Generator):
    """Endless random windows: inputs ``data[i:i+T]`` and next-character targets."""
    while True:
        starts = rng.integers(0, len(data) - block_size - 1, size=batch_size)
        x = np.stack([data[s:s + block_size] for s in starts])
        y = np.stack([data[s + 1:s + block_size + 1] for s in starts])
        yield ddp.from_numpy(x), ddp.from_numpy(y)


def lm_loss(model, x, y):
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def evaluate(model, data: np.ndarray, block_size: int, batch_size: int, seed: int) -> float:
    """Mean validation loss over a few fixed batches per rank, averaged over ranks (collective)."""
    rng = np.random.default_rng([seed, dist.get_rank(), 1])
    stream = batches(data, block_size, batch_size, rng)
    total = ddp.zeros(2, dtype=ddp.float64)
    with ddp.no_grad():
        for _ in range(4):
            x, y = next(stream)
            total += ddp.tensor([lm_loss(model, x, y).item(), 1.0], dtype=ddp.float64)
    dist.all_reduce(total)
    loss_sum, count = total.tolist()
    return loss_sum / count


def sample(model, stoi: dict, itos: list, prompt: str, length: int, seed: int,
           temperature: float = 0.8) -> str:
    """Draw ``length`` characters after ``prompt`` (local: no collective, call on any rank)."""
    rng = np.random.default_rng(seed)
    idx = [stoi[c] for c in prompt if c in stoi] or [0]
    with ddp.no_grad():
        for _ in range(length):
            context = ddp.tensor([idx[-model.block_size:]], dtype=ddp.int64)
            logits = model(context)[0, -1].numpy().astype(np.float64) / temperature
            probs = np.exp(logits - logits.max())
            idx.append(int(rng.choice(len(probs), p=probs / probs.sum())))
    return "".join(itos[i] for i in idx)


def make_optimizer(params, args):
    if args.zero_stage == 0:
        return ddp.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    from ddp.distributed.optim import ZeroRedundancyOptimizer

    return ZeroRedundancyOptimizer(params, optimizer_class=ddp.optim.AdamW,
                                   stage=args.zero_stage, lr=args.lr,
                                   weight_decay=args.weight_decay)



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
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32, help="global batch (windows)")
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--zero-stage", type=int, choices=(0, 1, 2), default=0,
                        help="0: plain AdamW; 1/2: ZeroRedundancyOptimizer stage 1/2")
    parser.add_argument("--fsdp", action="store_true",
                        help="fully shard the model (fully_shard per block, then the root)")
    parser.add_argument("--bucket-cap-mb", type=float, default=25.0,
                        help="DDP bucket size; small values show overlap in a timeline")
    parser.add_argument("--comm-hook", choices=["fp16", "bf16", "powersgd"], default=None,
                        help="compress the gradient all-reduce (DDP communication hook)")
    parser.add_argument("--powersgd-rank", type=int, default=1,
                        help="PowerSGD's matrix_approximation_rank")
    parser.add_argument("--powersgd-start", type=int, default=10,
                        help="PowerSGD's start_powerSGD_iter: plain averaging before it")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--sample-length", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--amp", choices=["fp16", "bf16"], default=None,
                        help="mixed precision: autocast to float16 (with GradScaler) or bfloat16")
    args = parser.parse_args(argv)
    if args.comm_hook and args.zero_stage:
        parser.error("--comm-hook needs --zero-stage 0: ZeRO reduce-scatters the gradients "
                     "itself, so DDP's communication hook would never run")
    if args.fsdp and args.zero_stage:
        parser.error("--fsdp shards the optimizer state itself: leave --zero-stage at 0")
    if args.fsdp and args.comm_hook:
        parser.error("--comm-hook is a DDP communication hook; --fsdp reduce-scatters the "
                     "gradients itself")

    dist.init_process_group()
    rank, world = dist.get_rank(), dist.get_world_size()
    ddp.manual_seed(args.seed)

    text = load_text()
    itos = sorted(set(text))
    stoi = {c: i for i, c in enumerate(itos)}
    data = np.array([stoi[c] for c in text], dtype=np.int64)
    split = int(0.9 * len(data))
    train_data, val_data = data[:split], data[split:]

    model = GPT(len(itos), args.block_size, args.d_model, args.n_layer, args.n_head)
    if args.fsdp:  # same seed, same weights on every rank: fully_shard needs no broadcast
        for block in model.blocks:
            fully_shard(block)
        ddp_model = fully_shard(model)
    else:
        ddp_model = DistributedDataParallel(model, bucket_cap_mb=args.bucket_cap_mb)
        register_comm_hook(ddp_model, args.comm_hook, args.powersgd_rank, args.powersgd_start)
    optimizer = make_optimizer(ddp_model.parameters(), args)
    peak = GatheredPeak(model) if args.fsdp else None
    warmup = max(1, args.steps // 20)
    scheduler = LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    per_rank = max(1, args.batch_size // world)
    amp = ddp.autocast("cpu", dtype=ddp.float16 if args.amp == "fp16" else ddp.bfloat16,
                       enabled=args.amp is not None)  # re-enterable: one object serves all steps
    scaler = ddp.amp.GradScaler("cpu", enabled=args.amp == "fp16")  # bfloat16 needs none
    stream = batches(train_data, args.block_size, per_rank,
                     np.random.default_rng([args.seed, rank]))  # each rank its own windows
    if rank == 0:
        n_params = sum(p.numel() for p in model.parameters())
        print(f"{n_params} parameters, vocabulary {len(itos)}, {len(data)} characters, "
              f"{world} rank(s) x {per_rank} windows of {args.block_size}, "
              f"{'fully sharded' if args.fsdp else f'zero stage {args.zero_stage}'}, "
              f"comm hook {args.comm_hook or 'none'}", flush=True)

    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        x, y = next(stream)
        with amp:
            loss = lm_loss(ddp_model, x, y)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if rank == 0 and (step % args.log_every == 0 or step == 1 or step == args.steps):
            print(f"step {step:5d}  loss {loss.item():.4f}  "
                  f"({(time.perf_counter() - started) / step * 1e3:.0f} ms/step)", flush=True)
    elapsed = time.perf_counter() - started

    # Collective, right after the last step: every kind of training memory is live.
    dist.memory_report(ddp_model, optimizer, gathered_peak=peak)
    if peak is not None:
        peak.remove()
    val_loss = evaluate(model, val_data, args.block_size, per_rank, args.seed)
    memory = optimizer.memory_bytes() if hasattr(optimizer, "memory_bytes") else None
    # A fully sharded forward all-gathers, so every rank samples (rank 0 prints).
    text = sample(model, stoi, itos, "def ", args.sample_length, args.seed) \
        if args.fsdp or rank == 0 else None
    if rank == 0:
        print(f"validation loss {val_loss:.4f} (uniform guess: {math.log(len(itos)):.4f}) "
              f"after {args.steps} steps in {elapsed:.1f} s")
        if memory is not None:
            print("optimizer memory on rank 0: " +
                  ", ".join(f"{k} {v / 1024:.0f} KiB" for k, v in memory.items()))
        print("sample:")
        print(text)
    dist.destroy_process_group()
    return val_loss


if __name__ == "__main__":
    main()
