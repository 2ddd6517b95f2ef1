"""The aiinfn:storage section: id scheme (against an independent hash), collisions, isolation, errors."""

from __future__ import annotations

import copy
import hashlib
import itertools

import pytest

from aiinfn.config import ConfigError
from aiinfn.config.storage import group_gid, user_uid
from aiinfn.derive.storage import isolation_problems
from aiinfn.load import site_config_from_data
from tools.engine.run import load_config
from tools.engine.stackfile import available_stacks


def base(stack: str = "hackathon-padova") -> dict:
    sf, _ = load_config(stack)
    return copy.deepcopy(sf.values)


def with_storage(data: dict, storage: dict) -> dict:
    data = copy.deepcopy(data)
    data["storage"] = {"block": data.get("storage", {}).get("block", {}), **storage}  # the stack's Keystone kept
    return data


def expected_uid(name: str) -> int:
    return 100000 + int.from_bytes(hashlib.sha256(f"user:{name}".encode()).digest()[:8], "big") % 800000


def test_uid_is_the_documented_hash():
    cfg = site_config_from_data(base())
    for name in ("alice", "bob", "m.rossi"):
        assert user_uid(cfg.storage, name) == expected_uid(name)
    assert user_uid(cfg.storage, "alice") == user_uid(cfg.storage, "alice")  # deterministic
    g = group_gid(cfg.storage, "ai-infn/cms")
    assert 900000 <= g < 990000
    assert g == 900000 + int.from_bytes(hashlib.sha256(b"group:ai-infn/cms").digest()[:8], "big") % 90000


def _colliding_users() -> tuple[str, str]:
    seen: dict[int, str] = {}
    for i in itertools.count():
        name = f"u{i}"
        uid = expected_uid(name)
        if uid in seen:
            return seen[uid], name
        seen[uid] = name


def test_uid_collision_is_refused_and_an_override_settles_it():
    a, b = _colliding_users()
    data = with_storage(base(), {"users": [a, b], "backup": {"enabled": False}})
    with pytest.raises(ConfigError, match=r"aiinfn:storage\.users\[1\].*collides"):
        site_config_from_data(data)
    data["storage"]["uidOverrides"] = {b: 123457}
    cfg = site_config_from_data(data)
    assert user_uid(cfg.storage, b) == 123457 and user_uid(cfg.storage, a) == expected_uid(a)


def test_gid_collision_between_projects_is_refused():
    seen: dict[int, str] = {}
    for i in itertools.count():
        g = f"grp{i}"
        gid = 900000 + int.from_bytes(hashlib.sha256(f"group:{g}".encode()).digest()[:8], "big") % 90000
        if gid in seen:
            pair = (seen[gid], g)
            break
        seen[gid] = g
    data = base()
    data["projects"] = [{"name": "p1", "group": pair[0]}, {"name": "p2", "group": pair[1]}]
    with pytest.raises(ConfigError, match=r"aiinfn:projects\[1\]\.group.*collides"):
        site_config_from_data(data)


