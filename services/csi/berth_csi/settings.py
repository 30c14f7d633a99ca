"""The adapter's settings: the node side's shared settings (`BERTH_*` variables: the node's
identity, heartbeat, cephx) plus the CSI endpoint, the node's zone and limits, and the
tenant mapping."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from berth_shared.auth import read_tokens
from berth_shared.node import BOOT_ID_FILE, NodeSettings

Mode = Literal["controller", "node", "both"]


class CsiSettings(NodeSettings):
    """The node's identity, heartbeat and cephx settings are NodeSettings' (shared with the
    attacher's node agent); the rest is the adapter's own."""

    service: str = "csi"
    # BERTH_CSI_ENDPOINT: the unix socket to serve (a leading "unix://" is accepted);
    # unset: <data_dir>/csi.sock.
    csi_endpoint: str | None = None
    # BERTH_MODE: controller (one Deployment), node (the DaemonSet on each node), or both.
    mode: Mode = "both"
    # BERTH_ZONE: this node's zone, reported as topology.berth.dev/zone.
    zone: str = "default"
    # BERTH_STATE_DIR: per-node state (what is staged where); unset: <data_dir>/csi-state/<node_id>.
    state_dir: Path | None = None
    # Tenant mapping: a call's token is the secret `berthToken` when the StorageClass passes
    # secrets, else this default (BERTH_DEFAULT_TOKEN, or the static token file's entry
    # named BERTH_DEFAULT_TOKEN_NAME).
    default_token: SecretStr | None = None
    default_token_name: str | None = None
    # BERTH_MAX_VOLUMES_PER_NODE: how many volumes may be published to this node at once
    # (0: no limit of ours). Reported in NodeGetInfo (the scheduler places pods by it) and in
    # each heartbeat (the attacher refuses a publish beyond it: RESOURCE_EXHAUSTED).
    max_volumes_per_node: int = Field(default=0, ge=0)
    # BERTH_BOOT_ID_FILE: where the node's boot id is read at start (it changes when the
    # machine restarts; a fenced node is unfenced on its own request only after a restart).
    # Only tests that play a reboot point it elsewhere.
    boot_id_file: Path = BOOT_ID_FILE

    @property
    def socket_path(self) -> Path:
        if self.csi_endpoint:
            return Path(self.csi_endpoint.removeprefix("unix://"))
        return self.data_dir / "csi.sock"

    @property
    def node_state_dir(self) -> Path:
        return self.state_dir or self.data_dir / "csi-state" / self.node_id

    def tenant_token(self) -> str | None:
        if self.default_token is not None:
            return self.default_token.get_secret_value()
        if self.default_token_name and self.auth_backend == "static":
            return read_tokens(self.tokens_path).get(self.default_token_name)
        return None
