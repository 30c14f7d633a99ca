"""asyncio helpers the services' background loops share."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


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


class SharedRead(Generic[T]):
    """Callers asking at once share one read, and every caller gets a read that started
    after it asked (never one already under way, which might miss what was committed just
    before the call): the callers that arrive while a read runs share the next one.

    For a lookup that many concurrent requests make and whose answer none may get stale
    (the provisioner's clusters before each placement): under load it runs once per
    round trip instead of once per request."""

    def __init__(self, read: Callable[[], Awaitable[T]], *, name: str = "shared-read") -> None:
        self._read = read
        self._name = name
        self._next: asyncio.Future[T] | None = None
        self._reader: asyncio.Task[None] | None = None

    async def get(self) -> T:
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        wanted = self._next
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._run(), name=self._name)
        # Shielded: one caller cancelled must not cancel the read the others wait for.
        return await asyncio.shield(wanted)

    async def _run(self) -> None:
        while self._next is not None:
            current, self._next = self._next, None
            try:
                current.set_result(await self._read())
            except BaseException as exc:
                current.set_exception(exc if isinstance(exc, Exception) else ConnectionAbortedError(repr(exc)))
                if not isinstance(exc, Exception):
                    if self._next is not None:
                        self._next.set_exception(ConnectionAbortedError(repr(exc)))
                        self._next = None
                    raise
