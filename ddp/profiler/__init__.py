"""``ddp.profiler``: a per-rank Chrome-trace timeline of forward, backward, all-reduce and step.

See :mod:`ddp.profiler.timeline` and docs/debugging.md. ``DDP_TIMELINE=<dir>`` switches it on.
"""

from ddp.profiler import timeline

__all__ = ["timeline"]
