"""`python -m berth_shared.natsauth DIR [--stream NAME]`: make or refresh an installation's
NATS auth material in DIR (what `berth nats init` does, for images without the CLI)."""

from __future__ import annotations

import argparse
from pathlib import Path

from berth_shared.natsauth.material import AuthMaterial
from berth_shared.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m berth_shared.natsauth", description=__doc__)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--stream", default=Settings().events_stream, help="the events stream's name")
    args = parser.parse_args()
    auth = AuthMaterial(args.directory).ensure(args.stream)
    print(f"NATS auth material in {auth.dir} (nats-server: include {auth.auth_conf})")


if __name__ == "__main__":
    main()
