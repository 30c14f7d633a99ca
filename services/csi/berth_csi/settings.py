"""The adapter's settings: the shared loader (`BERTH_*` variables) plus the CSI endpoint,
the node's identity and the tenant mapping."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from berth_shared.auth import first_admin_token, read_tokens
from berth_shared.node import BOOT_ID_FILE, CephClientSpec, ceph_stage
from berth_shared.settings import Settings

Mode = Literal["controller", "node", "both"]


class CsiSettings(Settings):
    service: str = "csi"
    # BERTH_CSI_ENDPOINT: the unix socket to serve (a leading "unix://" is accepted);
    # unset: <data_dir>/csi.sock.
    csi_endpoint: str | None = None
    # BERTH_MODE: controller (one Deployment), node (the DaemonSet on each node), or both.
    mode: Mode = "both"
    # BERTH_NODE_ID: the node name Kubernetes knows (the DaemonSet passes spec.nodeName).
    node_id: str = Field(default_factory=socket.gethostname, min_length=1, max_length=128)
    # BERTH_ZONE: this node's zone, reported as topology.berth.dev/zone.
    zone: str = "default"
    # BERTH_STATE_DIR: per-node state (what is staged where); unset: <data_dir>/csi-state/<node_id>.
    state_dir: Path | None = None
    # Tenant mapping: a call's token is the secret `berthToken` when the StorageClass passes
    # secrets, else this default (BERTH_DEFAULT_TOKEN, or the static token file's entry
    # named BERTH_DEFAULT_TOKEN_NAME).
    default_token: SecretStr | None = None
    default_token_name: str | None = None
    # BERTH_NODE_TOKEN: heartbeats and unfence requests (the node or admin role); unset: the
    # service token.
    node_token: SecretStr | None = None
    heartbeat_interval_s: float = Field(default=2.0, gt=0)
    # BERTH_MAX_VOLUMES_PER_NODE: how many volumes may be published to this node at once
    # (0: no limit of ours). Reported in NodeGetInfo (the scheduler places pods by it) and in
    # each heartbeat (the attacher refuses a publish beyond it: RESOURCE_EXHAUSTED).
    max_volumes_per_node: int = Field(default=0, ge=0)
    # BERTH_BOOT_ID_FILE: where the node's boot id is read at start (it changes when the
    # machine restarts; a fenced node is unfenced on its own request only after a restart).
    # Only tests that play a reboot point it elsewhere.
    boot_id_file: Path = BOOT_ID_FILE
    # This node's own cephx identity for Ceph volumes (the publish context carries no
    # secret). Unset: the Ceph conventions of berth_shared.node.ceph_stage (the context's
    # conf, else /etc/ceph/ceph.conf; the context's `user` for RBD, client.berth-node-<node>
    # for CephFS; the keyring /etc/ceph/ceph.client.<user>.keyring).
    ceph_conf: str | None = None  # BERTH_CEPH_CONF
    rbd_user: str | None = None  # BERTH_RBD_USER (without "client.")
    rbd_keyring: str | None = None  # BERTH_RBD_KEYRING
    cephfs_user: str | None = None  # BERTH_CEPHFS_USER
    cephfs_keyring: str | None = None  # BERTH_CEPHFS_KEYRING

    @property
    def socket_path(self) -> Path:
        if self.csi_endpoint:
            return Path(self.csi_endpoint.removeprefix("unix://"))
        return self.data_dir / "csi.sock"

    def ceph_client(self, backend: str, ctx: dict[str, str]) -> CephClientSpec | None:
        """The cephx identity this node uses for a volume of `backend` with this publish
        context (None: not a Ceph volume)."""
        kind = next((k for k in ceph_stage.KINDS if k == backend), None)
        if kind is None:
            return None
        conv = ceph_stage.client_spec(kind, ctx, self.node_id, None)
        user = (self.rbd_user if kind == "rbd" else self.cephfs_user) or conv.user
        keyring = (self.rbd_keyring if kind == "rbd" else self.cephfs_keyring) or (
            f"/etc/ceph/ceph.client.{user}.keyring"
        )
        return CephClientSpec(self.ceph_conf or conv.conf, keyring, user)

    @property
    def node_state_dir(self) -> Path:
        return self.state_dir or self.data_dir / "csi-state" / self.node_id

    def tenant_token(self) -> str | None:
        if self.default_token is not None:
            return self.default_token.get_secret_value()
        if self.default_token_name and self.auth_backend == "static":
            return read_tokens(self.tokens_path).get(self.default_token_name)
        return None

    def heartbeat_token(self) -> str:
        for secret in (self.node_token, self.service_token):
            if secret is not None:
                return secret.get_secret_value()
        if self.auth_backend == "static":
            return first_admin_token(self.tokens_path)
        raise ValueError("set BERTH_NODE_TOKEN: the node service heartbeats with a token that has the node role")
