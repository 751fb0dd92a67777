"""kube2sky.slim: what is kept of an API object, and the msgspec decoders that build it.

The decoders must give exactly what json.loads + slim() gives, for the usual objects and
for odd ones (those go through json), and the records of a slim object must be those of
the object as the API sent it."""

from __future__ import annotations

import copy
import json
import logging

import pytest

from kube2sky.records import HOSTNAMES_ANNOTATION, Layout
from kube2sky.slim import NOT_READY, KindDecoder, Packed, slim, slim_pod
from kube2sky.state import DesiredState

MANAGED = [{"manager": "kube-controller-manager", "operation": "Update",
            "apiVersion": "v1", "time": "2026-12-04T19:05:43Z",
            "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {".": {}}}}}]


def service(name, ns="default", **spec):
    body = {"type": "ClusterIP", "clusterIP": "10.0.0.9", "clusterIPs": ["10.0.0.9"],
            "sessionAffinity": "None", "selector": {"app": name},
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080,
                       "appProtocol": "http"}], "ipFamilies": ["IPv4"]}
    body.update(spec)
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "uid": "u-1", "resourceVersion": "17",
                         "labels": {"app": name}, "managedFields": MANAGED,
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration":
                                         "{...}"}},
            "spec": body, "status": {"loadBalancer": {}}}


def endpoint_slice(service_name, name=None, ns="default", endpoints=None, **extra):
    obj = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": name or f"{service_name}-abc12", "namespace": ns,
                        "resourceVersion": "23", "generateName": f"{service_name}-",
                        "labels": {"kubernetes.io/service-name": service_name},
                        "ownerReferences": [{"kind": "Service", "name": service_name}],
                        "managedFields": MANAGED},
           "addressType": "IPv4",
           "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
           "endpoints": endpoints if endpoints is not None else [
               {"addresses": ["10.1.0.1"], "hostname": "a",
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "nodeName": "node-1", "targetRef": {"kind": "Pod", "name": "p-1"}},
               {"addresses": ["10.1.0.2"], "conditions": {"ready": False}},
               {"addresses": ["10.1.0.3"]}]}
    obj.update(extra)
    return obj


def pod(name, ip="10.2.0.7", ns="default", **status):
    body = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "192.0.2.1",
            "conditions": [{"type": "Ready", "status": "True"}]}
    body.update(status)
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": "31",
                         "managedFields": MANAGED, "labels": {"app": "x"}},
            "spec": {"containers": [{"name": "c", "image": "pause"}], "nodeName": "node-1"},
            "status": body}


def page(items, **metadata):
    return json.dumps({"kind": "List", "apiVersion": "v1",
                       "metadata": {"resourceVersion": "99", **metadata},
                       "items": items}).encode()


# -- what slim keeps, written out ---------------------------------------------------------

def test_slim_service_keeps_only_what_the_records_read():
    assert slim(service("web")) == {
        "metadata": {"namespace": "default", "name": "web", "labels": {"app": "web"}},
        "spec": {"type": "ClusterIP", "clusterIP": "10.0.0.9", "clusterIPs": ["10.0.0.9"],
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}


def test_slim_slice_keeps_addresses_hostnames_and_not_ready():
    kept = slim(endpoint_slice("web"))
    assert kept["endpoints"] == [{"addresses": ["10.1.0.1"], "hostname": "a"},
                                 {"addresses": ["10.1.0.2"], "conditions": {"ready": False}},
                                 {"addresses": ["10.1.0.3"]}]
    assert kept["endpoints"][1]["conditions"] is NOT_READY  # one shared dict
    assert kept["metadata"] == {"namespace": "default", "name": "web-abc12",
                                "labels": {"kubernetes.io/service-name": "web"}}


def test_slim_pod_keeps_its_ips_once():
    assert slim_pod(pod("p")) == {"metadata": {"namespace": "default", "name": "p"},
                                  "status": {"podIP": "10.2.0.7"}}
    dual = pod("q", podIPs=[{"ip": "10.2.0.8"}, {"ip": "fd00::8"}], podIP="10.2.0.8")
    assert slim_pod(dual)["status"] == {"podIP": "10.2.0.8",
                                        "podIPs": [{"ip": "10.2.0.8"}, {"ip": "fd00::8"}]}


def test_slim_keeps_a_load_balancers_addresses_and_external_ips():
    lb = service("lb", type="LoadBalancer", externalIPs=["198.51.100.7"])
    lb["status"] = {"loadBalancer": {"ingress": [
        {"ip": "203.0.113.10", "ipMode": "VIP", "ports": [{"port": 80, "protocol": "TCP"}]},
        {"hostname": "lb.example.net"}]}, "conditions": [{"type": "x"}]}
    slimmed = slim(lb)
    assert slimmed["status"] == {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"},
                                                              {"hostname": "lb.example.net"}]}}
    assert slimmed["spec"]["externalIPs"] == ["198.51.100.7"]
    assert "status" not in slim(service("plain"))  # {"loadBalancer": {}}: nothing kept
    assert slim(slimmed) == slimmed
    decoder = KindDecoder("services")
    assert decoder.page(json.dumps({"items": [lb]}).encode())[0] == [slimmed]
    odd = dict(lb, status={"loadBalancer": {"ingress": "odd"}})
    assert decoder.page(json.dumps({"items": [odd]}).encode())[0] == [slim(odd)]


