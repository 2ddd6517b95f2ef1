# zero-to-jupyterhub hub.extraConfig of the AI_INFN platform: runs inside the chart's
# jupyterhub_config.py, where ``c`` is the JupyterHub config. It loads the hub-side module and the
# site data that the Pulumi program ships beside it through hub.extraFiles.
import os
import sys

_aiinfn_dir = os.environ.get("AIINFN_HUB_DIR", "/usr/local/etc/jupyterhub/aiinfn")
if _aiinfn_dir not in sys.path:
    sys.path.insert(0, _aiinfn_dir)

import aiinfn_hub

aiinfn_hub.configure(c, aiinfn_hub.load_site(os.path.join(_aiinfn_dir, "site.json")), dict(os.environ))  # noqa: F821
