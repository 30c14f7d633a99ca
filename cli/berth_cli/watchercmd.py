"""`berth watcher ...`: the storage watcher's runs, findings, quarantine, QoS policies,
usage and forecast over its HTTP API (docs/watcher.md). The admin token by default: most of
this is an operator's business (a tenant's token sees its own findings)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from berth_cli.client import AllPages, AsJson, Limit, StartingToken, Token, WatcherUrl, api, seg
from berth_cli.output import Column, fail, gib, note, record

watcher = typer.Typer(help="The storage watcher: QoS, orphans, reclaim, usage (docs/watcher.md).", no_args_is_help=True)
findings = typer.Typer(help="What the watcher found, and what to do about it.", no_args_is_help=True)
quarantine = typer.Typer(help="Objects the watcher quarantined: restore or purge them.", no_args_is_help=True)
qos = typer.Typer(help="Size-scaled IO limits per volume type.", no_args_is_help=True)

RUN_COLS = [
    Column("ID", "id", id=True),
    Column("JOB", "job"),
    Column("STATUS", "status"),
    Column("TRIGGER", "trigger", drop=2),
    Column("STARTED", "started_at", drop=3),
    Column("OPENED", "findings_opened"),
    Column("RESOLVED", "findings_resolved", drop=1),
    Column("ACTIONS", lambda r: len(r.get("actions") or [])),
]
FINDING_COLS = [
    Column("ID", "id", id=True),
    Column("KIND", "kind"),
    Column("SEVERITY", "severity"),
    Column("STATE", "state"),
    Column("RESOURCE", "resource_id", id=True),
    Column("TENANT", "tenant", drop=2),
    Column("SINCE", "first_seen_at", drop=3),
    Column("ACTION", "action", drop=1),
]
QUARANTINE_COLS = [
    Column("ID", "id", id=True),
    Column("OBJECT", "object_id", id=True),
    Column("KIND", "object_kind", drop=2),
    Column("STATE", "state"),
    Column("GiB", lambda r: gib(r.get("size_bytes")), drop=3),
    Column("SINCE", "quarantined_at", drop=1),
    Column("PURGE AFTER", "purge_after"),
]
QOS_COLS = [
    Column("VOLUME", "volume_id", id=True),
    Column("TYPE", "volume_type"),
    Column("GiB", "size_gib"),
    Column("WANTED", "wanted", drop=2),
    Column("ENFORCED", "enforced"),
    Column("SATURATED", "saturated"),
    Column("LOAD", lambda r: " ".join(f"{k}={v:.0f}" for k, v in (r.get("load") or {}).items()) or "-", drop=1),
]
USAGE_COLS = [
    Column("SCOPE", "scope"),
    Column("KEY", "key", id=True),
    Column("VOLUMES", "volumes"),
    Column("PROV GiB", lambda r: gib(r.get("provisioned_bytes"))),
    Column("USED GiB", lambda r: gib(r.get("used_bytes"))),
    Column("OVERCOMMIT", "overcommit_ratio", drop=1),
    Column("GROWTH GiB/d", lambda r: gib(r.get("growth_bytes_per_day")), drop=2),
]
FORECAST_COLS = [
    Column("CLUSTER", "cluster_name", id=True),
    Column("FILL %", lambda r: round(100 * r["fill_ratio"], 1)),
    Column("THRESHOLD %", lambda r: round(100 * r["threshold_ratio"], 1)),
    Column("GROWTH GiB/d", lambda r: gib(r.get("growth_bytes_per_day"))),
    Column("DAYS LEFT", "days_until_threshold"),
    Column("SEVERITY", "severity"),
]


def _api(url: str | None, token: str | None, as_json: bool) -> Any:
    return api("watcher", url, token, as_json, admin=True)


def _show_run(run: dict[str, Any]) -> None:
    record({k: v for k, v in run.items() if k not in ("sources", "actions", "summary")})
    for s in run.get("sources") or []:
        state = f"{s['items']} items in {s['seconds']} s" if s["ok"] else f"INCOMPLETE: {s.get('error')}"
        typer.echo(f"  source {s['name']}: {state}")
    for a in run.get("actions") or []:
        typer.echo(f"  action {a['kind']} {a['target']}: {a['outcome']} {a.get('detail') or ''}".rstrip())


@watcher.command("run")
def run(
    job: Annotated[str, typer.Argument(help="qos, orphans, reclaim or usage.")],
    wait: Annotated[float, typer.Option(help="Seconds to wait for the run to finish.")] = 120.0,
    url: WatcherUrl = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Run a job now (the leading watcher runs it) and show its record."""
    a = _api(url, token, as_json)
    out = a.call("POST", "/v1/runs", body={"job": job, "wait_s": wait})
    a.show(out, _show_run)
    if out["status"] in ("queued", "running"):
        note(f"still {out['status']}; see it with: berth watcher runs --job {job}")
    elif out["status"] != "complete":
        raise typer.Exit(1)


