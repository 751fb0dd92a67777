"""End-to-end tests of kube2sky with real processes: the Kubernetes API emulator (kubeemu,
in this process), etcd, kube2sky and skydns (subprocesses, 127.0.0.1 only).

Objects are created, changed and deleted through the official kubernetes client; answers
are checked with dnspython against skydns, and etcd contents with etcdctl / etcd3. Expected
etcd contents are written out by hand here from the record layout of the reference
(``/work/shared/reference/kubernetes.md``); only the shared format functions
(``encode_record``, ``encode_text``, ``fnv1a32_label``) come from skydns.

Groups: one shared emulator with two stacks (etcd + skydns + kube2sky in the default
EndpointSlice mode, and one with ``--endpoints-source=endpoints``), each test in its own
namespace; tests that need exact etcd contents, restarts, a relist or outages get a fresh
emulator and kube2sky on a spare etcd that is wiped first.

What objects and events write to etcd, kind by kind (ExternalName, dual stack, moved
slices, duplicate hostnames, odd objects...), is tested in process against the exact
writes (tests/test_kube2sky_pipeline.py). Here: the whole path per transport (Services
with EndpointSlices, with v1 Endpoints, Pods) through skydns's answers, and each fault
(etcd down, the API server gone, 410, restarts, churn, flags and signals).
"""

from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import threading
import time

import dns.rcode
import dns.rdatatype
import pytest
from kubernetes import client

from procs import BIN, Etcd, Kube2sky, Skydns, Upstream, wait_for  # noqa: E402
from kubeemu import Emulator  # noqa: E402
from skydns.record import encode_record, encode_text, fnv1a32_label  # noqa: E402

BASE = "/skydns/local/cluster"
MARKERS = "/kube2sky/keys"
DOMAIN = "cluster.local"
ETCDCTL = os.path.join(BIN, "etcdctl")


# -- the expected records, written out from the reference's table -------------------------

def val(host, port=0):
    return encode_record(host, port=port, ttl=30, owner="kube2sky")


def plain(host, port=0):
    """A value as the original kube2sky (and other writers) write it: no owner field."""
    return encode_record(host, port=port, ttl=30)


def plain_of(value):
    """``value`` without our owner field."""
    fields = json.loads(value)
    fields.pop("owner")
    return json.dumps(fields, separators=(",", ":"))


def lbl(ip):
    return fnv1a32_label(encode_record(ip, ttl=30))  # the original kube2sky's hash


def ptr_key(ip):
    assert ":" not in ip
    return "/skydns/arpa/in-addr/" + "/".join(ip.split("."))


def cluster_ip_keys(ns, name, ip, ports=()):
    """ports: (name, number, protocol lower-case)."""
    fqdn = f"{name}.{ns}.svc.{DOMAIN}."
    keys = {f"{BASE}/svc/{ns}/{name}/{lbl(ip)}": val(ip), ptr_key(ip): val(fqdn)}
    for pname, number, proto in ports:
        keys[f"{BASE}/svc/{ns}/{name}/_{proto}/_{pname}/{lbl(ip)}"] = val(fqdn, number)
    return keys


def headless_keys(ns, name, endpoints, ports=()):
    """endpoints: (ip, hostname or None) of ready addresses."""
    keys = {}
    for ip, hostname in endpoints:
        label = hostname or lbl(ip)
        target = f"{label}.{name}.{ns}.svc.{DOMAIN}."
        keys[f"{BASE}/svc/{ns}/{name}/{label}"] = val(ip)
        if not hostname:  # also named by its dashed IP, as in CoreDNS
            keys[f"{BASE}/svc/{ns}/{name}/{ip.replace('.', '-')}"] = val(ip)
        keys[ptr_key(ip)] = val(target)
        for pname, number, proto in ports:
            keys[f"{BASE}/svc/{ns}/{name}/_{proto}/_{pname}/{label}"] = val(target, number)
    return keys


def pod_keys(ns, ip):
    return {f"{BASE}/pod/{ns}/{ip.replace('.', '-')}/{lbl(ip)}": val(ip)}


def external_keys(ns, name, target):
    return {f"{BASE}/svc/{ns}/{name}": val(target.rstrip(".") + ".")}


# What every fresh emulator holds: default/kubernetes (10.96.0.1, https 443), dns-version.
BASELINE = {**cluster_ip_keys("default", "kubernetes", "10.96.0.1", [("https", 443, "tcp")]),
            f"{BASE}/dns-version": encode_text("1.1.0", owner="kube2sky")}


# -- etcd and DNS helpers ------------------------------------------------------------------

def etcd_dump(etcd, prefix):
    """{key: value} under ``prefix``, read with etcdctl."""
    import base64
    out = subprocess.run([ETCDCTL, f"--endpoints={etcd.url}", "get", "--prefix", prefix,
                          "-w", "json"], capture_output=True, text=True, timeout=20,
                         check=True).stdout
    kvs = json.loads(out).get("kvs") or []
    return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode()
            for kv in kvs}


def skydns_keys(etcd):
    return etcd_dump(etcd, "/skydns/")


def marker_keys(etcd):
    return {k[len(MARKERS):]: v for k, v in etcd_dump(etcd, MARKERS + "/").items()}


def wait_etcd_equals(etcd, expected, timeout=20.0, extra=None):
    """Wait until everything under /skydns/ (minus ``extra`` foreign keys, which must be
    there unchanged) equals ``expected`` (whose values carry kube2sky's owner field); no
    ownership marker of older versions is left."""
    extra = extra or {}
    state = {}

    def check():
        state["actual"] = skydns_keys(etcd)
        state["markers"] = marker_keys(etcd)
        return state["actual"] == {**expected, **extra} and not state["markers"]
    try:
        wait_for(check, timeout=timeout, interval=0.1, what="etcd to equal the desired state")
    except TimeoutError:
        actual, markers = state.get("actual", {}), state.get("markers", {})
        want = {**expected, **extra}
        missing = {k: v for k, v in want.items() if actual.get(k) != v}
        stale = {k: v for k, v in actual.items() if k not in want}
        raise AssertionError(f"etcd differs from the desired state:\nmissing/wrong: {missing}"
                             f"\nstale: {stale}\nmarkers left: {markers}") from None


def answer(sky, name, rdtype="A"):
    """(rcode text, sorted rdata texts of the answer records of type ``rdtype``)."""
    response = sky.query(name, rdtype)
    want = dns.rdatatype.from_text(rdtype)
    data = sorted(rd.to_text() for rrset in response.answer if rrset.rdtype == want
                  for rd in rrset)
    return dns.rcode.to_text(response.rcode()), data


