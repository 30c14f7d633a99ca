from __future__ import annotations

from berth_provisioner.app import create_app
from berth_provisioner.config import ProvisionerSettings
from berth_shared.runtime import serve
from berth_shared.settings import load_settings


def main() -> None:
    settings = load_settings(ProvisionerSettings)
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
