"""``RemovableHandle``: what every ``register_*_hook`` returns, as in torch."""

from __future__ import annotations

import itertools
import threading

_ids = itertools.count()


class RemovableHandle:
    """Removes the hook it was returned for from its registry dict on ``remove()``."""

    def __init__(self, registry: dict):
        self._registry = registry
        self.id = next(_ids)

    def remove(self) -> None:
        self._registry.pop(self.id, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
        return False


class HookRegistry(dict):
    """A hook dict that threads may change while other threads run the hooks.

    Process-wide registries (e.g. the engine's backward-start hooks) are written by every
    simulated rank of the ``threads`` backend while other ranks iterate them; iterating a plain
    dict then can fail with "dictionary changed size during iteration". Writers hold a lock and
    publish an immutable ``snapshot`` tuple of the hooks, which readers use without locking.

    A removal may also arrive from a garbage-collector finalizer (a handle released when its
    owner is collected) in the middle of this thread's own write, lock held: it is deferred to
    the end of that write instead of deadlocking on the lock.
    """

    def __init__(self):
        super().__init__()
        self._lock = threading.Lock()
        self._writer: int | None = None  # the thread inside a write, lock held
        self._deferred: list = []
        self.snapshot: tuple = ()

    def __setitem__(self, key, value) -> None:
        with self._lock:
            self._writer = threading.get_ident()
            try:
                super().__setitem__(key, value)
                self._publish()
            finally:
                self._writer = None

    def pop(self, key, *default):
        if self._writer == threading.get_ident():  # re-entered from a finalizer: see above
            self._deferred.append(key)
            return default[0] if default else None
        with self._lock:
            self._writer = threading.get_ident()
            try:
                value = super().pop(key, *default)
                self._publish()
            finally:
                self._writer = None
            return value

    def _publish(self) -> None:
        self.snapshot = tuple(dict.values(self))
        while self._deferred:  # removals that arrived while the snapshot was being built
            for key in self._deferred[:]:
                self._deferred.remove(key)
                super().pop(key, None)
            self.snapshot = tuple(dict.values(self))
