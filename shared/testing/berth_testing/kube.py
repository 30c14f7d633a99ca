"""A fake Kubernetes API server: a real HTTP server speaking the Kubernetes REST protocol
for what Berth asks of Kubernetes, so that tests run the official client unchanged.

- Nodes: GET and PATCH (merge / strategic-merge; a node's `spec.taints` has no patch
  strategy, so a list replaces the whole list), `resourceVersion` optimistic concurrency
  (409 Conflict) - what the attacher's out-of-service taint needs.
- Collections (nodes, persistentvolumes, persistentvolumeclaims, pods, volumeattachments):
  list with `limit` / `continue` over one consistent snapshot (a continue token names the
  snapshot's resourceVersion; an evicted one answers 410 Expired), the list's
  `metadata.resourceVersion`, and `watch=true` from a resourceVersion (ADDED / MODIFIED /
  DELETED as JSON lines, BOOKMARKs when asked, 410 Gone for a version older than the kept
  history, `timeoutSeconds`).
- DELETE of a PV, with `preconditions` (uid, resourceVersion): 409 when they do not hold.
- Faults for tests: `go_down` / `come_back` (connections refused meanwhile), `delay_s`
  (every request slow), `fail_list_page` (an error on the n-th page of the next lists),
  `expire_continue`.

Bearer-token auth against a token file. Runs under uvicorn on a port the OS picks, in the
test's event loop; the official client, in a worker thread, talks to it over real HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

PATCH_TYPES = ("application/merge-patch+json", "application/strategic-merge-patch+json")
HISTORY = 10_000  # watch events kept; older resourceVersions answer 410 Gone
SNAPSHOTS = 64  # list snapshots kept for continue tokens

# resource -> (kind, list kind, API group path, namespaced)
RESOURCES: dict[str, tuple[str, str, str, bool]] = {
    "nodes": ("Node", "NodeList", "/api/v1", False),
    "persistentvolumes": ("PersistentVolume", "PersistentVolumeList", "/api/v1", False),
    "persistentvolumeclaims": ("PersistentVolumeClaim", "PersistentVolumeClaimList", "/api/v1", True),
    "pods": ("Pod", "PodList", "/api/v1", True),
    "volumeattachments": ("VolumeAttachment", "VolumeAttachmentList", "/apis/storage.k8s.io/v1", False),
}


def status(code: int, reason: str, message: str) -> JSONResponse:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "message": message}
    return JSONResponse(body | {"code": code}, status_code=code)


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


def _key(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


@dataclass
class FakeKube:
    token_file: Path
    # resource -> {"<namespace>/<name>": object}
    objects: dict[str, dict[str, dict[str, Any]]] = field(default_factory=lambda: {r: {} for r in RESOURCES})
    # (method, path, content type) of every authenticated request, in order.
    calls: list[tuple[str, str, str | None]] = field(default_factory=list)
    # Run once, just before the next PATCH is applied: a concurrent writer.
    before_next_patch: Callable[[FakeKube], None] | None = None
    url: str = ""
    # Faults.
    delay_s: float = 0.0
    # (page number counted from 1, HTTP status): the next lists fail there, `times` times.
    fail_list_page: tuple[int, int] | None = None
    fail_list_times: int = 0
    # The next this-many continue tokens presented are expired (410), as if compacted.
    expire_continue: int = 0
    revision: int = 1
    _history: list[tuple[int, str, str, dict[str, Any]]] = field(default_factory=list)
    _snapshots: dict[tuple[str, int], list[dict[str, Any]]] = field(default_factory=dict)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _uid: int = 0
    _serving: Any = None

    async def go_down(self) -> None:
        """The API server dies: connections are refused until `come_back`."""
        await self._serving.stop()

    async def come_back(self) -> None:
        await self._serving.start()

    # -- the store ---------------------------------------------------------------------

    @property
    def nodes(self) -> dict[str, dict[str, Any]]:
        """Nodes by name (the attacher's tests edit them in place)."""
        return _ByName(self.objects["nodes"])

    def _record(self, kind: str, resource: str, obj: dict[str, Any]) -> None:
        self._history.append((self.revision, kind, resource, copy.deepcopy(obj)))
        del self._history[:-HISTORY]
        self._changed.set()
        self._changed = asyncio.Event()

    def put(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an object (a controller's write): bumps its resourceVersion."""
        kind_name, _, _, namespaced = RESOURCES[resource]
        meta = obj.setdefault("metadata", {})
        if namespaced:
            meta.setdefault("namespace", "default")
        key = _key(obj)
        old = self.objects[resource].get(key)
        if old is None:
            self._uid += 1
            meta.setdefault("uid", f"uid-{self._uid:08d}")
            meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
        else:
            meta.setdefault("uid", old["metadata"]["uid"])
            meta.setdefault("creationTimestamp", old["metadata"].get("creationTimestamp"))
        obj.setdefault("kind", kind_name)
        obj.setdefault("apiVersion", "storage.k8s.io/v1" if resource == "volumeattachments" else "v1")
        self.revision += 1
        meta["resourceVersion"] = str(self.revision)
        self.objects[resource][key] = obj
        self._record("ADDED" if old is None else "MODIFIED", resource, obj)
        return obj

    def remove(self, resource: str, name: str, namespace: str = "") -> dict[str, Any] | None:
        obj = self.objects[resource].pop(f"{namespace}/{name}", None)
        if obj is not None:
            self.revision += 1
            obj["metadata"]["resourceVersion"] = str(self.revision)
            self._record("DELETED", resource, obj)
        return obj

    def bump(self, name: str) -> None:
        """A node changed by someone else (its resourceVersion moves on)."""
        self.revision += 1
        self.objects["nodes"][f"/{name}"]["metadata"]["resourceVersion"] = str(self.revision)

    # -- builders for the kinds Berth reads ----------------------------------------------

    def add_node(self, name: str, taints: list[dict[str, Any]] | None = None, ready: bool = True) -> None:
        self.put(
            "nodes",
            {
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
                "spec": {"taints": list(taints or [])} if taints else {},
                "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
            },
        )

    def add_pv(
        self,
        name: str,
        volume_handle: str,
        *,
        driver: str = "csi.berth.dev",
        phase: str = "Bound",
        reclaim_policy: str = "Delete",
        claim: tuple[str, str] | None = None,
        access_modes: tuple[str, ...] = ("ReadWriteOnce",),
        phase_since: str | None = "2026-01-01T00:00:00Z",
    ) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "capacity": {"storage": "1Gi"},
            "accessModes": list(access_modes),
            "persistentVolumeReclaimPolicy": reclaim_policy,
            "csi": {"driver": driver, "volumeHandle": volume_handle},
        }
        if claim:
            spec["claimRef"] = {"kind": "PersistentVolumeClaim", "namespace": claim[0], "name": claim[1]}
        st: dict[str, Any] = {"phase": phase}
        if phase_since:
            st["lastPhaseTransitionTime"] = phase_since
        return self.put("persistentvolumes", {"metadata": {"name": name}, "spec": spec, "status": st})

    def set_pv_phase(self, name: str, phase: str, since: str) -> None:
        pv = copy.deepcopy(self.objects["persistentvolumes"][f"/{name}"])
        pv["status"] = {"phase": phase, "lastPhaseTransitionTime": since}
        self.put("persistentvolumes", pv)

    def add_pvc(self, namespace: str, name: str, volume_name: str | None) -> None:
        spec = {"accessModes": ["ReadWriteOnce"], "volumeName": volume_name} if volume_name else {}
        phase = "Bound" if volume_name else "Pending"
        self.put(
            "persistentvolumeclaims",
            {"metadata": {"name": name, "namespace": namespace}, "spec": spec, "status": {"phase": phase}},
        )

    def add_pod(self, namespace: str, name: str, node: str | None, claims: list[str], phase: str = "Running") -> None:
        volumes = [{"name": f"v{i}", "persistentVolumeClaim": {"claimName": c}} for i, c in enumerate(claims)]
        spec: dict[str, Any] = {"containers": [{"name": "app", "image": "app"}], "volumes": volumes}
        if node:
            spec["nodeName"] = node
        self.put("pods", {"metadata": {"name": name, "namespace": namespace}, "spec": spec, "status": {"phase": phase}})

    def add_volume_attachment(self, name: str, pv_name: str, node: str, attached: bool = True) -> None:
        self.put(
            "volumeattachments",
            {
                "metadata": {"name": name},
                "spec": {"attacher": "csi.berth.dev", "nodeName": node, "source": {"persistentVolumeName": pv_name}},
                "status": {"attached": attached},
            },
        )

    def taints(self, name: str) -> list[dict[str, Any]]:
        return list(self.objects["nodes"][f"/{name}"].get("spec", {}).get("taints") or [])

    def patches(self) -> list[tuple[str, str, str | None]]:
        return [c for c in self.calls if c[0] == "PATCH"]

    def lists(self, resource: str) -> list[str]:
        """The list (not watch) requests made for a resource, by path."""
        return [p for m, p, ct in self.calls if m == "GET" and p.endswith("/" + resource) and ct != "watch"]

    # -- HTTP ----------------------------------------------------------------------------

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.middleware("http")
        async def faults(request: Request, call_next: Callable[[Request], Any]) -> Response:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if request.headers.get("authorization") != f"Bearer {self.token_file.read_text().strip()}":
                return status(401, "Unauthorized", "Unauthorized")
            response: Response = await call_next(request)
            return response

        for resource, (_kind, _lk, prefix, namespaced) in RESOURCES.items():
            self._routes(app, resource, prefix, namespaced)
        return app

    def _routes(self, app: FastAPI, resource: str, prefix: str, namespaced: bool) -> None:
        async def collection(request: Request, namespace: str = "") -> Response:
            watching = request.query_params.get("watch") in ("true", "1")
            self.calls.append(("GET", request.url.path, "watch" if watching else None))
            if watching:
                return await self._watch(resource, namespace, request)
            return self._list(resource, namespace, request)

        async def one(name: str, request: Request, namespace: str = "") -> Response:
            self.calls.append((request.method, request.url.path, None))
            obj = self.objects[resource].get(f"{namespace}/{name}")
            if obj is None:
                return status(404, "NotFound", f'{resource} "{name}" not found')
            return JSONResponse(obj)

        app.add_api_route(f"{prefix}/{resource}", collection, methods=["GET"])
        if namespaced:
            app.add_api_route(f"{prefix}/namespaces/{{namespace}}/{resource}", collection, methods=["GET"])
            app.add_api_route(f"{prefix}/namespaces/{{namespace}}/{resource}/{{name}}", one, methods=["GET"])
        else:
            app.add_api_route(f"{prefix}/{resource}/{{name}}", one, methods=["GET"])
        if resource == "nodes":
            app.add_api_route(f"{prefix}/nodes/{{name}}", self._patch_node, methods=["PATCH"])
        if resource == "persistentvolumes":
            app.add_api_route(f"{prefix}/persistentvolumes/{{name}}", self._delete_pv, methods=["DELETE"])

    def _list(self, resource: str, namespace: str, request: Request) -> Response:
        q = request.query_params
        limit = int(q.get("limit") or 0)
        token = q.get("continue")
        kind = RESOURCES[resource][1]
        if token:
            try:
                state = json.loads(base64.urlsafe_b64decode(token))
                rv, start, page = int(state["rv"]), int(state["start"]), int(state["page"])
            except (ValueError, KeyError):
                return status(400, "BadRequest", "invalid continue token")
            snapshot = self._snapshots.get((resource + namespace, rv))
            if snapshot is None or self.expire_continue > 0:
                self.expire_continue = max(0, self.expire_continue - 1)
                return status(410, "Expired", "The provided continue parameter is too old")
        else:
            rv, start, page = self.revision, 0, 1
            snapshot = [
                copy.deepcopy(o)
                for k, o in sorted(self.objects[resource].items())
                if not namespace or o["metadata"].get("namespace") == namespace
            ]
        if self.fail_list_page and self.fail_list_times > 0 and page == self.fail_list_page[0]:
            self.fail_list_times -= 1
            return status(self.fail_list_page[1], "InternalError", f"injected failure on page {page}")
        end = start + limit if limit else len(snapshot)
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if end < len(snapshot):
            self._snapshots[resource + namespace, rv] = snapshot
            while len(self._snapshots) > SNAPSHOTS:
                self._snapshots.pop(next(iter(self._snapshots)))
            nxt = {"rv": rv, "start": end, "page": page + 1}
            meta["continue"] = base64.urlsafe_b64encode(json.dumps(nxt).encode()).decode()
            meta["remainingItemCount"] = len(snapshot) - end
        body = {"kind": kind, "apiVersion": "v1", "metadata": meta, "items": snapshot[start:end]}
        return Response(json.dumps(body), media_type="application/json")

    async def _watch(self, resource: str, namespace: str, request: Request) -> Response:
        q = request.query_params
        since = int(q.get("resourceVersion") or self.revision)
        timeout = float(q.get("timeoutSeconds") or 30)
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
        oldest = self._history[0][0] if self._history else self.revision
        if since < oldest - 1:
            return status(410, "Expired", f"too old resource version: {since} ({oldest})")

        async def stream() -> AsyncIterator[bytes]:
            seen = since
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while loop.time() < deadline:
                for rev, kind, res, obj in list(self._history):
                    if rev <= seen or res != resource:
                        continue
                    seen = rev
                    if namespace and obj["metadata"].get("namespace") != namespace:
                        continue
                    yield (json.dumps({"type": kind, "object": obj}) + "\n").encode()
                seen = max(seen, self.revision)
                if bookmarks:
                    mark = {"kind": RESOURCES[resource][0], "metadata": {"resourceVersion": str(seen)}}
                    yield (json.dumps({"type": "BOOKMARK", "object": mark}) + "\n").encode()
                changed = self._changed
                with suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), max(0.0, min(1.0, deadline - loop.time())))

        return StreamingResponse(stream(), media_type="application/json")

    async def _patch_node(self, name: str, request: Request) -> Response:
        content_type = request.headers.get("content-type", "").split(";")[0].strip()
        self.calls.append(("PATCH", request.url.path, content_type))
        if content_type not in PATCH_TYPES:
            return status(
                415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {content_type}"
            )
        if f"/{name}" not in self.objects["nodes"]:
            return status(404, "NotFound", f'nodes "{name}" not found')
        if self.before_next_patch is not None:
            hook, self.before_next_patch = self.before_next_patch, None
            hook(self)
        patch = await request.json()
        node = self.objects["nodes"][f"/{name}"]
        wanted = (patch.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and wanted != node["metadata"]["resourceVersion"]:
            return status(
                409, "Conflict", f'Operation cannot be fulfilled on nodes "{name}": the object has been modified'
            )
        patched = merge_patch(node, patch)
        patched["metadata"].pop("resourceVersion", None)
        return JSONResponse(self.put("nodes", patched))

    async def _delete_pv(self, name: str, request: Request) -> Response:
        self.calls.append(("DELETE", request.url.path, None))
        pv = self.objects["persistentvolumes"].get(f"/{name}")
        if pv is None:
            return status(404, "NotFound", f'persistentvolumes "{name}" not found')
        body = json.loads(await request.body() or b"{}")
        pre = body.get("preconditions") or {}
        meta = pv["metadata"]
        if ("uid" in pre and pre["uid"] != meta["uid"]) or (
            "resourceVersion" in pre and pre["resourceVersion"] != meta["resourceVersion"]
        ):
            return status(409, "Conflict", f'Precondition failed for persistentvolumes "{name}"')
        return JSONResponse(self.remove("persistentvolumes", name) or {})


class _ByName(dict[str, dict[str, Any]]):
    """A live view of cluster-scoped objects by bare name."""

    def __init__(self, store: dict[str, dict[str, Any]]) -> None:
        super().__init__()
        self._store = store

    def __getitem__(self, name: str) -> dict[str, Any]:
        return self._store[f"/{name}"]

    def __contains__(self, name: object) -> bool:
        return f"/{name}" in self._store


def write_kubeconfig(path: Path, url: str, token: str, name: str = "fake") -> Path:
    """A kubeconfig naming the fake server with a bearer token (what `kubectl` would use)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": url}}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    }
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


class _Serving:
    """The uvicorn server behind a FakeKube: stoppable and restartable on the same port."""

    def __init__(self, kube: FakeKube) -> None:
        self.kube = kube
        self.port = 0
        self.server: uvicorn.Server | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        config = uvicorn.Config(self.kube.app(), host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()  # raises why it could not start
            await asyncio.sleep(0.01)
        self.server, self.task = server, task
        self.port = server.servers[0].sockets[0].getsockname()[1]
        self.kube.url = f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self.server is not None and self.task is not None:
            self.server.should_exit = True
            # Open watch streams would hold a graceful shutdown: cut them.
            self.server.force_exit = True
            await self.task
            self.server = self.task = None


@asynccontextmanager
async def fake_kube(token_file: Path) -> AsyncIterator[FakeKube]:
    kube = FakeKube(token_file)
    serving = _Serving(kube)
    kube._serving = serving
    await serving.start()
    try:
        yield kube
    finally:
        await serving.stop()
