"""A per-rank timeline of a training loop, written as Chrome-trace JSON.

Switch it on with the environment variable ``DDP_TIMELINE=<dir>`` (read when ``ddp`` is
imported) or with :func:`enable`; at exit (or on :func:`flush`) every rank's events are written
to ``<dir>/timeline-rank<N>.json``, one process per rank (``pid`` = rank) and one row per thread.
``python -m ddp.profiler <dir>`` prints a per-rank summary and merges the files into
``<dir>/timeline-all.json``; open that in https://ui.perfetto.dev or ``chrome://tracing``.

Recorded automatically once enabled:
  * ``forward``: the call of each top-level module (the DDP wrapper, or the model itself);
  * ``backward``: the autograd engine's walk, from its start to its last node;
  * ``allreduce bucket <k>`` and ``ddp wait``: DDP's bucket all-reduces on its communication
    thread, and the time the end of backward waits for them (instrumented in
    ``ddp.nn.parallel``);
  * ``step``: every optimizer's ``step()``.
User code adds its own spans with ``with timeline.span("data", "io"):`` and marks with
:func:`instant`. When disabled, :func:`span` returns a shared no-op context and no hook is
registered, so the cost is one function call per span.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator

from ddp import config
from ddp.autograd import engine
from ddp.distributed import api
from ddp.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from ddp.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

_enabled = False
_directory: str | None = None
_lock = threading.Lock()
_buffers: list[_ThreadBuffer] = []  # one per thread that recorded something
_local = threading.local()
_handles: list = []
_NULL = contextlib.nullcontext()
# perf_counter is monotonic but has an arbitrary origin: shift it onto the wall clock so that the
# files of separate processes (MPI ranks on one machine) line up.
_EPOCH_US = (time.time() - time.perf_counter()) * 1e6


class _ThreadBuffer:
    """Events recorded by one thread: ``(phase, name, cat, start_us, dur_us, pid, args)``."""

    def __init__(self) -> None:
        thread = threading.current_thread()
        self.tid = threading.get_native_id()
        self.thread_name = thread.name
        self.rank = _current_rank()
        self.events: list[tuple] = []
        self.stack: list[tuple[str, str, float, int | None, dict | None]] = []
        self.forward_depth = 0


def _buffer() -> _ThreadBuffer:
    buffer = getattr(_local, "buffer", None)
    if buffer is None:
        buffer = _local.buffer = _ThreadBuffer()
        with _lock:
            _buffers.append(buffer)
    return buffer


def _now_us() -> float:
    return time.perf_counter() * 1e6 + _EPOCH_US


def _current_rank() -> int:
    """The calling thread's world rank: the default group's, else the launcher's, else 0."""
    try:
        group = api._current()
        if group is not None:
            return group.global_ranks[group.rank()]
    except Exception:  # noqa: S110 - a timeline must never break the program it observes
        pass
    for var in config.RANK_VARS:
        value = config.get(var)
        if value is not None:
            return value
    return 0


def is_enabled() -> bool:
    """True when events are being recorded."""
    return _enabled


def enable(directory: str | os.PathLike) -> None:
    """Start recording; the files go to ``directory`` (created if missing) at exit or flush.

    Installs global hooks for forward, backward and optimizer steps. Calling it again only
    changes the directory.
    """
    global _enabled, _directory
    _directory = os.fspath(directory)
    if _enabled:
        return
    _handles.extend([
        register_module_forward_pre_hook(_forward_pre_hook),
        register_module_forward_hook(_forward_hook),
        engine.register_backward_start_hook(_backward_start_hook),
        register_optimizer_step_pre_hook(_step_pre_hook),
        register_optimizer_step_post_hook(_step_post_hook),
    ])
    _enabled = True


def disable() -> None:
    """Stop recording and remove the hooks; events recorded so far are kept for :func:`flush`."""
    global _enabled
    _enabled = False
    while _handles:
        _handles.pop().remove()


def clear() -> None:
    """Forget every recorded event (the threads keep their buffers)."""
    with _lock:
        for buffer in _buffers:
            buffer.events.clear()
            buffer.stack.clear()
            buffer.forward_depth = 0


