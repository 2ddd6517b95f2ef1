"""What notebook users are told about maintenance reboots: a banner on the hub's home page.

JupyterHub shows ``template_vars["announcement_home"]`` at the top of its home page (templates/home.html),
where users start and stop their servers; the hub layer puts this in ``hub.config.JupyterHub``.
"""

from __future__ import annotations

from aiinfn.config.model import SiteConfig

DAY_NAMES = {"su": "Sun", "mo": "Mon", "tu": "Tue", "we": "Wed", "th": "Thu", "fr": "Fri", "sa": "Sat"}


def reboot_announcement(cfg: SiteConfig) -> dict:
    """Keys for ``hub.config.JupyterHub`` (none when the site does not reboot nodes)."""
    r = cfg.patching.reboots
    if not r.enabled:
        return {}
    days = ", ".join(DAY_NAMES[d] for d in r.days)
    text = (f"Security updates: nodes restart one at a time on {days}, {r.start_time}-{r.end_time} ({r.time_zone}). "
            f"A notebook that has been running for more than {r.notebook_grace_hours} hours may be stopped then: "
            "save your work and restart long sessions before the window.")
    return {"template_vars": {"announcement_home": text}}
