"""Pure translations between CSI requests and Berth commands (no I/O)."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from typing import Any

from berth_csi import ZONE_KEY
from berth_csi.errors import required
from berth_csi.pb import csi
from berth_shared.errors import InvalidArgument, OutOfRange
from berth_shared.messages.common import RESOURCE_ID_PATTERN
from berth_shared.messages.provisioner import MAX_VOLUME_GIB

GIB = 1024**3
DEFAULT_SIZE_GIB = 1
TOKEN_SECRET = "berthToken"
# Keys the CO adds to parameters (--extra-create-metadata, secret references): not ours.
CO_PREFIX = "csi.storage.k8s.io/"
VOLUME_PARAMETERS = frozenset({"type", "zone"})
# A VolumeAttributesClass's parameters (ControllerModifyVolume, CreateVolume's
# mutable_parameters): what a volume can change in place.
MUTABLE_PARAMETERS = frozenset({"type"})
FS_TYPES = frozenset({"ext4", "xfs"})
DEFAULT_FS = "ext4"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")
_ID = re.compile(RESOURCE_ID_PATTERN)

AccessMode = csi.VolumeCapability.AccessMode.Mode
SUPPORTED_MODES = frozenset(
    {
        AccessMode.SINGLE_NODE_WRITER,
        AccessMode.SINGLE_NODE_READER_ONLY,
        AccessMode.MULTI_NODE_READER_ONLY,
        AccessMode.MULTI_NODE_SINGLE_WRITER,
        AccessMode.SINGLE_NODE_SINGLE_WRITER,
        AccessMode.SINGLE_NODE_MULTI_WRITER,
    }
)
READ_ONLY_MODES = frozenset({AccessMode.SINGLE_NODE_READER_ONLY, AccessMode.MULTI_NODE_READER_ONLY})


def resource_name(name: str) -> str:
    """A CSI name as a Berth resource name: kept when it fits the pattern, else a stable
    digest (CSI names may hold any character; the same name always maps the same way)."""
    if len(name) <= 128 and _NAME.match(name):
        return name
    return "csi-" + hashlib.sha256(name.encode()).hexdigest()[:40]


def size_gib(capacity_range: Any, field: str = "capacity_range") -> int | None:
    """The size in whole GiB (rounded up) for a capacity range; None when none is asked."""
    if capacity_range is None:
        return None
    want, limit = int(capacity_range.required_bytes), int(capacity_range.limit_bytes)
    if want < 0 or limit < 0:
        raise InvalidArgument(f"{field}: required_bytes and limit_bytes must not be negative", field=field)
    if want == 0 and limit == 0:
        return None
    gib = max(DEFAULT_SIZE_GIB, math.ceil(want / GIB))
    if limit and gib * GIB > limit:
        raise OutOfRange(
            f"{field}: sizes are whole GiB; {gib} GiB exceeds limit_bytes {limit}", reason="capacity_out_of_range"
        )
    if gib > MAX_VOLUME_GIB:
        raise OutOfRange(f"{field}: at most {MAX_VOLUME_GIB} GiB per volume", reason="capacity_out_of_range")
    return gib


def access_mode(cap: Any, field: str = "volume_capability") -> str:
    """The attacher's lower-case name for a capability's access mode."""
    mode = int(cap.access_mode.mode) if cap.HasField("access_mode") else 0
    if mode == AccessMode.UNKNOWN:
        raise InvalidArgument(f"{field}.access_mode is required", field=f"{field}.access_mode")
    return str(AccessMode.Name(mode)).lower()


def is_block(cap: Any) -> bool:
    return bool(cap.WhichOneof("access_type") == "block")


def fs_type(cap: Any) -> str:
    return str(cap.mount.fs_type) if cap.WhichOneof("access_type") == "mount" and cap.mount.fs_type else DEFAULT_FS


def unsupported(cap: Any, *, shared_fs: bool = False) -> str | None:
    """Why this adapter cannot serve a capability (None: it can). `shared_fs`: the volume is
    (or may be) on a shared file system (CephFS), where MULTI_NODE_MULTI_WRITER mounts work;
    the attacher refuses that mode at publish for the block backends."""
    kind = cap.WhichOneof("access_type")
    if kind is None:
        return "access_type (block or mount) is required"
    mode = int(cap.access_mode.mode) if cap.HasField("access_mode") else 0
    if mode == AccessMode.UNKNOWN:
        return "access_mode is required"
    if mode == AccessMode.MULTI_NODE_MULTI_WRITER and shared_fs and kind == "mount":
        return None
    if mode not in SUPPORTED_MODES:
        return f"access mode {AccessMode.Name(mode)} needs a shared file system; Berth volumes here are block storage"
    if kind == "mount" and cap.mount.fs_type and cap.mount.fs_type not in FS_TYPES:
        return f"fs_type {cap.mount.fs_type!r} is not supported (ext4 or xfs)"
    return None


def check_capabilities(caps: Any, field: str = "volume_capabilities", *, shared_fs: bool = False) -> None:
    required(len(caps), field)
    for i, cap in enumerate(caps):
        why = unsupported(cap, shared_fs=shared_fs)
        if why:
            raise InvalidArgument(f"{field}[{i}]: {why}", field=f"{field}[{i}]")


def check_capability(cap: Any, field: str = "volume_capability", *, shared_fs: bool = False) -> None:
    why = unsupported(cap, shared_fs=shared_fs)
    if why:
        raise InvalidArgument(f"{field}: {why}", field=field)


def zones(parameters: Mapping[str, str], requirement: Any | None) -> list[str | None]:
    """Zones to try in order: the StorageClass's `zone`, else the topology's preferred then
    requisite zones, else any zone (None)."""
    requisite = _zones_of(requirement.requisite) if requirement is not None else []
    preferred = _zones_of(requirement.preferred) if requirement is not None else []
    fixed = parameters.get("zone")
    if fixed:
        if requisite and fixed not in requisite:
            raise InvalidArgument(
                f"parameters.zone {fixed!r} is not among accessibility_requirements.requisite zones {requisite}",
                field="parameters.zone",
            )
        return [fixed]
    ordered: list[str | None] = list(dict.fromkeys(preferred + requisite))
    return ordered if ordered else [None]


def _zones_of(topologies: Any) -> list[str]:
    return [str(t.segments[ZONE_KEY]) for t in topologies if ZONE_KEY in t.segments]


def check_parameters(
    parameters: Mapping[str, str], known: frozenset[str] = VOLUME_PARAMETERS, field: str = "parameters"
) -> None:
    unknown = sorted(k for k in parameters if k not in known and not k.startswith(CO_PREFIX))
    if unknown:
        raise InvalidArgument(
            f"{field}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known)) or 'none'}",
            field=field,
        )


def valid_id(value: str) -> bool:
    """Could `value` be a Berth id? (Anything else names nothing: NOT_FOUND, or OK for deletes.)"""
    return len(value) <= 64 and bool(_ID.match(value))


def topology(zone: str) -> Any:
    return csi.Topology(segments={ZONE_KEY: zone})
