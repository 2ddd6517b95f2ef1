"""Code that runs inside the cluster, one folder per kind of container.

Each folder imports only the standard library, what its container provides (its ``container.toml``) and
its own modules; the program ships these files by content or builds them into the runtime image, and
never imports them (tests/test_layout.py).
"""
