"""Tenants' token files, apps run in-process, and the PostgreSQL schemas a test leaves."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine


@dataclass
class Tenants:
    """A token file with an admin and two tenants unique to one test."""

    path: Path
    admin: str
    a: str
    b: str
    tenant_a: str
    tenant_b: str


def write_tenants(directory: Path) -> Tenants:
    uid = uuid.uuid4().hex[:8]
    ta, tb = f"ta{uid}", f"tb{uid}"
    tokens = {"admin": f"adm-{uid}", ta: f"tok-a-{uid}", tb: f"tok-b-{uid}"}
    data = {
        "tokens": [
            {"name": "admin", "token": tokens["admin"], "tenant": f"admin{uid}", "roles": ["admin"]},
            {"name": ta, "token": tokens[ta], "tenant": ta, "roles": ["member"]},
            {"name": tb, "token": tokens[tb], "tenant": tb, "roles": ["member"]},
        ]
    }
    path = directory / "tokens.json"
    path.write_text(json.dumps(data))
    return Tenants(path, tokens["admin"], tokens[ta], tokens[tb], ta, tb)


def drop_schemas(db_url: str, schemas: list[str]) -> None:
    """Drop the PostgreSQL schemas a test made (runs its own event loop: call from teardown)."""

    async def drop() -> None:
        engine = create_async_engine(db_url.replace("postgresql://", "postgresql+asyncpg://", 1))
        async with engine.begin() as conn:
            for schema in schemas:
                await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        await engine.dispose()

    asyncio.run(drop())


@asynccontextmanager
async def running(app: FastAPI, token: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and give an HTTP client talking to it in-process."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(transport=transport, base_url="http://berth.test", headers=headers) as client:
            yield client
