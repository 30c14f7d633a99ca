"""The `node.kubernetes.io/out-of-service` taint, through the official Kubernetes client.

The attacher applies the taint only after a completed storage-side fence (see `service.py`):
Kubernetes then force-deletes the node's pods and detaches their volumes, and the StatefulSet
controller recreates them elsewhere. The taint is removed once the node is back, clean and
unfenced.

A node's `spec.taints` has no patch strategy (a list in a patch replaces the whole list), so
each change reads the node, edits the list and patches it back with the `resourceVersion`
it read: a concurrent writer makes the server answer 409 Conflict and we redo the edit on
the fresh object instead of overwriting its change. The client is synchronous (urllib3):
every call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

OUT_OF_SERVICE_KEY = "node.kubernetes.io/out-of-service"
OUT_OF_SERVICE_VALUE = "nodeshutdown"
OUT_OF_SERVICE_EFFECT = "NoExecute"
# A node's taints have no patch strategy: a strategic merge patch replaces the list.
PATCH_TYPE = "application/strategic-merge-patch+json"


class KubeTainter:
    """Implements the attacher's `Tainter` protocol; both operations are idempotent."""

    def __init__(
        self,
        api_url: str,
        *,
        token_file: str | Path | None = None,
        ca_file: str | Path | None = None,
        timeout_s: float = 10.0,
        attempts: int = 5,
    ) -> None:
        config = client.Configuration(host=api_url.rstrip("/"))
        if ca_file:
            config.ssl_ca_cert = str(ca_file)
        if token_file:
            token_path = Path(token_file)
            config.api_key_prefix = {"BearerToken": "Bearer"}
            # The key must be present for the client to authenticate; the hook fills it per call.
            config.api_key = {"BearerToken": ""}

            def refresh(cfg: client.Configuration) -> None:
                # Service-account tokens are projected and rotated: read the file on each call.
                cfg.api_key = {"BearerToken": token_path.read_text().strip()}

            # The client declares this attribute as None-typed although it calls it.
            config.refresh_api_key_hook = refresh  # type: ignore[assignment]
        self._api = client.CoreV1Api(client.ApiClient(config))
        self._timeout = timeout_s
        self._attempts = attempts

    async def taint(self, node_id: str) -> None:
        await asyncio.to_thread(self._edit, node_id, True)

    async def untaint(self, node_id: str) -> None:
        await asyncio.to_thread(self._edit, node_id, False)

    def close(self) -> None:
        self._api.api_client.close()

    def _edit(self, name: str, add: bool) -> None:
        for attempt in range(1, self._attempts + 1):
            try:
                node = self._api.read_node(name, _request_timeout=self._timeout)
            except ApiException as exc:
                if exc.status == 404 and not add:
                    return  # no node, no taint
                raise
            current = list(node.spec.taints or []) if node.spec else []
            ours = [t for t in current if _is_ours(t)]
            if add and ours:
                return
            if not add and not ours:
                return
            if add:
                wanted = [
                    *current,
                    client.V1Taint(key=OUT_OF_SERVICE_KEY, value=OUT_OF_SERVICE_VALUE, effect=OUT_OF_SERVICE_EFFECT),
                ]
            else:
                wanted = [t for t in current if not _is_ours(t)]
            body: dict[str, Any] = {
                "metadata": {"resourceVersion": node.metadata.resource_version if node.metadata else None},
                "spec": {"taints": self._api.api_client.sanitize_for_serialization(wanted)},
            }
            try:
                self._api.patch_node(name, body, _content_type=PATCH_TYPE, _request_timeout=self._timeout)
            except ApiException as exc:
                if exc.status == 409 and attempt < self._attempts:
                    log.info("node %s changed while editing its taints; retrying", name)
                    continue
                raise
            log.info("%s %s on node %s", "applied" if add else "removed", OUT_OF_SERVICE_KEY, name)
            return


def _is_ours(taint: client.V1Taint) -> bool:
    """The out-of-service NoExecute taint, whatever its value: the effect is the same."""
    return bool(taint.key == OUT_OF_SERVICE_KEY and taint.effect == OUT_OF_SERVICE_EFFECT)
