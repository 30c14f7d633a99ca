"""What the RBD and CephFS backends share: config, one librados connection, error
mapping, a small key-value index, and the OSD blocklist (the fencing primitive).

One `rados.Rados` per backend instance, opened lazily and kept: connecting costs a mon
round trip and a map fetch, and librados is thread-safe, so every blocking call runs in
`asyncio.to_thread` on the same handle.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from berth_shared.backends import ceph_bindings
from berth_shared.backends.base import BackendError
from berth_shared.errors import BerthError, InvalidArgument, NotFound, PermissionDenied

T = TypeVar("T")

# A fence lasts until unfence: Ceph's default blocklist expiry (1 h) would let a dead node
# that comes back write again. Ten years is "until removed" without relying on 0 semantics.
DEFAULT_FENCE_EXPIRE_S = 10 * 365 * 24 * 3600
_OBJECT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,127}$")
_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_POOL = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")


# -- configuration -------------------------------------------------------------------------


OP_TIMEOUT_S = 30


@dataclass(frozen=True)
class CephConfig:
    conf: str | None
    keyring: str | None
    user: str
    mon_host: str | None
    fence_expire_s: int

    def rados_kwargs(self) -> dict[str, Any]:
        # librados waits forever for an OSD or monitor by default: one call stuck on a
        # peering pool or a lost monitor would hold its worker thread, and the client's
        # shutdown() behind it, for good. Every call fails after this bound instead.
        bound = str(OP_TIMEOUT_S)
        conf: dict[str, str] = {"rados_osd_op_timeout": bound, "rados_mon_op_timeout": bound}
        if self.keyring:
            conf["keyring"] = self.keyring
        if self.mon_host:
            conf["mon_host"] = self.mon_host
        # Without a conf file, do not silently read /etc/ceph/ceph.conf of the host.
        return {"conffile": self.conf, "rados_id": self.user, "conf": conf}


def _bad(kind: str, message: str) -> InvalidArgument:
    return InvalidArgument(f"{kind} backend config: {message}", reason="invalid_backend_config")


def _opt_abs_path(kind: str, config: dict[str, Any], key: str) -> str | None:
    value = config.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/"):
        raise _bad(kind, f"'{key}' must be an absolute path")
    return value


def opt_int(kind: str, config: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _bad(kind, f"'{key}' must be an integer in [{lo}, {hi}]")
    return value


def pool_name(kind: str, config: dict[str, Any], key: str, *, required: bool) -> str | None:
    value = config.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not _POOL.match(value):
        raise _bad(kind, f"'{key}' must be a pool name" + ("" if required else " when given"))
    return value


def parse_common(kind: str, config: dict[str, Any]) -> tuple[CephConfig, dict[str, Any]]:
    """Validate the keys both backends take; return the config and its normalised dict."""
    if not isinstance(config, dict):
        raise _bad(kind, "must be an object")
    conf = _opt_abs_path(kind, config, "conf")
    keyring = _opt_abs_path(kind, config, "keyring")
    mon_host = config.get("mon_host")
    if mon_host is not None and (not isinstance(mon_host, str) or not mon_host.strip()):
        raise _bad(kind, "'mon_host' must be a non-empty string such as '[v2:10.0.0.1:3300,v1:10.0.0.1:6789]'")
    if conf is None and mon_host is None:
        raise _bad(kind, "give 'conf' (path to ceph.conf) or 'mon_host'")
    user = config.get("user", "admin")
    if not isinstance(user, str) or not _USER.match(user) or user.startswith("client."):
        raise _bad(kind, "'user' must be a cephx id without the 'client.' prefix, e.g. 'berth'")
    expire = opt_int(kind, config, "fence_expire_s", DEFAULT_FENCE_EXPIRE_S, 60, 100 * 365 * 24 * 3600)
    cfg = CephConfig(conf=conf, keyring=keyring, user=user, mon_host=mon_host, fence_expire_s=expire)
    norm: dict[str, Any] = {"user": user, "fence_expire_s": expire}
    for key, value in (("conf", conf), ("keyring", keyring), ("mon_host", mon_host)):
        if value is not None:
            norm[key] = value
    return cfg, norm


def check_object_id(value: str) -> str:
    """A Berth id as a Ceph object name (image, subvolume, snapshot)."""
    if not _OBJECT_ID.match(value):
        raise InvalidArgument(f"invalid backend object id {value!r}", reason="invalid_id")
    return value


# -- errors --------------------------------------------------------------------------------


def map_error(exc: Exception, what: str) -> BerthError:
    """A librados/librbd exception as a Berth error (BerthErrors pass through)."""
    if isinstance(exc, BerthError):
        return exc
    code = getattr(exc, "errno", None)
    if code == errno.ENOENT:
        return NotFound(f"{what}: not found ({exc})")
    if code in (errno.EACCES, errno.EPERM):
        return PermissionDenied(f"{what}: the cephx user lacks a capability ({exc})", reason="backend_permission")
    if code == errno.ENOSPC or code == errno.EDQUOT:
        return BackendError(f"{what}: the Ceph pool is full ({exc})", reason="backend_full")
    return BackendError(f"{what}: {type(exc).__name__}: {exc}")


def is_errno(exc: BaseException, *codes: int) -> bool:
    return getattr(exc, "errno", None) in codes


# -- connection ----------------------------------------------------------------------------


class CephConnection:
    """One lazily opened librados client, reopened if Ceph shut it down (e.g. blocklisted)."""

    def __init__(self, cfg: CephConfig, timeout_s: int = 20) -> None:
        self.cfg = cfg
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._client: Any = None
        # Calls running on the client: `close` waits for them. A client shut down under a
        # call in flight hangs that call for good (and the interpreter's exit with it), or
        # crashes the process.
        self._idle = threading.Condition()
        self._inflight = 0

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                rados = ceph_bindings.rados()
                client = rados.Rados(**self.cfg.rados_kwargs())
                try:
                    client.connect(timeout=self.timeout_s)
                except Exception as exc:
                    client.shutdown()
                    raise BackendError(f"cannot connect to Ceph as client.{self.cfg.user}: {exc}") from exc
                self._client = client
            return self._client

    def reset(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):  # a shut-down client may refuse: dropped anyway
                client.shutdown()

    def close(self) -> None:
        """Shut the client down once the calls in flight are over (each is bounded by the
        client's own timeouts; after twice the command timeout it is shut down anyway)."""
        with self._idle:
            self._idle.wait_for(lambda: self._inflight == 0, timeout=2 * self.timeout_s)
        self.reset()

    def run(self, fn: Callable[[Any], T], what: str) -> T:
        """Call fn(client); on ESHUTDOWN (our client was blocklisted) reconnect once."""
        with self._idle:
            self._inflight += 1
        try:
            for attempt in (1, 2):
                client = self.client()
                try:
                    return fn(client)
                except Exception as exc:
                    if is_errno(exc, errno.ESHUTDOWN) and attempt == 1:
                        self.reset()
                        continue
                    raise map_error(exc, what) from exc
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            with self._idle:
                self._inflight -= 1
                self._idle.notify_all()

    # JSON commands: `ret, outbuf, outs` -> parsed output, or a mapped error.
    def command(self, target: str, cmd: dict[str, Any], inbuf: bytes = b"", *, ok: Iterable[int] = ()) -> Any:
        body = json.dumps({"format": "json", **cmd})
        send = {"mon": "mon_command", "mgr": "mgr_command"}[target]

        def call(client: Any) -> tuple[int, bytes, str]:
            ret, out, outs = getattr(client, send)(body, inbuf, timeout=self.timeout_s)
            return int(ret), bytes(out), str(outs)

        ret, out, outs = self.run(call, f"ceph {cmd['prefix']}")
        if ret != 0 and -ret not in set(ok):
            raise command_error(cmd["prefix"], ret, outs)
        return parse_json(out) if ret == 0 else None

    def mon(self, cmd: dict[str, Any], inbuf: bytes = b"", *, ok: Iterable[int] = ()) -> Any:
        return self.command("mon", cmd, inbuf, ok=ok)

    def mgr(self, cmd: dict[str, Any], *, ok: Iterable[int] = ()) -> Any:
        return self.command("mgr", cmd, ok=ok)


def parse_json(out: bytes) -> Any:
    text = out.decode(errors="replace").strip()
    if not text:
        return None
    # Some commands (e.g. `osd blocklist ls`) print two JSON documents back to back.
    value, _ = json.JSONDecoder().raw_decode(text)
    return value


def command_error(prefix: str, ret: int, outs: str) -> BerthError:
    exc = OSError(-ret, outs or prefix)
    return map_error(exc, f"ceph {prefix}")


# -- an index in a key-value store ---------------------------------------------------------


class OmapIndex:
    """Keys in the omap of one RADOS object: what ties a snapshot id to its image, and the
    fences in force. Writes are single omap ops, so each is atomic."""

    def __init__(self, conn: CephConnection, pool: str, obj: str = "berth.index") -> None:
        self.conn, self.pool, self.obj = conn, pool, obj

    def get(self, key: str) -> dict[str, Any] | None:
        rados = ceph_bindings.rados()

        def read(client: Any) -> dict[str, Any] | None:
            with client.open_ioctx(self.pool) as ioctx, rados.ReadOpCtx() as op:
                it, _ = ioctx.get_omap_vals_by_keys(op, (key,))
                try:
                    ioctx.operate_read_op(op, self.obj)
                except rados.ObjectNotFound:
                    return None
                for _k, v in it:
                    return dict(json.loads(v))
            return None

        return self.conn.run(read, f"read index {key}")

    def set(self, key: str, value: dict[str, Any]) -> None:
        rados = ceph_bindings.rados()

        def write(client: Any) -> None:
            with client.open_ioctx(self.pool) as ioctx, rados.WriteOpCtx() as op:
                ioctx.set_omap(op, (key,), (json.dumps(value, sort_keys=True).encode(),))
                ioctx.operate_write_op(op, self.obj)

        self.conn.run(write, f"write index {key}")

    def remove(self, key: str) -> None:
        rados = ceph_bindings.rados()

        def write(client: Any) -> None:
            with client.open_ioctx(self.pool) as ioctx, rados.WriteOpCtx() as op:
                ioctx.remove_omap_keys(op, (key,))
                with contextlib.suppress(rados.ObjectNotFound):
                    ioctx.operate_write_op(op, self.obj)

        self.conn.run(write, f"remove index {key}")


class ConfigKeyIndex:
    """The same interface over the mon's config-key store (for CephFS, where Berth has no
    pool of its own to write to). Small: only snapshots and fences live here."""

    def __init__(self, conn: CephConnection, prefix: str) -> None:
        self.conn, self.prefix = conn, prefix.rstrip("/") + "/"

    def get(self, key: str) -> dict[str, Any] | None:
        def call(client: Any) -> tuple[int, bytes]:
            body = json.dumps({"prefix": "config-key get", "key": self.prefix + key})
            ret, out, _ = client.mon_command(body, b"", timeout=self.conn.timeout_s)
            return int(ret), bytes(out)

        ret, out = self.conn.run(call, f"read index {key}")
        if ret == -errno.ENOENT:
            return None
        if ret != 0:
            raise command_error("config-key get", ret, "")
        return dict(json.loads(out))

    def set(self, key: str, value: dict[str, Any]) -> None:
        self.conn.mon({"prefix": "config-key set", "key": self.prefix + key, "val": json.dumps(value, sort_keys=True)})

    def remove(self, key: str) -> None:
        self.conn.mon({"prefix": "config-key rm", "key": self.prefix + key}, ok=(errno.ENOENT,))

    def keys(self, sub: str) -> dict[str, dict[str, Any]]:
        """Every entry under `sub` (e.g. `quarantine/`): {rest of the key: value}."""
        dumped = self.conn.mon({"prefix": "config-key dump", "key": self.prefix + sub}) or {}
        start = len(self.prefix + sub)
        return {k[start:]: dict(json.loads(v)) for k, v in dumped.items() if k.startswith(self.prefix + sub)}


# -- the OSD blocklist ---------------------------------------------------------------------


def normalize_addr(addr: str) -> str:
    """A client address as the blocklist wants it: `ip:port/nonce`, without the messenger
    type. A bare IP means every client of that host (`ip:0/0`), which Ceph matches against
    any client from that IP: the "range" form that works on every release."""
    a = addr.strip()
    for prefix in ("v1:", "v2:", "any:"):
        if a.startswith(prefix):
            a = a[len(prefix) :]
    try:
        ip = ipaddress.ip_address(a.strip("[]"))
    except ValueError:
        pass
    else:
        return f"[{ip}]:0/0" if ip.version == 6 else f"{ip}:0/0"
    if "/" not in a or ":" not in a:
        raise InvalidArgument(
            f"not a Ceph client address: {addr!r} (want ip:port/nonce or an IP)", reason="invalid_address"
        )
    return a


def addr_ip(addr: str) -> str:
    host = normalize_addr(addr).rsplit("/", 1)[0].rsplit(":", 1)[0]
    return host.strip("[]")


def addr_matches(addr: str, fenced: Iterable[str]) -> bool:
    """Whether a client address is covered by one of the fenced entries (exact or host-wide)."""
    a = normalize_addr(addr)
    for f in fenced:
        f = normalize_addr(f)
        if a == f or (f.endswith(":0/0") and addr_ip(a) == addr_ip(f)):
            return True
    return False


class Blocklist:
    def __init__(self, conn: CephConnection) -> None:
        self.conn = conn

    def add(self, addr: str, expire_s: int) -> None:
        # Re-adding refreshes the expiry, so a repeated fence stays a full-length fence.
        self.conn.mon(
            {"prefix": "osd blocklist", "blocklistop": "add", "addr": normalize_addr(addr), "expire": float(expire_s)}
        )

    def remove(self, addr: str) -> None:
        # Removing an entry that is not there answers 0 ("isn't blocklisted"): idempotent.
        self.conn.mon({"prefix": "osd blocklist", "blocklistop": "rm", "addr": normalize_addr(addr)})

    def entries(self) -> list[str]:
        out = self.conn.mon({"prefix": "osd blocklist ls"}) or []
        return [str(e["addr"]) for e in out if isinstance(e, dict) and "addr" in e]

    def osdmap_epoch(self) -> int:
        return int(self.conn.mon({"prefix": "osd dump"})["epoch"])

    def wait_enforced(self, epoch: int, timeout_s: float = 10.0) -> bool:
        """Wait until every up OSD has the osdmap `epoch` (the one carrying the blocklist):
        from then on a fenced client's writes are refused everywhere, not just at the mon.
        Returns False if some OSD did not confirm in time (the fence still holds once the
        map arrives; a new client's first op carries the epoch and forces it)."""
        dump = self.conn.mon({"prefix": "osd dump"})
        pending = {int(o["osd"]) for o in dump.get("osds", []) if o.get("up")}
        deadline = time.monotonic() + timeout_s
        observable = True
        while pending and observable and time.monotonic() < deadline:
            for osd in sorted(pending):

                def status(client: Any, osd: int = osd) -> Any:
                    return client.osd_command(osd, json.dumps({"prefix": "status", "format": "json"}), b"", timeout=5)

                try:
                    ret, out, _ = self.conn.run(status, f"osd.{osd} status")
                except PermissionDenied:
                    observable = False  # a user without OSD caps cannot watch: rely on the epoch
                    break
                except BerthError:
                    continue
                if int(ret) in (-errno.EACCES, -errno.EPERM):
                    observable = False
                    break
                if int(ret) == 0 and int(json.loads(out).get("newest_map", 0)) >= epoch:
                    pending.discard(osd)
            if pending:
                time.sleep(0.05)
        self.conn.run(lambda c: c.wait_for_latest_osdmap(), "wait for osdmap")
        return observable and not pending
