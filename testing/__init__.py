"""Helpers for testing fleetbus and its plugins; keep imports light (fake_agent starts often)."""
