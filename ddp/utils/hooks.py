"""``RemovableHandle``: what every ``register_*_hook`` returns, as in torch."""

from __future__ import annotations

import itertools

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
