"""The provisioner's persisted operations: every backend-touching change is a row of the
operations table, run by the shared runner (berth_shared.operations) so that a restarted
or surviving replica resumes it. Steps are idempotent and completion is a conditional
UPDATE, so running an operation twice changes nothing the second time."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from berth_provisioner import tables as t
from berth_shared.backends import BackendError
from berth_shared.db import Database
from berth_shared.errors import DeadlineExceeded
from berth_shared.ids import new_id
from berth_shared.operations import OperationRunner, RetryPolicy
from berth_shared.telemetry import Metrics

# The backend may be briefly out of reach: tried again; any other error gives up at once.
RETRY = RetryPolicy(max_attempts=5, transient=(BackendError, DeadlineExceeded, OSError))


def operation_runner(db: Database, owner: str, lease_s: float, metrics: Metrics | None = None) -> OperationRunner:
    return OperationRunner(db, t.operations, owner, timedelta(seconds=lease_s), RETRY, metrics=metrics)


def new_operation(
    runner: OperationRunner, kind: str, resource_id: str, tenant: str, params: dict[str, Any]
) -> dict[str, Any]:
    """Row values for a new operation of the provisioner, owned by this replica from the start."""
    return runner.values(new_id("op"), kind=kind, resource_id=resource_id, tenant=tenant, params=params)
