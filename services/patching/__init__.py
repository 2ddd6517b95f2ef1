"""In-cluster code (see services/__init__.py and this folder's container.toml)."""
