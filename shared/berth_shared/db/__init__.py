"""Async DB helpers: engines, sessions, migrations, and the bus tables (outbox, inbox, parked)."""

from berth_shared.db.engine import Database, affected, insert_ignore, make_database
from berth_shared.db.tables import BusTables, add_bus_tables

__all__ = ["BusTables", "Database", "add_bus_tables", "affected", "insert_ignore", "make_database"]