def converge(sky, name, rdtype, expected, timeout=15.0):
    """Wait until skydns answers ``name``/``rdtype`` with exactly ``expected`` (a list of
    rdata texts: NOERROR) or, for ``expected == "NXDOMAIN"``, NXDOMAIN."""
    seen = {}

    def check():
        rcode, data = answer(sky, name, rdtype)
        seen["last"] = (rcode, data)
        if expected == "NXDOMAIN":
            return rcode == "NXDOMAIN"
        return rcode == "NOERROR" and data == sorted(expected)
    try:
        wait_for(check, timeout=timeout, interval=0.05, what=f"{name} {rdtype}")
    except TimeoutError:
        raise AssertionError(f"{name} {rdtype}: wanted {expected}, last answer "
                             f"{seen.get('last')}") from None


def srv_targets(sky, name):
    """SRV answers as sorted (port, target) pairs (priority/weight are skydns's business)."""
    rcode, data = answer(sky, name, "SRV")
    return rcode, sorted((int(d.split()[2]), d.split()[3]) for d in data)


def converge_srv(sky, name, expected, timeout=15.0):
    seen = {}

    def check():
        seen["last"] = srv_targets(sky, name)
        return seen["last"] == ("NOERROR", sorted(expected))
    try:
        wait_for(check, timeout=timeout, interval=0.05, what=f"{name} SRV")
    except TimeoutError:
        raise AssertionError(f"{name} SRV: wanted {sorted(expected)}, last {seen}") from None


def reverse(ip):
    return ".".join(reversed(ip.split("."))) + ".in-addr.arpa."


def svc_fqdn(name, ns):
    return f"{name}.{ns}.svc.{DOMAIN}."


# -- Kubernetes objects through the official client ----------------------------------------

class Kube:
    def __init__(self, url):
        self.api = client.ApiClient(client.Configuration(host=url))
        self.core = client.CoreV1Api(self.api)
        self.discovery = client.DiscoveryV1Api(self.api)

    def service(self, ns, name, ports=(), cluster_ip=None, **spec):
        body = {"metadata": {"name": name}, "spec": {"ports": list(ports), **spec}}
        if cluster_ip:
            body["spec"]["clusterIP"] = cluster_ip
        return self.core.create_namespaced_service(ns, body)

    def headless(self, ns, name, ports=(), **spec):
        return self.service(ns, name, ports, cluster_ip="None", **spec)

    def endpoints(self, ns, name, ready=(), not_ready=(), ports=(), annotations=None,
                  replace=False):
        """ready/not_ready: (ip, hostname or None)."""
        def addresses(items):
            return [{"ip": ip, **({"hostname": h} if h else {})} for ip, h in items]
        subset = {"addresses": addresses(ready), "ports": list(ports)}
        if not_ready:
            subset["notReadyAddresses"] = addresses(not_ready)
        body = {"metadata": {"name": name, "annotations": annotations or {}},
                "subsets": [subset] if (ready or not_ready) else []}
        if replace:
            return self.core.replace_namespaced_endpoints(name, ns, body)
        return self.core.create_namespaced_endpoints(ns, body)

    def set_ports(self, ns, name, ports):
        """Replace a service's ports (a strategic merge patch would merge them by number)."""
        return self.core.patch_namespaced_service(name, ns, [
            {"op": "replace", "path": "/spec/ports", "value": list(ports)}])

    def pod(self, ns, name, *ips):
        self.core.create_namespaced_pod(ns, {
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "registry.invalid/app"}]}})
        if ips:
            self.pod_ips(ns, name, *ips)

    def pod_ips(self, ns, name, *ips):
        # a JSON patch: a strategic merge patch would merge podIPs by "ip"
        self.core.patch_namespaced_pod_status(name, ns, [
            {"op": "add", "path": "/status/phase", "value": "Running"},
            {"op": "add", "path": "/status/podIP", "value": ips[0]},
            {"op": "add", "path": "/status/podIPs", "value": [{"ip": ip} for ip in ips]}])

    def slice(self, ns, name, service, endpoints, ports=(), address_type="IPv4"):
        return self.discovery.create_namespaced_endpoint_slice(ns, {
            "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
            "addressType": address_type, "endpoints": endpoints, "ports": list(ports)})


# -- fixtures ------------------------------------------------------------------------------

class Stack:
    def __init__(self, emu, etcd, upstream, sky, k2s):
        self.emu, self.etcd, self.upstream, self.sky, self.k2s = emu, etcd, upstream, sky, k2s
        self.kube = Kube(emu.url)


@pytest.fixture(scope="module")
def emu():
    server = Emulator(port=0).start()
    yield server
    server.stop()


def _stack(emu, *flags):
    """etcd, skydns and kube2sky. skydns forwards what it does not hold (reverse names of
    addresses without a PTR record) to an upstream that knows nothing: NXDOMAIN."""
    etcd = Etcd().start()
    upstream = Upstream({})
    sky = k2s = None
    try:
        sky = Skydns(etcd.url, f"-domain={DOMAIN}.", upstream=upstream.address).start()
        k2s = Kube2sky(emu.url, etcd.url, *flags).start()
        return Stack(emu, etcd, upstream, sky, k2s)
    except Exception:
        for proc in (k2s, sky, etcd, upstream):
            if proc is not None:
                proc.close()
        raise


def _close(stack):
    assert stack.k2s.alive(), "kube2sky exited:\n" + stack.k2s.output()[-3000:]
    stack.k2s.close()
    stack.sky.close()
    stack.etcd.close()
    stack.upstream.close()


@pytest.fixture(scope="module")
def stack(emu):
    """Shared: kube2sky in the default mode (auto: EndpointSlices, the emulator serves v1)."""
    s = _stack(emu)
    yield s
    _close(s)


@pytest.fixture(scope="module")
def ep_stack(emu):
    """Shared: kube2sky forced to v1 Endpoints."""
    s = _stack(emu, "--endpoints-source=endpoints")
    yield s
    _close(s)


@pytest.fixture(scope="module")
def spare_etcd():
    server = Etcd().start()
    yield server
    server.close()


