"""skydns behind real resolvers: glibc's stub resolver in a pod-like network namespace,
unbound (stub zone, query-name minimisation, 0x20) and dnsmasq (as kube-dns ran it).

The records are the real kube2sky's, written from the API emulator seeded with
manifests/examples/demo.yaml (``web``: ClusterIP, ports http/80 and https/443; ``db``:
headless, endpoints pg-0 and pg-1; ``search``: ExternalName www.example.com) plus ``big``, a
headless service with 100 endpoints. Every answer through a resolver is compared with what
skydns itself answers, except where the issue states the expectation outright (no CNAME for
``_http._tcp.web...`` through unbound; EAI_NONAME, not EAI_AGAIN, for an unknown short name
in a pod).

Traffic stays on 127.0.0.1 and inside the namespace the test creates; namespaces, veths,
/etc/netns/NAME, processes and temporary files are removed afterwards. Without root,
``ip netns``, unbound or dnsmasq the tests skip, except under CI ($CI set), where they fail.
unbound and dnsmasq come from Debian's packages (``.ci/run`` installs them).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import dns.flags
import dns.rcode
import pytest

from kubeemu import Emulator  # noqa: E402
from procs import Kube2sky, Skydns, Upstream, tool, wait_for  # noqa: E402
from resolvers import (Dnsmasq, PodNetns, Unbound, ask, ask_udp, netns_usable,  # noqa: E402
                       require, summary, types_in)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "manifests", "examples", "demo.yaml")
DOMAIN = "cluster.local"
SVC = f"demo.svc.{DOMAIN}"
BIG_ENDPOINTS = [f"10.244.10.{i}" for i in range(1, 101)]

UPSTREAM_ZONE = {
    ("www.example.com.", "A"): ["192.0.2.10"],
    ("www.example.com.", "AAAA"): ["2001:db8::10"],
}

POD_RESOLV_CONF = textwrap.dedent("""\
    nameserver {nameserver}
    search demo.svc.cluster.local svc.cluster.local cluster.local
    options ndots:5
    """)


# -- the records: real kube2sky output -----------------------------------------------------

@pytest.fixture(scope="module")
def cluster(etcd):
    """The emulator seeded with demo.yaml and ``big``, and kube2sky writing the module's
    etcd; yields when all of it is in etcd (checked through a skydns of its own)."""
    emu = Emulator(port=0, seed=[DEMO]).start()
    procs = []
    try:
        emu.apply({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "big", "namespace": "demo"},
                   "spec": {"clusterIP": "None",
                            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]}})
        emu.apply({"apiVersion": "v1", "kind": "Endpoints",
                   "metadata": {"name": "big", "namespace": "demo"},
                   "subsets": [{"addresses": [{"ip": ip} for ip in BIG_ENDPOINTS],
                                "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]}]})
        k2s = Kube2sky(emu.url, etcd.url)
        procs.append(k2s)
        k2s.start()
        yield emu
    finally:
        for proc in procs:
            proc.close()
        emu.stop()


@pytest.fixture(scope="module")
def upstream_mod():
    server = Upstream(UPSTREAM_ZONE)
    yield server
    server.close()


def wait_loaded(sky):
    """Wait until ``sky`` holds everything kube2sky writes (the last service, ``big``, with
    all its endpoints, and the others)."""
    host = getattr(sky, "host", "127.0.0.1")

    def loaded():
        big = summary(ask(sky.port, f"big.{SVC}", host=host))
        return (len(big[1]) == len(BIG_ENDPOINTS)
                and summary(ask(sky.port, f"web.{SVC}", host=host))[1]
                and len(summary(ask(sky.port, f"db.{SVC}", host=host))[1]) == 2)
    wait_for(loaded, timeout=30, interval=0.2, what="skydns to hold kube2sky's records")


@pytest.fixture(scope="module")
def sky(etcd, cluster, upstream_mod):
    """skydns on a free 127.0.0.1 port for cluster.local., forwarding the rest to the
    upstream stand-in; -verbose=true logs every query (what the resolvers asked)."""
    server = Skydns(etcd.url, f"-domain={DOMAIN}.", "-verbose=true",
                    upstream=upstream_mod.address)
    try:
        server.start()
        wait_loaded(server)
        yield server
    finally:
        server.close()


def direct(sky, name, rdtype="A"):
    return ask(sky.port, name, rdtype)


def skydns_log_since(sky, offset):
    return sky.output()[offset:]


# -- glibc in a pod's network namespace ----------------------------------------------------

GAI_SCRIPT = textwrap.dedent("""\
    import json, socket, sys, time
    start = time.monotonic()
    try:
        infos = socket.getaddrinfo(sys.argv[1], 80, type=socket.SOCK_STREAM)
        out = {"addresses": sorted({info[4][0] for info in infos})}
    except socket.gaierror as exc:
        out = {"errno": exc.errno, "error": exc.strerror}
    out["seconds"] = time.monotonic() - start
    print(json.dumps(out))
    """)


@pytest.fixture(scope="module")
def pod(etcd, cluster, upstream_mod):
    """A pod-like network namespace whose resolv.conf names a skydns on the host end of its
    veth (port 53), with the search path and ndots of a pod in namespace demo."""
    ok, why = netns_usable()
    require(ok, why)
    require(tool("getent"), "no getent (glibc's libc-bin)")
    netns = PodNetns(POD_RESOLV_CONF)
    server = None
    try:
        try:
            netns.create()
        except subprocess.CalledProcessError as exc:
            require(False, f"cannot set up a network namespace: {' '.join(exc.cmd)}: "
                           f"{exc.stderr.strip()}")
        # glibc's stub resolver talks to port 53 only: skydns on the veth's host end.
        server = Skydns(etcd.url, f"-domain={DOMAIN}.", "-verbose=true",
                        host=netns.host_ip, port=53, upstream=upstream_mod.address)
        server.start()
        wait_loaded(server)
        netns.sky = server
        yield netns
    finally:
        try:
            if server is not None:
                server.close()
        finally:
            netns.close()


def getent(pod, database, name):
    """Addresses ``getent DATABASE NAME`` prints inside the pod (exit code, addresses)."""
    result = pod.exec(["getent", database, name], timeout=30, check=False)
    return result.returncode, sorted({line.split()[0] for line in result.stdout.splitlines()
                                      if line.strip()}), result.stdout


def getaddrinfo_in(pod, name):
    result = pod.exec([sys.executable, "-c", GAI_SCRIPT, name], timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def addresses(response):
    return sorted(rd.to_text() for rrset in response.answer if rrset.rdtype in (1, 28)
                  for rd in rrset)


def test_pod_resolv_conf_is_the_pods(pod):
    assert pod.resolv_conf() == POD_RESOLV_CONF.format(nameserver=pod.host_ip)


@pytest.mark.parametrize("name", ["web", "web.demo"])
def test_glibc_service_name_through_the_search_path(pod, sky, name):
    want = addresses(direct(sky, f"web.{SVC}", "A")) + addresses(direct(sky, f"web.{SVC}",
                                                                        "AAAA"))
    assert want, "skydns has no address for web"
    rc, got, out = getent(pod, "ahosts", name)
    assert rc == 0, out
    assert got == sorted(want), out
    assert f"web.{SVC}" in out  # the canonical name: found through the first search domain


def test_glibc_headless_service_gives_every_endpoint(pod, sky):
    want = addresses(direct(sky, f"db.{SVC}", "A"))
    assert len(want) == 2
    rc, got, out = getent(pod, "hosts", "db")
    assert rc == 0, out
    assert got == want, out


def test_glibc_external_name_through_the_search_path(pod, sky, upstream_mod):
    want = sorted(addresses(direct(sky, "www.example.com.", "A"))
                  + addresses(direct(sky, "www.example.com.", "AAAA")))
    assert want == ["192.0.2.10", "2001:db8::10"]
    rc, got, out = getent(pod, "ahosts", "www.example.com")
    assert rc == 0, out
    assert got == want, out


def test_glibc_unknown_short_name_is_not_found_not_a_temporary_failure(pod, sky):
    """The issue: in a pod, getaddrinfo("nonexistent") must fail with EAI_NONAME ("Name or
    service not known") quickly; EAI_AGAIN ("Temporary failure in name resolution") makes
    programs retry. glibc tries nonexistent.demo.svc.cluster.local, ...svc.cluster.local,
    ...cluster.local (NXDOMAIN from skydns) and last ``nonexistent.`` itself, whose answer
    decides: SERVFAIL there gives EAI_AGAIN."""
    offset = len(pod.sky.output())
    out = getaddrinfo_in(pod, "nonexistent")
    log = skydns_log_since(pod.sky, offset)
    assert "addresses" not in out, out
    assert out["errno"] != socket.EAI_AGAIN, (
        f"EAI_AGAIN ({out}): skydns answered the search path so:\n{log}")
    assert out["errno"] == socket.EAI_NONAME, (out, log)
    assert out["seconds"] < 2.0, (out, log)


def test_glibc_autopath_asks_once_per_type(etcd, pod, cluster, upstream_mod):
    """With -autopath, a pod's lookup of an external name is one query per address type:
    the first name of its search path, answered with a CNAME to the name found (without
    it glibc asks three cluster names and then the bare one). The pod's record is the one
    kube2sky writes from a Pod with the namespace's IP; the queries counted are the
    query log's (what the pod sent, not what skydns asked itself)."""
    cluster.apply({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "client", "namespace": "demo"},
                   "spec": {"containers": [{"name": "c", "image": "pause"}]},
                   "status": {"phase": "Running", "podIP": pod.ns_ip}})
    own_name = pod.ns_ip.replace(".", "-") + f".demo.pod.{DOMAIN}."
    pod.sky.stop()  # the walker takes port 53 of the pod's nameserver meanwhile
    walker = Skydns(etcd.url, f"-domain={DOMAIN}.", "-autopath", "-autopath-search=",
                    "-log-queries=1000", host=pod.host_ip, port=53,
                    upstream=upstream_mod.address)
    try:
        walker.start()
        wait_loaded(walker)
        wait_for(lambda: summary(ask(53, own_name, host=pod.host_ip))[1], timeout=10,
                 what="kube2sky to write the pod's record")
        offset = len(walker.output())
        rc, got, out = getent(pod, "ahosts", "www.example.com")
        assert rc == 0, out
        assert got == ["192.0.2.10", "2001:db8::10"], out

        def asked():
            """The names of the pod's queries in the log (a line is written just after
            its reply is sent, so it may come after getent is done)."""
            return [line.split('"')[1].split()[2] for line in
                    walker.output()[offset:].splitlines()
                    if '"' in line and " IN www.example.com." in line]
        wait_for(lambda: len(asked()) >= 2, timeout=5, what="the query log's lines")
        assert sorted(asked()) == [f"www.example.com.demo.svc.{DOMAIN}."] * 2, asked()
    finally:
        walker.close()
        pod.sky.start()
        wait_loaded(pod.sky)


