"""Authentication behind one interface: a static token file (embedded default) or Keystone."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx

from berth_shared.errors import PermissionDenied, Unauthenticated, Unavailable

log = logging.getLogger(__name__)

ADMIN_ROLE = "admin"
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


class KeystoneTokenValidator:
    """Validates a user's token with Keystone (GET /v3/auth/tokens); the project is the tenant.

    Keystone answers 404 for an unknown or expired user token (the caller's fault:
    Unauthenticated) but 401/403 when it refuses *our* service token, which is a
    deployment fault that every caller would otherwise see as their own bad token:
    Unavailable, like an unreachable or broken Keystone.
    """

    def __init__(self, url: str, service_token: str, client: httpx.AsyncClient | None = None) -> None:
        self._url = url.rstrip("/")
        self._service_token = service_token
        self._client = client or httpx.AsyncClient(timeout=5.0)

    async def validate(self, token: str) -> Principal:
        try:
            resp = await self._client.get(
                f"{self._url}/v3/auth/tokens",
                headers={"X-Auth-Token": self._service_token, "X-Subject-Token": token},
            )
        except httpx.HTTPError as exc:
            raise Unavailable(f"keystone unreachable: {type(exc).__name__}") from exc
        if resp.status_code == 404:
            raise Unauthenticated("invalid token")
        if resp.status_code in (401, 403):
            log.error("keystone refused the service token (HTTP %d): check keystone_service_token", resp.status_code)
            raise Unavailable("keystone refused this service's credentials")
        if resp.status_code != 200:
            raise Unavailable(f"keystone answered {resp.status_code}")
        try:
            body = resp.json()["token"]
            project = body.get("project")
            roles = frozenset(str(r["name"]) for r in body.get("roles", []))
            user = str((body.get("user") or {}).get("name", ""))
            tenant = str(project["id"]) if project else None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise Unavailable(f"keystone answered an unexpected body: {type(exc).__name__}") from exc
        if not tenant:
            raise Unauthenticated("token is not scoped to a project")
        return Principal(tenant=tenant, roles=roles, user=user)


def bearer(header: str | None) -> str:
    if not header:
        raise Unauthenticated("missing Authorization header")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("Authorization header must be 'Bearer <token>'")
    return token.strip()
