"""Unit tests of kube2sky's object -> records mapping and its incremental desired state."""

from __future__ import annotations

import ipaddress
import json
import logging
import random

import pytest

from kube2sky.records import (Layout, from_endpoints, from_slices, pod_records,
                              service_records)
from kube2sky.state import DesiredState
from kube2sky.records import fingerprint

L = Layout("cluster.local", ttl=30)
BASE = "/skydns/local/cluster"


def value(host, port=0):
    fields = {"host": host}
    if port:
        fields["port"] = port
    fields.update(priority=10, weight=10, ttl=30, targetstrip=0, owner="kube2sky")
    return json.dumps(fields, separators=(",", ":"))


def svc(name, ns="default", cluster_ip="10.0.0.1", ports=(), **spec):
    body = {"clusterIP": cluster_ip, "ports": list(ports), **spec}
    return {"metadata": {"namespace": ns, "name": name}, "spec": body}


def test_cluster_ip_service_matches_kube2sky_2016_layout():
    records, problems = service_records(L, svc("web", ports=[
        {"name": "http", "port": 80, "protocol": "TCP"}, {"port": 8080}]), None)
    assert problems == []
    # c88f1059 is the reference's check value for host 10.0.0.1
    assert records == {
        f"{BASE}/svc/default/web/c88f1059": value("10.0.0.1"),
        f"{BASE}/svc/default/web/_tcp/_http/c88f1059":
            value("web.default.svc.cluster.local.", 80),
        "/skydns/arpa/in-addr/10/0/0/1": value("web.default.svc.cluster.local."),
    }


def test_reference_check_labels():
    for ip, label in (("10.3.0.214", "6ead029a"), ("10.244.1.10", "eab4ec")):
        records, _ = service_records(L, svc("x", cluster_ip=ip), None)
        assert f"{BASE}/svc/default/x/{label}" in records


def test_dual_stack_cluster_ips():
    records, _ = service_records(L, svc("web", clusterIPs=["10.0.0.1", "fd00::1"]), None)
    hosts = sorted(json.loads(v)["host"] for k, v in records.items() if "/svc/" in k)
    assert hosts == ["10.0.0.1", "fd00::1"]
    assert any(k.startswith("/skydns/arpa/ip6/f/d/0/0/") for k in records)


# -- k8s_external ------------------------------------------------------------------------

EXT = "/skydns/org/example"
XL = Layout("cluster.local", ttl=30, external_zones=["example.org."], external_ttl=5,
            external_ns_service=("kube-system", "dns-external"))


def fnv(text):
    h = 0x811C9DC5
    for byte in text.encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return "%x" % h


def ext_value(host, port=0, ttl=5):
    fields = {"host": host}
    if port:
        fields["port"] = port
    fields.update(priority=10, weight=10, ttl=ttl, targetstrip=0)
    plain = json.dumps(fields, separators=(",", ":"))
    return plain[:-1] + ',"owner":"kube2sky"}', fnv(plain)


def external(records):
    return {k: v for k, v in records.items() if k.startswith(EXT)}


def balancer(*ingress):
    return {"loadBalancer": {"ingress": list(ingress)}}


def test_external_addresses_of_a_load_balancer():
    """externalIPs first, then the ingress IPs; one leaf each (label: FNV-1a of the value
    without the owner, TTL 5 as CoreDNS's k8s_external), SRV per named port."""
    service = dict(svc("web", ports=[{"name": "http", "port": 80, "protocol": "TCP"},
                                     {"port": 8080}], type="LoadBalancer",
                       externalIPs=["198.51.100.7"]),
                   status=balancer({"ip": "203.0.113.10"}, {"ip": "2001:db8::10"}))
    records, problems = service_records(XL, service, None)
    assert problems == []
    first, first_label = ext_value("198.51.100.7")
    second, second_label = ext_value("203.0.113.10")
    third, third_label = ext_value("2001:db8::10")
    assert external(records) == {
        f"{EXT}/default/web/{first_label}": first,
        f"{EXT}/default/web/{second_label}": second,
        f"{EXT}/default/web/{third_label}": third,
        f"{EXT}/default/web/_tcp/_http/{first_label}": ext_value("web.default.example.org.",
                                                                 80)[0],
    }
    # The cluster records are what they are without the zone.
    assert {k: v for k, v in records.items() if not k.startswith(EXT)} == \
        service_records(L, service, None)[0]


