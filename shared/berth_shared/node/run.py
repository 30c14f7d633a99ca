"""The one way the node side (and the file backend's fence) runs host tools: `losetup`,
`mount`, `mkfs`, `rbd-fuse` helpers, everything.

Every call is bounded in time, and the bound holds even when the tool hangs in the kernel.
A tool waiting on storage that no longer answers (a fenced or partitioned Ceph client, a
wedged FUSE daemon, a dying loop device) sits in uninterruptible sleep (D state): SIGKILL
is queued but not delivered until the kernel call returns, which may be never. So after
the timeout the child is killed, given `KILL_WAIT_S` to go, and then left behind with a
`HostCommandStuck` error naming it: the caller (a fence, a CSI call) gets an answer instead
of waiting with it forever. (`subprocess.run(timeout=...)` waits for the killed child
without a bound, and `asyncio`'s `proc.wait()` likewise.)

The calls are synchronous; async code runs them with `asyncio.to_thread`, once per node
operation (stage, unstage, fence of a file), not once per command.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass

from berth_shared.errors import BerthError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 60.0
KILL_WAIT_S = 5.0


class HostCommandError(BerthError):
    """A host tool failed (non-zero exit, or it could not be started)."""

    code = "internal"
    status = 500
    title = "Host command failed"


class HostCommandTimeout(HostCommandError):
    """A host tool did not finish in time and was killed: worth retrying later."""

    code = "unavailable"
    status = 503
    title = "Host command timed out"


class HostCommandStuck(HostCommandTimeout):
    """A host tool did not finish in time and could not even be killed: it is stuck in the
    kernel (D state), usually on storage that no longer answers. It was left behind."""

    title = "Host command stuck in the kernel"


@dataclass(frozen=True)
class Done:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        """stdout and stderr together, stripped: what a message about the call should quote."""
        return "\n".join(s for s in (self.stdout.strip(), self.stderr.strip()) if s)


def run(*argv: str, timeout: float = DEFAULT_TIMEOUT_S, check: bool = True) -> Done:
    """Run `argv` (no shell), at most `timeout` seconds (plus `KILL_WAIT_S` to reap a killed
    child). `check`: a non-zero exit raises HostCommandError quoting the tool's output."""
    cmd = " ".join(argv)
    try:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
        )
    except OSError as exc:
        raise HostCommandError(f"{cmd}: cannot run {argv[0]}: {exc.strerror}") from exc
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        try:
            proc.communicate(timeout=KILL_WAIT_S)
        except subprocess.TimeoutExpired:
            log.error("%s (pid %d) is stuck in the kernel; left behind", cmd, proc.pid)
            raise HostCommandStuck(
                f"{cmd} hung for {timeout:g}s and could not be killed (pid {proc.pid} is stuck in the kernel)",
                reason="host_command_stuck",
                pid=proc.pid,
            ) from exc
        raise HostCommandTimeout(f"{cmd} timed out after {timeout:g}s", reason="host_command_timeout") from exc
    done = Done(tuple(argv), proc.returncode, out or "", err or "")
    if check and done.returncode != 0:
        raise HostCommandError(f"{cmd} failed ({done.returncode}): {done.output[-500:]}")
    return done
