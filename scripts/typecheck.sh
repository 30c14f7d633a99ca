#!/usr/bin/env bash
# mypy --strict over the code and the tests. The test directories have no packages (pytest
# imports them by path), so two of them may hold a module of the same name (conftest.py):
# each directory is checked in a run of its own. The cache makes the later runs quick.
set -euo pipefail
cd "$(dirname "$0")/.."
MYPY="${MYPY:-.venv/bin/mypy}"
sources=(conftest.py shared/berth_shared shared/testing/berth_testing cli/berth_cli bench)
for pkg in services/*/berth_*; do [[ $pkg == *.egg-info ]] || sources+=("$pkg"); done
"$MYPY" --strict "${sources[@]}"
for tests in shared/tests cli/tests services/*/tests tests; do
  "$MYPY" --strict "$tests"
done
