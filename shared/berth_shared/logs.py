"""Structured JSON logs, with secrets scrubbed before anything is written."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

_SECRET_KEYS = re.compile(r"(token|password|secret|authorization|credential|key)", re.I)
# Secrets inside free text (messages, exception text, string values):
# "Bearer <token>" / "Basic <credentials>", whatever alphabet the token uses;
_BEARER = re.compile(r"\b((?:Bearer|Basic)\s+)[^\s\"',;]+", re.I)
# `password=...`, `"token": "..."`, `X-Auth-Token: ...` (a secret-ish name, then = or :);
_SECRET_PAIR = re.compile(
    r"""(\b[\w\-]*(?:token|passw(?:or)?d|secret|credential)[\w\-]*["']?\s*[:=]\s*["']?)(?!\*\*\*)[^\s"',;&)}\]]+""",
    re.I,
)
# and the password of a URL's user info (`postgresql://user:password@host/db`).
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.\-]*://[^/\s:@]*:)[^/\s@]+(@)", re.I)
_STD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def scrub(text: str) -> str:
    """Mask the secrets free text may carry; see the patterns above."""
    text = _BEARER.sub(r"\1***", text)
    text = _SECRET_PAIR.sub(r"\1***", text)
    return _URL_PASSWORD.sub(r"\1***\2", text)


def redact(value: Any, key: str = "") -> Any:
    """Mask every value under a secret-ish key, and secrets inside strings, recursively."""
    if key and _SECRET_KEYS.search(key) and not key.endswith("_id"):
        return "***"
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return scrub(value)
    return value


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": scrub(record.getMessage()),
        }
        for k, v in record.__dict__.items():
            if k not in _STD_ATTRS and not k.startswith("_"):
                entry[k] = redact(v, k)
        if record.exc_info:
            # Exception text quotes whatever failed: connection URLs, headers, arguments.
            entry["exc"] = scrub(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = scrub(self.formatStack(record.stack_info))
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """The human-readable format (`BERTH_LOG_JSON=false`), scrubbed the same way."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def configure_logging(service: str, level: str = "INFO", as_json: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if as_json:
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(TextFormatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's access log repeats what our middleware already records.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
