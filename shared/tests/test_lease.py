"""The NATS KV lease on a real nats-server: one holder at a time, taken over once the
holder's own term is over, whatever term the bucket's first creator had."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from berth_shared.bus import Bus, Lease
from berth_shared.natsserver import NatsServer
from berth_testing import eventually


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    b = await Bus.connect(nats_server.url, "test-lease")
    yield b
    await b.close()


async def test_a_standby_takes_over_after_the_holders_term_not_the_buckets(bus: Bus) -> None:
    # A long lease in the bucket first (the alerts' dashboard sync holds one for 120 s):
    # when the bucket's TTL was the term, every lease in it had that term.
    long = Lease(bus, f"long-{uuid.uuid4().hex}", "alerts-1", ttl_s=120.0)
    assert await long.tick()
    key = f"leader-{uuid.uuid4().hex}"
    one, two = Lease(bus, key, "one", ttl_s=1.0), Lease(bus, key, "two", ttl_s=1.0)
    assert await one.tick() and not await two.tick()

    # Renewed more often than its term, the holder keeps it past that term (time must
    # pass here: the renewals are the point).
    for _ in range(4):
        await asyncio.sleep(0.4)
        assert await one.tick() and not await two.tick()
    # The holder stops renewing (killed): the standby has it once the 1 s term is over.
    await eventually(two.tick, within=5.0, every=0.1, what="the standby takes over")
    assert not await one.tick(), "the old holder learns it lost the lease"
    assert not await one.tick() and await two.tick()
    await two.release()
    assert await one.tick(), "released: free at once"
    await one.release()
    await long.release()
