"""The production CSI node service (`python -m berth_csi`, BERTH_MODE=node) as a real
process, optionally inside a node's network namespace (`berth_testing.netns`), and a
kubelet's calls to it over its unix socket (NodeStage, NodePublish and back).

Unix sockets are reached by path, whatever the network namespace: the test (kubelet) talks
to every node's socket from the root namespace while each node's NATS traffic goes through
its own veth link.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from berth_csi.pb import csi, rpc
from berth_csi.server import probe
from berth_shared.node import mounts
from berth_testing.netns import NetNode

AM = csi.VolumeCapability.AccessMode
CALL_S = 30.0


def _kubelet_dir(path: str) -> None:
    """The directory kubelet makes before a call, unless it is a mount point already (by the
    mount table, never a stat: a cut-off ceph-fuse's mount point fails a stat with ESHUTDOWN,
    or hangs it until the network heals). The call then goes to the node service, which
    decides."""
    if not mounts.is_mounted(path):
        os.makedirs(path, exist_ok=True)


def mount_cap(mode: int = AM.SINGLE_NODE_WRITER) -> Any:
    return csi.VolumeCapability(mount=csi.VolumeCapability.MountVolume(), access_mode=AM(mode=mode))


@dataclass
class CsiNode:
    """One node's CSI node service. `workdir` must be short (unix socket paths have at most
    107 bytes); the node's state, socket, kubelet-style paths and log live under it."""

    node_id: str
    workdir: Path
    nats_url: str
    token: str  # heartbeats and unfence requests: the node (or admin) role
    token_file: Path
    netns: NetNode | None = None
    heartbeat_s: float = 0.5
    boot_id_file: Path | None = None  # None: the kernel's
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.workdir / "csi.sock"

    @property
    def log_file(self) -> Path:
        return self.workdir / "csi-node.log"

    def staging_path(self, volume_id: str) -> str:
        return str(self.workdir / "staging" / volume_id)

    def target_path(self, volume_id: str, pod: str = "pod") -> str:
        return str(self.workdir / "pods" / pod / volume_id)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
        env.update(
            BERTH_MODE="node",
            BERTH_NODE_ID=self.node_id,
            BERTH_NATS_URL=self.nats_url,
            BERTH_CSI_ENDPOINT=str(self.socket),
            BERTH_DATA_DIR=str(self.workdir / "data"),
            BERTH_STATE_DIR=str(self.workdir / "state"),
            BERTH_TOKEN_FILE=str(self.token_file),
            BERTH_NODE_TOKEN=self.token,
            BERTH_HEARTBEAT_INTERVAL_S=str(self.heartbeat_s),
            BERTH_LOG_JSON="false",
        )
        if self.boot_id_file is not None:
            env["BERTH_BOOT_ID_FILE"] = str(self.boot_id_file)
        env.update(self.extra_env)
        return env

    def start(self, within_s: float = 30.0) -> CsiNode:
        """Start it and wait until it answers Probe with ready (connected to NATS)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "berth_csi"]
        if self.netns is not None:
            argv = self.netns.argv(argv)
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                argv, env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + within_s
        while not (self.socket.exists() and probe(self.socket)):
            if self.proc.poll() is not None:
                raise RuntimeError(f"CSI node {self.node_id} exited with {self.proc.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"CSI node {self.node_id} not ready after {within_s}s:\n{self.tail()}")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    # -- kubelet's calls (synchronous gRPC: run them with asyncio.to_thread) ---------------

    def call(self, method: str, request: Any) -> Any:
        with grpc.insecure_channel(f"unix://{self.socket}") as channel:
            return getattr(rpc.NodeStub(channel), method)(request, timeout=CALL_S)

    def stage(self, volume_id: str, publish_context: dict[str, str], cap: Any = None) -> str:
        staging = self.staging_path(volume_id)
        _kubelet_dir(staging)
        req = csi.NodeStageVolumeRequest(
            volume_id=volume_id,
            publish_context=publish_context,
            staging_target_path=staging,
            volume_capability=cap or mount_cap(),
        )
        self.call("NodeStageVolume", req)
        return staging

    def publish(self, volume_id: str, cap: Any = None) -> str:
        target = self.target_path(volume_id)
        _kubelet_dir(target)
        req = csi.NodePublishVolumeRequest(
            volume_id=volume_id,
            staging_target_path=self.staging_path(volume_id),
            target_path=target,
            volume_capability=cap or mount_cap(),
        )
        self.call("NodePublishVolume", req)
        return target

    def stage_and_publish(self, volume_id: str, publish_context: dict[str, str]) -> str:
        """NodeStage then NodePublish, as kubelet does; the pod's target path."""
        self.stage(volume_id, publish_context)
        return self.publish(volume_id)

    def unpublish_and_unstage(self, volume_id: str) -> None:
        self.call(
            "NodeUnpublishVolume",
            csi.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=self.target_path(volume_id)),
        )
        self.call(
            "NodeUnstageVolume",
            csi.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=self.staging_path(volume_id)),
        )
