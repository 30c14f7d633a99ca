"""Serve commands with the NATS services framework (`$SRV.*` discovery and stats for free).

Every endpoint is `berth.<service>.<noun>.<verb>`, queue-grouped so any replica answers.
The framework awaits handlers one at a time per endpoint, so each request is handed to
its own task (bounded) to keep a slow backend call from stalling the endpoint.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service
from opentelemetry import context as otel_context
from pydantic import BaseModel, ValidationError

from berth_shared.auth import Principal, TokenValidator
from berth_shared.bus.client import Bus, CommandHeaders
from berth_shared.errors import BerthError, Internal, InvalidArgument, Unauthenticated
from berth_shared.telemetry import Metrics, extract_context, tracer

log = logging.getLogger(__name__)
P = TypeVar("P", bound=BaseModel)


class CommandContext:
    def __init__(self, principal: Principal, headers: CommandHeaders, default_timeout: float) -> None:
        self.principal = principal
        self.idempotency_key = headers.idempotency_key
        self._headers = headers
        self._default_timeout = default_timeout

    def remaining_s(self) -> float:
        return self._headers.remaining_s(self._default_timeout)


Handler = Callable[[P, CommandContext], Awaitable[BaseModel | dict[str, Any] | None]]


class _Endpoint(Generic[P]):
    def __init__(self, subject: str, model: type[P], handler: Handler[P]) -> None:
        self.subject = subject
        self.model = model
        self.handler = handler


def validation_problem(exc: ValidationError) -> InvalidArgument:
    errors = [
        {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
        for e in exc.errors(include_url=False, include_input=False)
    ]
    fields = ", ".join(e["field"] or "body" for e in errors)
    return InvalidArgument(f"invalid request: {fields}", reason="validation_failed", errors=errors)


class CommandServer:
    def __init__(
        self,
        bus: Bus,
        validator: TokenValidator,
        metrics: Metrics,
        *,
        default_timeout: float = 10.0,
        max_in_flight: int = 256,
    ) -> None:
        self.bus = bus
        self.validator = validator
        self.metrics = metrics
        self.default_timeout = default_timeout
        self._endpoints: list[_Endpoint[Any]] = []
        self._service: Service | None = None
        self._slots = asyncio.Semaphore(max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._tracer = tracer("berth.bus")  # once: get_tracer makes a new one per call

    def command(self, subject: str, model: type[P]) -> Callable[[Handler[P]], Handler[P]]:
        def register(fn: Handler[P]) -> Handler[P]:
            self._endpoints.append(_Endpoint(subject, model, fn))
            return fn

        return register

    async def start(self, version: str = "0.1.0") -> None:
        service = self.bus.service
        self._service = await add_service(
            self.bus.nc,
            name=f"berth-{service}",
            version=version,
            description=f"Berth {service} commands",
            queue_group=f"berth-{service}",
        )
        for ep in self._endpoints:
            await self._service.add_endpoint(
                name=ep.subject.replace(".", "-"),
                subject=ep.subject,
                handler=self._dispatcher(ep),
            )
        # Once started, a request from any other connection reaches this one: the server
        # has the subscriptions (without the flush, a request sent at once may find none).
        await self.bus.nc.flush()

    async def stop(self) -> None:
        if self._service is not None:
            await self._service.stop()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _dispatcher(self, ep: _Endpoint[Any]) -> Callable[[Request], Awaitable[None]]:
        async def dispatch(req: Request) -> None:
            await self._slots.acquire()
            task = asyncio.create_task(self._handle(ep, req))
            self._tasks.add(task)
            task.add_done_callback(self._done)

        return dispatch

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _handle(self, ep: _Endpoint[Any], req: Request) -> None:
        start = time.perf_counter()
        headers = req.headers or {}
        token = otel_context.attach(extract_context(headers))
        outcome = "ok"
        try:
            with self._tracer.start_as_current_span(f"command {ep.subject}"):
                try:
                    result = await self._run(ep, req, headers)
                    await req.respond(_encode(result))
                except BerthError as err:
                    outcome = err.code
                    await req.respond_error(
                        str(err.status), err.detail, data=json.dumps(err.to_problem(ep.subject)).encode()
                    )
        except Exception:
            outcome = "internal"
            log.exception("command failed", extra={"subject": ep.subject})
            internal = Internal("internal error")
            try:
                await req.respond_error(
                    "500", internal.detail, data=json.dumps(internal.to_problem(ep.subject)).encode()
                )
            except Exception:
                log.warning("could not reply to %s", ep.subject)
        finally:
            otel_context.detach(token)
            self.metrics.commands.labels(self.bus.service, ep.subject, outcome).inc()
            self.metrics.command_latency.labels(self.bus.service, ep.subject).observe(time.perf_counter() - start)

    async def _run(self, ep: _Endpoint[Any], req: Request, headers: dict[str, str]) -> Any:
        parsed = CommandHeaders.parse(headers)
        if not parsed.token:
            raise Unauthenticated("command carries no Authorization header")
        principal = await self.validator.validate(parsed.token)
        try:
            payload = ep.model.model_validate_json(req.data or b"{}")
        except ValidationError as exc:
            raise validation_problem(exc) from exc
        ctx = CommandContext(principal, parsed, self.default_timeout)
        return await ep.handler(payload, ctx)


def _encode(result: BaseModel | dict[str, Any] | None) -> bytes:
    if result is None:
        return b"{}"
    if isinstance(result, BaseModel):
        return result.model_dump_json().encode()
    return json.dumps(result, default=str).encode()
