from __future__ import annotations

from berth_shared.runtime import serve
from berth_shared.settings import load_settings
from berth_watcher.app import create_app
from berth_watcher.config import WatcherSettings


def main() -> None:
    settings = load_settings(WatcherSettings)
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