@pytest.mark.parametrize("ingress, want", [
    ([{"hostname": "LB.example.net"}], "lb.example.net."),
    ([{"hostname": "a.example.net."}, {"hostname": "b.example.net"}], "a.example.net."),
])
def test_an_ingress_hostname_is_a_cname_when_there_is_no_address(ingress, want):
    records, _ = service_records(XL, dict(svc("lb"), status=balancer(*ingress)), None)
    value, label = ext_value(want)
    assert external(records) == {f"{EXT}/default/lb/{label}": value}
    with_ip = dict(svc("lb"), status=balancer(*ingress, {"ip": "203.0.113.9"}))
    hosts = [json.loads(v)["host"] for v in external(service_records(XL, with_ip, None)[0])
             .values()]
    assert hosts == ["203.0.113.9"]


@pytest.mark.parametrize("service", [
    svc("plain"),                                                   # no external address
    dict(svc("pending", type="LoadBalancer"), status={"loadBalancer": {}}),
    dict(svc("odd"), status="odd"), dict(svc("odd2"), status={"loadBalancer": "x"}),
    dict(svc("odd3"), status=balancer("x", {"ip": None})),
    svc("headless", cluster_ip="None", externalIPs=["198.51.100.8"]),
    dict(svc("ext", cluster_ip=None, type="ExternalName", externalName="x.example."),
         status=balancer({"ip": "203.0.113.11"})),
])
def test_services_without_usable_external_addresses_have_none(service):
    records, problems = service_records(XL, service, None)
    assert external(records) == {}
    assert problems == []


def test_a_bad_external_ip_is_a_problem_and_the_others_stay():
    records, problems = service_records(XL, svc("web", externalIPs=["300.1.1.1",
                                                                    "198.51.100.7"]), None)
    assert problems == ["service default/web: bad external IP '300.1.1.1'"]
    assert [json.loads(v)["host"] for v in external(records).values()] == ["198.51.100.7"]


def test_a_port_without_a_valid_number_has_no_srv_in_either_zone():
    """The cluster records skip a named port numbered 70000 with a problem; the external
    zone skipped it only when the number was not an integer, and wrote its SRV."""
    records, problems = service_records(XL, svc("web", externalIPs=["198.51.100.7"], ports=[
        {"name": "http", "port": 80}, {"name": "big", "port": 70000}]), None)
    assert problems == ["service default/web: port big has no valid number"]
    srv = sorted(k.split("/")[-3:-1] for k in records if "/_tcp/" in k)
    assert srv == [["_tcp", "_http"], ["_tcp", "_http"]]  # the cluster's and the zone's


def test_the_name_server_service_is_the_zones_ns():
    service = dict(svc("dns-external", ns="kube-system", type="LoadBalancer"),
                   status=balancer({"ip": "203.0.113.53"}))
    value, label = ext_value("203.0.113.53")
    assert external(service_records(XL, service, None)[0]) == {
        f"{EXT}/kube-system/dns-external/{label}": value,
        f"{EXT}/dns/ns/ns1": value,
    }


def test_no_external_zone_no_external_records():
    service = dict(svc("web", externalIPs=["198.51.100.7"]),
                   status=balancer({"ip": "203.0.113.10"}))
    assert external(service_records(L, service, None)[0]) == {}
    assert XL.scopes() == [f"{BASE}/", "/skydns/arpa/", f"{EXT}/"]


def test_external_name_is_a_leaf_at_the_service_key():
    records, _ = service_records(L, svc("ext", cluster_ip=None, type="ExternalName",
                                        externalName="www.example.com"), None)
    assert records == {f"{BASE}/svc/default/ext": value("www.example.com.")}


def endpoints(subsets, annotations=None):
    meta = {"namespace": "default", "name": "db"}
    if annotations:
        meta["annotations"] = annotations
    return {"metadata": meta, "subsets": subsets}


