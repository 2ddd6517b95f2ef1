"""Stack keys that are purely informational: changing them changes nothing that is deployed.

Every other key of a shipped stack must change the render (manifests, Helm values, OpenStack or
other resources, cloud-init) or be refused; ``tests/test_config_keys_alive.py`` mutates each
leaf of the shipped stacks and fails on a key that does neither. A key belongs here only if it is
meant for the people reading the stack file or the summary, never for the platform.

Paths are written as in config errors, with ``[]`` for any list index:
``aiinfn:projects[].description``. Add a key with the reason it does nothing.
"""

from __future__ import annotations

INFORMATIONAL_KEYS: dict[str, str] = {
    "aiinfn:projects[].description": "what the research activity is, for readers of the stack file",
    "aiinfn:offload.sites[].description": "what the remote site is, for readers of the stack file",
    "aiinfn:accelerators.minGpuSessions": "a guard: the stack is refused when the pools offer fewer GPU "
                                          "sessions; it changes nothing that is deployed",
}


def is_informational(path: str) -> bool:
    """``path`` with or without concrete indices (``aiinfn:pools[3].name`` -> ``aiinfn:pools[].name``)."""
    import re

    return re.sub(r"\[\d+\]", "[]", path) in INFORMATIONAL_KEYS
