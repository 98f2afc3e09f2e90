"""Recurrent layers: ``RNN``, ``LSTM``, ``GRU`` over one ``_RNNBase``, and their cells.

Parameters carry torch's names and layouts (``weight_ih_l{k}[_reverse]`` of shape
``(gate_size, input)``, gates stacked LSTM i,f,g,o and GRU r,z,n; ``weight_hr_l{k}`` for an
LSTM projection), so torch state_dicts load both ways. The forward pass is a Python loop over
time steps built from existing ops, so autograd comes for free; the input projection of every
step is one matmul over the whole sequence, since it does not depend on the state. A
``PackedSequence`` input runs the same steps on the shrinking batch of sequences still running
at each step (longest first), so each sequence's final state is that of its own last step.
"""

from __future__ import annotations

import math
import numbers
import warnings

from ddp import creation, ops
from ddp.nn import functional as F
from ddp.nn import init
from ddp.nn.modules.module import Module
from ddp.nn.parameter import Parameter
from ddp.nn.utils.rnn import PackedSequence
from ddp.tensor import Tensor

_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


def _rnn_step(mode: str, gi: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None) -> Tensor:
    """One step of a plain RNN; ``gi`` is the precomputed ``x @ W_ih.T + b_ih``."""
    pre = gi + F.linear(h, w_hh, b_hh)
    return ops.tanh(pre) if mode == "RNN_TANH" else ops.relu(pre)


def _lstm_step(gi: Tensor, h: Tensor, c: Tensor, w_hh: Tensor, b_hh: Tensor | None,
               w_hr: Tensor | None) -> tuple[Tensor, Tensor]:
    """One LSTM step (gates i, f, g, o); ``w_hr`` projects the new hidden state if given."""
    gates = gi + F.linear(h, w_hh, b_hh)
    n = c.shape[-1]
    i = ops.sigmoid(gates[..., 0:n])
    f = ops.sigmoid(gates[..., n:2 * n])
    g = ops.tanh(gates[..., 2 * n:3 * n])
    o = ops.sigmoid(gates[..., 3 * n:4 * n])
    c_new = f * c + i * g
    h_new = o * ops.tanh(c_new)
    if w_hr is not None:
        h_new = F.linear(h_new, w_hr)
    return h_new, c_new


def _gru_step(gi: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None) -> Tensor:
    """One GRU step (gates r, z, n); the reset gate scales ``W_hn h + b_hn``, as torch's."""
    gh = F.linear(h, w_hh, b_hh)
    n = h.shape[-1]
    r = ops.sigmoid(gi[..., 0:n] + gh[..., 0:n])
    z = ops.sigmoid(gi[..., n:2 * n] + gh[..., n:2 * n])
    cand = ops.tanh(gi[..., 2 * n:3 * n] + r * gh[..., 2 * n:3 * n])
    return (1 - z) * cand + z * h


