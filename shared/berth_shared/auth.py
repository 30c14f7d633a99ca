"""Authentication behind one interface: a static token file (embedded default) or Keystone."""

from __future__ import annotations

import asyncio
import datetime as _dt
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx

from berth_shared.errors import PermissionDenied, Unauthenticated, Unavailable

log = logging.getLogger(__name__)

ADMIN_ROLE = "admin"
MEMBER_ROLE = "member"
READER_ROLE = "reader"  # reads its tenant's volumes, changes nothing
NODE_ROLE = "node"
# Tenant names become NATS subject tokens and DB keys: keep them to a safe alphabet.
TENANT_PATTERN = r"^[a-z0-9_][a-z0-9_\-]{0,62}$"


@dataclass(frozen=True)
class Principal:
    tenant: str
    roles: frozenset[str] = field(default_factory=frozenset)
    user: str = ""

    @property
    def is_admin(self) -> bool:
        return ADMIN_ROLE in self.roles

    def require_admin(self) -> None:
        if not self.is_admin:
            raise PermissionDenied("this operation needs the admin role")

    @property
    def scope(self) -> str | None:
        """The tenant a lookup by id is confined to: None (every tenant) for an admin, so
        that an admin acts on any tenant's volume the same way for every operation."""
        return None if self.is_admin else self.tenant

    @property
    def can_write(self) -> bool:
        """admin, or member of its tenant (a reader reads only)."""
        return bool(self.roles & {ADMIN_ROLE, MEMBER_ROLE})

    def require_writer(self) -> None:
        if not self.can_write:
            raise PermissionDenied("this operation needs the member or admin role (a reader only reads)")


class TokenValidator(Protocol):
    async def validate(self, token: str) -> Principal: ...


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def ensure_token_file(path: Path) -> dict[str, str]:
    """Create the embedded default's token file on first start; return {name: token}.

    Written 0600: these tokens are the keys to every tenant's volumes.
    """
    if path.exists():
        return read_tokens(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "tokens": [
            {
                "name": "admin",
                "token": "berth-admin-" + secrets.token_urlsafe(24),
                "tenant": "admin",
                "roles": ["admin"],
            },
            {"name": "demo", "token": "berth-demo-" + secrets.token_urlsafe(24), "tenant": "demo", "roles": ["member"]},
        ]
    }
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    # O_CREAT's mode is ignored for a file that exists already (a crash's leftover).
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return read_tokens(path)


def read_tokens(path: Path) -> dict[str, str]:
    data = json.loads(path.read_text())
    return {t["name"]: t["token"] for t in data["tokens"]}


def first_admin_token(path: Path) -> str:
    data = json.loads(path.read_text())
    for t in data["tokens"]:
        if ADMIN_ROLE in t.get("roles", []):
            return str(t["token"])
    raise ValueError(f"no admin token in {path}")


class StaticTokenValidator:
    """Validates against the token file; compares digests in constant time."""

    def __init__(self, path: Path) -> None:
        data = json.loads(path.read_text())
        self._by_digest = {
            _digest(t["token"]): Principal(tenant=t["tenant"], roles=frozenset(t.get("roles", [])), user=t["name"])
            for t in data["tokens"]
        }

    async def validate(self, token: str) -> Principal:
        wanted = _digest(token)
        for digest, principal in self._by_digest.items():
            if hmac.compare_digest(digest, wanted):
                return principal
        raise Unauthenticated("invalid token")


# Keystone role -> Berth role. Keystone's default roles imply each other (admin > member
# > reader), so an admin's token lists all three; roles not named here give nothing.
DEFAULT_ROLE_MAP = {"admin": "admin", "member": "member", "reader": "reader", "berth-node": NODE_ROLE}


class ServiceCredentials(Protocol):
    """Where the validator gets its own token (a static one, or clouds.yaml's cloud)."""

    def token(self) -> str: ...
    def invalidate(self) -> None: ...


@dataclass
class StaticServiceToken:
    value: str

    def token(self) -> str:
        return self.value

    def invalidate(self) -> None:
        pass


class CloudServiceCredentials:
    """Berth's own service user from `clouds.yaml` (openstacksdk's standard locations, or
    `clouds_file`): keystoneauth fetches and renews the token."""

    def __init__(self, cloud: str, clouds_file: str | None = None) -> None:
        import openstack.config

        region = openstack.config.OpenStackConfig(config_files=[clouds_file] if clouds_file else None).get_one(
            cloud=cloud
        )
        self.session = region.get_session()
        self.auth_url = str(region.config["auth"]["auth_url"]).rstrip("/").removesuffix("/v3")

    def token(self) -> str:
        return str(self.session.get_token())

    def invalidate(self) -> None:
        self.session.invalidate()


@dataclass
class _Cached:
    principal: Principal
    expires_at: float
    issued_at: float
    user_id: str
    audit_ids: frozenset[str]


def _ts(value: object) -> float:
    """Keystone's ISO 8601 times ("2026-12-03T12:00:00.000000Z") as epoch seconds."""
    text = str(value).replace("Z", "+00:00")
    return _dt.datetime.fromisoformat(text).timestamp()