class Fresh:
    """A fresh emulator and an emptied etcd; kube2sky/skydns started on demand."""

    def __init__(self, etcd, history=1000):
        self.etcd = etcd
        self.emu = Emulator(port=0, history=history).start()
        self.kube = Kube(self.emu.url)
        self.procs = []
        client_ = etcd.client()
        try:
            client_.delete_prefix("/skydns/")
            client_.delete_prefix("/kube2sky/")
        finally:
            client_.close()

    def kube2sky(self, *flags, start=True, **kwargs):
        proc = Kube2sky(self.emu.url, self.etcd.url, *flags, **kwargs)
        self.procs.append(proc)
        return proc.start() if start else proc

    def skydns(self):
        upstream = Upstream({})
        self.procs.append(upstream)
        proc = Skydns(self.etcd.url, f"-domain={DOMAIN}.", upstream=upstream.address)
        self.procs.append(proc)
        return proc.start()

    def close(self):
        for proc in reversed(self.procs):
            proc.close()
        if self.emu is not None:
            self.emu.stop()


@pytest.fixture
def fresh(spare_etcd):
    made = []

    def make(history=1000):
        f = Fresh(spare_etcd, history)
        made.append(f)
        return f
    yield make
    for f in made:
        f.close()
    if spare_etcd.proc is None:       # a test stopped it and failed before restarting
        spare_etcd.start()


def force_relist(emu, mutate):
    """Make every kube2sky watch fall behind the emulator's (small) history at once.

    The changes in ``mutate(store)`` plus some filler changes are committed while the store
    lock is held, so no watch can see them as events: each gets ERROR 410 Expired and must
    relist to learn about them. (Going through HTTP cannot outrun a watch: the emulator
    streams every event as it happens. And kube2sky sends timeoutSeconds, so the emulator's
    watch_timeout never ends its watches early.) ``emu`` needs a history smaller than the
    number of changes made here."""
    store = emu.store
    with store._cond:
        mutate(store)
        for i in range(store.history_size + 2):
            store.patch("namespaces", None, "kube-public",
                        {"metadata": {"annotations": {"e2e/filler": str(time.time()) + str(i)}}})


def log_lines(k2s, *words):
    return [line for line in k2s.output().splitlines() if all(w in line for w in words)]


def relists(k2s):
    """How many times kube2sky has listed services so far."""
    return len(log_lines(k2s, "listed", " services at resourceVersion"))


# -- 1. ClusterIP services -------------------------------------------------------------------

def test_cluster_ip_service_a_srv_ptr_update_delete(stack):
    ns, kube, sky = "e2e-cip", stack.kube, stack.sky
    web = kube.service(ns, "web", [{"name": "http", "port": 80, "protocol": "TCP"},
                                   {"name": "metrics", "port": 9090}])
    ip = web.spec.cluster_ip
    fqdn = svc_fqdn("web", ns)
    converge(sky, fqdn, "A", [ip])
    converge_srv(sky, f"_http._tcp.web.{ns}.svc.{DOMAIN}.", [(80, fqdn)])
    converge_srv(sky, f"_metrics._tcp.web.{ns}.svc.{DOMAIN}.", [(9090, fqdn)])
    converge(sky, reverse(ip), "PTR", [fqdn])

    # New port numbers and protocols; the address stays.
    kube.set_ports(ns, "web", [
        {"name": "http", "port": 8080, "protocol": "TCP"},
        {"name": "dns", "port": 53, "protocol": "UDP"}])
    converge_srv(sky, f"_http._tcp.web.{ns}.svc.{DOMAIN}.", [(8080, fqdn)])
    converge_srv(sky, f"_dns._udp.web.{ns}.svc.{DOMAIN}.", [(53, fqdn)])
    converge(sky, f"_metrics._tcp.web.{ns}.svc.{DOMAIN}.", "SRV", "NXDOMAIN")
    assert answer(sky, fqdn, "A") == ("NOERROR", [ip])

    kube.core.delete_namespaced_service("web", ns)
    for name, rdtype in ((fqdn, "A"), (f"_http._tcp.web.{ns}.svc.{DOMAIN}.", "SRV"),
                         (reverse(ip), "PTR")):
        converge(sky, name, rdtype, "NXDOMAIN")
    assert not [k for k in skydns_keys(stack.etcd) if f"/svc/{ns}/" in k]
    assert not [k for k in marker_keys(stack.etcd) if f"/svc/{ns}/" in k]


# -- 2. headless services, endpoints, pods, ExternalName, dns-version ------------------------

@pytest.mark.parametrize("mode", ["endpointslices", "endpoints"])
def test_headless_service_from_endpoints(request, mode):
    """v1 Endpoints objects; in the default mode kube2sky sees them through the emulator's
    mirrored EndpointSlices, with --endpoints-source=endpoints it reads them directly."""
    st = request.getfixturevalue("stack" if mode == "endpointslices" else "ep_stack")
    ns, kube, sky = f"e2e-headless-{mode}", st.kube, st.sky
    zone = f"db.{ns}.svc.{DOMAIN}."
    kube.headless(ns, "db", [{"name": "pg", "port": 5432}])
    kube.endpoints(ns, "db", ready=[("10.244.1.5", "pg-0"), ("10.244.2.7", None)],
                   not_ready=[("10.244.3.9", "pg-2")], ports=[{"name": "pg", "port": 5432}])
    hashed = lbl("10.244.2.7")
    converge(sky, zone, "A", ["10.244.1.5", "10.244.2.7"])
    converge(sky, f"pg-0.{zone}", "A", ["10.244.1.5"])
    converge(sky, f"{hashed}.{zone}", "A", ["10.244.2.7"])
    converge_srv(sky, f"_pg._tcp.{zone}", [(5432, f"pg-0.{zone}"), (5432, f"{hashed}.{zone}")])
    converge(sky, reverse("10.244.1.5"), "PTR", [f"pg-0.{zone}"])
    converge(sky, reverse("10.244.2.7"), "PTR", [f"{hashed}.{zone}"])
    # not ready: not published
    assert answer(sky, f"pg-2.{zone}", "A")[0] == "NXDOMAIN"
    assert answer(sky, reverse("10.244.3.9"), "PTR")[0] == "NXDOMAIN"

    # publishNotReadyAddresses publishes it
    kube.core.patch_namespaced_service("db", ns, {"spec": {"publishNotReadyAddresses": True}})
    converge(sky, f"pg-2.{zone}", "A", ["10.244.3.9"])
    converge(sky, zone, "A", ["10.244.1.5", "10.244.2.7", "10.244.3.9"])
    kube.core.patch_namespaced_service("db", ns, {"spec": {"publishNotReadyAddresses": False}})
    converge(sky, f"pg-2.{zone}", "A", "NXDOMAIN")

    # an address moves: the old one disappears, nothing else changes
    kube.endpoints(ns, "db", ready=[("10.244.1.6", "pg-0"), ("10.244.2.7", None)],
                   ports=[{"name": "pg", "port": 5432}], replace=True)
    converge(sky, f"pg-0.{zone}", "A", ["10.244.1.6"])
    converge(sky, zone, "A", ["10.244.1.6", "10.244.2.7"])
    converge(sky, reverse("10.244.1.5"), "PTR", "NXDOMAIN")

    # endpoints gone: the service has no addresses
    kube.core.delete_namespaced_endpoints("db", ns)
    converge(sky, zone, "A", "NXDOMAIN")
    converge(sky, f"_pg._tcp.{zone}", "SRV", "NXDOMAIN")
    kube.core.delete_namespaced_service("db", ns)


