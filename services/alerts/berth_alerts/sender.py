"""One HTTP request to a messenger, and what its answer means for the delivery."""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from typing import Literal

import httpx

Result = Literal["ok", "throttled", "too_large", "retry", "rejected"]
# Messenger answers worth retrying; any other 4xx is the request's fault (bad URL, token).
RETRY_STATUSES = {408, 409, 425, 429, 500, 502, 503, 504}


@dataclass
class Outcome:
    result: Result
    detail: str = ""
    retry_after_s: float | None = None


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After`: seconds, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


def classify(status: int, headers: httpx.Headers, text: str) -> Outcome:
    if 200 <= status < 300:
        return Outcome("ok")
    detail = f"HTTP {status}: {text[:300]}".strip()
    if status == 413:
        return Outcome("too_large", detail)
    if status in (429, 503):
        after = retry_after(headers.get("retry-after"))
        if status == 429 or after is not None:
            return Outcome("throttled", detail, after)
    if status in RETRY_STATUSES or status >= 500:
        return Outcome("retry", detail)
    return Outcome("rejected", detail)


async def send(client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str], timeout: float) -> Outcome:
    try:
        resp = await client.post(url, content=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        return Outcome("retry", f"{type(exc).__name__}: {exc}"[:300])
    return classify(resp.status_code, resp.headers, resp.text)


def backoff(attempts: int, initial: float, maximum: float) -> float:
    return float(min(maximum, initial * 2 ** max(0, attempts - 1)))