class KeystoneTokenValidator:
    """Validates a user's token with Keystone (GET /v3/auth/tokens); the project is the tenant.

    A valid token is cached (by digest) until it expires; revocations are honoured by
    asking Keystone for its revocation events (`GET /v3/OS-REVOKE/events?since=`) at most
    every `revocation_poll_s` while cached tokens are in use, and dropping every cached
    token an event may cover (a dropped token is simply validated again).

    Keystone answers 404 for an unknown, expired or revoked user token (the caller's
    fault: Unauthenticated) but 401/403 when it refuses *our* service token, which is a
    deployment fault that every caller would otherwise see as their own bad token:
    Unavailable, like an unreachable or broken Keystone. A 401 first renews our own token
    once (it may have just expired).
    """

    def __init__(
        self,
        url: str,
        service: str | ServiceCredentials,
        client: httpx.AsyncClient | None = None,
        *,
        role_map: dict[str, str] | None = None,
        revocation_poll_s: float = 5.0,
        cache_size: int = 10000,
    ) -> None:
        self._url = url.rstrip("/")
        self._service = StaticServiceToken(service) if isinstance(service, str) else service
        self._client = client or httpx.AsyncClient(timeout=5.0)
        self._roles = DEFAULT_ROLE_MAP if role_map is None else role_map
        self._poll_s = revocation_poll_s
        self._cache_size = cache_size
        self._cache: dict[str, _Cached] = {}
        self._polled_at = time.monotonic()
        self._since = _dt.datetime.now(_dt.UTC)
        self._poll_lock = asyncio.Lock()

    async def validate(self, token: str) -> Principal:
        key = _digest(token)
        cached = self._cache.get(key)
        if cached is not None:
            if time.time() < cached.expires_at:
                await self._poll_revocations()
                cached = self._cache.get(key)
                if cached is not None:
                    return cached.principal
            else:
                self._cache.pop(key, None)
        entry = await self._ask(token)
        if len(self._cache) >= self._cache_size:
            self._cache.pop(next(iter(self._cache)))  # oldest first (dicts keep insertion order)
        self._cache[key] = entry
        return entry.principal

    async def _get(self, path: str, headers: dict[str, str]) -> httpx.Response:
        for attempt in (0, 1):
            service = await asyncio.to_thread(self._service.token)
            try:
                resp = await self._client.get(f"{self._url}{path}", headers={"X-Auth-Token": service, **headers})
            except httpx.HTTPError as exc:
                raise Unavailable(f"keystone unreachable: {type(exc).__name__}") from exc
            if resp.status_code == 401 and attempt == 0:
                self._service.invalidate()
                continue
            if resp.status_code in (401, 403):
                log.error("keystone refused the service token (HTTP %d): check Berth's credentials", resp.status_code)
                raise Unavailable("keystone refused this service's credentials")
            return resp
        raise AssertionError("unreachable")

    async def _ask(self, token: str) -> _Cached:
        resp = await self._get("/v3/auth/tokens", {"X-Subject-Token": token})
        if resp.status_code == 404:
            raise Unauthenticated("invalid token")
        if resp.status_code != 200:
            raise Unavailable(f"keystone answered {resp.status_code}")
        try:
            body = resp.json()["token"]
            project = body.get("project")
            names = {str(r["name"]) for r in body.get("roles", [])}
            user = body.get("user") or {}
            tenant = str(project["id"]) if project else None
            expires = _ts(body["expires_at"]) if "expires_at" in body else time.time() + 60
            issued = _ts(body["issued_at"]) if "issued_at" in body else time.time()
            audit = frozenset(str(a) for a in body.get("audit_ids", []))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise Unavailable(f"keystone answered an unexpected body: {type(exc).__name__}") from exc
        if not tenant:
            raise Unauthenticated("token is not scoped to a project")
        roles = frozenset(self._roles[n] for n in names if n in self._roles)
        principal = Principal(tenant=tenant, roles=roles, user=str(user.get("name", "")))
        return _Cached(principal, expires, issued, str(user.get("id", "")), audit)

    async def _poll_revocations(self) -> None:
        if time.monotonic() - self._polled_at < self._poll_s:
            return
        async with self._poll_lock:
            if time.monotonic() - self._polled_at < self._poll_s:
                return
            since = self._since
            self._since = _dt.datetime.now(_dt.UTC)
            # A second of overlap: an event at the boundary is seen twice rather than never.
            stamp = (since - _dt.timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
            resp = await self._get(f"/v3/OS-REVOKE/events?since={stamp}", {})
            if resp.status_code != 200:
                # Cannot tell what was revoked: trust nothing cached.
                log.warning("keystone revocation events unavailable (HTTP %d): cache dropped", resp.status_code)
                self._cache.clear()
            else:
                for event in resp.json().get("events", []):
                    self._revoke(event)
            self._polled_at = time.monotonic()

    def _revoke(self, event: dict[str, object]) -> None:
        before = _ts(event["issued_before"]) if event.get("issued_before") else float("inf")
        for key, c in list(self._cache.items()):
            if c.issued_at > before:
                continue
            if event.get("audit_id") and event["audit_id"] not in c.audit_ids:
                continue
            if event.get("audit_chain_id") and event["audit_chain_id"] not in c.audit_ids:
                continue
            if event.get("user_id") and event["user_id"] != c.user_id:
                continue
            if event.get("project_id") and event["project_id"] != c.principal.tenant:
                continue
            self._cache.pop(key, None)


def request_token(authorization: str | None, x_auth_token: str | None) -> str:
    """The caller's token: `Authorization: Bearer <t>` or OpenStack's `X-Auth-Token: <t>`;
    both present must agree."""
    if x_auth_token and x_auth_token.strip():
        token = x_auth_token.strip()
        if authorization and not hmac.compare_digest(bearer(authorization), token):
            raise Unauthenticated("Authorization and X-Auth-Token carry different tokens")
        return token
    return bearer(authorization)


def bearer(header: str | None) -> str:
    if not header:
        raise Unauthenticated("missing Authorization (or X-Auth-Token) header")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("Authorization header must be 'Bearer <token>'")
    return token.strip()
