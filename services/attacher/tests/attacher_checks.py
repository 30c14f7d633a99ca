"""Helpers for the attacher's behaviour tests: problem bodies, event taps, extra tokens,
nodes registered by one heartbeat, and a whole-state snapshot (to prove a refused request
changed nothing)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import httpx
from attacher_harness import Stack
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from berth_shared.bus import SYSTEM_TENANT
from berth_testing import Tenants

PROBLEM = "application/problem+json"
SYSTEM_EVENTS = f"berth.events.{SYSTEM_TENANT}.>"


def uid(prefix: str) -> str:
    """Node ids unique to one test: `_system` events are seen by every test of the session."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def add_token(tenants: Tenants, tenant: str, roles: list[str]) -> str:
    """Add a token to the test's token file (before the services start) and return it."""
    data = json.loads(tenants.path.read_text())
    token = f"tok-{tenant}-{uuid.uuid4().hex[:8]}"
    data["tokens"].append({"name": f"{tenant}-{roles[0]}", "token": token, "tenant": tenant, "roles": roles})
    tenants.path.write_text(json.dumps(data))
    return token


def assert_problem(r: httpx.Response, status: int, code: str, reason: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM), r.headers["content-type"]
    body: dict[str, Any] = r.json()
    assert body["code"] == code, body
    assert body["reason"] == (reason or code), body
    assert body["detail"], body
    return body


async def register_node(st: Stack, node_id: str, token: str | None = None, **body: Any) -> httpx.Response:
    """One heartbeat over HTTP: the node exists (alive) without an agent keeping it so."""
    payload = {"node_id": node_id, "boot_id": "boot-1", **body}
    r = await st.att.post("/v1/nodes/heartbeat", json=payload, headers=st.h(token or st.tenants.admin))
    return r


async def node_state(st: Stack, node_id: str) -> str:
    return str((await st.node(node_id))["state"])


def state_is(st: Stack, node_id: str, *states: str) -> Callable[[], Any]:
    async def check() -> bool:
        return await node_state(st, node_id) in states

    return check


async def fences(st: Stack, node_id: str) -> list[dict[str, Any]]:
    r = await st.att.get("/v1/fences", params={"node_id": node_id}, headers=st.h(st.tenants.admin))
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


async def attachments(st: Stack, token: str | None = None, **params: str) -> list[dict[str, Any]]:
    r = await st.att.get("/v1/attachments", params=params, headers=st.h(token or st.tenants.admin))
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


async def publish(st: Stack, token: str, volume_id: str, node_id: str, **extra: Any) -> httpx.Response:
    body = {"volume_id": volume_id, "node_id": node_id, **extra}
    return await st.att.post("/v1/attachments", json=body, headers=st.h(token))


async def whole_state(st: Stack) -> dict[str, Any]:
    """What the admin can see of the attacher: attachments, nodes and fences."""
    admin = st.h(st.tenants.admin)
    out: dict[str, Any] = {}
    for key, path in (("attachments", "/v1/attachments"), ("nodes", "/v1/nodes"), ("fences", "/v1/fences")):
        r = await st.att.get(path, headers=admin)
        assert r.status_code == 200, r.text
        out[key] = r.json()["items"]
    return out


class EventTap:
    """A core NATS subscription collecting events as the outbox relay publishes them."""

    def __init__(self, nc: Client, subject: str) -> None:
        self.nc = nc
        self.subject = subject
        self.msgs: list[Msg] = []
        self._arrived = asyncio.Event()
        self._sub: Subscription | None = None

    async def __aenter__(self) -> EventTap:
        self._sub = await self.nc.subscribe(self.subject, cb=self._on_msg)
        await self.nc.flush()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    async def _on_msg(self, msg: Msg) -> None:
        self.msgs.append(msg)
        self._arrived.set()

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(m.data) for m in self.msgs]

    def about(self, subject_id: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("subject") == subject_id]

    def types_about(self, subject_id: str) -> list[str]:
        return [e["type"] for e in self.about(subject_id)]

    async def wait_for(
        self, pred: Callable[[list[dict[str, Any]]], bool], within_s: float = 5.0
    ) -> list[dict[str, Any]]:
        async def until() -> None:
            while True:
                self._arrived.clear()
                if pred(self.events):
                    return
                await self._arrived.wait()

        try:
            await asyncio.wait_for(until(), within_s)
        except TimeoutError:
            got = [(e["type"], e.get("subject")) for e in self.events]
            raise AssertionError(f"events on {self.subject} never matched; got {got}") from None
        return self.events

    async def wait_type(self, subject_id: str, event_type: str, within_s: float = 5.0) -> dict[str, Any]:
        await self.wait_for(lambda _evs: event_type in self.types_about(subject_id), within_s)
        return next(e for e in self.about(subject_id) if e["type"] == event_type)


def ev(noun: str, verb: str) -> str:
    return f"io.berth.{noun}.{verb}.v1"
