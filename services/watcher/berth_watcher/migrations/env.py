from alembic import context

from berth_shared.db import run_env
from berth_watcher.tables import metadata

run_env(context, metadata)
