#!/usr/bin/env bash
# Create ./.venv and install every Berth package (editable) with what it needs.
# Usage: scripts/install.sh [--dev]   (--dev adds the test-only package berth_testing and the test and lint tools)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
PKGS=(-e ./shared -e ./services/provisioner -e ./services/attacher -e ./services/watcher -e ./services/alerts -e ./services/csi -e ./cli)
if [ "${1:-}" = "--dev" ]; then
  PKGS+=(-e ./shared/testing -r requirements-dev.txt)
fi
# The lock (deploy/constraints.txt) pins every library to what the images ship; the
# setuptools notice that every editable install prints, once per package, is muted.
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore:Editable installation}"
.venv/bin/python -m pip install -q -c deploy/constraints.txt "${PKGS[@]}"
