"""``python -m ddp.profiler <dir>``: summarise the per-rank timelines in ``<dir>`` and merge
them into ``<dir>/timeline-all.json`` (one file to open with all ranks)."""

import sys

from ddp.profiler import timeline

if len(sys.argv) != 2:
    sys.exit("usage: python -m ddp.profiler <dir holding timeline-rank<N>.json>")
for line in timeline.summarize(sys.argv[1]):
    print(line)
print(f"merged: {timeline.merge(sys.argv[1])}")
