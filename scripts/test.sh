#!/usr/bin/env bash
# Install Berth with the test tools and run the whole suite.
# BERTH_TEST_DATABASE_URL=postgresql://... runs the service databases on PostgreSQL
# (one schema per service and test); unset, they run on SQLite files.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh --dev
exec .venv/bin/python -m pytest "$@"
