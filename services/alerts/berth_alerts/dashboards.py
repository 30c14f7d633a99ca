"""Dashboard sync: the templates in `dashboards/` onto every registered Grafana.

Each template is a dashboard JSON with a fixed uid; `${berth.<name>}` in any string is
replaced by the instance's variable (`datasource` by default "Prometheus"). A sync, per
instance: make sure the folder exists, then for each dashboard compare the rendered
content's hash and Grafana's version with what the last push recorded: unchanged, skip;
changed here, push; changed in Grafana (its version moved: someone edited it), report
the drift and push the template back. Errors are per instance and per dashboard.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from sqlalchemy import delete, select

from berth_alerts import tables as t
from berth_alerts.grafana import GrafanaClient, GrafanaError, Instance
from berth_alerts.metrics import AlertMetrics
from berth_alerts.store import insert_for
from berth_shared.db import Database
from berth_shared.errors import NotFound

log = logging.getLogger(__name__)
TEMPLATES = Path(__file__).parent / "dashboards"
_VAR = re.compile(r"\$\{berth\.([a-z_]+)\}")
DEFAULT_VARIABLES = {"datasource": "Prometheus"}


def load_templates(folder: Path = TEMPLATES) -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(folder.glob("*.json")):
        doc = json.loads(path.read_text())
        out[doc["uid"]] = doc
    return out


def render(template: dict[str, Any], variables: dict[str, str]) -> dict[str, Any]:
    values = {**DEFAULT_VARIABLES, **variables}

    def sub(node: Any) -> Any:
        if isinstance(node, str):
            return _VAR.sub(lambda m: values.get(m.group(1), m.group(0)), node)
        if isinstance(node, list):
            return [sub(x) for x in node]
        if isinstance(node, dict):
            return {k: sub(v) for k, v in node.items()}
        return node

    doc = sub(template)
    doc.pop("id", None)
    doc.pop("version", None)
    return dict(doc)


def content_hash(doc: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class InstanceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(pattern=r"^https?://", max_length=2048)
    org_id: int = Field(default=1, ge=1)
    token: SecretStr = Field(min_length=1)
    folder_uid: str = Field(default="berth", min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_\-]+$")
    folder_title: str = Field(default="Berth", min_length=1, max_length=255)
    variables: dict[str, str] = Field(default_factory=dict)


@dataclass
class SyncResult:
    instance: str
    uid: str
    outcome: str  # created | updated | unchanged | drift_repaired | error
    message: str = ""
    version: int | None = None


class DashboardSync:
    def __init__(self, db: Database, metrics: AlertMetrics, client: httpx.AsyncClient) -> None:
        self.db = db
        self.metrics = metrics
        self.client = client
        self.templates = load_templates()

    async def register(self, name: str, body: InstanceIn) -> dict[str, Any]:
        at = datetime.now(UTC)
        row = {
            "name": name,
            "url": body.url,
            "org_id": body.org_id,
            "token": body.token.get_secret_value(),
            "folder_uid": body.folder_uid,
            "folder_title": body.folder_title,
            "variables": body.variables,
            "created_at": at,
            "updated_at": at,
        }
        async with self.db.transaction() as s:
            ins = insert_for(s, t.grafana_instances).values(**row)
            await s.execute(
                ins.on_conflict_do_update(
                    index_elements=["name"], set_={k: ins.excluded[k] for k in row if k not in ("name", "created_at")}
                )
            )
            # A new URL or folder: what was pushed before says nothing about the new place.
            await s.execute(delete(t.dashboard_syncs).where(t.dashboard_syncs.c.instance == name))
        return {k: v for k, v in row.items() if k != "token"}

    async def unregister(self, name: str) -> None:
        async with self.db.transaction() as s:
            res = await s.execute(delete(t.grafana_instances).where(t.grafana_instances.c.name == name))
            await s.execute(delete(t.dashboard_syncs).where(t.dashboard_syncs.c.instance == name))
        if not res.rowcount:  # type: ignore[attr-defined]
            raise NotFound(f"Grafana instance {name} not registered")

    async def instances(self) -> list[Instance]:
        async with self.db.sessions() as s:
            rows = await s.execute(select(t.grafana_instances).order_by(t.grafana_instances.c.name))
            return [Instance(r.name, r.url, r.org_id, r.token, r.folder_uid, r.folder_title, r.variables) for r in rows]

    async def status(self) -> list[dict[str, Any]]:
        async with self.db.sessions() as s:
            rows = await s.execute(
                select(t.dashboard_syncs).order_by(t.dashboard_syncs.c.instance, t.dashboard_syncs.c.uid)
            )
            return [dict(r._mapping) for r in rows]

    async def sync_all(self, only: str | None = None) -> list[SyncResult]:
        results: list[SyncResult] = []
        found = [i for i in await self.instances() if only is None or i.name == only]
        if only is not None and not found:
            raise NotFound(f"Grafana instance {only} not registered")
        for inst in found:
            results += await self.sync_instance(inst)
        return results

    async def sync_instance(self, inst: Instance) -> list[SyncResult]:
        api = GrafanaClient(inst, self.client)
        async with self.db.sessions() as s:
            known = {
                r.uid: r
                for r in await s.execute(select(t.dashboard_syncs).where(t.dashboard_syncs.c.instance == inst.name))
            }
        try:
            await api.ensure_folder()
        except GrafanaError as exc:
            results = [SyncResult(inst.name, uid, "error", str(exc)) for uid in self.templates]
            await self._record(inst.name, results, {}, known)
            return results
        results, hashes = [], {}
        for uid, template in self.templates.items():
            doc = render(template, inst.variables)
            digest = hashes[uid] = content_hash(doc)
            prev = known.get(uid)
            try:
                remote = await api.dashboard(uid)
                remote_version = int(remote["dashboard"].get("version") or 0) if remote else None
                if remote is None:
                    outcome, note = "created", ""
                elif prev is not None and prev.remote_version is not None and remote_version != prev.remote_version:
                    outcome = "drift_repaired"
                    note = (
                        f"changed in Grafana (version {prev.remote_version} -> {remote_version}) since the last "
                        "sync; the template was pushed back"
                    )
                elif prev is not None and prev.content_hash == digest and prev.outcome != "error":
                    results.append(SyncResult(inst.name, uid, "unchanged", "", remote_version))
                    continue
                else:
                    outcome, note = "updated", ""
                version = await api.push(doc, f"berth sync {digest[:12]}")
                results.append(SyncResult(inst.name, uid, outcome, note, version))
            except GrafanaError as exc:
                results.append(SyncResult(inst.name, uid, "error", str(exc)))
        await self._record(inst.name, results, hashes, known)
        return results

    async def _record(
        self, instance: str, results: list[SyncResult], hashes: dict[str, str], known: dict[str, Any]
    ) -> None:
        at = datetime.now(UTC)
        async with self.db.transaction() as s:
            for r in results:
                self.metrics.dashboard_syncs.labels(instance, r.outcome).inc()
                prev = known.get(r.uid)
                ok = r.outcome != "error"
                row = {
                    "instance": instance,
                    "uid": r.uid,
                    "outcome": r.outcome,
                    "message": r.message or None,
                    "content_hash": hashes.get(r.uid) if ok else (prev.content_hash if prev else None),
                    "remote_version": r.version if ok else (prev.remote_version if prev else None),
                    "synced_at": at
                    if r.outcome in ("created", "updated", "drift_repaired")
                    else (prev.synced_at if prev else None),
                    "checked_at": at,
                }
                ins = insert_for(s, t.dashboard_syncs).values(**row)
                await s.execute(
                    ins.on_conflict_do_update(
                        index_elements=["instance", "uid"],
                        set_={k: ins.excluded[k] for k in row if k not in ("instance", "uid")},
                    )
                )
                if r.outcome == "error":
                    log.warning("dashboard sync: %s", r.message)
