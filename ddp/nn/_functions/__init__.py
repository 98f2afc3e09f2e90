"""The differentiable functions behind ``ddp.nn.functional``, one family per module."""
