pytest_plugins = ["berth_shared.testing"]
