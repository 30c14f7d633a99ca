"""What an OpenStack cloud offers as Berth storage clusters: each Cinder volume type and
each Manila share type, with the capacity of the pools behind it. The provisioner
registers them (one cluster per type) from this list."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from berth_shared.backends.base import Capacity
from berth_shared.backends.openstack_common import GIB, Cloud, parse_cloud, pool_capacity
from berth_shared.backends.registry import validate_backend_config
from berth_shared.errors import InvalidArgument, NotFound


@dataclass(frozen=True)
class OfferedType:
    kind: Literal["cinder", "manila"]
    name: str  # the volume or share type
    config: dict[str, Any]  # the cluster config to register (the cloud's keys + the type)
    capacity_gib: int | None  # None: the pools do not say (fake drivers, `infinite`)
    free_gib: int | None
    multiattach: bool = False


async def offered_types(kind: str, config: dict[str, Any]) -> list[OfferedType]:
    """Every public type of the cloud in `config` (`cloud`, `clouds_file`, `region`, ...;
    an optional `ceph` is copied into each type's config), with its pools' capacity."""
    if kind not in ("cinder", "manila"):
        raise InvalidArgument(f"only cinder and manila clusters are discovered, not {kind!r}", reason="bad_kind")
    cloud_cfg, base = parse_cloud(kind, config)
    if "ceph" in config:
        base["ceph"] = config["ceph"]
    cloud = Cloud(cloud_cfg)

    def listing(c: Any) -> list[tuple[str, bool, Capacity | None]]:
        if kind == "cinder":
            types, pools, key = c.block_storage.types(), list(c.block_storage.backend_pools()), "volume_backend_name"
        else:
            types = c.shared_file_system.share_types()
            pools, key = list(c.shared_file_system.storage_pools(details=True)), "share_backend_name"
        out = []
        for t in types:
            specs = t.extra_specs or {}
            try:
                cap: Capacity | None = pool_capacity(pools, key, specs.get(key))
            except NotFound:
                cap = None
            out.append((str(t.name), specs.get("multiattach") == "<is> True", cap))
        return out

    try:
        listed = await cloud.call(f"{kind} types", listing)
    finally:
        cloud.close()
    key = "volume_type" if kind == "cinder" else "share_type"
    return [
        OfferedType(
            kind,  # type: ignore[arg-type]
            name,
            validate_backend_config(kind, {**base, key: name}),
            None if cap is None else cap.total_bytes // GIB,
            None if cap is None else cap.free_bytes // GIB,
            multi,
        )
        for name, multi, cap in sorted(listed, key=lambda x: x[0])
        if name != "__DEFAULT__"  # Cinder's placeholder type
    ]
