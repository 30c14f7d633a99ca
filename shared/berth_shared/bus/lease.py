"""A lease in a NATS KV bucket, so a job that must run once runs on one replica.

The bucket's TTL expires a holder that stopped renewing (crashed, partitioned); renewal is
a compare-and-set on the revision it holds, so two replicas never both believe they hold it.
"""

from __future__ import annotations

import logging

from nats.js.errors import BucketNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from berth_shared.bus.client import Bus

log = logging.getLogger(__name__)
BUCKET = "berth_leases"


class Lease:
    def __init__(self, bus: Bus, key: str, holder: str, ttl_s: float = 10.0) -> None:
        self.bus = bus
        self.key = key
        self.holder = holder
        self.ttl_s = ttl_s
        self._kv: KeyValue | None = None
        self._revision: int | None = None

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            try:
                self._kv = await self.bus.js.key_value(BUCKET)
            except (BucketNotFoundError, NotFoundError):
                self._kv = await self.bus.js.create_key_value(bucket=BUCKET, ttl=self.ttl_s, history=1)
        return self._kv

    @property
    def held(self) -> bool:
        return self._revision is not None

    async def tick(self) -> bool:
        """Acquire or renew; call more often than the TTL. True while this replica holds it."""
        try:
            kv = await self._bucket()
            if self._revision is not None:
                self._revision = await kv.update(self.key, self.holder.encode(), last=self._revision)
            else:
                self._revision = await kv.create(self.key, self.holder.encode())
                log.info("lease %s acquired by %s", self.key, self.holder)
        except KeyWrongLastSequenceError:
            if self._revision is not None:
                log.warning("lease %s lost by %s", self.key, self.holder)
            self._revision = None
        except Exception as exc:  # NATS down: we cannot prove we hold it, so we do not
            log.warning("lease %s: %s", self.key, exc)
            self._revision = None
        return self._revision is not None

    async def release(self) -> None:
        if self._revision is not None and self._kv is not None:
            try:
                await self._kv.delete(self.key, last=self._revision)
            except Exception as exc:
                log.debug("lease %s release: %s", self.key, exc)
        self._revision = None
