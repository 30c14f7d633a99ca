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
    asok: str | None = None


def _run(cmd: list[str], timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a tool with a bound that holds even when it hangs in the kernel: `subprocess.run`
    waits for a killed child forever, and a child stuck in D state (I/O to a storage client
    that no longer answers) never dies, so after the kill we wait 5 s and leave it."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        try:
            proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            raise AttachError(
                f"{' '.join(cmd)} hung for {timeout}s and cannot be killed (stuck in the kernel)"
            ) from exc
        raise AttachError(f"{' '.join(cmd)} timed out after {timeout}s") from exc
    done = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    if check and done.returncode != 0:
        raise AttachError(f"{' '.join(cmd)} failed ({done.returncode}): {(err or out).strip()[-500:]}")
    return done


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
    device = _run(cmd).stdout.strip()
    addr = None
    for dev in Path("/sys/bus/rbd/devices").iterdir():
        if (dev / "name").read_text().strip() == image and (dev / "pool").read_text().strip() == pool:
            path = dev / "client_addr"  # kernels >= 5.x
            addr = path.read_text().strip() if path.exists() else None
    return RbdAttachment("krbd", pool, image, device, addr)


def _attach_nbd(spec: CephClientSpec, pool: str, image: str, read_only: bool, before: set[str]) -> RbdAttachment:
    cmd = ["rbd-nbd", "map", f"{pool}/{image}", *_ceph_args(spec)] + (["--read-only"] if read_only else [])
    device = _run(cmd).stdout.strip()
    return RbdAttachment("nbd", pool, image, device, _new_watcher(spec, pool, image, before))


def _attach_fuse(
    spec: CephClientSpec, pool: str, image: str, workdir: Path, read_only: bool, before: set[str], timeout: float
) -> RbdAttachment:
    fuse_dir = workdir / f"rbd-fuse-{pool}-{image}"
    fuse_dir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"rbd-fuse-{pool}-{image}.log"
    # Foreground in its own session: we know its pid, and it outlives a restart of the caller.
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            ["rbd-fuse", "-f", *_ceph_args(spec), "-p", pool, "-r", image, str(fuse_dir)],
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
        # Direct I/O: the loop device then does not keep a second page cache of the image,
        # so a write that returned has reached rbd-fuse (and a fenced client fails at once).
        cmd = ["losetup", "--find", "--show", "--direct-io=on"] + (["--read-only"] if read_only else [])
        att.device = _run([*cmd, str(image_file)]).stdout.strip()
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
        unmount(mountpoint)
    if att.method == "krbd" and att.device:
        # A blocklisted krbd client cannot close its image cleanly: force the unmap.
        _run(["rbd", "unmap", *(["-o", "force"] if fenced else []), att.device], check=False)
    elif att.method == "nbd" and att.device:
        _run(["rbd-nbd", "unmap", att.device], check=False)
    elif att.method == "fuse":
        if att.device and _loop_backing(att.device) is not None:
            _run(["losetup", "-d", att.device], check=False)
        if att.fuse_dir:
            _unmount_fuse(att.fuse_dir)
        if att.pid:
            _stop_process(att.pid, exit_grace=0.5 if fenced else 10.0)


def _loop_backing(device: str) -> str | None:
    name = Path(device).name
    path = Path(f"/sys/block/{name}/loop/backing_file")
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _mounted(path: str) -> bool:
    """From the mount table, not `os.path.ismount`: a stat of a dead or wedged fuse mount
    fails (or hangs), which must not hide the mount from its unmount."""
    path = os.path.normpath(path)
    return any(target == path for _, target, _ in _mounts())


def _unmount_fuse(path: str) -> None:
    if not _mounted(path):
        return
    if _run(["fusermount", "-u", path], check=False).returncode != 0:
        # A fenced client's fuse daemon may no longer answer: detach lazily.
        _run(["fusermount", "-u", "-z", path], check=False)


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


def has_filesystem(device: str) -> bool:
    return bool(_run(["blkid", "-o", "value", "-s", "TYPE", device], check=False).stdout.strip())


def format_and_mount(device: str, target: str, fstype: str = "ext4", options: str | None = None) -> bool:
    """Mount `device` at `target`, making the file system first only if the device has
    none (never reformat a volume with data). Returns whether it formatted."""
    formatted = False
    if not has_filesystem(device):
        opts = ["-F", "-q", "-E", "nodiscard"] if fstype.startswith("ext") else ["-f", "-K"]
        _run([f"mkfs.{fstype}", *opts, device], timeout=120)
        formatted = True
    Path(target).mkdir(parents=True, exist_ok=True)
    _run(["mount", "-t", fstype, *(["-o", options] if options else []), device, target])
    return formatted


def is_mounted(path: str) -> bool:
    return os.path.ismount(path)


def unmount(target: str) -> None:
    if not _mounted(target):
        return
    if _run(["umount", target], check=False).returncode != 0:
        # I/O errors after a fence can make a clean unmount impossible: detach lazily.
        _run(["umount", "-l", target], check=False)


# -- CephFS --------------------------------------------------------------------------------


def mount_cephfs(
    spec: CephClientSpec,
    path: str,
    target: Path,
    *,
    fs_name: str | None = None,
    method: FsMethod | None = None,
    timeout: float = 30.0,
) -> CephFsMount:
    """Mount the subvolume `path` at `target` with the kernel client when there is one,
    else ceph-fuse. The client address is known for ceph-fuse (admin socket)."""
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
        _run(["mount", "-t", "ceph", f":{path}", str(target), "-o", opts], timeout=timeout)
        return CephFsMount("kernel", str(target), None)
    asok = _asok_path(target)
    log = target.parent / f".{target.name}.ceph-fuse.log"
    cmd = ["ceph-fuse", "-f", *_ceph_args(spec), "-r", path, "--admin-socket", asok, str(target)]
    if fs_name:
        cmd[1:1] = ["--client_fs", fs_name]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    deadline = time.monotonic() + timeout
    while not os.path.ismount(target):
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop_process(proc.pid, exit_grace=0)
            raise AttachError(f"ceph-fuse did not mount {path} (exit {proc.poll()}); see {log}")
        time.sleep(0.05)
    return CephFsMount("fuse", str(target), _fuse_client_address(asok), proc.pid, asok)


def _asok_path(target: Path) -> str:
    """The ceph-fuse admin socket beside the mount point, or, where that path would pass the
    107-byte unix socket limit (kubelet's staging paths do), a short one keyed by it: an
    admin socket that cannot bind leaves the client's address unknown."""
    asok = str(target.parent / f".{target.name}.ceph-fuse.asok")
    if len(asok.encode()) <= 100:
        return asok
    digest = hashlib.sha256(str(target).encode()).hexdigest()[:20]
    return str(Path(tempfile.gettempdir()) / f"berth-cephfs-{digest}.asok")


def _fuse_client_address(asok: str) -> str | None:
    proc = _run(["ceph", "--admin-daemon", asok, "status"], check=False, timeout=10)
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
    else:
        unmount(m.target)


# -- a sweep for tests and crash recovery --------------------------------------------------


def _mounts() -> list[tuple[str, str, str]]:
    out = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3:
            out.append((parts[0], parts[1].replace("\\040", " "), parts[2]))
    return out


def sweep(conf: Path) -> None:
    """Tear down every fuse client started with `conf` and what is stacked on them. The
    clients are killed first (test teardown: their data does not matter, and a fenced one
    may not answer, see detach_rbd), which aborts their FUSE connections; then the file
    systems on loops over their files, the loops and the fuse mounts go without hanging."""
    ours: dict[str, int] = {}  # fuse mount point -> pid
    pids: list[int] = []
    mountpoints = {m[1] for m in _mounts()}
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
        backing = _loop_backing(f"/dev/{dev.name}")
        if backing and any(backing.startswith(mp.rstrip("/") + "/") for mp in ours):
            loops.append(f"/dev/{dev.name}")
    for pid in pids:
        _stop_process(pid, exit_grace=0, term_grace=0)
    for source, target, _ in _mounts():
        if source in loops:
            with contextlib.suppress(AttachError):
                unmount(target)
    for loop in loops:
        with contextlib.suppress(AttachError):
            _run(["losetup", "-d", loop], check=False)
    for mp in ours:
        with contextlib.suppress(AttachError):
            _unmount_fuse(mp)
