"""DDP communication hooks that ship with ddp (torch's ``ddp_comm_hooks.default_hooks``).

Register with ``ddp_model.register_comm_hook(process_group_or_None, hook)``. Each takes the
``process_group`` to reduce over (None: the default group) and a ``GradBucket``, and returns a
``Future`` of the averaged bucket.
"""

from __future__ import annotations

from ddp import dtypes
from ddp.distributed import collectives
from ddp.distributed.api import resolve_group
from ddp.distributed.grad_sync.grad_bucket import GradBucket
from ddp.futures import Future


def _allreduce_fut(process_group, tensor) -> Future:
    """Average ``tensor`` over the group in place; a future of it."""
    group = resolve_group(process_group)
    tensor.div_(group.size())
    work = collectives.all_reduce(tensor, group=group, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def allreduce_hook(process_group, bucket: GradBucket) -> Future:
    """All-reduce the bucket and divide by the group size: what DDP does without a hook
    (divided before the sum, so at a world size that is not a power of two the result may
    differ from DDP's default in the last bit)."""
    return _allreduce_fut(process_group, bucket.buffer())


def _compress_hook(dtype, process_group, bucket: GradBucket) -> Future:
    """The bucket cast to ``dtype``, divided by the group size, all-reduced in ``dtype`` (half
    the bytes of float32 on the wire), and cast back into the bucket."""
    group = resolve_group(process_group)
    buffer = bucket.buffer()
    compressed = buffer.to(dtype).div_(group.size())
    work = collectives.all_reduce(compressed, group=group, async_op=True)

    def decompress(fut: Future):
        buffer.copy_(fut.value()[0])
        return buffer

    return work.get_future().then(decompress)


def fp16_compress_hook(process_group, bucket: GradBucket) -> Future:
    """Halve the bytes on the wire in float16 (11-bit significand: ~3 significant digits, but
    gradients beyond 65504 overflow and below 6e-8 flush to zero)."""
    return _compress_hook(dtypes.float16, process_group, bucket)


def bf16_compress_hook(process_group, bucket: GradBucket) -> Future:
    """Halve the bytes on the wire in bfloat16 (float32's range, 8-bit significand: ~2-3
    significant digits, no overflow where float32 has none). Each pairwise sum of the
    reduction is computed in float32 and rounded to bfloat16, as NCCL does."""
    return _compress_hook(dtypes.bfloat16, process_group, bucket)