def test_headless_service_with_hostnames_and_annotation():
    ep = endpoints([{
        "addresses": [{"ip": "10.244.1.5", "hostname": "pg-0"}, {"ip": "10.244.2.7"},
                      {"ip": "10.244.3.9"}],
        "notReadyAddresses": [{"ip": "10.244.4.4"}],
        "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}, {"port": 9}],
    }], annotations={"endpoints.beta.kubernetes.io/hostnames-map":
                     json.dumps({"10.244.2.7": {"HostName": "pg-1"}})})
    records, problems = service_records(L, svc("db", cluster_ip="None"), from_endpoints(ep))
    assert problems == []
    hashed = [k for k in records if k.startswith(f"{BASE}/svc/default/db/")
              and "/_" not in k and k.rsplit("/", 1)[1] not in ("pg-0", "pg-1", "10-244-3-9")]
    assert len(hashed) == 1  # 10.244.3.9 gets the FNV label; the not-ready one nothing
    label = hashed[0].rsplit("/", 1)[1]
    assert records[f"{BASE}/svc/default/db/10-244-3-9"] == value("10.244.3.9")
    assert records[f"{BASE}/svc/default/db/pg-0"] == value("10.244.1.5")
    assert records[f"{BASE}/svc/default/db/pg-1"] == value("10.244.2.7")
    assert records[f"{BASE}/svc/default/db/_tcp/_pg/pg-0"] == value(
        "pg-0.db.default.svc.cluster.local.", 5432)
    assert records[f"{BASE}/svc/default/db/_tcp/_pg/{label}"] == value(
        f"{label}.db.default.svc.cluster.local.", 5432)
    assert records["/skydns/arpa/in-addr/10/244/1/5"] == value(
        "pg-0.db.default.svc.cluster.local.")
    assert not any("10.244.4.4" in v for v in records.values())


def test_publish_not_ready_addresses():
    ep = endpoints([{"notReadyAddresses": [{"ip": "10.244.4.4"}], "ports": []}])
    records, _ = service_records(L, svc("db", cluster_ip="None",
                                        publishNotReadyAddresses=True), from_endpoints(ep))
    assert value("10.244.4.4") in records.values()


def test_slices_merge_and_missing_ready_means_ready():
    def sl(name, eps, ports):
        return {"metadata": {"namespace": "default", "name": name,
                             "labels": {"kubernetes.io/service-name": "db"}},
                "addressType": "IPv4", "endpoints": eps, "ports": ports}
    slices = [sl("db-a", [{"addresses": ["10.1.0.1"], "hostname": "a"}],
                 [{"name": "pg", "port": 5432, "protocol": "TCP"}]),
              sl("db-b", [{"addresses": ["10.1.0.2"], "conditions": {"ready": False}},
                          {"addresses": ["10.1.0.3"], "conditions": {"ready": True}}],
                 [{"name": "pg", "port": 5432, "protocol": "TCP"}])]
    records, _ = service_records(L, svc("db", cluster_ip="None"), from_slices(slices))
    hosts = sorted({json.loads(v)["host"] for k, v in records.items()
                    if "/svc/" in k and "/_" not in k})
    assert hosts == ["10.1.0.1", "10.1.0.3"]


# -- headless endpoints without a hostname: also named by their dashed IP (CoreDNS) -------

def kube2sky_label(host):
    """The original kube2sky's leaf label, computed here: FNV-1a 32 of its value, hex."""
    text = ('{"host":"%s","priority":10,"weight":10,"ttl":30,"targetstrip":0}'
            % ipaddress.ip_address(host).compressed)
    h = 0x811C9DC5
    for byte in text.encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return format(h, "x")


def ptr_key(ip):
    return "/skydns/" + "/".join(reversed(ipaddress.ip_address(ip).reverse_pointer.split(".")))


def layout_before(name, endpoints, ports=(), ns="default"):
    """The headless layout as it was before dashed-IP names: per (ip, label or None) an
    address leaf named by the label or the hash, SRV leaves and a PTR naming that leaf."""
    key, fqdn = f"{BASE}/svc/{ns}/{name}", f"{name}.{ns}.svc.cluster.local."
    records = {}
    for ip, label in endpoints:
        host = ipaddress.ip_address(ip).compressed
        label = label or kube2sky_label(ip)
        records[f"{key}/{label}"] = value(host)
        records[ptr_key(ip)] = value(f"{label}.{fqdn}")
        for port_name, number in ports:
            records[f"{key}/_tcp/_{port_name}/{label}"] = value(f"{label}.{fqdn}", number)
    return records


