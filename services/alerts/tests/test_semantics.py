"""Pure semantics: payload formats, the routing tree, grouping plans, muting, rendering."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from berth_alerts import formats
from berth_alerts.config import CLUSTER_DOWN_RULE, AlertsConfig, ReceiverConfig
from berth_alerts.events import event_alert
from berth_alerts.grouping import Member, Muter, SilenceView, collapse, dedup_key, inhibit_keys, plan
from berth_alerts.model import Matcher
from berth_alerts.render import _ENV, DEFAULT_ALERT, Renderer, default_alert_line
from berth_alerts.routing import build_tree, group_id, place
from berth_shared.bus import CloudEvent

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)

# Real-shaped samples (field for field as the senders post them).
PROMETHEUS_POST = [
    {
        "labels": {"alertname": "CephOSDDown", "severity": "critical", "cluster": "eu-1", "instance": "osd-3"},
        "annotations": {"summary": "OSD osd.3 is down"},
        "startsAt": "2026-12-03T11:58:00.123456789Z",
        "endsAt": "2026-12-03T12:04:00.123456789Z",
        "generatorURL": "http://prometheus-eu-1:9090/graph?g0.expr=ceph_osd_up+%3D%3D+0",
    },
    {
        "labels": {"alertname": "CephOSDDown", "severity": "critical", "cluster": "eu-1", "instance": "osd-4"},
        "annotations": {},
        "startsAt": "2026-12-03T11:00:00Z",
        "endsAt": "2026-12-03T11:30:00Z",
    },
]
LOKI_POST = [
    {
        "labels": {"alertname": "RBDMapErrors", "severity": "warning", "namespace": "db", "job": "kubelet"},
        "annotations": {"description": "rbd map failed 12 times in 5m"},
        "startsAt": "2026-12-03T11:59:30Z",
        "generatorURL": "http://loki:3100/explore",
    }
]
GRAFANA_UNIFIED = {
    "receiver": "berth",
    "status": "firing",
    "orgId": 1,
    "groupKey": "{}/{}:{}",
    "groupLabels": {"alertname": "High latency"},
    "commonLabels": {"alertname": "High latency"},
    "commonAnnotations": {},
    "externalURL": "http://grafana:3000/",
    "version": "1",
    "truncatedAlerts": 0,
    "title": "[FIRING:1] High latency",
    "state": "alerting",
    "message": "**Firing**",
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "High latency", "grafana_folder": "Storage", "severity": "warning"},
            "annotations": {"summary": "p99 over 50 ms"},
            "startsAt": "2026-12-03T11:55:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://grafana:3000/alerting/grafana/abc/view",
            "fingerprint": "57c6d9296de2ad39",
            "silenceURL": "http://grafana:3000/alerting/silence/new",
            "dashboardURL": "http://grafana:3000/d/berth-ops",
            "panelURL": "",
            "values": {"B": 73.2, "C": 1},
            "valueString": "[ var='B' labels={} value=73.2 ]",
        }
    ],
}
GRAFANA_LEGACY = {
    "dashboardId": 1,
    "evalMatches": [{"value": 100, "metric": "High value", "tags": None}],
    "imageUrl": "",
    "message": "Notification Message",
    "orgId": 1,
    "panelId": 2,
    "ruleId": 1,
    "ruleName": "Panel Title alert",
    "ruleUrl": "http://localhost:3000/d/hZ7BuVbWz/test?panelId=2",
    "state": "alerting",
    "tags": {"tag name": "tag value", "cluster": "us-2"},
    "title": "[Alerting] Panel Title alert",
}


def test_prometheus_and_loki_posts() -> None:
    alerts = formats.from_postable(PROMETHEUS_POST, "prometheus", NOW)
    assert [a.status for a in alerts] == ["firing", "resolved"]  # the second's endsAt has passed
    assert alerts[0].starts_at == datetime(2026, 12, 3, 11, 58, 0, 123456, tzinfo=UTC)
    loki = formats.from_postable(LOKI_POST, "loki", NOW, resolve_timeout_s=300)
    assert loki[0].status == "firing" and loki[0].ends_at == NOW + timedelta(seconds=300)
    # The same labels are the same alert, whoever sent it.
    again = formats.from_postable(PROMETHEUS_POST[:1], "prometheus", NOW + timedelta(seconds=60))
    assert again[0].fp == alerts[0].fp


def test_postable_bodies_parse_as_their_documents() -> None:
    """The one-pass parse of a body gives what json.loads then validation gives, errors too."""
    for doc in (PROMETHEUS_POST, LOKI_POST, [{**PROMETHEUS_POST[0], "extra": {"x": [1]}, "endsAt": None}]):
        body = json.dumps(doc).encode()
        assert formats.from_postable_body(body, "prometheus", NOW) == formats.from_postable(doc, "prometheus", NOW)
    for bad in (b"[{", b"{}", b'[{"labels": {}}]', b'[{"labels": {"bad name": "x"}}]', b"\xff", b"[NaN]"):
        with pytest.raises(formats.PayloadError) as fast:
            formats.from_postable_body(bad, "prometheus", NOW)
        with pytest.raises(formats.PayloadError) as slow:
            formats.from_postable(formats.parse_json(bad), "prometheus", NOW)
        assert (fast.value.detail, fast.value.errors) == (slow.value.detail, slow.value.errors)


def test_grafana_unified_and_legacy() -> None:
    [u] = formats.from_grafana(GRAFANA_UNIFIED, NOW)
    assert u.status == "firing" and u.ends_at is None and u.labels["grafana_org"] == "1"
    assert json.loads(u.annotations["values"]) == {"B": 73.2, "C": 1}
    [legacy] = formats.from_grafana(GRAFANA_LEGACY, NOW)
    assert legacy.labels["alertname"] == "Panel Title alert" and legacy.labels["cluster"] == "us-2"
    assert "tag name" not in legacy.labels  # not a label name
    assert legacy.annotations["values"] == "High value=100.0"
    ok = formats.from_grafana({**GRAFANA_LEGACY, "state": "ok"}, NOW)[0]
    assert ok.status == "resolved" and ok.fp == legacy.fp


def test_bad_payloads_name_their_fields() -> None:
    with pytest.raises(formats.PayloadError) as err:
        formats.from_alertmanager({"version": "3", "status": "firing", "alerts": [{"labels": {"bad name": "x"}}]}, NOW)
    fields = {e["field"] for e in err.value.errors}
    assert {"version", "alerts.0.status", "alerts.0.labels.bad name.[key]"} <= fields
    with pytest.raises(formats.PayloadError):
        formats.from_grafana({"state": "alerting"}, NOW)


CONFIG = AlertsConfig.model_validate(
    {
        "route": {
            "receiver": "default",
            "group_by": ["alertname", "cluster"],
            "routes": [
                {"matchers": ['severity="critical"'], "receiver": "pager", "behaviour": "critical", "continue": True},
                {"matchers": ['tenant=~"team-.*"'], "receiver": "teams", "group_by": ["tenant"]},
                {"matchers": {"severity": "info"}, "behaviour": "info", "group_by": []},
            ],
        },
        "receivers": [{"name": n} for n in ("default", "pager", "teams")],
    }
)


def test_routing_tree_continue_and_inheritance() -> None:
    tree = build_tree(CONFIG)
    crit = place(tree, {"alertname": "NodeFenced", "severity": "critical", "tenant": "team-a", "cluster": "c1"})
    assert [p.route.receiver for p in crit] == ["pager", "teams"]  # continue: the next sibling too
    assert crit[0].route.timing.group_wait_s == 0 and crit[0].route.timing.repeat_interval_s == 900
    assert crit[1].group_labels == {"tenant": "team-a"}
    warn = place(tree, {"alertname": "Slow", "severity": "warning", "cluster": "c1"})
    assert [p.route.receiver for p in warn] == ["default"] and warn[0].route.id == "0"
    assert warn[0].group_labels == {"alertname": "Slow", "cluster": "c1"}
    info = place(tree, {"alertname": "Created", "severity": "info", "cluster": "c2"})
    assert info[0].route.timing.repeat_interval_s == 0 and info[0].group_labels == {}  # one digest
    other = place(tree, {"alertname": "Slow", "severity": "warning", "cluster": "c2"})
    assert other[0].group_id != warn[0].group_id


def member(fp: str, status: str = "firing", pending: bool = True, notified: str | None = None, **labels: str) -> Member:
    return Member(fp, {"alertname": "A", **labels}, {}, status, NOW, None, None, False, NOW, pending, notified)


def never(_: Member) -> bool:
    return False


def test_plan_tells_changes_then_repeats_then_resolves() -> None:
    a, b = member("a"), member("b")
    p = plan([a, b], muted=never, send_resolved=True, repeat=False)
    assert p.kind == "notify" and {m.fp for m in p.include} == {"a", "b"}
    told = member("a", pending=False, notified=a.tag)
    assert plan([told], muted=never, send_resolved=True, repeat=False).kind == ""
    rep = plan([told], muted=never, send_resolved=True, repeat=True)
    assert rep.kind == "repeat" and [m.fp for m in rep.include] == ["a"]
    gone = member("a", status="resolved", notified=a.tag)
    assert plan([gone], muted=never, send_resolved=True, repeat=False).status == "resolved"
    assert plan([gone], muted=never, send_resolved=False, repeat=False).kind == ""
    never_told = member("z", status="resolved")
    assert plan([never_told], muted=never, send_resolved=True, repeat=False).include == []
    # The key: same set and state, same key; a repeat differs by its sequence.
    assert dedup_key("g", "r", p, 0) == dedup_key(
        "g", "r", plan([b, a], muted=never, send_resolved=True, repeat=False), 5
    )
    assert dedup_key("g", "r", rep, 1) != dedup_key("g", "r", rep, 2)


def test_silence_and_cluster_down_inhibition() -> None:
    rules = [
        (tuple(CLUSTER_DOWN_RULE.source_matchers), tuple(CLUSTER_DOWN_RULE.target_matchers), CLUSTER_DOWN_RULE.equal)
    ]
    down = {"alertname": "ClusterDown", "cluster": "eu-1"}
    keys = inhibit_keys(rules, down)
    muter = Muter([], rules, {k: {"src"} for k in keys})
    assert muter(member("v1", volume="vol-1", cluster="eu-1"))  # its volumes: muted
    assert not muter(member("v2", volume="vol-2", cluster="eu-2"))  # another cluster's: not
    assert not muter(member("n", cluster="eu-1"))  # not a volume alert
    sil = SilenceView("s", (Matcher.parse('alertname="A"'), Matcher.parse('cluster=~"eu-.*"')), tenant="t1")
    m2 = Muter([sil], [], {})
    assert m2(member("x", cluster="eu-9", tenant="t1"))
    assert not m2(member("y", cluster="eu-9", tenant="t2"))  # a tenant's silence is only its own


def test_collapse_keeps_each_alerts_latest_state() -> None:
    first = {"alerts": [{"fingerprint": "a", "status": "firing"}, {"fingerprint": "b", "status": "firing"}]}
    second = {"alerts": [{"fingerprint": "a", "status": "resolved"}, {"fingerprint": "c", "status": "firing"}]}
    merged = collapse([first, second])
    assert [(a["fingerprint"], a["status"]) for a in merged["alerts"]] == [
        ("b", "firing"),
        ("c", "firing"),
        ("a", "resolved"),
    ]


def test_bus_events_map_by_type_from_the_table() -> None:
    fenced = CloudEvent(
        source="berth/attacher",
        type="io.berth.node.fenced.v1",
        subject="node-7",
        berthtenant="_system",
        data={"node_id": "node-7", "epoch": 3},
    )
    a = event_alert(fenced, [], NOW)
    assert (a.labels["alertname"], a.labels["severity"], a.oneshot) == ("NodeFenced", "critical", False)
    unfenced = CloudEvent(
        source="berth/attacher",
        type="io.berth.node.unfenced.v1",
        subject="node-7",
        berthtenant="_system",
        data={"node_id": "node-7", "epoch": 3},
    )
    r = event_alert(unfenced, [], NOW)
    assert r.status == "resolved" and r.fp == a.fp  # resolves the same alert
    finding = CloudEvent(
        source="berth/watcher",
        type="io.berth.orphan.found.v2",
        subject="vol-1",
        berthtenant="t",
        data={"severity": "critical", "cluster_id": "c1"},
    )
    f = event_alert(finding, [], NOW)
    assert f.labels["severity"] == "critical" and f.labels["alertname"] == "OrphanFound" and f.oneshot
    found = {"id": "fnd-1", "kind": "orphan_volume", "severity": "critical", "cluster_id": "c1", "summary": "leaked"}
    opened = CloudEvent(
        source="berth/watcher", type="io.berth.finding.opened.v1", subject="fnd-1", berthtenant="_system", data=found
    )
    closed = CloudEvent(
        source="berth/watcher",
        type="io.berth.finding.resolved.v1",
        subject="fnd-1",
        berthtenant="_system",
        data={**found, "state": "resolved"},
    )
    o, c = event_alert(opened, [], NOW), event_alert(closed, [], NOW)
    assert (o.labels["alertname"], o.labels["severity"], o.labels["cluster"], o.labels["kind"]) == (
        "StorageFinding",
        "critical",
        "c1",
        "orphan_volume",
    )
    assert c.status == "resolved" and c.fp == o.fp and o.annotations["summary"] == "leaked"
    created = CloudEvent(source="berth/provisioner", type="io.berth.volume.created.v1", berthtenant="t", data={})
    assert event_alert(created, [], NOW).labels["severity"] == "info"


def test_group_ids_stay_what_they_were() -> None:
    """Groups in the database keep their ids: the remembered id is the hash it always was."""
    config = {"route": {"receiver": "r", "group_by": ["alertname", "b"]}, "receivers": [{"name": "r"}]}
    tree = build_tree(AlertsConfig.model_validate(config))
    for labels in ({"b": "2", "alertname": "X"}, {"alertname": "X", "b": "2"}, {"alertname": "Y"}):
        gl = {n: labels.get(n, "") for n in tree.group_by}
        blob = json.dumps([tree.id, tree.receiver, sorted(gl.items())], separators=(",", ":"))
        want = hashlib.sha256(blob.encode()).hexdigest()[:32]
        assert group_id(tree, gl) == want == group_id(tree, dict(reversed(gl.items())))
        assert [p.group_id for p in place(tree, labels)] == [want]


def test_the_default_alert_line_is_the_default_template() -> None:
    template = _ENV.from_string(DEFAULT_ALERT)
    labelsets = [
        {},
        {"alertname": "CephOSDDown"},
        {"alertname": "Big", "severity": "critical", "cluster": "eu-1", "tenant": "acme", "node": "n1", "volume": "v"},
        {"severity": "info", "cluster": "", "node": "n\u00e9", "instance": "i"},
    ]
    for labels in labelsets:
        for status in ("firing", "resolved"):
            for notes in ({}, {"summary": ""}, {"summary": "OSD down \U0001f4a5"}, {"description": "d"}):
                alert = {"status": status, "labels": labels, "annotations": notes}
                assert default_alert_line(alert) == template.render(alert=alert), alert


def _notification(receiver: str, alertname: str, alerts: list[dict[str, Any]]) -> dict[str, Any]:
    """A firing notification of one group, as the delivery queue hands it to the renderer."""
    return {
        "receiver": receiver,
        "status": "firing",
        "kind": "notify",
        "group_id": "g",
        "dedup_key": "k",
        "group_labels": {"alertname": alertname},
        "alerts": alerts,
    }


def test_webhook_bodies_are_what_json_dumps_gives() -> None:
    """The webhook body is assembled from each alert's JSON: byte for byte the document's."""
    alerts = [
        {
            "fingerprint": f"{i:04}",
            "status": "firing" if i % 3 else "resolved",
            "labels": {"alertname": "N\u00e9", "severity": "warning", "instance": f"i{i}", "q": 'a"b\\'},
            "annotations": {"summary": "s" * (i * 40)},
            "startsAt": NOW.isoformat(),
            "endsAt": None,
        }
        for i in range(30)
    ]
    n = _notification("w", "N\u00e9", alerts)
    for limit in (1024, 4000, 1 << 20):
        msgs = Renderer(ReceiverConfig(name="w", type="webhook", max_message_bytes=limit)).messages(n)
        assert sum(m.alerts for m in msgs) == 30
        told = []
        for m in msgs:
            doc = json.loads(m.body)
            assert m.body == json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
            assert len(doc["alerts"]) == m.alerts and len(doc["text"].splitlines()) == m.alerts
            told += doc["alerts"]
        assert told == alerts


def test_render_splits_below_the_limit_and_falls_back_to_plain() -> None:
    alerts = [
        {
            "fingerprint": f"{i:04}",
            "status": "firing",
            "labels": {"alertname": "Big", "severity": "warning", "instance": f"i{i}"},
            "annotations": {"summary": "x" * 400},
            "startsAt": NOW.isoformat(),
            "endsAt": None,
        }
        for i in range(60)
    ]
    n = _notification("s", "Big", alerts)
    for kind, limit in (("slack", 4000), ("teams", 6000), ("webhook", 8000)):
        r = Renderer(ReceiverConfig(name="s", type=kind, max_message_bytes=limit))
        msgs = r.messages(n)
        assert len(msgs) > 1 and all(len(m.body) <= limit for m in msgs)
        assert sum(m.alerts for m in msgs) == 60
    broken = ReceiverConfig.model_validate({"name": "b", "type": "slack", "template": {"alert": "{{ alert.x.y.z() }}"}})
    [msg] = Renderer(broken).messages({**n, "alerts": alerts[:2]})
    assert msg.template_failed
    text = json.loads(msg.body)["text"]
    assert "template failed" in text and "instance=i0" in text and "instance=i1" in text