class _RNNBase(Module):
    """What ``RNN``, ``LSTM`` and ``GRU`` share: hyperparameters, parameters, init, checks."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, device=None,
                 dtype=None) -> None:
        super().__init__()
        self.mode = mode
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        num_directions = 2 if bidirectional else 1
        if (not isinstance(dropout, numbers.Number) or not 0 <= dropout <= 1
                or isinstance(dropout, bool)):
            raise ValueError("dropout should be a number in range [0, 1] representing the "
                             "probability of an element being zeroed")
        self.dropout = float(dropout)
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so "
                          "non-zero dropout expects num_layers greater than 1, but got "
                          f"dropout={dropout} and num_layers={num_layers}", stacklevel=2)
        if not isinstance(hidden_size, int):
            raise TypeError(f"hidden_size should be of type int, got: "
                            f"{type(hidden_size).__name__}")
        if hidden_size <= 0:
            raise ValueError("hidden_size must be greater than zero")
        if num_layers <= 0:
            raise ValueError("num_layers must be greater than zero")
        if proj_size < 0:
            raise ValueError("proj_size should be a positive integer or zero to disable "
                             "projections")
        if proj_size >= hidden_size:
            raise ValueError("proj_size has to be smaller than hidden_size")
        gate_size = _GATES[mode] * hidden_size
        real_hidden = proj_size if proj_size > 0 else hidden_size
        self._flat_weights_names: list[str] = []
        self._all_weights: list[list[str]] = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else real_hidden * num_directions
            for direction in range(num_directions):
                suffix = "_reverse" if direction == 1 else ""
                shapes = {f"weight_ih_l{layer}{suffix}": (gate_size, layer_input),
                          f"weight_hh_l{layer}{suffix}": (gate_size, real_hidden)}
                if bias:
                    shapes[f"bias_ih_l{layer}{suffix}"] = (gate_size,)
                    shapes[f"bias_hh_l{layer}{suffix}"] = (gate_size,)
                if proj_size > 0:
                    shapes[f"weight_hr_l{layer}{suffix}"] = (proj_size, hidden_size)
                for name, shape in shapes.items():
                    setattr(self, name, Parameter(creation.empty(*shape, device=device,
                                                                 dtype=dtype)))
                self._flat_weights_names.extend(shapes)
                self._all_weights.append(list(shapes))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch's default: every weight and bias ``U(-1/sqrt(hidden), 1/sqrt(hidden))``."""
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            init.uniform_(weight, -stdv, stdv)

    def flatten_parameters(self) -> None:
        """A no-op: cuDNN's contiguous weight buffer does not exist here."""

    @property
    def _flat_weights(self) -> list[Tensor]:
        return [getattr(self, name) for name in self._flat_weights_names]

    @property
    def all_weights(self) -> list[list[Parameter]]:
        """The parameters per layer and direction, in torch's order."""
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def _layer_params(self, layer: int, direction: int):
        suffix = "_reverse" if direction == 1 else ""

        def get(kind: str):
            return getattr(self, f"{kind}_l{layer}{suffix}", None)

        return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh"), get("weight_hr")

    def _check_input(self, input: Tensor) -> None:  # noqa: A002
        dtype = self._flat_weights[0].dtype
        if input.dtype != dtype:
            raise ValueError(f"RNN input dtype ({input.dtype}) does not match weight dtype "
                             f"({dtype}). Convert input: input.to({dtype}), or convert model: "
                             f"model.to({input.dtype})")
        if input.shape[-1] != self.input_size:
            raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected "
                               f"{self.input_size}, got {input.shape[-1]}")

    def _check_hidden(self, hx: Tensor, expected: tuple, what: str = "hidden") -> None:
        if tuple(hx.shape) != expected:
            raise RuntimeError(f"Expected {what} size {expected}, got {list(hx.shape)}")

    def _step(self, gi: Tensor, h: Tensor, c: Tensor | None, w_hh, b_hh, w_hr):
        """One time step of this layer kind: the new ``(h, c)`` (``c`` None but for LSTM)."""
        if self.mode == "LSTM":
            return _lstm_step(gi, h, c, w_hh, b_hh, w_hr)
        if self.mode == "GRU":
            return _gru_step(gi, h, w_hh, b_hh), None
        return _rnn_step(self.mode, gi, h, w_hh, b_hh), None

    def _scan(self, gi: Tensor, h: Tensor, c: Tensor | None, weights, reverse: bool):
        """Padded time-major ``gi (T, N, G)``: the stacked outputs and the final ``(h, c)``."""
        steps = gi.shape[0]
        seq = [None] * steps
        for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
            h, c = self._step(gi[t], h, c, *weights)
            seq[t] = h
        return ops.stack(seq, 0), h, c

    def _scan_packed(self, gi: Tensor, h0: Tensor, c0: Tensor | None, weights,
                     batch_sizes: list[int], reverse: bool):
        """Packed ``gi (sum(batch_sizes), G)``: step ``t`` runs the first ``batch_sizes[t]``
        sequences. Forward, sequences leave the batch as they end (their state is final
        then); in reverse they join it, starting from their initial state."""
        offsets = [0]
        for n in batch_sizes:
            offsets.append(offsets[-1] + n)
        seq = [None] * len(batch_sizes)
        if not reverse:
            h, c = h0, c0
            done_h, done_c = [], []
            for t, n in enumerate(batch_sizes):
                if n < h.shape[0]:
                    done_h.append(h[n:])
                    h = h[:n]
                    if c is not None:
                        done_c.append(c[n:])
                        c = c[:n]
                h, c = self._step(gi[offsets[t]:offsets[t + 1]], h, c, *weights)
                seq[t] = h
            h = ops.cat([h, *done_h[::-1]], 0) if done_h else h
            c = ops.cat([c, *done_c[::-1]], 0) if done_c else c
            return ops.cat(seq, 0), h, c
        last = batch_sizes[-1]
        h = h0[:last]
        c = c0[:last] if c0 is not None else None
        for t in range(len(batch_sizes) - 1, -1, -1):
            n = batch_sizes[t]
            if n > h.shape[0]:
                h = ops.cat([h, h0[h.shape[0]:n]], 0)
                if c is not None:
                    c = ops.cat([c, c0[c.shape[0]:n]], 0)
            h, c = self._step(gi[offsets[t]:offsets[t + 1]], h, c, *weights)
            seq[t] = h
        return ops.cat(seq, 0), h, c

    def _run(self, input: Tensor, h0: Tensor, c0: Tensor | None,  # noqa: A002
             batch_sizes: list[int] | None = None):
        """Time-major ``input (T, N, H_in)``, or packed ``(sum(batch_sizes), H_in)``: output
        ``(T, N, D*H_out)`` (packed: ``(sum(batch_sizes), D*H_out)``), ``h_n`` and ``c_n``."""
        num_directions = 2 if self.bidirectional else 1
        h_n, c_n = [], []
        layer_in = input
        for layer in range(self.num_layers):
            outs = []
            for direction in range(num_directions):
                w_ih, w_hh, b_ih, b_hh, w_hr = self._layer_params(layer, direction)
                idx = layer * num_directions + direction
                c = c0[idx] if c0 is not None else None
                gi = F.linear(layer_in, w_ih, b_ih)
                weights = (w_hh, b_hh, w_hr)
                if batch_sizes is None:
                    out, h, c = self._scan(gi, h0[idx], c, weights, direction == 1)
                else:
                    out, h, c = self._scan_packed(gi, h0[idx], c, weights, batch_sizes,
                                                  direction == 1)
                outs.append(out)
                h_n.append(h)
                c_n.append(c)
            layer_in = outs[0] if num_directions == 1 else ops.cat(outs, -1)
            # torch drops out between layers only, never after the last one
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_in = F.dropout(layer_in, self.dropout, True)
        c_stack = ops.stack(c_n, 0) if c0 is not None else None
        return layer_in, ops.stack(h_n, 0), c_stack

    def _forward_packed(self, input: PackedSequence, hx):  # noqa: A002
        """torch's packed path: ``hx`` in the caller's batch order is permuted to the packed
        (longest-first) order, ``h_n``/``c_n`` are permuted back."""
        data, batch_sizes, sorted_indices, unsorted_indices = input
        sizes = [int(n) for n in batch_sizes.tolist()]
        if data.ndim != 2:
            raise RuntimeError(f"{type(self).__name__}: packed input data must be 2-D "
                               f"(sum(batch_sizes), input_size), got {list(data.shape)}")
        self._check_input(data)
        is_lstm = self.mode == "LSTM"
        num_directions = 2 if self.bidirectional else 1
        n = sizes[0]
        real_hidden = self.proj_size if self.proj_size > 0 else self.hidden_size
        h_shape = (self.num_layers * num_directions, n, real_hidden)
        c_shape = (self.num_layers * num_directions, n, self.hidden_size)
        if hx is None:
            h0 = creation.zeros(*h_shape, dtype=data.dtype, device=data.device)
            c0 = (creation.zeros(*c_shape, dtype=data.dtype, device=data.device)
                  if is_lstm else None)
        else:
            h0, c0 = tuple(hx) if is_lstm else (hx, None)
            if sorted_indices is not None:
                h0 = ops.index_select(h0, 1, sorted_indices)
                c0 = ops.index_select(c0, 1, sorted_indices) if is_lstm else None
            self._check_hidden(h0, h_shape, "hidden[0]" if is_lstm else "hidden")
            if is_lstm:
                self._check_hidden(c0, c_shape, "hidden[1]")
        output, h_n, c_n = self._run(data, h0, c0, sizes)
        if unsorted_indices is not None:
            h_n = ops.index_select(h_n, 1, unsorted_indices)
            c_n = ops.index_select(c_n, 1, unsorted_indices) if is_lstm else None
        packed = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
        return packed, ((h_n, c_n) if is_lstm else h_n)

    def _forward(self, input: Tensor, hx):  # noqa: A002
        name = type(self).__name__
        if isinstance(input, PackedSequence):
            return self._forward_packed(input, hx)
        if input.ndim not in (2, 3):
            # torch's wording differs by class: only RNN's says "tensor"
            what = f"{input.ndim}D tensor" if self.mode.startswith("RNN") else f"{input.ndim}D"
            raise ValueError(f"{name}: Expected input to be 2D or 3D, got {what} instead")
        batched = input.ndim == 3
        batch_dim = 0 if self.batch_first else 1
        is_lstm = self.mode == "LSTM"
        if hx is not None:
            states = tuple(hx) if is_lstm else (hx,)
            for s in states:
                if s.ndim != (3 if batched else 2):
                    if is_lstm:
                        dims = f"({states[0].ndim}-D, {states[1].ndim}-D)"
                        raise RuntimeError(
                            f"For {'batched 3' if batched else 'unbatched 2'}-D input, hx and "
                            f"cx should also be {3 if batched else 2}-D but got {dims} tensors")
                    raise RuntimeError(
                        f"For {'batched 3' if batched else 'unbatched 2'}-D input, hx should "
                        f"also be {3 if batched else 2}-D but got {s.ndim}-D tensor")
            if not batched:
                states = tuple(s.unsqueeze(1) for s in states)
        if not batched:
            input = input.unsqueeze(batch_dim)  # noqa: A001
        self._check_input(input)
        if self.batch_first:
            input = input.transpose(0, 1)  # noqa: A001
        num_directions = 2 if self.bidirectional else 1
        n = input.shape[1]
        real_hidden = self.proj_size if self.proj_size > 0 else self.hidden_size
        h_shape = (self.num_layers * num_directions, n, real_hidden)
        c_shape = (self.num_layers * num_directions, n, self.hidden_size)
        if hx is None:
            h0 = creation.zeros(*h_shape, dtype=input.dtype, device=input.device)
            c0 = (creation.zeros(*c_shape, dtype=input.dtype, device=input.device)
                  if is_lstm else None)
        else:
            h0 = states[0]
            c0 = states[1] if is_lstm else None
            if is_lstm:
                self._check_hidden(h0, h_shape, "hidden[0]")
                self._check_hidden(c0, c_shape, "hidden[1]")
            else:
                self._check_hidden(h0, h_shape)
        output, h_n, c_n = self._run(input, h0, c0)
        if self.batch_first:
            output = output.transpose(0, 1)
        if not batched:
            output = output.squeeze(batch_dim)
            h_n = h_n.squeeze(1)
            c_n = c_n.squeeze(1) if c_n is not None else None
        return output, ((h_n, c_n) if is_lstm else h_n)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size != 0:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if self.batch_first is not False:
            s += f", batch_first={self.batch_first}"
        if self.dropout != 0:
            s += f", dropout={self.dropout}"
        if self.bidirectional is not False:
            s += f", bidirectional={self.bidirectional}"
        return s