@watcher.command("runs")
def runs(
    job: Annotated[str | None, typer.Option(help="Only this job's runs.")] = None,
    limit: Limit = 20,
    url: WatcherUrl = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """The latest runs, newest first: partial ones read a source incompletely and acted on nothing."""
    a = _api(url, token, as_json)
    a.show_list(a.call("GET", "/v1/runs", params={"job": job, "limit": limit}), RUN_COLS)


@findings.command("list")
def findings_list(
    kind: Annotated[str | None, typer.Option(help="e.g. backend_orphan, stale_attachment.")] = None,
    state: Annotated[str | None, typer.Option(help="open, acting, quarantined, ignored, resolved.")] = None,
    tenant: Annotated[str | None, typer.Option(help="One tenant's findings.")] = None,
    include_resolved: Annotated[bool, typer.Option("--all", help="Resolved ones too.")] = False,
    limit: Limit = 100,
    starting_token: StartingToken = None,
    all_pages: AllPages = False,
    url: WatcherUrl = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Open findings (what, where, since when); `show` says what to do about one."""
    a = _api(url, token, as_json)
    params = {
        "kind": kind,
        "state": state,
        "tenant": tenant,
        "include_resolved": include_resolved or None,
        "limit": limit,
        "starting_token": starting_token,
    }
    a.show_list(a.pages("/v1/findings", params, all_pages), FINDING_COLS)


@findings.command("show")
def findings_show(finding_id: str, url: WatcherUrl = None, token: Token = None, as_json: AsJson = False) -> None:
    """One finding: what it is, since when, and what to do."""
    a = _api(url, token, as_json)
    a.show(a.call("GET", f"/v1/findings/{seg(finding_id)}"))


@findings.command("ignore")
def findings_ignore(
    finding_id: str,
    reason: Annotated[str, typer.Option(help="Why it is fine (kept with the finding).")],
    url: WatcherUrl = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Mark a finding as known and fine: never acted on, not reported again."""
    a = _api(url, token, as_json)
    a.show(a.call("POST", f"/v1/findings/{seg(finding_id)}/ignore", body={"reason": reason}))


@findings.command("quarantine")
def findings_quarantine(
    finding_id: str,
    wait: Annotated[float, typer.Option(help="Seconds to wait for the leader to do it.")] = 60.0,
    url: WatcherUrl = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Quarantine a finding's backend object now (never a delete: restorable until purged)."""
    a = _api(url, token, as_json)
    out = a.call("POST", f"/v1/findings/{seg(finding_id)}/quarantine", params={"wait_s": wait})
    a.show(out)
    if not as_json:
        note(f"restore it with: berth watcher quarantine restore {out['id']}")


@quarantine.command("list")
def quarantine_list(
    state: Annotated[str | None, typer.Option(help="quarantined, restored, purged, failed.")] = "quarantined",
    limit: Limit = 100,
    all_pages: AllPages = False,
    url: WatcherUrl = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """What waits in the quarantine, and when it will be purged."""
    a = _api(url, token, as_json)
    params = {"state": state or None, "limit": limit}
    a.show_list(a.pages("/v1/quarantine", params, all_pages), QUARANTINE_COLS)


@quarantine.command("restore")
def quarantine_restore(entry_id: str, url: WatcherUrl = None, token: Token = None, as_json: AsJson = False) -> None:
    """Put a quarantined object back where it was, its data untouched."""
    a = _api(url, token, as_json)
    a.show(a.call("POST", f"/v1/quarantine/{seg(entry_id)}/restore"))


@quarantine.command("purge")
def quarantine_purge(
    entry_id: str,
    yes: Annotated[bool, typer.Option("--yes", help="Yes, its data goes for good.")] = False,
    url: WatcherUrl = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Purge a quarantined object now instead of at the end of its quarantine."""
    if not yes:
        fail("purging deletes the data for good: add --yes", 2)
    a = _api(url, token, as_json)
    a.show(a.call("POST", f"/v1/quarantine/{seg(entry_id)}/purge", params={"wait_s": 60}))


@qos.command("set")
def qos_set(
    volume_type: str,
    policy: Annotated[
        str,
        typer.Argument(
            help='JSON, or @file: e.g. \'{"iops": {"base": 100, "per_gib": 10, "floor": 200, "ceiling": 5000}}\''
        ),
    ],
    url: WatcherUrl = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Set a volume type's limits: each clamp(base + per_gib x size, floor, ceiling)."""
    text = Path(policy[1:]).read_text() if policy.startswith("@") else policy
    try:
        body = json.loads(text)
    except ValueError as exc:
        fail(f"the policy is not JSON: {exc}", 2)
    a = _api(url, token, as_json)
    a.show(a.call("PUT", f"/v1/qos/policies/{seg(volume_type)}", body=body))


@qos.command("list")
def qos_list(url: WatcherUrl = None, token: Token = None, as_json: AsJson = False) -> None:
    """Every volume type's QoS policy."""
    a = _api(url, token, as_json)
    cols = [Column("TYPE", "volume_type", id=True)] + [
        Column(k.upper(), lambda r, k=k: r.get(k) or "-", drop=i + 1)  # type: ignore[misc]
        for i, k in enumerate(("iops", "bps", "read_iops", "write_iops", "read_bps", "write_bps"))
    ]
    a.show_list(a.call("GET", "/v1/qos/policies"), cols)


@qos.command("delete")
def qos_delete(volume_type: str, url: WatcherUrl = None, token: Token = None, as_json: AsJson = False) -> None:
    """Remove a type's policy: its volumes become unlimited on the next QoS run."""
    a = _api(url, token, as_json)
    a.show(a.call("DELETE", f"/v1/qos/policies/{seg(volume_type)}"), lambda _b: note(f"removed {volume_type}"))


@qos.command("status")
def qos_status(
    saturated: Annotated[bool, typer.Option("--saturated", help="Only volumes at their limit.")] = False,
    limit: Limit = 100,
    all_pages: AllPages = False,
    url: WatcherUrl = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Per volume: limits wanted and held, enforced or not, and the measured load."""
    a = _api(url, token, as_json)
    params = {"saturated_only": saturated or None, "limit": limit}
    a.show_list(a.pages("/v1/qos/volumes", params, all_pages), QOS_COLS)


@watcher.command("usage")
def usage(
    scope: Annotated[str | None, typer.Option(help="tenant, cluster or volume_type.")] = None,
    url: WatcherUrl = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Provisioned and used per tenant, cluster and volume type (the last usage run)."""
    a = _api(url, token, as_json)
    a.show_list(a.call("GET", "/v1/usage", params={"scope": scope}), USAGE_COLS)


@watcher.command("forecast")
def forecast(url: WatcherUrl = None, token: Token = None, as_json: AsJson = False) -> None:
    """Per cluster: fill level, growth and days until its fill threshold."""
    a = _api(url, token, as_json)
    a.show_list(a.call("GET", "/v1/forecasts"), FORECAST_COLS)


def register(app: typer.Typer) -> None:
    watcher.add_typer(findings, name="findings")
    watcher.add_typer(quarantine, name="quarantine")
    watcher.add_typer(qos, name="qos")
    app.add_typer(watcher, name="watcher")
