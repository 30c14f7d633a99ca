"""Helpers for the provisioner's behaviour tests: awaiting conditions, problem bodies,
whole-state snapshots (to prove a rejected request changed nothing) and event taps."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from provisioner_harness import Provisioner
from sqlalchemy import func, select

from berth_provisioner import tables as t
from berth_provisioner.service import Provisioner as ProvisionerService

PROBLEM = "application/problem+json"
VOLUMES = "/v1/volumes"


def assert_problem(r: httpx.Response, status: int, code: str, reason: str | None = None) -> dict[str, Any]:
    """A problem+json body with this status, code and reason (reason defaults to the code)."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM), r.headers["content-type"]
    body: dict[str, Any] = r.json()
    assert body["status"] == status, body
    assert body["code"] == code, body
    assert body["reason"] == (reason or code), body
    assert body["detail"], body
    return body


def service(prov: Provisioner) -> ProvisionerService:
    svc: ProvisionerService = prov.app.state.provisioner  # type: ignore[attr-defined]
    return svc


def local_volume_dir(prov: Provisioner) -> Path:
    return Path(prov.settings.data_dir) / "clusters" / "local" / "volumes"


def files_under(root: Path) -> list[str]:
    """Every file below `root`, relative, sorted (empty when `root` does not exist)."""
    found: list[str] = []
    for folder, _dirs, names in os.walk(root):
        found.extend(os.path.relpath(os.path.join(folder, n), root) for n in names)
    return sorted(found)


async def db_state(prov: Provisioner) -> dict[str, Any]:
    """Every provisioner row that a request could change, plus the outbox size."""
    svc = service(prov)
    out: dict[str, Any] = {}
    async with svc.db.sessions() as s:
        for table in (t.volumes, t.snapshots, t.clusters, t.quotas, t.operations):
            rows = (await s.execute(select(table).order_by(*table.primary_key.columns))).all()
            out[table.name] = [dict(r._mapping) for r in rows]
        out["outbox"] = (await s.execute(select(func.count()).select_from(svc.tables.outbox))).scalar_one()
    return out


async def whole_state(prov: Provisioner) -> dict[str, Any]:
    """What a rejected request must leave untouched: DB rows, outbox, backend files, listings."""
    state = await db_state(prov)
    state["files"] = files_under(Path(prov.settings.data_dir) / "clusters")
    for label, token in (("a", prov.tenants.a), ("b", prov.tenants.b)):
        r = await prov.http.get(VOLUMES, headers=prov.auth(token))
        assert r.status_code == 200, r.text
        state[f"list_{label}"] = r.json()
    return state


async def create_volume(prov: Provisioner, token: str, name: str, size_gib: int = 1, **extra: Any) -> dict[str, Any]:
    body = {"name": name, "size_gib": size_gib, "volume_type": "standard", **extra}
    r = await prov.http.post(VOLUMES, json=body, headers=prov.auth(token))
    assert r.status_code == 201, r.text
    vol: dict[str, Any] = r.json()
    assert vol["status"] == "available", vol
    return vol


async def local_cluster(prov: Provisioner) -> dict[str, Any]:
    r = await prov.http.get("/v1/clusters", headers=prov.auth(prov.tenants.admin))
    assert r.status_code == 200, r.text
    (local,) = [c for c in r.json()["items"] if c["name"] == "local"]
    return dict(local)


async def set_quota(prov: Provisioner, tenant: str, volumes: int, gigabytes: int) -> dict[str, Any]:
    r = await prov.http.put(
        f"/v1/quotas/{tenant}", json={"volumes": volumes, "gigabytes": gigabytes}, headers=prov.auth(prov.tenants.admin)
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


class EventTap:
    """A core NATS subscription that collects events as they are relayed.

    Core subscribers see every JetStream publish on their subjects, headers included;
    the subject pattern (tenant-first) is exactly what a tenant's NATS permission would be.
    """

    def __init__(self, nc: Client, subject: str) -> None:
        self.nc = nc
        self.subject = subject
        self.msgs: list[Msg] = []
        self._arrived = asyncio.Event()
        self._sub: Subscription | None = None

    async def __aenter__(self) -> EventTap:
        self._sub = await self.nc.subscribe(self.subject, cb=self._on_msg)
        await self.nc.flush()  # the server knows the interest before anything is published
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

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    async def wait_for(self, pred: Callable[[list[dict[str, Any]]], bool], within: float = 5.0) -> list[dict[str, Any]]:
        """Wait until `pred(events so far)` holds; return the events."""

        async def until() -> None:
            while True:
                self._arrived.clear()  # no await between this and the check: nothing slips by
                if pred(self.events):
                    return
                await self._arrived.wait()

        try:
            await asyncio.wait_for(until(), within)
        except TimeoutError:
            raise AssertionError(f"events on {self.subject} never matched; got {self.types()}") from None
        return self.events

    async def wait_count(self, n: int, within: float = 5.0) -> list[dict[str, Any]]:
        return await self.wait_for(lambda evs: len(evs) >= n, within)
