"""PowerSGD gradient compression (torch's ``ddp_comm_hooks.powerSGD_hook``).

Vogels et al., "PowerSGD: Practical Low-Rank Gradient Compression for Distributed Optimization"
(NeurIPS 2019). Each gradient matrix M (n x m) of a bucket is replaced by a rank-r approximation
P Q^T found by one step of power iteration shared by all ranks: P = M Q, all-reduce P,
orthogonalize P, Q = M^T P, all-reduce Q, M ~ P Q^T / world. Only P and Q travel, (n + m) r
numbers instead of n m. Vectors, and matrices too small to save bandwidth, are all-reduced
uncompressed. What the approximation drops is kept per bucket (error feedback) and added to
the next iteration's gradients, so nothing is lost over time.

Usage, as torch::

    from ddp.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as powerSGD
    state = powerSGD.PowerSGDState(process_group=None, matrix_approximation_rank=1,
                                   start_powerSGD_iter=10)
    ddp_model.register_comm_hook(state, powerSGD.powerSGD_hook)
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from ddp.backend import get_array_module
from ddp.distributed import collectives
from ddp.distributed.algorithms.ddp_comm_hooks.default_hooks import _allreduce_fut
from ddp.distributed.api import resolve_group
from ddp.distributed.grad_sync.grad_bucket import GradBucket
from ddp.futures import Future
from ddp.tensor import Tensor

logger = logging.getLogger(__name__)

__all__ = ["PowerSGDState", "batched_powerSGD_hook", "powerSGD_hook"]


def _orthogonalize(matrices, epsilon: float = 0) -> None:
    """Orthonormalize the columns of each matrix of a (batch, rows, rank) array in place.

    Gram-Schmidt up to rank 2 (or in half precision), QR above, as torch chooses.
    """
    if not (matrices.ndim == 3 and matrices.shape[2] <= matrices.shape[1]):
        raise ValueError(f"PowerSGD: expected a batch of tall matrices, got shape "
                         f"{tuple(matrices.shape)}")
    xp = get_array_module(matrices)
    rank = matrices.shape[2]
    if rank <= 2 or matrices.dtype == np.float16:
        _orthogonalize_gram_schmidt(matrices, epsilon)
    else:
        matrices[...] = xp.linalg.qr(matrices)[0]


def _orthogonalize_gram_schmidt(matrices, epsilon: float = 0) -> None:
    """Gram-Schmidt on the columns of each matrix of a (batch, rows, rank) array, in place.

    With ``epsilon`` 0 an all-zero column becomes NaN (as torch); a small epsilon avoids it.
    """
    xp = get_array_module(matrices)
    num_cols = matrices.shape[2]
    for i in range(num_cols):
        col = matrices[:, :, i:i + 1]
        norm = xp.sqrt(xp.sum(col * col, axis=1, keepdims=True))
        with np.errstate(divide="ignore", invalid="ignore"):  # torch gives NaN silently too
            col /= norm + epsilon if epsilon != 0 else norm
        if i + 1 < num_cols:
            rest = matrices[:, :, i + 1:]
            rest -= xp.sum(col * rest, axis=1, keepdims=True) * col


def _should_compress(num_rows: int, num_cols: int, matrix_approximation_rank: int,
                     min_compression_rate: float) -> tuple[bool, int, int]:
    """(worth compressing, elements before, elements after) for one n x m matrix: worth it when
    ``(n + m) * rank * min_compression_rate < n * m``."""
    uncompressed_size = num_rows * num_cols
    compressed_size = (num_rows + num_cols) * matrix_approximation_rank
    return (compressed_size * min_compression_rate < uncompressed_size,
            uncompressed_size, compressed_size)


def _report_compression_stats(bucket: GradBucket, state: PowerSGDState) -> None:
    if bucket.is_last() and state.iter >= state.next_stats_report:
        stats = state.compression_stats()
        logger.info("Compression stats: iter %s, total before compression %s, total after "
                    "compression %s, rate %s", state.iter, stats[1], stats[2], stats[0])
        state.next_stats_report = state.iter + state.compression_stats_logging_frequency


class PowerSGDState:
    """PowerSGD's hyperparameters and its state across iterations (torch's ``PowerSGDState``).

    Args:
        process_group: the group to reduce over (None: the default group).
        matrix_approximation_rank: r, the rank of the approximation (clipped to min(n, m)).
        start_powerSGD_iter: plain averaging all-reduce for this many iterations first.
        min_compression_rate: a matrix is compressed only when
            ``(n + m) * r * min_compression_rate < n * m``.
        use_error_feedback: carry what the approximation drops into the next iteration.
        warm_start: start each iteration's power step from the last iteration's Q.
        orthogonalization_epsilon: added to column norms (avoids 0/0 for all-zero columns).
        random_seed: seeds the initial Qs, identically on every rank.
        compression_stats_logging_frequency: log the compression rate every this many
            iterations (logger ``ddp.distributed.algorithms.ddp_comm_hooks.powerSGD_hook``).
        batch_tensors_with_same_shape: compress same-shaped matrices of a bucket in one
            batched product.

    Raises:
        ValueError: ``start_powerSGD_iter`` <= 1 with error feedback or warm start.
    """

    __slots__ = [
        "process_group", "matrix_approximation_rank", "start_powerSGD_iter",
        "min_compression_rate", "orthogonalization_epsilon", "use_error_feedback",
        "warm_start", "batch_tensors_with_same_shape", "rng", "error_dict", "p_memory_dict",
        "q_memory_dict", "iter", "total_numel_before_compression",
        "total_numel_after_compression", "compression_stats_logging_frequency",
        "next_stats_report",
    ]

    def __init__(self, process_group, matrix_approximation_rank: int = 1,
                 start_powerSGD_iter: int = 1_000, min_compression_rate: float = 2,
                 use_error_feedback: bool = True, warm_start: bool = True,
                 orthogonalization_epsilon: float = 0, random_seed: int = 0,
                 compression_stats_logging_frequency: int = 10_000,
                 batch_tensors_with_same_shape: bool = False):
        logger.info("PowerSGD config: matrix_approximation_rank = %s; start_powerSGD_iter = %s; "
                    "min_compression_rate = %s; orthogonalization_epsilon = %s; "
                    "use_error_feedback = %s; warm_start = %s; random_seed = %s; "
                    "compression_stats_logging_frequency = %s; "
                    "batch_tensors_with_same_shape = %s", matrix_approximation_rank,
                    start_powerSGD_iter, min_compression_rate, orthogonalization_epsilon,
                    use_error_feedback, warm_start, random_seed,
                    compression_stats_logging_frequency, batch_tensors_with_same_shape)
        self.process_group = process_group
        self.matrix_approximation_rank = matrix_approximation_rank
        # DDP may rebuild its buckets after the first iteration, so memory kept per bucket
        # (error, warm-start Q) must not be created before the second (torch's rule).
        if (use_error_feedback or warm_start) and start_powerSGD_iter <= 1:
            raise ValueError(
                "Expect `start_powerSGD_iter` > 1 if `use_error_feedback` or `warm_start` is "
                "enabled, because PowerSGD can only be applied after the first two iterations "
                "in DDP.")
        self.start_powerSGD_iter = start_powerSGD_iter
        self.min_compression_rate = min_compression_rate
        self.use_error_feedback = use_error_feedback
        self.warm_start = warm_start
        self.orthogonalization_epsilon = orthogonalization_epsilon
        # The same seed on every rank: every rank draws the same initial Qs.
        self.rng = np.random.RandomState(random_seed)
        self.error_dict: dict[int, Tensor] = {}
        self.p_memory_dict: dict[int, Tensor] = {}
        self.q_memory_dict: dict[int, Tensor] = {}
        self.iter = 0
        self.total_numel_before_compression = 0
        self.total_numel_after_compression = 0
        self.compression_stats_logging_frequency = max(1, compression_stats_logging_frequency)
        self.next_stats_report = 0
        self.batch_tensors_with_same_shape = batch_tensors_with_same_shape

    def __getstate__(self) -> dict[str, Any]:
        """The state to pickle: every slot but ``process_group`` (not serializable)."""
        logger.warning("NOTE: Process group is not serializable and excluded from a saved state.")
        return {slot: getattr(self, slot) for slot in self.__slots__
                if slot != "process_group"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore a pickled state; ``process_group`` becomes the default group (None)."""
        self.process_group = None
        logger.warning("NOTE: Process group will be set to a default group (i.e. the world "
                       "size). If a different group is desired, please set "
                       "`self.process_group` after PowerSGD state is loaded.")
        for slot, value in state.items():
            setattr(self, slot, value)

    def maybe_increase_iter(self, bucket: GradBucket) -> None:
        """Count an iteration when the last bucket of one is reduced."""
        if bucket.is_last():
            self.iter += 1
        if self.iter == self.start_powerSGD_iter:
            logger.info("Start to apply PowerSGD after %s iterations.", self.iter)

    def compression_stats(self) -> tuple[float, int, int]:
        """(compression rate, elements before compression, elements after) so far."""
        rate = (self.total_numel_before_compression / self.total_numel_after_compression
                if self.total_numel_after_compression > 0 else 0)
        return rate, self.total_numel_before_compression, self.total_numel_after_compression


