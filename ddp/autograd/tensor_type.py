"""The ``Tensor`` class as the layers below ``ddp.tensor`` see it: bound late, read at call time.

``ddp.tensor`` imports the autograd engine and the op library, and both wrap their results in
tensors. Importing ``ddp.tensor`` back from them would be a cycle, so they read the class here,
as ``tensor_type.Tensor``, and ``ddp/tensor.py`` binds it on its last line (tinygrad's shape: the
upper layer binds itself late). ``import ddp`` imports ``ddp.tensor``, so the class is bound
before any op can run. Per process: there is one ``Tensor`` class.
"""

from __future__ import annotations

Tensor: type  # ddp.tensor.Tensor once bind_tensor_class has run; unset before that


def bind_tensor_class(cls: type) -> None:
    """Make ``cls`` the class that autograd and the ops check for and build their results of.

    Called once, by ``ddp.tensor`` when it is imported.
    """
    global Tensor
    Tensor = cls
