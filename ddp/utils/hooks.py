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
    """

    def __init__(self):
        super().__init__()
        self._lock = threading.Lock()
        self.snapshot: tuple = ()

    def __setitem__(self, key, value) -> None:
        with self._lock:
            super().__setitem__(key, value)
            self.snapshot = tuple(dict.values(self))

    def pop(self, key, *default):
        with self._lock:
            value = super().pop(key, *default)
            self.snapshot = tuple(dict.values(self))
            return value
