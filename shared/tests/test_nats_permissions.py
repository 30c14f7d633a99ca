"""The bus contract's permissions, each proven against a real nats-server with Berth's
accounts (decentralised JWT auth): what every identity may do, and what it is refused."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import ConsumerConfig, DeliverPolicy, StreamConfig
from nats.js.errors import NotFoundError

from berth_shared.auth import Principal
from berth_shared.bus.client import Bus
from berth_shared.errors import PermissionDenied
from berth_shared.natsauth import EventCredentialsRequest, TenantIssuer, issue_event_credentials
from berth_testing.secure_nats import SecureNats

STREAM = "BERTH_EVENTS"
SHORT = 0.5  # a refused request gets no reply (the server says why, which the tests wait for)


@pytest.fixture
async def admin(secure_nats: SecureNats) -> AsyncIterator[Client]:
    async with secure_nats.connect("admin") as (nc, _):
        js = nc.jetstream()
        try:
            await js.stream_info(STREAM)
        except NotFoundError:
            await js.add_stream(StreamConfig(name=STREAM, subjects=["berth.events.>"], duplicate_window=600.0))
        yield nc


def tenant_id() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


async def stored(admin: Client, subject: str) -> int:
    """How many messages the events stream holds on `subject`."""
    info = await admin.jetstream().stream_info(STREAM, subjects_filter=subject)
    return sum((info.state.subjects or {}).values())


async def issue(secure_nats: SecureNats, tenant: str, tmp_path: Path, consumer: str = "events") -> tuple[Path, str]:
    """Tenant subscriber credentials, issued as the provisioner issues them: (creds file, consumer)."""
    async with secure_nats.connect("provisioner") as (nc, _):
        issuer = TenantIssuer.load(secure_nats.auth.issuer_file)
        got = await issue_event_credentials(
            Bus(nc, "provisioner"), issuer, Principal(tenant), EventCredentialsRequest(consumer=consumer)
        )
    path = tmp_path / f"{tenant}-{consumer}.creds"
    path.write_text(got.creds)
    assert (got.filter_subject, got.inbox_prefix) == (f"berth.events.{tenant}.>", f"_INBOX.t.{tenant}")
    return path, got.consumer


async def test_each_service_publishes_only_its_own_events(secure_nats: SecureNats, admin: Client) -> None:
    t = tenant_id()
    async with secure_nats.connect("provisioner") as (prov, _):
        ack = await prov.jetstream().publish(f"berth.events.{t}.volume.created", b"{}")
        assert ack.stream == STREAM
    async with secure_nats.connect("attacher") as (att, refused):
        await att.jetstream().publish(f"berth.events.{t}.attachment.created", b"{}")
        await att.jetstream().publish("berth.events._system.node.fenced", b"{}")
        with pytest.raises(NatsTimeout):  # a forged provisioner event: refused, never stored
            await att.jetstream().publish(f"berth.events.{t}.volume.deleted", b"{}", timeout=SHORT)
        await refused.wait_for(f"berth.events.{t}.volume.deleted")
    assert await stored(admin, f"berth.events.{t}.volume.created") == 1
    assert await stored(admin, f"berth.events.{t}.attachment.created") == 1
    assert await stored(admin, f"berth.events.{t}.volume.deleted") == 0


async def test_a_service_serves_only_its_own_commands(secure_nats: SecureNats) -> None:
    async with secure_nats.connect("attacher") as (att, refused):
        await att.subscribe("berth.attacher.volume.publish", queue="berth-attacher")
        await att.subscribe("berth.provisioner.volume.create", queue="berth-provisioner")
        await refused.wait_for("berth.provisioner.volume.create")
        await att.subscribe("_INBOX.svc.provisioner.>")  # another identity's replies
        await refused.wait_for("_INBOX.svc.provisioner.>")
        assert not any("berth.attacher.volume.publish" in s for s in refused.seen)


async def test_commands_round_trip_between_identities(secure_nats: SecureNats) -> None:
    """A CSI adapter's command reaches the provisioner and its reply comes back: the
    provisioner may answer (responses) without any publish right on the CSI's inbox."""
    async with secure_nats.connect("provisioner") as (prov, prov_refused):

        async def answer(msg: object) -> None:
            await msg.respond(b'{"ok": true}')  # type: ignore[attr-defined]

        await prov.subscribe("berth.provisioner.volume.get", queue="berth-provisioner", cb=answer)
        await prov.flush()
        async with secure_nats.connect("csi") as (csi, csi_refused):
            reply = await csi.request("berth.provisioner.volume.get", b"{}", timeout=5)
            assert json.loads(reply.data) == {"ok": True}
            assert reply.subject.startswith("_INBOX.svc.csi.")
            assert csi_refused.seen == [] and prov_refused.seen == []


async def test_the_csi_adapter_sends_commands_only(secure_nats: SecureNats, admin: Client) -> None:
    t = tenant_id()
    async with secure_nats.connect("csi") as (csi, refused):
        await csi.publish(f"berth.events.{t}.volume.created", b"{}")
        await refused.wait_for(f"berth.events.{t}.volume.created")
        await csi.subscribe("berth.events.>")
        await refused.wait_for("berth.events.>")
        await csi.subscribe("berth.provisioner.>")
        await refused.wait_for("berth.provisioner.>")
        with pytest.raises(NatsTimeout):
            await csi.jetstream(timeout=SHORT).stream_info(STREAM)
    assert await stored(admin, f"berth.events.{t}.volume.created") == 0


