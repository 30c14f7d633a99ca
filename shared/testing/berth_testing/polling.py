"""The one way tests wait for a condition: poll it, never sleep a fixed time."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")


@overload
async def eventually(
    probe: Callable[[], Awaitable[T]],
    ok: Callable[[T], object] | None = None,
    *,
    within: float = 15.0,
    every: float = 0.02,
    what: str = "",
) -> T: ...


@overload
async def eventually(
    probe: Callable[[], T],
    ok: Callable[[T], object] | None = None,
    *,
    within: float = 15.0,
    every: float = 0.02,
    what: str = "",
) -> T: ...


async def eventually(
    probe: Callable[[], Any],
    ok: Callable[[Any], object] | None = None,
    *,
    within: float = 15.0,
    every: float = 0.02,
    what: str = "",
) -> Any:
    """Call `probe` (sync or async) every `every` seconds until its result is truthy, or
    until `ok(result)` holds when `ok` is given; return that result. Fails with an
    AssertionError naming `what` and the last result after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = probe()
        if inspect.isawaitable(result):
            result = await result
        if ok(result) if ok is not None else result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what or probe!r}; last: {result!r}")
        await asyncio.sleep(every)
