"""What every node-side process (the CSI node service, the attacher's node agent) is told
about its node: who it is, how it heartbeats, and its own cephx identities. One base on
the shared settings loader, so both read the same `BERTH_*` variables the same way."""

from __future__ import annotations

import socket

from pydantic import Field, SecretStr

from berth_shared.auth import first_admin_token
from berth_shared.node import ceph_stage
from berth_shared.node.ceph import CephClientSpec
from berth_shared.settings import Settings

DEFAULT_CEPH_CONF = "/etc/ceph/ceph.conf"


class NodeSettings(Settings):
    # BERTH_NODE_ID: the node name Kubernetes knows (the DaemonSet passes spec.nodeName).
    node_id: str = Field(default_factory=socket.gethostname, min_length=1, max_length=128)
    # BERTH_NODE_TOKEN: heartbeats and unfence requests (the node or admin role); unset: the
    # service token.
    node_token: SecretStr | None = None
    heartbeat_interval_s: float = Field(default=2.0, gt=0)
    # This node's own cephx identity for Ceph volumes (the publish context carries no
    # secret). Unset: the Ceph conventions of berth_shared.node.ceph_stage (the context's
    # conf, else /etc/ceph/ceph.conf; the context's `user` for RBD, client.berth-node-<node>
    # for CephFS; the keyring /etc/ceph/ceph.client.<user>.keyring).
    ceph_conf: str | None = None  # BERTH_CEPH_CONF
    rbd_user: str | None = None  # BERTH_RBD_USER (without "client.")
    rbd_keyring: str | None = None  # BERTH_RBD_KEYRING
    cephfs_user: str | None = None  # BERTH_CEPHFS_USER
    cephfs_keyring: str | None = None  # BERTH_CEPHFS_KEYRING

    def ceph_client(self, backend: str, ctx: dict[str, str]) -> CephClientSpec | None:
        """The cephx identity this node uses for a volume of `backend` with this publish
        context (None: not a Ceph volume): what is configured, the conventions for the rest."""
        kind = next((k for k in ceph_stage.KINDS if k == backend), None)
        if kind is None:
            return None
        conv = ceph_stage.client_spec(kind, ctx, self.node_id, None)
        return self._spec(kind, conv.conf, conv.user)

    def configured_ceph(self) -> dict[str, CephClientSpec]:
        """The identities configured outright (a user given), by kind: the node agent
        stages every volume of that kind with them."""
        return {k: self._spec(k, DEFAULT_CEPH_CONF, u) for k in ceph_stage.KINDS if (u := self._user(k))}

    def _user(self, kind: str) -> str | None:
        return self.rbd_user if kind == "rbd" else self.cephfs_user

    def _spec(self, kind: str, conf: str, user: str) -> CephClientSpec:
        user = self._user(kind) or user
        keyring = (
            self.rbd_keyring if kind == "rbd" else self.cephfs_keyring
        ) or f"/etc/ceph/ceph.client.{user}.keyring"
        return CephClientSpec(self.ceph_conf or conf, keyring, user)

    def heartbeat_token(self) -> str:
        for secret in (self.node_token, self.service_token):
            if secret is not None:
                return secret.get_secret_value()
        if self.auth_backend == "static":
            return first_admin_token(self.tokens_path)
        raise ValueError("set BERTH_NODE_TOKEN: a node heartbeats with a token that has the node role")
