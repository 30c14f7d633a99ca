"""The node side of liveness and fencing, shared by the node agent and the CSI node service.

A node heartbeats to the attacher (`berth.attacher.node.heartbeat`) with what it holds and
its boot id. When the reply says it is fenced, it stops staging the volumes the fence took
away (`blocked`), and once the fence has completed it drops every stale mount and asks to
be unfenced (`berth.attacher.node.unfence`) with what it still holds, which must be
nothing, and its boot id: the attacher unfences a node on its own word only once the node
has also restarted since the fence (its kernel's boot id changed), so a node that was
merely partitioned stays fenced until it reboots or an admin vouches for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from berth_shared.bus.client import Bus
from berth_shared.errors import BerthError
from berth_shared.messages.attacher import PREFIX, HeartbeatReply, StagedVolume

log = logging.getLogger(__name__)

StagedFn = Callable[[], Sequence[StagedVolume]]
DropFn = Callable[[], Awaitable[None]]
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
# Refusals a node cannot cure without a restart or an admin: it stops asking until then.
FINAL_REFUSALS = frozenset({"node_not_restarted", "unfence_needs_admin"})


def read_boot_id(path: Path = BOOT_ID_FILE) -> str:
    """This machine's boot id: the kernel draws a new one at every boot. Where there is none
    (not Linux), one per process, which still changes with every restart."""
    try:
        return path.read_text().strip() or uuid.uuid4().hex
    except OSError:
        log.warning("no boot id at %s: using one per process", path)
        return uuid.uuid4().hex


class NodeHeartbeat:
    """Heartbeat and fence recovery for one node.

    `staged()` reports what the node holds; `drop()` releases all of it (unmount, detach)
    after a fence. Both are the caller's: this class only speaks the bus protocol.
    """

    def __init__(
        self,
        bus: Bus,
        node_id: str,
        token: str,
        *,
        staged: StagedFn,
        drop: DropFn,
        interval_s: float = 2.0,
        zone: str | None = None,
        boot_id: str | None = None,
        max_volumes: int = 0,
    ) -> None:
        self.bus = bus
        self.node_id = node_id
        self.token = token
        self.staged = staged
        self.drop = drop
        self.interval_s = interval_s
        self.zone = zone
        # At most this many volumes published to the node at once (0: no limit).
        self.max_volumes = max_volumes
        # The kernel's boot id (see `read_boot_id`): how the attacher knows the node restarted.
        self.boot_id = boot_id or read_boot_id()
        self.fenced = False
        # Volumes the fence took away: never (re-)staged until the node is unfenced.
        self.blocked: frozenset[str] = frozenset()
        self.last_reply: HeartbeatReply | None = None
        # Why the attacher last refused to unfence this node (None: it did not).
        self.unfence_refused: str | None = None
        # Monotonic time of the last answered heartbeat: how fresh the node's view of its fence is.
        self.last_ok: float | None = None
        self._task: asyncio.Task[None] | None = None
        # Also checked by the loop: on Python 3.11, asyncio.wait_for (inside nats' request)
        # can swallow a cancellation that lands as the reply arrives, and the loop would go on.
        self._stopping = False

    async def beat(self) -> HeartbeatReply:
        """One heartbeat; recovers from a completed fence on the spot."""
        reply = await self.bus.request_model(
            f"{PREFIX}.node.heartbeat",
            {
                "node_id": self.node_id,
                "boot_id": self.boot_id,
                "zone": self.zone,
                "max_volumes": self.max_volumes,
                "staged": [s.model_dump() for s in self.staged()],
            },
            HeartbeatReply,
            token=self.token,
            timeout=max(1.0, self.interval_s),
        )
        self.last_reply = reply
        self.last_ok = time.monotonic()
        if reply.fenced:
            self.blocked = self.blocked | frozenset(reply.blocked_volumes)
            if not self.fenced:
                self.fenced = True
                log.warning("node %s is fenced (epoch %d): dropping its mounts", self.node_id, reply.fence_epoch)
        if self.fenced and reply.state == "fenced":
            await self.recover()
        if not reply.fenced:
            self.fenced = False
            self.blocked = frozenset()
            self.unfence_refused = None
        return reply

    async def recover(self) -> None:
        """After a fence: drop every stale mount, then prove it by asking to be unfenced.
        Refused for a reason only a restart or an admin can cure, it does not ask again:
        it heartbeats, fenced and holding nothing, until an admin unfences it."""
        await self.drop()
        if self.unfence_refused in FINAL_REFUSALS:
            return
        left = [s.model_dump() for s in self.staged()]
        try:
            await self.bus.request(
                f"{PREFIX}.node.unfence",
                {"node_id": self.node_id, "boot_id": self.boot_id, "staged": left},
                token=self.token,
            )
        except BerthError as exc:
            self.unfence_refused = exc.reason
            log.warning("unfence refused for %s: %s", self.node_id, exc.detail)
            return
        self.unfence_refused = None
        self.fenced = False
        self.blocked = frozenset()

    def age(self) -> float | None:
        """Seconds since the last answered heartbeat (None: not one yet)."""
        return None if self.last_ok is None else time.monotonic() - self.last_ok

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if not self.running:
            self._stopping = False
            self._task = asyncio.create_task(self._loop(), name=f"heartbeat-{self.node_id}")

    async def stop(self) -> None:
        """Stop heartbeating (the node 'dies'); what it holds stays, as on a partitioned node."""
        if self._task:
            self._stopping = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("heartbeat from %s failed: %s", self.node_id, exc)
            await asyncio.sleep(self.interval_s)
