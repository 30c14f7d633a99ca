"""asyncio helpers the services' background loops share."""

from __future__ import annotations

import asyncio


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
