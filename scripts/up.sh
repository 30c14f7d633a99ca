#!/usr/bin/env bash
# Install Berth and run the whole system on the embedded default, in the foreground.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
exec .venv/bin/berth up "$@"
