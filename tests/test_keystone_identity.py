"""Keystone identity against a real Keystone (the `openstack` fixture): tokens of real users
validated and cached, revocations honoured, roles mapped, the project as the tenant, Berth's
own credentials from clouds.yaml, `X-Auth-Token` beside `Authorization: Bearer`, the reader
role read-only on the provisioner and the attacher, and the
static development tokens refused once Keystone is configured."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import pytest

from berth_attacher.app import create_app as attacher_app
from berth_attacher.config import AttacherSettings
from berth_provisioner.app import create_app
from berth_provisioner.config import ProvisionerSettings
from berth_shared.auth import CloudServiceCredentials, KeystoneTokenValidator, Principal
from berth_shared.errors import Unauthenticated, Unavailable
from berth_shared.runtime import make_validator
from berth_testing import MakeSettings, Tenants, running
from berth_testing.openstack import OpenStack


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _validator(openstack: OpenStack, seen: list[str] | None = None, **kw: float) -> KeystoneTokenValidator:
    async def count(request: httpx.Request) -> None:
        if seen is not None:
            seen.append(request.url.path)

    client = httpx.AsyncClient(timeout=10, event_hooks={"request": [count]})
    creds = CloudServiceCredentials("berth", str(openstack.clouds_file))
    return KeystoneTokenValidator(creds.auth_url, creds, client, revocation_poll_s=kw.get("poll", 5.0))


async def test_roles_project_and_cache(openstack: OpenStack) -> None:
    users = {role: _name(role) for role in ("admin", "member", "reader")}
    projects = {role: openstack.project_user(name, (role,))[0] for role, name in users.items()}
    seen: list[str] = []
    v = _validator(openstack, seen)
    got: dict[str, Principal] = {}
    for role, name in users.items():
        got[role] = await v.validate(await asyncio.to_thread(openstack.token, name))
    # Keystone's implied roles: admin brings member and reader, member brings reader.
    assert got["admin"].roles == {"admin", "member", "reader"} and got["admin"].is_admin
    assert got["member"].roles == {"member", "reader"} and got["member"].can_write and not got["member"].is_admin
    assert got["reader"].roles == {"reader"} and not got["reader"].can_write
    assert {r: p.tenant for r, p in got.items()} == projects  # project id = tenant
    assert got["member"].user == users["member"]

    token = await asyncio.to_thread(openstack.token, users["member"])
    seen.clear()
    for _ in range(5):
        assert await v.validate(token) == got["member"]
    assert seen.count("/v3/auth/tokens") == 1  # asked once, then cached (revocations polled beside)
    cached = next(iter(v._cache.values()))
    assert cached.expires_at > time.time() + 3000  # for the token's lifetime (1 h here)


async def test_revocation_is_honoured(openstack: OpenStack) -> None:
    name = _name("rev")
    openstack.project_user(name, ("member",))
    v = _validator(openstack, poll=0.2)
    token = await asyncio.to_thread(openstack.token, name)
    other = await asyncio.to_thread(openstack.token, name)
    await v.validate(token)
    await v.validate(other)
    # The user logs one token out (DELETE /v3/auth/tokens): that one stops working.
    await asyncio.to_thread(openstack.admin().identity.delete, "/auth/tokens", headers={"X-Subject-Token": token})
    deadline = time.monotonic() + 10
    while True:
        try:
            await v.validate(token)
        except Unauthenticated:
            break
        assert time.monotonic() < deadline, "a revoked token was still accepted after 10 s"
        await asyncio.sleep(0.1)
    assert (await v.validate(other)).user == name  # the other one still works


async def test_bad_tokens_and_bad_service_credentials(openstack: OpenStack) -> None:
    v = _validator(openstack)
    with pytest.raises(Unauthenticated):
        await v.validate("not-a-token")
    broken = KeystoneTokenValidator(openstack.keystone_url, "wrong-service-token")
    with pytest.raises(Unavailable, match="refused this service's credentials"):
        await broken.validate(await asyncio.to_thread(openstack.token, "berth"))


async def test_http_with_keystone(openstack: OpenStack, make_settings: MakeSettings, tenants: Tenants) -> None:
    """A provisioner configured for Keystone: X-Auth-Token and Bearer both work, a reader
    reads but does not create, and the static token file's tokens are refused."""
    member, reader = _name("m"), _name("r")
    project, _ = openstack.project_user(member, ("member",))
    openstack.project_user(reader, ("reader",))
    settings = make_settings(
        ProvisionerSettings,
        auth_backend="keystone",
        keystone_cloud="berth",
        clouds_file=openstack.clouds_file,
        bootstrap_file_cluster=False,
    )
    assert isinstance(make_validator(settings), KeystoneTokenValidator)
    token = await asyncio.to_thread(openstack.token, member)
    reader_token = await asyncio.to_thread(openstack.token, reader)
    async with running(create_app(settings)) as http:
        r = await http.get("/v1/volumes", headers={"X-Auth-Token": token})
        assert r.status_code == 200, r.text
        assert (await http.get("/v1/volumes", headers={"Authorization": f"Bearer {token}"})).status_code == 200
        r = await http.get("/v1/volumes", headers={"Authorization": f"Bearer {token}", "X-Auth-Token": reader_token})
        assert r.status_code == 401 and "different tokens" in r.json()["detail"]
        r = await http.get(f"/v1/quotas/{project}", headers={"X-Auth-Token": token})
        assert r.status_code == 200 and r.json()["tenant"] == project  # the project is the tenant
        for static in (tenants.admin, tenants.a):  # the development tokens mean nothing here
            r = await http.get("/v1/volumes", headers={"Authorization": f"Bearer {static}"})
            assert r.status_code == 401, r.text
        assert (await http.get("/v1/volumes", headers={"X-Auth-Token": reader_token})).status_code == 200
        vol = {"name": "r-0", "size_gib": 1, "volume_type": "standard"}
        r = await http.post("/v1/volumes", json=vol, headers={"X-Auth-Token": reader_token})
        assert r.status_code == 403 and "reader" in r.json()["detail"], r.text  # a reader reads only