def test_endpoint_slices_written_directly(stack, ep_stack):
    """Slices of one service are merged; conditions.ready missing means ready; an IPv6
    slice gives AAAA; deleting one slice removes only its addresses. kube2sky forced to v1
    Endpoints ignores the slices."""
    ns, kube, sky = "e2e-slices", stack.kube, stack.sky
    zone = f"cache.{ns}.svc.{DOMAIN}."
    kube.headless(ns, "cache", [{"name": "redis", "port": 6379}])
    ports = [{"name": "redis", "port": 6379, "protocol": "TCP"}]
    kube.slice(ns, "cache-a", "cache", [
        {"addresses": ["10.244.5.1"], "hostname": "r-0", "conditions": {"ready": True}},
        {"addresses": ["10.244.5.2"]}], ports)
    kube.slice(ns, "cache-b", "cache", [
        {"addresses": ["10.244.6.1"], "conditions": {"serving": True}},
        {"addresses": ["10.244.6.2"], "hostname": "r-9", "conditions": {"ready": False}}],
        ports)
    kube.slice(ns, "cache-v6", "cache", [
        {"addresses": ["fd00:10:244::7"], "hostname": "r-6"}], ports, address_type="IPv6")
    converge(sky, zone, "A", ["10.244.5.1", "10.244.5.2", "10.244.6.1"])
    converge(sky, zone, "AAAA", ["fd00:10:244::7"])
    converge(sky, f"r-0.{zone}", "A", ["10.244.5.1"])
    converge(sky, f"r-6.{zone}", "AAAA", ["fd00:10:244::7"])
    assert answer(sky, f"r-9.{zone}", "A")[0] == "NXDOMAIN"
    converge(sky, "7.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.4.4.2.0.0.1.0.0.0.0.d.f.ip6.arpa.",
             "PTR", [f"r-6.{zone}"])
    targets = {(6379, f"r-0.{zone}"), (6379, f"r-6.{zone}"),
               (6379, f"{lbl('10.244.5.2')}.{zone}"), (6379, f"{lbl('10.244.6.1')}.{zone}")}
    converge_srv(sky, f"_redis._tcp.{zone}", targets)

    kube.discovery.delete_namespaced_endpoint_slice("cache-b", ns)
    converge(sky, zone, "A", ["10.244.5.1", "10.244.5.2"])
    converge(sky, zone, "AAAA", ["fd00:10:244::7"])
    converge(sky, reverse("10.244.6.1"), "PTR", "NXDOMAIN")

    # kube2sky forced to v1 Endpoints: there are none for this service.
    assert answer(ep_stack.sky, zone, "A")[0] == "NXDOMAIN"
    assert not [k for k in skydns_keys(ep_stack.etcd) if f"/svc/{ns}/cache/" in k]


def test_pod_records(stack):
    ns, kube, sky = "e2e-pods", stack.kube, stack.sky
    kube.pod(ns, "one", "10.244.7.7")
    converge(sky, f"10-244-7-7.{ns}.pod.{DOMAIN}.", "A", ["10.244.7.7"])
    kube.pod(ns, "dual", "10.244.7.8", "fd00:10:244::7:8")
    converge(sky, f"10-244-7-8.{ns}.pod.{DOMAIN}.", "A", ["10.244.7.8"])
    converge(sky, f"fd00-10-244--7-8.{ns}.pod.{DOMAIN}.", "AAAA", ["fd00:10:244::7:8"])
    kube.pod(ns, "pending")          # no IP yet: no record, no harm
    kube.pod_ips(ns, "pending", "10.244.7.9")
    converge(sky, f"10-244-7-9.{ns}.pod.{DOMAIN}.", "A", ["10.244.7.9"])
    # a new IP replaces the old record
    kube.pod_ips(ns, "one", "10.244.7.17")
    converge(sky, f"10-244-7-17.{ns}.pod.{DOMAIN}.", "A", ["10.244.7.17"])
    converge(sky, f"10-244-7-7.{ns}.pod.{DOMAIN}.", "A", "NXDOMAIN")
    kube.core.delete_namespaced_pod("dual", ns)
    converge(sky, f"10-244-7-8.{ns}.pod.{DOMAIN}.", "A", "NXDOMAIN")
    converge(sky, f"fd00-10-244--7-8.{ns}.pod.{DOMAIN}.", "AAAA", "NXDOMAIN")


# -- 3. exact etcd contents ------------------------------------------------------------------

def scenario_one(kube, ns):
    kube.service(ns, "web", [{"name": "http", "port": 80}, {"port": 8080, "name": "alt"}],
                 cluster_ip="10.96.10.10")
    kube.service(ns, "plain", [{"port": 81}], cluster_ip="10.96.10.11")   # unnamed: no SRV
    kube.headless(ns, "db", [{"name": "pg", "port": 5432}])
    kube.endpoints(ns, "db", ready=[("10.244.1.5", "pg-0"), ("10.244.2.7", None)],
                   not_ready=[("10.244.3.9", "pg-2")], ports=[{"name": "pg", "port": 5432}])
    kube.core.create_namespaced_service(ns, {"metadata": {"name": "ext"}, "spec": {
        "type": "ExternalName", "externalName": "www.example.com."}})
    kube.pod(ns, "p1", "10.244.9.9")
    kube.pod(ns, "p-pending")
    return {**BASELINE,
            **cluster_ip_keys(ns, "web", "10.96.10.10", [("http", 80, "tcp"),
                                                         ("alt", 8080, "tcp")]),
            **cluster_ip_keys(ns, "plain", "10.96.10.11"),
            **headless_keys(ns, "db", [("10.244.1.5", "pg-0"), ("10.244.2.7", None)],
                            [("pg", 5432, "tcp")]),
            **external_keys(ns, "ext", "www.example.com"),
            **pod_keys(ns, "10.244.9.9")}