class RNN(_RNNBase):
    """Elman RNN: ``h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)``, act tanh or relu.

    As in torch, ``nonlinearity`` is the fourth positional argument.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None, **kwargs) -> None:
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if kwargs:
            raise TypeError(f"RNN.__init__() got an unexpected keyword argument "
                            f"'{next(iter(kwargs))}'")
        if nonlinearity == "tanh":
            mode = "RNN_TANH"
        elif nonlinearity == "relu":
            mode = "RNN_RELU"
        else:
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or "
                             "'relu'.")
        self.nonlinearity = nonlinearity
        super().__init__(mode, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, device=device, dtype=dtype)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> tuple[Tensor, Tensor]:  # noqa: A002
        """Returns ``(output, h_n)``."""
        return self._forward(input, hx)


class LSTM(_RNNBase):
    """Long short-term memory, gates i, f, g, o; ``proj_size > 0`` projects ``h`` (LSTMP)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None) -> None:
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, device=device, dtype=dtype)

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None  # noqa: A002
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Returns ``(output, (h_n, c_n))``."""
        return self._forward(input, hx)


class GRU(_RNNBase):
    """Gated recurrent unit, gates r, z, n: ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, **kwargs) -> None:
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if kwargs:
            raise TypeError(f"GRU.__init__() got an unexpected keyword argument "
                            f"'{next(iter(kwargs))}'")
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, device=device, dtype=dtype)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> tuple[Tensor, Tensor]:  # noqa: A002
        """Returns ``(output, h_n)``."""
        return self._forward(input, hx)


