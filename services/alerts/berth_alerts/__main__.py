from __future__ import annotations

from berth_alerts.app import create_app
from berth_alerts.config import AlertsSettings
from berth_shared.runtime import serve
from berth_shared.settings import load_settings


def main() -> None:
    settings = load_settings(AlertsSettings)
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
