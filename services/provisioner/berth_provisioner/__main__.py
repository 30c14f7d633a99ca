from __future__ import annotations

from berth_provisioner.app import create_app
from berth_provisioner.config import ProvisionerSettings
from berth_shared.runtime import serve


def main() -> None:
    settings = ProvisionerSettings()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
