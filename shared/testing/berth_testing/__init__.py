"""Berth's test-only library: the pytest plugin (`berth_testing.plugin`, loaded by the root
conftest.py), the one polling helper, tenants and in-process apps, host capability checks.
The real Ceph fixture is `berth_testing.ceph`; the single-writer checker and node take-over
used by the cross-service tests and the failover benchmark are `berth_testing.single_writer`;
lifecycle table tests `berth_testing.lifecycle`; real network partitions `berth_testing.netns`,
the CSI node service as a process `berth_testing.csinode`, sequence-numbered writers and
their judge `berth_testing.seqwrite`."""

from berth_testing.apps import Tenants, drop_schemas, running, write_tenants
from berth_testing.host import loop_skip_reason, needs_loop
from berth_testing.plugin import MakeSettings
from berth_testing.polling import eventually

__all__ = [
    "MakeSettings",
    "Tenants",
    "drop_schemas",
    "eventually",
    "loop_skip_reason",
    "needs_loop",
    "running",
    "write_tenants",
]
