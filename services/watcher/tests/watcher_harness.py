"""The watcher's end-to-end stack, in process: a provisioner and an attacher on the real
nats-server with the embedded file cluster, the fake Kubernetes API server (the official
client on top), and the watcher itself; plus the events it publishes, seen on the bus."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
from fastapi import FastAPI

from berth_attacher.app import create_app as attacher_app
from berth_attacher.config import AttacherSettings
from berth_provisioner.app import create_app as provisioner_app
from berth_provisioner.config import ProvisionerSettings
from berth_shared.backends import Backend, build_backend
from berth_shared.bus import Bus
from berth_testing import MakeSettings, Tenants, eventually, running
from berth_testing.kube import FakeKube, fake_kube, write_kubeconfig
from berth_watcher.app import create_app as watcher_app
from berth_watcher.config import WatcherSettings

GIB = 1 << 30
# Every job runs at start and then only on demand: a test decides when a run happens.
ON_DEMAND = {f"{job}_interval_s": 3600.0 for job in ("qos", "orphans", "reclaim", "usage")}
NO_GRACE = {
    f"grace_{k}_s": 0.0
    for k in ("backend_orphan", "volume_without_pv", "pv_volume_missing", "stale_attachment", "single_writer_violation")
}


@dataclass
class Events:
    """Every Berth event published while the stack ran (core subscription on the subjects)."""

    items: list[dict[str, Any]] = field(default_factory=list)

    def of(self, type_suffix: str, **data: Any) -> list[dict[str, Any]]:
        """Events whose type ends with `type_suffix` (`finding.opened.v1`) and whose data has `data`."""
        return [
            e
            for e in self.items
            if e["type"].endswith(type_suffix) and all(e["data"].get(k) == v for k, v in data.items())
        ]

    async def wait(self, type_suffix: str, count: int = 1, **data: Any) -> list[dict[str, Any]]:
        """At least `count` such events, once they arrived (the outbox sends them a moment after
        their change commits)."""
        return await eventually(
            lambda: self.of(type_suffix, **data), lambda found: len(found) >= count, what=f"{type_suffix} {data}"
        )


@dataclass
class WatcherStack:
    prov: httpx.AsyncClient
    att: httpx.AsyncClient
    watcher: httpx.AsyncClient
    watcher_app: FastAPI
    bus: Bus
    kube: FakeKube
    tenants: Tenants
    events: Events
    settings: WatcherSettings
    cluster_root: Path
    files: Backend

    def h(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.tenants.admin}"}

    async def volume(
        self, name: str, size_gib: int = 1, token: str | None = None, volume_type: str = "standard"
    ) -> dict[str, Any]:
        r = await self.prov.post(
            "/v1/volumes",
            json={"name": name, "size_gib": size_gib, "volume_type": volume_type},
            headers=self.h(token or self.tenants.a),
        )
        assert r.status_code == 201, r.text
        return dict(r.json())

    async def leak(self, size_gib: int = 1) -> str:
        """A backend volume no record knows of (what a crashed create or a hand-made copy leaves)."""
        vid = f"vol-{uuid.uuid4().hex}"
        await self.files.create_volume(vid, size_gib * GIB)
        return vid

    def volume_file(self, vid: str) -> Path:
        return self.cluster_root / "volumes" / f"{vid}.img"

    def trash_file(self, vid: str) -> Path:
        return self.cluster_root / "trash" / "volumes" / f"{vid}.img"

    async def node(self, node_id: str) -> None:
        """A node the attacher knows as alive (one heartbeat)."""
        body = {"node_id": node_id, "boot_id": uuid.uuid4().hex}
        await self.bus.request("berth.attacher.node.heartbeat", body, token=self.tenants.admin)

    async def publish(self, volume_id: str, node_id: str) -> dict[str, Any]:
        body = {"volume_id": volume_id, "node_id": node_id}
        return await self.bus.request("berth.attacher.volume.publish", body, token=self.tenants.admin)

    async def run(self, job: str, *, expect: str | None = "complete", wait_s: float = 60) -> dict[str, Any]:
        """A run of `job` on demand over HTTP, answered once it finished."""
        r = await self.watcher.post("/v1/runs", json={"job": job, "wait_s": wait_s}, headers=self.h())
        assert r.status_code == 200, r.text
        run: dict[str, Any] = r.json()
        if expect is not None:
            assert run["status"] == expect, json.dumps(run, indent=1)
        return run

    async def findings(self, **params: Any) -> list[dict[str, Any]]:
        r = await self.watcher.get("/v1/findings", params=params, headers=self.h())
        assert r.status_code == 200, r.text
        return list(r.json()["items"])

    async def finding_of(self, kind: str, resource_id: str) -> dict[str, Any]:
        found = [f for f in await self.findings(kind=kind) if f["resource_id"] == resource_id]
        assert len(found) == 1, (kind, resource_id, found)
        return found[0]

    async def quarantine(self, **params: Any) -> list[dict[str, Any]]:
        r = await self.watcher.get("/v1/quarantine", params=params, headers=self.h())
        assert r.status_code == 200, r.text
        return list(r.json()["items"])


@asynccontextmanager
async def kube_server(tmp_path: Path) -> AsyncIterator[tuple[FakeKube, Path]]:
    token = tmp_path / "kube-token"
    token.write_text("watcher-token\n")
    async with fake_kube(token) as kube:
        yield kube, write_kubeconfig(tmp_path / "kubeconfig", kube.url, "watcher-token", name="east")


@asynccontextmanager
async def collect_events(nats_url: str) -> AsyncIterator[Events]:
    events = Events()
    nc = await nats.connect(nats_url)

    async def on(msg: Any) -> None:
        events.items.append(json.loads(msg.data))

    await nc.subscribe("berth.events.>", cb=on)
    try:
        yield events
    finally:
        await nc.close()


def watcher_settings(make_settings: MakeSettings, kubeconfig: Path, **overrides: Any) -> WatcherSettings:
    values: dict[str, Any] = (
        ON_DEMAND
        | NO_GRACE
        | {
            "kubeconfigs": str(kubeconfig),
            "kube_timeout_s": 3.0,
            "kube_page_size": 5,
            "inventory_page_size": 3,
            "tick_s": 0.1,
            "lease_ttl_s": 2.0,
        }
    )
    settings = make_settings(WatcherSettings, **(values | overrides))
    assert isinstance(settings, WatcherSettings)
    return settings


@asynccontextmanager
async def watcher_stack(
    make_settings: MakeSettings, tenants: Tenants, tmp_path: Path, **overrides: Any
) -> AsyncIterator[WatcherStack]:
    prov_settings = make_settings(ProvisionerSettings)
    att_settings = make_settings(AttacherSettings)
    async with AsyncExitStack() as es:
        kube, kubeconfig = await es.enter_async_context(kube_server(tmp_path))
        settings = watcher_settings(make_settings, kubeconfig, **overrides)
        events = await es.enter_async_context(collect_events(prov_settings.nats_url))
        prov = await es.enter_async_context(running(provisioner_app(prov_settings)))
        att = await es.enter_async_context(running(attacher_app(att_settings)))
        app = watcher_app(settings)
        watcher = await es.enter_async_context(running(app))
        bus = await Bus.connect(prov_settings.nats_url, "test-watcher")
        es.push_async_callback(bus.close)
        root = (prov_settings.data_dir / "clusters" / "local").resolve()
        files = build_backend("file", {"root": str(root)})
        st = WatcherStack(prov, att, watcher, app, bus, kube, tenants, events, settings, root, files)
        # The first runs (at start) are over before the test begins: it decides what runs next.
        await eventually(
            lambda: watcher.get("/v1/runs", headers=st.h()),
            lambda r: (
                r.status_code == 200
                and {x["job"] for x in r.json()["items"] if x["status"] not in ("queued", "running")}
                >= {"orphans", "reclaim", "usage"}
            ),
            within=60,
            what="the watcher's first runs",
        )
        yield st