async def test_attacher_with_keystone_refuses_a_readers_publish_and_unpublish(
    openstack: OpenStack, make_settings: MakeSettings
) -> None:
    """The reader role is read-only on the attacher too: it lists attachments, but publish
    and unpublish (mutations) are 403, before anything is looked up (an unknown volume is
    not a 404 for it, a repeated unpublish not a no-op), while a member's go through."""
    member, reader = _name("m"), _name("r")
    openstack.project_user(member, ("member",))
    openstack.project_user(reader, ("reader",))
    keystone = {"auth_backend": "keystone", "keystone_cloud": "berth", "clouds_file": openstack.clouds_file}
    prov = make_settings(ProvisionerSettings, bootstrap_file_cluster=False, **keystone)
    settings = make_settings(AttacherSettings, **keystone)
    token = await asyncio.to_thread(openstack.token, member)
    reader_token = await asyncio.to_thread(openstack.token, reader)
    missing = {"volume_id": "vol-0123456789abcdef", "node_id": "node-a"}
    async with running(create_app(prov)), running(attacher_app(settings)) as http:
        r = await http.get("/v1/attachments", headers={"X-Auth-Token": reader_token})
        assert r.status_code == 200 and r.json()["items"] == [], r.text
        mutations: list[tuple[str, dict[str, Any]]] = [("POST", {"json": missing}), ("DELETE", {"params": missing})]
        for method, kw in mutations:
            r = await http.request(method, "/v1/attachments", headers={"X-Auth-Token": reader_token}, **kw)
            assert r.status_code == 403 and "reader" in r.json()["detail"], r.text
        r = await http.post("/v1/attachments", json=missing, headers={"X-Auth-Token": token})
        assert r.status_code == 404, r.text  # a member is told the volume does not exist
        r = await http.delete("/v1/attachments", params=missing, headers={"X-Auth-Token": token})
        assert r.status_code == 204, r.text  # and unpublishing what is not published is done
