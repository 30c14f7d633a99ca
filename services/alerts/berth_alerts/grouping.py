"""What a group tells its receiver when it flushes, and how a backlog collapses. Pure.

A notification tells the alerts of the group that changed since the group last notified
(new or re-fired ones, resolved ones when the receiver wants them); a repeat tells every
alert still firing. Muted alerts (silenced, inhibited) wait, pending, until unmuted.
Each notification is keyed by (group, receiver, alert-set, state): the dedup key.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from berth_alerts.model import Matcher, matches_all


@dataclass
class Member:
    fp: str
    labels: dict[str, str]
    annotations: dict[str, str]
    status: str
    starts_at: datetime
    ends_at: datetime | None
    generator_url: str | None
    oneshot: bool
    changed_at: datetime
    pending: bool
    notified: str | None

    @functools.cached_property
    def tag(self) -> str:  # asked several times per flush: computed once
        return f"{self.status}@{self.starts_at.isoformat()}"

    def as_payload(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fp,
            "status": self.status,
            "labels": self.labels,
            "annotations": self.annotations,
            "startsAt": self.starts_at.isoformat(),
            "endsAt": self.ends_at.isoformat() if self.ends_at and self.status == "resolved" else None,
            "generatorURL": self.generator_url,
            "changedAt": self.changed_at.isoformat(),
        }


@dataclass
class Plan:
    kind: str  # "notify" | "repeat" | "" (nothing to tell)
    include: list[Member] = field(default_factory=list)
    # fingerprint -> what the receiver now knows of it (None: leave the member pending)
    settle: dict[str, str] = field(default_factory=dict)
    still_pending: bool = False

    @property
    def status(self) -> str:
        return "firing" if any(m.status == "firing" for m in self.include) else "resolved"


def plan(members: Iterable[Member], *, muted: Callable[[Member], bool], send_resolved: bool, repeat: bool) -> Plan:
    p = Plan(kind="")
    told_firing: list[Member] = []
    for m in members:
        was_firing = bool(m.notified and m.notified.startswith("firing@"))
        if not m.pending:
            if repeat and m.status == "firing" and was_firing and not m.oneshot and not muted(m):
                told_firing.append(m)
            continue
        if m.status == "firing":
            if m.notified == m.tag:
                p.settle[m.fp] = m.tag
            elif muted(m):
                p.still_pending = True
            else:
                p.include.append(m)
                p.settle[m.fp] = m.tag
        else:
            if was_firing and send_resolved and not m.oneshot and not muted(m):
                p.include.append(m)
            p.settle[m.fp] = m.tag
    if p.include:
        p.kind = "notify"
    elif told_firing:
        p.kind = "repeat"
        p.include = told_firing
    return p


def dedup_key(group_id: str, receiver: str, p: Plan, repeat_seq: int) -> str:
    alert_set = sorted(f"{m.fp}:{m.tag}" for m in p.include)
    parts = [group_id, receiver, p.status, p.kind, *alert_set]
    if p.kind == "repeat":  # each repeat is a notification of its own
        parts.append(str(repeat_seq))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def payload(p: Plan, group_labels: dict[str, str], route_id: str) -> dict[str, Any]:
    alerts = sorted((m.as_payload() for m in p.include), key=lambda a: (a["status"] != "firing", a["fingerprint"]))
    return {"group_labels": group_labels, "route_id": route_id, "kind": p.kind, "alerts": alerts}


def collapse(payloads: list[dict[str, Any]]) -> dict[str, Any]:
    """A backlog of one group's notifications as one: each alert in its latest state."""
    latest: dict[str, dict[str, Any]] = {}
    for pl in payloads:  # oldest first: later states overwrite earlier ones
        for a in pl["alerts"]:
            latest[a["fingerprint"]] = a
    merged = dict(payloads[-1])
    merged["alerts"] = sorted(latest.values(), key=lambda a: (a["status"] != "firing", a["fingerprint"]))
    merged["kind"] = "notify"
    merged["collapsed"] = len(payloads)
    return merged


def payload_status(pl: dict[str, Any]) -> str:
    return "firing" if any(a["status"] == "firing" for a in pl["alerts"]) else "resolved"


# -- muting: silences and inhibition ------------------------------------------------------


@dataclass(frozen=True)
class SilenceView:
    id: str
    matchers: tuple[Matcher, ...]
    tenant: str | None

    def mutes(self, labels: dict[str, str]) -> bool:
        if self.tenant is not None and labels.get("tenant") != self.tenant:
            return False
        return matches_all(self.matchers, labels)


def equal_hash(names: list[str], labels: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps([labels.get(n, "") for n in names]).encode()).hexdigest()[:16]


class Muter:
    """Decides whether an alert is muted now, by an active silence or a firing inhibitor."""

    def __init__(
        self,
        silences: list[SilenceView],
        rules: list[tuple[tuple[Matcher, ...], tuple[Matcher, ...], list[str]]],
        inhibitors: dict[str, set[str]],
    ) -> None:
        self.silences = silences
        self.rules = rules
        self.inhibitors = inhibitors  # "rule:equal-hash" -> fingerprints of firing sources

    def silenced_by(self, labels: dict[str, str]) -> str | None:
        for s in self.silences:
            if s.mutes(labels):
                return s.id
        return None

    def inhibited(self, fp: str, labels: dict[str, str]) -> bool:
        if not self.inhibitors:  # nothing inhibits now: no rule's target needs matching
            return False
        for i, (_, target, equal) in enumerate(self.rules):
            if matches_all(target, labels):
                sources = self.inhibitors.get(f"{i}:{equal_hash(equal, labels)}")
                if sources and (len(sources) > 1 or fp not in sources):
                    return True
        return False

    def __call__(self, m: Member) -> bool:
        return (bool(self.silences) and self.silenced_by(m.labels) is not None) or self.inhibited(m.fp, m.labels)


def inhibit_keys(
    rules: list[tuple[tuple[Matcher, ...], tuple[Matcher, ...], list[str]]], labels: dict[str, str]
) -> list[str]:
    """The inhibitions an alert with these labels exerts while it fires."""
    return [f"{i}:{equal_hash(equal, labels)}" for i, (src, _, equal) in enumerate(rules) if matches_all(src, labels)]
