"""Variable-length batches for recurrent layers: ``PackedSequence`` and torch's helpers
``pack_padded_sequence``, ``pad_packed_sequence``, ``pad_sequence``, ``unpad_sequence``,
``pack_sequence``, ``unpack_sequence``.

A packed sequence stores the time steps of a batch sorted by decreasing length one after the
other: step ``t`` holds the ``batch_sizes[t]`` sequences still running. Packing and padding are
each one ``index_select`` over the rows of the input (a padding row appended for padding), so
gradients flow through both with that op's backward.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

from ddp import creation, dtypes, ops
from ddp.backend import get_array_module
from ddp.tensor import Tensor

__all__ = ["PackedSequence", "invert_permutation", "pack_padded_sequence", "pack_sequence",
           "pad_packed_sequence", "pad_sequence", "unpack_sequence", "unpad_sequence"]


class _PackedSequenceFields(NamedTuple):
    data: Tensor
    batch_sizes: Tensor
    sorted_indices: Tensor | None
    unsorted_indices: Tensor | None


class PackedSequence(_PackedSequenceFields):
    """``(data, batch_sizes, sorted_indices, unsorted_indices)`` as torch's.

    ``data`` is ``(sum(batch_sizes), *)``; ``batch_sizes`` an int64 CPU tensor with the number
    of sequences at each time step; ``sorted_indices[k]`` the original batch index of the
    ``k``-th longest sequence and ``unsorted_indices`` its inverse (both None when the batch
    was packed already sorted). Built by :func:`pack_padded_sequence` / :func:`pack_sequence`,
    not by hand.
    """

    def __new__(cls, data, batch_sizes=None, sorted_indices=None, unsorted_indices=None):
        if unsorted_indices is None:
            unsorted_indices = invert_permutation(sorted_indices)
        if batch_sizes is None:  # PackedSequence((data, batch_sizes), ...)
            if not (isinstance(data, (list, tuple)) and len(data) == 2):
                raise AssertionError("Expected data to be a list or tuple of length 2")
            data, batch_sizes = data
        elif batch_sizes.device.type != "cpu":
            raise ValueError(
                "batch_sizes should always be on CPU. Instances of PackedSequence should never "
                "be created manually. They should be instantiated by functions like "
                "pack_sequence and pack_padded_sequences in nn.utils.rnn. "
                "https://pytorch.org/docs/stable/nn.html#torch.nn.utils.rnn.pack_sequence")
        return super().__new__(cls, data, batch_sizes, sorted_indices, unsorted_indices)

    def to(self, *args, **kwargs) -> PackedSequence:
        """``data`` converted with ``Tensor.to``; the indices follow its device only."""
        data = self.data.to(*args, **kwargs)
        if data is self.data:
            return self
        device = data.device
        sorted_indices = (None if self.sorted_indices is None
                          else self.sorted_indices.to(device))
        unsorted_indices = (None if self.unsorted_indices is None
                            else self.unsorted_indices.to(device))
        return type(self)(data, self.batch_sizes, sorted_indices, unsorted_indices)

    def cuda(self, *args, **kwargs) -> PackedSequence:
        return self.to("cuda", *args, **kwargs)

    def cpu(self, *args, **kwargs) -> PackedSequence:
        return self.to("cpu", *args, **kwargs)

    def double(self) -> PackedSequence:
        return self.to(dtype=dtypes.float64)

    def float(self) -> PackedSequence:  # noqa: A003 - torch's name
        return self.to(dtype=dtypes.float32)

    @property
    def is_cuda(self) -> bool:
        return self.data.is_cuda


def invert_permutation(permutation: Tensor | None) -> Tensor | None:
    """The inverse of a permutation (``out[permutation[i]] = i``), None for None."""
    if permutation is None:
        return None
    xp = get_array_module(permutation.array)
    out = xp.empty_like(permutation.array)
    out[permutation.array] = xp.arange(permutation.array.size, dtype=out.dtype)
    return Tensor(out)


def _host_lengths(lengths) -> np.ndarray:
    if isinstance(lengths, Tensor):
        if lengths.ndim != 1 or lengths.device.type != "cpu":
            raise RuntimeError(f"'lengths' argument should be a 1D CPU int64 tensor, but got "
                               f"{lengths.ndim}D {lengths.device.type} tensor")
        return np.asarray(lengths.numpy()).astype(np.int64)
    out = np.asarray(lengths, dtype=np.int64)
    if out.ndim != 1:
        raise RuntimeError(f"'lengths' argument should be a 1D CPU int64 tensor, but got "
                           f"{out.ndim}D list")
    return out


def _index(array: np.ndarray, like: Tensor) -> Tensor:
    return Tensor(get_array_module(like.array).asarray(array))


def pack_padded_sequence(input: Tensor, lengths, batch_first: bool = False,  # noqa: A002
                         enforce_sorted: bool = True) -> PackedSequence:
    """Packs a padded batch ``(T, B, *)`` (``(B, T, *)`` if ``batch_first``) of sequences
    of the given lengths.

    Raises:
        RuntimeError: ``lengths`` not 1-D, of another size than the batch, not positive, or
            (with ``enforce_sorted``) not decreasing, with torch's messages.
        ValueError: a length longer than the padded input (torch reads past it silently).
    """
    lens = _host_lengths(lengths)
    if input.ndim < 2:
        raise RuntimeError(f"pack_padded_sequence: expected input of at least 2 dims (T, B, *), "
                           f"got shape {list(input.shape)}")
    steps, batch = (input.shape[1], input.shape[0]) if batch_first else input.shape[:2]
    if lens.size != batch:
        raise RuntimeError(f"Expected `len(lengths)` to be equal to batch_size, but got "
                           f"{lens.size} (batch_size={batch})")
    if enforce_sorted:
        if np.any(np.diff(lens) > 0):
            raise RuntimeError(
                "`lengths` array must be sorted in decreasing order when `enforce_sorted` is "
                "True. You can pass `enforce_sorted=False` to pack_padded_sequence and/or "
                "pack_sequence to sidestep this requirement if you do not need ONNX "
                "exportability.")
        order = np.arange(batch, dtype=np.int64)
        sorted_indices = None
    else:
        order = np.argsort(-lens, kind="stable").astype(np.int64)
        sorted_indices = _index(order, input)
    lens = lens[order]
    if batch and lens[-1] <= 0:
        raise RuntimeError("Length of all samples has to be greater than 0, but found an "
                           "element in 'lengths' that is <= 0")
    if batch and lens[0] > steps:
        raise ValueError(f"pack_padded_sequence: a length of {int(lens[0])} exceeds the "
                         f"{steps} time steps of the padded input of shape {list(input.shape)}")
    max_len = int(lens[0]) if batch else 0
    batch_sizes = (lens[None, :] > np.arange(max_len)[:, None]).sum(1).astype(np.int64)
    # the flat row of (t, k-th longest sequence) in the input viewed as (T*B, *) or (B*T, *)
    rows = [order[:n] * steps + t if batch_first else t * batch + order[:n]
            for t, n in enumerate(batch_sizes)]
    flat = input.reshape(steps * batch, *input.shape[2:])
    data = ops.index_select(flat, 0, _index(np.concatenate(rows) if rows else
                                            np.zeros(0, np.int64), input))
    return PackedSequence(data, Tensor(batch_sizes), sorted_indices, None)


def pad_packed_sequence(sequence: PackedSequence, batch_first: bool = False,
                        padding_value: float = 0.0, total_length: int | None = None
                        ) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`pack_padded_sequence`: ``(padded, lengths)``, the batch in its
    original order, ``lengths`` int64 on the CPU.

    Raises:
        ValueError: ``total_length`` shorter than the longest sequence (torch's message).
    """
    data = sequence.data
    sizes = np.asarray(sequence.batch_sizes.numpy()).astype(np.int64)
    max_seq_length = int(sizes.size)
    if total_length is not None:
        if total_length < max_seq_length:
            raise ValueError("Expected total_length to be at least the length of the longest "
                             f"sequence in input, but got total_length={total_length} and max "
                             f"sequence length being {max_seq_length}")
        max_seq_length = total_length
    batch = int(sizes[0]) if sizes.size else 0
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    pad_row = int(sizes.sum())
    index = np.full((max_seq_length, batch), pad_row, dtype=np.int64)
    for t, (off, n) in enumerate(zip(offsets, sizes, strict=True)):
        index[t, :n] = off + np.arange(n)
    lengths = (sizes[None, :] > np.arange(batch)[:, None]).sum(1).astype(np.int64)
    if sequence.unsorted_indices is not None:
        unsorted = np.asarray(sequence.unsorted_indices.tolist(), dtype=np.int64)
        index, lengths = index[:, unsorted], lengths[unsorted]
    if batch_first:
        index = index.T
    pad = creation.full((1, *data.shape[1:]), padding_value, dtype=data.dtype,
                        device=data.device)
    rows = ops.index_select(ops.cat([data, pad], 0), 0, _index(index.reshape(-1), data))
    padded = rows.reshape(*index.shape, *data.shape[1:])
    return padded, Tensor(lengths)


