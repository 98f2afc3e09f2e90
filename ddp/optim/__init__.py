"""``ddp.optim``: optimizers and learning-rate schedulers with torch's API."""

from ddp.optim import lr_scheduler
from ddp.optim.adadelta import Adadelta
from ddp.optim.adagrad import Adagrad
from ddp.optim.adam import Adam
from ddp.optim.adamw import AdamW
from ddp.optim.lbfgs import LBFGS
from ddp.optim.optimizer import Optimizer
from ddp.optim.rmsprop import RMSprop
from ddp.optim.sgd import SGD

__all__ = ["SGD", "Adam", "AdamW", "Optimizer", "lr_scheduler"]
__all__ += ["Adadelta", "Adagrad", "LBFGS", "RMSprop"]
