"""What the Cinder and Manila backends share: the cluster config (a `clouds.yaml` cloud),
one openstacksdk connection per backend, error mapping, retries with back-off, status
waits, and how Berth names and tags what it creates.

Every OpenStack call runs in a thread (openstacksdk is synchronous), with the cloud's
HTTP timeout (`timeout_s`) and, for rate limits (429), transient server errors (500, 502,
503, 504) and connection failures, `retries` more attempts with exponential back-off.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from berth_shared.backends.base import BackendError, Capacity
from berth_shared.errors import (
    AlreadyExists,
    BerthError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)

T = TypeVar("T")
log = logging.getLogger(__name__)

GIB = 1 << 30
NAME_PREFIX = "berth-"  # + the Berth id: the OpenStack object's name
META_VOLUME = "berth_volume_id"  # metadata tying a Cinder volume / Manila share to its record
META_SNAPSHOT = "berth_snapshot_id"
META_TENANT = "berth_tenant"
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


def bad_config(kind: str, message: str) -> InvalidArgument:
    return InvalidArgument(f"{kind} backend config: {message}", reason="invalid_backend_config")


def _opt_str(kind: str, config: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    value = config.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 255:
        raise bad_config(kind, f"'{key}' must be a non-empty string" + ("" if required else " when given"))
    return value


def _num(kind: str, config: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise bad_config(kind, f"'{key}' must be a number in [{lo:g}, {hi:g}]")
    return float(value)


@dataclass(frozen=True)
class CloudConfig:
    cloud: str
    clouds_file: str | None
    region: str | None
    timeout_s: float
    wait_s: float
    retries: int


def parse_cloud(kind: str, config: dict[str, Any]) -> tuple[CloudConfig, dict[str, Any]]:
    """The keys both backends take; returns the config and its normalised dict."""
    if not isinstance(config, dict):
        raise bad_config(kind, "must be an object")
    cloud = _opt_str(kind, config, "cloud", required=True)
    assert cloud is not None
    clouds_file = _opt_str(kind, config, "clouds_file")
    if clouds_file is not None and not clouds_file.startswith("/"):
        raise bad_config(kind, "'clouds_file' must be an absolute path")
    region = _opt_str(kind, config, "region")
    timeout = _num(kind, config, "timeout_s", 30, 1, 600)
    wait = _num(kind, config, "wait_s", 300, 1, 3600)
    retries = int(_num(kind, config, "retries", 4, 0, 10))
    cfg = CloudConfig(cloud, clouds_file, region, timeout, wait, retries)
    norm: dict[str, Any] = {"cloud": cloud, "timeout_s": timeout, "wait_s": wait, "retries": retries}
    for key, value in (("clouds_file", clouds_file), ("region", region)):
        if value is not None:
            norm[key] = value
    return cfg, norm


def opt_str(kind: str, config: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    return _opt_str(kind, config, key, required=required)


@dataclass(frozen=True)
class TypeConfig:
    """A Cinder volume type's or Manila share type's cluster config."""

    cloud: CloudConfig
    type_name: str
    availability_zone: str | None
    ceph: dict[str, Any] | None  # the Berth rbd/cephfs config of the storage behind the type


def parse_type_config(
    kind: str, config: dict[str, Any], type_key: str, ceph_validator: Callable[[dict[str, Any]], Any], ceph_hint: str
) -> tuple[TypeConfig, dict[str, Any]]:
    """The cloud's keys, the type (`type_key`), the zone and the optional `ceph` config
    (validated by the Berth backend it names); returns the config and its normalised dict."""
    cloud, norm = parse_cloud(kind, config)
    name = _opt_str(kind, config, type_key, required=True)
    assert name is not None
    zone = _opt_str(kind, config, "availability_zone")
    ceph = config.get("ceph")
    if ceph is not None:
        if not isinstance(ceph, dict):
            raise bad_config(kind, f"'ceph' must be a {ceph_hint} config object")
        ceph = ceph_validator(ceph)[1]
        norm["ceph"] = ceph
    norm[type_key] = name
    if zone:
        norm["availability_zone"] = zone
    return TypeConfig(cloud, name, zone, ceph), norm


def gib(size_bytes: int) -> int:
    """OpenStack sizes are whole GiB: round up, never below 1."""
    return max(1, math.ceil(size_bytes / GIB))


def berth_name(berth_id: str) -> str:
    return NAME_PREFIX + berth_id


def berth_metadata(volume_id: str, tenant: str | None) -> dict[str, str]:
    """Metadata that ties the OpenStack object to its Berth record (values must not be blank)."""
    return {META_VOLUME: volume_id, **({META_TENANT: tenant} if tenant else {})}


def pool_capacity(pools: Any, key: str, backend: str | None) -> Capacity:
    """The summed capacity of the scheduler pools whose `key` capability (Cinder:
    volume_backend_name, Manila: share_backend_name) is `backend` (None: all). A pool that
    reports `infinite` or `unknown` makes it unknown (NotFound): placement then weighs the
    cluster without real free space."""
    total = free = 0.0
    for pool in pools:
        caps = pool.capabilities or {}
        if backend is None or caps.get(key) == backend:
            t, f = caps.get("total_capacity_gb"), caps.get("free_capacity_gb")
            if not isinstance(t, int | float) or not isinstance(f, int | float):
                raise NotFound(f"pool {pool.name} reports no capacity ({t!r})")
            total, free = total + t, free + f
    return Capacity(total_bytes=int(total * GIB), free_bytes=int(free * GIB))


# -- connection ----------------------------------------------------------------------------


class Cloud:
    """One openstacksdk connection, opened lazily from `clouds.yaml` and kept (keystoneauth
    renews its token itself); every call goes through `call`."""

    def __init__(self, cfg: CloudConfig, *, microversions: dict[str, str] | None = None) -> None:
        self.cfg = cfg
        self._microversions = microversions or {}
        self._conn: Any = None
        self._lock = threading.Lock()

    def connection(self) -> Any:
        with self._lock:
            if self._conn is None:
                import openstack.config
                import openstack.connection
                from keystoneauth1 import service_token

                files = [self.cfg.clouds_file] if self.cfg.clouds_file else None
                try:
                    loader = openstack.config.OpenStackConfig(config_files=files)
                    region = loader.get_one(cloud=self.cfg.cloud, region_name=self.cfg.region)
                except Exception as exc:  # openstacksdk raises its own config errors
                    raise BackendError(f"cloud {self.cfg.cloud!r} not usable: {exc}", reason="cloud_config") from exc
                region.config["api_timeout"] = self.cfg.timeout_s
                for service, version in self._microversions.items():
                    region.config.setdefault(f"{service}_default_microversion", version)
                conn = openstack.connection.Connection(config=region)
                # Cinder asks Nova about an attachment that names an instance unless the
                # request also carries a service token (Cinder bug 2004555); our own
                # credentials have the `service` role for that.
                auth = conn.session.auth
                assert auth is not None
                conn.session.auth = service_token.ServiceTokenAuthWrapper(user_auth=auth, service_auth=auth)
                self._conn = conn
            return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                finally:
                    self._conn = None

    async def call(self, what: str, fn: Callable[[Any], T]) -> T:
        """Run `fn(connection)` in a thread; retry what is transient; map the errors."""
        delay = 0.2
        for attempt in range(self.cfg.retries + 1):
            try:
                return await asyncio.to_thread(lambda: fn(self.connection()))
            except BerthError:
                raise
            except Exception as exc:
                if attempt < self.cfg.retries and is_transient(exc):
                    # Full jitter: parallel callers hitting a rate limit do not retry in step.
                    await asyncio.sleep(random.uniform(0, delay))
                    delay = min(delay * 2, 10.0)
                    log.info("%s: transient error, retrying (%d): %s", what, attempt + 1, short(exc))
                    continue
                raise map_error(exc, what) from exc
        raise AssertionError("unreachable")

    async def wait(
        self, what: str, fetch: Callable[[Any], Any], done: Callable[[Any], bool], failed: Callable[[Any], bool]
    ) -> Any:
        """Poll `fetch` until `done` (returns the object) or `failed` (BackendError) or
        `wait_s` passes (DeadlineExceeded). `fetch` returning None means "gone"."""
        deadline = time.monotonic() + self.cfg.wait_s
        delay = 0.1
        while True:
            obj = await self.call(what, fetch)
            if done(obj):
                return obj
            if obj is not None and failed(obj):
                raise BackendError(f"{what}: OpenStack reports status {getattr(obj, 'status', '?')!r}")
            if time.monotonic() >= deadline:
                status = getattr(obj, "status", "gone") if obj is not None else "gone"
                raise DeadlineExceeded(f"{what}: still {status!r} after {self.cfg.wait_s:g}s")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 2.0)


def _status(exc: BaseException) -> int | None:
    code = getattr(exc, "status_code", None)
    return int(code) if isinstance(code, int) else None


def short(exc: BaseException) -> str:
    details = getattr(exc, "details", None) or str(exc)
    status = _status(exc)
    return f"{type(exc).__name__}{f' (HTTP {status})' if status else ''}: {str(details)[:300]}"


def is_transient(exc: BaseException) -> bool:
    from keystoneauth1 import exceptions as ks
    from openstack import exceptions as sdk

    # A discovery that failed (the endpoint answered 5xx or not at all) is retried too: the
    # retries are bounded, and a wrong endpoint fails the same way each time.
    if isinstance(
        exc, ks.ConnectFailure | ks.ConnectTimeout | ks.RetriableConnectionFailure | sdk.ServiceDiscoveryException
    ):
        return True
    status = _status(exc)
    return status in RETRY_STATUS


def map_error(exc: Exception, what: str) -> BerthError:
    """An openstacksdk/keystoneauth exception as a Berth error."""
    from keystoneauth1 import exceptions as ks

    status = _status(exc)
    text = short(exc)
    lowered = text.lower()
    if status == 429:
        return BackendError(f"{what}: OpenStack is rate limiting Berth ({text})", reason="backend_rate_limited")
    if status == 404:
        return NotFound(f"{what}: not found ({text})")
    if status == 413 or "quota" in lowered or "limitexceeded" in lowered:
        return ResourceExhausted(f"{what}: OpenStack quota exceeded ({text})", reason="backend_quota_exceeded")
    if status in (401, 403):
        return PermissionDenied(f"{what}: OpenStack refused Berth's credentials ({text})", reason="backend_permission")
    if status == 409:
        if "already exists" in lowered or "duplicate" in lowered:
            return AlreadyExists(f"{what}: {text}", reason="backend_conflict")
        return FailedPrecondition(f"{what}: {text}", reason="backend_conflict")
    if status == 400 and ("status must be" in lowered or "in-use" in lowered or "attached" in lowered):
        return FailedPrecondition(f"{what}: {text}", reason="backend_conflict")
    if status == 400:
        return InvalidArgument(f"{what}: OpenStack rejected the request ({text})", reason="backend_rejected")
    if isinstance(exc, ks.ConnectTimeout | ks.RequestTimeout):
        return DeadlineExceeded(f"{what}: OpenStack did not answer in time ({text})")
    return BackendError(f"{what}: {text}")
