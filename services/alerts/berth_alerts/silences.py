"""Silences: matchers and a time window; an alert they match is not told while active.

A tenant's silence only matches its own alerts (the tenant is part of it); an admin's
matches any. Expiring a silence ends it now; it is kept for the record. When it ends, the
alerts it held back are told at their group's next flush.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from berth_alerts import tables as t
from berth_alerts.model import LABEL_NAME, Matcher
from berth_shared.auth import Principal
from berth_shared.db import Database
from berth_shared.errors import FailedPrecondition, InvalidArgument, NotFound

MAX_DURATION = timedelta(days=365)


class MatcherIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128)
    value: str = Field(max_length=4096)
    op: str = Field(default="=", pattern=r"^(=|!=|=~|!~)$")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not LABEL_NAME.fullmatch(v):
            raise ValueError("not a label name")
        return v


class SilenceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Structured matchers, or Alertmanager-style strings: 'cluster="eu-1"', 'alertname=~"Disk.*"'.
    matchers: list[MatcherIn | str] = Field(min_length=1, max_length=64)
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    duration_s: float | None = Field(default=None, gt=0)
    comment: str = Field(min_length=1, max_length=2000)
    created_by: str | None = Field(default=None, max_length=255)

    @model_validator(mode="after")
    def _window(self) -> SilenceCreate:
        if (self.ends_at is None) == (self.duration_s is None):
            raise ValueError("give exactly one of ends_at and duration_s")
        return self


class Silence(BaseModel):
    id: str
    matchers: list[dict[str, str]]
    starts_at: datetime
    ends_at: datetime
    created_by: str
    comment: str
    tenant: str | None
    state: str  # pending | active | expired


def _matchers(items: list[MatcherIn | str]) -> list[Matcher]:
    out = []
    for m in items:
        try:
            out.append(Matcher.parse(m) if isinstance(m, str) else Matcher(m.name, m.op, m.value))  # type: ignore[arg-type]
        except ValueError as exc:
            raise InvalidArgument(str(exc), reason="invalid_matcher") from None
    if all(m.matches({}) for m in out):
        # A silence that matches an alert with no labels at all would mute everything.
        raise InvalidArgument(
            "these matchers match every alert; a silence must select something", reason="invalid_matcher"
        )
    return out


def _out(r: Any, at: datetime) -> Silence:
    state = "pending" if r.starts_at > at else ("active" if r.ends_at > at else "expired")
    return Silence(
        id=r.id,
        matchers=r.matchers,
        starts_at=r.starts_at,
        ends_at=r.ends_at,
        created_by=r.created_by,
        comment=r.comment,
        tenant=r.tenant,
        state=state,
    )


class Silences:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, caller: Principal, body: SilenceCreate) -> Silence:
        at = datetime.now(UTC)
        matchers = _matchers(body.matchers)
        starts = (body.starts_at or at).astimezone(UTC)
        ends = body.ends_at.astimezone(UTC) if body.ends_at else starts + timedelta(seconds=body.duration_s or 0)
        if ends <= starts:
            raise InvalidArgument("ends_at must be after starts_at", reason="invalid_window")
        if ends - starts > MAX_DURATION:
            raise InvalidArgument("a silence lasts at most 365 days", reason="invalid_window")
        row = {
            "id": f"sil-{uuid.uuid4().hex}",
            "matchers": [{"name": m.name, "op": m.op, "value": m.value} for m in matchers],
            "starts_at": starts,
            "ends_at": ends,
            "created_by": body.created_by or caller.user or caller.tenant,
            "comment": body.comment,
            "tenant": None if caller.is_admin else caller.tenant,
            "created_at": at,
            "updated_at": at,
        }
        async with self.db.transaction() as s:
            await s.execute(t.silences.insert().values(**row))
        return _out(_Row(row), at)

    async def list(self, caller: Principal, include_expired: bool = False) -> list[Silence]:
        at = datetime.now(UTC)
        q = select(t.silences).order_by(t.silences.c.created_at.desc())
        if not include_expired:
            q = q.where(t.silences.c.ends_at > at)
        if not caller.is_admin:
            q = q.where(t.silences.c.tenant == caller.tenant)
        async with self.db.sessions() as s:
            return [_out(r, at) for r in await s.execute(q.limit(1000))]

    async def get(self, caller: Principal, silence_id: str) -> Silence:
        async with self.db.sessions() as s:
            return _out(await self._row(s, caller, silence_id), datetime.now(UTC))

    async def expire(self, caller: Principal, silence_id: str) -> Silence:
        at = datetime.now(UTC)
        async with self.db.transaction() as s:
            row = await self._row(s, caller, silence_id)
            if row.ends_at <= at:
                raise FailedPrecondition(f"silence {silence_id} has already expired", reason="already_expired")
            await s.execute(update(t.silences).where(t.silences.c.id == silence_id).values(ends_at=at, updated_at=at))
        return await self.get(caller, silence_id)

    async def _row(self, s: AsyncSession, caller: Principal, silence_id: str) -> Any:
        q = select(t.silences).where(t.silences.c.id == silence_id)
        if not caller.is_admin:
            q = q.where(t.silences.c.tenant == caller.tenant)
        row = (await s.execute(q)).first()
        if row is None:
            raise NotFound(f"silence {silence_id} not found")
        return row


class _Row:
    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)
