"""Pulumi components, one per layer of the platform (see ../README.md for the picture)."""
