"""Async DB helpers: engines, sessions, migrations, and the bus tables (outbox, inbox, parked).

The public surface of the DB layer: services import from `berth_shared.db`, never from its modules.
"""

from berth_shared.db.engine import Database, affected, insert_ignore, make_database
from berth_shared.db.group_commit import GroupCommit
from berth_shared.db.migrate import alembic_config, create_bus_tables, drop_bus_tables, run_env, upgrade
from berth_shared.db.outbox import EventWriter, OutboxRelay
from berth_shared.db.tables import BusTables, UTCDateTime, add_bus_tables, timestamp

__all__ = [
    "BusTables",
    "Database",
    "EventWriter",
    "GroupCommit",
    "OutboxRelay",
    "UTCDateTime",
    "add_bus_tables",
    "affected",
    "alembic_config",
    "create_bus_tables",
    "drop_bus_tables",
    "insert_ignore",
    "make_database",
    "run_env",
    "timestamp",
    "upgrade",
]
