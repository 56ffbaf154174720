"""fleetbus's built-in services, one package each."""
