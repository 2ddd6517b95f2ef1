"""Every Ingress of the platform follows the site's one TLS choice (aiinfn:hub.tls).

- ``acme``: cert-manager certificates from a ClusterIssuer the stack itself creates (the hub layer's);
- ``upstream``: no certificate, no issuer, and the annotation the policy pack's ``ingress-tls`` rule
  accepts (taken here from the pack, not from the program).

A stack where any object names a ClusterIssuer that no object creates would leave the Ingress
without a certificate at deploy: checked on the shipped stacks and on an upstream variant.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aiinfn.config import ConfigError
from aiinfn.load import site_config_from_data
from policies.rules.exposure import TLS_UPSTREAM_ANNOTATION
from tests.stackdata import stack_doc, write_variant
from tools.cli import main
from tools.engine.run import Rendered, run_program

ISSUER_KEYS = ("cert-manager.io/cluster-issuer", "cert-manager.io/issuer")


def _walk(obj: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield path, k, v
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{path}[{i}]")


def issuers_created(r: Rendered) -> set[str]:
    return {res.inputs["metadata"]["name"] for res in r.resources if res.inputs.get("kind") == "ClusterIssuer"}


def issuers_referenced(r: Rendered) -> set[tuple[str, str]]:
    """(resource, issuer) for every cert-manager annotation or issuerRef in manifests and Helm values."""
    out = set()
    for res in r.resources:
        for path, key, value in _walk(res.inputs):
            if key in ISSUER_KEYS and isinstance(value, str):
                out.add((f"{res.name}{path}", value))
            if key == "issuerRef" and isinstance(value, dict):
                out.add((f"{res.name}{path}", value.get("name")))
    return out


def releases(r: Rendered) -> dict[str, dict]:
    return {res.inputs.get("chart"): res.inputs["values"] for res in r.resources if res.type.endswith("helm.sh/v3:Release")}


def grafana_ingress(r: Rendered) -> dict:
    return releases(r)["kube-prometheus-stack"]["grafana"]["ingress"]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> tuple[Path, Rendered]:
    path = write_variant(tmp_path_factory.mktemp("tls"), "recas",
                         lambda c: c.setdefault("aiinfn:hub", {}).update(tls="upstream"), name="recas-tls-upstream")
    return path, run_program(str(path))


def test_shipped_stacks_reference_only_issuers_they_create(any_stack: Rendered) -> None:
    created = issuers_created(any_stack)
    refs = issuers_referenced(any_stack)
    assert refs, "the shipped stacks use ACME: some Ingress must name an issuer"
    assert {(where, name) for where, name in refs if name not in created} == set()


def test_upstream_tls_references_no_issuer(upstream) -> None:
    _, r = upstream
    assert issuers_referenced(r) == set()
    assert issuers_created(r) == set()


def test_upstream_tls_annotates_the_hub_and_grafana_ingresses(upstream) -> None:
    _, r = upstream
    hub = releases(r)["jupyterhub"]["ingress"]
    graf = grafana_ingress(r)
    for ing in (hub, graf):
        assert ing["enabled"] is True
        assert ing["annotations"].get(TLS_UPSTREAM_ANNOTATION), ing
        assert not ing.get("tls")


def test_acme_grafana_uses_the_hubs_issuer_and_tls(recas: Rendered) -> None:
    graf = grafana_ingress(recas)
    assert graf["annotations"]["cert-manager.io/cluster-issuer"] in issuers_created(recas)
    assert graf["tls"] == [{"hosts": graf["hosts"], "secretName": "grafana-tls"}]
    assert TLS_UPSTREAM_ANNOTATION not in graf["annotations"]


def test_check_passes_on_the_upstream_variant(upstream, capsys) -> None:
    path, _ = upstream
    assert main(["check", str(path)]) == 0, capsys.readouterr().out
    assert "0 mandatory" in capsys.readouterr().err


def _config(mutate) -> Any:
    data = {k.split(":", 1)[1]: v for k, v in copy.deepcopy(stack_doc("recas")["config"]).items()}
    mutate(data)
    return site_config_from_data(data)


def test_grafana_acme_without_the_hub_layer_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        _config(lambda d: d.setdefault("hub", {}).update(enabled=False))
    line = str(err.value)
    assert "aiinfn:monitoring.grafana.clusterIssuer" in line and "\n" not in line
    # a named issuer, upstream TLS or no Grafana are all fine without the hub
    _config(lambda d: (d.setdefault("hub", {}).update(enabled=False),
                       d.setdefault("monitoring", {}).setdefault("grafana", {}).update(clusterIssuer="site-ca")))
    _config(lambda d: d.setdefault("hub", {}).update(enabled=False, tls="upstream"))
    _config(lambda d: (d.setdefault("hub", {}).update(enabled=False),
                       d.setdefault("monitoring", {}).setdefault("grafana", {}).update(enabled=False)))
