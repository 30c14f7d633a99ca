"""The one runner of persisted, leased, resumable operations (the provisioner's volume and
snapshot operations, the attacher's fences): `policy` is its pure part (who may claim,
when a lease is renewed, what a failed attempt leads to), `store` its database I/O over any
table with the operation columns, `runner` the tasks that tie them together."""

from berth_shared.operations.policy import GiveUp, LeaseTerms, Retry, RetryPolicy, after_failure, may_claim
from berth_shared.operations.runner import Kind, OperationRunner
from berth_shared.operations.store import OperationStore

__all__ = [
    "GiveUp",
    "Kind",
    "LeaseTerms",
    "OperationRunner",
    "OperationStore",
    "Retry",
    "RetryPolicy",
    "after_failure",
    "may_claim",
]