def span(name: str, cat: str = "", rank: int | None = None, **args):
    """Context manager recording one complete event around its body in the calling thread.

    Args:
        name: what the span shows, e.g. ``"allreduce bucket 3"``.
        cat: a category (``"compute"``, ``"comm"``, ``"optim"``, ``"io"``...), filterable in
            the viewers.
        rank: the rank the event belongs to; by default the calling thread's (threads that a
            simulated rank starts do not inherit its rank: pass it).
        **args: small JSON-serialisable values shown when the span is selected.
    """
    if not _enabled:
        return _NULL
    return _span(name, cat, rank, args or None)


@contextlib.contextmanager
def _span(name: str, cat: str, rank: int | None, args: dict | None) -> Iterator[None]:
    start = _now_us()
    try:
        yield
    finally:
        _record(name, cat, start, _now_us(), rank, args)


def record(name: str, cat: str, start: float, end: float, rank: int | None = None,
           **args) -> None:
    """Record a span measured elsewhere (``start``/``end`` from ``time.perf_counter()``).

    For work that is in flight rather than running in a thread, such as a non-blocking
    all-reduce from its start to its completion.
    """
    if not _enabled:
        return
    _record(name, cat, start * 1e6 + _EPOCH_US, end * 1e6 + _EPOCH_US, rank, args or None)


def instant(name: str, cat: str = "", rank: int | None = None, **args) -> None:
    """Record a point in time (drawn as a marker) in the calling thread."""
    if not _enabled:
        return
    buffer = _buffer()
    buffer.events.append(("i", name, cat, _now_us(), 0.0,
                          buffer.rank if rank is None else rank, args or None))


def _record(name: str, cat: str, start: float, end: float, rank: int | None,
            args: dict | None) -> None:
    buffer = _buffer()
    buffer.events.append(("X", name, cat, start, end - start,
                          buffer.rank if rank is None else rank, args))


def _begin(name: str, cat: str, args: dict | None = None) -> None:
    _buffer().stack.append((name, cat, _now_us(), None, args))


def _end(name: str) -> None:
    stack = _buffer().stack
    # Drop spans whose end never came (their code raised) down to the one being closed.
    while stack:
        opened, cat, start, rank, args = stack.pop()
        if opened == name:
            _record(name, cat, start, _now_us(), rank, args)
            return


# --------------------------------------------------------------------------- automatic spans
def _forward_pre_hook(module, args) -> None:
    buffer = _buffer()
    buffer.forward_depth += 1
    if buffer.forward_depth == 1:
        _begin("forward", "compute", {"module": type(module).__name__})


def _forward_hook(module, args, output) -> None:
    buffer = _buffer()
    buffer.forward_depth -= 1
    if buffer.forward_depth == 0:
        _end("forward")


def _backward_start_hook(task) -> None:
    buffer = _buffer()
    buffer.forward_depth = 0  # a forward that raised never ran its post-hook
    _begin("backward", "compute", {"leaves": len(task.leaves)})
    task.queue_callback(_backward_end)


def _backward_end() -> None:
    _end("backward")


def _step_pre_hook(optimizer, args, kwargs) -> None:
    _buffer().forward_depth = 0
    _begin("step", "optim", {"optimizer": type(optimizer).__name__})


def _step_post_hook(optimizer, args, kwargs) -> None:
    _end("step")