# -- unbound in front ----------------------------------------------------------------------

@pytest.fixture
def unbound(sky, upstream_mod):
    require(tool("unbound") and tool("unbound-checkconf"),
            "no unbound (Debian package unbound)")
    server = Unbound(sky.port, upstream_mod.port, zone=DOMAIN)
    try:
        server.checkconf()
        server.start()
        yield server
    finally:
        server.close()


def test_unbound_srv_of_a_named_port_has_no_cname(unbound, sky):
    """The issue: asked for ``_http._tcp.web...`` SRV, unbound minimises the name and first
    asks skydns for ``_http._tcp.web...`` A; the answer to that must not be a CNAME to the
    SRV target (NODATA instead), or unbound follows it and answers the SRV query with the
    CNAME and the SRV records of ``web...`` (every port and a port-0 one)."""
    name = f"_http._tcp.web.{SVC}"
    want = summary(direct(sky, name, "SRV"))
    assert want[0] == "NOERROR" and [r[2].split()[2] for r in want[1]] == ["80"], want
    offset = len(sky.output())
    got = ask(unbound.port, name, "SRV")
    log = skydns_log_since(sky, offset)
    assert "CNAME" not in types_in(got), f"{got}\nunbound asked skydns:\n{log}"
    assert summary(got) == want, f"{got}\nunbound asked skydns:\n{log}"