class _RNNCellBase(Module):
    """One step: ``weight_ih (gates*hidden, input)``, ``weight_hh``, ``bias_ih``, ``bias_hh``."""

    _gates = 1

    def __init__(self, input_size: int, hidden_size: int, bias: bool, device, dtype) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        gate_size = self._gates * hidden_size
        self.weight_ih = Parameter(creation.empty(gate_size, input_size, device=device,
                                                  dtype=dtype))
        self.weight_hh = Parameter(creation.empty(gate_size, hidden_size, device=device,
                                                  dtype=dtype))
        if bias:
            self.bias_ih = Parameter(creation.empty(gate_size, device=device, dtype=dtype))
            self.bias_hh = Parameter(creation.empty(gate_size, device=device, dtype=dtype))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch's default: every weight and bias ``U(-1/sqrt(hidden), 1/sqrt(hidden))``."""
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            init.uniform_(weight, -stdv, stdv)

    def _prepare(self, input: Tensor, states):  # noqa: A002
        """Checks dims and sizes, adds the batch dim to unbatched input, zero-fills states."""
        name = type(self).__name__
        if input.ndim not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.ndim}D "
                             "instead")
        for k, s in enumerate(states):
            if s is not None and s.ndim not in (1, 2):
                what = f"hx[{k}]" if len(states) == 2 else "hidden"
                raise ValueError(f"{name}: Expected {what} to be 1D or 2D, got {s.ndim}D "
                                 "instead")
        batched = input.ndim == 2
        if not batched:
            input = input.unsqueeze(0)  # noqa: A001
        if input.shape[1] != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {input.shape[1]} "
                               f"expected {self.input_size}")
        n = input.shape[0]
        out = []
        for k, s in enumerate(states):
            if s is None:
                s = creation.zeros(n, self.hidden_size, dtype=input.dtype, device=input.device)
            elif not batched:
                s = s.unsqueeze(0)
            if s.shape[0] != n:
                raise RuntimeError(f"Input batch size {n} doesn't match hidden{k} batch size "
                                   f"{s.shape[0]}")
            if s.shape[1] != self.hidden_size:
                raise RuntimeError(f"hidden{k} has inconsistent hidden_size: got {s.shape[1]}, "
                                   f"expected {self.hidden_size}")
            out.append(s)
        return input, out, batched

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        nonlinearity = getattr(self, "nonlinearity", "tanh")
        if nonlinearity != "tanh":
            s += f", nonlinearity={nonlinearity}"
        return s


