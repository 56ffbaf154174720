"""fleetbus's front ends: the `fleetbus` CLI (and, later, the MCP server)."""
