"""The one error model: typed errors that map to HTTP problem+json and to bus error replies.

Codes follow the gRPC/CSI vocabulary so that the CSI adapter can map them one to one.
"""

from __future__ import annotations

from typing import Any, ClassVar

PROBLEM_BASE = "https://berth.dev/problems/"


class BerthError(Exception):
    code: ClassVar[str] = "internal"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str, *, reason: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        # `reason` narrows the code (e.g. quota_exceeded under resource_exhausted).
        self.reason = reason or self.code
        self.extra = extra

    def to_problem(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": PROBLEM_BASE + self.reason,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
            "reason": self.reason,
        }
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body


class InvalidArgument(BerthError):
    code = "invalid_argument"
    status = 400
    title = "Invalid argument"


class Unauthenticated(BerthError):
    code = "unauthenticated"
    status = 401
    title = "Authentication required"


class PermissionDenied(BerthError):
    code = "permission_denied"
    status = 403
    title = "Permission denied"


class NotFound(BerthError):
    code = "not_found"
    status = 404
    title = "Not found"


class AlreadyExists(BerthError):
    code = "already_exists"
    status = 409
    title = "Already exists with a different specification"


class FailedPrecondition(BerthError):
    code = "failed_precondition"
    status = 409
    title = "Failed precondition"


class Aborted(BerthError):
    """An operation on the same resource is in progress; retry later."""

    code = "aborted"
    status = 409
    title = "Operation in progress"


class OutOfRange(BerthError):
    code = "out_of_range"
    status = 400
    title = "Out of range"


class ResourceExhausted(BerthError):
    code = "resource_exhausted"
    status = 409
    title = "Resource exhausted"


class Unavailable(BerthError):
    code = "unavailable"
    status = 503
    title = "Service unavailable"


class DeadlineExceeded(BerthError):
    code = "deadline_exceeded"
    status = 504
    title = "Deadline exceeded"


class Internal(BerthError):
    pass


ERRORS_BY_CODE: dict[str, type[BerthError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        Unauthenticated,
        PermissionDenied,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
        Internal,
    )
}

_PROBLEM_KEYS = {"type", "title", "status", "detail", "code", "reason", "instance"}


def error_from_problem(problem: dict[str, Any]) -> BerthError:
    """Rebuild a typed error from a problem body (bus replies, HTTP clients)."""
    cls = ERRORS_BY_CODE.get(str(problem.get("code")), Internal)
    extra = {k: v for k, v in problem.items() if k not in _PROBLEM_KEYS}
    return cls(str(problem.get("detail", "")), reason=problem.get("reason"), **extra)