@pytest.mark.parametrize("name", [f"_pg._tcp.db.{SVC}", f"_tcp.db.{SVC}",
                                  f"_pg._tcp.big.{SVC}"])
def test_unbound_srv_of_a_headless_service_gives_every_endpoint(unbound, sky, name):
    want = summary(direct(sky, name, "SRV"))
    assert want[0] == "NOERROR" and len(want[1]) >= 2, want
    offset = len(sky.output())
    got = ask(unbound.port, name, "SRV")
    log = skydns_log_since(sky, offset)
    assert "CNAME" not in types_in(got), f"{got}\nunbound asked skydns:\n{log}"
    assert summary(got) == want, f"{got}\nunbound asked skydns:\n{log}"


@pytest.mark.parametrize("name", [f"web.{SVC}", f"db.{SVC}", f"pg-1.db.{SVC}",
                                  f"big.{SVC}", f"search.{SVC}"])
def test_unbound_addresses_equal_skydns(unbound, sky, name):
    want = summary(direct(sky, name, "A"))
    assert want[0] == "NOERROR" and want[1], want
    assert summary(ask(unbound.port, name, "A")) == want


@pytest.mark.parametrize("name", [f"nothing.{SVC}", f"nothing.web.{SVC}",
                                  f"nothing.svc.{DOMAIN}", f"nothing.{DOMAIN}"])