def slice_of(name, service, endpoints, family="IPv4", ports=(("pg", 5432),)):
    return {"metadata": {"namespace": "default", "name": name,
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": family,
            "endpoints": [{"addresses": [ip], **({"hostname": h} if h else {})}
                          for ip, h in endpoints],
            "ports": [{"name": n, "port": p, "protocol": "TCP"} for n, p in ports]}


def test_headless_endpoints_without_hostname_also_get_their_dashed_ip_leaf():
    v4 = [("10.244.1.10", None), ("10.244.2.7", "pg-0"), ("10.244.3.3", "Not_A_Label")]
    v6 = [("fd00::1", None), ("fd00::2", "pg-1"),
          ("2001:0db8:0000:0000:0001:0000:0000:0007", None)]
    slices = [slice_of("db-v4", "db", v4), slice_of("db-v6", "db", v6, family="IPv6")]
    records, problems = service_records(L, svc("db", cluster_ip="None"), from_slices(slices))
    assert problems == ["endpoints default/db: hostname 'Not_A_Label' is not a DNS label; "
                        "using the hashed name"]
    before = layout_before("db", [(ip, None if h == "Not_A_Label" else h) for ip, h in v4 + v6],
                           [("pg", 5432)])
    # CoreDNS's names: the address text with "." and ":" as "-", IPv6 compressed as Go
    # prints it; the invalid hostname counts as none.
    dashed = {f"{BASE}/svc/default/db/10-244-1-10": value("10.244.1.10"),
              f"{BASE}/svc/default/db/10-244-3-3": value("10.244.3.3"),
              f"{BASE}/svc/default/db/fd00--1": value("fd00::1"),
              f"{BASE}/svc/default/db/2001-db8--1-0-0-7": value("2001:db8::1:0:0:7")}
    assert records == {**before, **dashed}
    # what was there stays exactly as it was: the hash leaves, SRV leaves and targets, PTRs
    assert {k: v for k, v in records.items() if k not in dashed} == before
    # endpoints with a hostname are named by it only
    for ip in ("10-244-2-7", "fd00--2"):
        assert not any(k.endswith(f"/{ip}") for k in records)


@pytest.mark.parametrize("order", ["hostname slice first", "hostname slice last"])
def test_a_hostname_equal_to_a_dashed_label_keeps_its_leaf(order):
    """A hostname may be 10-244-1-10: that name stays the hostname's, whatever the order
    the addresses come in; 10.244.1.10 (no hostname) keeps its hash leaf, SRV and PTR."""
    named = slice_of("db-a", "db", [("10.244.9.9", "10-244-1-10")])
    bare = slice_of("db-b", "db", [("10.244.1.10", None), ("10.244.1.11", None)])
    if order == "hostname slice last":
        named["metadata"]["name"], bare["metadata"]["name"] = "db-b", "db-a"
    records, _ = service_records(L, svc("db", cluster_ip="None"), from_slices([named, bare]))
    before = layout_before("db", [("10.244.9.9", "10-244-1-10"), ("10.244.1.10", None),
                                  ("10.244.1.11", None)], [("pg", 5432)])
    assert records == {**before, f"{BASE}/svc/default/db/10-244-1-11": value("10.244.1.11")}
    assert records[f"{BASE}/svc/default/db/10-244-1-10"] == value("10.244.9.9")
    # the same within one Endpoints subset, in either address order
    for addresses in ([{"ip": "10.244.9.9", "hostname": "10-244-1-10"}, {"ip": "10.244.1.10"}],
                      [{"ip": "10.244.1.10"}, {"ip": "10.244.9.9", "hostname": "10-244-1-10"}]):
        got, _ = service_records(L, svc("db", cluster_ip="None"), from_endpoints(endpoints(
            [{"addresses": addresses, "ports": [{"name": "pg", "port": 5432}]}])))
        assert got == layout_before("db", [("10.244.9.9", "10-244-1-10"), ("10.244.1.10", None)],
                                    [("pg", 5432)])


def test_dashed_leaves_only_for_published_addresses():
    ep = endpoints([{"addresses": [{"ip": "10.244.1.1"}],
                     "notReadyAddresses": [{"ip": "10.244.4.4"}], "ports": []}])
    records, _ = service_records(L, svc("db", cluster_ip="None"), from_endpoints(ep))
    assert records == {**layout_before("db", [("10.244.1.1", None)]),
                       f"{BASE}/svc/default/db/10-244-1-1": value("10.244.1.1")}
    records, _ = service_records(L, svc("db", cluster_ip="None", publishNotReadyAddresses=True),
                                 from_endpoints(ep))
    assert records == {**layout_before("db", [("10.244.1.1", None), ("10.244.4.4", None)]),
                       f"{BASE}/svc/default/db/10-244-1-1": value("10.244.1.1"),
                       f"{BASE}/svc/default/db/10-244-4-4": value("10.244.4.4")}


def test_endpoint_ip_names_off_writes_exactly_the_hashed_layout():
    """--endpoint-ip-names=false: the layout of before the dashed leaves, nothing else."""
    endpoints = from_endpoints({"metadata": {"namespace": "default", "name": "db"},
                                "subsets": [{"addresses": [{"ip": "10.244.1.10"},
                                                           {"ip": "10.244.2.20",
                                                            "hostname": "pg-1"}],
                                             "ports": [{"name": "pg", "port": 5432}]}]})
    on, _ = service_records(L, svc("db", cluster_ip="None"), endpoints)
    off, _ = service_records(Layout("cluster.local", ttl=30, endpoint_ip_names=False),
                             svc("db", cluster_ip="None"), endpoints)
    assert set(on) - set(off) == {f"{BASE}/svc/default/db/10-244-1-10"}
    assert all(on[k] == v for k, v in off.items())


def test_cluster_ip_services_get_no_dashed_leaf():
    records, _ = service_records(L, svc("web", cluster_ip="10.0.0.1"), None)
    assert not any("10-0-0-1" in k for k in records)


def test_a_hostname_given_or_taken_away_moves_the_dashed_leaf():
    state = DesiredState(L, use_slices=False)
    state.set_service(svc("db", cluster_ip="None"))
    meta = {"namespace": "default", "name": "db"}
    changes = state.set_endpoints({"metadata": meta, "subsets": [
        {"addresses": [{"ip": "10.244.1.10"}]}]})
    assert changes[f"{BASE}/svc/default/db/10-244-1-10"] == value("10.244.1.10")
    changes = state.set_endpoints({"metadata": meta, "subsets": [
        {"addresses": [{"ip": "10.244.1.10", "hostname": "pg-0"}]}]})
    assert changes == {f"{BASE}/svc/default/db/10-244-1-10": None,
                       f"{BASE}/svc/default/db/eab4ec": None,  # the reference's check label
                       f"{BASE}/svc/default/db/pg-0": value("10.244.1.10"),
                       "/skydns/arpa/in-addr/10/244/1/10":
                           value("pg-0.db.default.svc.cluster.local.")}
    changes = state.set_endpoints({"metadata": meta, "subsets": [
        {"addresses": [{"ip": "10.244.1.10", "hostname": "10-244-1-10"}]}]})
    assert changes == {f"{BASE}/svc/default/db/pg-0": None,
                       f"{BASE}/svc/default/db/10-244-1-10": value("10.244.1.10"),
                       "/skydns/arpa/in-addr/10/244/1/10":
                           value("10-244-1-10.db.default.svc.cluster.local.")}


def test_pod_records_v4_and_v6():
    pod = {"metadata": {"namespace": "ns", "name": "p"},
           "status": {"podIP": "10.244.7.7", "podIPs": [{"ip": "10.244.7.7"},
                                                         {"ip": "fd00::7"}]}}
    records, _ = pod_records(L, pod)
    keys = sorted(k.rsplit("/", 1)[0] for k in records)
    assert keys == [f"{BASE}/pod/ns/10-244-7-7", f"{BASE}/pod/ns/fd00--7"]


def test_host_network_pod_records_are_marked():
    """A hostNetwork pod has its node's IP: its record's leaf says so (skydns's autopath
    then never takes a query from that IP for this pod); the name and address are the
    same as any pod's."""
    pod = {"metadata": {"namespace": "kube-system", "name": "proxy"},
           "spec": {"hostNetwork": True}, "status": {"podIP": "192.0.2.1"}}
    records, problems = pod_records(L, pod)
    assert problems == []
    assert list(records) == [f"{BASE}/pod/kube-system/192-0-2-1/host-network"]
    plain, _ = pod_records(L, dict(pod, spec={"hostNetwork": False}))
    assert [k.rsplit("/", 1)[0] for k in plain] == [f"{BASE}/pod/kube-system/192-0-2-1"]
    assert list(plain.values()) == list(records.values())
    assert not any(k.endswith("/host-network") for k in plain)


@pytest.mark.parametrize("obj, reason", [
    (svc("noip", cluster_ip=""), "no clusterIP"),
    (svc("bad", cluster_ip="10.0.0.300"), "bad clusterIP"),
    (svc("ext", cluster_ip=None, type="ExternalName"), "without externalName"),
    ({"metadata": {}, "spec": {}}, "without namespace"),
])
def test_odd_services_are_skipped_with_a_reason(obj, reason):
    records, problems = service_records(L, obj, None)
    assert records == {} and reason in problems[0]


# -- the desired state ---------------------------------------------------------------------

def test_update_changes_only_what_changed():
    state = DesiredState(L, use_slices=False)
    state.set_service(svc("web", ports=[{"name": "http", "port": 80}]))
    changes = state.set_service(svc("web", ports=[{"name": "http", "port": 8080}]))
    assert list(changes) == [f"{BASE}/svc/default/web/_tcp/_http/c88f1059"]


def test_a_pod_that_becomes_odd_loses_its_records_and_the_state_stays_readable(caplog):
    """A pod whose podIPs turn into something pod_records cannot read: its record goes
    (as an odd service's do) with one line, instead of the pod being stored while its
    old record stayed, and every later read of the desired state raising."""
    state = DesiredState(L)
    good = {"metadata": {"namespace": "ns", "name": "p"}, "status": {"podIP": "10.244.0.7"}}
    [key] = state.set_pod(good)
    bad = {**good, "status": {"podIP": "10.244.0.7", "podIPs": 5}}
    assert state.set_pod(bad) == {key: None}
    assert dict(state.desired()) == {k: state.value(k) for k in state.index}
    assert key not in state.index
    assert [r.getMessage() for r in caplog.records if "ns/p" in r.getMessage()] == [
        "skipping pod ns/p: TypeError: 'int' object is not iterable"]
    assert state.set_pod(bad) == {}  # the same problem again: nothing new logged
    assert len([r for r in caplog.records if "ns/p" in r.getMessage()]) == 1


def test_shared_records_stay_while_any_owner_needs_them():
    state = DesiredState(L)
    pod = {"status": {"podIP": "10.244.0.9"}}
    a = state.set_pod({**pod, "metadata": {"namespace": "ns", "name": "a"}})
    b = state.set_pod({**pod, "metadata": {"namespace": "ns", "name": "b"}})
    assert len(a) == 1 and b == {}
    assert state.delete_pod({"metadata": {"namespace": "ns", "name": "a"}}) == {}
    gone = state.delete_pod({"metadata": {"namespace": "ns", "name": "b"}})
    assert list(gone.values()) == [None]


def test_ptr_owner_choice_is_deterministic():
    def build(order):
        state = DesiredState(L, use_slices=False)
        for name in order:
            state.set_service(svc(name, cluster_ip="None"))
            state.set_endpoints({"metadata": {"namespace": "default", "name": name},
                                 "subsets": [{"addresses": [{"ip": "10.9.9.9"}]}]})
        return state.value("/skydns/arpa/in-addr/10/9/9/9")
    assert build(["zz", "aa"]) == build(["aa", "zz"])
    assert "aa.default.svc" in json.loads(build(["zz", "aa"]))["host"]


def test_relist_removes_vanished_objects_and_dns_version_is_always_there():
    state = DesiredState(L, use_slices=False)
    state.replace("services", [svc("a"), svc("b", cluster_ip="10.0.0.2")])
    changes = state.replace("services", [svc("a")])
    assert set(changes.values()) == {None}
    assert state.desired()[f"{BASE}/dns-version"] == '{"text":"1.1.0","owner":"kube2sky"}'


def test_owner_index_agrees_with_a_plain_model_through_random_changes():
    """The index keeps a key's only owner bare and a dict only for shared keys; whatever
    the order of changes, the winners, the reported differences and ``desired()`` are
    those of the plain model: every key's {owner: value}, the smallest owner wins."""
    rng = random.Random(1203)
    owners = [("pod", "ns", f"p{i}") for i in range(5)] + [("svc", "ns", "s0")]
    keys = [f"/k{i}" for i in range(8)]
    model = {}  # owner -> records

    class ModelState(DesiredState):
        def records_of(self, owner):  # the owners' objects are the model's records here
            return dict(model.get(owner, {})) if owner in owners else super().records_of(owner)
    state = ModelState(L)

    def winners():
        out = {}
        for owner in sorted(model, reverse=True):
            out.update(model[owner])
        return out
    base = dict(state.desired())
    for _ in range(2000):
        owner = rng.choice(owners)
        records = {key: rng.choice(["a", "b"]) for key in rng.sample(keys, rng.randrange(4))}
        before = winners()
        if records:  # the owner's objects change first, as in set_pod and the others
            model[owner] = records
        else:
            model.pop(owner, None)
        after = winners()
        want = {key: after.get(key) for key in before.keys() | after.keys()
                if before.get(key) != after.get(key)}
        assert state._set_owner(owner, records) == want
        assert state.desired() == {**base, **after}
        assert all(state.value(key) == after.get(key) for key in keys)
    assert any(entry.__class__ is dict for entry in state.index.values())


def test_change_log_says_how_many_lines_it_left_out(caplog):
    from kube2sky.controller import ChangeLog
    now = [100.0]
    changes = ChangeLog(clock=lambda: now[0])
    obj = {"metadata": {"namespace": "ns", "name": "web"}}
    with caplog.at_level(logging.INFO, logger="kube2sky"):
        for _ in range(ChangeLog.LINES + 5):
            changes.note("endpointslices", obj, "MODIFIED", 3)
        assert len(caplog.records) == ChangeLog.LINES
        changes.flush()  # the window is not over: nothing yet
        now[0] += ChangeLog.WINDOW
        changes.flush()
    assert caplog.records[0].message == "endpointslices ns/web modified: 3 keys change"
    assert caplog.records[-1].message == \
        "... and 5 more object changes (15 keys) in the last 10s"


@pytest.mark.parametrize("text", ["10.0.0.1", "0.0.0.0", "255.255.255.255", "10.244.19.7",
                                  "1.2.3.04", "256.1.1.1", "1.2.3", "1.2.3.4.", " 1.2.3.4",
                                  "fd00::1", "::ffff:1.2.3.4", "2001:db8::10", "", "x"])
def test_the_ipv4_fast_path_agrees_with_ipaddress(text):
    from kube2sky.records import _ip, pod_label, reverse_key
    from skydns.record import name_to_key
    try:
        want = ipaddress.ip_address(text)
    except ValueError:
        want = None
    got = _ip(text)
    if want is None:
        assert got is None
        return
    assert str(got) == str(want) and pod_label(got) == pod_label(want)
    assert reverse_key(got) == name_to_key(want.reverse_pointer + ".")


def test_random_object_changes_keep_etcd_equal_to_a_fresh_build():
    """Only fingerprints of the desired values are kept, and a value is computed again
    from its owner's objects when needed (a key that becomes shared, a reconcile). Through
    random changes of services, slices and pods over few IPs and names (so that PTRs,
    pod records and hostnames collide), the changes reported, applied in order to a dict
    standing for etcd, give exactly what a state built afresh from the final objects
    wants, and so does ``desired()``."""
    rng = random.Random(2026)
    ips = [f"10.1.0.{i}" for i in range(1, 7)]
    state, etcd, held = DesiredState(L), {}, {}  # held: the objects now in the API

    def apply(changes):
        for key, new in changes.items():
            if new is None:
                etcd.pop(key, None)
            else:
                etcd[key] = new
    apply(state.desired())
    for step in range(600):
        name = rng.choice(["a", "b", "c"])
        kind = rng.choice(["services", "endpointslices", "pods"])
        if kind == "services":
            obj = svc(name, cluster_ip=rng.choice(["None", "10.0.0.1", rng.choice(ips)]),
                      ports=[{"name": "http", "port": rng.choice([80, 81])}])
        elif kind == "endpointslices":
            obj = {"metadata": {"namespace": "default", "name": f"{name}-{rng.randrange(2)}",
                                "labels": {"kubernetes.io/service-name": rng.choice("abc")}},
                   "addressType": "IPv4", "ports": [{"name": "http", "port": 80}],
                   "endpoints": [{"addresses": [ip], "hostname": rng.choice(["", "h", "k"])}
                                 for ip in rng.sample(ips, rng.randrange(3))]}
        else:
            obj = {"metadata": {"namespace": "default", "name": name},
                   "status": {"podIP": rng.choice(ips)}}
        ident = (kind, obj["metadata"]["name"])
        if rng.random() < 0.3 and ident in held:
            apply(state.handle(kind, "DELETED", held.pop(ident)))
        else:
            held[ident] = obj
            apply(state.handle(kind, "MODIFIED", obj))
        assert dict(state.desired().items()) == etcd
        if step % 5 == 0:  # what a reconcile finds different, shared keys included
            prints = {key: fingerprint(value) for key, value in etcd.items()}
            assert state.desired().differing(prints) == []
            stale = random.Random(step).choice(sorted(etcd))
            prints[stale] = fingerprint("an older value")
            assert state.desired().differing(prints) == [stale]
    fresh = DesiredState(L)
    for (kind, _), obj in sorted(held.items(), key=lambda item: item[0]):
        fresh.handle(kind, "ADDED", obj)
    assert dict(fresh.desired().items()) == etcd
    assert any(entry.__class__ is dict for entry in state.index.values())


def test_fnv_tail_continues_any_state_as_the_byte_loop_does():
    from skydns.record import Fnv1a32Tail, fnv1a32
    rng = random.Random(77)
    for _ in range(2000):
        tail = bytes(rng.randrange(256) for _ in range(rng.randrange(70)))
        state = rng.randrange(1 << 32)
        assert Fnv1a32Tail(tail).extend(state) == fnv1a32(tail, state)


@pytest.mark.parametrize("host", ["10.0.0.1", "10.244.19.7", "255.255.255.255", "fd00::1",
                                  "2001:db8::10", "0.0.0.0"])
@pytest.mark.parametrize("ttl", [0, 5, 30, 3600])
def test_address_labels_are_the_original_kube2sky_hash(host, ttl):
    from kube2sky.records import address_leaf
    from skydns.record import encode_record, fnv1a32_label
    layout = Layout("cluster.local", ttl=ttl)
    label, value = address_leaf(layout, ipaddress.ip_address(host))
    assert label == fnv1a32_label(encode_record(host, ttl=ttl))
    assert value == encode_record(host, ttl=ttl, owner="kube2sky")


def test_address_labels_hashed_from_a_remembered_prefix_are_the_original_hash():
    """Addresses that share their text up to the last separator (a subnet) continue one
    remembered FNV state: the label must still be the hash of the whole value."""
    from kube2sky.records import address_leaf
    from skydns.record import encode_record, fnv1a32_label
    rng = random.Random(9)
    hosts = [f"10.64.{rng.randrange(4)}.{rng.randrange(256)}" for _ in range(300)]
    hosts += [f"fd00::{rng.randrange(1 << 16):x}" for _ in range(100)]
    hosts += [f"2001:db8:{rng.randrange(3)}::{rng.randrange(1 << 16):x}" for _ in range(100)]
    for ttl in (30, 7):
        layout = Layout("cluster.local", ttl=ttl)
        for host in hosts:
            ip = ipaddress.ip_address(host)
            assert address_leaf(layout, ip)[0] == fnv1a32_label(encode_record(str(ip), ttl=ttl))


@pytest.mark.parametrize("fqdn", ["web.default.svc.cluster.local.", "a.b.svc.example.org.",
                                  'odd"na\\me.ns.svc.cluster.local.', "x.ns.svc.caf\u00e9."])
@pytest.mark.parametrize("ttl", [0, 30, 3600])
def test_target_values_are_the_encoded_records(fqdn, ttl):
    """A headless service's PTR and SRV values, joined around the label, are exactly what
    encoding each record gives, for any fqdn (one that JSON escapes included)."""
    from kube2sky.records import TargetValues
    layout = Layout("cluster.local", ttl=ttl)
    targets = TargetValues(layout, fqdn)
    for label in ["host-0", "a", "3f2a9c01", "10-244-1-7", "x" * 63]:
        for port in [0, 1, 80, 9090, 65535]:
            assert targets.value(label, port) == layout.value(f"{label}.{fqdn}", port=port)