# -- 4. relist and restart -------------------------------------------------------------------

def test_relist_after_410_makes_etcd_exact(fresh):
    f = fresh(history=5)
    kube, ns = f.kube, "relist"
    k2s = f.kube2sky()
    kube.service(ns, "a", [{"name": "http", "port": 80}], cluster_ip="10.96.20.1")
    kube.service(ns, "b", [{"name": "http", "port": 80}], cluster_ip="10.96.20.2")
    kube.headless(ns, "h", [{"name": "pg", "port": 5432}])
    kube.endpoints(ns, "h", ready=[("10.244.20.1", "h-0"), ("10.244.20.2", None)],
                   ports=[{"name": "pg", "port": 5432}])
    kube.pod(ns, "p1", "10.244.21.1")
    kube.pod(ns, "p2", "10.244.21.2")
    wait_etcd_equals(f.etcd, {
        **BASELINE,
        **cluster_ip_keys(ns, "a", "10.96.20.1", [("http", 80, "tcp")]),
        **cluster_ip_keys(ns, "b", "10.96.20.2", [("http", 80, "tcp")]),
        **headless_keys(ns, "h", [("10.244.20.1", "h-0"), ("10.244.20.2", None)],
                        [("pg", 5432, "tcp")]),
        **pod_keys(ns, "10.244.21.1"), **pod_keys(ns, "10.244.21.2")})
    # seen as a watch event
    kube.set_ports(ns, "a", [
        {"name": "http", "port": 8080}])
    before = relists(k2s)

    def churn(store):   # never seen as events: only a relist can find these
        store.delete("services", ns, "b")
        store.delete("pods", ns, "p1")
        store.update("endpoints", {"metadata": {"name": "h", "namespace": ns}, "subsets": [{
            "addresses": [{"ip": "10.244.20.3", "hostname": "h-0"}],
            "ports": [{"name": "pg", "port": 5432}]}]}, ns)
        store.create("services", {"metadata": {"name": "c"}, "spec": {
            "clusterIP": "10.96.20.3", "ports": [{"name": "dns", "port": 53,
                                                  "protocol": "UDP"}]}}, ns)
        store.create("pods", {"metadata": {"name": "p3"}, "spec": {"containers": [
            {"name": "c", "image": "x"}]}, "status": {"podIP": "10.244.21.3"}}, ns)
    force_relist(f.emu, churn)
    wait_for(lambda: relists(k2s) > before, timeout=15, what="kube2sky to relist")
    assert log_lines(k2s, "410"), k2s.output()[-2000:]
    wait_etcd_equals(f.etcd, {
        **BASELINE,
        **cluster_ip_keys(ns, "a", "10.96.20.1", [("http", 8080, "tcp")]),
        **cluster_ip_keys(ns, "c", "10.96.20.3", [("dns", 53, "udp")]),
        **headless_keys(ns, "h", [("10.244.20.3", "h-0")], [("pg", 5432, "tcp")]),
        **pod_keys(ns, "10.244.21.2"), **pod_keys(ns, "10.244.21.3")})
    assert k2s.readiness()[0] == 200 and k2s.alive()
    metrics = k2s._get("/metrics")[1]
    lists = {line.split('"')[1]: float(line.rsplit(" ", 1)[1])
             for line in metrics.splitlines() if line.startswith("kube2sky_lists_total{")}
    assert lists["services"] == relists(k2s) > 1, lists  # the relist is counted
    assert set(lists) >= {"services", "pods"}


def test_410_is_reported_as_an_expired_resource_version(fresh):
    """ERROR 410 on a watch is a relist, not a failure (regression: the client's
    Watch.stream(deserialize=False) raised KeyError 'raw_object' on ERROR events)."""
    f = fresh(history=5)
    k2s = f.kube2sky()
    f.kube.service("gone", "a", [{"name": "http", "port": 80}], cluster_ip="10.96.21.1")
    wait_etcd_equals(f.etcd, {**BASELINE, **cluster_ip_keys("gone", "a", "10.96.21.1",
                                                            [("http", 80, "tcp")])})
    before = relists(k2s)
    force_relist(f.emu, lambda store: store.delete("services", "gone", "a"))
    wait_for(lambda: relists(k2s) > before, timeout=15, what="kube2sky to relist")
    wait_etcd_equals(f.etcd, BASELINE)
    lines = [line for line in k2s.output().splitlines() if "reflector" in line
             and ("410" in line or "failed" in line)]
    assert lines and all("410" in line for line in lines), lines
    assert not log_lines(k2s, "KeyError")


def test_restart_makes_etcd_exact(fresh):
    f = fresh()
    kube, ns = f.kube, "restart"
    expected = scenario_one(kube, ns)
    k2s = f.kube2sky()
    wait_etcd_equals(f.etcd, expected)
    k2s.stop()
    # while kube2sky is down
    kube.core.delete_namespaced_service("plain", ns)
    kube.core.delete_namespaced_pod("p1", ns)
    kube.pod_ips(ns, "p-pending", "10.244.9.10")
    kube.endpoints(ns, "db", ready=[("10.244.1.5", "pg-0"), ("10.244.2.8", None)],
                   ports=[{"name": "pg", "port": 5433}], replace=True)
    kube.set_ports(ns, "web", [
        {"name": "http", "port": 80}])
    kube.service(ns, "new", [{"name": "grpc", "port": 9000}], cluster_ip="10.96.10.12")
    kube.core.patch_namespaced_service("ext", ns, {"spec": {"externalName": "other.example."}})
    many = {}     # enough keys for several etcd transactions (128 keys each)
    for i in range(100):
        kube.service(ns, f"bulk{i}", [{"name": "http", "port": 80}],
                     cluster_ip=f"10.96.11.{i + 1}")
        many.update(cluster_ip_keys(ns, f"bulk{i}", f"10.96.11.{i + 1}",
                                    [("http", 80, "tcp")]))
    k2s.start()
    assert k2s.readiness()[0] == 200
    wait_etcd_equals(f.etcd, {
        **BASELINE, **many,
        **cluster_ip_keys(ns, "web", "10.96.10.10", [("http", 80, "tcp")]),
        **cluster_ip_keys(ns, "new", "10.96.10.12", [("grpc", 9000, "tcp")]),
        **headless_keys(ns, "db", [("10.244.1.5", "pg-0"), ("10.244.2.8", None)],
                        [("pg", 5433, "tcp")]),
        **external_keys(ns, "ext", "other.example"),
        **pod_keys(ns, "10.244.9.10")})