def pad_sequence(sequences, batch_first: bool = False, padding_value: float = 0.0,
                 padding_side: str = "right") -> Tensor:
    """Stacks tensors of shape ``(L_i, *)`` into ``(max L, B, *)`` (``(B, max L, *)`` if
    ``batch_first``), padded with ``padding_value`` on ``padding_side``.

    Raises:
        RuntimeError: not an iterable, an empty one, an unknown ``padding_side``, or trailing
            dims that differ.
    """
    if not isinstance(sequences, Iterable):
        raise RuntimeError(f"pad_sequence: Expected iterable for input sequences, but got arg "
                           f"of type: {type(sequences)}")
    sequences = tuple(sequences)
    if padding_side not in ("left", "right"):
        raise RuntimeError(f"Expected padding_side to be one of left or right, but got "
                           f"{padding_side}.")
    if not sequences:
        raise RuntimeError("received an empty list of sequences")
    trailing = tuple(sequences[0].shape[1:])
    for seq in sequences[1:]:
        if tuple(seq.shape[1:]) != trailing:
            raise RuntimeError(f"pad_sequence: every sequence must have the trailing shape "
                               f"{list(trailing)} of the first, got {list(seq.shape)}")
    max_len = max(seq.shape[0] for seq in sequences)
    padded = []
    for seq in sequences:
        missing = max_len - seq.shape[0]
        if missing:
            fill = creation.full((missing, *trailing), padding_value, dtype=seq.dtype,
                                 device=seq.device)
            seq = ops.cat([seq, fill] if padding_side == "right" else [fill, seq], 0)
        padded.append(seq)
    return ops.stack(padded, 0 if batch_first else 1)


def unpad_sequence(padded_sequences: Tensor, lengths: Tensor,
                   batch_first: bool = False) -> list[Tensor]:
    """The sequences of a padded batch, each cut to its length (the input is not modified,
    unlike torch's, which transposes it in place when not ``batch_first``)."""
    lens = _host_lengths(lengths)
    batch_major = padded_sequences if batch_first else padded_sequences.transpose(0, 1)
    return [batch_major[b, :int(n)] for b, n in enumerate(lens)]


def pack_sequence(sequences, enforce_sorted: bool = True) -> PackedSequence:
    """Packs a list of ``(L_i, *)`` tensors (longest first unless ``enforce_sorted=False``)."""
    sequences = list(sequences)
    lengths = [seq.shape[0] for seq in sequences]
    return pack_padded_sequence(pad_sequence(sequences), lengths, enforce_sorted=enforce_sorted)


def unpack_sequence(packed_sequences: PackedSequence) -> list[Tensor]:
    """Inverse of :func:`pack_sequence`: the list of ``(L_i, *)`` tensors, original order."""
    padded, lengths = pad_packed_sequence(packed_sequences, batch_first=True)
    return unpad_sequence(padded, lengths, batch_first=True)
