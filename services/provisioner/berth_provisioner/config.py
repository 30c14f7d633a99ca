"""The provisioner's settings: the shared loader plus what only the provisioner reads."""

from __future__ import annotations

from pydantic import Field

from berth_shared.settings import Settings


class ProvisionerSettings(Settings):
    service: str = "provisioner"
    # The embedded default registers one file-backed cluster on first start.
    bootstrap_file_cluster: bool = True
    # A tenant's quota until an admin sets one.
    default_quota_volumes: int = Field(default=100, ge=0)
    default_quota_gigabytes: int = Field(default=1000, ge=0)
