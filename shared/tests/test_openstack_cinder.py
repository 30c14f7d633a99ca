"""The Cinder backend's contract against a real Cinder (RBD driver on the session's real
Ceph; the fake driver only for the local-SSD type) and a real Keystone: the `openstack`
fixture. What Cinder creates is checked in Ceph itself, image by image."""

from __future__ import annotations

import errno
import http.server
import os
import shutil
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from berth_shared.backends import (
    BackendError,
    FenceTarget,
    QosLimits,
    build_backend,
    ceph_bindings,
    validate_backend_config,
)
from berth_shared.backends.cinder import CinderBackend, connection_context, node_instance
from berth_shared.backends.openstack_common import GIB, META_VOLUME
from berth_shared.backends.openstack_discovery import offered_types
from berth_shared.backends.publish import publish_context, withdraw
from berth_shared.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from berth_shared.node import ceph as node_ceph
from berth_shared.node import staging
from berth_testing.ceph import CephCluster
from berth_testing.openstack import OpenStack
from berth_testing.openstack_conf import MULTIATTACH_TYPE, RBD_BACKENDS

CONNECTOR = {"host": "node-a", "ip": "127.0.0.1", "platform": "x86_64", "os_type": "linux", "multipath": False}


def _id(prefix: str = "v") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def make(openstack: OpenStack) -> AsyncIterator[Callable[..., CinderBackend]]:
    made: list[CinderBackend] = []

    def make(volume_type: str = "ceph-ssd", **extra: Any) -> CinderBackend:
        backend = build_backend("cinder", openstack.cinder_config(volume_type, **extra))
        assert isinstance(backend, CinderBackend)
        made.append(backend)
        return backend

    yield make
    for b in made:
        await b.close()


def _images(ceph: CephCluster, pool: str) -> set[str]:
    rbd = ceph_bindings.rbd()
    with ceph.client().open_ioctx(pool) as ioctx:
        return set(rbd.RBD().list(ioctx))


def _image_info(ceph: CephCluster, pool: str, name: str) -> tuple[int, str | None]:
    """(size, data pool) of an image, read from Ceph."""
    rbd = ceph_bindings.rbd()
    with ceph.client().open_ioctx(pool) as ioctx, rbd.Image(ioctx, name, read_only=True) as img:
        data_pool_id = img.data_pool_id()
        names = {p["pool_id"]: p["pool_name"] for p in ceph.mon_command("osd pool ls", detail="detail")}
        return int(img.size()), names.get(data_pool_id)


def test_config_validation() -> None:
    norm = validate_backend_config("cinder", {"cloud": "prod-az1", "volume_type": "ssd"})
    assert norm == {"cloud": "prod-az1", "volume_type": "ssd", "timeout_s": 30.0, "wait_s": 300.0, "retries": 4}
    for bad, needle in (
        ({"volume_type": "ssd"}, "'cloud'"),
        ({"cloud": "c"}, "'volume_type'"),
        ({"cloud": "c", "volume_type": "t", "clouds_file": "rel/clouds.yaml"}, "absolute"),
        ({"cloud": "c", "volume_type": "t", "timeout_s": 0}, "'timeout_s'"),
        ({"cloud": "c", "volume_type": "t", "ceph": {"pool": "p"}}, "give 'conf'"),
    ):
        with pytest.raises(InvalidArgument, match=needle):
            validate_backend_config("cinder", bad)


