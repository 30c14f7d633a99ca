"""Registering an OpenStack cloud's storage classes as clusters (admin): each Cinder
volume type and each Manila share type becomes one cluster serving a Berth volume type of
the same name, with the capacity its scheduler pools report."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from berth_provisioner.clusters import Clusters
from berth_provisioner.volume_types import VolumeTypes
from berth_shared.auth import Principal
from berth_shared.backends import offered_types
from berth_shared.errors import AlreadyExists
from berth_shared.messages.common import ResourceName
from berth_shared.messages.provisioner import ClusterList, ClusterRegister, VolumeTypeCreate


class ClusterDiscover(BaseModel):
    backend: Literal["cinder", "manila"]
    # The cloud's keys (cloud, clouds_file, region, timeout_s, wait_s, retries, ceph).
    config: dict[str, Any]
    zone: ResourceName = "default"
    name_prefix: str = Field(default="", max_length=32, pattern=r"^[a-z0-9\-]*$")
    overcommit_ratio: float = Field(default=1.0, ge=1.0, le=100.0)
    # For types whose pools report no capacity (`infinite`, `unknown`): registered with
    # this many GiB, or left out when unset.
    unknown_capacity_gib: int | None = Field(default=None, ge=1)
    # Only these types (default: every public one).
    types: list[str] | None = None


async def discover(clusters: Clusters, volume_types: VolumeTypes, p: Principal, req: ClusterDiscover) -> ClusterList:
    """Idempotent: a type whose cluster (`<prefix><type>`) is registered already is left as
    it is and listed again."""
    p.require_admin()
    registered = []
    for offered in await offered_types(req.backend, req.config):
        if req.types is not None and offered.name not in req.types:
            continue
        capacity = offered.capacity_gib or req.unknown_capacity_gib
        if capacity is None:
            continue
        kind = "block" if req.backend == "cinder" else "shared file system"
        await volume_types.create(p, VolumeTypeCreate(name=offered.name, description=f"OpenStack {kind} type"))
        body = ClusterRegister(
            name=req.name_prefix + offered.name,
            backend=req.backend,
            config=offered.config,
            volume_types=[offered.name],
            zone=req.zone,
            capacity_gib=max(1, capacity),
            overcommit_ratio=req.overcommit_ratio,
        )
        try:
            registered.append(await clusters.register(p, body))
        except AlreadyExists:
            registered += [c for c in (await clusters.list(p)).items if c.name == body.name]
    return ClusterList(items=registered)
