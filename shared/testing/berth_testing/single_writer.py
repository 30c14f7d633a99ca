"""Helpers for the single-writer tests and the failover benchmark: a continuous checker of
the single-writer invariant (the attacher's grants over HTTP, and the real mounts on this
host), node-state polling, and the "take the volume over" retry loop of a node agent.

Used by the cross-service tests in tests/ and by bench/failover.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from berth_attacher.agent import Held, NodeAgent
from berth_shared.errors import Aborted, DeadlineExceeded, FailedPrecondition, Unavailable
from berth_shared.messages.attacher import PREFIX
from berth_shared.node import cut_off_file, host, mounts
from berth_testing.polling import eventually


def mount_point(mount_root: Path, node_id: str, volume_id: str) -> str:
    """Where NodeAgent(mount_root=...) mounts `volume_id` on `node_id`."""
    return str(mount_root / node_id / volume_id)


@dataclass
class Violation:
    at: float  # time.monotonic()
    what: str


@dataclass
class InvariantChecker:
    """Samples, every `interval_s`, (a) the attacher's attached read-write grants of one volume
    over HTTP and (b) which nodes' mount points on this host hold a live mount of it; records
    the maximum of each and every instant where two nodes could write.

    The two views are not one atomic snapshot, so the cross check (a node with a live mount
    while the attacher grants the volume to another node) counts a mount only when it was
    seen both before and after the HTTP answer, i.e. it was live at the instant of the grant.

    `storage_cut`, for storage fenced at the storage rather than on this host (Ceph: the
    fence blocklists the holder's client, whose mounts stay until it hears it is fenced):
    of the given nodes, those whose client the storage refuses; their mounts cannot write
    and are not counted (the samples where one was mounted are tallied in `cut_mount_samples`).
    """

    client: httpx.AsyncClient
    admin_token: str
    volume_id: str
    volume_path: Path
    mount_points: dict[str, str]  # node id -> its mount point for the volume
    interval_s: float = 0.02
    storage_cut: Callable[[set[str]], Awaitable[set[str]]] | None = None
    cut_mount_samples: int = 0
    max_grants: int = 0
    max_mounts: int = 0
    max_loops: int = 0
    samples: int = 0
    host_samples: int = 0
    http_errors: int = 0
    violations: list[Violation] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def live_mounts(self) -> set[str]:
        """Nodes whose mount point for the volume is mounted (any source counts: strict)."""
        targets = {m.target for m in mounts.table()}
        return {node for node, mp in self.mount_points.items() if os.path.realpath(mp) in targets}

    def loops(self) -> list[str]:
        """Live loop devices over the volume's file. One a fence detached (autoclear) but a
        process still pins is not counted: its device is read-only and its file system shut
        down, so nothing can write through it."""
        live = [host.loop(d) for d in host.loops_backed_by(self.volume_path)]
        return [info.device for info in live if info is not None and not info.autoclear]

    async def grants(self) -> list[str] | None:
        """Nodes holding an attached read-write grant, or None when the attacher does not answer."""
        try:
            r = await self.client.get(
                "/v1/attachments",
                params={"volume_id": self.volume_id},
                headers={"Authorization": f"Bearer {self.admin_token}"},
                timeout=1.0,
            )
        except httpx.HTTPError:
            return None
        if r.status_code != 200:
            return None
        return [a["node_id"] for a in r.json()["items"] if a["state"] == "attached" and not a["readonly"]]

    def _violate(self, what: str) -> None:
        self.violations.append(Violation(time.monotonic(), what))

    async def sample(self) -> None:
        # Asked before the snapshots: a node the storage refused then stays refused until it
        # is unfenced, which comes only once it has dropped its mounts (asked after them, a
        # node that unmounted and forgot the volume in between would look like a writer).
        cut = await self.storage_cut(set(self.mount_points)) if self.storage_cut is not None else set()
        before = self.live_mounts()
        loops = self.loops()
        granted = await self.grants()
        after = self.live_mounts()
        self.host_samples += 1
        self.max_mounts = max(self.max_mounts, len(before), len(after))
        self.cut_mount_samples += bool(cut & (before | after))
        before, after = before - cut, after - cut
        for seen in (before, after):
            if len(seen) > 1:
                self._violate(f"volume mounted on {sorted(seen)} at once")
        self.max_loops = max(self.max_loops, len(loops))
        if len(loops) > 1:
            self._violate(f"volume file backs {len(loops)} loop devices at once: {loops}")
        if granted is None:
            self.http_errors += 1
            return
        self.samples += 1
        self.max_grants = max(self.max_grants, len(granted))
        if len(granted) > 1:
            self._violate(f"read-write grants to {sorted(granted)} at once")
        others = (before & after) - set(granted)
        if granted and others:
            self._violate(f"granted to {granted} while still mounted on {sorted(others)}")

    async def _run(self) -> None:
        while not self._stop.is_set():
            await self.sample()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval_s)

    def start(self) -> None:
        self._stop.clear()
        self._task = asyncio.create_task(self._run(), name="invariant-checker")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None

    def summary(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "host_samples": self.host_samples,
            "http_errors": self.http_errors,
            "max_grants": self.max_grants,
            "max_mounts": self.max_mounts,
            "max_loops": self.max_loops,
            "cut_mount_samples": self.cut_mount_samples,
            "violations": len(self.violations),
        }


async def node_state(client: httpx.AsyncClient, admin_token: str, node_id: str) -> str | None:
    """The attacher's view of a node, or None when it does not answer."""
    try:
        r = await client.get(f"/v1/nodes/{node_id}", headers={"Authorization": f"Bearer {admin_token}"}, timeout=1.0)
    except httpx.HTTPError:
        return None
    return str(r.json()["state"]) if r.status_code == 200 else None


async def wait_node_state(
    client: httpx.AsyncClient,
    admin_token: str,
    node_id: str,
    states: Iterable[str],
    *,
    within_s: float,
    interval: float = 0.02,
) -> str:
    """Poll until the node is in one of `states`; return it (AssertionError after `within_s`)."""
    want = set(states)
    state = await eventually(
        lambda: node_state(client, admin_token, node_id),
        lambda s: s in want,
        within=within_s,
        every=interval,
        what=f"node {node_id} in {sorted(want)}",
    )
    assert state is not None
    return state


@dataclass
class TakeOver:
    held: Held
    attempts: int
    refused: int  # FailedPrecondition: the holder was not fenced yet (or this node was not alive)
    unavailable: int  # the attacher or NATS did not answer
    reasons: dict[str, int]  # refusals and failures by reason
    published_at: float  # time.monotonic() when the publish that succeeded returned
    staged_at: float  # ... and when the volume was attached and mounted here


async def take_over(agent: NodeAgent, volume_id: str, *, within_s: float, retry_s: float = 0.1) -> TakeOver:
    """Retry the publish every `retry_s` until the attacher grants this node the volume,
    then attach and mount it here (NodeAgent.publish_and_stage; the publish is idempotent).

    FailedPrecondition (the holder is not fenced yet, or this node is not alive in the
    attacher's view) is the expected refusal; the attacher or NATS being away (Unavailable,
    DeadlineExceeded) is retried too. Anything else fails at once.
    """
    deadline = time.monotonic() + within_s
    attempts = refused = unavailable = 0
    reasons: dict[str, int] = {}
    while True:
        attempts += 1
        try:
            if agent.fenced:
                raise FailedPrecondition(f"node {agent.node_id} is fenced", reason="node_fenced")
            await agent.bus.request(
                f"{PREFIX}.volume.publish",
                {"volume_id": volume_id, "node_id": agent.node_id},
                token=agent.token,
                timeout=2.0,
            )
            published_at = time.monotonic()
            held = await agent.publish_and_stage(volume_id)
            return TakeOver(held, attempts, refused, unavailable, reasons, published_at, time.monotonic())
        except FailedPrecondition as exc:
            refused += 1
            reasons[exc.reason] = reasons.get(exc.reason, 0) + 1
        except (Unavailable, DeadlineExceeded, Aborted) as exc:
            unavailable += 1
            reasons[exc.reason] = reasons.get(exc.reason, 0) + 1
        except RuntimeError:
            if not agent.fenced:  # NodeAgent refuses to stage while its node is fenced
                raise
            refused += 1
            reasons["node_fenced"] = reasons.get("node_fenced", 0) + 1
        if time.monotonic() + retry_s > deadline:
            raise AssertionError(
                f"{agent.node_id} did not get {volume_id} within {within_s}s "
                f"({attempts} attempts, {refused} refused, {unavailable} unanswered)"
            )
        await asyncio.sleep(retry_s)


def play_reboot(agent: NodeAgent) -> None:
    """The agent's node restarts: its kernel's boot id changes (the attacher unfences a node
    on its own request only once it has restarted since its fence), and what the agent had
    been refused before the restart is forgotten."""
    agent.beats.boot_id = uuid.uuid4().hex
    agent.beats.unfence_refused = None


def write_marker(mount: str, name: str) -> bytes:
    """Write and fsync a marker file on a mounted volume; return its content."""
    content = f"{name} written at {time.time():.6f}\n".encode()
    fd = os.open(os.path.join(mount, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    dfd = os.open(mount, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return content


def missing_markers(mount: str, markers: dict[str, bytes]) -> list[str]:
    """Markers absent from (or different on) the volume mounted at `mount`."""
    missing = []
    for name, content in markers.items():
        try:
            if Path(mount, name).read_bytes() != content:
                missing.append(f"{name} (changed)")
        except OSError:
            missing.append(name)
    return missing


async def cleanup_host(agents: Iterable[NodeAgent], volume_paths: Iterable[Path]) -> None:
    """Stop the agents, drop their mounts, and tear down anything left on the volumes'
    files (a failed test must not leave mounts or loop devices behind)."""
    for agent in agents:
        await agent.stop()
        for volume_id in list(agent.held):
            with contextlib.suppress(Exception):
                await agent.release(volume_id)
    for path in volume_paths:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(cut_off_file, path)
