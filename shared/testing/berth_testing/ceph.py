"""A real, throw-away Ceph cluster on loopback for tests: one mon, mgr, OSD and MDS.

Written vstart-style by hand (see shared notes `ceph-on-loopback.md` for the measured
facts this follows): every daemon runs in the foreground as our child (`-f`, output to a
log file) so that we own exactly its pid, and everything lives under one short directory
(admin socket paths must stay under the 107-byte unix socket limit). Readiness is polled
through librados, never the `ceph` CLI (0.25-0.8 s per call).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from berth_shared.backends import ceph_bindings
from berth_testing.host import apt_install

PACKAGES = (
    "ceph-mon",
    "ceph-osd",
    "ceph-mgr",
    "ceph-mds",
    "ceph-common",
    "python3-rbd",
    "python3-rados",
    "python3-cephfs",
    "ceph-fuse",
    "rbd-fuse",
)
BINARIES = ("ceph-mon", "ceph-osd", "ceph-mgr", "ceph-mds", "ceph-authtool", "monmaptool", "rbd-fuse", "ceph-fuse")
RBD_POOL = "rbd"
RBD_DATA_POOL = "rbd-data"
FS_NAME = "cephfs"
ObjectStore = Literal["memstore", "bluestore"]


class CephUnavailable(RuntimeError):
    """Ceph cannot run here (packages missing and not installable, or daemons fail)."""


def missing_packages() -> list[str]:
    missing = [b for b in BINARIES if shutil.which(b) is None]
    try:
        ceph_bindings.load("rados")
        ceph_bindings.load("rbd")
        ceph_bindings.load("cephfs")
    except ceph_bindings.CephBindingsMissing as exc:
        missing.append(f"python bindings ({exc.detail})")
    return missing


def ensure_packages(timeout: float = 600.0) -> None:
    """Install the Debian packages when any part is missing (needs root and apt-get)."""
    missing = missing_packages()
    if not missing:
        return
    why = apt_install(list(PACKAGES), timeout)
    if why:
        raise CephUnavailable(f"Ceph is not installed ({', '.join(missing)}): {why}")
    still = missing_packages()
    if still:
        raise CephUnavailable(f"installed {' '.join(PACKAGES)} but still missing: {', '.join(still)}")


def _free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def _run(cmd: list[str], timeout: float = 60.0) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise CephUnavailable(f"{' '.join(cmd)} timed out after {timeout}s") from exc
    if proc.returncode != 0:
        raise CephUnavailable(
            f"{' '.join(cmd)} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-800:]}"
        )
    return proc.stdout


def _tail(d: _Daemon, lines: int = 15) -> str:
    out = []
    for path in (d.log, d.log.with_name(f"{d.name}.log")):
        with contextlib.suppress(OSError):
            out += path.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join(out)


@dataclass
class _Daemon:
    name: str  # e.g. "osd.0"
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class CephCluster:
    """One-node Ceph: `start()`, use `conf`, `keyring`, `client()`, then `stop()`."""

    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="berth-ceph-", dir="/tmp")))
    objectstore: ObjectStore = "memstore"
    # Where every daemon binds and what the monmap advertises: loopback, or an address that
    # processes in other network namespaces reach (a partition lab's bridge, `Lab.gateway`,
    # which must exist before `start()`).
    address: str = "127.0.0.1"
    fsid: str = field(default_factory=lambda: str(uuid.uuid4()))
    timings: dict[str, float] = field(default_factory=dict)
    _daemons: dict[str, _Daemon] = field(default_factory=dict)
    _cleanups: list[Callable[[], None]] = field(default_factory=list)
    _client: Any = None
    _t0: float = 0.0

    # -- paths -------------------------------------------------------------------------

    @property
    def conf(self) -> Path:
        return self.base / "ceph.conf"

    @property
    def keyring(self) -> Path:
        """client.admin only (the mon keyring with `mon.` is separate)."""
        return self.base / "admin.keyring"

    @property
    def mon_addrs(self) -> str:
        return f"[v2:{self.address}:{self.v2_port},v1:{self.address}:{self.v1_port}]"

    @property
    def user(self) -> str:
        return "admin"

    def backend_config(self, kind: Literal["rbd", "cephfs"] = "rbd", **extra: Any) -> dict[str, Any]:
        """A storage cluster config for the Berth backends pointing at this cluster."""
        cfg: dict[str, Any] = {"conf": str(self.conf), "keyring": str(self.keyring), "user": self.user}
        cfg.update({"pool": RBD_POOL} if kind == "rbd" else {"fs_name": FS_NAME})
        cfg.update(extra)
        return cfg

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> None:
        t0 = self._t0 = time.monotonic()
        try:
            self._write_config()
            self._mkfs_mon()
            self._spawn("mon.a", ["ceph-mon", "-f", "-i", "a"])
            self._connect(timeout)
            self.timings["mon"] = time.monotonic() - t0
            self._start_mgr()
            self._start_osd()
            self._start_mds()
            self._create_pools()
            self._wait_healthy(t0 + timeout)
            self.timings["healthy"] = time.monotonic() - t0
        except BaseException as exc:
            self.stop(keep=True)  # keep the logs the message points to
            if isinstance(exc, Exception) and not isinstance(exc, CephUnavailable):
                raise CephUnavailable(
                    f"cluster start failed: {type(exc).__name__}: {exc}; logs in {self.base}/log"
                ) from exc
            raise

    def _write_config(self) -> None:
        for sub in ("log", "run", "mon.a", "mgr.x", "osd.0", "mds.a"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        self.v2_port, self.v1_port = _free_port(self.address), _free_port(self.address)
        b = self.base
        store = (
            f"osd objectstore = bluestore\nbluestore block path = {b}/osd.0.block\nbluestore block create = true\n"
            "bluestore block size = 4294967296\nbluestore fsck on mount = false\nbluestore fsck on mkfs = false\n"
            "bluestore cache size = 67108864\nbluestore block db create = false\nbluestore block wal create = false\n"
            if self.objectstore == "bluestore"
            # 16 GiB reported (RAM holds only what is written): Manila's scheduler takes each
            # new share's size off the free space it last heard of, and with 4 GiB, less what
            # the session's earlier tests wrote, a few 1 GiB shares in a row found no host.
            else "osd objectstore = memstore\nmemstore device bytes = 17179869184\n"
        )
        self.conf.write_text(
            f"""[global]
