"""The word-language-model pattern (embedding, stacked RNN, decoder, truncated BPTT with the
hidden state detached between batches, gradient clipping, SGD) trains as torch does.

The same script runs with ``T`` bound to torch and to ddp, from torch's initial weights, in
float64; the losses of every step and the final weights agree to rounding.
"""

import numpy as np
import pytest
from _helpers import torch_oracle

import ddp

torch = torch_oracle()

VOCAB, EMB, HID, LAYERS, BPTT, BATCH = 11, 5, 7, 2, 4, 3


def _model(T, rnn_type):
    class RNNModel(T.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = T.nn.Embedding(VOCAB, EMB, dtype=T.float64)
            if rnn_type in ("LSTM", "GRU"):
                self.rnn = getattr(T.nn, rnn_type)(EMB, HID, LAYERS, dtype=T.float64)
            else:
                self.rnn = T.nn.RNN(EMB, HID, LAYERS, nonlinearity="relu", dtype=T.float64)
            self.decoder = T.nn.Linear(HID, VOCAB, dtype=T.float64)

        def forward(self, x, hidden):
            output, hidden = self.rnn(self.encoder(x), hidden)
            return self.decoder(output).view(-1, VOCAB), hidden

        def init_hidden(self, bsz):
            weight = next(self.parameters())
            if rnn_type == "LSTM":
                return (weight.new_zeros((LAYERS, bsz, HID)), weight.new_zeros((LAYERS, bsz, HID)))
            return weight.new_zeros((LAYERS, bsz, HID))

    return RNNModel()


def _repackage(T, h):
    return h.detach() if isinstance(h, T.Tensor) else tuple(_repackage(T, v) for v in h)


def _train(T, model, data):
    opt = T.optim.SGD(model.parameters(), lr=0.5)
    crit = T.nn.CrossEntropyLoss()
    hidden = model.init_hidden(BATCH)
    losses = []
    for i in range(0, data.shape[0] - 1, BPTT):
        seq = min(BPTT, data.shape[0] - 1 - i)
        x = T.tensor(data[i:i + seq])
        y = T.tensor(data[i + 1:i + 1 + seq].reshape(-1))
        hidden = _repackage(T, hidden)
        model.zero_grad()
        out, hidden = model(x, hidden)
        loss = crit(out, y)
        loss.backward()
        T.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()
        losses.append(float(loss.item()))
    return losses


@pytest.mark.parametrize("rnn_type", ("LSTM", "GRU", "RNN_RELU"))
def test_language_model_trains_as_torch(rnn_type):
    data = np.random.default_rng(0).integers(0, VOCAB, size=(13, BATCH)).astype(np.int64)
    torch.manual_seed(0)
    t_model = _model(torch, rnn_type)
    d_model = _model(ddp, rnn_type)
    d_model.load_state_dict({k: ddp.tensor(v.detach().numpy())
                             for k, v in t_model.state_dict().items()})
    t_losses = _train(torch, t_model, data)
    d_losses = _train(ddp, d_model, data)
    assert len(d_losses) == 3
    np.testing.assert_allclose(d_losses, t_losses, rtol=1e-10)
    assert d_losses[-1] != d_losses[0]  # the weights moved
    d_state = d_model.state_dict()
    for k, v in t_model.state_dict().items():
        np.testing.assert_allclose(d_state[k].numpy(), v.numpy(), rtol=1e-9, atol=1e-12,
                                   err_msg=k)
