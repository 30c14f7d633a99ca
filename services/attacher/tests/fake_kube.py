"""A fake Kubernetes API server, at the HTTP level, for what the attacher asks of Kubernetes:
GET and PATCH /api/v1/nodes/{name}, with bearer-token auth, `resourceVersion` optimistic
concurrency (409 Conflict), and merge / strategic-merge patches of a node (a node's
`spec.taints` has no patch strategy, so in both a list replaces the whole list).

It runs under uvicorn on a port the OS picks, in the test's event loop; the official
client, in a worker thread, talks to it over real HTTP.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

PATCH_TYPES = ("application/merge-patch+json", "application/strategic-merge-patch+json")


def status(code: int, reason: str, message: str) -> JSONResponse:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "reason": reason,
        "message": message,
        "code": code,
    }
    return JSONResponse(body, status_code=code)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, null deletes, anything else (lists too) replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


@dataclass
class FakeKube:
    token_file: Path
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    # (method, path, content type) of every authenticated request, in order.
    calls: list[tuple[str, str, str | None]] = field(default_factory=list)
    # Run once, just before the next PATCH is applied: a concurrent writer.
    before_next_patch: Callable[[FakeKube], None] | None = None
    url: str = ""

    def add_node(self, name: str, taints: list[dict[str, Any]] | None = None) -> None:
        self.nodes[name] = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "resourceVersion": "1", "labels": {"kubernetes.io/hostname": name}},
            "spec": {"taints": list(taints or [])} if taints else {},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }

    def bump(self, name: str) -> None:
        meta = self.nodes[name]["metadata"]
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)

    def taints(self, name: str) -> list[dict[str, Any]]:
        return list(self.nodes[name].get("spec", {}).get("taints") or [])

    def patches(self) -> list[tuple[str, str, str | None]]:
        return [c for c in self.calls if c[0] == "PATCH"]

    def app(self) -> FastAPI:
        app = FastAPI()

        def authorised(request: Request) -> bool:
            return request.headers.get("authorization") == f"Bearer {self.token_file.read_text().strip()}"

        @app.get("/api/v1/nodes/{name}")
        async def get_node(name: str, request: Request) -> JSONResponse:
            if not authorised(request):
                return status(401, "Unauthorized", "Unauthorized")
            self.calls.append(("GET", request.url.path, None))
            if name not in self.nodes:
                return status(404, "NotFound", f'nodes "{name}" not found')
            return JSONResponse(self.nodes[name])

        @app.patch("/api/v1/nodes/{name}")
        async def patch_node(name: str, request: Request) -> JSONResponse:
            if not authorised(request):
                return status(401, "Unauthorized", "Unauthorized")
            content_type = request.headers.get("content-type", "").split(";")[0].strip()
            self.calls.append(("PATCH", request.url.path, content_type))
            if content_type not in PATCH_TYPES:
                return status(
                    415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {content_type}"
                )
            if name not in self.nodes:
                return status(404, "NotFound", f'nodes "{name}" not found')
            if self.before_next_patch is not None:
                hook, self.before_next_patch = self.before_next_patch, None
                hook(self)
            patch = await request.json()
            node = self.nodes[name]
            wanted = (patch.get("metadata") or {}).get("resourceVersion")
            if wanted is not None and wanted != node["metadata"]["resourceVersion"]:
                return status(
                    409, "Conflict", f'Operation cannot be fulfilled on nodes "{name}": the object has been modified'
                )
            patched = merge_patch(node, patch)
            patched["metadata"]["resourceVersion"] = node["metadata"]["resourceVersion"]
            self.nodes[name] = patched
            self.bump(name)
            return JSONResponse(self.nodes[name])

        return app


@asynccontextmanager
async def fake_kube(token_file: Path) -> AsyncIterator[FakeKube]:
    kube = FakeKube(token_file)
    config = uvicorn.Config(kube.app(), host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()  # raises why it could not start
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        kube.url = f"http://127.0.0.1:{port}"
        yield kube
    finally:
        server.should_exit = True
        await task
