"""Giving a node a volume, and taking it back, the same way for every backend: most
backends only say where the volume is (`node_context`); Cinder and Manila must also be
told (a Cinder attachment with the node's connector, a Manila access rule for the node's
cephx id), through `attach` and `detach`."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, runtime_checkable

from berth_shared.backends.base import Backend


@runtime_checkable
class Attaches(Protocol):
    async def attach(
        self, volume_id: str, node_id: str, connector: dict[str, Any], mode: str = "rw"
    ) -> dict[str, str]: ...
    async def detach(self, volume_id: str, node_id: str) -> None: ...


def connector(node_id: str) -> dict[str, Any]:
    """The os-brick style connector Cinder expects. Its `host` is the node id, its `ip` a
    placeholder: Berth's nodes reach RBD volumes through librbd with their own cephx ids,
    not through an initiator or address Cinder must export to."""
    return {
        "host": node_id,
        "ip": "127.0.0.1",
        "platform": "x86_64",
        "os_type": "linux",
        "multipath": False,
        "do_local_attach": False,
    }


async def publish_context(backend: Backend, volume_id: str, node_id: str, *, readonly: bool) -> dict[str, str]:
    if isinstance(backend, Attaches):
        return await backend.attach(volume_id, node_id, connector(node_id), "ro" if readonly else "rw")
    return await asyncio.to_thread(backend.node_context, volume_id)


async def withdraw(backend: Backend, volume_id: str, node_id: str) -> None:
    """Idempotent: nothing to withdraw is success."""
    if isinstance(backend, Attaches):
        await backend.detach(volume_id, node_id)
