from __future__ import annotations

from berth_attacher.app import create_app
from berth_attacher.config import AttacherSettings
from berth_shared.runtime import serve


def main() -> None:
    settings = AttacherSettings()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
