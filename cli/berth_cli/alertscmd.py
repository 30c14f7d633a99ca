"""`berth alerts ...`, `berth silences ...`, `berth dashboards ...`: the alerts service's API.

Alerts and silences take the demo token by default (a tenant sees and silences its own
alerts); notifications, receivers, rejected payloads and dashboards need the admin one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from berth_cli.client import AlertsUrl, AsJson, Limit, Token, api, seg
from berth_cli.output import Column, fail, table

alerts = typer.Typer(help="Alerts received and notifications sent (the alert relay).", no_args_is_help=True)
silences = typer.Typer(help="Silences: mute alerts matching label matchers for a while.", no_args_is_help=True)
dashboards = typer.Typer(help="Grafana instances and the dashboard sync (admin).", no_args_is_help=True)

ALERT_COLS = [
    Column("FINGERPRINT", "fingerprint", id=True),
    Column("STATUS", "status"),
    Column("NAME", lambda r: r["labels"].get("alertname", "")),
    Column("SEVERITY", lambda r: r["labels"].get("severity", "")),
    Column(
        "LABELS",
        lambda r: " ".join(f"{k}={v}" for k, v in sorted(r["labels"].items()) if k not in ("alertname", "severity")),
        drop=1,
    ),
    Column("SINCE", "starts_at", drop=2),
]
NOTE_COLS = [
    Column("ID", "id", id=True),
    Column("RECEIVER", "receiver"),
    Column("STATE", "state"),
    Column("STATUS", "status"),
    Column("ALERTS", "alert_count"),
    Column("ATTEMPTS", "attempts", drop=2),
    Column("ERROR", "last_error", drop=1),
    Column("CREATED", "created_at", drop=3),
]
SILENCE_COLS = [
    Column("ID", "id", id=True),
    Column("STATE", "state"),
    Column("MATCHERS", lambda r: ", ".join(f'{m["name"]}{m["op"]}"{m["value"]}"' for m in r["matchers"])),
    Column("ENDS", "ends_at", drop=2),
    Column("BY", "created_by", drop=3),
    Column("COMMENT", "comment", drop=1),
]


@alerts.command("list")
def list_alerts(
    state: Annotated[str | None, typer.Option(help="firing or resolved.")] = None,
    limit: Limit = 100,
    url: AlertsUrl = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Alerts as Berth last heard of them, newest first."""
    a = api("alerts", url, token, as_json)
    a.show_list(a.call("GET", "/v1/alerts", params={"state": state, "limit": limit}), ALERT_COLS)