def test_unbound_nxdomain_stays_nxdomain(unbound, sky, name):
    assert summary(direct(sky, name, "A")) == ("NXDOMAIN", [])
    assert summary(ask(unbound.port, name, "A")) == ("NXDOMAIN", [])


# -- dnsmasq in front ----------------------------------------------------------------------

@pytest.fixture
def dnsmasq(sky, upstream_mod):
    require(tool("dnsmasq"), "no dnsmasq (Debian package dnsmasq-base)")
    server = Dnsmasq(sky.port, upstream_mod.port, zone=DOMAIN)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.mark.parametrize("name,rdtype", [
    (f"web.{SVC}", "A"),
    (f"_http._tcp.web.{SVC}", "SRV"),
    (f"_https._tcp.web.{SVC}", "SRV"),
    (f"db.{SVC}", "A"),
    (f"_pg._tcp.db.{SVC}", "SRV"),
    (f"pg-0.db.{SVC}", "A"),
    (f"search.{SVC}", "A"),
    (f"nothing.{SVC}", "A"),
    ("www.example.com.", "A"),
])
def test_dnsmasq_answers_equal_skydns(dnsmasq, sky, name, rdtype):
    want = summary(direct(sky, name, rdtype))
    assert want[0] in ("NOERROR", "NXDOMAIN"), want
    assert summary(ask(dnsmasq.port, name, rdtype)) == want


def test_dnsmasq_nxdomain_for_a_missing_name(dnsmasq, sky):
    assert summary(ask(dnsmasq.port, f"nothing.{SVC}", "A")) == ("NXDOMAIN", [])


def test_dnsmasq_single_label_name_goes_upstream(dnsmasq, sky, upstream_mod):
    """dnsmasq (without --domain-needed) sends a single-label name to its default server,
    not to the cluster.local server: the answer is the upstream's (NXDOMAIN here), never a
    SERVFAIL, and skydns is not asked."""
    want = summary(ask(upstream_mod.port, "nonexistent.", "A"))
    assert want == ("NXDOMAIN", [])
    upstream_mod.reset()
    offset = len(sky.output())
    got = summary(ask(dnsmasq.port, "nonexistent.", "A"))
    assert got == want
    assert any(q.question[0].name.to_text().lower() == "nonexistent."
               for q in list(upstream_mod.queries))
    assert "nonexistent." not in skydns_log_since(sky, offset).lower()


def test_dnsmasq_big_headless_service_gives_every_endpoint(dnsmasq, sky):
    """100 A records do not fit a UDP answer: dnsmasq passes the truncation on, and the
    client's retry over TCP (dnsmasq forwards it over TCP) gets all of them."""
    name = f"big.{SVC}"
    want = summary(direct(sky, name, "A"))
    assert len(want[1]) == len(BIG_ENDPOINTS)
    assert sorted(r[2] for r in want[1]) == sorted(BIG_ENDPOINTS)
    first = ask_udp(dnsmasq.port, name, "A")
    assert first.rcode() == dns.rcode.NOERROR
    assert first.flags & dns.flags.TC, first
    assert summary(ask(dnsmasq.port, name, "A")) == want
    assert summary(ask(dnsmasq.port, name, "A", edns=False)) == want