# ------------------------------------------------------------------------------------ output
def trace_events(rank: int | None = None) -> list[dict]:
    """The recorded events as Chrome-trace dicts (all ranks, or only ``rank``'s)."""
    with _lock:
        buffers = list(_buffers)
    out: list[dict] = []
    named: set[tuple[int, int]] = set()
    for buffer in buffers:
        for phase, name, cat, start, dur, pid, args in list(buffer.events):
            if rank is not None and pid != rank:
                continue
            if (pid, buffer.tid) not in named:
                named.add((pid, buffer.tid))
                out.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": buffer.tid,
                            "args": {"name": buffer.thread_name}})
            event = {"ph": phase, "name": name, "cat": cat or "default", "ts": round(start, 3),
                     "pid": pid, "tid": buffer.tid}
            if phase == "X":
                event["dur"] = round(dur, 3)
            else:
                event["s"] = "t"
            if args:
                event["args"] = args
            out.append(event)
    for pid in sorted({pid for pid, _ in named}):
        out.append({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": f"rank {pid}"}})
        out.append({"ph": "M", "name": "process_sort_index", "pid": pid,
                    "args": {"sort_index": pid}})
    return out


def flush() -> list[str]:
    """Write ``timeline-rank<N>.json`` for every rank recorded in this process.

    Each file holds all events so far (calling it again rewrites them). Returns the paths.
    """
    if _directory is None:
        return []
    events = trace_events()
    ranks = sorted({e["pid"] for e in events if e["ph"] != "M"})
    os.makedirs(_directory, exist_ok=True)
    paths = []
    for rank in ranks:
        path = os.path.join(_directory, f"timeline-rank{rank}.json")
        mine = [e for e in events if e["pid"] == rank]
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"traceEvents": mine, "displayTimeUnit": "ms"}, f)
        os.replace(tmp, path)
        paths.append(path)
    return paths


def _flush_at_exit() -> None:
    if _directory is not None:
        try:
            flush()
        except OSError as exc:
            print(f"ddp.profiler.timeline: could not write the timeline: {exc}")


def merge(directory: str | os.PathLike) -> str:
    """Combine every ``timeline-rank<N>.json`` in ``directory`` into ``timeline-all.json``
    (one file that ``chrome://tracing`` or Perfetto shows with all ranks); returns its path."""
    directory = os.fspath(directory)
    events: list[dict] = []
    for path in _rank_files(directory):
        with open(path) as f:
            events.extend(json.load(f)["traceEvents"])
    out = os.path.join(directory, "timeline-all.json")
    with open(out, "w") as f:
        json.dump({"traceEvents": events, "displayTimeUnit": "ms"}, f)
    return out


def summarize(directory: str | os.PathLike) -> list[str]:
    """One line per rank: time in forward, backward, bucket all-reduces (and the share of it
    that ran while backward did), waiting for them, and in optimizer steps."""
    lines = []
    for path in _rank_files(os.fspath(directory)):
        with open(path) as f:
            spans = [e for e in json.load(f)["traceEvents"] if e["ph"] == "X"]
        if not spans:
            continue

        def total(prefix: str, spans=spans) -> float:
            return sum(e["dur"] for e in spans if e["name"].startswith(prefix)) / 1e3

        backward = [(e["ts"], e["ts"] + e["dur"]) for e in spans if e["name"] == "backward"]
        comm = [(e["ts"], e["ts"] + e["dur"]) for e in spans
                if e["name"].startswith("allreduce")]
        hidden = sum(max(0.0, min(end, b1) - max(start, b0))
                     for start, end in comm for b0, b1 in backward) / 1e3
        comm_ms = total("allreduce")
        share = f" ({100 * hidden / comm_ms:.0f}% during backward)" if comm_ms else ""
        lines.append(
            f"rank {spans[0]['pid']}: {sum(e['name'] == 'step' for e in spans)} steps; "
            f"forward {total('forward'):.1f} ms, backward {total('backward'):.1f} ms, "
            f"{len(comm)} all-reduces {comm_ms:.1f} ms{share}, ddp wait "
            f"{total('ddp wait'):.1f} ms, step {total('step'):.1f} ms"
        )
    return lines


def _rank_files(directory: str) -> list[str]:
    names = [n for n in os.listdir(directory)
             if n.startswith("timeline-rank") and n.endswith(".json")]
    names.sort(key=lambda n: int(n[len("timeline-rank"):-len(".json")]))
    if not names:
        raise FileNotFoundError(f"no timeline-rank<N>.json in {directory}")
    return [os.path.join(directory, n) for n in names]


atexit.register(_flush_at_exit)
_from_environment = config.get("DDP_TIMELINE")  # read at import (docs/configuration.md)
if _from_environment:
    enable(_from_environment)