async def test_a_tenant_reads_its_own_events_through_its_consumer(
    secure_nats: SecureNats, admin: Client, tmp_path: Path
) -> None:
    a, b = tenant_id(), tenant_id()
    async with secure_nats.connect("provisioner") as (prov, _):
        for tenant in (a, b):
            await prov.jetstream().publish(f"berth.events.{tenant}.volume.created", tenant.encode())
    creds, consumer = await issue(secure_nats, a, tmp_path)
    assert consumer == f"{a}@events"

    async with secure_nats.connect(creds) as (nc, refused):
        sub = await nc.jetstream().pull_subscribe(f"berth.events.{a}.>", durable=consumer, stream=STREAM)
        msgs = await sub.fetch(10, timeout=5)
        assert [(m.subject, m.data) for m in msgs] == [(f"berth.events.{a}.volume.created", a.encode())]
        for m in msgs:
            await m.ack_sync(timeout=5)
        live = await nc.subscribe(f"berth.events.{a}.>")  # core subscriptions on its own events too
        await nc.flush()
        async with secure_nats.connect("provisioner") as (prov, _):
            await prov.publish(f"berth.events.{a}.snapshot.created", b"live")
        assert (await live.next_msg(timeout=5)).data == b"live"
        assert refused.seen == []
    info = await admin.jetstream().consumer_info(STREAM, consumer)
    assert (info.config.filter_subject, info.num_ack_pending, info.delivered.stream_seq) == (
        f"berth.events.{a}.>", 0, info.ack_floor.stream_seq,
    )  # fmt: skip

    # Issuing again keeps the consumer where it is (nothing is delivered twice).
    await issue(secure_nats, a, tmp_path)
    again = await admin.jetstream().consumer_info(STREAM, consumer)
    assert (again.delivered.stream_seq, again.num_pending) == (info.delivered.stream_seq, 1)  # the live one


async def test_a_tenant_can_neither_forge_events_nor_reach_another_tenants(
    secure_nats: SecureNats, admin: Client, tmp_path: Path
) -> None:
    a, b = tenant_id(), tenant_id()
    _, a_consumer = await issue(secure_nats, a, tmp_path)
    b_creds, b_consumer = await issue(secure_nats, b, tmp_path)
    async with secure_nats.connect("provisioner") as (prov, _):
        await prov.jetstream().publish(f"berth.events.{a}.volume.created", b"secret of a")

    async with secure_nats.connect(b_creds) as (nc, refused):
        js = nc.jetstream(timeout=SHORT)
        # A forged event, even in its own namespace: refused, never stored.
        with pytest.raises(NatsTimeout):
            await js.publish(f"berth.events.{b}.volume.created", b"forged", timeout=SHORT)
        await refused.wait_for(f"berth.events.{b}.volume.created")
        # Another tenant's events: no core subscription ...
        await nc.subscribe(f"berth.events.{a}.>")
        await refused.wait_for(f"berth.events.{a}.>")
        # ... no fetch from its consumer ...
        with pytest.raises(NatsTimeout):
            await js.consumer_info(STREAM, a_consumer)
        await refused.wait_for(f"$JS.API.CONSUMER.INFO.{STREAM}.{a_consumer}")
        await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{a_consumer}", b"{}", reply="_INBOX.t.x")
        await refused.wait_for(f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{a_consumer}")
        # ... no consumer of its own on them (nor any consumer at all: no push delivery elsewhere) ...
        cross = ConsumerConfig(
            name=b_consumer, durable_name=b_consumer, filter_subject=f"berth.events.{a}.>",
            deliver_policy=DeliverPolicy.ALL,
        )  # fmt: skip
        with pytest.raises(NatsTimeout):
            await js.add_consumer(STREAM, cross)
        await refused.wait_for(f"$JS.API.CONSUMER.CREATE.{STREAM}.{b_consumer}.berth.events.{a}.>")
        with pytest.raises(NatsTimeout):
            await js.pull_subscribe(f"berth.events.{a}.>", durable=f"{b}@other", stream=STREAM)
        # ... and no one else's replies or the stream's contents.
        await nc.subscribe("_INBOX.>")
        await refused.wait_for("_INBOX.>")
        with pytest.raises(NatsTimeout):
            await js.stream_info(STREAM)

    assert await stored(admin, f"berth.events.{b}.volume.created") == 0
    assert (await admin.jetstream().consumer_info(STREAM, b_consumer)).config.filter_subject == f"berth.events.{b}.>"
    with pytest.raises(NotFoundError):
        await admin.jetstream().consumer_info(STREAM, f"{b}@other")


async def test_only_an_admin_issues_another_tenants_credentials(secure_nats: SecureNats) -> None:
    async with secure_nats.connect("provisioner") as (nc, _):
        issuer = TenantIssuer.load(secure_nats.auth.issuer_file)
        with pytest.raises(PermissionDenied):
            await issue_event_credentials(
                Bus(nc, "provisioner"), issuer, Principal("ta"), EventCredentialsRequest(tenant="tb")
            )
        admin = Principal("ops", frozenset({"admin"}))
        got = await issue_event_credentials(Bus(nc, "provisioner"), issuer, admin, EventCredentialsRequest(tenant="tb"))
        assert got.consumer == "tb@events"