def test_big_lists_are_paged_and_a_restart_in_sync_writes_nothing(fresh):
    """More objects than one list page (500): every one is synced, the log counts the
    pages, and a restart against the etcd it filled writes and deletes nothing."""
    f = fresh()
    store, ns, expected = f.emu.store, "paged", dict(BASELINE)
    for i in range(1100):
        svc = store.create("services", {"metadata": {"name": f"s{i}", "namespace": ns},
                                        "spec": {"ports": [{"name": "http", "port": 80}]}},
                           namespace=ns)
        expected.update(cluster_ip_keys(ns, f"s{i}", svc["spec"]["clusterIP"],
                                        [("http", 80, "tcp")]))
    k2s = f.kube2sky()
    wait_etcd_equals(f.etcd, expected, timeout=60)
    log = open(k2s.logpath).read()
    assert re.search(r"listed 1101 services at resourceVersion \S+ in [\d.]+s \(3 pages\)",
                     log), log[-2000:]
    k2s.stop()
    k2s.start()
    assert k2s.readiness()[0] == 200
    done = re.findall(r"initial sync done in [\d.]+s: (\d+) keys desired, (\d+) written, "
                      r"(\d+) deleted", open(k2s.logpath).read())
    assert done[-1] == (str(len(expected)), "0", "0")
    wait_etcd_equals(f.etcd, expected)


# -- 5. ownership ----------------------------------------------------------------------------

def test_an_etcd_written_with_ownership_markers_is_converted(fresh):
    """What an older kube2sky left (values without the owner field, a marker key beside
    each): desired keys are rewritten with the owner field, marked keys no longer desired
    are deleted, every marker goes, and unmarked keys of other writers stay."""
    f = fresh()
    ns = "convert"
    f.kube.service(ns, "web", [{"name": "http", "port": 80}], cluster_ip="10.96.41.1")
    web = cluster_ip_keys(ns, "web", "10.96.41.1", [("http", 80, "tcp")])
    old_style = {key: plain_of(value) for key, value in {**BASELINE, **web}.items()}
    gone = {f"{BASE}/svc/{ns}/gone/{lbl('10.96.41.9')}": plain("10.96.41.9")}
    foreign = {f"{BASE}/svc/{ns}/manual/x": plain("192.0.2.9")}
    etcd = f.etcd.client()
    try:
        for key, value in {**old_style, **gone}.items():
            etcd.put(key, value)
            etcd.put(MARKERS + key, value)
        for key, value in foreign.items():
            etcd.put(key, value)
    finally:
        etcd.close()
    k2s = f.kube2sky()
    wait_etcd_equals(f.etcd, {**BASELINE, **web}, extra=foreign)
    assert "converting 8 keys from ownership markers to the owner field" in \
        open(k2s.logpath).read()


# -- 6. shared owners ------------------------------------------------------------------------

# -- 7. an unchanged service never answers NXDOMAIN ------------------------------------------

class Prober(threading.Thread):
    def __init__(self, sky, name, max_queries=40000, max_seconds=60.0, interval=0.003):
        super().__init__(daemon=True)
        self.sky, self.name = sky, name
        self.max_queries, self.max_seconds, self.interval = max_queries, max_seconds, interval
        self.done = threading.Event()
        self.results = []

    def run(self):
        deadline = time.monotonic() + self.max_seconds
        while (not self.done.is_set() and len(self.results) < self.max_queries
               and time.monotonic() < deadline):
            try:
                self.results.append(answer(self.sky, self.name, "A"))
            except Exception as exc:   # a timeout is a failure too
                self.results.append((f"error {exc.__class__.__name__}", []))
            time.sleep(self.interval)

    def stop(self):
        self.done.set()
        self.join(10)


def test_unchanged_service_never_nxdomain_while_neighbours_churn(fresh):
    f = fresh(history=5)
    kube, ns = f.kube, "churn"
    k2s = f.kube2sky()
    sky = f.skydns()
    stable = kube.service(ns, "stable", [{"name": "http", "port": 80}])
    ip = stable.spec.cluster_ip
    kube.headless(ns, "stable-db", [{"name": "pg", "port": 5432}])
    kube.endpoints(ns, "stable-db", ready=[("10.244.81.1", "db-0"), ("10.244.81.2", None)],
                   ports=[{"name": "pg", "port": 5432}])
    converge(sky, svc_fqdn("stable", ns), "A", [ip])
    converge(sky, svc_fqdn("stable-db", ns), "A", ["10.244.81.1", "10.244.81.2"])
    prober = Prober(sky, svc_fqdn("stable", ns))
    prober_db = Prober(sky, f"db-0.stable-db.{ns}.svc.{DOMAIN}.", interval=0.01)
    prober.start()
    prober_db.start()
    try:
        for round_ in range(2):
            for i in range(5):
                kube.service(ns, f"n{i}", [{"name": "http", "port": 80 + round_}])
                kube.headless("churn", f"h{i}", [{"name": "pg", "port": 5432}])
                kube.endpoints(ns, f"h{i}", ready=[(f"10.244.80.{i + 1}", None)],
                               ports=[{"name": "pg", "port": 5432}])
            for i in range(5):
                kube.set_ports(ns, f"n{i}", [
                    {"name": "https", "port": 443}])
                kube.core.delete_namespaced_service(f"n{i}", ns)
                kube.core.delete_namespaced_service(f"h{i}", ns)
                kube.core.delete_namespaced_endpoints(f"h{i}", ns)
        # the stable service is also re-written without change (a resync-like update)
        kube.core.patch_namespaced_service("stable", ns, {"metadata": {"labels": {"x": "y"}}})
        before = relists(k2s)
        force_relist(f.emu, lambda store: store.create("services", {
            "metadata": {"name": "late"}, "spec": {"ports": [{"port": 1}]}}, ns))
        wait_for(lambda: relists(k2s) > before, timeout=15, what="a relist")
        converge(sky, svc_fqdn("late", ns), "A", [f.kube.core.read_namespaced_service(
            "late", ns).spec.cluster_ip])
        k2s.stop()
        kube.service(ns, "while-down", [{"name": "http", "port": 80}])
        k2s.start()
        converge(sky, svc_fqdn("while-down", ns), "A", [f.kube.core.read_namespaced_service(
            "while-down", ns).spec.cluster_ip])
        time.sleep(0.3)
    finally:
        prober.stop()
        prober_db.stop()
    for probe, want in ((prober, [ip]), (prober_db, ["10.244.81.1"])):
        results = probe.results
        assert len(results) > 100, f"only {len(results)} probes of {probe.name}"
        bad = [r for r in results if r != ("NOERROR", want)]
        assert not bad, (f"{len(bad)} of {len(results)} answers for {probe.name} were "
                         f"wrong, e.g. {bad[:5]}")


