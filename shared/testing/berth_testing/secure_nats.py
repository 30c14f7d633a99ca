"""A nats-server with Berth's accounts and permissions, and clients that connect to it as
one identity and record what the server refused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import nats
from nats.aio.client import Client

from berth_shared.natsauth import AuthMaterial, creds_inbox_prefix
from berth_shared.natsserver import NatsServer
from berth_testing.polling import eventually


@dataclass
class Refusals:
    """The server's permission errors seen by one connection."""

    seen: list[str] = field(default_factory=list)

    async def wait_for(self, subject: str) -> None:
        """Until the server has refused something on `subject` (it says so asynchronously)."""
        quoted = f'"{subject}"'.lower()  # nats-py lower-cases the server's error text
        await eventually(lambda: any(quoted in s.lower() for s in self.seen), within=5, what=f"refusal of {subject}")


@dataclass
class SecureNats:
    server: NatsServer
    auth: AuthMaterial

    @asynccontextmanager
    async def connect(self, creds: Path | str) -> AsyncIterator[tuple[Client, Refusals]]:
        """A connection with these credentials (an identity's name, or a .creds path)."""
        path = self.auth.creds(creds) if isinstance(creds, str) else creds
        refusals = Refusals()

        async def on_error(exc: Exception) -> None:
            if "permissions violation" in str(exc).lower():
                refusals.seen.append(str(exc))

        nc = await nats.connect(
            self.server.url,
            user_credentials=str(path),
            inbox_prefix=creds_inbox_prefix(path),
            error_cb=on_error,
            allow_reconnect=False,
        )
        try:
            yield nc, refusals
        finally:
            await nc.close()
