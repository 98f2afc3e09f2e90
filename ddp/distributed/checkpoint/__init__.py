"""``ddp.distributed.checkpoint``: sharded, atomic checkpoints that load at any world size.

``save(dir, model=..., optimizer=..., **extra)`` and ``load(dir, model=..., optimizer=...)``
(both collectives); see ``api.py`` for the index format and ``storage.py`` for the files.
"""

from ddp.distributed.checkpoint.api import load, save

__all__ = ["load", "save"]
