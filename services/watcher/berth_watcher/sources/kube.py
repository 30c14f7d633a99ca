"""Kubernetes through the official client: PVs, PVCs, pods, VolumeAttachments and nodes
of each configured cluster, listed in pages of one consistent snapshot, and a watch on PVs
that wakes the jobs when a PV of Berth's driver appears, goes or is released.

The client is synchronous (urllib3): lists run in a worker thread, the watch in a daemon
thread of its own. Pages are read raw (`_preload_content=False`) and reduced to compact
records as they arrive, so 100,000 PVs never exist as client model objects at once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from berth_shared.messages.watcher import SourceReport
from berth_watcher.model import KubeView, Pod, Pv, VolumeAttachment

log = logging.getLogger(__name__)
T = TypeVar("T")
IN_CLUSTER = "in-cluster"


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def parse_pv(kube: str, o: dict[str, Any]) -> Pv:
    meta, spec, st = o.get("metadata", {}), o.get("spec", {}), o.get("status", {})
    csi = spec.get("csi") or {}
    ref = spec.get("claimRef") or {}
    return Pv(
        kube=kube,
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        driver=str(csi.get("driver", "")),
        volume_handle=str(csi.get("volumeHandle", "")),
        phase=str(st.get("phase", "")),
        reclaim_policy=str(spec.get("persistentVolumeReclaimPolicy", "")),
        claim=f"{ref['namespace']}/{ref['name']}" if ref.get("name") else None,
        access_modes=tuple(spec.get("accessModes") or ()),
        created_at=_time(meta.get("creationTimestamp")),
        phase_since=_time(st.get("lastPhaseTransitionTime")),
    )


def parse_pod(kube: str, o: dict[str, Any]) -> Pod:
    meta, spec = o.get("metadata", {}), o.get("spec", {})
    ns, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
    claims = []
    for v in spec.get("volumes") or []:
        if v.get("persistentVolumeClaim"):
            claims.append(f"{ns}/{v['persistentVolumeClaim'].get('claimName')}")
        elif v.get("ephemeral"):  # a generic ephemeral volume's claim is <pod>-<volume>
            claims.append(f"{ns}/{name}-{v.get('name')}")
    return Pod(kube, ns, name, spec.get("nodeName"), str(o.get("status", {}).get("phase", "")), tuple(claims))


def parse_va(kube: str, o: dict[str, Any]) -> VolumeAttachment:
    spec = o.get("spec", {})
    return VolumeAttachment(
        kube=kube,
        name=str(o.get("metadata", {}).get("name", "")),
        attacher=str(spec.get("attacher", "")),
        pv_name=(spec.get("source") or {}).get("persistentVolumeName"),
        node=str(spec.get("nodeName", "")),
        attached=bool((o.get("status") or {}).get("attached")),
    )


class KubeCluster:
    """One Kubernetes cluster, by kubeconfig file or the pod's own service account."""

    def __init__(self, name: str, api: client.ApiClient, *, timeout_s: float, page_size: int) -> None:
        self.name = name
        self.api = api
        self.core = client.CoreV1Api(api)
        self.storage = client.StorageV1Api(api)
        self.timeout_s = timeout_s
        self.page_size = page_size

    @classmethod
    def from_spec(cls, spec: str, *, timeout_s: float, page_size: int) -> KubeCluster:
        cfg = client.Configuration()
        if spec == IN_CLUSTER:
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
            name = IN_CLUSTER
        else:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=spec, client_configuration=cfg, persist_config=False
            )
            name = _context_name(spec)
        # Retried by the next run, not by urllib3 within this one: a dead API must fail fast.
        cfg.retries = 1
        return cls(name, client.ApiClient(cfg), timeout_s=timeout_s, page_size=page_size)

    def close(self) -> None:
        self.api.close()  # type: ignore[no-untyped-call]

    # -- lists ---------------------------------------------------------------------------

    def _list(self, fn: Callable[..., Any], what: str, parse: Callable[[dict[str, Any]], T]) -> tuple[list[T], int]:
        """Every object of one list, page by page over one snapshot, each reduced by `parse`
        as it arrives. An expired continue token (410) restarts the list once: a consistent
        view or none."""
        for attempt in (1, 2):
            items: list[T] = []
            token: str | None = None
            pages = 0
            try:
                while True:
                    resp = fn(
                        limit=self.page_size, _continue=token, _preload_content=False, _request_timeout=self.timeout_s
                    )
                    body = json.loads(resp.data)
                    pages += 1
                    items.extend(parse(o) for o in body.get("items") or [])
                    token = (body.get("metadata") or {}).get("continue") or None
                    if token is None:
                        return items, pages
            except ApiException as exc:
                if exc.status == 410 and token is not None and attempt == 1:
                    log.info("kube %s: the %s list's continue token expired; listing again", self.name, what)
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def read(self) -> tuple[KubeView, list[SourceReport]]:
        """Everything the jobs need from this cluster; `complete` only if every list finished."""
        view = KubeView(complete=True)
        reports: list[SourceReport] = []
        claims: dict[str, str] = {}
        lists: list[tuple[str, Callable[[], tuple[int, int]]]] = [
            ("persistentvolumes", lambda: self._into(view.pvs, self.core.list_persistent_volume, "pvs", parse_pv)),
            ("persistentvolumeclaims", lambda: self._claims(claims)),
            ("pods", lambda: self._into(view.pods, self.core.list_pod_for_all_namespaces, "pods", parse_pod)),
            (
                "volumeattachments",
                lambda: self._into(view.attachments, self.storage.list_volume_attachment, "vas", parse_va),
            ),
            ("nodes", lambda: self._nodes(view.nodes)),
        ]
        for resource, read in lists:
            start = time.monotonic()
            name = f"kubernetes/{self.name}/{resource}"
            try:
                count, pages = read()
            except Exception as exc:  # unreachable, slow, erroring mid-list: incomplete
                view.complete = False
                reports.append(SourceReport(name=name, ok=False, seconds=_since(start), error=_why(exc)))
                break  # the API is not answering: do not wait out every other list too
            reports.append(SourceReport(name=name, ok=True, items=count, pages=pages, seconds=_since(start)))
        view.claims = {(self.name, k): v for k, v in claims.items()}
        return view, reports

    def _into(
        self, target: list[Any], fn: Callable[..., Any], what: str, parse: Callable[[str, Any], Any]
    ) -> tuple[int, int]:
        items, pages = self._list(fn, what, lambda o: parse(self.name, o))
        target.extend(items)
        return len(items), pages

    def _claims(self, out: dict[str, str]) -> tuple[int, int]:
        def parse(o: dict[str, Any]) -> tuple[str, str | None]:
            meta = o.get("metadata", {})
            return f"{meta.get('namespace')}/{meta.get('name')}", (o.get("spec") or {}).get("volumeName")

        items, pages = self._list(self.core.list_persistent_volume_claim_for_all_namespaces, "pvcs", parse)
        out.update({k: v for k, v in items if v})
        return len(items), pages

    def _nodes(self, out: set[tuple[str, str]]) -> tuple[int, int]:
        items, pages = self._list(self.core.list_node, "nodes", lambda o: str(o.get("metadata", {}).get("name", "")))
        out.update((self.name, n) for n in items)
        return len(items), pages

    # -- writes --------------------------------------------------------------------------

    def delete_pv(self, name: str, uid: str) -> bool:
        """Delete a PV if it is still the one we read (uid precondition); False if gone."""
        body = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid))
        try:
            self.core.delete_persistent_volume(name, body=body, _request_timeout=self.timeout_s)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    # -- the PV watch ----------------------------------------------------------------------

    def watch_pvs(self, driver: str, on_change: Callable[[str, Pv], None], stop: threading.Event) -> None:
        """Block (in a daemon thread) calling `on_change(type, pv)` for each change of a PV of
        `driver`, from the collection's current resourceVersion; relist on 410 Gone."""
        backoff = 0.5
        while not stop.is_set():
            try:
                lister: Any = self.core.list_persistent_volume  # raw: typed as the model it is not
                first = json.loads(lister(limit=1, _preload_content=False, _request_timeout=self.timeout_s).data)
                version = str(first["metadata"]["resourceVersion"])
                stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
                    self.core.list_persistent_volume,
                    resource_version=version,
                    timeout_seconds=5,
                    allow_watch_bookmarks=True,
                    _request_timeout=self.timeout_s + 5,
                )
                for event in stream:
                    if stop.is_set():
                        return
                    obj = event.get("raw_object") or {}
                    if event.get("type") in ("ADDED", "MODIFIED", "DELETED") and obj:
                        pv = parse_pv(self.name, obj)
                        if pv.driver == driver:
                            on_change(str(event["type"]), pv)
                backoff = 0.5
            except Exception as exc:  # API down or 410: list again after a pause
                log.debug("kube %s: PV watch: %s", self.name, exc)
                stop.wait(backoff)
                backoff = min(10.0, backoff * 2)


def _context_name(path: str) -> str:
    """The kubeconfig's current context: how findings name this cluster."""
    try:
        _contexts, active = config.list_kube_config_contexts(config_file=path)  # type: ignore[no-untyped-call]
        return str(active["name"])
    except Exception:
        return Path(path).stem


def _since(start: float) -> float:
    return round(time.monotonic() - start, 3)


def _why(exc: Exception) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}".strip()
    return f"{type(exc).__name__}: {str(exc)[:300]}"
