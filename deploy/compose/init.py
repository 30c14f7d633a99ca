"""docker compose's one-shot `init` (run in the alerts image, before anything else): the
static token file, NATS's accounts and credentials, a token for Prometheus to send alerts
with, and Berth's Grafana dashboards rendered for file provisioning. Keeps what exists.

    python init.py [ROOT]   (ROOT defaults to /; the paths below are under it)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from berth_alerts.dashboards import load_templates, render
from berth_shared.auth import ensure_token_file, first_admin_token
from berth_shared.natsauth import AuthMaterial

root = Path(sys.argv[1] if len(sys.argv) > 1 else "/")
tokens = root / "var/lib/berth-tokens/tokens.json"
ensure_token_file(tokens)
AuthMaterial(root / "var/lib/berth-nats").ensure(os.environ.get("BERTH_EVENTS_STREAM", "BERTH_EVENTS"))
# Prometheus (another user in another container) reads only this one token.
alerting = root / "var/lib/berth-prometheus/alerts-token"
alerting.parent.mkdir(parents=True, exist_ok=True)
alerting.write_text(first_admin_token(tokens))
alerting.chmod(0o644)
dashboards = root / "var/lib/berth-dashboards"
dashboards.mkdir(parents=True, exist_ok=True)
for uid, template in load_templates().items():
    (dashboards / f"{uid}.json").write_text(json.dumps(render(template, {}), indent=2))
print(f"init: tokens, NATS credentials, {len(load_templates())} dashboards")
