"""Berth's error codes to gRPC status codes, one to one (the codes share CSI's vocabulary)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from berth_shared.errors import BerthError, InvalidArgument
from berth_shared.telemetry import tracer

log = logging.getLogger(__name__)

STATUS_BY_CODE: dict[str, grpc.StatusCode] = {
    "invalid_argument": grpc.StatusCode.INVALID_ARGUMENT,
    "unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
    "permission_denied": grpc.StatusCode.PERMISSION_DENIED,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "already_exists": grpc.StatusCode.ALREADY_EXISTS,
    "failed_precondition": grpc.StatusCode.FAILED_PRECONDITION,
    "aborted": grpc.StatusCode.ABORTED,
    "out_of_range": grpc.StatusCode.OUT_OF_RANGE,
    "resource_exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "deadline_exceeded": grpc.StatusCode.DEADLINE_EXCEEDED,
    "internal": grpc.StatusCode.INTERNAL,
}


def status_of(err: BerthError) -> grpc.StatusCode:
    return STATUS_BY_CODE.get(err.code, grpc.StatusCode.INTERNAL)


def required(value: object, field: str) -> None:
    """INVALID_ARGUMENT naming the field when a required CSI field is empty."""
    if not value:
        raise InvalidArgument(f"{field} is required", reason="missing_field", field=field)


Fn = TypeVar("Fn", bound=Callable[..., Awaitable[Any]])


def rpc(fn: Fn) -> Fn:
    """Wrap a servicer method: one span per call, typed errors become their gRPC status."""
    name = fn.__name__

    @functools.wraps(fn)
    async def call(self: Any, request: Any, context: Any) -> Any:
        with tracer("berth.csi").start_as_current_span(f"csi {name}"):
            try:
                return await fn(self, request, context)
            except BerthError as err:
                if err.code == "internal":
                    log.error("%s failed: %s", name, err.detail)
                await context.abort(status_of(err), err.detail)
            except Exception:
                log.exception("%s failed", name)
                await context.abort(grpc.StatusCode.INTERNAL, f"{name} failed unexpectedly; see the adapter's log")

    return call  # type: ignore[return-value]
