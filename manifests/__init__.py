"""Built-in manifests (agents.yaml, dispatch.yaml, hub.yaml) and their JSON Schemas, as package
data."""
