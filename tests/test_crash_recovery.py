"""kill -9 of the provisioner at precise points of a create and a delete (issue 2, faults).

The process is started with `BERTH_CRASH_AT=<point>`, which SIGKILLs it when it reaches
that `berth_shared.faults.checkpoint`. After a restart without it, the operation must
finish on its own: the record in its final state, exactly one backend file per record and
none without one, exactly one event in JetStream (the outbox relay's republish after a
crash is dropped by `Nats-Msg-Id` dedup), and quota usage that matches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from berth_procs import ServiceProcess, backlog, expected_files, settled, stream_events, volume_files

from berth_shared.natsserver import NatsServer
from berth_testing import Tenants, eventually

pytestmark = pytest.mark.slow

SIZE_GIB = 2
CREATED = "io.berth.volume.created.v1"
DELETED = "io.berth.volume.deleted.v1"


def _spec(name: str) -> dict[str, Any]:
    return {"name": name, "size_gib": SIZE_GIB, "volume_type": "standard"}


async def _volumes(http: httpx.AsyncClient) -> list[dict[str, Any]]:
    r = await http.get("/v1/volumes", params={"limit": 1000})
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


async def _events(nats_url: str, tenant: str) -> list[dict[str, Any]]:
    return await stream_events(nats_url, f"berth.events.{tenant}.>")


async def _crash_on(proc: ServiceProcess, request: Callable[[], Any], may_answer: bool = False) -> None:
    """Send the request that reaches the crash point; the process must die of SIGKILL."""
    try:
        r = await request()
    except httpx.TransportError:
        pass  # the process died under the request: what a client sees on a crash
    else:
        # Only the outbox relay crashes after the response may already have gone out.
        assert may_answer, f"the request was answered ({r.status_code}) instead of crashing: {r.text}"
    assert await proc.wait_exit() == -9, proc.tail()


async def _dead_state(proc: ServiceProcess, nats_url: str, tenant: str) -> tuple[int, int, int]:
    """(backend files, unpublished outbox rows, events in JetStream) while the process is down."""
    db = await proc.open_db()
    try:
        unpublished, _ = await backlog(db)
    finally:
        await db.dispose()
    return len(volume_files(proc.data_dir)), unpublished, len(await _events(nats_url, tenant))


async def _check_state(
    proc: ServiceProcess, http: httpx.AsyncClient, nats_url: str, tenant: str, *, alive: dict[str, str], gone: set[str]
) -> None:
    """`alive`: volume id -> status expected; `gone`: deleted ids. One event per change."""
    await settled(proc)
    vols = await _volumes(http)
    assert {v["id"]: v["status"] for v in vols} == alive
    assert volume_files(proc.data_dir) == expected_files(alive), "backend files and records disagree"
    events = await _events(nats_url, tenant)
    created = [e["event"]["subject"] for e in events if e["event"]["type"] == CREATED]
    deleted = [e["event"]["subject"] for e in events if e["event"]["type"] == DELETED]
    assert sorted(created) == sorted(set(alive) | gone), f"created events: {created}"
    assert sorted(deleted) == sorted(gone), f"deleted events: {deleted}"
    assert all(e["msg_id"] == e["event"]["id"] for e in events)
    quota = (await http.get(f"/v1/quotas/{tenant}")).json()
    assert (quota["used_volumes"], quota["used_gigabytes"]) == (len(alive), SIZE_GIB * len(alive)), quota


@pytest.mark.parametrize("point", ["volume.create.after_record", "volume.create.after_backend", "outbox.after_publish"])
async def test_kill_during_create_then_restart_completes_it(
    point: str, service_process: Callable[..., ServiceProcess], tenants: Tenants, nats_server: NatsServer
) -> None:
    proc = service_process()
    proc.start(crash_at=point)
    await proc.wait_ready()
    async with proc.client(tenants.a) as http:
        await _crash_on(
            proc, lambda: http.post("/v1/volumes", json=_spec("db-0")), may_answer=point == "outbox.after_publish"
        )

        # Where the crash left things: it must be exactly the point asked for.
        files, unpublished, events = await _dead_state(proc, nats_server.url, tenants.tenant_a)
        if point == "volume.create.after_record":
            assert (files, unpublished, events) == (0, 0, 0)
        elif point == "volume.create.after_backend":
            assert (files, unpublished, events) == (1, 0, 0)
        else:  # published, not marked: the restart republishes it and JetStream must drop the copy
            assert (files, unpublished, events) == (1, 1, 1)

        proc.start()
        await proc.wait_ready()
        vols = await eventually(
            lambda: _volumes(http),
            lambda vs: [v["status"] for v in vs] == ["available"],
            what="the interrupted create finished",
        )
        vid = vols[0]["id"]

        # The client's retry (same name, same spec) finds the same volume and makes nothing new.
        r = await http.post("/v1/volumes", json=_spec("db-0"))
        assert r.status_code == 201, r.text
        assert (r.json()["id"], r.json()["status"]) == (vid, "available")

        await _check_state(proc, http, nats_server.url, tenants.tenant_a, alive={vid: "available"}, gone=set())


@pytest.mark.parametrize("point", ["volume.delete.after_record", "volume.delete.after_backend"])
async def test_kill_during_delete_then_restart_completes_it(
    point: str, service_process: Callable[..., ServiceProcess], tenants: Tenants, nats_server: NatsServer
) -> None:
    proc = service_process()
    proc.start(crash_at=point)
    await proc.wait_ready()
    async with proc.client(tenants.a) as http:
        r = await http.post("/v1/volumes", json=_spec("keep"))
        assert r.status_code == 201, r.text
        keep = r.json()["id"]
        r = await http.post("/v1/volumes", json=_spec("doomed"))
        assert r.status_code == 201, r.text
        doomed = r.json()["id"]

        await _crash_on(proc, lambda: http.delete(f"/v1/volumes/{doomed}"))
        files, _, _ = await _dead_state(proc, nats_server.url, tenants.tenant_a)
        assert files == (2 if point == "volume.delete.after_record" else 1)

        proc.start()
        await proc.wait_ready()
        await eventually(
            lambda: _volumes(http), lambda vs: [v["id"] for v in vs] == [keep], what="the interrupted delete finished"
        )
        # The client's retry of the delete: the volume is gone.
        r = await http.delete(f"/v1/volumes/{doomed}")
        assert r.status_code in (204, 404), r.text

        await _check_state(proc, http, nats_server.url, tenants.tenant_a, alive={keep: "available"}, gone={doomed})
