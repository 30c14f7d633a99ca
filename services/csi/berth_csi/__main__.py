"""`python -m berth_csi`: serve the CSI adapter until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal

from berth_csi.server import CsiServer
from berth_csi.settings import CsiSettings
from berth_shared.logs import configure_logging
from berth_shared.settings import load_settings
from berth_shared.telemetry import configure_tracing


async def serve(settings: CsiSettings) -> None:
    server = CsiServer(settings)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main() -> None:
    settings = load_settings(CsiSettings)
    configure_logging("csi", settings.log_level, settings.log_json)
    configure_tracing("csi")
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
