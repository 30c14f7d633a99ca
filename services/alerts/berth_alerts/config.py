"""The alerts service's settings and its configuration file (routing tree, receivers,
inhibition rules, event severities), validated at start so a typo fails loudly.

The file is YAML (or JSON), Alertmanager-shaped where Alertmanager has the same notion:
`route` (receiver, group_by, matchers, continue, routes, timings), `receivers`,
`inhibit_rules`. Each route may name a severity `behaviour` whose timings
(`SEVERITY_BEHAVIOURS`) it takes unless it sets its own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from berth_alerts.model import Matcher
from berth_shared.settings import Settings


class AlertsSettings(Settings):
    service: str = "alerts"
    # The configuration file; unset: `<data dir>/alerts.yaml` if it exists, else the defaults.
    alerts_config: Path | None = None
    # A generic webhook for the default receiver when no file is given (the embedded stack).
    alerts_webhook_url: str | None = None
    flush_interval_s: float = Field(default=0.1, gt=0)
    delivery_poll_s: float = Field(default=0.2, gt=0)
    # A delivery claimed by a replica that then died is retaken after this.
    delivery_claim_s: float = Field(default=30.0, gt=0)
    dashboard_sync_interval_s: float = Field(default=300.0, gt=0)
    # Bus events older than this when read are not told (a new consumer replays the stream).
    event_max_age_s: float = Field(default=3600.0, gt=0)
    # Finished notifications (delivered, failed, expired, collapsed) are kept this long for
    # the API and then deleted: the queue's history would otherwise grow without end.
    delivery_history_s: float = Field(default=7 * 86400.0, gt=0)
    # Ingest request bodies larger than this are refused (413).
    max_ingest_bytes: int = Field(default=16 * 1024 * 1024, gt=0)

    def config_path(self) -> Path | None:
        if self.alerts_config is not None:
            return self.alerts_config
        candidate = self.data_dir / "alerts.yaml"
        return candidate if candidate.exists() else None


Duration = Annotated[float, Field(ge=0)]


class Timing(BaseModel):
    group_wait_s: float
    group_interval_s: float
    # 0: never repeat (a digest tells each alert once).
    repeat_interval_s: float


# What each severity means for delivery (issue 9): critical at once and repeated until
# resolved; warning grouped; info collected into a digest.
SEVERITY_BEHAVIOURS: dict[str, Timing] = {
    "critical": Timing(group_wait_s=0, group_interval_s=30, repeat_interval_s=900),
    "warning": Timing(group_wait_s=30, group_interval_s=300, repeat_interval_s=14400),
    "info": Timing(group_wait_s=600, group_interval_s=1800, repeat_interval_s=0),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _matchers(value: Any) -> list[Matcher]:
    if value is None:
        return []
    if isinstance(value, dict):  # {"severity": "critical"} as a shorthand for equality
        return [Matcher(str(k), "=", str(v)) for k, v in value.items()]
    if not isinstance(value, list):
        raise ValueError("matchers: a list of 'name=\"value\"' strings, or a mapping")
    return [v if isinstance(v, Matcher) else Matcher.parse(str(v)) for v in value]


class RouteConfig(_Strict):
    receiver: str | None = None
    matchers: list[Matcher] = Field(default_factory=list)
    group_by: list[str] | None = None
    continue_: bool = Field(default=False, alias="continue")
    behaviour: Literal["critical", "warning", "info"] | None = None
    group_wait_s: Duration | None = None
    group_interval_s: Duration | None = None
    repeat_interval_s: Duration | None = None
    routes: list[RouteConfig] = Field(default_factory=list)

    model_config = ConfigDict(extra="forbid", populate_by_name=True, arbitrary_types_allowed=True)

    _m = field_validator("matchers", mode="before")(_matchers)


class TemplateConfig(_Strict):
    """Jinja2 (sandboxed). `title` sees the notification; `alert` one alert at a time."""

    title: str | None = None
    alert: str | None = None


class ReceiverConfig(_Strict):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    type: Literal["webhook", "slack", "teams", "none"] = "webhook"
    url: SecretStr | None = None
    # The URL from an environment variable or a file instead (it is a secret for Slack/Teams).
    url_env: str | None = None
    url_file: Path | None = None
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    send_resolved: bool = True
    # Bytes per message: each receiver's request is split below this.
    max_message_bytes: int | None = Field(default=None, gt=512)
    max_alerts_per_message: int = Field(default=100, ge=1)
    # Token bucket: messages per second and burst.
    rate_per_s: float = Field(default=5.0, gt=0)
    burst: int = Field(default=10, ge=1)
    max_in_flight: int = Field(default=4, ge=1, le=64)
    timeout_s: float = Field(default=10.0, gt=0)
    # A notification not delivered within this is given up (expired), and counted.
    max_age_s: float = Field(default=86400.0, gt=0)
    backoff_initial_s: float = Field(default=1.0, gt=0)
    backoff_max_s: float = Field(default=120.0, gt=0)
    template: TemplateConfig = Field(default_factory=TemplateConfig)

    def resolved_url(self) -> str | None:
        if self.url is not None:
            return self.url.get_secret_value()
        if self.url_env:
            return os.environ.get(self.url_env)
        if self.url_file:
            return self.url_file.read_text().strip()
        return None

    @property
    def size_limit(self) -> int:
        # Slack refuses messages near 40,000 characters; Teams 28 KB per card; a webhook: ours.
        default = {"slack": 35_000, "teams": 26_000}.get(self.type, 256_000)
        return self.max_message_bytes or default


class InhibitRule(_Strict):
    source_matchers: list[Matcher]
    target_matchers: list[Matcher]
    equal: list[str] = Field(default_factory=list)

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    _s = field_validator("source_matchers", "target_matchers", mode="before")(_matchers)


class EventSeverity(_Strict):
    """Maps a bus event type (`io.berth.node.fenced`, version dropped; `*` allowed) to an alert."""

    type: str
    severity: Literal["critical", "warning", "info"]
    alertname: str | None = None


class AlertsConfig(_Strict):
    route: RouteConfig
    receivers: list[ReceiverConfig]
    inhibit_rules: list[InhibitRule] = Field(default_factory=list)
    event_severities: list[EventSeverity] = Field(default_factory=list)
    # A firing alert posted without endsAt resolves after this if not posted again.
    resolve_timeout_s: float = Field(default=300.0, gt=0)

    @model_validator(mode="after")
    def _receivers_exist(self) -> AlertsConfig:
        names = [r.name for r in self.receivers]
        if len(set(names)) != len(names):
            raise ValueError("receivers: names must be unique")
        if self.route.receiver is None:
            raise ValueError("route: the root route needs a receiver")

        def walk(route: RouteConfig) -> None:
            if route.receiver is not None and route.receiver not in names:
                raise ValueError(f"route names receiver {route.receiver!r}, which is not in receivers")
            for child in route.routes:
                walk(child)

        walk(self.route)
        return self

    def receiver(self, name: str) -> ReceiverConfig:
        for r in self.receivers:
            if r.name == name:
                return r
        raise KeyError(name)


# Cluster-down mutes the alerts of its volumes (issue 9): a default rule, kept when a file
# gives its own rules only if it lists it too.
CLUSTER_DOWN_RULE = InhibitRule(
    source_matchers=[Matcher.parse('alertname=~"ClusterDown|CephClusterDown|StorageClusterDown"')],
    target_matchers=[Matcher.parse('volume=~".+"')],
    equal=["cluster"],
)


def default_config(webhook_url: str | None) -> AlertsConfig:
    """No file: one receiver (the webhook if given) behind one route per severity."""
    receiver = ReceiverConfig(name="default", type="webhook" if webhook_url else "none")
    if webhook_url:
        receiver.url = SecretStr(webhook_url)
    return AlertsConfig(
        route=RouteConfig(
            receiver="default",
            group_by=["alertname", "cluster"],
            behaviour="warning",
            routes=[
                RouteConfig(matchers=[Matcher("severity", "=", s)], behaviour=s)
                for s in ("critical", "warning", "info")
            ],
        ),
        receivers=[receiver],
        inhibit_rules=[CLUSTER_DOWN_RULE],
    )


def load_config(settings: AlertsSettings) -> AlertsConfig:
    path = settings.config_path()
    if path is None:
        return default_config(settings.alerts_webhook_url)
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: the alerts configuration must be a mapping")
    raw.setdefault("inhibit_rules", None)
    if raw["inhibit_rules"] is None:
        raw["inhibit_rules"] = [CLUSTER_DOWN_RULE]
    return AlertsConfig.model_validate(raw)