async def test_volume_lifecycle_is_real_rbd(openstack: OpenStack, make: Callable[..., CinderBackend]) -> None:
    b, ceph = make(), openstack.ceph
    vid, sid, from_snap, clone = _id(), _id("s"), _id(), _id()
    await b.create_volume(vid, GIB + 1, tenant="team-a")  # rounded up to whole GiB
    await b.create_volume(vid, GIB + 1, tenant="team-a")  # a retry adopts, never duplicates
    image = await b.image_name(vid)
    assert image in _images(ceph, "cinder-ssd")
    assert _image_info(ceph, "cinder-ssd", image)[0] == 2 * GIB
    vols = list(openstack.admin().block_storage.volumes(details=True, name=f"berth-{vid}", all_projects=True))
    assert len(vols) == 1 and vols[0].metadata == {META_VOLUME: vid, "berth_tenant": "team-a"}

    await b.expand_volume(vid, 3 * GIB)
    await b.expand_volume(vid, 1 * GIB)  # never shrinks
    assert _image_info(ceph, "cinder-ssd", image)[0] == 3 * GIB

    await b.create_snapshot(sid, vid)
    await b.create_snapshot(sid, vid)
    await b.create_volume_from_snapshot(from_snap, sid, 3 * GIB)
    await b.clone_volume(clone, vid, 4 * GIB)
    assert _image_info(ceph, "cinder-ssd", await b.image_name(clone))[0] == 4 * GIB

    inv = {(i.kind, i.id): i.size_bytes for i in await b.inventory()}
    assert inv[("volume", vid)] == 3 * GIB and inv[("snapshot", sid)] == 3 * GIB
    assert ("volume", from_snap) in inv and ("volume", clone) in inv

    cap = await b.capacity()
    assert 0 < cap.free_bytes <= cap.total_bytes

    for v in (from_snap, clone):
        await b.delete_volume(v)
    await b.delete_snapshot(sid)
    await b.delete_snapshot(sid)  # gone already: success
    await b.delete_volume(vid)
    await b.delete_volume(vid)
    assert image not in _images(ceph, "cinder-ssd")
    assert not {i.id for i in await b.inventory()} & {vid, sid, from_snap, clone}


async def test_errors_are_mapped(openstack: OpenStack, make: Callable[..., CinderBackend]) -> None:
    b = make()
    with pytest.raises(NotFound):
        await b.expand_volume(_id(), GIB)
    with pytest.raises(NotFound):
        await b.create_volume_from_snapshot(_id(), _id("s"), GIB)
    with pytest.raises(NotFound):
        await b.create_snapshot(_id("s"), _id())

    # Quota: a project of its own with 1 GiB (Berth's OpenStack user needs `service`
    # beside its project role: its attachment deletes carry a service token).
    name = _id("quota-")
    project_id, _ = openstack.project_user(name, ("member", "service"))
    openstack.admin().block_storage.update_quota_set(project_id, gigabytes=1)
    small = make(cloud=name)
    with pytest.raises(ResourceExhausted) as info:
        await small.create_volume(_id(), 2 * GIB)
    assert info.value.reason == "backend_quota_exceeded"

    # Deleting an attached volume: refused with the holder, the volume stays, no loop.
    vid = _id()
    await b.create_volume(vid, GIB)
    await b.attach(vid, "node-a", CONNECTOR)
    with pytest.raises(FailedPrecondition) as refused:
        await b.delete_volume(vid)
    assert refused.value.reason == "volume_in_use"
    assert await b.image_name(vid)
    await b.detach(vid, "node-a")
    await b.detach(vid, "node-a")  # nothing left: success
    await b.delete_volume(vid)


