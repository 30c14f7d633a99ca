"""NATS connection with reconnect, command requests with typed errors, JetStream stream setup."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import nats
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from nats.js.errors import NotFoundError
from pydantic import BaseModel

from berth_shared.errors import DeadlineExceeded, Unavailable, error_from_problem
from berth_shared.telemetry import inject_headers

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)

H_AUTH = "Authorization"
H_IDEMPOTENCY = "Berth-Idempotency-Key"
H_DEADLINE = "Berth-Deadline"  # unix epoch milliseconds
H_ERROR_CODE = "Nats-Service-Error-Code"


@dataclass(frozen=True)
class CommandHeaders:
    token: str | None
    idempotency_key: str | None
    deadline_ms: int | None

    @classmethod
    def parse(cls, headers: dict[str, str] | None) -> CommandHeaders:
        h = headers or {}
        auth = h.get(H_AUTH)
        token = auth.partition(" ")[2].strip() if auth and auth.lower().startswith("bearer ") else None
        deadline = h.get(H_DEADLINE)
        return cls(
            token=token,
            idempotency_key=h.get(H_IDEMPOTENCY),
            deadline_ms=int(deadline) if deadline and deadline.isdigit() else None,
        )

    def remaining_s(self, default: float) -> float:
        if self.deadline_ms is None:
            return default
        return max(0.0, self.deadline_ms / 1000 - time.time())


class Bus:
    def __init__(self, nc: Client, service: str) -> None:
        self.nc = nc
        self.service = service
        self.js: JetStreamContext = nc.jetstream()

    @classmethod
    async def connect(cls, url: str, service: str, *, creds: Path | None = None, **kwargs: Any) -> Bus:
        """Connect, reconnecting forever. `creds`: a .creds file; the inbox prefix is then
        the user's own (`_INBOX.<user name>`), the only one its permissions let it read."""
        if creds is not None:
            from berth_shared.natsauth.contract import creds_inbox_prefix  # natsauth imports this module

            kwargs.setdefault("user_credentials", str(creds))
            kwargs.setdefault("inbox_prefix", creds_inbox_prefix(creds))

        async def on_disconnect() -> None:
            log.warning("nats disconnected")

        async def on_reconnect() -> None:
            log.info("nats reconnected")

        async def on_error(exc: Exception) -> None:
            log.warning("nats error: %s", exc)

        nc = await nats.connect(
            url,
            name=f"berth-{service}",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            # Keep publishing into the client buffer while NATS restarts.
            pending_size=64 * 1024 * 1024,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
            error_cb=on_error,
            **kwargs,
        )
        return cls(nc, service)

    async def close(self) -> None:
        if not self.nc.is_closed:
            await self.nc.drain()

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)

    async def ensure_events_stream(self, name: str, replicas: int = 1) -> None:
        config = StreamConfig(
            name=name,
            subjects=["berth.events.>"],
            # Long enough to cover an outbox relay retrying after a crash.
            duplicate_window=600.0,
            num_replicas=replicas,
        )
        try:
            await self.js.stream_info(name)
            await self.js.update_stream(config)
        except NotFoundError:
            await self.js.add_stream(config)

    async def request(
        self,
        subject: str,
        payload: BaseModel | dict[str, Any] | None,
        *,
        token: str | None = None,
        idempotency_key: str | None = None,
        timeout: float = 10.0,
    ) -> dict[str, Any]:
        """Send a command; return the reply body or raise the typed error it carries."""
        headers: dict[str, str] = {H_DEADLINE: str(int((time.time() + timeout) * 1000))}
        if token:
            headers[H_AUTH] = f"Bearer {token}"
        if idempotency_key:
            headers[H_IDEMPOTENCY] = idempotency_key
        inject_headers(headers)
        if isinstance(payload, BaseModel):
            body = payload.model_dump_json().encode()
        else:
            body = json.dumps(payload or {}).encode()
        try:
            msg = await self.nc.request(subject, body, timeout=timeout, headers=headers)
        except NoRespondersError as exc:
            raise Unavailable(f"no service answers {subject}") from exc
        except NatsTimeout as exc:
            raise DeadlineExceeded(f"no reply on {subject} within {timeout}s") from exc
        data: dict[str, Any] = json.loads(msg.data) if msg.data else {}
        if msg.headers and msg.headers.get(H_ERROR_CODE):
            raise error_from_problem(data)
        return data

    async def request_model(
        self, subject: str, payload: BaseModel | dict[str, Any] | None, model: type[M], **kw: Any
    ) -> M:
        return model.model_validate(await self.request(subject, payload, **kw))