def _all_reduce_array(array, group) -> Future:
    """Start a sum all-reduce of ``array`` in place; a future of the array."""
    work = collectives.all_reduce(Tensor(array), group=group, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0].array)


def powerSGD_hook(state: PowerSGDState, bucket: GradBucket) -> Future:
    """PowerSGD: average the bucket with rank-``matrix_approximation_rank`` compression.

    For ``start_powerSGD_iter`` iterations a plain averaging all-reduce. Then, per bucket:
    add the last error (error feedback); all-reduce vectors and matrices not worth
    compressing as they are; for each other gradient as an n x m matrix M (its first dimension
    by the rest): P = M Q (Q from a generator seeded alike on every rank, or last iteration's
    when warm-starting), all-reduce P, orthogonalize its columns, Q = M^T P, all-reduce Q,
    M <- P Q^T / world; the new error is the input minus what was sent.

    Args:
        state: a ``PowerSGDState`` (hyperparameters, error and warm-start memory).
        bucket: the bucket of gradients.

    Returns:
        A future of the bucket's averaged (approximated) flat buffer.
    """
    group = resolve_group(state.process_group)
    world_size = group.size()
    input_tensor = bucket.buffer()

    if state.iter < state.start_powerSGD_iter:
        state.maybe_increase_iter(bucket)
        return _allreduce_fut(group, input_tensor)

    buffer = input_tensor.array
    xp = get_array_module(buffer)
    dtype = buffer.dtype
    bucket_index = bucket.index()
    total_length = buffer.shape[0]

    input_copy = None
    if state.use_error_feedback:
        if bucket_index in state.error_dict:
            buffer += state.error_dict[bucket_index].array
        else:
            logger.info("A zero tensor of length %s that represents local error is created.",
                        total_length)
            state.error_dict[bucket_index] = Tensor(xp.zeros(total_length, dtype=dtype))
        input_copy = buffer.copy()

    # Split the bucket: matrices worth compressing, and the rest.
    to_compress, uncompressed = [], []
    total_ps, total_qs = 0, 0
    for grad in bucket.gradients():
        slot = grad.array
        n = slot.shape[0] if slot.ndim > 0 else 1
        matrix = slot.reshape(n, -1)  # a view: the slot is contiguous in the bucket
        m = matrix.shape[1]
        rank = min(n, m, state.matrix_approximation_rank)
        worth, before, after = _should_compress(n, m, rank, state.min_compression_rate)
        state.total_numel_before_compression += before
        if worth:
            to_compress.append(matrix)
            total_ps += n * rank
            total_qs += m * rank
            state.total_numel_after_compression += after
        else:
            uncompressed.append(slot)
            state.total_numel_after_compression += before
    _report_compression_stats(bucket, state)

    uncompressed_memory = (xp.concatenate([s.reshape(-1) for s in uncompressed])
                           if uncompressed else xp.zeros(0, dtype=dtype))

    need_random_qs = not state.warm_start or bucket_index not in state.p_memory_dict
    if need_random_qs:
        if state.warm_start:
            logger.info("Allocating contiguous memory of length %s for Ps, and of length %s for "
                        "Qs, respectively.", total_ps, total_qs)
        state.p_memory_dict[bucket_index] = Tensor(xp.empty(total_ps, dtype=dtype))
        state.q_memory_dict[bucket_index] = Tensor(xp.empty(total_qs, dtype=dtype))
    p_memory = state.p_memory_dict[bucket_index].array
    q_memory = state.q_memory_dict[bucket_index].array

    # Batches of matrices (b, n, m): one each, or the same-shaped ones stacked.
    by_shape: dict[tuple[int, ...], list] = {}
    for matrix in to_compress:
        by_shape.setdefault(matrix.shape, []).append(matrix)
    batches = []  # (batch array, the matrices it stacks, or None when it is a view)
    for matrices in by_shape.values():
        if state.batch_tensors_with_same_shape and len(matrices) > 1:
            batches.append((xp.stack(matrices), matrices))
        else:
            batches.extend((matrix[None], None) for matrix in matrices)

    ps, qs = [], []
    p_idx = q_idx = 0
    for batch, _ in batches:
        b, n, m = batch.shape
        rank = min(n, m, state.matrix_approximation_rank)
        ps.append(p_memory[p_idx:p_idx + b * n * rank].reshape(b, n, rank))
        qs.append(q_memory[q_idx:q_idx + b * m * rank].reshape(b, m, rank))
        p_idx += b * n * rank
        q_idx += b * m * rank

    if need_random_qs:
        # Every rank draws the same Qs: the shared seed advances alike everywhere.
        generator = np.random.default_rng(state.rng.randint(1_000_000_000))
        for q in qs:
            q[...] = xp.asarray(generator.standard_normal(q.shape).astype(dtype))
            _orthogonalize(q, state.orthogonalization_epsilon)
    else:
        for q in qs:
            _orthogonalize(q, state.orthogonalization_epsilon)

    for (batch, _), q, p in zip(batches, qs, ps, strict=True):
        xp.matmul(batch, q, out=p)

    uncompressed_future = _all_reduce_array(uncompressed_memory, group)

    def unpack_uncompressed_and_allreduce_ps(fut: Future):
        reduced = fut.value()
        reduced /= world_size
        idx = 0
        for slot in uncompressed:
            slot[...] = reduced[idx:idx + slot.size].reshape(slot.shape)
            idx += slot.size
        return _all_reduce_array(p_memory, group).wait()

    def compute_qs(fut: Future):
        fut.value()
        for p in ps:
            _orthogonalize(p, state.orthogonalization_epsilon)
        for (batch, _), p, q in zip(batches, ps, qs, strict=True):
            xp.matmul(batch.transpose(0, 2, 1), p, out=q)
        return _all_reduce_array(q_memory, group).wait()

    def decompress(fut: Future) -> Tensor:
        q_sum = fut.value()
        q_sum /= world_size
        for (batch, originals), p, q in zip(batches, ps, qs, strict=True):
            if originals is None:
                batch[...] = xp.matmul(p, q.transpose(0, 2, 1))
            else:
                approx = xp.matmul(p, q.transpose(0, 2, 1))
                for i, original in enumerate(originals):
                    original[...] = approx[i]
        if state.use_error_feedback:
            state.error_dict[bucket_index] = Tensor(input_copy - buffer)
        if not state.warm_start:
            state.p_memory_dict.clear()
            state.q_memory_dict.clear()
        state.maybe_increase_iter(bucket)
        return input_tensor

    return (uncompressed_future.then(unpack_uncompressed_and_allreduce_ps)
            .then(compute_qs).then(decompress))


