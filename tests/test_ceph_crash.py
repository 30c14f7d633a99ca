"""kill -9 of the provisioner mid-create and mid-delete on a real Ceph (issue 4).

The provisioner runs as a real process with an `rbd` (or `cephfs`) storage cluster
registered over HTTP, and `BERTH_CRASH_AT` SIGKILLs it at one point of the operation. After
a restart without it, what Ceph holds and what the provisioner lists must match: every
Berth image (the pool's images carrying `berth.volume_id`) or subvolume has its record,
every record its image, nothing partial is left, and the client's retry makes nothing new.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import httpx
import pytest
from berth_procs import ServiceProcess, settled
from ceph_clusters import GIB, TYPES, fs_subvolumes, rbd_berth_images, rbd_image, register_ceph

from berth_shared.backends.rbd import PARTIAL
from berth_testing import Tenants, eventually
from berth_testing.ceph import CephCluster

pytestmark = pytest.mark.slow


async def _volumes(http: httpx.AsyncClient) -> dict[str, str]:
    r = await http.get("/v1/volumes", params={"limit": 1000})
    assert r.status_code == 200, r.text
    return {v["id"]: v["status"] for v in r.json()["items"]}


async def _crash_on(proc: ServiceProcess, request: Callable[[], Any]) -> None:
    try:
        r = await request()
    except httpx.TransportError:
        pass  # the process died under the request
    else:
        raise AssertionError(f"answered ({r.status_code}) instead of crashing: {r.text}; {proc.tail()}")
    assert await proc.wait_exit() == -9, proc.tail()


class CephView:
    """What the cluster holds for this test: new Berth images (rbd; the pool is shared by
    the session, so only those that were not there before) or the tenant's subvolumes."""

    def __init__(self, ceph: CephCluster, kind: Literal["rbd", "cephfs"], tenant: str) -> None:
        self.ceph, self.kind, self.group = ceph, kind, f"berth-{tenant}"
        self.before = set(rbd_berth_images(ceph)) if kind == "rbd" else set()

    def objects(self) -> dict[str, str]:
        """Image or subvolume name -> the volume id it belongs to."""
        if self.kind == "rbd":
            return {n: v for n, v in rbd_berth_images(self.ceph).items() if n not in self.before}
        return {n: n for n in fs_subvolumes(self.ceph, self.group)}

    def size_of(self, name: str) -> int:
        if self.kind == "cephfs":
            return int(fs_subvolumes(self.ceph, self.group)[name]["bytes_quota"])
        with rbd_image(self.ceph, name) as img:
            return int(img.size())


CREATE_POINTS = [
    ("rbd", "volume.create.after_record"),
    ("rbd", "rbd.create.partial"),
    ("rbd", "volume.create.after_backend"),
    ("cephfs", "volume.create.after_record"),
    ("cephfs", "volume.create.after_backend"),
]


@pytest.mark.parametrize(("kind", "point"), CREATE_POINTS)
async def test_kill_during_create_on_ceph(
    kind: Literal["rbd", "cephfs"],
    point: str,
    service_process: Callable[..., ServiceProcess],
    tenants: Tenants,
    ceph: CephCluster,
) -> None:
    view = CephView(ceph, kind, tenants.tenant_a)
    proc = service_process()
    proc.start(crash_at=point)
    await proc.wait_ready()
    async with proc.client(tenants.admin) as admin:
        await register_ceph(admin, tenants.admin, ceph, kind)
    spec = {"name": "db-0", "size_gib": 1, "volume_type": TYPES[kind]}
    async with proc.client(tenants.a) as http:
        await _crash_on(proc, lambda: http.post("/v1/volumes", json=spec))

        # Dead: exactly what the crash point leaves on Ceph.
        left = view.objects()
        if point == "volume.create.after_record":
            assert left == {}
        elif point == "rbd.create.partial":
            ((name, _),) = left.items()
            assert name.endswith(PARTIAL), left
        else:
            assert len(left) == 1 and not next(iter(left)).endswith(PARTIAL), left

        proc.start()
        await proc.wait_ready()
        vols = await eventually(
            lambda: _volumes(http), lambda vs: list(vs.values()) == ["available"], what="the interrupted create"
        )
        (vid,) = vols
        r = await http.post("/v1/volumes", json=spec)
        assert r.status_code == 201 and r.json()["id"] == vid, r.text
        await settled(proc)

        # One object per record, tagged with it, complete; none without one.
        objects = view.objects()
        assert list(objects.values()) == [vid] and list(objects) == [vid], objects
        assert view.size_of(vid) == GIB

        r = await http.delete(f"/v1/volumes/{vid}")
        assert r.status_code == 204, r.text
        assert view.objects() == {}


@pytest.mark.parametrize("point", ["volume.delete.after_record", "volume.delete.after_backend"])
async def test_kill_during_delete_on_rbd(
    point: str, service_process: Callable[..., ServiceProcess], tenants: Tenants, ceph: CephCluster
) -> None:
    view = CephView(ceph, "rbd", tenants.tenant_a)
    proc = service_process()
    proc.start(crash_at=point)
    await proc.wait_ready()
    async with proc.client(tenants.admin) as admin:
        await register_ceph(admin, tenants.admin, ceph, "rbd")
    async with proc.client(tenants.a) as http:
        ids = {}
        for name in ("keep", "doomed"):
            r = await http.post("/v1/volumes", json={"name": name, "size_gib": 1, "volume_type": TYPES["rbd"]})
            assert r.status_code == 201, r.text
            ids[name] = r.json()["id"]
        await _crash_on(proc, lambda: http.delete(f"/v1/volumes/{ids['doomed']}"))
        expect = {ids["keep"], ids["doomed"]} if point == "volume.delete.after_record" else {ids["keep"]}
        assert set(view.objects().values()) == expect

        proc.start()
        await proc.wait_ready()
        await eventually(
            lambda: _volumes(http), lambda vs: vs == {ids["keep"]: "available"}, what="the interrupted delete"
        )
        r = await http.delete(f"/v1/volumes/{ids['doomed']}")
        assert r.status_code in (204, 404), r.text
        await settled(proc)
        assert view.objects() == {ids["keep"]: ids["keep"]}

        r = await http.delete(f"/v1/volumes/{ids['keep']}")
        assert r.status_code == 204, r.text
        assert view.objects() == {}
