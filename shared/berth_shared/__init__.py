"""The library every Berth service shares: settings, bus, DB, errors, auth, telemetry, backends."""
