from __future__ import annotations

from berth_attacher.app import create_app
from berth_attacher.config import AttacherSettings
from berth_shared.runtime import serve
from berth_shared.settings import load_settings


def main() -> None:
    settings = load_settings(AttacherSettings)
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
