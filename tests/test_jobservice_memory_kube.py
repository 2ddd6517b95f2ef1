"""The in-memory Kubernetes client the tests and the load benchmark run the service on.

It keeps each object as its JSON text: every read must be a fresh copy, lists and counts must agree
with a plain scan of the objects whatever the selector, and ``created`` must hold what was sent.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest
from aiinfn_jobservice import bunshin
from aiinfn_jobservice.kube import KubeError, MemoryKubeClient, selector_matches


def job(name: str, ns: str = "project-a", **labels: str) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"template": {"spec": {"containers": [{"name": "job", "image": "x:1", "env": []}]}}}}


def run(coro):
    """On a loop of its own: ``asyncio.run`` would leave the main thread without a current loop, which
    later tests in the same process (Pulumi's mock runtime) rely on."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def test_every_read_is_a_fresh_copy_and_created_holds_what_was_sent():
    kube = MemoryKubeClient()
    body = job("a", user="u1")
    created = run(kube.create_job("project-a", body))
    assert "uid" not in body["metadata"] and "creationTimestamp" not in body["metadata"]  # the caller's body untouched
    assert created["metadata"]["uid"] and created["metadata"]["creationTimestamp"]
    created["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "X", "value": "1"})
    created["metadata"]["labels"]["user"] = "someone-else"
    for read in (run(kube.get_job("project-a", "a")), run(kube.list_jobs("project-a", "user=u1"))[0],
                 kube.objects[("Job", "project-a", "a")]):
        assert read["spec"]["template"]["spec"]["containers"][0]["env"] == []
        assert read["metadata"]["labels"] == {"user": "u1"}
        assert read["metadata"]["uid"] == created["metadata"]["uid"]
    assert run(kube.list_jobs("project-a", "user=someone-else")) == []
    assert kube.created == [body]  # as sent: without the fields the API server adds
    kube.created[0]["metadata"]["name"] = "changed"
    assert kube.created[0]["metadata"]["name"] == "a"
    with pytest.raises(KubeError) as err:
        run(kube.create_job("project-a", job("a")))
    assert err.value.status == 409
    assert len(kube.created) == 1


def test_lists_and_counts_agree_with_a_scan_for_every_selector():
    kube = MemoryKubeClient()
    objects = []
    for i, (ns, user, kind) in enumerate(itertools.product(("project-a", "project-b"), ("u1", "u2", "u3"),
                                                           ("batch", "bunshin"))):
        for n in range(i % 3 + 1):
            labels = {"managed": "svc", "user": user, "kind": kind} if n != 1 else {"user": user, "kind": kind}
            body = job(f"j-{user}-{kind}-{n}", ns, **labels)
            run(kube.create_job(ns, body))
            objects.append(body)
    run(kube.delete_job("project-a", "j-u1-batch-0"))
    objects = [o for o in objects if o["metadata"]["name"] != "j-u1-batch-0" or o["metadata"]["namespace"] != "project-a"]
    selectors = ["", "managed=svc", "managed=svc,user=u2", "user==u3,kind=bunshin", "managed", "user!=u1",
                 "managed=svc,user!=u2", "user=nobody", "managed=svc,user=u1,kind=batch"]
    for ns, selector in itertools.product(("project-a", "project-b", "project-c"), selectors):
        expected = sorted(o["metadata"]["name"] for o in objects
                          if o["metadata"]["namespace"] == ns and selector_matches(selector, o["metadata"]["labels"]))
        listed = [o["metadata"]["name"] for o in run(kube.list_jobs(ns, selector))]
        assert listed == expected, (ns, selector)
        assert run(kube.count_jobs(ns, selector, 1000)) == len(expected), (ns, selector)
        assert run(kube.count_jobs(ns, selector, 2)) == min(2, len(expected)), (ns, selector)


def test_deleting_a_job_deletes_what_it_owns_and_nothing_else():
    kube = MemoryKubeClient()
    owner = run(kube.create_job("project-a", job("a")))
    other = run(kube.create_job("project-a", job("b")))
    for name, parent in (("a-sandbox", owner), ("b-sandbox", other)):
        run(kube.create_config_map("project-a", {
            "apiVersion": "v1", "kind": "ConfigMap", "data": {},
            "metadata": {"name": name, "namespace": "project-a", "ownerReferences": [
                {"apiVersion": "batch/v1", "kind": "Job", "name": parent["metadata"]["name"],
                 "uid": parent["metadata"]["uid"]}]}}))
    run(kube.delete_job("project-a", "a"))
    assert set(kube.objects) == {("Job", "project-a", "b"), ("ConfigMap", "project-a", "b-sandbox")}
    assert kube.deleted == [("Job", "project-a", "a"), ("ConfigMap", "project-a", "a-sandbox")]
    assert run(kube.list_jobs("project-a", "")) == [kube.objects[("Job", "project-a", "b")]]


@pytest.mark.parametrize("value", [
    "postgresql://app:s3cret@db:5432/app", "https://s3.example/b/o?X-Amz-Signature=abc&x=1",
    "https://x.example/?Token=abc", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln", "-----BEGIN OPENSSH PRIVATE KEY-----",
    "AKIAIOSFODNN7EXAMPLE", "ghp_" + "a" * 36, "glpat-" + "b" * 20, "Bearer abcdefgh12345678", "basic QWxhZGRpbjpv",
    "/opt/conda/bin:/usr/bin", "https://pypi.org/simple", "en_US.UTF-8", "Bearer short", "x Bearer abcdefgh12345678",
    "eyJ", "AKIA123", "http://proxy:3128", "",
])
def test_the_one_search_for_secret_values_agrees_with_the_shapes_one_by_one(value):
    one_by_one = any(shape.search(value) for _, shape in bunshin.SECRET_VALUE_SHAPES)
    assert bool(bunshin.ANY_SECRET_VALUE_SHAPE.search(value)) == one_by_one
    reason = bunshin.env_dropped_reason({"name": "SOME_URL", "value": value})
    assert (reason is not None and reason.startswith("its value looks like")) == one_by_one
