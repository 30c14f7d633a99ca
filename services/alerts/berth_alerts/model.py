"""The one internal alert model every ingest format is turned into, and label matchers.

Pure: no I/O. An alert is identified by its fingerprint, a hash of its sorted labels
(as in Alertmanager), so the same alert posted twice, by an HA pair or a retry, is one.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

Status = Literal["firing", "resolved"]
Severity = Literal["critical", "warning", "info"]
SEVERITIES: tuple[Severity, ...] = ("critical", "warning", "info")
LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


_COMPACT = json.JSONEncoder(separators=(",", ":"))  # json.dumps with options makes one a call


def fingerprint(labels: dict[str, str]) -> str:
    blob = _COMPACT.encode(sorted(labels.items()))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


@dataclass
class Alert:
    labels: dict[str, str]
    annotations: dict[str, str]
    status: Status
    starts_at: datetime
    # When a firing alert resolves by itself if it is not posted again (None: resolve_timeout).
    ends_at: datetime | None
    source: str
    generator_url: str | None = None
    # One-shot alerts (most bus events) are notified once: never repeated, no resolved message.
    oneshot: bool = False
    fp: str = field(default="")

    def __post_init__(self) -> None:
        if not self.fp:
            self.fp = fingerprint(self.labels)

    def set_label(self, name: str, value: str) -> None:
        self.labels[name] = value
        self.fp = fingerprint(self.labels)

    @property
    def severity(self) -> str:
        return self.labels.get("severity", "")


MatchOp = Literal["=", "!=", "=~", "!~"]
_MATCHER = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(?:"((?:[^"\\]|\\.)*)"|([^"\s,]*))\s*$')


@dataclass(frozen=True)
class Matcher:
    name: str
    op: MatchOp
    value: str

    def __post_init__(self) -> None:
        if self.op in ("=~", "!~"):
            try:
                re.compile(self.value)
            except re.error as exc:
                raise ValueError(f"matcher {self.name}{self.op}{self.value!r}: bad regular expression: {exc}") from None

    def matches(self, labels: dict[str, str]) -> bool:
        got = labels.get(self.name, "")
        if self.op == "=":
            return got == self.value
        if self.op == "!=":
            return got != self.value
        hit = _fullmatch(self.value, got)
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        return f'{self.name}{self.op}"{self.value}"'

    @classmethod
    def parse(cls, text: str) -> Matcher:
        """`severity="critical"`, `cluster=~"eu-.*"`, `team!=storage` (Alertmanager's syntax)."""
        m = _MATCHER.match(text)
        if not m:
            raise ValueError(f'not a matcher: {text!r} (expected name="value", with =, !=, =~ or !~)')
        value = m.group(3) if m.group(3) is not None else m.group(4)
        value = re.sub(r"\\(.)", r"\1", value)
        return cls(m.group(1), m.group(2), value)  # type: ignore[arg-type]


_COMPILED: dict[str, re.Pattern[str]] = {}


def _fullmatch(pattern: str, value: str) -> bool:
    rx = _COMPILED.get(pattern)
    if rx is None:
        rx = _COMPILED[pattern] = re.compile(pattern)
    return rx.fullmatch(value) is not None


def matches_all(matchers: tuple[Matcher, ...] | list[Matcher], labels: dict[str, str]) -> bool:
    return all(m.matches(labels) for m in matchers)