class RNNCell(_RNNCellBase):
    """``h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh)``, act tanh or relu."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", device=None, dtype=None) -> None:
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, bias, device, dtype)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:  # noqa: A002
        # torch accepts any nonlinearity at construction and rejects it here
        if self.nonlinearity not in ("tanh", "relu"):
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        input, (h,), batched = self._prepare(input, (hx,))  # noqa: A001
        mode = "RNN_TANH" if self.nonlinearity == "tanh" else "RNN_RELU"
        h = _rnn_step(mode, F.linear(input, self.weight_ih, self.bias_ih), h, self.weight_hh,
                      self.bias_hh)
        return h if batched else h.squeeze(0)


class LSTMCell(_RNNCellBase):
    """One LSTM step; ``hx`` is ``(h, c)``, the result ``(h', c')``."""

    _gates = 4

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, device, dtype)

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None  # noqa: A002
                ) -> tuple[Tensor, Tensor]:
        states = (None, None) if hx is None else tuple(hx)
        input, (h, c), batched = self._prepare(input, states)  # noqa: A001
        h, c = _lstm_step(F.linear(input, self.weight_ih, self.bias_ih), h, c, self.weight_hh,
                          self.bias_hh, None)
        return (h, c) if batched else (h.squeeze(0), c.squeeze(0))


class GRUCell(_RNNCellBase):
    """One GRU step, gates r, z, n."""

    _gates = 3

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, device, dtype)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:  # noqa: A002
        input, (h,), batched = self._prepare(input, (hx,))  # noqa: A001
        h = _gru_step(F.linear(input, self.weight_ih, self.bias_ih), h, self.weight_hh,
                      self.bias_hh)
        return h if batched else h.squeeze(0)
