"""nats-server faults under a load of creates (issue 2, faults).

The provisioner runs in-process on a dedicated nats-server (its own JetStream store) with
a durable consumer (`EventConsumer`, its own SQLite database) subscribed to the tenant's
events. Creates go half over HTTP (which needs no NATS) and half as bus commands (which
fail while NATS is away and are retried after); half the HTTP creates are sent only once
the fault has begun, so events certainly pile up behind it. Two faults, a quarter into
the load:

- `kill`: kill -9 of nats-server, down for a second, restarted on the same store;
- `freeze`: SIGSTOP for longer than the relay's publish-ack timeout, then SIGCONT, so the
  relay gives up on acks of messages the server then stores anyway and republishes them
  (JetStream must drop the copies by `Nats-Msg-Id`), and the consumer's un-acked
  deliveries come back (it must not apply them twice).

Afterwards every volume has exactly one `created` event in JetStream and the consumer
applied each event exactly once: none lost, none doubled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from berth_procs import backlog, expected_files, stream_events, volume_files
from sqlalchemy import Column, Integer, MetaData, String, Table, select
from sqlalchemy.ext.asyncio import AsyncSession

from berth_provisioner import tables as pt
from berth_provisioner.app import create_app
from berth_provisioner.config import ProvisionerSettings
from berth_shared.bus import Bus, CloudEvent, EventConsumer
from berth_shared.db import add_bus_tables, make_database
from berth_shared.errors import BerthError
from berth_shared.natsserver import NatsServer
from berth_testing import MakeSettings, Tenants, eventually, running

pytestmark = pytest.mark.slow

N_HTTP = 100
N_BUS = 100
CREATED = "io.berth.volume.created.v1"
OUTAGE_S = 1.0
FREEZE_S = 8.0  # longer than OutboxRelay's 5 s wait for a publish ack

# The consumer's own database: the bus tables plus what its handler writes. `applied` has
# no unique key on purpose, so an event handled twice would show up as two rows.
consumer_metadata = MetaData()
consumer_tables = add_bus_tables(consumer_metadata)
applied = Table(
    "applied",
    consumer_metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(64), nullable=False),
    Column("type", String(128), nullable=False),
    Column("volume_id", String(64), nullable=False),
)


async def handle(event: CloudEvent, session: AsyncSession) -> None:
    await session.execute(applied.insert().values(event_id=event.id, type=event.type, volume_id=event.subject or ""))


@pytest.fixture
def dedicated_nats(tmp_path: Path) -> Any:
    server = NatsServer(tmp_path / "nats-dedicated")
    server.start()
    yield server
    server.stop(kill=True)


@pytest.mark.parametrize("fault", ["kill", "freeze"])
async def test_nats_fault_under_create_load_loses_and_doubles_nothing(
    fault: str,
    dedicated_nats: NatsServer,
    make_settings: MakeSettings,
    tenants: Tenants,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="berth_shared.db.outbox")
    settings = make_settings(
        ProvisionerSettings,
        nats_url=dedicated_nats.url,
        default_quota_volumes=10 * (N_HTTP + N_BUS),
        default_quota_gigabytes=10 * (N_HTTP + N_BUS),
        command_timeout_s=5.0,
    )
    tenant = tenants.tenant_a
    app = create_app(settings)

    cdb = await make_database(f"sqlite+aiosqlite:///{tmp_path / 'consumer.db'}", "consumer")
    async with cdb.engine.begin() as conn:
        await conn.run_sync(consumer_metadata.create_all)

    async with running(app, tenants.a) as http:
        consumer_bus = await Bus.connect(dedicated_nats.url, "fault-consumer")
        client_bus = await Bus.connect(dedicated_nats.url, "fault-client")
        consumer = EventConsumer(
            consumer_bus,
            cdb,
            consumer_tables,
            stream=settings.events_stream,
            durable=f"fault-{uuid.uuid4().hex[:8]}",
            filter_subject=f"berth.events.{tenant}.>",
            handler=handle,
            # Messages in flight when NATS dies come back after ack_wait: keep it short.
            ack_wait=2.0,
            max_deliver=20,
        )
        await consumer.start()
        try:
            done = 0
            restart_now = asyncio.Event()
            fault_on = asyncio.Event()
            failed_bus: list[str] = []

            def spec(i: int) -> dict[str, Any]:
                return {"name": f"load-{i:03d}", "size_gib": 1, "volume_type": "standard"}

            def progressed() -> None:
                nonlocal done
                done += 1
                if done == (N_HTTP + N_BUS) // 4:
                    restart_now.set()

            async def via_http(i: int) -> None:
                if i >= N_HTTP // 2:
                    await fault_on.wait()  # half the HTTP creates land while NATS is away
                # HTTP creates do not need NATS: they all succeed, at worst after the
                # client's retry when the operation outlived the request (409 aborted).
                for _ in range(20):
                    r = await http.post("/v1/volumes", json=spec(i))
                    if r.status_code != 409 or r.json()["code"] != "aborted":
                        break
                assert r.status_code == 201, r.text
                progressed()

            async def via_bus(i: int) -> None:
                try:
                    await client_bus.request("berth.provisioner.volume.create", spec(i), token=tenants.a, timeout=5.0)
                except BerthError:  # NATS down: no responder / no reply in time
                    failed_bus.append(spec(i)["name"])
                progressed()

            async def nats_fault() -> float:
                await asyncio.wait_for(restart_now.wait(), 30)
                t0 = time.monotonic()
                if fault == "kill":
                    await asyncio.to_thread(dedicated_nats.stop, True)
                    fault_on.set()
                    await asyncio.sleep(OUTAGE_S)  # creates go on, events wait in the outbox
                    await asyncio.to_thread(dedicated_nats.start)
                else:
                    assert dedicated_nats.proc is not None
                    dedicated_nats.proc.send_signal(signal.SIGSTOP)
                    fault_on.set()
                    try:
                        await asyncio.sleep(FREEZE_S)
                    finally:
                        dedicated_nats.proc.send_signal(signal.SIGCONT)
                return time.monotonic() - t0

            load = [via_http(i) for i in range(N_HTTP)] + [via_bus(N_HTTP + i) for i in range(N_BUS)]
            outage, *_ = await asyncio.gather(nats_fault(), *load)
            assert done == N_HTTP + N_BUS
            assert outage is not None and outage < 15
            if fault == "freeze":  # the relay did give up on acks, so republishes happened
                assert any("outbox publish failed" in r.getMessage() for r in caplog.records)

            # The client retries what failed during the outage (same names: idempotent).
            async def retry(name: str) -> None:
                for _ in range(50):
                    try:
                        await client_bus.request(
                            "berth.provisioner.volume.create",
                            {"name": name, "size_gib": 1, "volume_type": "standard"},
                            token=tenants.a,
                            timeout=5.0,
                        )
                        return
                    except BerthError:
                        await asyncio.sleep(0.2)
                raise AssertionError(f"create {name} kept failing after NATS came back")

            await asyncio.gather(*(retry(n) for n in failed_bus))

            # Bounded wait: every operation done, every outbox row relayed.
            await eventually(lambda: backlog(app.state.rt.db), lambda b: b == (0, 0), within=30, what="outbox drained")

            async with app.state.rt.db.sessions() as s:
                vols = (
                    await s.execute(select(pt.volumes.c.id, pt.volumes.c.status).where(pt.volumes.c.tenant == tenant))
                ).all()
                ob = pt.bus_tables.outbox
                out_rows = (
                    await s.execute(
                        select(ob.c.event_id, ob.c.payload).where(ob.c.subject.like(f"berth.events.{tenant}.%"))
                    )
                ).all()
            volume_ids = {v.id for v in vols}
            assert len(volume_ids) == N_HTTP + N_BUS
            assert {v.status for v in vols} == {"available"}
            assert volume_files(settings.data_dir) == expected_files(volume_ids)
            outbox_created = {
                r.event_id: json.loads(r.payload)["subject"]
                for r in out_rows
                if json.loads(r.payload)["type"] == CREATED
            }
            assert sorted(outbox_created.values()) == sorted(volume_ids), "one created event per volume in the outbox"

            # In JetStream: exactly one message per event (the relay's republishes were deduplicated).
            in_stream = [
                e
                for e in await stream_events(dedicated_nats.url, f"berth.events.{tenant}.volume.created")
                if e["event"]["type"] == CREATED
            ]
            stream_ids = [e["event"]["id"] for e in in_stream]
            assert len(stream_ids) == len(set(stream_ids)), "an event is twice in the stream: dedup failed"
            assert set(stream_ids) == set(outbox_created), "the stream and the outbox disagree"
            assert all(e["msg_id"] == e["event"]["id"] for e in in_stream), "Nats-Msg-Id is not the event id"

            # The consumer: every event applied, none twice (bounded wait for redeliveries).
            async def applied_rows() -> list[Any]:
                async with cdb.sessions() as s:
                    return list(
                        (
                            await s.execute(
                                select(applied.c.event_id, applied.c.volume_id).where(applied.c.type == CREATED)
                            )
                        ).all()
                    )

            rows = await eventually(
                applied_rows,
                lambda rs: len({r.event_id for r in rs}) >= len(outbox_created),
                within=30,
                what="consumer caught up",
            )
            await asyncio.sleep(0.5)  # a late duplicate would land now
            rows = await applied_rows()
            ids = [r.event_id for r in rows]
            assert len(ids) == len(set(ids)), "an event was processed twice"
            assert set(ids) == set(outbox_created), "an event was lost (or invented)"
            assert sorted(r.volume_id for r in rows) == sorted(volume_ids)
            async with cdb.sessions() as s:
                parked = (await s.execute(select(consumer_tables.parked_messages.c.reason))).scalars().all()
            assert parked == []
        finally:
            await consumer.stop()
            for bus in (consumer_bus, client_bus):
                with contextlib.suppress(Exception):
                    await bus.close()
            await cdb.dispose()
