"""Secrets and supply-chain rules: each passes a compliant resource and fails a non-compliant one."""

from policies.rules import secrets as sec
from policies.rules import supply_chain as sc
from policies.testing import check_resource, deployment, helm, k8s

PLACEHOLDER = "<secret: derived from a Pulumi secret>"
SUPPLIED = "<secret aiinfn:iamClientSecret: set with pulumi config set --secret>"
GENERATED = "<generated at deploy: password redis>"


def cm(data):
    return k8s("v1", "ConfigMap", "cfg", "storage", data=data)


def test_no_secrets_in_configmaps():
    p = sec.no_secrets_in_configmaps
    ok = {"iamClientId": "ai-infn-hub-cnaf", "secretName": "redis-auth", "passwordFile": "/etc/s/pw",
          "script.sh": "export BORG_PASSPHRASE_FILE=/secrets/pass\nborg create ::x /data\n",
          # a hashed pip lock file: package names that contain 'token' or 'key' are pins, not settings
          "env.lock": "asttokens==3.0.2 \\\n    --hash=sha256:" + "9d" * 32 + "\nkeyring==25.6.0 \\\n    --hash=sha256:" + "0a" * 32 + "\n"}
    assert check_resource(p, *cm(ok)) == []
    for bad in ({"password": "hunter2hunter2"}, {"metaurl": "redis://:s3cr3t@redis:6379/1"},
                {"redisPassword": GENERATED}, {"token": PLACEHOLDER},
                {"settings.env": "REDIS_URL=x\nACCESS_KEY=AKIAABCDEFGHIJKLMNOP\n"},
                {"settings.env": "api_token=abcdef0123456789abcdef\n"}, {"app.yaml": "secret_key: abcdef0123456789abcdef\n"},
                {"key.pem": "-----BEGIN RSA PRIVATE KEY-----\nabc\n"}):
        assert check_resource(p, *cm(bad)), bad


def pod(env):
    return {"containers": [{"name": "c", "image": "x:1", "env": env}]}


