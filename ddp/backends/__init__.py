"""``ddp.backends``: torch.backends' switches, so scripts that set them run unchanged.

``torch.backends.cudnn.benchmark = True``, ``torch.backends.cuda.matmul.allow_tf32 = True`` and
``torch.backends.mps.is_available()`` are common first lines of training scripts. ddp uses
neither cuDNN nor MPS nor TF32 (see each submodule), so these switches are stored and read back
but change nothing; the ``is_available()`` answers say what ddp really has.
"""

from ddp.backends import cuda, cudnn, mps

__all__ = ["cuda", "cudnn", "mps"]
