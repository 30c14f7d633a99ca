"""Bus commands end to end: a CommandServer and a client Bus on a real nats-server."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import BaseModel, Field

from berth_shared.auth import StaticTokenValidator
from berth_shared.bus import Bus
from berth_shared.bus.client import H_DEADLINE, H_ERROR_CODE
from berth_shared.bus.commands import CommandContext, CommandServer
from berth_shared.errors import (
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from berth_shared.natsserver import NatsServer
from berth_shared.telemetry import Metrics
from berth_testing import Tenants


class Thing(BaseModel):
    name: str = Field(min_length=1, max_length=8)
    size_gib: int = Field(gt=0)


class ThingOut(BaseModel):
    name: str
    size_gib: int
    tenant: str
    idempotency_key: str | None
    remaining_s: float


@dataclass
class Rig:
    server: CommandServer
    client: Bus
    tenants: Tenants
    service: str
    prefix: str  # berth.<service>
    calls: list[str]
    slow_started: asyncio.Event

    async def call(self, verb: str, payload: Any, token: str | None = "default", **kw: Any) -> dict[str, Any]:
        token = self.tenants.a if token == "default" else token
        return await self.client.request(f"{self.prefix}.thing.{verb}", payload, token=token, **kw)


@pytest.fixture
async def rig(nats_server: NatsServer, tenants: Tenants) -> AsyncIterator[Rig]:
    service = f"svc{uuid.uuid4().hex[:8]}"
    prefix = f"berth.{service}"
    bus = await Bus.connect(nats_server.url, service)
    server = CommandServer(bus, StaticTokenValidator(tenants.path), Metrics(service), default_timeout=7.0)
    calls: list[str] = []
    slow_started = asyncio.Event()

    @server.command(f"{prefix}.thing.create", Thing)
    async def create(req: Thing, ctx: CommandContext) -> ThingOut:
        calls.append(req.name)
        return ThingOut(
            name=req.name,
            size_gib=req.size_gib,
            tenant=ctx.principal.tenant,
            idempotency_key=ctx.idempotency_key,
            remaining_s=ctx.remaining_s(),
        )

    @server.command(f"{prefix}.thing.get", Thing)
    async def get(req: Thing, ctx: CommandContext) -> None:
        raise NotFound(f"thing {req.name} not found", reason="thing_not_found")

    @server.command(f"{prefix}.thing.grow", Thing)
    async def grow(req: Thing, ctx: CommandContext) -> dict[str, Any]:
        raise ResourceExhausted("quota exceeded", reason="quota_exceeded", limit=10, used=10)

    @server.command(f"{prefix}.thing.crash", Thing)
    async def crash(req: Thing, ctx: CommandContext) -> None:
        raise RuntimeError("connection to postgresql://berth:hunter2@db.internal/prov failed")

    @server.command(f"{prefix}.thing.slow", Thing)
    async def slow(req: Thing, ctx: CommandContext) -> dict[str, Any]:
        slow_started.set()
        await asyncio.sleep(0.1 * req.size_gib)
        return {"slept": 0.1 * req.size_gib}

    await server.start(version="1.2.3")
    client = await Bus.connect(nats_server.url, "test-client")
    try:
        yield Rig(server, client, tenants, service, prefix, calls, slow_started)
    finally:
        await client.close()
        await server.stop()
        await bus.close()


async def test_round_trip(rig: Rig) -> None:
    before = time.time()
    body = await rig.call("create", Thing(name="a", size_gib=3), idempotency_key="key-1", timeout=4.0)
    out = ThingOut.model_validate(body)
    assert (out.name, out.size_gib, out.tenant, out.idempotency_key) == ("a", 3, rig.tenants.tenant_a, "key-1")
    # The handler sees the caller's deadline, not its own default.
    assert 3.0 < out.remaining_s <= 4.0 + (time.time() - before)

    typed = await rig.client.request_model(
        f"{rig.prefix}.thing.create", {"name": "b", "size_gib": 1}, ThingOut, token=rig.tenants.b
    )
    assert typed.tenant == rig.tenants.tenant_b
    assert typed.idempotency_key is None
    assert rig.calls == ["a", "b"]


async def test_missing_token(rig: Rig) -> None:
    with pytest.raises(Unauthenticated):
        await rig.call("create", {"name": "a", "size_gib": 1}, token=None)
    assert rig.calls == []


async def test_bad_token(rig: Rig) -> None:
    with pytest.raises(Unauthenticated) as exc:
        await rig.call("create", {"name": "a", "size_gib": 1}, token="not-a-token")
    assert exc.value.detail == "invalid token"
    assert rig.calls == []


async def test_malformed_authorization_header(rig: Rig) -> None:
    msg = await rig.client.nc.request(
        f"{rig.prefix}.thing.create", b'{"name": "a", "size_gib": 1}', headers={"Authorization": rig.tenants.a}
    )
    assert msg.headers is not None and msg.headers[H_ERROR_CODE] == "401"
    assert rig.calls == []


async def test_invalid_payload(rig: Rig) -> None:
    with pytest.raises(InvalidArgument) as exc:
        await rig.call("create", {"name": "much-too-long", "size_gib": 0})
    err = exc.value
    assert err.reason == "validation_failed"
    fields = {e["field"]: e["message"] for e in err.extra["errors"]}
    assert set(fields) == {"name", "size_gib"}
    assert "8" in fields["name"] and "0" in fields["size_gib"]
    assert rig.calls == []

    for raw in (b"not json", b"[]"):
        msg = await rig.client.nc.request(
            f"{rig.prefix}.thing.create", raw, headers={"Authorization": f"Bearer {rig.tenants.a}"}
        )
        assert msg.headers is not None and msg.headers[H_ERROR_CODE] == "400"
        assert json.loads(msg.data)["reason"] == "validation_failed"


async def test_typed_errors_cross_the_bus(rig: Rig) -> None:
    with pytest.raises(NotFound) as nf:
        await rig.call("get", {"name": "x", "size_gib": 1})
    assert nf.value.detail == "thing x not found"
    assert nf.value.reason == "thing_not_found"

    with pytest.raises(ResourceExhausted) as re:
        await rig.call("grow", {"name": "x", "size_gib": 1})
    assert re.value.reason == "quota_exceeded"
    assert re.value.extra == {"limit": 10, "used": 10}


async def test_unexpected_exception_is_internal_without_internals(rig: Rig) -> None:
    msg = await rig.client.nc.request(
        f"{rig.prefix}.thing.crash",
        b'{"name": "a", "size_gib": 1}',
        headers={"Authorization": f"Bearer {rig.tenants.a}"},
    )
    assert msg.headers is not None
    assert msg.headers[H_ERROR_CODE] == "500"
    for leaked in ("hunter2", "postgresql", "RuntimeError", "Traceback"):
        assert leaked not in msg.data.decode()
        assert leaked not in json.dumps(msg.headers)

    with pytest.raises(Internal) as exc:
        await rig.call("crash", {"name": "a", "size_gib": 1})
    assert exc.value.detail == "internal error"
    # The server stays up.
    assert (await rig.call("create", {"name": "after", "size_gib": 1}))["name"] == "after"


async def test_no_responder_is_unavailable(rig: Rig) -> None:
    with pytest.raises(Unavailable):
        await rig.call("nobody-serves-this", {"name": "a", "size_gib": 1})


async def test_no_reply_in_time_is_deadline_exceeded(rig: Rig) -> None:
    with pytest.raises(DeadlineExceeded):
        await rig.call("slow", {"name": "a", "size_gib": 5}, timeout=0.2)


async def test_deadline_header(rig: Rig) -> None:
    # No deadline header: the server's default applies.
    msg = await rig.client.nc.request(
        f"{rig.prefix}.thing.create",
        b'{"name": "a", "size_gib": 1}',
        headers={"Authorization": f"Bearer {rig.tenants.a}", H_DEADLINE: "garbage"},
    )
    assert 6.5 < json.loads(msg.data)["remaining_s"] <= 7.0


async def test_service_discovery(rig: Rig) -> None:
    name = f"berth-{rig.service}"
    ping = json.loads((await rig.client.nc.request(f"$SRV.PING.{name}", b"")).data)
    assert ping["name"] == name and ping["version"] == "1.2.3"

    info = json.loads((await rig.client.nc.request(f"$SRV.INFO.{name}", b"")).data)
    endpoints = {e["subject"]: e for e in info["endpoints"]}
    assert set(endpoints) == {f"{rig.prefix}.thing.{v}" for v in ("create", "get", "grow", "crash", "slow")}
    assert all(e["queue_group"] == name for e in endpoints.values())

    await rig.call("create", {"name": "a", "size_gib": 1})
    stats = json.loads((await rig.client.nc.request(f"$SRV.STATS.{name}", b"")).data)
    by_subject = {e["subject"]: e for e in stats["endpoints"]}
    assert by_subject[f"{rig.prefix}.thing.create"]["num_requests"] == 1

    # The bare `$SRV.PING` reaches every service; ours is among the answers.
    inbox = rig.client.nc.new_inbox()
    sub = await rig.client.nc.subscribe(inbox)
    await rig.client.nc.publish("$SRV.PING", b"", reply=inbox)
    names: set[str] = set()
    deadline = time.monotonic() + 2.0
    while name not in names and time.monotonic() < deadline:
        msg = await sub.next_msg(timeout=deadline - time.monotonic())
        names.add(json.loads(msg.data)["name"])
    await sub.unsubscribe()
    assert name in names


async def test_requests_are_served_concurrently(rig: Rig) -> None:
    start = time.perf_counter()
    results = await asyncio.gather(*(rig.call("slow", {"name": f"n{i}", "size_gib": 1}) for i in range(50)))
    elapsed = time.perf_counter() - start
    assert all(r == {"slept": 0.1} for r in results)
    # One at a time would take 5 s.
    assert elapsed < 2.0, f"50 requests of 0.1 s took {elapsed:.2f} s"


async def test_stop_waits_for_requests_in_flight(rig: Rig) -> None:
    pending = asyncio.ensure_future(rig.call("slow", {"name": "a", "size_gib": 3}))
    await asyncio.wait_for(rig.slow_started.wait(), 5.0)
    await rig.server.stop()
    assert await pending == {"slept": pytest.approx(0.3)}
    with pytest.raises(Unavailable):
        await rig.call("create", {"name": "a", "size_gib": 1})
