"""The pure part of the operation runner: who may claim a leased operation, how often a
running one's lease is renewed and pending ones are swept up, and what a failed attempt
leads to (another attempt after a delay, or giving up). No I/O, no clock of its own."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from berth_shared.errors import BerthError


@dataclass(frozen=True)
class LeaseTerms:
    """How long a claim holds. The owner renews it while a step runs, so its length bounds
    only how long a crashed owner's operation waits for another replica, never how long a
    step may take."""

    duration: timedelta

    def until(self, at: datetime) -> datetime:
        return at + self.duration

    @property
    def renew_every_s(self) -> float:
        # Three renewals per lease: one slow or failed renewal still leaves two before it lapses.
        return self.duration.total_seconds() / 3

    @property
    def sweep_every_s(self) -> float:
        """How often pending operations are looked for: well within a lease, so a crashed
        owner's operation is taken over soon after its lease lapses, but no busier than
        needed (at most every 5 s, at least every 0.1 s)."""
        return min(5.0, max(0.1, self.duration.total_seconds() / 4))


def may_claim(owner: str | None, lease_until: datetime | None, me: str, at: datetime) -> bool:
    """Whether `me` may take a pending operation at `at` (the store's conditional UPDATE
    says the same in SQL): it is its own (a restarted replica reclaims at once), it has no
    lease, or its owner's lease ran out."""
    return owner == me or lease_until is None or lease_until < at


@dataclass(frozen=True)
class Retry:
    delay_s: float


@dataclass(frozen=True)
class GiveUp:
    why: str


@dataclass(frozen=True)
class RetryPolicy:
    """`transient` errors are tried again, up to `max_attempts` claims in all (None: for
    ever, as a fence must: a node is never released without a completed one); any other
    error gives up at once."""

    max_attempts: int | None
    transient: tuple[type[BaseException], ...]
    first_delay_s: float = 0.2
    max_delay_s: float = 5.0

    def backoff_s(self, attempts: int) -> float:
        """Doubling from `first_delay_s`, capped: the delay after the `attempts`-th attempt."""
        return min(self.first_delay_s * (1 << max(0, min(attempts, 32) - 1)), self.max_delay_s)


def after_failure(policy: RetryPolicy, attempts: int, exc: BaseException) -> Retry | GiveUp:
    """What follows the failure `exc` of an operation's `attempts`-th attempt."""
    exhausted = policy.max_attempts is not None and attempts >= policy.max_attempts
    if isinstance(exc, policy.transient) and not exhausted:
        return Retry(policy.backoff_s(attempts))
    return GiveUp(describe(exc))


def describe(exc: BaseException) -> str:
    """The reason recorded with an operation that gave up."""
    return exc.detail if isinstance(exc, BerthError) else f"{type(exc).__name__}: {exc}"