@pytest.mark.parametrize(("storage", "key"), [
    ({"users": ["Bad User"]}, "aiinfn:storage.users[0]"),
    ({"users": ["a", "a"]}, "aiinfn:storage.users[1]"),
    ({"uidOverrides": {"x": 5}}, "aiinfn:storage.uidOverrides.x"),
    ({"nfs": {"image": "erichough/nfs-server:latest"}}, "aiinfn:storage.nfs.image"),
    ({"nfs": {"hostPath": "/"}}, "aiinfn:storage.nfs.hostPath"),
    ({"juicefs": {"bucket": "Bad_Bucket"}}, "aiinfn:storage.juicefs.bucket"),
    ({"juicefs": {"bucket": "aiinfn-cnaf-juicefs"}}, "aiinfn:storage.juicefs.bucket"),
    ({"juicefs": {"lifecycleRules": [{"id": "x"}]}}, "aiinfn:storage.juicefs.lifecycleRules[0]"),
    ({"cvmfs": {"repositories": ["not a repo"]}}, "aiinfn:storage.cvmfs.repositories[0]"),
    ({"cvmfs": {"httpProxy": "squid:3128"}}, "aiinfn:storage.cvmfs.httpProxy"),
    ({"backup": {"schedule": "daily"}}, "aiinfn:storage.backup.schedule"),
    ({"backup": {"keepDaily": 0, "keepWeekly": 0, "keepMonthly": 0}}, "aiinfn:storage.backup.keepDaily"),
    ({"backup": {"repository": "ssh://borg@host/./aiinfn-hackathon-padova"}}, "aiinfn:storage.backup.knownHosts"),
    ({"backup": {"repository": "ssh://borg@h/./aiinfn-cnaf-nfs", "knownHosts": "h ssh-ed25519 AAAA"}},
     "aiinfn:storage.backup.repository"),
    ({"scratch": {"hostPath": "/srv/aiinfn-nfs"}}, "aiinfn:storage.scratch.hostPath"),
    ({"nfz": {}}, "aiinfn:storage.nfz"),
    ({"nfs": {"clientCidrs": ["10.0.0.0/33"]}}, "aiinfn:storage.nfs.clientCidrs[0]"),
    ({"nfs": {"clientCidrs": ["0.0.0.0/0"]}}, "aiinfn:storage.nfs.clientCidrs[0]"),
    ({"block": {}}, "aiinfn:storage.block.authUrl"),  # the Cinder CSI plugin is deployed: it needs Keystone
    ({"block": {"authUrl": "http://keystone:5000/v3"}}, "aiinfn:storage.block.authUrl"),
    ({"block": {"storageClass": "nfs-csi"}}, "aiinfn:storage.block.storageClass"),
    ({"block": {"storageClass": "Fast SSD"}}, "aiinfn:storage.block.storageClass"),
    ({"block": {"csiChartVersion": "latest"}}, "aiinfn:storage.block.csiChartVersion"),
])
def test_bad_storage_config_names_the_key(storage, key):
    with pytest.raises(ConfigError) as err:
        site_config_from_data(with_storage(base(), storage))
    assert str(err.value).startswith(key), str(err.value)
    assert "\n" not in str(err.value)


def test_production_requires_a_backup_repository():
    data = base("cnaf")
    data["storage"] = {k: v for k, v in data["storage"].items() if k != "backup"}
    with pytest.raises(ConfigError, match=r"^aiinfn:storage\.backup\.repository.*must back up"):
        site_config_from_data(data)


def test_minimal_stack_without_storage_section_renders_defaults():
    data = base()
    data["storage"] = {"block": data["storage"]["block"]}  # only the cloud's Keystone URL (no default possible)
    cfg = site_config_from_data(data)
    assert cfg.storage.cvmfs.repositories == ["cms.cern.ch", "sft.cern.ch", "atlas.cern.ch"]
    assert (cfg.storage.backup.keep_daily, cfg.storage.backup.keep_weekly, cfg.storage.backup.keep_monthly) == (7, 4, 6)


def test_shipped_hackathons_never_share_production_data():
    configs = [load_config(s)[1] for s in available_stacks()]
    assert any(c.site.kind == "hackathon" for c in configs)
    assert isolation_problems(configs) == []


def test_isolation_check_catches_a_shared_bucket():
    prod = load_config("cnaf")[1]
    hack = load_config("hackathon-padova")[1]
    hack.storage.juicefs.bucket = prod.storage.juicefs.bucket  # bypassing validation on purpose
    assert any("bucket" in p for p in isolation_problems([prod, hack]))


def test_existing_cluster_needs_the_node_network_for_nfs():
    data = base()
    data.pop("openstack")
    data["cluster"] = {**data.get("cluster", {}), "existing": True}
    data["pools"] = [p for p in data["pools"] if p["role"] != "control"]
    with pytest.raises(ConfigError, match=r"^aiinfn:storage\.nfs\.clientCidrs"):
        site_config_from_data(data)
    data["storage"]["nfs"] = {"clientCidrs": ["192.168.10.0/24"]}
    # Nor can it guess a block class: the stateful services' volumes never go on NFS.
    with pytest.raises(ConfigError, match=r"^aiinfn:storage\.block\.storageClass: on an existing cluster"):
        site_config_from_data(data)
    data["storage"]["block"] = {"storageClass": "csi-rbd-retain"}
    cfg = site_config_from_data(data)
    from components.storage.nfs import exports_text
    assert "192.168.10.0/24(rw" in exports_text(cfg)