# -- 8. etcd down ----------------------------------------------------------------------------

def test_etcd_down_keeps_changes_and_reports_not_ready(fresh):
    f = fresh()
    kube, ns, etcd = f.kube, "etcd-down", f.etcd
    kube.service(ns, "old", [{"name": "http", "port": 80}], cluster_ip="10.96.60.1")
    k2s = f.kube2sky("--etcd-mutation-timeout=2s")
    old = cluster_ip_keys(ns, "old", "10.96.60.1", [("http", 80, "tcp")])
    wait_etcd_equals(etcd, {**BASELINE, **old})
    etcd.stop()
    try:
        kube.service(ns, "new", [{"name": "http", "port": 80}], cluster_ip="10.96.60.2")
        kube.core.delete_namespaced_service("old", ns)
        wait_for(lambda: k2s.readiness()[0] == 503, timeout=20, what="readiness 503")
        status, body = k2s.readiness()
        assert "etcd" in body, body
        time.sleep(1.5)   # a while of failed writes: it must not give up
        assert k2s.alive(), k2s.output()[-2000:]
        assert k2s.healthz()[0] == 200
        assert k2s.readiness()[0] == 503
    finally:
        etcd.start()
    wait_etcd_equals(etcd, {**BASELINE, **cluster_ip_keys(ns, "new", "10.96.60.2",
                                                          [("http", 80, "tcp")])}, timeout=30)
    wait_for(lambda: k2s.readiness()[0] == 200, timeout=20, what="readiness 200 again")
    assert log_lines(k2s, "etcd write failed")
    assert k2s.alive()


def test_start_while_etcd_is_down(fresh):
    f = fresh()
    f.kube.service("etcd-late", "web", [{"name": "http", "port": 80}], cluster_ip="10.96.61.1")
    f.etcd.stop()
    try:
        k2s = f.kube2sky(start=False)
        k2s.start(wait_ready=False)
        wait_for(lambda: "etcd" in k2s.readiness()[1], timeout=20, what="the etcd reason")
        assert k2s.readiness()[0] == 503
        time.sleep(1.5)
        assert k2s.alive() and k2s.healthz()[0] == 200
    finally:
        f.etcd.start()
    wait_for(lambda: k2s.readiness()[0] == 200, timeout=30, what="readiness after etcd is up")
    wait_etcd_equals(f.etcd, {**BASELINE, **cluster_ip_keys("etcd-late", "web", "10.96.61.1",
                                                            [("http", 80, "tcp")])})


def test_not_ready_until_the_first_sync(fresh):
    """The API is unreachable at start: kube2sky runs, is live, and is not ready until it
    has listed everything and written it."""
    f = fresh()
    port = f.emu.port
    f.emu.stop()
    f.emu = None
    k2s = Kube2sky(f"http://127.0.0.1:{port}", f.etcd.url, "--endpoints-source=endpoints")
    f.procs.append(k2s)
    k2s.start(wait_ready=False)
    time.sleep(1.5)
    status, body = k2s.readiness()
    assert status == 503 and "not listed yet" in body, body
    assert k2s.alive() and k2s.healthz()[0] == 200
    assert not skydns_keys(f.etcd)
    f.emu = Emulator(port=port).start()
    Kube(f.emu.url).service("api-late", "web", [{"name": "http", "port": 80}],
                            cluster_ip="10.96.62.1")
    wait_for(lambda: k2s.readiness()[0] == 200, timeout=45, what="readiness")
    wait_etcd_equals(f.etcd, {**BASELINE, **cluster_ip_keys("api-late", "web", "10.96.62.1",
                                                            [("http", 80, "tcp")])})


def test_auto_mode_chooses_slices_when_the_api_comes_up_late(fresh):
    """--endpoints-source=auto with the API down at start waits for discovery (regression:
    it settled on v1 Endpoints for good)."""
    f = fresh()
    port = f.emu.port
    f.emu.stop()
    f.emu = None
    k2s = Kube2sky(f"http://127.0.0.1:{port}", f.etcd.url)
    f.procs.append(k2s)
    k2s.start(wait_ready=False)
    time.sleep(1)
    f.emu = Emulator(port=port).start()
    kube = Kube(f.emu.url)
    kube.headless("auto-late", "db", [{"name": "pg", "port": 5432}])
    kube.slice("auto-late", "db-1", "db", [{"addresses": ["10.244.63.1"], "hostname": "a"}],
               [{"name": "pg", "port": 5432}])
    wait_for(lambda: k2s.readiness()[0] == 200, timeout=45, what="readiness")
    wait_etcd_equals(f.etcd, {**BASELINE, **headless_keys(
        "auto-late", "db", [("10.244.63.1", "a")], [("pg", 5432, "tcp")])}, timeout=3)


# -- 9. odd objects and an API outage --------------------------------------------------------

def test_api_server_outage_then_relist(fresh):
    f = fresh()
    kube, ns = f.kube, "api-down"
    kube.service(ns, "before", [{"name": "http", "port": 80}], cluster_ip="10.96.90.1")
    k2s = f.kube2sky()
    wait_etcd_equals(f.etcd, {**BASELINE, **cluster_ip_keys(ns, "before", "10.96.90.1",
                                                            [("http", 80, "tcp")])})
    port = f.emu.port
    f.emu.stop()
    f.emu = None
    time.sleep(1)
    assert k2s.alive(), k2s.output()[-2000:]
    assert k2s.healthz()[0] == 200
    # the API comes back (a new emulator on the same port, with different objects)
    f.emu = Emulator(port=port).start()
    Kube(f.emu.url).service(ns, "after", [{"name": "http", "port": 80}],
                            cluster_ip="10.96.90.2")
    wait_etcd_equals(f.etcd, {**BASELINE, **cluster_ip_keys(ns, "after", "10.96.90.2",
                                                            [("http", 80, "tcp")])}, timeout=45)
    assert log_lines(k2s, "list/watch failed")
    assert k2s.alive() and k2s.healthz()[0] == 200


# -- 10. flags -------------------------------------------------------------------------------

