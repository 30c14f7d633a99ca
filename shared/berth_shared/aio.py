"""asyncio helpers the services' background loops share."""

from __future__ import annotations

import asyncio
from typing import Any


async def wait_event(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait for `event` at most `timeout_s`; True if it was set.

    Not asyncio.wait_for: on Python 3.11, when the wait ends just as the task is cancelled,
    wait_for returns (or raises TimeoutError) instead of raising CancelledError, and a loop
    that sleeps this way never stops. asyncio.timeout keeps the cancellation."""
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def stop_tasks(*tasks: asyncio.Task[Any], every_s: float = 1.0) -> None:
    """Cancel `tasks` and wait until every one ended, cancelling again those still running.

    Once is not enough on Python 3.11: a cancel that lands inside a library's own
    asyncio.wait_for (nats-py's requests, asyncpg's timeouts) can come back as a timeout,
    which a background loop survives, and a stop that waited for it would wait forever."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=every_s)
    for task in tasks:  # retrieved, so that none is reported as never retrieved
        if not task.cancelled():
            task.exception()
