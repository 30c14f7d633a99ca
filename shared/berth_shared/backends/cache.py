"""One backend per storage cluster, built on first use and closed once at shutdown.

Building a backend can be costly (Ceph: a librados client with its own threads and a mon
session), so every service keeps one per cluster for its lifetime.
"""

from __future__ import annotations

import logging
from typing import Any

from berth_shared.backends.base import Backend
from berth_shared.backends.registry import build_backend

log = logging.getLogger(__name__)


class BackendCache:
    def __init__(self) -> None:
        self._built: dict[str, Backend] = {}

    def get(self, cluster_id: str, kind: str, config: dict[str, Any]) -> Backend:
        """The cluster's backend (no I/O until it is used: safe inside a transaction)."""
        backend = self._built.get(cluster_id)
        if backend is None:
            backend = build_backend(kind, config)
            self._built[cluster_id] = backend
        return backend

    def cached(self, cluster_id: str) -> Backend | None:
        return self._built.get(cluster_id)

    async def close(self) -> None:
        """Drop every backend's connections; a failure to close one is logged, not raised
        (this runs at shutdown, and the next backend must still be closed)."""
        built, self._built = list(self._built.values()), {}
        for backend in built:
            try:
                await backend.close()
            except Exception as exc:
                log.warning("closing a %s backend: %s", backend.kind, exc)
