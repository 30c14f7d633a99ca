from alembic import context

from berth_alerts.tables import metadata
from berth_shared.db import run_env

run_env(context, metadata)
