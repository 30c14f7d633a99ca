pytest_plugins = ["berth_testing.plugin"]
