"""fleetbus's own tests use the fixtures it ships for plugin authors."""

pytest_plugins = ["fleetbus.testing.pytest_plugin"]
