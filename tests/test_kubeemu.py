"""kubeemu, the Kubernetes API emulator, against the official client, raw HTTP and kubectl.

The emulator runs in-process on 127.0.0.1 (one per module, plus small ones for history
tests) and as a subprocess for the command-line test; every client speaks real HTTP.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository


kubernetes = pytest.importorskip("kubernetes", reason="the kubernetes client is not installed")
from kubernetes import client, watch  # noqa: E402
from kubernetes.client.exceptions import ApiException  # noqa: E402

from kubeemu import Emulator  # noqa: E402
from kubeemu.mirror import MANAGED_BY, SERVICE_NAME  # noqa: E402

MIRROR = "endpointslicemirroring-controller.k8s.io"


# ---------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def emu():
    emulator = Emulator(port=0, history=1000).start()
    yield emulator
    emulator.stop()


def _api(emulator):
    return client.ApiClient(client.Configuration(host=emulator.url))


@pytest.fixture(scope="module")
def api(emu):
    api_client = _api(emu)
    yield api_client
    api_client.close()


@pytest.fixture(scope="module")
def v1(api):
    return client.CoreV1Api(api)


@pytest.fixture(scope="module")
def disc(api):
    return client.DiscoveryV1Api(api)


@pytest.fixture
def ns(v1, request):
    """A fresh namespace per test, deleted (with its contents) afterwards."""
    name = "t-" + request.node.name.replace("_", "-")[:40].strip("-").lower()
    v1.create_namespace({"metadata": {"name": name}})
    yield name
    try:
        v1.delete_namespace(name)
    except ApiException:
        pass


def http(emulator, method, path, body=None, content_type="application/json", timeout=10):
    """A raw request; returns (status, parsed JSON body or text)."""
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(emulator.url + path, data=data, method=method,
                                 headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


def watch_lines(emulator, path, timeout=10):
    """Read a whole watch response (the server ends it) as a list of events."""
    with urllib.request.urlopen(emulator.url + path, timeout=timeout) as resp:
        assert resp.status == 200
        return [json.loads(line) for line in resp.read().splitlines() if line.strip()]


def svc_body(name, labels=None, **spec):
    spec.setdefault("ports", [{"name": "http", "port": 80, "targetPort": 8080}])
    return {"metadata": {"name": name, "labels": labels or {}}, "spec": spec}


# ---------------------------------------------------------------------------- discovery

def test_discovery_endpoints_validate_with_the_client(api):
    code = client.VersionApi(api).get_code()
    assert code.major == "1" and code.git_version.startswith("v1.")
    assert code.build_date and code.go_version and code.platform and code.compiler
    assert "v1" in client.CoreApi(api).get_api_versions().versions
    groups = client.ApisApi(api).get_api_versions().groups
    assert [g.preferred_version.group_version for g in groups if g.name == "discovery.k8s.io"] \
        == ["discovery.k8s.io/v1"]
    core = {r.name: r for r in client.CoreV1Api(api).get_api_resources().resources}
    assert core["services"].short_names == ["svc"] and core["services"].namespaced
    assert core["endpoints"].short_names == ["ep"] and core["pods"].short_names == ["po"]
    assert core["namespaces"].short_names == ["ns"] and not core["namespaces"].namespaced
    assert core["services"].kind == "Service" and "watch" in core["services"].verbs
    assert "pods/status" in core
    slices = client.DiscoveryV1Api(api).get_api_resources()
    assert slices.group_version == "discovery.k8s.io/v1"
    assert [(r.name, r.kind, r.namespaced) for r in slices.resources] == [
        ("endpointslices", "EndpointSlice", True)]


def test_seeded_like_a_cluster(v1):
    names = {n.metadata.name for n in v1.list_namespace().items}
    assert {"default", "kube-system"} <= names
    kubernetes_svc = v1.read_namespaced_service("kubernetes", "default")
    assert kubernetes_svc.spec.cluster_ip == "10.96.0.1"
    assert [(p.name, p.port) for p in kubernetes_svc.spec.ports] == [("https", 443)]


# ---------------------------------------------------------------------------- services

def test_service_cluster_ip_allocation_headless_and_external_name(v1, ns):
    a = v1.create_namespaced_service(ns, svc_body("a"))
    b = v1.create_namespaced_service(ns, svc_body("b"))
    for svc in (a, b):
        assert svc.spec.cluster_ip.startswith("10.96.") and svc.spec.cluster_ip != "10.96.0.1"
        assert svc.spec.cluster_ips == [svc.spec.cluster_ip]
        assert svc.spec.type == "ClusterIP"
        assert svc.metadata.uid and svc.metadata.creation_timestamp
        assert svc.metadata.namespace == ns
        assert int(svc.metadata.resource_version) > 0
    assert a.spec.cluster_ip != b.spec.cluster_ip
    assert int(b.metadata.resource_version) > int(a.metadata.resource_version)

    headless = v1.create_namespaced_service(ns, svc_body("h", cluster_ip="None"))
    assert headless.spec.cluster_ip == "None" and headless.spec.cluster_ips == ["None"]
    ext = v1.create_namespaced_service(ns, {"metadata": {"name": "ext"}, "spec": {
        "type": "ExternalName", "externalName": "db.example.com"}})
    assert ext.spec.cluster_ip is None and ext.spec.external_name == "db.example.com"
    fixed = v1.create_namespaced_service(ns, svc_body("fixed", clusterIP="10.96.200.7"))
    assert fixed.spec.cluster_ip == "10.96.200.7"

    with pytest.raises(ApiException) as taken:
        v1.create_namespaced_service(ns, svc_body("dup-ip", clusterIP="10.96.200.7"))
    assert taken.value.status == 422 and "already allocated" in taken.value.body
    with pytest.raises(ApiException) as outside:
        v1.create_namespaced_service(ns, svc_body("outside", clusterIP="192.0.2.1"))
    assert outside.value.status == 422
    with pytest.raises(ApiException) as exists:
        v1.create_namespaced_service(ns, svc_body("a"))
    assert exists.value.status == 409 and json.loads(exists.value.body)["reason"] == "AlreadyExists"

    # the address of a deleted service can be had again
    v1.delete_namespaced_service("fixed", ns)
    assert v1.create_namespaced_service(
        ns, svc_body("fixed2", clusterIP="10.96.200.7")).spec.cluster_ip == "10.96.200.7"


def test_service_validation(v1, ns):
    bad = [
        svc_body("Upper"),                                             # not a DNS-1035 label
        svc_body("noports", ports=[]),                                 # ports required
        svc_body("unnamed", ports=[{"port": 80}, {"port": 81}]),       # names required
        svc_body("badport", ports=[{"port": 70000}]),
        {"metadata": {"name": "ext"}, "spec": {"type": "ExternalName"}},
    ]
    for body in bad:
        with pytest.raises(ApiException) as err:
            v1.create_namespaced_service(ns, body)
        assert err.value.status == 422, body
        assert json.loads(err.value.body)["reason"] == "Invalid"


def test_service_get_list_update_patch_delete(emu, v1, ns):
    created = v1.create_namespaced_service(ns, svc_body("web", {"app": "web", "tier": "fe"}))
    v1.create_namespaced_service(ns, svc_body("db", {"app": "db", "tier": "be"}))
    v1.create_namespaced_service(ns, svc_body("plain"))

    got = v1.read_namespaced_service("web", ns)
    assert got.metadata.uid == created.metadata.uid

    def names(selector=None, field=None):
        kwargs = {}
        if selector is not None:
            kwargs["label_selector"] = selector
        if field is not None:
            kwargs["field_selector"] = field
        return sorted(s.metadata.name for s in v1.list_namespaced_service(ns, **kwargs).items)

    assert names() == ["db", "plain", "web"]
    assert names("app=web") == ["web"]
    assert names("app!=web") == ["db", "plain"]
    assert names("app in (web,db)") == ["db", "web"]
    assert names("tier notin (fe)") == ["db", "plain"]
    assert names("app") == ["db", "web"]
    assert names("!app") == ["plain"]
    assert names("app=web,tier=be") == []
    assert names(field="metadata.name=db") == ["db"]
    everywhere = v1.list_service_for_all_namespaces(label_selector="app=web").items
    assert [(s.metadata.namespace, s.metadata.name) for s in everywhere] == [(ns, "web")]
    with pytest.raises(ApiException) as bad_selector:
        v1.list_namespaced_service(ns, label_selector="a in (b")
    assert bad_selector.value.status == 400

    # update: a stale resourceVersion conflicts; the current one goes through
    body = v1.read_namespaced_service("web", ns).to_dict()
    body["metadata"]["labels"]["version"] = "2"
    updated = v1.replace_namespaced_service("web", ns, body)
    assert updated.metadata.labels["version"] == "2"
    assert updated.spec.cluster_ip == created.spec.cluster_ip      # kept
    assert int(updated.metadata.resource_version) > int(created.metadata.resource_version)
    stale_body = v1.read_namespaced_service("web", ns)
    stale_body.metadata.resource_version = created.metadata.resource_version
    with pytest.raises(ApiException) as conflict:
        v1.replace_namespaced_service("web", ns, stale_body)
    assert conflict.value.status == 409 and json.loads(conflict.value.body)["reason"] == "Conflict"

    # clusterIP is immutable
    moved = v1.read_namespaced_service("web", ns)
    moved.spec.cluster_ip = "10.96.250.250"
    moved.spec.cluster_ips = ["10.96.250.250"]
    with pytest.raises(ApiException) as immutable:
        v1.replace_namespaced_service("web", ns, moved)
    assert immutable.value.status == 422

    # a dict patch from the client is a strategic merge patch: ports merge by "port"
    two = v1.patch_namespaced_service("web", ns, {"spec": {"ports": [
        {"name": "http", "port": 80, "targetPort": 8080},
        {"name": "metrics", "port": 9090}]}})
    assert [(p.port, p.target_port) for p in two.spec.ports] == [(80, 8080), (9090, 9090)]
    one_changed = v1.patch_namespaced_service("web", ns, {"spec": {"ports": [
        {"port": 9090, "targetPort": 9091}]}})
    assert [(p.port, p.target_port) for p in one_changed.spec.ports] == [(80, 8080), (9090, 9091)]
    dropped = v1.patch_namespaced_service("web", ns, {"spec": {"ports": [
        {"port": 9090, "$patch": "delete"}]}})
    assert [p.port for p in dropped.spec.ports] == [80]

    # merge patch (RFC 7386) and JSON patch (RFC 6902) over raw HTTP
    path = "/api/v1/namespaces/%s/services/web" % ns
    status, merged = http(emu, "PATCH", path,
                          {"metadata": {"labels": {"tier": None, "x": "y"}}},
                          "application/merge-patch+json")
    assert status == 200 and merged["metadata"]["labels"] == {"app": "web", "version": "2",
                                                              "x": "y"}
    status, patched = http(emu, "PATCH", path,
                           [{"op": "replace", "path": "/metadata/labels/x", "value": "z"}],
                           "application/json-patch+json")
    assert status == 200 and patched["metadata"]["labels"]["x"] == "z"
    status, refused = http(emu, "PATCH", path, b"{}", "application/apply-patch+yaml")
    assert status == 415 and refused["kind"] == "Status"

    # delete (with the body kubectl and the client send), then 404
    v1.delete_namespaced_service("web", ns, body=client.V1DeleteOptions(grace_period_seconds=0))
    with pytest.raises(ApiException) as gone:
        v1.read_namespaced_service("web", ns)
    assert gone.value.status == 404
    status = json.loads(gone.value.body)
    assert status["kind"] == "Status" and status["reason"] == "NotFound"
    assert status["message"] == 'services "web" not found'
    with pytest.raises(ApiException) as again:
        v1.delete_namespaced_service("web", ns)
    assert again.value.status == 404


def test_json_patch_operations_and_the_422_for_one_that_cannot_apply(emu, v1, ns):
    """RFC 6902 as kubectl patch --type=json and the client's list bodies send it: the
    operations apply in order, and a patch that fails (any operation) changes nothing."""
    v1.create_namespaced_service(ns, svc_body("web", {"app": "web", "tier": "fe"}))
    path = "/api/v1/namespaces/%s/services/web" % ns

    def json_patch(ops):
        return http(emu, "PATCH", path, ops, "application/json-patch+json")

    status, patched = json_patch([
        {"op": "test", "path": "/spec/ports/0/port", "value": 80},
        {"op": "add", "path": "/spec/ports/-", "value": {"name": "metrics", "port": 9090}},
        {"op": "add", "path": "/metadata/labels/example.com~1team", "value": "dns"},
        {"op": "copy", "from": "/metadata/labels/app", "path": "/metadata/labels/copied"},
        {"op": "move", "from": "/metadata/labels/tier", "path": "/metadata/labels/moved"},
        {"op": "remove", "path": "/spec/ports/0"}])
    assert status == 200, patched
    assert patched["metadata"]["labels"] == {"app": "web", "example.com/team": "dns",
                                             "copied": "web", "moved": "fe"}
    assert [(p["name"], p["port"]) for p in patched["spec"]["ports"]] == [("metrics", 9090)]
    version = patched["metadata"]["resourceVersion"]

    for ops in ([{"op": "add", "path": "/metadata/labels/x", "value": "y"},
                 {"op": "test", "path": "/spec/ports/0/port", "value": 80}],   # fails
                [{"op": "remove", "path": "/spec/nothing"}],
                [{"op": "replace", "path": "/spec/ports/5", "value": {"port": 1}}],
                [{"op": "copy", "from": 5, "path": "/metadata/labels/x"}],
                [{"op": "frob", "path": "/spec"}],
                {"op": "remove", "path": "/spec/ports/0"}):                     # not a list
        status, refused = json_patch(ops)
        assert status == 422 and refused["reason"] == "Invalid", (ops, refused)
    assert v1.read_namespaced_service("web", ns).metadata.resource_version == version


def test_a_list_serves_each_object_as_its_last_write_left_it(emu, v1, ns):
    """Lists are served from JSON kept between lists (as the API server's watch cache):
    every create, update, patch and delete shows in the next list, in key order."""
    def listed():
        status, body = http(emu, "GET", "/api/v1/namespaces/%s/services" % ns)
        assert status == 200
        return [(s["metadata"]["name"], s["metadata"]["labels"].get("v"))
                for s in body["items"]]
    for name in ("b", "a", "c"):
        v1.create_namespaced_service(ns, svc_body(name, {"v": "1"}))
    assert listed() == [("a", "1"), ("b", "1"), ("c", "1")]
    body = v1.read_namespaced_service("b", ns).to_dict()
    body["metadata"]["labels"]["v"] = "2"
    v1.replace_namespaced_service("b", ns, body)
    assert listed() == [("a", "1"), ("b", "2"), ("c", "1")]
    v1.patch_namespaced_service("c", ns, {"metadata": {"labels": {"v": "3"}}})
    v1.delete_namespaced_service("a", ns)
    v1.create_namespaced_service(ns, svc_body("aa", {"v": "4"}))
    assert listed() == [("aa", "4"), ("b", "2"), ("c", "3")]
    page = v1.list_namespaced_service(ns, limit=2)
    assert [s.metadata.name for s in page.items] == ["aa", "b"]


def test_pagination_with_limit_and_continue(v1, ns):
    for i in range(5):
        v1.create_namespaced_service(ns, svc_body("p%d" % i))
    seen, token = [], None
    while True:
        page = v1.list_namespaced_service(ns, limit=2, _continue=token) if token else \
            v1.list_namespaced_service(ns, limit=2)
        seen += [s.metadata.name for s in page.items]
        token = page.metadata._continue
        if not token:
            break
        assert page.metadata.remaining_item_count >= 1
    assert seen == ["p0", "p1", "p2", "p3", "p4"]


# ---------------------------------------------------------------------------- endpoints, pods

def test_endpoints_crud(v1, ns):
    ep = v1.create_namespaced_endpoints(ns, {"metadata": {"name": "svc"}, "subsets": [{
        "addresses": [{"ip": "10.1.0.1"}], "ports": [{"port": 80}]}]})
    assert ep.subsets[0].ports[0].protocol == "TCP"
    ep.subsets[0].addresses.append(client.V1EndpointAddress(ip="10.1.0.2"))
    replaced = v1.replace_namespaced_endpoints("svc", ns, ep)
    assert [a.ip for a in replaced.subsets[0].addresses] == ["10.1.0.1", "10.1.0.2"]
    patched = v1.patch_namespaced_endpoints("svc", ns, {"metadata": {"labels": {"a": "b"}}})
    assert patched.metadata.labels == {"a": "b"} and len(patched.subsets[0].addresses) == 2
    assert [e.metadata.name for e in v1.list_namespaced_endpoints(ns).items] == ["svc"]
    with pytest.raises(ApiException) as invalid:
        v1.create_namespaced_endpoints(ns, {"metadata": {"name": "bad"}, "subsets": [{
            "addresses": [{"ip": "not-an-ip"}]}]})
    assert invalid.value.status == 422
    v1.delete_namespaced_endpoints("svc", ns)
    assert v1.list_namespaced_endpoints(ns).items == []


def test_pods_and_the_status_subresource(v1, ns):
    pod = v1.create_namespaced_pod(ns, {"metadata": {"name": "p", "labels": {"app": "x"}},
                                        "spec": {"containers": [{"name": "c", "image": "i"}]}})
    assert pod.status.phase == "Pending"
    running = v1.patch_namespaced_pod_status("p", ns, {"status": {
        "phase": "Running", "podIP": "10.2.0.7", "podIPs": [{"ip": "10.2.0.7"}]}})
    assert running.status.phase == "Running" and running.status.pod_ip == "10.2.0.7"
    assert int(running.metadata.resource_version) > int(pod.metadata.resource_version)
    assert v1.read_namespaced_pod_status("p", ns).status.pod_ip == "10.2.0.7"
    # the main resource ignores status; /status ignores the spec
    main = v1.patch_namespaced_pod("p", ns, {"metadata": {"labels": {"app": "y"}},
                                             "status": {"phase": "Failed"}})
    assert main.metadata.labels == {"app": "y"} and main.status.phase == "Running"
    status_only = v1.patch_namespaced_pod_status("p", ns, {"spec": {"hostname": "h"}})
    assert status_only.spec.hostname is None
    body = v1.read_namespaced_pod("p", ns)
    body.status.phase = "Succeeded"
    assert v1.replace_namespaced_pod_status("p", ns, body).status.phase == "Succeeded"
    assert [p.metadata.name for p in v1.list_pod_for_all_namespaces(
        label_selector="app=y").items] == ["p"]
    with pytest.raises(ApiException) as invalid:
        v1.create_namespaced_pod(ns, {"metadata": {"name": "q"}, "spec": {"containers": []}})
    assert invalid.value.status == 422
    v1.delete_namespaced_pod("p", ns)
    assert v1.list_namespaced_pod(ns).items == []


def test_endpointslices_crud(disc, ns):
    body = {"metadata": {"name": "s1", "labels": {SERVICE_NAME: "svc"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.3.0.1"], "conditions": {"ready": True}}],
            "ports": [{"name": "http", "port": 80}]}
    created = disc.create_namespaced_endpoint_slice(ns, body)
    assert created.ports[0].protocol == "TCP" and created.metadata.uid
    got = disc.read_namespaced_endpoint_slice("s1", ns)
    assert got.endpoints[0].addresses == ["10.3.0.1"]
    patched = disc.patch_namespaced_endpoint_slice("s1", ns, {"endpoints": [
        {"addresses": ["10.3.0.2"], "conditions": {"ready": False}}]})
    assert [e.addresses for e in patched.endpoints] == [["10.3.0.2"]]
    listed = disc.list_endpoint_slice_for_all_namespaces(label_selector=SERVICE_NAME + "=svc")
    assert [s.metadata.name for s in listed.items] == ["s1"]
    with pytest.raises(ApiException) as invalid:
        disc.create_namespaced_endpoint_slice(ns, {"metadata": {"name": "s2"},
                                                   "addressType": "Bogus", "endpoints": []})
    assert invalid.value.status == 422
    disc.delete_namespaced_endpoint_slice("s1", ns)
    with pytest.raises(ApiException) as gone:
        disc.read_namespaced_endpoint_slice("s1", ns)
    assert gone.value.status == 404
    assert json.loads(gone.value.body)["message"] == \
        'endpointslices.discovery.k8s.io "s1" not found'


def test_namespace_delete_takes_its_objects(v1, disc):
    v1.create_namespace({"metadata": {"name": "doomed"}})
    v1.create_namespaced_service("doomed", svc_body("s"))
    v1.create_namespaced_endpoints("doomed", {"metadata": {"name": "s"}, "subsets": [
        {"addresses": [{"ip": "10.9.0.1"}], "ports": [{"port": 80}]}]})
    assert len(disc.list_namespaced_endpoint_slice("doomed").items) == 1
    v1.delete_namespace("doomed")
    assert v1.list_namespaced_service("doomed").items == []
    assert v1.list_namespaced_endpoints("doomed").items == []
    assert disc.list_namespaced_endpoint_slice("doomed").items == []
    with pytest.raises(ApiException) as gone:
        v1.read_namespace("doomed")
    assert gone.value.status == 404


# ---------------------------------------------------------------------------- mirroring

def _mirrored(disc, ns, name):
    slices = disc.list_namespaced_endpoint_slice(ns, label_selector=SERVICE_NAME + "=" + name)
    return sorted(slices.items, key=lambda s: s.address_type)


def test_endpoints_are_mirrored_into_endpointslices(v1, disc, ns):
    v1.create_namespaced_endpoints(ns, {"metadata": {"name": "db", "labels": {"team": "a"}},
                                        "subsets": [{
        "addresses": [{"ip": "10.4.0.1", "hostname": "db-0", "nodeName": "node-1",
                       "targetRef": {"kind": "Pod", "name": "db-0", "namespace": ns}},
                      {"ip": "fd00::1", "hostname": "db-6"}],
        "notReadyAddresses": [{"ip": "10.4.0.2", "hostname": "db-1"}],
        "ports": [{"name": "sql", "port": 5432}]}]})
    v4, v6 = _mirrored(disc, ns, "db")
    assert (v4.address_type, v6.address_type) == ("IPv4", "IPv6")
    for s in (v4, v6):
        assert s.metadata.name.startswith("db-mirror-")
        assert s.metadata.labels[MANAGED_BY] == MIRROR
        assert s.metadata.labels["team"] == "a"
        assert [(p.name, p.port, p.protocol) for p in s.ports] == [("sql", 5432, "TCP")]
    by_ip = {e.addresses[0]: e for e in v4.endpoints}
    assert by_ip["10.4.0.1"].conditions.ready is True
    assert by_ip["10.4.0.1"].hostname == "db-0" and by_ip["10.4.0.1"].node_name == "node-1"
    assert by_ip["10.4.0.1"].target_ref.name == "db-0"
    assert by_ip["10.4.0.2"].conditions.ready is False and by_ip["10.4.0.2"].hostname == "db-1"
    assert [(e.addresses, e.hostname) for e in v6.endpoints] == [(["fd00::1"], "db-6")]

    # update: the IPv6 address goes, a pod becomes ready, the port is renumbered
    v1.replace_namespaced_endpoints("db", ns, {"metadata": {"name": "db"}, "subsets": [{
        "addresses": [{"ip": "10.4.0.1", "hostname": "db-0"},
                      {"ip": "10.4.0.2", "hostname": "db-1"}],
        "ports": [{"name": "sql", "port": 5433}]}]})
    (only,) = _mirrored(disc, ns, "db")
    assert only.address_type == "IPv4" and only.ports[0].port == 5433
    assert sorted((e.addresses[0], e.conditions.ready) for e in only.endpoints) == [
        ("10.4.0.1", True), ("10.4.0.2", True)]

    # a label-only patch keeps the same slice, updated in place
    v1.patch_namespaced_endpoints("db", ns, {"metadata": {"labels": {"team": "b"}}})
    (same,) = _mirrored(disc, ns, "db")
    assert same.metadata.name == only.metadata.name and same.metadata.labels["team"] == "b"

    # skip-mirror, and delete
    v1.create_namespaced_endpoints(ns, {"metadata": {"name": "skip", "labels": {
        "endpointslice.kubernetes.io/skip-mirror": "true"}}, "subsets": [{
            "addresses": [{"ip": "10.4.1.1"}], "ports": [{"port": 1}]}]})
    assert _mirrored(disc, ns, "skip") == []
    v1.delete_namespaced_endpoints("db", ns)
    assert _mirrored(disc, ns, "db") == []


# ---------------------------------------------------------------------------- watch

def test_watch_replays_added_modified_deleted_in_order(v1, ns):
    rv = v1.list_service_for_all_namespaces().metadata.resource_version
    v1.create_namespaced_service(ns, svc_body("w", {"a": "1"}))
    v1.patch_namespaced_service("w", ns, {"metadata": {"labels": {"a": "2"}}})
    v1.delete_namespaced_service("w", ns)
    started = time.monotonic()
    events = [(e["type"], e["object"].metadata.name, e["object"].metadata.labels,
               int(e["object"].metadata.resource_version))
              for e in watch.Watch().stream(v1.list_service_for_all_namespaces,
                                            resource_version=rv, timeout_seconds=1)]
    elapsed = time.monotonic() - started
    assert [(t, n, l) for t, n, l, _ in events] == [
        ("ADDED", "w", {"a": "1"}), ("MODIFIED", "w", {"a": "2"}), ("DELETED", "w", {"a": "2"})]
    rvs = [r for *_, r in events]
    assert rvs == sorted(rvs) and rvs[0] > int(rv)
    assert 0.8 < elapsed < 5, "timeoutSeconds=1 should end the stream after about a second"


def test_watch_follows_live_changes_with_selectors(v1, ns):
    rv = v1.list_namespaced_service(ns).metadata.resource_version
    seen = []

    def follow():
        try:
            for e in watch.Watch().stream(v1.list_namespaced_service, ns,
                                          label_selector="app=x", resource_version=rv,
                                          timeout_seconds=2):
                seen.append((e["type"], e["object"].metadata.name))
        except Exception as exc:  # pragma: no cover - reported by the assertion
            seen.append(("EXCEPTION", repr(exc)))

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    time.sleep(0.3)
    v1.create_namespaced_service(ns, svc_body("in", {"app": "x"}))
    v1.create_namespaced_service(ns, svc_body("out", {"app": "y"}))
    v1.patch_namespaced_service("out", ns, {"metadata": {"labels": {"app": "x"}}})   # joins
    v1.patch_namespaced_service("in", ns, {"metadata": {"labels": {"app": "z"}}})    # leaves
    v1.delete_namespaced_service("in", ns)                                         # unseen
    thread.join(10)
    assert not thread.is_alive()
    assert seen == [("ADDED", "in"), ("ADDED", "out"), ("DELETED", "in")]


def test_watch_without_resource_version_lists_current_objects_first(emu, v1, ns):
    v1.create_namespaced_service(ns, svc_body("present"))
    events = watch_lines(emu, "/api/v1/namespaces/%s/services?watch=true&timeoutSeconds=1" % ns)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "present")]
    # the legacy /watch/ path and a named watch
    events = watch_lines(emu, "/api/v1/watch/namespaces/%s/services/present"
                              "?resourceVersion=0&timeoutSeconds=1" % ns)
    assert [e["type"] for e in events] == ["ADDED"]


def test_watch_from_a_version_older_than_the_history_is_410():
    with Emulator(port=0, history=5) as small:
        api_client = _api(small)
        v1 = client.CoreV1Api(api_client)
        v1.create_namespaced_service("default", svc_body("early"))
        first = v1.list_service_for_all_namespaces(limit=1)
        old_rv, token = first.metadata.resource_version, first.metadata._continue
        assert token
        for i in range(8):
            v1.create_namespaced_service("default", svc_body("s%d" % i))

        # the client raises ApiException(410) when it is given timeout_seconds
        # (without it, the client retries once and then raises the same)
        with pytest.raises(ApiException) as expired:
            list(watch.Watch().stream(v1.list_service_for_all_namespaces,
                                      resource_version=old_rv, timeout_seconds=1))
        assert expired.value.status == 410 and "Expired" in expired.value.reason

        # on the wire: a 200 stream with one ERROR event carrying a Status
        (event,) = watch_lines(small, "/api/v1/services?watch=1&resourceVersion=%s" % old_rv)
        assert event["type"] == "ERROR"
        assert event["object"]["kind"] == "Status" and event["object"]["code"] == 410
        assert event["object"]["reason"] == "Expired"
        assert "too old resource version" in event["object"]["message"]

        # a continue token from before the history is 410 as well
        with pytest.raises(ApiException) as old_token:
            v1.list_service_for_all_namespaces(limit=1, _continue=token)
        assert old_token.value.status == 410

        # the recent past still replays
        recent = v1.list_service_for_all_namespaces().metadata.resource_version
        v1.delete_namespaced_service("s0", "default")
        events = list(watch.Watch().stream(v1.list_service_for_all_namespaces,
                                           resource_version=recent, timeout_seconds=1))
        assert [(e["type"], e["object"].metadata.name) for e in events] == [("DELETED", "s0")]
        api_client.close()


def test_concurrent_writers_get_distinct_versions_and_a_complete_watch(emu, v1, ns):
    rv = int(v1.list_namespaced_endpoints(ns).metadata.resource_version)
    errors = []

    def writer(k):
        try:
            for i in range(15):
                v1.create_namespaced_endpoints(ns, {"metadata": {"name": "c%d-%d" % (k, i)}})
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,), daemon=True) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert not errors and not any(t.is_alive() for t in threads)
    events = watch_lines(emu, "/api/v1/namespaces/%s/endpoints?watch=1&resourceVersion=%d"
                              "&timeoutSeconds=1" % (ns, rv))
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert len(events) == 60 and versions == sorted(set(versions))
    assert {e["type"] for e in events} == {"ADDED"}


def test_watch_timeout_seconds_ends_an_idle_stream(emu, ns):
    started = time.monotonic()
    rv = http(emu, "GET", "/api/v1/namespaces/%s/pods" % ns)[1]["metadata"]["resourceVersion"]
    events = watch_lines(emu, "/api/v1/namespaces/%s/pods?watch=true&resourceVersion=%s"
                              "&timeoutSeconds=1" % (ns, rv))
    assert events == []
    assert time.monotonic() - started < 4


def test_stop_ends_open_watches():
    small = Emulator(port=0).start()
    result = {}

    def read():
        try:
            result["events"] = watch_lines(small, "/api/v1/services?watch=true&resourceVersion="
                                                  "%d" % small.store.resource_version, 20)
        except Exception as exc:   # a closed connection is fine too
            result["error"] = exc

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    small.stop()
    thread.join(10)
    assert not thread.is_alive() and time.monotonic() - started < 5


# ---------------------------------------------------------------------------- the command line

def _read_line(proc, deadline):
    """Read one stdout line from ``proc`` within ``deadline`` seconds (None if none)."""
    box = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(deadline)
    return box[0] if box else None


def test_console_script_prints_its_url_ignores_sighup_and_stops_on_sigterm(tmp_path):
    manifest = tmp_path / "seed.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: seeded, namespace: default}\n"
        "spec: {clusterIP: None, ports: [{name: dns, port: 53, protocol: UDP}]}\n---\n"
        "apiVersion: v1\nkind: Endpoints\nmetadata: {name: seeded, namespace: default}\n"
        "subsets: [{addresses: [{ip: 10.5.0.1, hostname: one}], ports: [{name: dns, port: 53,"
        " protocol: UDP}]}]\n")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "kubeemu", "--port", "0", "--history", "50",
                             "--seed", str(manifest)], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = _read_line(proc, 15)
        assert line and line.startswith("kubeemu: serving the Kubernetes API emulator at "
                                        "http://127.0.0.1:"), (line, proc.poll())
        url = line.rsplit(" ", 1)[1].strip()
        proc.send_signal(signal.SIGHUP)  # ignored (by default it would kill the process)
        with urllib.request.urlopen(url + "/api/v1/namespaces/default/services/seeded",
                                    timeout=5) as resp:
            assert json.loads(resp.read())["spec"]["clusterIP"] == "None"
        with urllib.request.urlopen(url + "/apis/discovery.k8s.io/v1/namespaces/default/"
                                          "endpointslices", timeout=5) as resp:
            slices = json.loads(resp.read())["items"]
        assert [s["endpoints"][0]["hostname"] for s in slices] == ["one"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert "kubeemu: SIGHUP ignored: the emulator has nothing to reload" in \
            proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        proc.stdout.close()
        proc.stderr.close()


def test_main_callable_exists_for_the_console_script():
    from kubeemu.__main__ import main
    assert callable(main)
    with pytest.raises(SystemExit) as usage:
        main(["--history", "0"])
    assert usage.value.code == 2


# ---------------------------------------------------------------------------- kubectl

KUBECTL = shutil.which("kubectl")

MANIFEST = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default, labels: {app: web}}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}, {name: https, port: 443}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: web, namespace: default}
subsets:
- addresses: [{ip: 10.6.0.1, hostname: web-0}]
  ports: [{name: http, port: 8080}, {name: https, port: 443}]
"""


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed on this machine")
def test_kubectl_apply_get_watch_delete():
    home = tempfile.mkdtemp(prefix="kubeemu-kubectl-")
    try:
        with Emulator(port=0) as emulator:
            env = dict(os.environ, HOME=home, KUBECONFIG=os.devnull)
            base = ["--server=" + emulator.url, "--cache-dir=" + os.path.join(home, "cache"),
                    "--request-timeout=20s"]
            manifest = os.path.join(home, "web.yaml")
            with open(manifest, "w") as handle:
                handle.write(MANIFEST)

            def kubectl(*args):
                done = subprocess.run([KUBECTL, *args, *base], env=env, capture_output=True,
                                      text=True, timeout=60)
                assert done.returncode == 0, (args, done.stdout, done.stderr)
                return done.stdout

            watcher = subprocess.Popen(
                [KUBECTL, "get", "services", "-n", "default", "--watch", "--output-watch-events",
                 "-o", "json", *base], env=env, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True)
            try:
                assert "service/web created" in kubectl("apply", "--validate=false", "-f",
                                                        manifest)
                got = json.loads(kubectl("get", "svc", "web", "-n", "default", "-o", "json"))
                assert got["spec"]["clusterIP"].startswith("10.96.")
                slices = json.loads(kubectl("get", "endpointslices", "-n", "default",
                                            "-l", SERVICE_NAME + "=web", "-o", "json"))
                assert [s["endpoints"][0]["hostname"] for s in slices["items"]] == ["web-0"]
                # a re-apply with one changed port is a strategic merge patch
                with open(manifest, "w") as handle:
                    handle.write(MANIFEST.replace("targetPort: 8080", "targetPort: 8081"))
                assert "service/web configured" in kubectl("apply", "--validate=false", "-f",
                                                           manifest)
                ports = json.loads(kubectl("get", "svc/web", "-o", "json"))["spec"]["ports"]
                assert [(p["port"], p["targetPort"]) for p in ports] == [(80, 8081), (443, 443)]
                assert 'service "web" deleted' in kubectl("delete", "-f", manifest)
                deadline = time.monotonic() + 15
                events = []
                decoder = json.JSONDecoder()
                buffer = ""
                while time.monotonic() < deadline and not any(
                        e["type"] == "DELETED" and e["object"]["metadata"]["name"] == "web"
                        for e in events):
                    line = _read_line(watcher, max(0.1, deadline - time.monotonic()))
                    if not line:
                        break
                    buffer += line
                    try:
                        event, end = decoder.raw_decode(buffer.strip())
                    except ValueError:
                        continue
                    events.append(event)
                    buffer = buffer.strip()[end:]
            finally:
                watcher.terminate()
                try:
                    watcher.wait(10)
                except subprocess.TimeoutExpired:
                    watcher.kill()
                    watcher.wait(5)
                watcher.stdout.close()
                watcher.stderr.close()
            web = [e["type"] for e in events if e["object"]["metadata"]["name"] == "web"]
            assert web == ["ADDED", "MODIFIED", "DELETED"], events
    finally:
        shutil.rmtree(home, ignore_errors=True)
