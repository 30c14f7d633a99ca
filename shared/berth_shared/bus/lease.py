"""A lease in a NATS KV bucket, so a job that must run once runs on one replica.

Each lease's value carries its holder and when it expires: a holder that stopped renewing
(crashed, partitioned) is replaced once that time passed. Every write is a compare-and-set
on the revision read, so two replicas never both believe they hold it. The expiry is in the
value, not in the bucket's TTL, because one bucket serves leases of different terms (the
attacher's 10 s, the watcher's, the alerts' 120 s) and a bucket's TTL is whatever its first
creator chose: with a 120 s bucket, a watcher standby waited 120 s to take over.
"""

from __future__ import annotations

import logging
import time

from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
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
                # No bucket TTL: each value says when it expires (see above).
                self._kv = await self.bus.js.create_key_value(bucket=BUCKET, history=1)
        return self._kv

    @property
    def held(self) -> bool:
        return self._revision is not None

    async def tick(self) -> bool:
        """Acquire or renew; call more often than the TTL. True while this replica holds it."""
        try:
            kv = await self._bucket()
            value = encode(self.holder, time.time() + self.ttl_s)
            if self._revision is not None:
                self._revision = await kv.update(self.key, value, last=self._revision)
            else:
                self._revision = await self._take(kv, value)
                if self._revision is not None:
                    log.info("lease %s acquired by %s", self.key, self.holder)
        except KeyWrongLastSequenceError:
            if self._revision is not None:
                log.warning("lease %s lost by %s", self.key, self.holder)
            self._revision = None
        except Exception as exc:  # NATS down: we cannot prove we hold it, so we do not
            log.warning("lease %s: %s", self.key, exc)
            self._revision = None
        return self._revision is not None

    async def _take(self, kv: KeyValue, value: bytes) -> int | None:
        """The lease if nobody holds it or its holder's term is over (None otherwise)."""
        try:
            return await kv.create(self.key, value)
        except KeyWrongLastSequenceError:
            pass  # held, or was: whose, and until when?
        try:
            entry = await kv.get(self.key)
        except KeyNotFoundError:
            return None  # released in between: the next tick creates it
        if entry.value is None or not expired(entry.value, time.time()):
            return None
        return await kv.update(self.key, value, last=entry.revision)

    async def release(self) -> None:
        if self._revision is not None and self._kv is not None:
            try:
                await self._kv.delete(self.key, last=self._revision)
            except Exception as exc:
                log.debug("lease %s release: %s", self.key, exc)
        self._revision = None


def encode(holder: str, expires_at: float) -> bytes:
    return f"{holder}\n{expires_at:.3f}".encode()


def expired(value: bytes, now: float) -> bool:
    """Whether a lease value's term is over. A value without one (written before terms were
    kept in the value) is held until the bucket's own TTL removes it."""
    _, _, expires = value.decode(errors="replace").partition("\n")
    try:
        return float(expires) < now
    except ValueError:
        return False