def batched_powerSGD_hook(state: PowerSGDState, bucket: GradBucket) -> Future:
    """PowerSGD on the whole bucket at once (torch's ``batched_powerSGD_hook``).

    The flat bucket, zero-padded to s * s elements (s = ceil(sqrt(length))), is compressed as one
    s x s matrix: fewer, larger products than ``powerSGD_hook``, usually a worse
    approximation (the matrix mixes parameters). ``min_compression_rate`` and
    ``batch_tensors_with_same_shape`` do not apply; the error kept is s * s long.

    Args:
        state: a ``PowerSGDState``; ``matrix_approximation_rank`` must be at most s.
        bucket: the bucket of gradients.

    Returns:
        A future of the bucket's averaged (approximated) flat buffer.
    """
    group = resolve_group(state.process_group)
    world_size = group.size()
    input_tensor = bucket.buffer()

    if state.iter < state.start_powerSGD_iter:
        state.maybe_increase_iter(bucket)
        return _allreduce_fut(group, input_tensor)

    buffer = input_tensor.array
    xp = get_array_module(buffer)
    dtype = buffer.dtype
    total_length = buffer.shape[0]
    side = math.ceil(math.sqrt(total_length))
    rank = state.matrix_approximation_rank
    state.total_numel_before_compression += total_length
    state.total_numel_after_compression += side * rank * 2
    _report_compression_stats(bucket, state)
    # The bucket cannot grow: the square matrix is a padded copy, written back at the end.
    padded = xp.zeros(side * side, dtype=dtype)
    padded[:total_length] = buffer

    bucket_index = bucket.index()
    input_copy = None
    if state.use_error_feedback:
        if bucket_index in state.error_dict:
            padded += state.error_dict[bucket_index].array
        else:
            logger.info("A zero tensor of length %s that represents local error is created.",
                        side * side)
            state.error_dict[bucket_index] = Tensor(xp.zeros(side * side, dtype=dtype))
        input_copy = padded.copy()
    matrix = padded.reshape(side, side)

    if not state.warm_start or bucket_index not in state.p_memory_dict:
        if state.warm_start:
            logger.info("Initializing low-rank tensors P and Q, each of which has a shape of "
                        "%s x %s.", side, rank)
        generator = np.random.default_rng(state.rng.randint(1_000_000_000))
        state.p_memory_dict[bucket_index] = Tensor(xp.empty((side, rank), dtype=dtype))
        state.q_memory_dict[bucket_index] = Tensor(
            xp.asarray(generator.standard_normal((side, rank)).astype(dtype)))
    p = state.p_memory_dict[bucket_index].array
    q = state.q_memory_dict[bucket_index].array
    _orthogonalize(q[None], state.orthogonalization_epsilon)
    xp.matmul(matrix, q, out=p)
    p_future = _all_reduce_array(p, group)

    def compute_q(fut: Future):
        fut.value()
        _orthogonalize(p[None], state.orthogonalization_epsilon)
        xp.matmul(matrix.T, p, out=q)
        return _all_reduce_array(q, group).wait()

    def decompress(fut: Future) -> Tensor:
        q_sum = fut.value()
        q_sum /= world_size
        xp.matmul(p, q.T, out=matrix)
        if state.use_error_feedback:
            state.error_dict[bucket_index] = Tensor(input_copy - padded)
        if not state.warm_start:
            state.p_memory_dict.clear()
            state.q_memory_dict.clear()
        buffer[...] = padded[:total_length]
        state.maybe_increase_iter(bucket)
        return input_tensor

    return p_future.then(compute_q).then(decompress)
