"""The one settings loader: every service reads `BERTH_*` environment variables through it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PORTS = {"provisioner": 8701, "attacher": 8702, "watcher": 8703, "alerts": 8704}
SERVICES = tuple(DEFAULT_PORTS)


class Settings(BaseSettings):
    """Settings common to all services; each service's own class extends it (one per
    service, e.g. `ProvisionerSettings`) with what only that service reads.

    `BERTH_DATABASE_URL` unset means the embedded default: one SQLite file per service
    under the data directory. On PostgreSQL each service lives in its own schema
    (`BERTH_DB_SCHEMA`, default the service name), so services can share one database
    without reading each other's tables.
    """

    model_config = SettingsConfigDict(env_prefix="BERTH_", extra="ignore")

    service: str = "provisioner"
    data_dir: Path = Path(".berth")
    nats_url: str = "nats://127.0.0.1:4322"
    # This process's NATS credentials (a .creds file: user JWT and seed, `berth nats init`);
    # unset: a NATS without auth. Its permissions are the bus contract's (docs/nats-security.md).
    nats_creds: Path | None = None
    # The service that issues tenants' event-subscriber credentials reads this
    # (tenant-issuer.json of `berth nats init`); unset: it cannot issue them.
    nats_tenant_issuer: Path | None = None
    database_url: str | None = None
    db_schema: str | None = None
    http_host: str = "127.0.0.1"
    http_port: int | None = None
    auth_backend: Literal["static", "keystone"] = "static"
    token_file: Path | None = None
    keystone_url: str | None = None
    keystone_service_token: SecretStr | None = None
    # Berth's own Keystone user: a cloud of clouds.yaml (openstacksdk's standard locations,
    # or `clouds_file`); preferred over a static keystone_service_token.
    keystone_cloud: str | None = None
    clouds_file: Path | None = None
    keystone_revocation_poll_s: float = Field(default=5.0, gt=0)
    # The token this service uses to call other services (needs the admin role);
    # unset with the static backend: the token file's first admin token.
    service_token: SecretStr | None = None
    log_level: str = "INFO"
    log_json: bool = True
    events_stream: str = "BERTH_EVENTS"
    # JetStream replicas of the events stream: 3 on a production NATS cluster (deploy/k8s).
    events_stream_replicas: int = Field(default=1, ge=1, le=5)
    # How long a bus command may run before the caller gets ABORTED; the operation goes on.
    command_timeout_s: float = Field(default=10.0, gt=0)
    outbox_poll_interval_s: float = Field(default=1.0, gt=0)
    # How long a replica's claim on a persisted operation holds without renewal. It is renewed
    # while a step runs, so this bounds how soon another replica takes over a crashed one's
    # operation, never how long a step may take.
    operation_lease_s: float = Field(default=20.0, gt=0)

    @property
    def port(self) -> int:
        return self.http_port if self.http_port is not None else DEFAULT_PORTS.get(self.service, 8700)

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / f'{self.service}.db').resolve()}"

    @property
    def schema_name(self) -> str:
        return self.db_schema or self.service

    @property
    def tokens_path(self) -> Path:
        return self.token_file or self.data_dir / "tokens.json"


S = TypeVar("S", bound=Settings)


def load_settings(settings_cls: type[S], **overrides: Any) -> S:
    """A service's settings (its own class) from the environment, explicit overrides on
    top. The service's name is its class's, never a `BERTH_SERVICE` variable's: a stray one
    in the environment must not turn the attacher's settings into another service's."""
    service = overrides.pop("service", None) or settings_cls.model_fields["service"].default
    return settings_cls(service=service, **overrides)
