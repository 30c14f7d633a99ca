"""kill -9 of the provisioner in the middle of a group snapshot's create and delete (file
backend): after a restart the operation finishes on its own, with one consistent set of
member files (a cut interrupted half-way is taken again, never mixed), each event once."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable

import httpx
import pytest
from berth_procs import ServiceProcess, settled, stream_events

from berth_shared.natsserver import NatsServer
from berth_testing import Tenants

pytestmark = pytest.mark.slow


def _files(proc: ServiceProcess) -> list[str]:
    root = proc.data_dir / "clusters" / "local"
    return sorted(str(p.relative_to(root)) for sub in ("snapshots", "groups") for p in (root / sub).glob("*"))


async def _crash(proc: ServiceProcess, request: Callable[[], Awaitable[httpx.Response]]) -> None:
    with contextlib.suppress(httpx.TransportError):  # the process died under the request
        await request()
    assert await proc.wait_exit() == -9, proc.tail()


async def _snapshot_events(nats_url: str, tenant: str) -> Counter[str]:
    events = await stream_events(nats_url, f"berth.events.{tenant}.>")
    assert all(e["msg_id"] == e["event"]["id"] for e in events)
    return Counter(e["event"]["type"] for e in events if "snapshot" in e["event"]["type"])


async def test_kills_during_create_and_delete_then_restarts_complete_them(
    service_process: Callable[..., ServiceProcess], tenants: Tenants, nats_server: NatsServer
) -> None:
    proc = service_process()
    root = proc.data_dir / "clusters" / "local"
    proc.start(crash_at="file.group_snapshot.copied")
    await proc.wait_ready()
    async with proc.client(tenants.a) as http:
        ids = []
        for i in range(2):
            r = await http.post("/v1/volumes", json={"name": f"db-{i}", "size_gib": 1, "volume_type": "standard"})
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])

        def write(text: str) -> None:
            for vid in ids:
                with open(root / "volumes" / f"{vid}.img", "r+b") as f:
                    f.write(f"{text} {vid}".encode())

        write("first")
        body = {"name": "nightly", "volume_ids": ids}
        # 1. Killed with the copies made but the cut not marked complete.
        await _crash(proc, lambda: http.post("/v1/group-snapshots", json=body))
        left = _files(proc)
        assert len(left) == 2 and all(f.endswith(".img.partial") for f in left), left

        # 2. The restart resumes it and cuts again: the volumes changed meanwhile, and the
        # members must all be of the new cut. The client's retry finds the same group.
        write("second")
        proc.start(crash_at="group_snapshot.delete.after_backend")
        await proc.wait_ready()
        await settled(proc)
        r = await http.post("/v1/group-snapshots", json=body)
        assert r.status_code == 201, r.text
        gs = r.json()
        assert gs["status"] == "available"
        members = {m["volume_id"]: m["id"] for m in gs["snapshots"]}
        for vid, member in members.items():
            with open(root / "snapshots" / f"{member}.img", "rb") as f:
                cut = f.read(64).rstrip(b"\0")
            assert cut == f"second {vid}".encode()
        assert _files(proc) == sorted([f"groups/{gs['id']}.json", *(f"snapshots/{m}.img" for m in members.values())])

        # 3. Killed after the backend deleted it, before the record went: the restart
        # finishes the delete.
        await _crash(proc, lambda: http.delete(f"/v1/group-snapshots/{gs['id']}"))
        assert _files(proc) == []
        proc.start()
        await proc.wait_ready()
        await settled(proc)
        assert (await http.get(f"/v1/group-snapshots/{gs['id']}")).status_code == 404
        assert (await http.get("/v1/snapshots")).json()["items"] == []
        assert await _snapshot_events(nats_server.url, tenants.tenant_a) == {
            "io.berth.snapshot.created.v1": 2,
            "io.berth.group_snapshot.created.v1": 1,
            "io.berth.snapshot.deleted.v1": 2,
            "io.berth.group_snapshot.deleted.v1": 1,
        }
