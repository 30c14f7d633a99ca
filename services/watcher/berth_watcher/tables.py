"""The watcher's schema. Only this service reads or writes these tables."""

from __future__ import annotations

from sqlalchemy import MetaData

from berth_shared.db import add_bus_tables

metadata = MetaData()
bus_tables = add_bus_tables(metadata)