def test_slim_pod_keeps_host_network_only_when_set():
    host = pod("h")
    host["spec"]["hostNetwork"] = True
    assert slim_pod(host)["spec"] == {"hostNetwork": True}
    off = pod("o")
    off["spec"]["hostNetwork"] = False
    for obj in (off, pod("p"), dict(pod("q"), spec="odd")):
        assert "spec" not in slim_pod(obj)
    decoder = KindDecoder("pods")
    assert decoder.page(json.dumps({"items": [host, off]}).encode())[0] == [
        slim_pod(host), slim_pod(off)]
    assert decoder.event(json.dumps({"type": "ADDED", "object": host}))[1] == slim_pod(host)


# -- the decoders give what json.loads + slim gives ---------------------------------------

def odd(obj, **changes):
    obj = copy.deepcopy(obj)
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = obj
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return obj


SERVICES = [
    service("web"),
    service("headless", clusterIP="None", clusterIPs=["None"], publishNotReadyAddresses=True),
    service("ext", type="ExternalName", externalName="example.org"),
    service("bare", ports=None),
    odd(service("null-spec"), spec=None),
    odd(service("text-spec"), spec="nonsense"),
    odd(service("dict-ports"), spec__ports={"name": "http"}),
    odd(service("text-port"), spec__ports=["80/TCP"]),
    odd(service("huge-port"), spec__ports__0__port=10 ** 30),
    odd(service("float-port"), spec__ports__0__port=80.5),
    odd(service("null-labels"), metadata__labels=None),
    odd(service("list-annotations"), metadata__annotations=["x"]),
    odd(service("ünïcode"), metadata__labels={"é": "\u2603"}),
    {"metadata": {"name": "no-spec", "namespace": "default"}},
]
SLICES = [
    endpoint_slice("web"),
    endpoint_slice("web", name="web-fqdn", addressType="FQDN"),
    endpoint_slice("web", name="web-empty", endpoints=[]),
    endpoint_slice("web", name="web-null", endpoints=None),
    odd(endpoint_slice("web", name="web-text"), endpoints=["10.1.0.9"]),
    odd(endpoint_slice("web", name="web-cond"), endpoints__0__conditions=None),
    odd(endpoint_slice("web", name="web-ready0"), endpoints__0__conditions={"ready": 0}),
    odd(endpoint_slice("web", name="web-nohost"), endpoints__0__hostname=""),
    odd(endpoint_slice("web", name="web-noaddr"), endpoints=[{"hostname": "z"}]),
    odd(endpoint_slice("web", name="web-portnull"), ports=None),
]
ENDPOINTS = [
    {"metadata": {"name": "web", "namespace": "default", "managedFields": MANAGED,
                  "annotations": {HOSTNAMES_ANNOTATION: '{"10.1.0.1":{"HostName":"a"}}',
                                  "other": "x"}},
     "subsets": [{"addresses": [{"ip": "10.1.0.1", "targetRef": {"kind": "Pod"}}],
                  "notReadyAddresses": [{"ip": "10.1.0.2"}],
                  "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]},
    {"metadata": {"name": "empty", "namespace": "default", "annotations": {}}},
]
PODS = [
    pod("p"),
    pod("dual", podIP="10.2.0.8", podIPs=[{"ip": "10.2.0.8"}, {"ip": "fd00::8"}]),
    pod("pending", podIP=None, podIPs=None),
    odd(pod("null-status"), status=None),
    odd(pod("text-ips"), status__podIPs="10.2.0.9"),
    {"metadata": {"name": "bare", "namespace": "default"}},
]
TABLE = [("services", SERVICES, slim), ("endpointslices", SLICES, slim),
         ("endpoints", ENDPOINTS, slim), ("pods", PODS, slim_pod)]


@pytest.mark.parametrize("kind,objects,slimmer", TABLE, ids=[t[0] for t in TABLE])
def test_page_decodes_each_object_as_json_and_slim_do(kind, objects, slimmer):
    decoder = KindDecoder(kind)
    for obj in objects:  # one at a time: an odd object sends only its own page to json
        items, metadata = decoder.page(page([obj]))
        assert items == [slimmer(json.loads(json.dumps(obj)))], obj["metadata"]["name"]
        assert metadata["resourceVersion"] == "99"
    items, metadata = decoder.page(page(objects, **{"continue": "tok"}))
    assert items == [slimmer(obj) for obj in objects]
    assert metadata["continue"] == "tok"


@pytest.mark.parametrize("kind,objects,slimmer", TABLE, ids=[t[0] for t in TABLE])
def test_slim_of_slim_changes_nothing(kind, objects, slimmer):
    for obj in objects:
        once = slimmer(obj)
        assert slimmer(copy.deepcopy(once)) == once


@pytest.mark.parametrize("kind,objects,slimmer", TABLE, ids=[t[0] for t in TABLE])
def test_packed_objects_read_back_as_kept_each_a_fresh_copy(kind, objects, slimmer):
    """What the state keeps (slim objects, and odd ones as sent) comes back equal from
    its JSON text, and a reader changing its copy changes nothing kept."""
    packed = Packed()
    kept = {(i, "x"): slimmer(obj) for i, obj in enumerate(objects)}
    kept[(-1, "odd")] = {"metadata": {"name": "caf\u00e9"}, "spec": {"f": 1.5, "n": None,
                                                                 "l": [True, -7, 2 ** 60]}}
    packed.update(kept)
    assert len(packed) == len(kept) and list(packed) == list(kept)
    assert dict(packed.items()) == kept and (-1, "odd") in packed
    packed[(-1, "odd")]["spec"]["f"] = 9
    assert packed[(-1, "odd")] == kept[(-1, "odd")]
    assert json.loads(packed.text((-1, "odd"))) == kept[(-1, "odd")]
    del packed[(-1, "odd")]
    assert (-1, "odd") not in packed and len(packed) == len(kept) - 1


def test_usual_pages_do_not_fall_back_to_json(caplog):
    caplog.set_level(logging.INFO, logger="kube2sky.slim")
    for kind, objects in (("services", SERVICES[:4]), ("endpointslices", SLICES[:4]),
                          ("endpoints", ENDPOINTS), ("pods", PODS[:3])):
        KindDecoder(kind).page(page(objects))
    assert caplog.records == []
    KindDecoder("services").page(page([odd(service("x"), spec="nonsense")]))
    assert len(caplog.records) == 1
    assert "services: a list page not in the usual shape" in caplog.records[0].getMessage()


def test_records_of_decoded_objects_are_those_of_the_objects_sent():
    """Everything the records read survives the decoding: the same desired state."""
    layout = Layout("cluster.local.", ttl=30)
    sent, decoded = DesiredState(layout), DesiredState(layout)
    services = SERVICES + [service("web2", clusterIP="None", clusterIPs=["None"])]
    slices = SLICES + [endpoint_slice("web2", name="web2-x"),
                       endpoint_slice("web2", name="web2-odd",
                                      endpoints=["10.1.0.9", {"addresses": ["10.1.0.8"]}])]
    for kind, objects in (("services", services), ("endpointslices", slices),
                          ("pods", PODS)):
        sent.apply_page(kind, copy.deepcopy(objects))
        decoded.apply_page(kind, KindDecoder(kind).page(page(objects))[0])
    assert len(sent.desired()) > 20
    # an odd endpoint costs its headless service none of its other records
    assert "/skydns/local/cluster/svc/default/web2/a" in sent.desired()
    assert "/skydns/local/cluster/svc/default/web2/10-1-0-8" in sent.desired()
    assert dict(decoded.desired().items()) == dict(sent.desired().items())


def test_events_are_slim_and_say_where_the_watch_goes_on():
    decoder = KindDecoder("services")
    line = json.dumps({"type": "MODIFIED", "object": service("web")})
    assert decoder.event(line) == ("MODIFIED", slim(service("web")), "17")
    odd_line = json.dumps({"type": "ADDED", "object": odd(service("x"), spec=None)})
    assert decoder.event(odd_line) == ("ADDED", slim(odd(service("x"), spec=None)), "17")
    bookmark = {"kind": "Service", "metadata": {"resourceVersion": "120",
                                                "annotations": {"k8s.io/initial-events-end":
                                                                "true"}}}
    assert decoder.event(json.dumps({"type": "BOOKMARK", "object": bookmark})) == (
        "BOOKMARK", bookmark, "120")
    status = {"kind": "Status", "status": "Failure", "code": 410, "reason": "Expired",
              "message": "too old resource version: 5 (99)"}
    assert decoder.event(json.dumps({"type": "ERROR", "object": status})) == (
        "ERROR", status, None)
    assert decoder.event('{"type": "ADDED"}') == ("ADDED", slim({}), None)
    pods = KindDecoder("pods")
    assert pods.event(json.dumps({"type": "DELETED", "object": pod("p")})) == (
        "DELETED", slim_pod(pod("p")), "31")


@pytest.mark.parametrize("body", [b"", b"not json", b"[1, 2]", b'{"items": [', b"\xff\xfe"])
def test_a_page_that_is_no_list_is_an_error(body):
    with pytest.raises(ValueError):
        KindDecoder("services").page(body)


@pytest.mark.parametrize("line", ["", "not json", '{"type": "ADDED", "object": {'])
def test_an_event_that_is_no_json_is_an_error(line):
    with pytest.raises(ValueError):
        KindDecoder("services").event(line)
