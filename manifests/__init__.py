"""Built-in manifests (agents.yaml, dispatch.yaml) and their JSON Schemas, as package data."""
