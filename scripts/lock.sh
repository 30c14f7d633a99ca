#!/usr/bin/env bash
# Re-resolve the services' dependencies and pin them in deploy/constraints.txt: the lock that
# the images, scripts/install.sh and CI install from. Run it after changing a dependency in
# any pyproject.toml (tests/deploy/test_images.py says when it is due), then commit the file.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
PACKAGES=(./shared ./services/provisioner ./services/attacher ./services/watcher ./services/alerts ./services/csi ./cli)
report="$(mktemp)"
trap 'rm -f "$report"' EXIT
"$PY" -m pip install -q --dry-run --ignore-installed --report "$report" "${PACKAGES[@]}"
"$PY" - "$report" > deploy/constraints.txt <<'PY'
import json, sys
pins = sorted(
    (i["metadata"]["name"], i["metadata"]["version"])
    for i in json.load(open(sys.argv[1]))["install"]
    if not i["metadata"]["name"].lower().startswith("berth-")
)
print("# The lock of Berth's runtime dependencies (scripts/lock.sh writes it; do not edit).")
print("# Images, scripts/install.sh and CI install with `pip install -c deploy/constraints.txt`.")
for name, version in pins:
    print(f"{name}=={version}")
PY
echo "deploy/constraints.txt: $(grep -c '==' deploy/constraints.txt) pins"