class _FlakyCinder(http.server.BaseHTTPRequestHandler):
    """A real HTTP server in front of Cinder that answers the first `fail` requests with
    `status` (or holds them past the client's timeout), then forwards."""

    target = ""
    fail = 0
    status = 503
    hang_s = 0.0
    seen: list[str] = []
    lock = threading.Lock()

    def _handle(self) -> None:
        with self.lock:
            self.seen.append(f"{self.command} {self.path}")
            failing = type(self).fail > 0
            if failing:
                type(self).fail -= 1
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else None
        if failing and self.hang_s:
            threading.Event().wait(self.hang_s)
        if failing:
            self.send_response(self.status)
            self.send_header("Retry-After", "0")
            self.send_header("content-length", "0")
            self.end_headers()
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        resp = httpx.request(self.command, self.target + self.path, headers=headers, content=body, timeout=60)
        self.send_response(resp.status_code)
        for k, v in resp.headers.items():
            if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                self.send_header(k, v)
        self.send_header("content-length", str(len(resp.content)))
        self.end_headers()
        self.wfile.write(resp.content)

    do_GET = do_POST = do_PUT = do_DELETE = _handle

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def flaky(openstack: OpenStack, tmp_path: Path) -> Iterator[tuple[type[_FlakyCinder], Path]]:
    handler = type("Flaky", (_FlakyCinder,), {"target": openstack.cinder_url.rsplit("/v3", 1)[0], "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    clouds = yaml.safe_load(openstack.clouds_file.read_text())
    cloud = dict(clouds["clouds"]["berth"])
    project = openstack.admin().identity.find_project("service", ignore_missing=False).id
    cloud["block_storage_endpoint_override"] = f"http://127.0.0.1:{server.server_port}/v3/{project}"
    path = tmp_path / "clouds.yaml"
    path.write_text(yaml.safe_dump({"clouds": {"flaky": cloud}}))
    yield handler, path
    server.shutdown()
    server.server_close()


async def test_transient_errors_are_retried_and_calls_time_out(
    flaky: tuple[type[_FlakyCinder], Path], make: Callable[..., CinderBackend]
) -> None:
    handler, clouds = flaky
    b = make(cloud="flaky", clouds_file=str(clouds), retries=3, timeout_s=3)
    no_retry = make(cloud="flaky", clouds_file=str(clouds), retries=0, timeout_s=3)
    await no_retry.inventory()
    await b.inventory()  # version discovery done: what follows counts API calls only
    handler.seen.clear()
    handler.fail, handler.status = 2, 503
    assert await b.inventory() is not None
    # Two 503s on the volume list, then through (and the snapshot list).
    assert [r.split("/")[-2] for r in handler.seen] == ["volumes"] * 3 + ["snapshots"] and handler.fail == 0

    handler.fail, handler.status = 5, 429  # rate limited past the retries: a clear error
    with pytest.raises(BackendError) as info:
        await b.inventory()
    assert info.value.reason == "backend_rate_limited" and "HTTP 429" in info.value.detail and handler.fail == 1

    handler.fail, handler.hang_s = 1, 6.0  # one call held past the 3 s timeout, then retried
    handler.seen.clear()
    await b.inventory()
    assert [r.split("/")[-2] for r in handler.seen] == ["volumes"] * 2 + ["snapshots"]
    handler.fail = 1
    with pytest.raises(DeadlineExceeded):
        await no_retry.inventory()
    handler.fail = 0


async def test_attachments_carry_rbd_connection_info(openstack: OpenStack, make: Callable[..., CinderBackend]) -> None:
    b, multi = make(), make(MULTIATTACH_TYPE)
    vid, shared = _id(), _id()
    await b.create_volume(vid, GIB)
    ctx = await b.attach(vid, "node-a", CONNECTOR)
    assert ctx["driver"] == "rbd" and ctx["pool"] == "cinder-ssd" and ctx["image"] == await b.image_name(vid)
    assert "keyring" not in ctx and "secret_uuid" not in ctx and ctx["attachment_id"]
    assert await b.attach(vid, "node-a", CONNECTOR) == ctx  # idempotent: the same attachment
    atts = list(openstack.connect("berth").block_storage.attachments(volume_id=ctx["cinder_id"]))
    assert [(a.instance, a.status) for a in atts] == [(node_instance("node-a"), "attached")]
    await b.detach(vid, "node-a")
    assert await b.attached_nodes(vid) == []
    await b.delete_volume(vid)

    # RWX block: a multiattach type takes two nodes at once.
    await multi.create_volume(shared, GIB)
    a = await multi.attach(shared, "node-a", CONNECTOR)
    c = await multi.attach(shared, "node-b", {**CONNECTOR, "host": "node-b"})
    assert a["image"] == c["image"] and a["attachment_id"] != c["attachment_id"]
    assert len(await multi.attached_nodes(shared)) == 2
    for node in ("node-a", "node-b"):
        await multi.detach(shared, node)
    await multi.delete_volume(shared)


def test_connection_context_keeps_secrets_out() -> None:
    info = {
        "driver_volume_type": "rbd",
        "name": "pool-x/volume-1",
        "hosts": ["10.0.0.1", "10.0.0.2"],
        "ports": ["6789", "6789"],
        "auth_username": "cinder",
        "keyring": "[client.cinder]\n\tkey = SECRET",
        "secret_uuid": "abc",
        "attachment_id": "att-1",
    }
    ctx = connection_context(info, "vol-1")
    assert ctx == {
        "cinder_id": "vol-1",
        "attachment_id": "att-1",
        "driver": "rbd",
        "pool": "pool-x",
        "image": "volume-1",
        "mon_host": "10.0.0.1:6789,10.0.0.2:6789",
    }
    nested = {"driver_volume_type": "rbd", "attachment_id": "att-1", "data": info}  # os-initialize_connection's form
    assert connection_context(nested, "vol-1") == ctx


async def test_fence_force_detaches_and_blocklists(openstack: OpenStack, make: Callable[..., CinderBackend]) -> None:
    """Node A holds the Cinder attachment and writes through its own librbd client; the
    fence removes the attachment and A's next write fails (ESHUTDOWN), B takes over."""
    b, ceph = make(), openstack.ceph
    rados, rbd = ceph_bindings.rados(), ceph_bindings.rbd()
    vid, node = _id(), _id("node-")
    await b.create_volume(vid, GIB)
    ctx = await b.attach(vid, node, {**CONNECTOR, "host": node})
    client = rados.Rados(conffile=str(ceph.conf), rados_id=ceph.user, conf={"keyring": str(ceph.keyring)})
    client.connect(timeout=20)
    addr = str(client.get_addrs())
    ioctx = client.open_ioctx(ctx["pool"])
    img = rbd.Image(ioctx, ctx["image"])
    try:
        img.write(b"A".ljust(4096, b"\0"), 0)
        img.flush()
        cut = await b.fence(FenceTarget(node, (vid,), (addr,)))
        assert f"cinder-detach {vid} {ctx['attachment_id']}" in cut
        assert any(c.startswith("blocklist ") for c in cut) and any(c.startswith(f"lock {ctx['image']}") for c in cut)
        assert await b.attached_nodes(vid) == []
        with pytest.raises((rados.Error, rbd.Error)) as info:
            img.write(b"late".ljust(4096, b"\0"), 4096)
            img.flush()
        assert info.value.errno == errno.ESHUTDOWN
        await b.fence(FenceTarget(node, (vid,), (addr,)))  # idempotent
    finally:
        with suppress(Exception):
            img.close()
        ioctx.close()
        client.shutdown()
    other = await b.attach(vid, "node-b", {**CONNECTOR, "host": "node-b"})
    assert other["image"] == ctx["image"]
    assert await b.unfence(FenceTarget(node, (vid,), (addr,)))
    await b.detach(vid, "node-b")
    await b.delete_volume(vid)


async def test_qos_per_volume_on_the_image_and_per_gib_on_the_type(
    openstack: OpenStack, make: Callable[..., CinderBackend]
) -> None:
    b, ceph = make("ceph-hdd"), openstack.ceph
    vid = _id()
    await b.create_volume(vid, GIB)
    state = await b.set_qos(vid, QosLimits(iops=300, bps=50 << 20))
    assert state.enforced and state.limits == QosLimits(iops=300, bps=50 << 20)
    assert (await b.get_qos(vid)).limits == state.limits
    rbd = ceph_bindings.rbd()
    with ceph.client().open_ioctx("cinder-hdd") as ioctx, rbd.Image(ioctx, await b.image_name(vid)) as img:
        cfg = {c["name"]: c["value"] for c in img.config_list() if c["source"] == rbd.RBD_CONFIG_SOURCE_IMAGE}
    assert cfg == {"rbd_qos_iops_limit": "300", "rbd_qos_bps_limit": str(50 << 20)}

    spec_id = await b.set_type_qos(iops_per_gib=10, bytes_per_s_per_gib=1 << 20)
    bs = openstack.admin().block_storage
    spec = bs.get_qos_spec(spec_id)
    assert spec.specs == {"total_iops_sec_per_gb": "10", "total_bytes_sec_per_gb": str(1 << 20)}
    assert spec.consumer == "front-end"
    assert [a["name"] for a in bs.qos_spec_associations(spec_id)] == ["ceph-hdd"]
    assert await b.set_type_qos(iops_per_gib=20, bytes_per_s_per_gib=None) != spec_id  # replaced
    assert await b.set_type_qos(iops_per_gib=None, bytes_per_s_per_gib=None) == ""
    await b.delete_volume(vid)


async def test_the_seed_types_are_expressible(openstack: OpenStack, make: Callable[..., CinderBackend]) -> None:
    """Replicated SSD and HDD, EC HDD (data in its own pool), remote one-copy SSD on RBD;
    local SSD on the fake driver (no Ceph image: it has no data path). CephFS shared is
    Manila's (test_openstack_manila)."""
    ceph = openstack.ceph
    made: list[tuple[CinderBackend, str]] = []
    for spec in RBD_BACKENDS:
        b, vid = make(spec.name), _id()
        await b.create_volume(vid, GIB)
        made.append((b, vid))
        size, data_pool = _image_info(ceph, spec.pool, await b.image_name(vid))
        assert size == GIB
        assert data_pool == (spec.data_pool or spec.pool), spec
    pools = {p["pool_name"]: p for p in ceph.mon_command("osd pool ls", detail="detail")}
    assert pools["cinder-remote"]["size"] == 1
    local, lid = make("local-ssd"), _id()
    await local.create_volume(lid, GIB)
    assert ("volume", lid) in {(i.kind, i.id) for i in await local.inventory()}
    with pytest.raises(NotFound, match="infinite"):  # the fake driver: capacity unknown to placement
        await local.capacity()
    for b, vid in [*made, (local, lid)]:
        await b.delete_volume(vid)


async def test_quarantine_restore_purge(openstack: OpenStack, make: Callable[..., CinderBackend]) -> None:
    """The watcher's quarantine: out of the inventory, listed in the trash, not attachable,
    restorable; a purge removes it and its snapshots from Cinder and Ceph."""
    b, ceph = make(), openstack.ceph
    vid, sid = _id(), _id("s")
    await b.create_volume(vid, GIB, tenant="team-q")
    await b.create_snapshot(sid, vid)
    [item] = [i for i in await b.inventory() if i.id == vid]
    assert item.tenant == "team-q" and item.created_at is not None and not item.partial
    await b.attach(vid, "node-q", CONNECTOR)
    with pytest.raises(FailedPrecondition, match="attached"):
        await b.quarantine("volume", vid)
    await b.detach(vid, "node-q")
    await b.quarantine("volume", vid)
    await b.quarantine("volume", vid)  # idempotent
    assert vid not in {i.id for i in await b.inventory()}
    assert ("volume", vid) in {(t.kind, t.id) for t in await b.trash()}
    with pytest.raises(FailedPrecondition, match="quarantined"):
        await b.attach(vid, "node-q", CONNECTOR)
    await b.restore("volume", vid)
    assert vid in {i.id for i in await b.inventory()}
    await b.purge("volume", vid)  # not quarantined: a purge never takes a live volume
    assert vid in {i.id for i in await b.inventory()}
    image = await b.image_name(vid)
    await b.quarantine("volume", vid)
    await b.purge("volume", vid)
    await b.purge("volume", vid)
    assert image not in _images(ceph, "cinder-ssd")
    assert not {t.id for t in await b.trash()} & {vid, sid}
    with pytest.raises(NotFound):
        await b.quarantine("volume", vid)


async def test_cloud_types_are_offered_as_clusters(openstack: OpenStack) -> None:
    """Every Cinder volume type and Manila share type, with its pools' capacity: what the
    provisioner registers as clusters."""
    base = {"cloud": "berth", "clouds_file": str(openstack.clouds_file)}
    cinder = {t.name: t for t in await offered_types("cinder", base)}
    assert set(cinder) == {b.name for b in RBD_BACKENDS} | {"local-ssd", MULTIATTACH_TYPE}
    ssd = cinder["ceph-ssd"]
    assert ssd.config["volume_type"] == "ceph-ssd" and ssd.config["cloud"] == "berth"
    assert ssd.capacity_gib and ssd.free_gib is not None and ssd.free_gib <= ssd.capacity_gib
    assert cinder["local-ssd"].capacity_gib is None  # the fake driver says "infinite"
    assert cinder[MULTIATTACH_TYPE].multiattach and not ssd.multiattach
    validate_backend_config("cinder", ssd.config)  # registrable as it is
    manila = await offered_types("manila", base)
    assert [(t.name, t.config["share_type"]) for t in manila] == [("cephfs", "cephfs")]
    assert manila[0].capacity_gib


async def test_node_stages_a_cinder_rbd_connection(
    openstack: OpenStack, make: Callable[..., CinderBackend], tmp_path: Path
) -> None:
    """The publish context of a Cinder attachment is staged by the node's one staging path
    (rbd-fuse + loop here, ext4 formatted once), the node's address lands on the image for
    a fence to find, and the data is there for the next node."""
    if os.geteuid() != 0 or "fuse" not in node_ceph.rbd_methods() or not shutil.which("mkfs.ext4"):
        pytest.skip("needs root, rbd-fuse, /dev/fuse, losetup and mkfs.ext4")
    b, ceph = make(), openstack.ceph
    vid, node_id = _id(), _id("node-")
    await b.create_volume(vid, GIB)
    ctx = {**await b.attach(vid, node_id, {**CONNECTOR, "host": node_id}), "backend": "cinder"}
    identity = node_ceph.CephClientSpec(str(ceph.conf), str(ceph.keyring), ceph.user)

    def request(target: Path) -> staging.StageRequest:
        target.mkdir(parents=True, exist_ok=True)
        return staging.StageRequest(vid, ctx, node_id, str(target), tmp_path / "work", identity=identity)

    staged = await staging.stage(request(tmp_path / "a"))
    ceph.on_stop(lambda: node_ceph.sweep(ceph.conf))
    try:
        assert staged.backend == "rbd" and staged.source == f"cinder-ssd/{ctx['image']}" and staged.client_address
        (tmp_path / "a" / "data.txt").write_bytes(b"on a cinder volume")
        recorded = (await b._ceph().describe_volume(ctx["image"])).node_addresses
        assert recorded == {node_id: staged.client_address}
    finally:
        await staging.unstage(staged, node_id=node_id)
    assert (await b._ceph().describe_volume(ctx["image"])).node_addresses == {}  # a clean unstage forgets it
    again = await staging.stage(request(tmp_path / "b"))  # not reformatted: the data is there
    try:
        assert (tmp_path / "b" / "data.txt").read_bytes() == b"on a cinder volume"
    finally:
        await staging.unstage(again, node_id=node_id)
    with pytest.raises(InvalidArgument, match="iscsi"):
        await staging.stage(staging.StageRequest(vid, {**ctx, "driver": "iscsi"}, node_id, None, tmp_path / "w"))
    await b.detach(vid, node_id)
    await b.delete_volume(vid)


async def test_publish_helpers_attach_through_cinder(make: Callable[..., CinderBackend]) -> None:
    """What the attacher calls on publish/unpublish: a Cinder attachment for the node, then
    none (and again none: idempotent)."""
    b, vid = make(), _id()
    await b.create_volume(vid, GIB)
    ctx = await publish_context(b, vid, "node-p", readonly=False)
    assert ctx["driver"] == "rbd" and ctx["user"] == "admin" and ctx["conf"]
    assert len(await b.attached_nodes(vid)) == 1
    await withdraw(b, vid, "node-p")
    await withdraw(b, vid, "node-p")
    assert await b.attached_nodes(vid) == []
    await b.delete_volume(vid)
