"""Fakes of what cannot run here, as real HTTP servers: a messenger and a Grafana.

Both are FastAPI apps served by uvicorn on a free port in the test's event loop, so the
alerts service talks to them over real sockets with its real HTTP client.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response

from berth_shared.natsserver import free_port


@dataclass
class Received:
    at: float
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    size: int


@dataclass
class Messenger:
    """Records every accepted message; can fail, throttle (429 + Retry-After), refuse
    bodies over a size (413) and recover, as scripted by the test."""

    max_body: int | None = None
    fail_next: int = 0
    fail_status: int = 500
    throttle_next: int = 0
    retry_after_s: float = 1.0
    down: bool = False
    delay_s: float = 0.0  # each accepted message is answered this long after it arrived
    received: list[Received] = field(default_factory=list)
    answering: int = 0  # messages arrived and not answered yet
    most_answering: int = 0
    refused: list[tuple[int, int]] = field(default_factory=list)  # (status, size)
    throttled_at: list[float] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/{path:path}")
        async def hook(path: str, request: Request) -> Response:
            body = await request.body()
            if self.down:
                self.refused.append((503, len(body)))
                return Response("down", status_code=503)
            if self.throttle_next > 0:
                self.throttle_next -= 1
                self.throttled_at.append(time.monotonic())
                self.refused.append((429, len(body)))
                return Response("slow down", status_code=429, headers={"Retry-After": str(int(self.retry_after_s))})
            if self.fail_next > 0:
                self.fail_next -= 1
                self.refused.append((self.fail_status, len(body)))
                return Response("boom", status_code=self.fail_status)
            if self.max_body is not None and len(body) > self.max_body:
                self.refused.append((413, len(body)))
                return Response("too large", status_code=413)
            self.received.append(
                Received(time.monotonic(), "/" + path, dict(request.headers), json.loads(body), len(body))
            )
            self.changed.set()
            self.answering += 1
            self.most_answering = max(self.most_answering, self.answering)
            try:
                await asyncio.sleep(self.delay_s)
            finally:
                self.answering -= 1
            return Response("ok")

        return app

    def alerts_seen(self, path: str | None = None) -> list[dict[str, Any]]:
        """Every alert in every generic-webhook message, in arrival order."""
        return [a for r in self.received if path is None or r.path == path for a in r.body.get("alerts", [])]

    def texts(self, path: str | None = None) -> list[str]:
        out = []
        for r in self.received:
            if path is not None and r.path != path:
                continue
            if "text" in r.body and "alerts" not in r.body:
                out.append(r.body["text"])
            elif "attachments" in r.body:
                out.append("\n".join(b["text"] for b in r.body["attachments"][0]["content"]["body"]))
            else:
                out.append(r.body.get("title", "") + "\n" + r.body.get("text", ""))
        return out


@dataclass
class FakeGrafana:
    """Grafana's folder and dashboard HTTP API, enough for the sync: token check
    (401), a read-only token (403), a name taken in the folder (412), versions."""

    token: str = "glsa_test"
    readonly_token: str = "glsa_viewer"
    folders: dict[str, dict[str, Any]] = field(default_factory=dict)
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)
    posts: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI()

        def auth(request: Request, write: bool) -> Response | None:
            got = request.headers.get("authorization", "")
            if got not in (f"Bearer {self.token}", f"Bearer {self.readonly_token}"):
                return Response(json.dumps({"message": "invalid API key"}), status_code=401)
            if write and got == f"Bearer {self.readonly_token}":
                return Response(json.dumps({"message": "Access denied"}), status_code=403)
            return None

        @app.get("/api/folders/{uid}")
        async def get_folder(uid: str, request: Request) -> Response:
            if (denied := auth(request, False)) is not None:
                return denied
            if uid not in self.folders:
                return Response(json.dumps({"message": "folder not found"}), status_code=404)
            return Response(json.dumps(self.folders[uid]))

        @app.post("/api/folders")
        async def create_folder(request: Request) -> Response:
            if (denied := auth(request, True)) is not None:
                return denied
            doc = await request.json()
            self.folders[doc["uid"]] = {"uid": doc["uid"], "title": doc["title"], "id": len(self.folders) + 1}
            return Response(json.dumps(self.folders[doc["uid"]]))

        @app.get("/api/dashboards/uid/{uid}")
        async def get_dashboard(uid: str, request: Request) -> Response:
            if (denied := auth(request, False)) is not None:
                return denied
            if uid not in self.dashboards:
                return Response(json.dumps({"message": "Dashboard not found"}), status_code=404)
            d = self.dashboards[uid]
            return Response(
                json.dumps(
                    {
                        "dashboard": d["dashboard"],
                        "meta": {"folderUid": d["folderUid"], "version": d["dashboard"]["version"]},
                    }
                )
            )

        @app.post("/api/dashboards/db")
        async def post_dashboard(request: Request) -> Response:
            if (denied := auth(request, True)) is not None:
                return denied
            doc = await request.json()
            self.posts.append(doc)
            dash = doc["dashboard"]
            for other in self.dashboards.values():
                same_title = other["dashboard"]["title"] == dash["title"] and other["folderUid"] == doc.get("folderUid")
                if same_title and other["dashboard"]["uid"] != dash["uid"]:
                    body = {
                        "message": "A dashboard with the same name in the folder already exists",
                        "status": "name-exists",
                    }
                    return Response(json.dumps(body), status_code=412)
            old = self.dashboards.get(dash["uid"])
            version = (old["dashboard"]["version"] if old else 0) + 1
            stored = dict(dash, version=version, id=hash(dash["uid"]) % 10_000)
            self.dashboards[dash["uid"]] = {"dashboard": stored, "folderUid": doc.get("folderUid")}
            return Response(
                json.dumps(
                    {
                        "id": stored["id"],
                        "uid": dash["uid"],
                        "status": "success",
                        "version": version,
                        "url": f"/d/{dash['uid']}/x",
                    }
                )
            )

        return app

    def edit_by_hand(self, uid: str) -> None:
        """Someone changes the dashboard in Grafana's UI: drift."""
        d = self.dashboards[uid]["dashboard"]
        d["title"] = d["title"] + " (edited)"
        d["version"] += 1

    @staticmethod
    def digest(doc: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


@contextlib.asynccontextmanager
async def serve(app: FastAPI, port: int | None = None) -> AsyncIterator[str]:
    """Serve `app` on 127.0.0.1 (a free port) for the block; yields its base URL."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
