"""A replacement first control server joins the surviving servers instead of starting a new etcd.

Only control-0 is created without ``server:`` in its RKE2 config (it starts the cluster). If it is
ever replaced (a replace-on-change input, tools/replacements.py), the new VM boots with the same
cloud-init, and starting a second, empty etcd beside the others would split the cluster. So at
first boot, before RKE2 starts, control-0 asks the other control servers' supervisor port for
``/ping``, verifying their certificate with the cluster's server CA (written by cloud-init), and
joins the first that answers. At the cluster's first creation none can answer: a joining server
validates its token against its ``server:`` URL (control-0) before it opens its own supervisor
listener (k3s pkg/cluster/bootstrap.go ``shouldBootstrapLoad``, then pkg/cluster/cluster.go
``Start`` -> ``initClusterAndHTTPS``), so control-0 bootstraps as before.
"""

from __future__ import annotations

import shlex

from aiinfn.config.model import NodePool, SiteConfig

from .tenancy import fixed_ip


def surviving_servers(cfg: SiteConfig) -> list[str]:
    """Fixed addresses of every control VM but the first."""
    return [fixed_ip(cfg, p, i) for p in cfg.pools_by_role("control") for i in range(p.count)][1:]


def rejoin_script(peers: list[str], *, ca_file: str, port: int, config_file: str) -> str:
    """sh: append ``server: https://<peer>:<port>`` to the RKE2 config for the first peer that
    answers ``pong`` on its supervisor port with a certificate of our CA; do nothing otherwise."""
    q = shlex.quote
    return (
        f"for ip in {' '.join(q(p) for p in peers)}; do "
        f"if [ \"$(curl -sf --max-time 5 --cacert {q(ca_file)} https://$ip:{int(port)}/ping)\" = pong ]; then "
        f"printf 'server: https://%s:{int(port)}\\n' \"$ip\" >> {q(config_file)}; "
        "echo \"aiinfn: first server replaced: joining the running server $ip\"; break; fi; done"
    )


def first_server_rejoin(cfg: SiteConfig, pool: NodePool, server_url: str | None, *, tls_dir: str,
                        port: int, config_file: str = "/etc/rancher/rke2/config.yaml") -> list[list[str]]:
    """runcmd entries for the first control server of a site with more than one (none otherwise)."""
    if pool.role != "control" or server_url is not None:
        return []
    peers = surviving_servers(cfg)
    if not peers:
        return []
    return [["sh", "-c", rejoin_script(peers, ca_file=f"{tls_dir}/server-ca.crt", port=port, config_file=config_file)]]
