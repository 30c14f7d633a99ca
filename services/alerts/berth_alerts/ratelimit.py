"""A token bucket per receiver, which a messenger's Retry-After can also hold shut."""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()
        self.blocked_until = 0.0
        self._lock = asyncio.Lock()

    def hold(self, seconds: float) -> None:
        """The messenger said to wait (429 + Retry-After): nobody sends to it before then."""
        self.blocked_until = max(self.blocked_until, time.monotonic() + seconds)

    def wait_time(self) -> float:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if now < self.blocked_until:
            return self.blocked_until - now
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

    def available(self) -> int:
        """Messages it lets through now, without waiting."""
        return int(self.tokens) if self.wait_time() == 0 else 0

    async def acquire(self) -> None:
        async with self._lock:  # FIFO: waiters take tokens in arrival order
            delay = self.wait_time()
            while delay > 0:  # the wait is computed from the rate, nothing signals it
                await asyncio.sleep(delay)
                delay = self.wait_time()
            self.tokens -= 1
