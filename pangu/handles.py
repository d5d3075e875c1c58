"""Ray actor handles looked up by name once and kept (a lookup is a GCS round trip); a handle
whose actor failed is forgotten so that the next use looks it up again."""

from __future__ import annotations

from typing import Any

import ray


class Handles:
    def __init__(self, namespace: str):
        self.namespace = namespace
        self._cache: dict[str, Any] = {}

    def get(self, name: str):
        h = self._cache.get(name)
        if h is None:
            h = ray.get_actor(name, namespace=self.namespace)
            self._cache[name] = h
        return h

    def forget(self, name: str) -> None:
        self._cache.pop(name, None)
