"""Grafana's HTTP API as the dashboard sync uses it, with errors a person can act on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx


class GrafanaError(Exception):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Instance:
    name: str
    url: str
    org_id: int
    token: str
    folder_uid: str
    folder_title: str
    variables: dict[str, str]


def explain(inst: Instance, status: int, body: str, what: str) -> str:
    """401/403/412 (and the rest) as what to do about them."""
    msg = body[:300]
    if status == 401:
        return (
            f"Grafana {inst.name} refused the service-account token (401 Unauthorized) on {what}: "
            "the token is wrong, expired or revoked; register the instance again with a valid token"
        )
    if status == 403:
        return (
            f"Grafana {inst.name} denied {what} (403 Forbidden): the token's service account needs the Editor "
            f"role (dashboards:write, folders:write) in org {inst.org_id} on folder '{inst.folder_title}'"
        )
    if status == 412:
        return (
            f"Grafana {inst.name} refused {what} (412 Precondition Failed): another dashboard in folder "
            f"'{inst.folder_title}' has the same title, or the dashboard changed meanwhile; Grafana said: {msg}"
        )
    if status == 404:
        return f"Grafana {inst.name}: {what} not found (404); check the URL and org id {inst.org_id}: {msg}"
    return f"Grafana {inst.name} answered {status} on {what}: {msg}"


class GrafanaClient:
    def __init__(self, inst: Instance, client: httpx.AsyncClient, timeout: float = 10.0) -> None:
        self.inst = inst
        self.client = client
        self.timeout = timeout
        self.headers = {
            "Authorization": f"Bearer {inst.token}",
            "X-Grafana-Org-Id": str(inst.org_id),
            "Accept": "application/json",
        }

    async def _call(self, method: str, path: str, what: str, json: Any = None, ok404: bool = False) -> Any:
        try:
            resp = await self.client.request(
                method, self.inst.url.rstrip("/") + path, headers=self.headers, json=json, timeout=self.timeout
            )
        except httpx.HTTPError as exc:
            raise GrafanaError(f"Grafana {self.inst.name} unreachable on {what}: {type(exc).__name__}") from None
        if resp.status_code == 404 and ok404:
            return None
        if resp.status_code >= 300:
            raise GrafanaError(explain(self.inst, resp.status_code, resp.text, what), resp.status_code)
        return resp.json()

    async def ensure_folder(self) -> None:
        what = f"folder {self.inst.folder_uid}"
        if await self._call("GET", f"/api/folders/{self.inst.folder_uid}", what, ok404=True) is None:
            await self._call(
                "POST", "/api/folders", what, json={"uid": self.inst.folder_uid, "title": self.inst.folder_title}
            )

    async def dashboard(self, uid: str) -> dict[str, Any] | None:
        doc: dict[str, Any] | None = await self._call(
            "GET", f"/api/dashboards/uid/{uid}", f"dashboard {uid}", ok404=True
        )
        return doc

    async def push(self, dashboard: dict[str, Any], message: str) -> int:
        body = {"dashboard": dashboard, "folderUid": self.inst.folder_uid, "overwrite": True, "message": message}
        doc = await self._call("POST", "/api/dashboards/db", f"dashboard {dashboard['uid']}", json=body)
        return int(doc.get("version") or 0)
