"""The node side's host primitives: the one runner (bounded, even for a child that cannot
be reaped), the one mount table, loop devices, and the file backend's storage-side cut,
which must stop every writer of a volume's file on this host: through a file system
mounted here, one mounted only in another mount namespace, one lazily unmounted with a
file still open on it, and a raw block device."""

from __future__ import annotations

import errno
import mmap
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from berth_shared.node import host, mounts
from berth_shared.node.cutoff import cut_off_file
from berth_shared.node.run import HostCommandError, HostCommandStuck, HostCommandTimeout, run

needs_loop = pytest.mark.skipif(
    not host.loop_devices_available(), reason="needs root and loop devices (/dev/loop-control, losetup, mkfs, mount)"
)


def test_runner_returns_output_and_raises_on_failure() -> None:
    done = run("sh", "-c", "echo out; echo err >&2")
    assert (done.returncode, done.stdout.strip(), done.stderr.strip()) == (0, "out", "err")
    with pytest.raises(HostCommandError, match=r"sh -c exit 3 failed \(3\)"):
        run("sh", "-c", "exit 3")
    assert run("sh", "-c", "exit 3", check=False).returncode == 3
    with pytest.raises(HostCommandError, match="cannot run"):
        run("/nonexistent/tool")


def test_runner_kills_a_tool_that_outlives_its_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(HostCommandTimeout) as info:
        run("sleep", "30", timeout=0.3)
    assert not isinstance(info.value, HostCommandStuck)
    assert info.value.code == "unavailable" and time.monotonic() - started < 5


def test_runner_leaves_behind_a_child_it_cannot_reap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a tool stuck in the kernel looks like to the runner: killed, it still does not
    finish. (Here the killed child's output stays open in a grandchild it started, so the
    runner cannot see it end; a tool in D state never ends at all.) The caller gets
    HostCommandStuck after timeout + the kill wait, not a wait without end."""
    from berth_shared.node import run as runner

    monkeypatch.setattr(runner, "KILL_WAIT_S", 0.3)
    pid_file = tmp_path / "grandchild.pid"
    started = time.monotonic()
    with pytest.raises(HostCommandStuck) as info:
        run("sh", "-c", f"sleep 30 & echo $! > {pid_file}; wait", timeout=0.3)
    took = time.monotonic() - started
    os.kill(int(pid_file.read_text()), 9)
    assert took < 3, took
    assert info.value.reason == "host_command_stuck" and "stuck in the kernel" in info.value.detail


def test_mount_table_reads_escaped_paths_and_device_numbers() -> None:
    root = mounts.mounted_at("/")
    assert root is not None and root.target == "/"
    proc = mounts.mounted_at("/proc")
    assert proc is not None and proc.fstype == "proc"
    assert mounts._unescape("/a\\040b\\011c\\134d") == "/a b\tc\\d"
    assert mounts.canonical("/proc/../proc/self/..") == "/proc"


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "vol.img"
    with open(path, "wb") as f:
        f.truncate(64 << 20)
    yield path
    for device in host.loops_backed_by(path):
        for m in mounts.mounts_of(device):
            mounts.umount(m.target, lazy=True)
        host.detach_loop(device)


def _writer(path: Path) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"before the fence\n")
    os.fsync(fd)
    return fd


def _write_fails(fd: int) -> int:
    try:
        os.write(fd, b"after the fence\n")
        os.fsync(fd)
    except OSError as exc:
        return exc.errno or 0
    return 0


@needs_loop
def test_cut_off_stops_a_writer_with_an_open_file(volume: Path, tmp_path: Path) -> None:
    device = host.attach_loop(volume)
    host.mount_device(device, str(tmp_path / "mnt"), "ext4", readonly=False)
    fd = _writer(tmp_path / "mnt" / "data")
    try:
        cut = cut_off_file(volume)
        assert cut[0].startswith("shutdown ") and str(tmp_path / "mnt") in cut and device in cut, cut
        assert _write_fails(fd) == errno.EIO
        assert not mounts.is_mounted(str(tmp_path / "mnt"))
        # The loop is only marked to go while the open file pins it: never handed out again.
        assert host.loops_backed_by(volume) == [device] and host.loop(device).autoclear  # type: ignore[union-attr]
        fresh = host.attach_loop(volume)
        assert fresh != device and run("blockdev", "--getro", fresh).stdout.strip() == "0"
        host.mount_device(fresh, str(tmp_path / "b"), "ext4", readonly=False)
        assert (tmp_path / "b" / "data").read_bytes() == b"before the fence\n"
    finally:
        os.close(fd)


@needs_loop
def test_cut_off_reaches_a_mount_in_another_mount_namespace(volume: Path, tmp_path: Path) -> None:
    """A node whose mounts live in its own mount namespace (a CSI node pod without
    propagation back to the host): the fence finds them through /proc/<pid>/root."""
    device = host.attach_loop(volume)
    host.format_if_blank(device, "ext4")
    mnt = tmp_path / "private"
    mnt.mkdir()
    script = (
        f"mount {device} {mnt} && echo ready && read _ && "
        f"(echo late >> {mnt}/data && sync -f {mnt}/data && echo wrote || echo failed)"
    )
    node = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert node.stdout is not None and node.stdin is not None
        assert node.stdout.readline().strip() == "ready"
        assert not mounts.mounts_of(device), "mounted only in the node's own namespace"
        cut = cut_off_file(volume)
        assert cut[0].startswith("shutdown /proc/") and cut[0].endswith(f"/root{mnt}"), cut
        node.stdin.write("\n")
        node.stdin.flush()
        assert node.stdout.readline().strip() == "failed"
    finally:
        node.kill()
        node.wait()


@needs_loop
def test_cut_off_reaches_a_lazily_unmounted_file_system(volume: Path, tmp_path: Path) -> None:
    """Unmounted lazily while a file stays open, a file system is still writable through it;
    no mount table shows it any more. The fence finds it through the open file."""
    device = host.attach_loop(volume)
    host.mount_device(device, str(tmp_path / "mnt"), "ext4", readonly=False)
    fd = _writer(tmp_path / "mnt" / "data")
    try:
        mounts.umount(str(tmp_path / "mnt"), lazy=True)
        assert _write_fails(fd) == 0, "still writable after the lazy unmount"
        cut = cut_off_file(volume)
        assert cut[0].startswith(f"shutdown /proc/{os.getpid()}/fd/"), cut
        assert _write_fails(fd) == errno.EIO
    finally:
        os.close(fd)


@needs_loop
def test_cut_off_stops_a_raw_block_writer(volume: Path) -> None:
    device = host.attach_loop(volume)
    fd = os.open(device, os.O_RDWR | os.O_DIRECT)
    buf = mmap.mmap(-1, 4096)
    buf.write(b"r" * 4096)
    try:
        assert os.pwrite(fd, buf, 0) == 4096
        assert cut_off_file(volume) == [device]
        with pytest.raises(OSError) as info:
            os.pwrite(fd, buf, 4096)
        assert info.value.errno == errno.EPERM
    finally:
        os.close(fd)
    # Freed, the device number is clean again for whoever attaches next.
    fresh = host.attach_loop(volume)
    assert run("blockdev", "--getro", fresh).stdout.strip() == "0"


@needs_loop
def test_fsdown_without_a_file_system_does_nothing(volume: Path) -> None:
    device = host.attach_loop(volume)
    done = run(sys.executable, "-m", "berth_shared.node.fsdown", device)
    assert done.stdout == ""
