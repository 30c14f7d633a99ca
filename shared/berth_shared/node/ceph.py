"""Node side of the Ceph backends: attach an RBD image as a block device, mount CephFS.

RBD attach picks the best path this host has:
  krbd (`rbd map`, needs /sys/bus/rbd)  >  rbd-nbd (needs /dev/nbd*)  >  rbd-fuse + loop.
The last one is what works on hosts without the rbd and nbd kernel modules: rbd-fuse
exposes the image as a file through librbd, and a loop device over that file is a real
block device that can be formatted and mounted.

Each attach reports the Ceph client address it uses, which the node records on the
volume (`RbdBackend.record_node_address`) so that a fence knows what to blocklist.

Teardown order matters: a file system over a loop over a fuse file must be unmounted
first, then the loop detached, then the fuse mount lifted; in any other order `losetup`
can hang in D state (measured).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from berth_shared.backends import ceph_bindings
from berth_shared.errors import FailedPrecondition, Unavailable
from berth_shared.node import host, mounts
from berth_shared.node.run import HostCommandError, run

RbdMethod = Literal["krbd", "nbd", "fuse"]
FsMethod = Literal["kernel", "fuse"]


class AttachError(Unavailable):
    title = "Attach failed"


@dataclass(frozen=True)
class CephClientSpec:
    """How this node talks to Ceph: conf, keyring and cephx id (without `client.`)."""

    conf: str
    keyring: str
    user: str


@dataclass
class RbdAttachment:
    method: RbdMethod
    pool: str
    image: str
    device: str  # /dev/rbdN, /dev/nbdN or /dev/loopN
    client_address: str | None
    fuse_dir: str | None = None  # rbd-fuse mount point (fuse method)
    pid: int | None = None  # rbd-fuse process (fuse method)


@dataclass
class CephFsMount:
    method: FsMethod
    target: str
    client_address: str | None
    pid: int | None = None
    asok: str | None = None  # ceph-fuse's admin socket: removed on unmount
    log: str | None = None  # ceph-fuse's log: removed after a clean unmount


# -- what this host can do -----------------------------------------------------------------


def rbd_methods() -> list[RbdMethod]:
    """The attach paths available here, best first."""
    methods: list[RbdMethod] = []
    if Path("/sys/bus/rbd").exists() and shutil.which("rbd"):
        methods.append("krbd")
    if shutil.which("rbd-nbd") and Path("/dev/nbd0").exists():
        methods.append("nbd")
    if shutil.which("rbd-fuse") and Path("/dev/fuse").exists() and shutil.which("losetup"):
        methods.append("fuse")
    return methods


def cephfs_methods() -> list[FsMethod]:
    methods: list[FsMethod] = []
    try:
        if any(line.split()[-1] == "ceph" for line in Path("/proc/filesystems").read_text().splitlines() if line):
            methods.append("kernel")
    except OSError:
        pass
    if shutil.which("ceph-fuse") and Path("/dev/fuse").exists():
        methods.append("fuse")
    return methods


# -- client addresses ----------------------------------------------------------------------


def _watchers(spec: CephClientSpec, pool: str, image: str) -> set[str]:
    rados, rbd = ceph_bindings.rados(), ceph_bindings.rbd()
    client = rados.Rados(conffile=spec.conf, rados_id=spec.user, conf={"keyring": spec.keyring})
    client.connect(timeout=20)
    try:
        with client.open_ioctx(pool) as ioctx, rbd.Image(ioctx, image, read_only=True) as img:
            return {str(w["addr"]) for w in img.watchers_list()}
    finally:
        client.shutdown()


def _new_watcher(spec: CephClientSpec, pool: str, image: str, before: set[str], timeout: float = 10.0) -> str | None:
    """The address of the client this attach started: the watcher that was not there
    before. (librbd clients have no admin-socket command that tells their address; the
    single-writer rule means no other node attaches this image at the same time.)"""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = _watchers(spec, pool, image) - before
        if len(new) == 1:
            return new.pop()
        time.sleep(0.1)
    return None


# -- RBD -----------------------------------------------------------------------------------


def attach_rbd(
    spec: CephClientSpec,
    pool: str,
    image: str,
    workdir: Path,
    *,
    method: RbdMethod | None = None,
    read_only: bool = False,
    timeout: float = 30.0,
) -> RbdAttachment:
    """Make the image a block device on this host; `workdir` holds the fuse mount point."""
    available = rbd_methods()
    chosen = method or (available[0] if available else None)
    if chosen is None or chosen not in available:
        raise FailedPrecondition(
            f"no way to attach RBD here (want {method or 'any'}, have {available or 'none'}): "
            "need the rbd kernel module, rbd-nbd with /dev/nbd*, or rbd-fuse with /dev/fuse and losetup",
            reason="attach_unsupported",
        )
    before = _watchers(spec, pool, image)
    if chosen == "krbd":
        return _attach_krbd(spec, pool, image, read_only)
    if chosen == "nbd":
        return _attach_nbd(spec, pool, image, read_only, before)
    return _attach_fuse(spec, pool, image, workdir, read_only, before, timeout)


def _ceph_args(spec: CephClientSpec) -> list[str]:
    return ["-c", spec.conf, "--id", spec.user, "--keyring", spec.keyring]


def _attach_krbd(spec: CephClientSpec, pool: str, image: str, read_only: bool) -> RbdAttachment:
    cmd = ["rbd", "map", f"{pool}/{image}", *_ceph_args(spec)] + (["--read-only"] if read_only else [])
    device = run(*cmd).stdout.strip()
    addr = None
    for dev in Path("/sys/bus/rbd/devices").iterdir():
        if (dev / "name").read_text().strip() == image and (dev / "pool").read_text().strip() == pool:
            path = dev / "client_addr"  # kernels >= 5.x
            addr = path.read_text().strip() if path.exists() else None
    return RbdAttachment("krbd", pool, image, device, addr)


def _attach_nbd(spec: CephClientSpec, pool: str, image: str, read_only: bool, before: set[str]) -> RbdAttachment:
    cmd = ["rbd-nbd", "map", f"{pool}/{image}", *_ceph_args(spec)] + (["--read-only"] if read_only else [])
    device = run(*cmd).stdout.strip()
    return RbdAttachment("nbd", pool, image, device, _new_watcher(spec, pool, image, before))


def _attach_fuse(
    spec: CephClientSpec, pool: str, image: str, workdir: Path, read_only: bool, before: set[str], timeout: float
) -> RbdAttachment:
    fuse_dir = workdir / f"rbd-fuse-{pool}-{image}"
    fuse_dir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"rbd-fuse-{pool}-{image}.log"
    # Foreground in its own session: we know its pid, and it outlives a restart of the caller.
    # librbd's cache off: rbd-fuse answers every fsync with 0 whatever its rbd_flush returned
    # (rbdfs_fsync), so with the cache on (writeback from the first flush on) a write still
    # cached when a fence lands is acknowledged and lost: seen once in the partition test, an
    # fsynced record of the fenced node missing on the next owner's mount. Without the cache
    # each write has reached the OSD when rbd-fuse answers it, and a fenced one fails (EIO).
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            ["rbd-fuse", "-f", *_ceph_args(spec), "--rbd-cache=false", "-p", pool, "-r", image, str(fuse_dir)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    image_file = fuse_dir / image
    deadline = time.monotonic() + timeout
    while not (os.path.ismount(fuse_dir) and image_file.exists()):
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop_process(proc.pid, exit_grace=0)
            raise AttachError(f"rbd-fuse did not expose {pool}/{image} (exit {proc.poll()}); see {log}")
        time.sleep(0.05)
    att = RbdAttachment("fuse", pool, image, "", None, str(fuse_dir), proc.pid)
    try:
        att.device = host.attach_loop(image_file, direct_io=True, readonly=read_only)
        att.client_address = _new_watcher(spec, pool, image, before)
    except BaseException:
        detach_rbd(att)
        raise
    return att


def detach_rbd(att: RbdAttachment, mountpoint: str | None = None, *, fenced: bool = False) -> None:
    """Unmount (if given), detach the device, lift the fuse mount. Idempotent.

    `fenced`: the client is blocklisted. A blocklisted rbd-fuse stops answering some FUSE
    requests for good (measured: after a `sync(2)` on the fenced host it spun in `rbd_list2`
    under a lookup, and every later request on the mount, a `stat` of the mount point
    included, waited in D state). So its daemon is killed first: that aborts the FUSE
    connection, every pending and later request fails at once, and the file system, the
    loop device and the mount can go without hanging. The image's lock was broken by the
    fence: nothing is lost that the fence had not already cut off."""
    if fenced and att.method == "fuse" and att.pid:
        _stop_process(att.pid, exit_grace=0, term_grace=0)
    if mountpoint:
        unmount(mountpoint, fenced=fenced)
    if att.method == "krbd" and att.device:
        # A blocklisted krbd client cannot close its image cleanly: force the unmap.
        run("rbd", "unmap", *(["-o", "force"] if fenced else []), att.device, check=False)
    elif att.method == "nbd" and att.device:
        run("rbd-nbd", "unmap", att.device, check=False)
    elif att.method == "fuse":
        if att.device and host.loop(att.device) is not None:
            host.detach_loop(att.device)
        if att.fuse_dir:
            _unmount_fuse(att.fuse_dir)
        if att.pid:
            _stop_process(att.pid, exit_grace=0.5 if fenced else 10.0)


def _unmount_fuse(path: str) -> None:
    if not mounts.is_mounted(path):
        return
    if run("fusermount", "-u", path, check=False).returncode != 0:
        # A fenced client's fuse daemon may no longer answer: detach lazily.
        run("fusermount", "-u", "-z", path, check=False)


def _exited(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child (a restarted plugin): look at /proc instead
        return not Path(f"/proc/{pid}").exists() or "(Z)" in _proc_state(pid)
    return done == pid


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")", 1)[1][:3]
    except (OSError, IndexError):
        return "(Z)"


def _stop_process(pid: int, exit_grace: float = 10.0, term_grace: float = 3.0) -> None:
    """Let a fuse daemon exit by itself first: after its unmount it closes the image, which
    releases the exclusive lock and the watch. Killed instead, both linger until the OSD's
    watch timeout (30 s) and the next owner waits for them."""
    for sig, grace in ((None, exit_grace), (signal.SIGTERM, term_grace), (signal.SIGKILL, 10.0)):
        if sig is not None:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                _exited(pid)
                return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if _exited(pid):
                return
            time.sleep(0.02)


# -- file systems on block devices ---------------------------------------------------------

is_mounted = mounts.is_mounted  # for the attacher's tests, until they use `mounts`


def unmount(target: str, *, fenced: bool = False) -> None:
    """Unmount a file system over an RBD device. `fenced`: its I/O fails, which can make a
    clean unmount impossible, so it is detached lazily (harmless: the client is cut off)."""
    try:
        mounts.umount(target)
    except HostCommandError:
        if not fenced:
            raise
        mounts.umount(target, lazy=True)


# -- CephFS --------------------------------------------------------------------------------


def mount_cephfs(
    spec: CephClientSpec,
    path: str,
    target: Path,
    *,
    workdir: Path | None = None,
    fs_name: str | None = None,
    method: FsMethod | None = None,
    timeout: float = 30.0,
) -> CephFsMount:
    """Mount the subvolume `path` at `target` with the kernel client when there is one,
    else ceph-fuse. The client address is known for ceph-fuse (admin socket). ceph-fuse's
    log and admin socket go to `workdir` (default: beside `target`), never into `target`'s
    parent when a workdir is given: kubelet removes that directory and expects it empty."""
    available = cephfs_methods()
    chosen = method or (available[0] if available else None)
    if chosen is None or chosen not in available:
        raise FailedPrecondition(
            f"no way to mount CephFS here (want {method or 'any'}, have {available or 'none'})",
            reason="attach_unsupported",
        )
    target.mkdir(parents=True, exist_ok=True)
    if chosen == "kernel":
        opts = f"name={spec.user},conf={spec.conf},secretfile={spec.keyring}" + (f",fs={fs_name}" if fs_name else "")
        run("mount", "-t", "ceph", f":{path}", str(target), "-o", opts, timeout=timeout)
        return CephFsMount("kernel", str(target), None)
    asok, log = _fuse_files(target, workdir)
    cmd = ["ceph-fuse", "-f", *_ceph_args(spec), "-r", path, "--admin-socket", asok, str(target)]
    if fs_name:
        cmd[1:1] = ["--client_fs", fs_name]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    m = CephFsMount("fuse", str(target), None, proc.pid, asok, str(log))
    deadline = time.monotonic() + timeout
    while not mounts.is_mounted(str(target)):
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop_process(proc.pid, exit_grace=0)
            _remove_fuse_files(m, keep_log=True)
            raise AttachError(f"ceph-fuse did not mount {path} (exit {proc.poll()}); see {log}")
        time.sleep(0.05)
    m.client_address = _fuse_client_address(asok)
    return m


def _fuse_files(target: Path, workdir: Path | None) -> tuple[str, Path]:
    """ceph-fuse's admin socket and log, named after the mount point. The socket moves to a
    short name in the temporary directory where its path would pass the 107-byte unix
    socket limit (kubelet's staging paths do): a socket that cannot bind leaves the
    client's address unknown. Both are removed on unmount (`_remove_fuse_files`)."""
    digest = hashlib.sha256(str(target).encode()).hexdigest()[:20]
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        asok, log = workdir / f"cephfs-{digest}.asok", workdir / f"cephfs-{digest}.log"
    else:
        asok, log = target.parent / f".{target.name}.ceph-fuse.asok", target.parent / f".{target.name}.ceph-fuse.log"
    if len(str(asok).encode()) > 100:
        asok = Path(tempfile.gettempdir()) / f"berth-cephfs-{digest}.asok"
    return str(asok), log


def _remove_fuse_files(m: CephFsMount, *, keep_log: bool) -> None:
    for path in (m.asok, None if keep_log else m.log):
        if path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _fuse_client_address(asok: str) -> str | None:
    proc = run("ceph", "--admin-daemon", asok, "status", check=False, timeout=10)
    try:
        status = json.loads(proc.stdout)
    except ValueError:
        return None
    addr = status.get("addr_str") or str(status.get("inst_str", "")).split(" ")[-1]
    return str(addr) or None


def unmount_cephfs(m: CephFsMount, *, fenced: bool = False) -> None:
    """`fenced`: the client was evicted, so ceph-fuse cannot close its session cleanly and
    would not exit by itself; do not wait for it."""
    if m.method == "fuse":
        if fenced and m.pid:
            # As for rbd-fuse (see detach_rbd): a cut-off client may leave requests
            # unanswered; killing it aborts its FUSE connection so the unmount cannot hang.
            _stop_process(m.pid, exit_grace=0, term_grace=0)
        _unmount_fuse(m.target)
        if m.pid:
            _stop_process(m.pid, exit_grace=0.5 if fenced else 10.0)
        # A killed ceph-fuse leaves its admin socket behind; keep a fenced one's log.
        _remove_fuse_files(m, keep_log=fenced)
    else:
        unmount(m.target, fenced=fenced)


# -- a sweep for tests and crash recovery --------------------------------------------------


def sweep(conf: Path) -> None:
    """Tear down every fuse client started with `conf` and what is stacked on them. The
    clients are killed first (test teardown: their data does not matter, and a fenced one
    may not answer, see detach_rbd), which aborts their FUSE connections; then the file
    systems on loops over their files, the loops and the fuse mounts go without hanging."""
    ours: dict[str, int] = {}  # fuse mount point -> pid
    pids: list[int] = []
    mountpoints = {m.target for m in mounts.table()}
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            argv = (proc_dir / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        if not args or Path(args[0]).name not in ("rbd-fuse", "ceph-fuse") or str(conf) not in args:
            continue
        pids.append(int(proc_dir.name))
        for a in args[1:]:
            if a in mountpoints:
                ours[a] = int(proc_dir.name)
    loops = []
    for dev in Path("/sys/block").glob("loop*"):
        info = host.loop(f"/dev/{dev.name}")
        if info and any(info.backing.startswith(mp.rstrip("/") + "/") for mp in ours):
            loops.append(info.device)
    for pid in pids:
        _stop_process(pid, exit_grace=0, term_grace=0)
    for loop in loops:
        for m in mounts.mounts_of(loop):
            with contextlib.suppress(HostCommandError):
                unmount(m.target, fenced=True)
        with contextlib.suppress(HostCommandError):
            host.detach_loop(loop)
    for mp in ours:
        with contextlib.suppress(HostCommandError):
            _unmount_fuse(mp)
