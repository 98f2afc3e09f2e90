"""HookRegistry: removals re-entered from a garbage-collector finalizer never deadlock."""

from __future__ import annotations

import gc
import threading
import weakref

from ddp.utils.hooks import HookRegistry, RemovableHandle


class _Cycle:
    def __init__(self):
        self.me = self


def test_removal_from_a_finalizer_during_a_write_is_deferred_not_deadlocked():
    """A handle released by a finalizer when the cycle collector runs inside a write."""
    registry = HookRegistry()
    threshold = gc.get_threshold()
    doomed_ids = []
    done = threading.Event()

    def write():
        gc.disable()
        try:
            # Collect after k more allocations, for several k: one of them lands inside the
            # write's critical section (which k depends on the interpreter's allocations).
            for k in range(12):
                gc.collect()
                doomed = RemovableHandle(registry)
                registry[doomed.id] = "doomed"
                doomed_ids.append(doomed.id)
                garbage = _Cycle()  # freed only by the cycle collector, running the finalizer
                weakref.finalize(garbage, doomed.remove)
                del garbage, doomed
                handle = RemovableHandle(registry)
                gc.set_threshold(gc.get_count()[0] + k)
                gc.enable()
                registry[handle.id] = "kept"
                gc.disable()
        finally:
            gc.set_threshold(*threshold)
            gc.enable()
        done.set()

    worker = threading.Thread(target=write, daemon=True)
    worker.start()
    assert done.wait(30), "a finalizer's removal deadlocked a write to the registry"
    gc.collect()
    assert not set(doomed_ids) & set(registry)
    assert "doomed" not in registry.snapshot
    assert len(registry) == 12 and len(registry.snapshot) == 12