@alerts.command("notifications")
def list_notifications(
    state: Annotated[str | None, typer.Option(help="pending, sending, delivered, failed, expired, collapsed.")] = None,
    receiver: Annotated[str | None, typer.Option(help="Only this receiver's.")] = None,
    limit: Limit = 100,
    url: AlertsUrl = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Notifications and their delivery outcome, newest first (admin)."""
    a = api("alerts", url, token, as_json, admin=True)
    params = {"state": state, "receiver": receiver, "limit": limit}
    a.show_list(a.call("GET", "/v1/notifications", params=params), NOTE_COLS)


@alerts.command("receivers")
def list_receivers(url: AlertsUrl = None, token: Token = None, as_json: AsJson = False) -> None:
    """Each receiver with its notifications counted by state (admin)."""
    a = api("alerts", url, token, as_json, admin=True)
    cols = [
        Column("NAME", "name", id=True),
        Column("TYPE", "type"),
        Column("COUNTS", lambda r: " ".join(f"{k}={v}" for k, v in sorted(r["counts"].items()))),
    ]
    a.show_list(a.call("GET", "/v1/receivers"), cols)


@alerts.command("rejected")
def list_rejected(limit: Limit = 20, url: AlertsUrl = None, token: Token = None, as_json: AsJson = False) -> None:
    """Malformed payloads refused with a 400, kept for inspection (admin)."""
    a = api("alerts", url, token, as_json, admin=True)
    cols = [
        Column("ID", "id", id=True),
        Column("SOURCE", "source"),
        Column("REASON", "reason"),
        Column("BYTES", "body_bytes", drop=2),
        Column("RECEIVED", "received_at", drop=1),
    ]
    a.show_list(a.call("GET", "/v1/rejected", params={"limit": limit}), cols)


@silences.command("create")
def create_silence(
    matchers: Annotated[list[str], typer.Argument(help='Label matchers: alertname="DiskFull" cluster=~"eu-.*".')],
    comment: Annotated[str, typer.Option("--comment", "-c", help="Why (required).")],
    duration: Annotated[str, typer.Option("--duration", "-d", help="How long: 30m, 2h, 1d.")] = "2h",
    url: AlertsUrl = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Mute the alerts these matchers select, from now on for --duration."""
    a = api("alerts", url, token, as_json)
    body = {"matchers": matchers, "duration_s": parse_duration(duration), "comment": comment}
    a.show(a.call("POST", "/v1/silences", body=body))


@silences.command("list")
def list_silences(
    expired: Annotated[bool, typer.Option("--expired", help="Include expired silences.")] = False,
    url: AlertsUrl = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Silences in force (and, with --expired, those that ended): what they mute, until when, by whom."""
    a = api("alerts", url, token, as_json)
    a.show_list(a.call("GET", "/v1/silences", params={"include_expired": expired}), SILENCE_COLS)


@silences.command("expire")
def expire_silence(silence_id: str, url: AlertsUrl = None, token: Token = None, as_json: AsJson = False) -> None:
    """End a silence now (it is kept, expired, for the record)."""
    a = api("alerts", url, token, as_json)
    a.show(a.call("DELETE", f"/v1/silences/{seg(silence_id)}"))


@dashboards.command("register")
def register_instance(
    name: str,
    grafana_url: Annotated[str, typer.Option("--grafana-url", help="Grafana's base URL.")],
    token_file: Annotated[Path, typer.Option(help="File holding the service-account token (kept out of argv).")],
    org_id: Annotated[int, typer.Option(help="Grafana organisation id.")] = 1,
    folder_uid: Annotated[str, typer.Option(help="Folder uid (made if missing).")] = "berth",
    folder_title: Annotated[str, typer.Option(help="Folder title.")] = "Berth",
    datasource: Annotated[str, typer.Option(help="Prometheus datasource uid on that Grafana.")] = "Prometheus",
    url: AlertsUrl = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Register (or replace) a Grafana instance the dashboards are kept in sync on."""
    a = api("alerts", url, token, as_json, admin=True)
    try:
        secret = token_file.read_text().strip()
    except OSError as exc:
        fail(f"cannot read {token_file}: {exc}", 2)
    body = {
        "url": grafana_url,
        "org_id": org_id,
        "token": secret,
        "folder_uid": folder_uid,
        "folder_title": folder_title,
        "variables": {"datasource": datasource},
    }
    a.show(a.call("PUT", f"/v1/grafana/instances/{seg(name)}", body=body))


@dashboards.command("sync")
def sync_dashboards(
    instance: Annotated[str | None, typer.Option(help="Only this instance.")] = None,
    url: AlertsUrl = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Push every dashboard to every instance now; exit 1 if any failed."""
    a = api("alerts", url, token, as_json, admin=True)
    body = a.call("POST", "/v1/dashboards/sync", params={"instance": instance})
    cols = [
        Column("INSTANCE", "instance"),
        Column("UID", "uid", id=True),
        Column("OUTCOME", "outcome"),
        Column("VERSION", "version", drop=2),
        Column("MESSAGE", "message", drop=1),
    ]
    a.show(body, lambda b: table(b["items"], cols))
    if any(i["outcome"] == "error" for i in body["items"]):
        raise typer.Exit(1)


@dashboards.command("status")
def dashboards_status(url: AlertsUrl = None, token: Token = None, as_json: AsJson = False) -> None:
    """What the last sync did with each dashboard on each instance."""
    a = api("alerts", url, token, as_json, admin=True)
    cols = [
        Column("INSTANCE", "instance"),
        Column("UID", "uid", id=True),
        Column("OUTCOME", "outcome"),
        Column("VERSION", "remote_version", drop=2),
        Column("SYNCED", "synced_at", drop=3),
        Column("MESSAGE", "message", drop=1),
    ]
    a.show(a.call("GET", "/v1/dashboards"), lambda b: table(b["instances"], cols))


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """`90s`, `30m`, `2h`, `1d` (a bare number is seconds)."""
    value, unit = (text[:-1], text[-1]) if text and text[-1] in _UNITS else (text, "s")
    try:
        seconds = float(value) * _UNITS[unit]
    except ValueError:
        fail(f"not a duration: {text!r} (e.g. 30m, 2h, 1d)", 2)
    if seconds <= 0:
        fail("the duration must be positive", 2)
    return seconds


def register(app: typer.Typer) -> None:
    app.add_typer(alerts, name="alerts")
    app.add_typer(silences, name="silences")
    app.add_typer(dashboards, name="dashboards")
