"""Checks of single values shared by several sections: DNS labels, Kubernetes label keys and values,
IAM group names, networks. Each raises one ConfigError naming the key."""

from __future__ import annotations

import ipaddress
import re

from .errors import ConfigError

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# IAM group names as INDIGO IAM writes them in wlcg.groups (ai-infn/users): no spaces, not empty.
GROUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@/-]*$")


def require_group(value: str, path: str) -> None:
    if not GROUP_NAME.match(value):
        raise ConfigError(path, f"{value!r} is not an IAM group name (like ai-infn/users)")


def require_dns_label(value: str, path: str, max_len: int = 40) -> None:
    if not DNS_LABEL.match(value) or len(value) > max_len:
        raise ConfigError(path, f"{value!r} must be lower-case letters, digits and '-', at most {max_len} characters")


def require_cidr(value: str, path: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as err:
        raise ConfigError(path, f"{value!r} is not a valid network in CIDR form ({err})") from None