def test_no_secret_env_literals():
    p = sec.no_secret_env_literals
    ok = [{"name": "REDIS_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "r", "key": "password"}}},
          {"name": "LOG_LEVEL", "value": "info"}, {"name": "TOKEN_FILE", "value": "/var/run/token"}]
    assert check_resource(p, *deployment("d", "storage", pod(ok))) == []
    for bad in ([{"name": "REDIS_PASSWORD", "value": "hunter2"}], [{"name": "X", "value": PLACEHOLDER}],
                [{"name": "DB_URL", "value": "postgres://app:pw@db/app"}]):
        assert check_resource(p, *deployment("d", "storage", pod(bad))), bad
    assert check_resource(p, *helm("x", {"hub": {"extraEnv": {"API_TOKEN": {"valueFrom": {}}}}})) == []
    assert check_resource(p, *helm("x", {"hub": {"extraEnv": {"API_TOKEN": GENERATED}}}))


def test_no_secrets_in_helm_values():
    p = sec.no_secrets_in_helm_values
    ok = {"proxy": {"secretToken": "<generated at deploy: random bytes t (hex)>"},
          "hub": {"config": {"GenericOAuthenticator": {"client_secret": SUPPLIED, "client_id": "hub"}},
                  "existingSecret": "hub-secret"},
          "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]}
    assert check_resource(p, *helm("jupyterhub", ok)) == []
    clear = {"hub": {"config": {"GenericOAuthenticator": {"client_secret": "abcdef123456"}}}}
    (msg,) = check_resource(p, *helm("jupyterhub", clear))
    assert "client_secret" in msg
    assert check_resource(p, *helm("redis", {"auth": {"password": "hunter2"}}))
    # Under the real CLI secrets arrive decrypted: documented chart secret paths are trusted there only.
    assert check_resource(p, *helm("jupyterhub", clear), offline=False) == []
    assert check_resource(p, *helm("redis", {"auth": {"password": "hunter2"}}), offline=False)


def test_iam_secret_not_in_notebooks():
    p = sec.iam_secret_not_in_notebooks
    ok = {"hub": {"config": {"GenericOAuthenticator": {"client_secret": SUPPLIED}}},
          "singleuser": {"extraEnv": {"JUPYTERHUB_SINGLEUSER_APP": "jupyter_server.serverapp.ServerApp"}}}
    assert check_resource(p, *helm("jupyterhub", ok)) == []
    leaks = [
        {"singleuser": {"extraEnv": {"OAUTH_CLIENT_SECRET": SUPPLIED}}},
        {"singleuser": {"extraEnv": {"IAM": {"valueFrom": {"secretKeyRef": {"name": "hub", "key": "client_secret"}}}}}},
        {"hub": {"config": {"KubeSpawner": {"environment": {"X": SUPPLIED}}}}},
        {"singleuser": {"profileList": [{"kubespawner_override": {"environment": {"CLIENT_SECRET": "x"}}}]}},
    ]
    for values in leaks:
        assert check_resource(p, *helm("jupyterhub", values)), values
    # Real CLI: the decrypted client secret copied into the notebook env is found by its value.
    real = {"hub": {"config": {"GenericOAuthenticator": {"client_secret": "s3cr3t-value"}}},
            "singleuser": {"extraEnv": {"FOO": "s3cr3t-value"}}}
    assert check_resource(p, *helm("jupyterhub", real), offline=False)


def test_generated_secrets_are_secret():
    p = sec.generated_secrets_are_secret
    assert check_resource(p, "random:index/randomPassword:RandomPassword", {"length": 32}, "redis-password") == []
    assert check_resource(p, "random:index/randomString:RandomString", {"length": 6}, "bucket-suffix") == []
    assert check_resource(p, "random:index/randomString:RandomString", {"length": 32}, "redis-password")
    assert check_resource(p, "random:index/randomString:RandomString", {"length": 32}, "api-token",
                          secret_outputs=["result"]) == []
    assert check_resource(p, "random:index/randomPassword:RandomPassword", {"length": 8}, "pw")


def test_images_pinned():
    p = sc.images_pinned
    assert check_resource(p, *deployment("d", "s", {"containers": [{"name": "c", "image": "redis:7.4.2"}]})) == []
    assert check_resource(p, *deployment("d", "s", {"containers": [{"name": "c", "image": "r@sha256:" + "a" * 64}]})) == []
    for image in ("redis", "redis:latest", "registry:5000/redis"):
        assert check_resource(p, *deployment("d", "s", {"containers": [{"name": "c", "image": image}]})), image


def test_charts_pinned_and_repos():
    assert check_resource(sc.charts_pinned, *helm("x", {}, version="4.4.0")) == []
    for v in ("", "^4.0", "4.x", ">=1"):
        assert check_resource(sc.charts_pinned, *helm("x", {}, version=v)), v
    p = sc.chart_repos_trusted
    assert check_resource(p, *helm("x", {}, repo="https://hub.jupyter.org/helm-chart/")) == []
    assert check_resource(p, *helm("oci://registry.k8s.io/kueue/charts/kueue", {}, repo=None)) == []
    assert check_resource(p, *helm("x", {}, repo="http://charts.example.org"))
    assert check_resource(p, *helm("x", {}, repo=None))


def test_helm_images_pinned():
    p = sc.helm_images_pinned
    ok = {"singleuser": {"image": {"name": "quay.io/jupyter/pytorch-notebook", "tag": "cuda12-2026-08-24"}},
          "operator": {"image": {"repository": "nvcr.io/nvidia/gpu-operator"}},  # chart appVersion
          "x": {"image": "docker.io/library/redis:7.4.2"}}
    assert check_resource(p, *helm("c", ok)) == []
    for bad in ({"singleuser": {"image": {"name": "quay.io/jupyter/base-notebook", "tag": "latest"}}},
                {"x": {"image": "docker.io/library/redis"}},
                {"singleuser": {"profileList": [{"kubespawner_override": {"image": "q/n:latest"}}]}}):
        assert check_resource(p, *helm("c", bad)), bad
