"""One backend per storage cluster, built on first use (again when its config changes) and
closed once at shutdown.

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
        self._built: dict[str, tuple[str, dict[str, Any], Backend]] = {}
        # Backends a new config replaced: a call in flight may still use one, so each is
        # closed at shutdown with the rest, never at once.
        self._replaced: list[Backend] = []

    def get(self, cluster_id: str, kind: str, config: dict[str, Any]) -> Backend:
        """The cluster's backend (no I/O until it is used: safe inside a transaction); a
        new one when the cluster's kind or config changed (e.g. a rotated keyring)."""
        held = self._built.get(cluster_id)
        if held is not None and held[0] == kind and held[1] == config:
            return held[2]
        if held is not None:
            self._replaced.append(held[2])
        backend = build_backend(kind, config)
        self._built[cluster_id] = (kind, dict(config), backend)
        return backend

    def cached(self, cluster_id: str) -> Backend | None:
        held = self._built.get(cluster_id)
        return held[2] if held is not None else None

    async def close(self) -> None:
        """Drop every backend's connections; a failure to close one is logged, not raised
        (this runs at shutdown, and the next backend must still be closed)."""
        built = [backend for _kind, _config, backend in self._built.values()] + self._replaced
        self._built, self._replaced = {}, []
        for backend in built:
            try:
                await backend.close()
            except Exception as exc:
                log.warning("closing a %s backend: %s", backend.kind, exc)