def test_k8s_external_zone(fresh):
    """--external-zone: a LoadBalancer's ingress IP and a service's externalIPs under
    <svc>.<ns>.example.org, served by a skydns for that zone (-no-rec: authoritative only,
    as an internet-facing server must be), with the zone's NS from --external-ns-service;
    following the load balancer's status, and gone with the service."""
    f = fresh()
    zone = "example.org."
    lb = f.kube.service("ext", "web", [{"name": "http", "port": 80, "protocol": "TCP"}],
                        cluster_ip="10.96.90.1", type="LoadBalancer",
                        externalIPs=["198.51.100.7"])
    assert lb.spec.external_ips == ["198.51.100.7"]
    f.kube.service("kube-system", "dns-external", [{"name": "dns", "port": 53,
                                                    "protocol": "UDP"}],
                   cluster_ip="10.96.90.53", type="LoadBalancer")

    def ingress(ns, name, *ips):
        f.kube.core.patch_namespaced_service_status(name, ns, [
            {"op": "add", "path": "/status", "value": {"loadBalancer": {"ingress": [
                {"ip": ip} for ip in ips]}}}])
    ingress("kube-system", "dns-external", "203.0.113.53")
    f.kube2sky(f"--external-zone={zone}", "--external-ns-service=kube-system/dns-external")
    upstream = Upstream({})
    f.procs.append(upstream)
    external = Skydns(f.etcd.url, f"-domain={zone}", "-no-rec", upstream=upstream.address)
    f.procs.append(external)
    external.start()
    cluster = f.skydns()
    name = f"web.ext.{zone}"
    converge(external, name, "A", ["198.51.100.7"])
    ingress("ext", "web", "203.0.113.10")
    converge(external, name, "A", ["198.51.100.7", "203.0.113.10"])
    assert answer(external, f"_http._tcp.{name}", "SRV") == (
        "NOERROR", [f"10 100 80 {name}"])
    assert answer(external, zone, "NS") == ("NOERROR", [f"ns1.ns.dns.{zone}"])
    assert answer(external, f"ns1.ns.dns.{zone}", "A") == ("NOERROR", ["203.0.113.53"])
    response = external.query(name, "A")
    assert response.answer[0].ttl == 5  # CoreDNS's k8s_external default
    assert answer(external, f"nope.ext.{zone}", "A")[0] == "NXDOMAIN"
    # The cluster's own names are unchanged, and the cluster skydns knows nothing of it.
    assert answer(cluster, f"web.ext.svc.{DOMAIN}.", "A") == ("NOERROR", ["10.96.90.1"])
    assert not upstream.queries
    ingress("ext", "web", "203.0.113.11")
    converge(external, name, "A", ["198.51.100.7", "203.0.113.11"])
    f.kube.core.delete_namespaced_service("web", "ext")
    converge(external, name, "A", "NXDOMAIN")
    assert not [k for k in skydns_keys(f.etcd) if k.startswith("/skydns/org/example/ext/")]


def test_underscore_flag_spelling(fresh):
    f = fresh()
    f.kube.service("flags", "web", [{"name": "http", "port": 80}], cluster_ip="10.96.95.1")
    f.kube.pod("flags", "p", "10.244.95.1")
    k2s = f.kube2sky("-endpoints_source=endpoints", "-etcd_mutation_timeout=5s",
                     "-pod_records=false", underscore=True)
    assert "-kube_master_url=" in " ".join(k2s.argv())
    wait_etcd_equals(f.etcd, {**BASELINE, **cluster_ip_keys("flags", "web", "10.96.95.1",
                                                            [("http", 80, "tcp")])})
    assert log_lines(k2s, "endpoint data from v1 Endpoints")


def test_sigterm_stops_kube2sky_promptly(fresh):
    f = fresh()
    k2s = f.kube2sky()
    k2s.proc.send_signal(signal.SIGTERM)
    try:
        code = k2s.proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        code = None
    assert code == 0, f"exit code {code} 5 s after SIGTERM:\n{k2s.output()[-1000:]}"
    assert log_lines(k2s, "stopping")


def test_sighup_is_harmless_and_sigterm_still_stops(fresh):
    """Operators and init systems send SIGHUP; by default it would kill the process."""
    f = fresh()
    k2s = f.kube2sky()
    k2s.proc.send_signal(signal.SIGHUP)
    f.kube.service("hup", "web", [{"name": "http", "port": 80}], cluster_ip="10.96.96.1")
    wait_etcd_equals(f.etcd, {**BASELINE, **cluster_ip_keys("hup", "web", "10.96.96.1",
                                                            [("http", 80, "tcp")])})
    assert k2s.alive() and k2s.readiness()[0] == 200
    assert log_lines(k2s, "SIGHUP ignored")
    k2s.proc.send_signal(signal.SIGTERM)
    assert k2s.proc.wait(timeout=5) == 0


@pytest.mark.parametrize("flags,message", [
    (["--no-such-flag=1"], "unrecognized arguments"),
    (["--endpoints-source=bogus"], "endpoints-source"),
    (["--healthz-port=notanumber"], "healthz"),
    (["--external-zone=ext.cluster.local"], "inside --domain"),
    (["--external-ns-service=just-a-name"], "NAMESPACE/NAME"),
])
def test_bad_flags_exit_nonzero_with_a_message(flags, message):
    proc = subprocess.run([sys.executable, "-m", "kube2sky", "--kube-master-url=http://127.0.0.1:9",
                           "--etcd-server=http://127.0.0.1:9", "--healthz-port=0", *flags],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


@pytest.mark.parametrize("how", ["flag", "env"])
def test_kubeconfig_file_or_environment(fresh, tmp_path, how):
    """--kubecfg-file, else (no flag, not in a cluster) $KUBECONFIG."""
    f = fresh()
    f.kube.service("kcfg", "web", [{"name": "http", "port": 80}], cluster_ip="10.96.96.1")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: emu, cluster: {{server: "{f.emu.url}"}}}}]
users: [{{name: me, user: {{}}}}]
contexts: [{{name: emu, context: {{cluster: emu, user: me}}}}]
current-context: emu
""")
    env = {"KUBECONFIG": str(kubeconfig)} if how == "env" else {}
    k2s = f.kube2sky(start=False, env=env)
    args = [a for a in k2s.argv() if not a.startswith("--kube-master-url")]
    if how == "flag":
        args.append(f"--kubecfg-file={kubeconfig}")
    k2s.argv = lambda: args
    k2s.start()
    wait_etcd_equals(f.etcd, {**BASELINE, **cluster_ip_keys("kcfg", "web", "10.96.96.1",
                                                            [("http", 80, "tcp")])})