fsid = {self.fsid}
mon host = {self.mon_addrs}
public addr = {self.address}
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
keyring = {self.keyring}
run dir = {b}/run
admin socket = {b}/run/$name.$pid.asok
log file = {b}/log/$name.log
pid file = {b}/run/$name.pid
log to stderr = false
err to stderr = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 2
mon data avail crit = 1
# One host, tests only: shorter beacons and periods keep start-up short (measured: HEALTH_OK
# with all PGs clean and the mgr available in 3-5 s instead of 9-10 s; each mon write
# otherwise waits up to the 1 s paxos proposal interval).
mds beacon interval = 1
paxos propose interval = 0.1
mgr stats period = 1
mon mgr digest period = 1
mon mgr beacon grace = 10
osd heartbeat grace = 8
rbd default features = layering,exclusive-lock,object-map,fast-diff,deep-flatten
[mon]
mon data = {b}/mon.a
keyring = {b}/mon.keyring
[mgr]
mgr data = {b}/mgr.x
keyring = {b}/mgr.x/keyring
[osd]
osd data = {b}/osd.0
keyring = {b}/osd.0/keyring
{store}osd max object name len = 460
osd max object namespace len = 64
[mds]
mds data = {b}/mds.a
keyring = {b}/mds.a/keyring
# Subvolume clones wait on MDS ticks (measured: 10 s per clone at the default 5 s tick,
# 0.8 s at 0.2 s); a production MDS keeps its default.
mds tick interval = 0.2
"""
        )

    def _tool(self, *args: str) -> str:
        return (
            _run([*args, "-c", str(self.conf)]) if args[0] not in ("ceph-authtool", "monmaptool") else _run(list(args))
        )

    def _mkfs_mon(self) -> None:
        b = self.base
        admin_caps = [
            "--cap",
            "mon",
            "allow *",
            "--cap",
            "osd",
            "allow *",
            "--cap",
            "mds",
            "allow *",
            "--cap",
            "mgr",
            "allow *",
        ]
        self._tool(
            "ceph-authtool", "--create-keyring", str(self.keyring), "--gen-key", "-n", "client.admin", *admin_caps
        )
        mon_kr = str(b / "mon.keyring")
        self._tool("ceph-authtool", "--create-keyring", mon_kr, "--gen-key", "-n", "mon.", "--cap", "mon", "allow *")
        self._tool("ceph-authtool", mon_kr, "--import-keyring", str(self.keyring))
        monmap = str(b / "monmap")
        addrs = self.mon_addrs
        self._tool(
            "monmaptool",
            "--create",
            "--fsid",
            self.fsid,
            "--addv",
            "a",
            addrs,
            "--enable-all-features",
            "--clobber",
            monmap,
        )
        self._tool("ceph-mon", "--mkfs", "-i", "a", "--monmap", monmap, "--keyring", mon_kr)

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = self.base / "log" / f"{name}.out"
        daemon = _Daemon(name, [*argv, "-c", str(self.conf)], log)
        with open(log, "ab") as out:
            # Foreground + redirected output: a daemonised mgr loses its stdio and
            # `fs subvolume authorize` then fails with EBADF (measured).
            daemon.proc = subprocess.Popen(
                daemon.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self._daemons[name] = daemon

    def _connect(self, timeout: float) -> None:
        rados = ceph_bindings.rados()
        client = rados.Rados(conffile=str(self.conf), rados_id=self.user, conf={"keyring": str(self.keyring)})
        client.connect(timeout=int(timeout))
        self._client = client

    def client(self) -> Any:
        """The fixture's own admin `rados.Rados` (tests may use it; do not shut it down)."""
        if self._client is None:
            raise RuntimeError("cluster not started")
        return self._client

    def mon_command(self, prefix: str, inbuf: bytes = b"", **args: Any) -> Any:
        cmd = {"prefix": prefix, "format": "json", **args}
        ret, out, err = self.client().mon_command(json.dumps(cmd), inbuf, timeout=30)
        if ret != 0:
            raise CephUnavailable(f"mon command {prefix!r} failed ({ret}): {err}")
        return json.loads(out) if out.strip() else None

    def _keyring_for(self, entity: str, path: Path, caps: list[str]) -> None:
        out = self.mon_command("auth get-or-create", entity=entity, caps=caps)
        key = out[0]["key"]
        path.write_text(f"[{entity}]\n\tkey = {key}\n")

    def _start_mgr(self) -> None:
        caps = ["mon", "allow profile mgr", "osd", "allow *", "mds", "allow *"]
        self._keyring_for("mgr.x", self.base / "mgr.x" / "keyring", caps)
        self._spawn("mgr.x", ["ceph-mgr", "-f", "-i", "x"])

    def _start_osd(self) -> None:
        osd_uuid = str(uuid.uuid4())
        secret = _run(["ceph-authtool", "--gen-print-key"]).strip()
        out = self.mon_command("osd new", inbuf=json.dumps({"cephx_secret": secret}).encode(), uuid=osd_uuid)
        osd_id = str(out["osdid"]) if isinstance(out, dict) else "0"
        if osd_id != "0":
            raise CephUnavailable(f"expected osd.0, the mon allocated osd.{osd_id}")
        self._tool("ceph-osd", "-i", "0", "--mkfs", "--key", secret, "--osd-uuid", osd_uuid)
        # mkfs does not write the keyring file for us when the data dir is not bluestore's.
        (self.base / "osd.0" / "keyring").write_text(f"[osd.0]\n\tkey = {secret}\n")
        self._spawn("osd.0", ["ceph-osd", "-f", "-i", "0"])

    def _start_mds(self) -> None:
        caps = [
            "mon",
            "allow profile mds",
            "osd",
            "allow rw tag cephfs *=*",
            "mds",
            "allow",
            "mgr",
            "allow profile mds",
        ]
        self._keyring_for("mds.a", self.base / "mds.a" / "keyring", caps)
        self._spawn("mds.a", ["ceph-mds", "-f", "-i", "a"])

    def _create_pools(self) -> None:
        for pool in (RBD_POOL, RBD_DATA_POOL, "cephfs_meta", "cephfs_data"):
            self.mon_command("osd pool create", pool=pool, pg_num=8)
        for pool in (RBD_POOL, RBD_DATA_POOL):
            self.mon_command("osd pool application enable", pool=pool, app="rbd")
        self.mon_command("fs new", fs_name=FS_NAME, metadata="cephfs_meta", data="cephfs_data")
        # One MDS and no standby: otherwise HEALTH_WARN (insufficient standby) forever.
        self.mon_command("fs set", fs_name=FS_NAME, var="standby_count_wanted", val="0")
        # `rbd pool init` needs the OSD up (it writes objects); done in _wait_healthy.

    def _health(self) -> tuple[str, list[str]]:
        out = self.mon_command("health")
        checks = out.get("checks", {})
        return str(out.get("status")), [f"{k}: {v.get('summary', {}).get('message', '')}" for k, v in checks.items()]

    def _wait_healthy(self, deadline: float) -> None:
        rbd_ready = False
        status, checks = "unknown", ["not polled yet"]
        while time.monotonic() < deadline:
            for d in self._daemons.values():
                if d.proc is not None and d.proc.poll() is not None:
                    raise CephUnavailable(
                        f"{d.name} exited with {d.proc.returncode}; logs in {self.base}/log; last lines:\n{_tail(d)}"
                    )
            if not rbd_ready and self._osd_up():
                self.timings.setdefault("osd_up", time.monotonic() - self._t0)
                rbd = ceph_bindings.rbd()
                with self.client().open_ioctx(RBD_POOL) as ioctx:
                    rbd.RBD().pool_init(ioctx, False)
                rbd_ready = True
            if rbd_ready:
                status, checks = self._health()
                ok = {"health_ok": status == "HEALTH_OK", "settled": self._settled(), "mds_active": self._mds_active()}
                for name, done in ok.items():
                    if done:
                        self.timings.setdefault(name, time.monotonic() - self._t0)
                if all(ok.values()):
                    return
            time.sleep(0.25)
        raise CephUnavailable(f"cluster not HEALTH_OK in time: {status} {checks}; logs in {self.base}/log")

    def _settled(self) -> bool:
        """The mgr is active (HEALTH_OK does not say so in its first seconds: the mgr map
        grace) and it reports every PG of every pool active+clean."""
        out = self.mon_command("status")
        if not out.get("mgrmap", {}).get("available"):
            return False
        pgmap = out.get("pgmap", {})
        pools = {RBD_POOL, RBD_DATA_POOL, "cephfs_meta", "cephfs_data"}
        states = pgmap.get("pgs_by_state", [])
        clean = sum(s["count"] for s in states if s.get("state_name") == "active+clean")
        return bool(pgmap.get("num_pools", 0) >= len(pools) and clean == pgmap.get("num_pgs", -1) > 0)

    def _osd_up(self) -> bool:
        out = self.mon_command("osd stat")
        return int(out.get("num_up_osds", 0)) >= 1

    def _mds_active(self) -> bool:
        out = self.mon_command("fs dump")
        for fs in out.get("filesystems", []):
            infos = fs.get("mdsmap", {}).get("info", {})
            if any(i.get("state") == "up:active" for i in infos.values()):
                return True
        return False

    # -- tests' teardown hooks ---------------------------------------------------------

    def on_stop(self, fn: Callable[[], None]) -> None:
        """Run `fn` before the daemons stop (last registered, first run)."""
        self._cleanups.append(fn)

    def stop(self, keep: bool = False) -> None:
        """Tear down in the order that does not hang: file systems, loop devices, fuse
        mounts (all via the callbacks and a sweep of our own clients), then the daemons.
        The directory goes too unless `keep` or BERTH_KEEP_CEPH=1."""
        while self._cleanups:
            fn = self._cleanups.pop()
            with contextlib.suppress(Exception):  # teardown goes on: the daemons must still stop
                fn()
        if self.conf.exists():
            from berth_shared.node import ceph as node_ceph

            node_ceph.sweep(self.conf)
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.shutdown()
            self._client = None
        self._stop_daemons()
        if not keep and os.environ.get("BERTH_KEEP_CEPH") != "1":
            shutil.rmtree(self.base, ignore_errors=True)

    def _stop_daemons(self, grace: float = 2.0) -> None:
        # The MDS needs ~10 s to stop cleanly on SIGTERM: TERM everything, KILL after 2 s.
        procs = [d.proc for d in self._daemons.values() if d.proc is not None and d.proc.poll() is None]
        for p in procs:
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in procs:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._daemons.clear()

    def restart_osd(self, timeout: float = 60.0) -> None:
        """Kill and restart the OSD (only meaningful with objectstore='bluestore':
        memstore loses all data on restart)."""
        d = self._daemons["osd.0"]
        if d.proc is not None:
            d.proc.kill()
            d.proc.wait()
        # Mark it down now rather than after the heartbeat grace, so "up" below means the new one.
        self.mon_command("osd down", ids=["0"])
        self._t0 = time.monotonic()
        self._spawn("osd.0", ["ceph-osd", "-f", "-i", "0"])
        self._wait_healthy(time.monotonic() + timeout)


def attach_skip_reason(kind: Literal["rbd", "cephfs"]) -> str | None:
    """Why this host cannot attach a Ceph volume of `kind` on the node side (None: it can)."""
    from berth_shared.node import ceph as node_ceph

    if os.geteuid() != 0:
        return "needs root (loop devices, fuse mounts)"
    if kind == "rbd" and not node_ceph.rbd_methods():
        return "needs a way to attach RBD here: the rbd module, rbd-nbd with /dev/nbd*, or rbd-fuse + losetup"
    if kind == "rbd" and not shutil.which("mkfs.ext4"):
        return "needs mkfs.ext4"
    if kind == "cephfs" and not node_ceph.cephfs_methods():
        return "needs ceph-fuse with /dev/fuse, or the kernel CephFS client"
    return None


def skip_unless_can_attach(kind: Literal["rbd", "cephfs"]) -> None:
    """Skip the test with the reason when this host cannot attach `kind` (call it once the
    `ceph` fixture has installed the packages: the fuse clients come with them)."""
    why = attach_skip_reason(kind)
    if why:
        pytest.skip(why)
