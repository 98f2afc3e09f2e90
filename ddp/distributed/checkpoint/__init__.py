"""``ddp.distributed.checkpoint``: sharded, verified, atomic checkpoints that load at any
world size.

``save(dir, model=..., optimizer=..., **extra)`` and ``load(dir, model=..., optimizer=...)``
(both collectives; an error on any rank raises the same type on every rank). See ``api.py``
for the guarantees, ``index.py`` for the index format, ``files.py`` and ``storage.py`` for the
files and directories.
"""

from ddp.distributed.checkpoint.api import load, save

__all__ = ["load", "save"]
