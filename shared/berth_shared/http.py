"""FastAPI pieces every service uses: problem+json errors, auth dependency, health, metrics."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from berth_shared.auth import Principal, TokenValidator, request_token
from berth_shared.bus.commands import validation_problem
from berth_shared.errors import PROBLEM_BASE, BerthError
from berth_shared.telemetry import Metrics

PROBLEM = "application/problem+json"
# For OpenAPI: the error statuses every /v1 route may answer, all problem+json bodies.
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"description": "problem+json", "content": {PROBLEM: {}}} for code in (400, 401, 403, 404, 409, 422)
}


def problem_response(err: BerthError, instance: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    return JSONResponse(err.to_problem(instance), status_code=err.status, media_type=PROBLEM, headers=headers)


def install_http_basics(
    app: FastAPI,
    *,
    metrics: Metrics,
    ready: Callable[[], Awaitable[dict[str, bool]]],
) -> None:
    """Error handlers, /healthz, /readyz, /metrics and request metrics on `app`."""

    @app.exception_handler(BerthError)
    async def _berth_error(request: Request, exc: BerthError) -> JSONResponse:
        return problem_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"] if p != "body"), "message": e["msg"]} for e in exc.errors()
        ]
        fields = ", ".join(e["field"] or "body" for e in errors)
        body = {
            "type": PROBLEM_BASE + "validation_failed",
            "title": "Invalid request",
            "status": 422,
            "detail": f"invalid request: {fields}",
            "code": "invalid_argument",
            "reason": "validation_failed",
            "instance": request.url.path,
            "errors": errors,
        }
        return JSONResponse(body, status_code=422, media_type=PROBLEM)

    @app.exception_handler(ValidationError)
    async def _model_validation(request: Request, exc: ValidationError) -> JSONResponse:
        return problem_response(validation_problem(exc), request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        body = {
            "type": "about:blank",
            "title": str(exc.detail),
            "status": exc.status_code,
            "detail": str(exc.detail),
            "code": "not_found" if exc.status_code == 404 else "http_error",
            "instance": request.url.path,
        }
        return JSONResponse(body, status_code=exc.status_code, media_type=PROBLEM)

    @app.middleware("http")
    async def _observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.http_requests.labels(metrics.service, request.method, path, str(response.status_code)).inc()
        metrics.http_latency.labels(metrics.service, path).observe(time.perf_counter() - start)
        return response

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        checks = await ready()
        ok = all(checks.values())
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503
        )

    @app.get("/metrics", tags=["health"])
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def current_principal(request: Request) -> Principal:
    """The caller, from `Authorization: Bearer` or `X-Auth-Token`, checked by the service
    runtime's validator."""
    token = request_token(request.headers.get("authorization"), request.headers.get("x-auth-token"))
    validator: TokenValidator = request.app.state.rt.validator
    return await validator.validate(token)


Caller = Annotated[Principal, Depends(current_principal)]
