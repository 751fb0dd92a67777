"""Query semantics, end to end, as tables of (name, type) -> (rcode, flags, sections).

In the style of CoreDNS's plugin/etcd tests: a module-level dict of records (etcd key ->
JSON value) is written once into a real etcd, one skydns is started for ``skydns.local.``
and one for ``cluster.local.`` (kube2sky's layout, see kubernetes.md), and every case is a
row: the query, the expected rcode, the AA flag and the expected answer / authority /
additional records as zone-file text. Every row is asked over UDP (twice: the second answer
normally comes from the server's wire cache) and over TCP.

After the tables: TTLs from etcd leases, round robin, CHAOS, a malformed value beside good
ones (metrics and log), changes in etcd served within a bounded wait (cache invalidation),
and fast unit tests of ``skydns.record``.

The expected values come from the spec (shared/reference/skydns.md), never from the server.
"""

from __future__ import annotations

import json
import re
import socket
import time

import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import pytest

from procs import Skydns, Upstream, free_port

D = "skydns.local."
PREFIX = "/skydns/local/skydns"
CPREFIX = "/skydns/local/cluster"
SOA_SKY = f"{D} 60 IN SOA ns.dns.{D} hostmaster.skydns.local. SERIAL 28800 7200 604800 60"
# SkyDNS's -hostmaster default is hostmaster@skydns.local. whatever the domain.
SOA_CLUSTER = ("cluster.local. 60 IN SOA ns.dns.cluster.local. hostmaster.skydns.local. "
               "SERIAL 28800 7200 604800 60")
LOCAL_NAME = f"node1.hosts.{D}"
CHANGE_WAIT = 2.0  # seconds within which a change in etcd must be served


# -- independent helpers (deliberately not imported from skydns) ------------------------


def key_of(name: str, prefix: str = "skydns") -> str:
    """a.b.skydns.local. -> /skydns/local/skydns/b/a."""
    return "/" + "/".join([prefix] + list(reversed(name.rstrip(".").lower().split("."))))


def fnv1a32(value: str) -> str:
    h = 0x811C9DC5
    for byte in value.encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return "%x" % h


def kube_value(host: str, port: int = 0) -> str:
    """kube2sky's exact value string (field order matters for the label hash)."""
    port_part = f'"port":{port},' if port else ""
    return (f'{{"host":"{host}",{port_part}"priority":10,"weight":10,"ttl":30,'
            f'"targetstrip":0}}')


def j(**fields) -> str:
    return json.dumps(fields)


V6_PTR_NAME = dns.reversename.from_address("2001:db8::1").to_text()
LONG_TEXT = "x" * 255 + "y" * 45

# -- the skydns.local. records --------------------------------------------------------------

RECORDS = {
    # names and keys: a.b.skydns.local. lives at /skydns/local/skydns/b/a
    f"{PREFIX}/b/a": j(host="10.0.0.1"),
    # label boundaries: dom must not match dom1
    f"{PREFIX}/dom/x": j(host="10.0.1.1"),
    f"{PREFIX}/dom1/x": j(host="10.0.1.2"),
    # case
    f"{PREFIX}/case/web": j(host="10.0.2.1"),
    # a key and keys below it coexist
    f"{PREFIX}/co": j(host="10.0.3.1"),
    f"{PREFIX}/co/sub": j(host="10.0.3.2"),
    f"{PREFIX}/co/sub/deeper/x": j(host="10.0.3.3"),
    # wildcards
    f"{PREFIX}/wild/east/web/1": j(host="10.0.4.1"),
    f"{PREFIX}/wild/west/web/1": j(host="10.0.4.2"),
    f"{PREFIX}/wild/west/db/1": j(host="10.0.4.3"),
    f"{PREFIX}/wild/east/db/x/y": j(host="10.0.4.4"),
    # address families
    f"{PREFIX}/dual/v4": j(host="10.0.5.1"),
    f"{PREFIX}/dual/v6": j(host="fd00::51"),
    # CNAME chains inside the domain
    f"{PREFIX}/cn/alias1": j(host=f"alias2.cn.{D}"),
    f"{PREFIX}/cn/alias2": j(host=f"alias3.cn.{D}"),
    f"{PREFIX}/cn/alias3": j(host="10.0.6.3"),
    # depth: c0 -> c1 -> ... -> c8 (8 CNAMEs) -> A; d0 -> ... -> d9 (9 CNAMEs) -> A
    **{f"{PREFIX}/chain/c{i}": j(host=f"c{i + 1}.chain.{D}") for i in range(8)},
    f"{PREFIX}/chain/c8": j(host="10.0.7.8"),
    **{f"{PREFIX}/chain/d{i}": j(host=f"d{i + 1}.chain.{D}") for i in range(9)},
    f"{PREFIX}/chain/d9": j(host="10.0.7.9"),
    # loops and self references
    f"{PREFIX}/loop/l1": j(host=f"l2.loop.{D}"),
    f"{PREFIX}/loop/l2": j(host=f"l1.loop.{D}"),
    f"{PREFIX}/self/x": j(host=f"self.{D}"),
    f"{PREFIX}/self/y": j(host="10.0.8.1"),
    # in-domain targets that give nothing
    f"{PREFIX}/dangle/x": j(host=f"nothing.{D}"),
    f"{PREFIX}/dangle/y": j(host="10.0.8.2"),
    f"{PREFIX}/dangle2": j(host=f"v4.dual.{D}"),
    # CNAME to an external name (at the exact key, so CNAME queries see it)
    f"{PREFIX}/ext": j(host="www.example.com."),
    f"{PREFIX}/extnx": j(host="gone.example.com."),
    # external targets that do not resolve upstream (SERVFAIL there; a bare single-label
    # name, NXDOMAIN there), one that exists upstream without the asked type, and IP hosts
    # beside an unresolvable target
    f"{PREFIX}/extfail": j(host="broken.example.com."),
    f"{PREFIX}/extbare": j(host="server1"),
    f"{PREFIX}/extmail": j(host="mail.example.com."),
    f"{PREFIX}/mixext/a": j(host="10.0.26.1"),
    f"{PREFIX}/mixext/b": j(host="gone.example.com."),
    f"{PREFIX}/mixext/c": j(host="10.0.26.2"),
    # SRV
    f"{PREFIX}/svc/a": j(host="10.0.9.1", port=8080),
    f"{PREFIX}/svc/b": j(host="10.0.9.2", port=8080, weight=50, priority=10),
    f"{PREFIX}/svc/c": j(host="10.0.9.3", port=8081, priority=20, weight=0),
    f"{PREFIX}/w3/a": j(host="10.0.10.1", weight=10),
    f"{PREFIX}/w3/b": j(host="10.0.10.2", weight=20),
    f"{PREFIX}/w3/c": j(host="10.0.10.3", weight=30),
    f"{PREFIX}/w0/a": j(host="10.0.10.5", port=2, weight=0),
    f"{PREFIX}/w0/b": j(host="10.0.10.6", port=2, weight=300),
    f"{PREFIX}/w97/a": j(host="10.0.10.9", port=1, weight=97),
    f"{PREFIX}/prio/a": j(host="10.0.14.1", port=1, priority=10, weight=25),
    f"{PREFIX}/prio/b": j(host="10.0.14.2", port=1, weight=75),
    f"{PREFIX}/mixed/srv": j(host="10.0.25.1", port=80),
    f"{PREFIX}/mixed/note": j(text="not an SRV"),
    f"{PREFIX}/strip/x1/inst": j(host="10.0.11.1", port=80, targetstrip=1),
    f"{PREFIX}/strip2/host": j(host="10.0.11.2", port=80, targetstrip=9),
    f"{PREFIX}/web/_tcp/_http/x": j(host=f"webhost.{D}", port=80),
    f"{PREFIX}/web/_tcp/_http/y": j(host=f"cnweb.{D}", port=81),
    f"{PREFIX}/webhost/v4": j(host="10.0.12.1"),
    f"{PREFIX}/webhost/v6": j(host="fd00::121"),
    f"{PREFIX}/cnweb": j(host=f"webhost.{D}"),
    f"{PREFIX}/extsrv": j(host="www.example.com.", port=443),
    f"{PREFIX}/dup/x": j(host=f"webhost.{D}", port=80),
    f"{PREFIX}/dup/y": j(host=f"webhost.{D}", port=80),
    f"{PREFIX}/dup/z": j(host=f"webhost.{D}", port=81),
    # TXT
    f"{PREFIX}/txt/t1": j(text="hello world"),
    f"{PREFIX}/txt/long": j(text=LONG_TEXT),
    f"{PREFIX}/txt/ip": j(host="10.0.15.1"),
    f"{PREFIX}/txt255/x": j(text="z" * 255),
    f"{PREFIX}/cnttl": j(host=f"rec.ttl.{D}"),
    # two name hosts under one name: two CNAMEs for the same owner
    f"{PREFIX}/two/a": j(host=f"t1.{D}"),
    f"{PREFIX}/two/b": j(host=f"t2.{D}"),
    f"{PREFIX}/t1": j(host="10.0.28.1"),
    f"{PREFIX}/t2": j(host="10.0.28.2"),
    # MX (groups do not apply to MX; they do to SRV)
    f"{PREFIX}/mx/m1": j(host="10.0.16.1", mail=True, group="g1"),
    f"{PREFIX}/mx/sub/m2": j(host="mail.example.com.", mail=True, priority=20, group="g2"),
    f"{PREFIX}/mx/m3": j(host="10.0.16.3"),
    # NS
    f"{PREFIX}/dns/ns/ns1": j(host="127.0.0.53"),
    f"{PREFIX}/dns/ns/ns2": j(host="fd00::53"),
    # groups
    f"{PREFIX}/grp/a": j(host="10.0.17.1", group="g1"),
    f"{PREFIX}/grp/sub/b": j(host="10.0.17.2", group="g1"),
    f"{PREFIX}/grp/sub/deep/c": j(host="10.0.17.3", group="g2"),
    f"{PREFIX}/grp/sub/d": j(host="10.0.17.4"),
    # answer dedup; of duplicates the first in key order names the SRV target, unless it
    # is named by its own dashed address (kube2sky's CoreDNS-style endpoint alias)
    f"{PREFIX}/dupip/b": j(host="10.0.27.1"),
    f"{PREFIX}/dupip/c": j(host="10.0.27.1"),
    f"{PREFIX}/alias/10-0-27-2": j(host="10.0.27.2"),
    f"{PREFIX}/alias/zz": j(host="10.0.27.2"),
    f"{PREFIX}/alias/10-0-27-3": j(host="10.0.27.3"),
    f"{PREFIX}/dedup/a": j(host="10.0.18.1"),
    f"{PREFIX}/dedup/b": j(host="10.0.18.1", port=80),
    # TTLs
    f"{PREFIX}/ttl/def": j(host="10.0.19.1"),
    f"{PREFIX}/ttl/rec": j(host="10.0.19.2", ttl=30),
    f"{PREFIX}/ttlbig/a": j(host="10.0.19.3", ttl=7200),
    f"{PREFIX}/ttlbig2/a": j(host="10.0.19.4", ttl=7200),
    f"{PREFIX}/ttlbig2/b": j(host="10.0.19.5", ttl=5000),
    # local.dns.<domain> (-local=node1.hosts.skydns.local.)
    f"{PREFIX}/hosts/node1": j(host="10.0.20.1"),
    # reverse
    "/skydns/arpa/in-addr/10/0/0/1": j(host="web.default.svc.cluster.local."),
    key_of(V6_PTR_NAME): j(host=f"v6host.{D}"),
    # underscore labels
    f"{PREFIX}/und/_tcp/_x/r": j(host="10.0.21.1", port=80, text="hidden", mail=True),
    f"{PREFIX}/und/plain": j(host="10.0.21.2"),
    f"{PREFIX}/und2/_tcp/_y/r": j(host=f"target.und2.{D}", port=80),
    f"{PREFIX}/und2/target": j(host="10.0.21.3"),
    # malformed values beside good ones
    f"{PREFIX}/bad/good1": j(host="10.0.22.1"),
    f"{PREFIX}/bad/notjson": "not json {",
    f"{PREFIX}/bad/port": '{"host":"10.0.22.2","port":"80"}',
    f"{PREFIX}/bad/ip": '{"host":"10.0.0.300"}',
    f"{PREFIX}/bad/good2": j(host="10.0.22.3", port=80),
    # JSON keys match case-insensitively; unknown keys are ignored
    f"{PREFIX}/jcase/x": '{"HOST":"10.0.23.1","Port":81,"TTL":40,"Priority":5,"extra":[1,2]}',
}
BAD_KEYS = [f"{PREFIX}/bad/notjson", f"{PREFIX}/bad/port", f"{PREFIX}/bad/ip"]

# Put with an etcd lease of LEASE_TTL seconds.
LEASE_TTL = 100
LEASED = {
    f"{PREFIX}/lease/a": j(host="10.0.24.1"),
    f"{PREFIX}/lease/b": j(host="10.0.24.2", ttl=30),
    f"{PREFIX}/lease/c": j(host="10.0.24.3", ttl=3000),
}

# -- the cluster.local. records, as kube2sky lays them out ---------------------------------

C = "cluster.local."
L_KUBE = fnv1a32(kube_value("10.0.0.1"))
L_WEB = fnv1a32(kube_value("10.0.0.100"))
L_DB1 = fnv1a32(kube_value("10.244.1.10"))
L_DB2 = fnv1a32(kube_value("10.244.2.20"))
CLUSTER_RECORDS = {
    f"{CPREFIX}/svc/default/kubernetes/{L_KUBE}": kube_value("10.0.0.1"),
    # a Service with a ClusterIP and a named port
    f"{CPREFIX}/svc/default/web/{L_WEB}": kube_value("10.0.0.100"),
    f"{CPREFIX}/svc/default/web/_tcp/_http/{L_WEB}": kube_value(f"web.default.svc.{C}", 80),
    # a headless Service with two ready addresses and a named port
    f"{CPREFIX}/svc/default/db/{L_DB1}": kube_value("10.244.1.10"),
    f"{CPREFIX}/svc/default/db/{L_DB2}": kube_value("10.244.2.20"),
    f"{CPREFIX}/svc/default/db/_tcp/_pg/{L_DB1}":
        kube_value(f"{L_DB1}.db.default.svc.{C}", 5432),
    f"{CPREFIX}/svc/default/db/_tcp/_pg/{L_DB2}":
        kube_value(f"{L_DB2}.db.default.svc.{C}", 5432),
    # a pod
    f"{CPREFIX}/pod/default/10-244-1-10/{L_DB1}": kube_value("10.244.1.10"),
    # an ExternalName service: the leaf at the service key itself
    f"{CPREFIX}/svc/default/ext": kube_value("www.example.com."),
    f"{CPREFIX}/svc/default/extgone": kube_value("gone.example.com."),
    f"{CPREFIX}/dns-version": '{"text":"1.1.0"}',
    "/skydns/arpa/in-addr/10/0/0/100": kube_value(f"web.default.svc.{C}"),
}

UPSTREAM_ZONE = {
    ("www.example.com.", "A"): ["192.0.2.10"],
    ("www.example.com.", "AAAA"): ["2001:db8::10"],
    ("mail.example.com.", "A"): ["192.0.2.25"],
    ("target.example.org.", "A"): ["192.0.2.77"],
    ("9.9.0.10.in-addr.arpa.", "PTR"): ["fwd.example.net."],
}
UPSTREAM_FAILING = ("broken.example.com.", "down.example.com.")  # answered SERVFAIL


# -- module-scoped servers --------------------------------------------------------------------


@pytest.fixture(scope="module")
def kv(etcd):
    """The module's etcd client, with RECORDS, CLUSTER_RECORDS and LEASED written once."""
    client = etcd.client()
    client.delete_prefix("/skydns/")
    for key, value in {**RECORDS, **CLUSTER_RECORDS}.items():
        client.put(key, value)
    lease = client.lease(LEASE_TTL)
    for key, value in LEASED.items():
        client.put(key, value, lease=lease)
    yield client
    client.delete_prefix("/skydns/")
    client.close()


@pytest.fixture(scope="module")
def up():
    server = Upstream(UPSTREAM_ZONE, failing=UPSTREAM_FAILING)
    yield server
    server.close()


def serve(etcd, *flags, upstream, metrics=False):
    """A skydns for the tables, stopped when the module is done. Without the response cache
    for forwarded answers (-rcache=0): the table states the upstream's TTLs exactly, and a
    cached answer counts its TTL down by the seconds since an earlier case (or this case's
    first query) put it there, so on a slow machine a case read 299 where it means 300.
    test_forwarding tests the cache and its aging."""
    server = Skydns(etcd.url, "-rcache=0", *flags, upstream=upstream)
    if metrics:
        server.env["PROMETHEUS_PORT"] = str(server.http_port)  # /metrics beside /healthz
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def sky(etcd, kv, up):
    yield from serve(etcd, f"-local={LOCAL_NAME}", upstream=up.address, metrics=True)


@pytest.fixture(scope="module")
def norec(etcd, kv, up):
    """The skydns.local. records with recursion off: nothing is looked up upstream."""
    yield from serve(etcd, f"-local={LOCAL_NAME}", "-no-rec", upstream=up.address)


@pytest.fixture(scope="module")
def deadup(etcd, kv):
    """The skydns.local. records with an upstream that is not there (a closed port)."""
    yield from serve(etcd, f"-local={LOCAL_NAME}", "-rcache-stale=0",
                     upstream=f"127.0.0.1:{free_port()}")


ZONE_TTL = "cluster.local.=5,pod.cluster.local.=10/2,in-addr.arpa.=7"


@pytest.fixture(scope="module")
def zoned(etcd, kv, up):
    """cluster.local. with CoreDNS-style TTLs per zone (-zone-ttl)."""
    yield from serve(etcd, "-domain=cluster.local.", "-ns-rotate=false",
                     f"-zone-ttl={ZONE_TTL}", upstream=up.address)


@pytest.fixture(scope="module")
def cluster(etcd, kv, up):
    yield from serve(etcd, "-domain=cluster.local.", "-ns-rotate=false", upstream=up.address)


# -- rendering and comparing -------------------------------------------------------------------


def hour(t: float) -> int:
    return int(t) // 3600 * 3600


def rr_lines(section, qname, serials=None):
    """Zone-file lines of a message section; owners equal to qname keep their case,
    everything else is lower-cased (DNS names compare case-insensitively). SOA serials are
    replaced by SERIAL and collected in ``serials``."""
    out = []
    for rrset in section:
        owner = rrset.name.to_text()
        if owner.lower() != qname.lower():
            owner = owner.lower()
        rdclass = dns.rdataclass.to_text(rrset.rdclass)
        rdtype = dns.rdatatype.to_text(rrset.rdtype)
        for rd in rrset:
            data = rd.to_text()
            if rrset.rdtype != dns.rdatatype.TXT:
                data = data.lower()
            if rrset.rdtype == dns.rdatatype.SOA:
                fields = data.split()
                if serials is not None:
                    serials.append(int(fields[2]))
                fields[2] = "SERIAL"
                data = " ".join(fields)
            out.append(f"{owner} {rrset.ttl} {rdclass} {rdtype} {data}")
    return out


def normalize(lines, qname):
    out = []
    for line in lines:
        owner, rest = line.split(" ", 1)
        if owner.lower() != qname.lower():
            owner = owner.lower()
        out.append(" ".join([owner] + rest.split()))
    return out


NEGATIVE = object()  # "the SOA of the domain in the authority section, TTL 60"


class Case:
    def __init__(self, qname, qtype, rcode="NOERROR", answer=(), extra=None, ns=None,
                 aa=True, ordered=False, server="sky", ra=None):
        self.qname, self.qtype, self.rcode = qname, qtype, rcode
        self.answer = list(answer)
        self.extra = extra
        if ns is None and (rcode == "NXDOMAIN" or (rcode == "NOERROR" and not answer)):
            ns = NEGATIVE
        self.ns = ns
        self.aa = aa
        self.ordered = ordered
        self.server = server
        self.ra = ra

    def id(self):
        return f"{self.server}:{self.qname}/{self.qtype}"


def check(case, msg, t0, t1):
    serials = []
    assert dns.rcode.to_text(msg.rcode()) == case.rcode, msg.to_text()
    if case.aa is not None:
        assert bool(msg.flags & dns.flags.AA) == case.aa, msg.to_text()
    if case.ra is not None:
        assert bool(msg.flags & dns.flags.RA) == case.ra, msg.to_text()
    got = rr_lines(msg.answer, case.qname, serials)
    want = normalize(case.answer, case.qname)
    if case.ordered:
        assert got == want, msg.to_text()
    else:
        assert sorted(got) == sorted(want), msg.to_text()
    if case.ns is not None:
        soa = SOA_CLUSTER if case.server == "cluster" else SOA_SKY
        want_ns = [soa] if case.ns is NEGATIVE else case.ns
        assert sorted(rr_lines(msg.authority, case.qname, serials)) == \
            sorted(normalize(want_ns, case.qname)), msg.to_text()
    if case.extra is not None:
        got_extra = [line for line in rr_lines(msg.additional, case.qname, serials)
                     if " OPT " not in line]
        assert sorted(set(got_extra)) == sorted(set(normalize(case.extra, case.qname))), \
            msg.to_text()
        assert len(got_extra) == len(set(got_extra)), msg.to_text()
    for serial in serials:  # Unix time truncated to the hour
        assert serial in (hour(t0), hour(t1)), (serial, msg.to_text())


def ask(server, name, rdtype, tcp=False, rdclass="IN"):
    """Like Skydns.query, but one RR per RRset: nothing merged or replaced while parsing
    (dnspython keeps only one CNAME per owner otherwise), so duplicates stay visible."""
    message = dns.message.make_query(name, rdtype, rdclass)
    if tcp:
        return dns.query.tcp(message, "127.0.0.1", port=server.port, timeout=3.0,
                             one_rr_per_rrset=True)
    return dns.query.udp(message, "127.0.0.1", port=server.port, timeout=3.0,
                         one_rr_per_rrset=True)


def A(owner, ip, ttl=3600):
    return f"{owner} {ttl} IN A {ip}"


def AAAA(owner, ip, ttl=3600):
    return f"{owner} {ttl} IN AAAA {ip}"


def CNAME(owner, target, ttl=3600):
    return f"{owner} {ttl} IN CNAME {target}"


def SRV(owner, prio, weight, port, target, ttl=3600):
    return f"{owner} {ttl} IN SRV {prio} {weight} {port} {target}"


def n(label):
    """A name in skydns.local."""
    return f"{label}.{D}"


def regression(case):
    return pytest.param(case, id=case.id())


# -- the table ------------------------------------------------------------------------------------

CASES = [
    # --- names and keys
    Case(n("a.b"), "A", answer=[A(n("a.b"), "10.0.0.1")]),
    Case(n("b"), "A", answer=[A(n("b"), "10.0.0.1")]),  # subdomain query
    Case(n("b.a"), "A", "NXDOMAIN"),                     # labels are reversed, not kept
    Case(n("a"), "A", "NXDOMAIN"),
    # label boundaries
    Case(n("dom"), "A", answer=[A(n("dom"), "10.0.1.1")]),
    Case(n("dom1"), "A", answer=[A(n("dom1"), "10.0.1.2")]),
    Case(n("x.dom"), "A", answer=[A(n("x.dom"), "10.0.1.1")]),
    Case(n("do"), "A", "NXDOMAIN"),
    Case(n("x.do"), "A", "NXDOMAIN"),
    # case-insensitive lookup, owner exactly as sent (the first answer fills the wire cache,
    # the next two spellings are answered from it)
    Case("WeB.CaSe.skydns.local.", "A", answer=[A("WeB.CaSe.skydns.local.", "10.0.2.1")]),
    Case("WEB.CASE.SKYDNS.LOCAL.", "A", answer=[A("WEB.CASE.SKYDNS.LOCAL.", "10.0.2.1")]),
    Case(n("web.case"), "A", answer=[A(n("web.case"), "10.0.2.1")]),
    Case("ALIAS1.Cn.skydns.local.", "A", ordered=True, answer=[
        CNAME("ALIAS1.Cn.skydns.local.", n("alias2.cn")),
        CNAME(n("alias2.cn"), n("alias3.cn")),
        A(n("alias3.cn"), "10.0.6.3")]),
    Case("_HTTP._Tcp.Web.skydns.local.", "SRV",
         answer=[SRV("_HTTP._Tcp.Web.skydns.local.", 10, 50, 80, n("webhost")),
                 SRV("_HTTP._Tcp.Web.skydns.local.", 10, 50, 81, n("cnweb"))]),
    # --- subdomain queries; a key and keys below it coexist
    Case(n("co"), "A", answer=[A(n("co"), "10.0.3.1"), A(n("co"), "10.0.3.2"),
                               A(n("co"), "10.0.3.3")]),
    Case(n("sub.co"), "A", answer=[A(n("sub.co"), "10.0.3.2"), A(n("sub.co"), "10.0.3.3")]),
    Case(n("x.deeper.sub.co"), "A", answer=[A(n("x.deeper.sub.co"), "10.0.3.3")]),
    Case(n("nope.co"), "A", "NXDOMAIN"),
    # --- wildcards
    Case(n("*.wild"), "A", answer=[A(n("*.wild"), f"10.0.4.{i}") for i in (1, 2, 3, 4)]),
    Case(n("any.wild"), "A", answer=[A(n("any.wild"), f"10.0.4.{i}") for i in (1, 2, 3, 4)]),
    Case(n("*.*.wild"), "A", answer=[A(n("*.*.wild"), f"10.0.4.{i}") for i in (1, 2, 3, 4)]),
    Case(n("web.*.wild"), "A", answer=[A(n("web.*.wild"), "10.0.4.1"),
                                       A(n("web.*.wild"), "10.0.4.2")]),
    Case(n("web.any.wild"), "A", answer=[A(n("web.any.wild"), "10.0.4.1"),
                                         A(n("web.any.wild"), "10.0.4.2")]),
    Case("web.ANY.wild.skydns.local.", "A",
         answer=[A("web.ANY.wild.skydns.local.", "10.0.4.1"),
                 A("web.ANY.wild.skydns.local.", "10.0.4.2")]),
    Case(n("db.*.wild"), "A", answer=[A(n("db.*.wild"), "10.0.4.3"),
                                      A(n("db.*.wild"), "10.0.4.4")]),
    Case(n("1.web.*.wild"), "A", answer=[A(n("1.web.*.wild"), "10.0.4.1"),
                                         A(n("1.web.*.wild"), "10.0.4.2")]),
    Case(n("*.web.east.wild"), "A", answer=[A(n("*.web.east.wild"), "10.0.4.1")]),
    Case(n("nope.*.wild"), "A", "NXDOMAIN"),
    Case(n("*.nope.wild"), "A", "NXDOMAIN"),
    # --- A / AAAA by family
    Case(n("dual"), "A", answer=[A(n("dual"), "10.0.5.1")]),
    Case(n("dual"), "AAAA", answer=[AAAA(n("dual"), "fd00::51")]),
    Case(n("v4.dual"), "AAAA"),                                  # NODATA
    Case(n("v6.dual"), "AAAA", answer=[AAAA(n("v6.dual"), "fd00::51")]),
    Case(n("v6.dual"), "A"),
    # --- CNAME chasing inside the domain
    Case(n("alias1.cn"), "A", ordered=True, answer=[
        CNAME(n("alias1.cn"), n("alias2.cn")), CNAME(n("alias2.cn"), n("alias3.cn")),
        A(n("alias3.cn"), "10.0.6.3")]),
    Case(n("alias2.cn"), "A", ordered=True, answer=[
        CNAME(n("alias2.cn"), n("alias3.cn")), A(n("alias3.cn"), "10.0.6.3")]),
    Case(n("alias1.cn"), "AAAA"),  # the chain ends without an AAAA: CNAMEs dropped, NODATA
    Case(n("c0.chain"), "A", ordered=True, answer=[
        *[CNAME(n(f"c{i}.chain"), n(f"c{i + 1}.chain")) for i in range(8)],
        A(n("c8.chain"), "10.0.7.8")]),                  # 8 CNAMEs: the limit
    Case(n("d0.chain"), "A"),                            # 9 CNAMEs: too deep, NODATA
    Case(n("d1.chain"), "A", ordered=True, answer=[
        *[CNAME(n(f"d{i}.chain"), n(f"d{i + 1}.chain")) for i in range(1, 9)],
        A(n("d9.chain"), "10.0.7.9")]),
    Case(n("l1.loop"), "A"),                             # a loop: NODATA
    Case(n("self"), "A", answer=[A(n("self"), "10.0.8.1")]),  # host == qname skipped
    Case(n("x.self"), "A", ordered=True, answer=[
        CNAME(n("x.self"), n("self")), A(n("self"), "10.0.8.1")]),
    Case(n("x.dangle"), "A"),                            # in-domain target with nothing
    Case(n("dangle"), "A", answer=[A(n("dangle"), "10.0.8.2")]),
    Case(n("dangle2"), "A", ordered=True, answer=[
        CNAME(n("dangle2"), n("v4.dual")), A(n("v4.dual"), "10.0.5.1")]),
    Case(n("dangle2"), "AAAA"),
    # CNAME to an external name, resolved upstream (TTL 300 there: the lowest wins)
    Case(n("ext"), "A", ordered=True, answer=[
        CNAME(n("ext"), "www.example.com.", 300), A("www.example.com.", "192.0.2.10", 300)]),
    Case(n("ext"), "AAAA", ordered=True, answer=[
        CNAME(n("ext"), "www.example.com.", 300),
        AAAA("www.example.com.", "2001:db8::10", 300)]),
    # --- CNAME queries: the exact key only, only a name host
    Case(n("ext"), "CNAME", answer=[CNAME(n("ext"), "www.example.com.")]),
    # a target that does not resolve upstream (NXDOMAIN, SERVFAIL, a bare single label):
    # the CNAME is left out, as SkyDNS's AddressRecords does, so the name is NODATA...
    *[Case(n(name), t) for name in ("extnx", "extfail", "extbare") for t in ("A", "AAAA")],
    # ...but a CNAME query still answers it (no chase), and a target that exists upstream
    # without the asked type keeps the bare CNAME (SkyDNS's Lookup succeeded)
    *[Case(n(name), "CNAME", answer=[CNAME(n(name), target)])
      for name, target in (("extnx", "gone.example.com."), ("extfail", "broken.example.com."),
                           ("extbare", "server1."))],
    Case(n("extmail"), "AAAA", answer=[CNAME(n("extmail"), "mail.example.com.")]),
    Case(n("extmail"), "A", ordered=True, answer=[
        CNAME(n("extmail"), "mail.example.com.", 300), A("mail.example.com.", "192.0.2.25", 300)]),
    # IP hosts beside an unresolvable target: the addresses, without the CNAME
    Case(n("mixext"), "A", answer=[A(n("mixext"), "10.0.26.1"), A(n("mixext"), "10.0.26.2")]),
    Case(n("mixext"), "AAAA"),
    # recursion off: an external target is never looked up, so its CNAME is left out too
    Case(n("ext"), "A", server="norec"),
    Case(n("ext"), "CNAME", server="norec", answer=[CNAME(n("ext"), "www.example.com.")]),
    Case(n("mixext"), "A", server="norec",
         answer=[A(n("mixext"), "10.0.26.1"), A(n("mixext"), "10.0.26.2")]),
    Case(n("alias1.cn"), "CNAME", answer=[CNAME(n("alias1.cn"), n("alias2.cn"))]),
    Case(n("alias3.cn"), "CNAME"),                       # IP host: NODATA
    Case(n("dangle"), "CNAME"),                          # CNAME records only below: NODATA
    Case(n("cn"), "CNAME"),                              # no record at the key itself
    Case(n("nope.cn"), "CNAME", "NXDOMAIN"),
    # --- SRV
    Case(n("svc"), "SRV", answer=[
        SRV(n("svc"), 10, 66, 8080, n("a.svc")), SRV(n("svc"), 10, 33, 8080, n("b.svc")),
        SRV(n("svc"), 20, 100, 8081, n("c.svc"))],
        extra=[A(n("a.svc"), "10.0.9.1"), A(n("b.svc"), "10.0.9.2"),
               A(n("c.svc"), "10.0.9.3")]),
    Case(n("a.svc"), "SRV", answer=[SRV(n("a.svc"), 10, 100, 8080, n("a.svc"))],
         extra=[A(n("a.svc"), "10.0.9.1")]),
    Case(n("w3"), "SRV", answer=[  # floor(100*10/60), floor(100*20/60), floor(100*30/60)
        SRV(n("w3"), 10, 16, 0, n("a.w3")), SRV(n("w3"), 10, 33, 0, n("b.w3")),
        SRV(n("w3"), 10, 50, 0, n("c.w3"))],
        extra=[A(n("a.w3"), "10.0.10.1"), A(n("b.w3"), "10.0.10.2"),
               A(n("c.w3"), "10.0.10.3")]),
    Case(n("w0"), "SRV", answer=[  # weight 0 counts as 100: 100/400 and 300/400
        SRV(n("w0"), 10, 25, 2, n("a.w0")), SRV(n("w0"), 10, 75, 2, n("b.w0"))],
        extra=[A(n("a.w0"), "10.0.10.5"), A(n("b.w0"), "10.0.10.6")]),
    Case(n("prio"), "SRV", answer=[  # priority 0 is the default 10: one weight group
        SRV(n("prio"), 10, 25, 1, n("a.prio")), SRV(n("prio"), 10, 75, 1, n("b.prio"))]),
    Case(n("inst.x1.strip"), "SRV", answer=[SRV(n("inst.x1.strip"), 10, 100, 80,
                                                n("x1.strip"))],
         extra=[A(n("x1.strip"), "10.0.11.1")]),
    Case(n("strip2"), "SRV", answer=[SRV(n("strip2"), 10, 100, 80, n("host.strip2"))],
         extra=[A(n("host.strip2"), "10.0.11.2")]),         # targetstrip larger: ignored
    Case(n("_http._tcp.web"), "SRV", answer=[
        SRV(n("_http._tcp.web"), 10, 50, 80, n("webhost")),
        SRV(n("_http._tcp.web"), 10, 50, 81, n("cnweb"))],
        extra=[A(n("webhost"), "10.0.12.1"), AAAA(n("webhost"), "fd00::121"),
               CNAME(n("cnweb"), n("webhost"))]),
    Case(n("extsrv"), "SRV", answer=[SRV(n("extsrv"), 10, 100, 443, "www.example.com.")],
         extra=[A("www.example.com.", "192.0.2.10", 300),
                AAAA("www.example.com.", "2001:db8::10", 300)]),
    Case(n("dup"), "SRV", answer=[  # x and y are identical: collapsed before weighting
        SRV(n("dup"), 10, 50, 80, n("webhost")), SRV(n("dup"), 10, 50, 81, n("webhost"))],
        extra=[A(n("webhost"), "10.0.12.1"), AAAA(n("webhost"), "fd00::121")]),
    Case(n("mx"), "SRV", answer=[  # groups apply to SRV: m2 (g2) is dropped
        SRV(n("mx"), 10, 50, 0, n("m1.mx")), SRV(n("mx"), 10, 50, 0, n("m3.mx"))],
        extra=[A(n("m1.mx"), "10.0.16.1"), A(n("m3.mx"), "10.0.16.3")]),
    Case(n("nope.svc"), "SRV", "NXDOMAIN"),
    Case(n("*.svc"), "SRV", answer=[
        SRV(n("*.svc"), 10, 66, 8080, n("a.svc")), SRV(n("*.svc"), 10, 33, 8080, n("b.svc")),
        SRV(n("*.svc"), 20, 100, 8081, n("c.svc"))],
        extra=[A(n("a.svc"), "10.0.9.1"), A(n("b.svc"), "10.0.9.2"),
               A(n("c.svc"), "10.0.9.3")]),
    # --- TXT
    Case(n("t1.txt"), "TXT", answer=[f'{n("t1.txt")} 3600 IN TXT "hello world"']),
    Case(n("long.txt"), "TXT",
         answer=[f'{n("long.txt")} 3600 IN TXT "{"x" * 255}" "{"y" * 45}"']),
    Case(n("ip.txt"), "TXT"),
    Case(n("t1.txt"), "A"),
    Case(n("nope.txt"), "TXT", "NXDOMAIN"),
    Case(n("txt255"), "TXT", answer=[f'{n("txt255")} 3600 IN TXT "{"z" * 255}"']),
    Case(n("*.txt"), "TXT", answer=[f'{n("*.txt")} 3600 IN TXT "hello world"',
                                    f'{n("*.txt")} 3600 IN TXT "{"x" * 255}" "{"y" * 45}"']),
    # --- MX: mail records only, groups do not apply, IP hosts get glue
    Case(n("mx"), "MX", answer=[f"{n('mx')} 3600 IN MX 10 {n('m1.mx')}",
                                f"{n('mx')} 3600 IN MX 20 mail.example.com."],
         extra=[A(n("m1.mx"), "10.0.16.1"), A("mail.example.com.", "192.0.2.25", 300)]),
    Case(n("m3.mx"), "MX"),
    Case(n("nope.mx"), "MX", "NXDOMAIN"),
    # --- NS and SOA at the apex only
    Case(D, "NS", answer=[f"{D} 3600 IN NS {n('ns1.ns.dns')}",
                          f"{D} 3600 IN NS {n('ns2.ns.dns')}"],
         extra=[A(n("ns1.ns.dns"), "127.0.0.53"), AAAA(n("ns2.ns.dns"), "fd00::53")]),
    Case("SkyDNS.Local.", "SOA", ns=[], answer=[
        f"SkyDNS.Local. 3600 IN SOA ns.dns.{D} hostmaster.skydns.local. SERIAL 28800 7200 "
        f"604800 60"]),
    Case(n("ns.dns"), "A", answer=[A(n("ns.dns"), "127.0.0.53")]),
    Case(n("ns.dns"), "NS"),
    Case(n("a.b"), "NS"),
    Case(n("a.b"), "SOA"),
    Case(n("nope"), "SOA", "NXDOMAIN"),
    Case(n("nope"), "NS", "NXDOMAIN"),
    # --- NXDOMAIN vs NODATA for every type path
    *[Case(n("nope"), t, "NXDOMAIN") for t in ("A", "AAAA", "SRV", "TXT", "MX", "CNAME",
                                                "NAPTR")],
    Case(n("deep.er.nope"), "A", "NXDOMAIN"),
    *[Case(n("a.b"), t) for t in ("AAAA", "TXT", "MX", "CNAME", "NAPTR", "PTR")],
    Case(n("a.b"), "SRV", answer=[SRV(n("a.b"), 10, 100, 0, n("a.b"))],
         extra=[A(n("a.b"), "10.0.0.1")]),
    Case(D, "NAPTR"),
    # --- groups
    Case(n("grp"), "A", answer=[A(n("grp"), "10.0.17.1"), A(n("grp"), "10.0.17.2"),
                                A(n("grp"), "10.0.17.4")]),
    Case(n("sub.grp"), "A", answer=[A(n("sub.grp"), "10.0.17.2"),
                                    A(n("sub.grp"), "10.0.17.4")]),
    Case(n("deep.sub.grp"), "A", answer=[A(n("deep.sub.grp"), "10.0.17.3")]),
    # --- answer dedup
    Case(n("dedup"), "A", answer=[A(n("dedup"), "10.0.18.1")]),
    # --- TTLs
    Case(n("def.ttl"), "A", answer=[A(n("def.ttl"), "10.0.19.1", 3600)]),
    Case(n("rec.ttl"), "A", answer=[A(n("rec.ttl"), "10.0.19.2", 30)]),
    Case(n("ttl"), "A", answer=[A(n("ttl"), "10.0.19.1", 30), A(n("ttl"), "10.0.19.2", 30)]),
    Case(n("cnttl"), "A", ordered=True, answer=[  # the CNAME's 3600 lowered to 30
        CNAME(n("cnttl"), n("rec.ttl"), 30), A(n("rec.ttl"), "10.0.19.2", 30)]),
    Case(n("ttlbig"), "A", answer=[A(n("ttlbig"), "10.0.19.3", 7200)]),
    Case(n("ttlbig2"), "A", answer=[A(n("ttlbig2"), "10.0.19.4", 3600),
                                    A(n("ttlbig2"), "10.0.19.5", 3600)]),
    # --- local.dns.<domain>
    Case(n("local.dns"), "A", answer=[A(n("local.dns"), "10.0.20.1")]),
    Case("Local.DNS.skydns.local.", "A", answer=[A("Local.DNS.skydns.local.", "10.0.20.1")]),
    # --- reverse: from /skydns/arpa (AA off), else forwarded
    Case("1.0.0.10.in-addr.arpa.", "PTR", aa=False, ns=[],
         answer=["1.0.0.10.in-addr.arpa. 3600 IN PTR web.default.svc.cluster.local."]),
    Case(V6_PTR_NAME, "PTR", aa=False, ns=[], answer=[f"{V6_PTR_NAME} 3600 IN PTR {n('v6host')}"]),
    Case("9.9.0.10.in-addr.arpa.", "PTR", aa=None, ns=[], ra=True,
         answer=["9.9.0.10.in-addr.arpa. 300 IN PTR fwd.example.net."]),
    Case("www.example.com.", "A", aa=None, ns=[], ra=True,
         answer=[A("www.example.com.", "192.0.2.10", 300)]),
    # --- the forwarding side: every reply carries RA, failures and refusals included
    Case("broken.example.com.", "A", "SERVFAIL", aa=False, ns=[], ra=True),
    Case("gone.example.com.", "A", "NXDOMAIN", aa=False, ns=[], ra=True),
    Case("www.example.com.", "A", "SERVFAIL", server="norec", aa=False, ns=[], ra=True),
    Case("www.example.com.", "A", "SERVFAIL", server="deadup", aa=False, ns=[], ra=True),
    Case("9.9.0.10.in-addr.arpa.", "PTR", "SERVFAIL", server="deadup", aa=False, ns=[],
         ra=True),
    # no upstream answers: a CNAME to an external name is left out, in-domain ones stay
    Case(n("ext"), "A", server="deadup"),
    Case(n("mixext"), "A", server="deadup",
         answer=[A(n("mixext"), "10.0.26.1"), A(n("mixext"), "10.0.26.2")]),
    Case(n("x.self"), "A", server="deadup", ordered=True, answer=[
        CNAME(n("x.self"), n("self")), A(n("self"), "10.0.8.1")]),
    # --- ANY: refused without RA, as SkyDNS does
    Case(n("a.b"), "ANY", "REFUSED", aa=None, ns=[], ra=False),
    Case("www.example.com.", "ANY", "REFUSED", aa=None, ns=[], ra=False),
    # --- underscore labels: SRV data, never A/AAAA/CNAME/TXT/MX for a name above them
    Case(n("und"), "A", answer=[A(n("und"), "10.0.21.2")]),
    Case(n("und"), "TXT"),
    Case(n("und"), "MX"),
    Case(n("und"), "AAAA"),
    Case(n("_x._tcp.und"), "SRV", answer=[SRV(n("_x._tcp.und"), 10, 100, 80,
                                              n("r._x._tcp.und"))],
         extra=[A(n("r._x._tcp.und"), "10.0.21.1")]),
    Case(n("und2"), "A", answer=[A(n("und2"), "10.0.21.3")]),
    Case(n("und2"), "CNAME"),
    # at or below an underscore label only SRV and TXT answer: other types are NODATA, not a
    # CNAME to the SRV target (qname-minimising resolvers ask `_x._tcp.<name> A` first)
    *[Case(name, t) for name in (n("_x._tcp.und"), n("_tcp.und"), n("_y._tcp.und2"),
                                 n("r._x._tcp.und"))
      for t in ("A", "AAAA", "CNAME", "MX")],
    Case(n("_x._tcp.und"), "TXT", answer=[f'{n("_x._tcp.und")} 3600 IN TXT "hidden"']),
    Case(n("_nope._tcp.und"), "A", "NXDOMAIN"),
    Case(n("web"), "A"),
    Case(n("web"), "TXT"),
    # --- malformed values beside good ones
    Case(n("bad"), "A", answer=[A(n("bad"), "10.0.22.1"), A(n("bad"), "10.0.22.3")]),
    Case(n("bad"), "SRV", answer=[SRV(n("bad"), 10, 50, 0, n("good1.bad")),
                                  SRV(n("bad"), 10, 50, 80, n("good2.bad"))],
         extra=[A(n("good1.bad"), "10.0.22.1"), A(n("good2.bad"), "10.0.22.3")]),
    # --- duplicates collapse; a dashed-address name yields as the target
    Case(n("dupip"), "SRV", answer=[SRV(n("dupip"), 10, 100, 0, n("b.dupip"))],
         extra=[A(n("b.dupip"), "10.0.27.1")]),
    Case(n("alias"), "SRV", answer=[SRV(n("alias"), 10, 50, 0, n("zz.alias")),
                                    SRV(n("alias"), 10, 50, 0, n("10-0-27-3.alias"))],
         extra=[A(n("zz.alias"), "10.0.27.2"), A(n("10-0-27-3.alias"), "10.0.27.3")]),
    Case(n("alias"), "A", answer=[A(n("alias"), "10.0.27.2"), A(n("alias"), "10.0.27.3")]),
    Case(n("10-0-27-2.alias"), "A", answer=[A(n("10-0-27-2.alias"), "10.0.27.2")]),
    # --- JSON keys case-insensitive, unknown keys ignored
    Case(n("jcase"), "A", answer=[A(n("jcase"), "10.0.23.1", 40)]),
    Case(n("jcase"), "SRV", answer=[SRV(n("jcase"), 5, 100, 81, n("x.jcase"), 40)],
         extra=[A(n("x.jcase"), "10.0.23.1", 40)]),

    # === cluster.local. (kube2sky's layout)
    Case(f"kubernetes.default.svc.{C}", "A", server="cluster",
         answer=[A(f"kubernetes.default.svc.{C}", "10.0.0.1", 30)]),
    Case(f"web.default.svc.{C}", "A", server="cluster",
         answer=[A(f"web.default.svc.{C}", "10.0.0.100", 30)]),
    Case(f"_http._tcp.web.default.svc.{C}", "SRV", server="cluster",
         answer=[SRV(f"_http._tcp.web.default.svc.{C}", 10, 100, 80, f"web.default.svc.{C}",
                     30)],
         extra=[A(f"web.default.svc.{C}", "10.0.0.100", 30)]),
    # a headless service's A query returns only its addresses
    Case(f"db.default.svc.{C}", "A", server="cluster",
         answer=[A(f"db.default.svc.{C}", "10.244.1.10", 30),
                 A(f"db.default.svc.{C}", "10.244.2.20", 30)]),
    *[Case(f"db.default.svc.{C}", t, server="cluster")
      for t in ("AAAA", "CNAME", "TXT", "MX")],
    Case(f"_pg._tcp.db.default.svc.{C}", "SRV", server="cluster",
         answer=[SRV(f"_pg._tcp.db.default.svc.{C}", 10, 50, 5432,
                     f"{L_DB1}.db.default.svc.{C}", 30),
                 SRV(f"_pg._tcp.db.default.svc.{C}", 10, 50, 5432,
                     f"{L_DB2}.db.default.svc.{C}", 30)],
         extra=[A(f"{L_DB1}.db.default.svc.{C}", "10.244.1.10", 30),
                A(f"{L_DB2}.db.default.svc.{C}", "10.244.2.20", 30)]),
    Case(f"{L_DB1}.db.default.svc.{C}", "A", server="cluster",
         answer=[A(f"{L_DB1}.db.default.svc.{C}", "10.244.1.10", 30)]),
    Case(f"10-244-1-10.default.pod.{C}", "A", server="cluster",
         answer=[A(f"10-244-1-10.default.pod.{C}", "10.244.1.10", 30)]),
    Case(f"ext.default.svc.{C}", "CNAME", server="cluster",
         answer=[CNAME(f"ext.default.svc.{C}", "www.example.com.", 30)]),
    Case(f"ext.default.svc.{C}", "A", server="cluster", ordered=True,
         answer=[CNAME(f"ext.default.svc.{C}", "www.example.com.", 30),
                 A("www.example.com.", "192.0.2.10", 30)]),
    # an ExternalName whose target does not resolve: NODATA (SkyDNS); CoreDNS answers the
    # bare CNAME here (it does not chase ExternalName targets)
    Case(f"extgone.default.svc.{C}", "A", server="cluster"),
    Case(f"extgone.default.svc.{C}", "CNAME", server="cluster",
         answer=[CNAME(f"extgone.default.svc.{C}", "gone.example.com.", 30)]),
    Case(f"dns-version.{C}", "TXT", server="cluster",
         answer=[f'dns-version.{C} 3600 IN TXT "1.1.0"']),
    Case(f"nope.default.svc.{C}", "A", "NXDOMAIN", server="cluster"),
    Case(C, "NS", server="cluster"),  # no ns.dns.cluster.local. records: NODATA
    Case(f"nope.default.svc.{C}", "SRV", "NXDOMAIN", server="cluster"),
    Case(C, "SOA", server="cluster", ns=[], answer=[
        f"{C} 3600 IN SOA ns.dns.{C} hostmaster.skydns.local. SERIAL 28800 7200 604800 60"]),
    Case("100.0.0.10.in-addr.arpa.", "PTR", server="cluster", aa=False, ns=[],
         answer=[f"100.0.0.10.in-addr.arpa. 30 IN PTR web.default.svc.{C}"]),
    Case(n("a.b"), "A", server="cluster", aa=None, ns=[], rcode="NXDOMAIN", ra=True),
    *[Case(f"_http._tcp.web.default.svc.{C}", t, server="cluster")
      for t in ("A", "AAAA", "CNAME")],
    # -zone-ttl: the zone's TTL replaces the records' own (30), the closest zone wins, and
    # negative answers carry their zone's SOA TTL and minimum (the record TTL by default)
    Case(f"web.default.svc.{C}", "A", server="zoned",
         answer=[A(f"web.default.svc.{C}", "10.0.0.100", 5)]),
    Case(f"_http._tcp.web.default.svc.{C}", "SRV", server="zoned",
         answer=[SRV(f"_http._tcp.web.default.svc.{C}", 10, 100, 80, f"web.default.svc.{C}",
                     5)],
         extra=[A(f"web.default.svc.{C}", "10.0.0.100", 5)]),
    Case(f"10-244-1-10.default.pod.{C}", "A", server="zoned",
         answer=[A(f"10-244-1-10.default.pod.{C}", "10.244.1.10", 10)]),
    Case(f"ext.default.svc.{C}", "A", server="zoned", ordered=True,  # the lowest wins
         answer=[CNAME(f"ext.default.svc.{C}", "www.example.com.", 5),
                 A("www.example.com.", "192.0.2.10", 5)]),
    Case("100.0.0.10.in-addr.arpa.", "PTR", server="zoned", aa=False, ns=[],
         answer=[f"100.0.0.10.in-addr.arpa. 7 IN PTR web.default.svc.{C}"]),
    Case(C, "SOA", server="zoned", ns=[], answer=[
        f"{C} 5 IN SOA ns.dns.{C} hostmaster.skydns.local. SERIAL 28800 7200 604800 5"]),
    *[Case(name, t, rcode, server="zoned", ns=[
        f"{C} {neg} IN SOA ns.dns.{C} hostmaster.skydns.local. SERIAL 28800 7200 604800 {neg}"])
      for name, t, rcode, neg in (
          (f"nope.default.svc.{C}", "A", "NXDOMAIN", 5),
          (f"nope.default.svc.{C}", "SRV", "NXDOMAIN", 5),
          (f"db.default.svc.{C}", "AAAA", "NOERROR", 5),
          (f"nope.default.pod.{C}", "A", "NXDOMAIN", 2),
          (f"10-244-1-10.default.pod.{C}", "TXT", "NOERROR", 2),
          (f"pod.{C}", "AAAA", "NOERROR", 2),
          (f"nopod.{C}", "A", "NXDOMAIN", 5))],
    # fewer labels than -ndots: not forwarded (SkyDNS), but NXDOMAIN with a root SOA
    # instead of SkyDNS's SERVFAIL, so a pod's search path ends with a definite answer
    *[Case(name, "A", "NXDOMAIN", aa=False, ra=True, ns=[
        ". 60 IN SOA a.root-servers.net. nstld.verisign-grs.com. SERIAL 1800 900 604800 60"])
      for name in ("nonexistent.", "Localhost.")],
]

PARAMS = [pytest.param(c, id=c.id()) for c in CASES]

REGRESSIONS = [  # deviations found by these tests and fixed in the server
    # "A name host gives qname CNAME host, then the target is chased": one CNAME per record
    # ... but at most one CNAME per owner (RFC 2181 10.1): the first name host in key order
    # whose target resolves (a -> t1; b -> t2 is left out), every time
    regression(Case(n("two"), "A", answer=[
        CNAME(n("two"), n("t1")), A(n("t1"), "10.0.28.1")])),
    # floor(100*97/97) = 100, but 100.0/97*97 in floating point is 99.99999999999999
    regression(Case(n("w97"), "SRV", answer=[SRV(n("w97"), 10, 100, 1, n("a.w97"))],
               extra=[A(n("a.w97"), "10.0.10.9")])),
    # the TXT-only record gives no SRV, so it is not part of the weight sum
    regression(Case(n("mixed"), "SRV", answer=[SRV(n("mixed"), 10, 100, 80, n("srv.mixed"))],
               extra=[A(n("srv.mixed"), "10.0.25.1")])),
]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("case", PARAMS + REGRESSIONS)
def test_table(request, case, transport):
    server = request.getfixturevalue(case.server)
    for _ in range(2 if transport == "udp" else 1):
        t0 = time.time()
        msg = ask(server, case.qname, case.qtype, tcp=transport == "tcp")
        t1 = time.time()
        check(case, msg, t0, t1)


# -- leases ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_lease_ttl(sky, tcp):
    """No ttl: the remaining lease TTL; ttl 30 under a 100 s lease: 30; ttl 3000: <= 100."""
    msg = sky.query(n("a.lease"), "A", tcp=tcp)
    assert rr_lines(msg.answer, n("a.lease")) and msg.answer[0][0].to_text() == "10.0.24.1"
    assert 0 < msg.answer[0].ttl <= LEASE_TTL
    assert msg.answer[0].ttl >= LEASE_TTL - 60  # the lease was granted at module start
    msg = sky.query(n("b.lease"), "A", tcp=tcp)
    assert rr_lines(msg.answer, n("b.lease")) == [A(n("b.lease"), "10.0.24.2", 30)]
    msg = sky.query(n("c.lease"), "A", tcp=tcp)
    assert msg.answer[0][0].to_text() == "10.0.24.3"
    assert LEASE_TTL - 60 <= msg.answer[0].ttl <= LEASE_TTL


def test_lease_ttl_counts_down(sky):
    first = sky.query(n("a.lease"), "A").answer[0].ttl
    time.sleep(1.2)
    second = sky.query(n("a.lease"), "A").answer[0].ttl
    assert second < first


# -- round robin ---------------------------------------------------------------------------------


def test_round_robin_default(sky):
    orders = set()
    for _ in range(8):
        msg = sky.query(n("co"), "A")
        orders.add(tuple(rd.to_text() for rd in msg.answer[0]))
    assert all(sorted(o) == ["10.0.3.1", "10.0.3.2", "10.0.3.3"] for o in orders)
    assert len(orders) > 1, "answers are shuffled unless -round-robin=false"


# -- CHAOS ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_chaos(sky, tcp):
    def txt(name):
        msg = sky.query(name, "TXT", rdclass="CH", tcp=tcp)
        assert msg.rcode() == dns.rcode.NOERROR, msg.to_text()
        assert len(msg.answer) == 1 and msg.answer[0].rdclass == dns.rdataclass.CH
        assert msg.answer[0].name == dns.name.from_text(name)
        return b"".join(msg.answer[0][0].strings).decode()

    version = txt("version.bind.")
    assert version and version == txt("version.server.")
    assert txt("hostname.bind.") == socket.gethostname() == txt("id.server.")
    assert txt("VERSION.BIND.") == version
    # SkyDNS's four authors, one TXT each, TTL 0, at authors.bind. and at the domain itself
    for name in ("authors.bind.", D, "Authors.Bind."):
        msg = sky.query(name, "TXT", rdclass="CH", tcp=tcp)
        assert msg.rcode() == dns.rcode.NOERROR and msg.flags & dns.flags.AA, msg.to_text()
        assert rr_lines(msg.answer, name) == [f'{name} 0 CH TXT "{author}"' for author in (
            "Erik St. Martin", "Brian Ketelsen", "Miek Gieben", "Michael Crosby")]
    for name, rdtype in (("version.bind.", "A"), ("foo.bind.", "TXT"),
                         (n("a.b"), "TXT"), ("hostname.bind.", "ANY"), (D, "A")):
        msg = sky.query(name, rdtype, rdclass="CH", tcp=tcp)
        assert msg.rcode() == dns.rcode.SERVFAIL, (name, rdtype, msg.to_text())
    msg = sky.query("www.example.com.", "ANY", tcp=tcp)
    assert msg.rcode() == dns.rcode.REFUSED


# -- a bad record never hides good ones ------------------------------------------------------------


def metric_values(text):
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def skipped_metric(server):
    """The metric counting skipped (malformed) etcd values."""
    values = metric_values(server.get("/metrics"))
    found = {k: v for k, v in values.items()
             if re.search(r"skip|malformed|invalid|bad_record", k)}
    assert found, "no metric counts skipped records:\n" + "\n".join(values)
    return max(found.values())


def test_bad_records_counted_and_logged_once(sky):
    assert skipped_metric(sky) == len(BAD_KEYS)
    out = sky.output()
    for key in BAD_KEYS:
        assert out.count(key) == 1, (key, out)


def test_bad_record_rewritten_is_not_logged_again(sky, kv):
    before = skipped_metric(sky)
    for key in BAD_KEYS:  # the same bad values again, then a good record after them
        kv.put(key, RECORDS[key])
    kv.put(f"{PREFIX}/badsync/x", j(host="10.0.26.1"))
    try:
        poll(sky, n("badsync"), "A", lambda m: m.answer)
        msg = sky.query(n("bad"), "A")
        assert sorted(rd.to_text() for rd in msg.answer[0]) == ["10.0.22.1", "10.0.22.3"]
        assert skipped_metric(sky) == before
        out = sky.output()
        for key in BAD_KEYS:
            assert out.count(key) == 1, (key, out)
    finally:
        kv.delete(f"{PREFIX}/badsync/x")


def test_bad_record_written_later_beside_good(sky, kv):
    good, broken = f"{PREFIX}/dynbad/good", f"{PREFIX}/dynbad/broken"
    kv.put(good, j(host="10.0.27.1"))
    try:
        poll(sky, n("dynbad"), "A", lambda m: m.answer)
        for value in ('{"host":"10.0.27.2","weight":"5"}', '{"host":"10.0.27.300"}', "{"):
            kv.put(broken, value)
            kv.put(f"{PREFIX}/dynbad2/sync", j(host="10.0.27.9"))  # a marker after it
            poll(sky, n("dynbad2"), "A", lambda m: m.answer)
            kv.delete(f"{PREFIX}/dynbad2/sync")
            for tcp in (False, True):
                msg = sky.query(n("dynbad"), "A", tcp=tcp)
                assert msg.rcode() == dns.rcode.NOERROR, msg.to_text()
                assert rr_lines(msg.answer, n("dynbad")) == [A(n("dynbad"), "10.0.27.1")]
        assert sky.output().count(broken) >= 1
        kv.put(broken, j(host="10.0.27.2"))  # fixed: now served too
        poll(sky, n("dynbad"), "A",
             lambda m: sorted(rr_lines(m.answer, n("dynbad"))) ==
             [A(n("dynbad"), "10.0.27.1"), A(n("dynbad"), "10.0.27.2")])
    finally:
        kv.delete_prefix(f"{PREFIX}/dynbad/")
        kv.delete_prefix(f"{PREFIX}/dynbad2/")


# -- changes in etcd are served within a bounded wait ------------------------------------------


def poll(server, name, rdtype, predicate, tcp=False, timeout=CHANGE_WAIT):
    deadline = time.monotonic() + timeout
    while True:
        msg = server.query(name, rdtype, tcp=tcp)
        if predicate(msg):
            return msg
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} {rdtype} not as expected within {timeout}s; last "
                                 f"answer:\n{msg.to_text()}")
        time.sleep(0.02)


def warm(server, name, rdtype):
    """Ask twice over UDP and once over TCP, so the answer is in the server's caches."""
    msgs = [server.query(name, rdtype), server.query(name, rdtype),
            server.query(name, rdtype, tcp=True)]
    return msgs[-1]


def answers(msg, qname):
    return sorted(rr_lines(msg.answer, qname))


def is_nx(msg):
    return msg.rcode() == dns.rcode.NXDOMAIN and not msg.answer


@pytest.fixture
def dyn(kv):
    yield kv
    kv.delete_prefix(f"{PREFIX}/dyn/")
    kv.delete(f"{PREFIX}/hosts/node1/extra")
    kv.delete("/skydns/arpa/in-addr/10/0/0/2")


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_nxdomain_becomes_answer(sky, dyn, tcp):
    name = n(f"new{int(tcp)}.dyn")
    assert is_nx(warm(sky, name, "A"))
    dyn.put(key_of(name) + "/x", j(host="10.0.30.1"))
    msg = poll(sky, name, "A", lambda m: m.answer, tcp=tcp)
    assert answers(msg, name) == [A(name, "10.0.30.1")]
    assert msg.rcode() == dns.rcode.NOERROR


def test_deleted_record_disappears(sky, dyn):
    name = n("gone.dyn")
    dyn.put(key_of(name), j(host="10.0.30.2"))
    poll(sky, name, "A", lambda m: m.answer)
    warm(sky, name, "A")
    dyn.delete(key_of(name))
    poll(sky, name, "A", is_nx)
    poll(sky, name, "A", is_nx, tcp=True)


def test_changed_value_and_subdomain_answers(sky, dyn):
    parent, child = n("parent.dyn"), n("x.child.parent.dyn")
    dyn.put(key_of(parent) + "/a", j(host="10.0.30.3"))
    poll(sky, parent, "A", lambda m: m.answer)
    warm(sky, parent, "A")
    # a key deeper below the name: the name's answer grows
    dyn.put(key_of(child), j(host="10.0.30.4"))
    poll(sky, parent, "A", lambda m: answers(m, parent) ==
         [A(parent, "10.0.30.3"), A(parent, "10.0.30.4")])
    warm(sky, parent, "A")
    # a changed value
    dyn.put(key_of(parent) + "/a", j(host="10.0.30.5", ttl=50))
    poll(sky, parent, "A", lambda m: answers(m, parent) ==
         [A(parent, "10.0.30.4", 50), A(parent, "10.0.30.5", 50)], tcp=True)
    poll(sky, parent, "A", lambda m: answers(m, parent) ==
         [A(parent, "10.0.30.4", 50), A(parent, "10.0.30.5", 50)])


def test_nodata_becomes_answer(sky, dyn):
    name = n("nd.dyn")
    dyn.put(key_of(name) + "/a", j(host="10.0.30.6"))
    poll(sky, name, "A", lambda m: m.answer)
    msg = warm(sky, name, "TXT")
    assert msg.rcode() == dns.rcode.NOERROR and not msg.answer
    dyn.put(key_of(name) + "/t", j(text="now"))
    msg = poll(sky, name, "TXT", lambda m: m.answer)
    assert answers(msg, name) == [f'{name} 3600 IN TXT "now"']


def test_cname_target_change_visible_through_owner(sky, dyn):
    alias, target = n("alias.dyn"), n("tgt.dyn")
    dyn.put(key_of(target), j(host="10.0.30.7"))
    dyn.put(key_of(alias), j(host=target))
    poll(sky, alias, "A", lambda m: len(m.answer) == 2)
    msg = warm(sky, alias, "A")
    assert rr_lines(msg.answer, alias) == [CNAME(alias, target), A(target, "10.0.30.7")]
    dyn.put(key_of(target), j(host="10.0.30.8"))
    for tcp in (False, True):
        poll(sky, alias, "A", lambda m: rr_lines(m.answer, alias) ==
             [CNAME(alias, target), A(target, "10.0.30.8")], tcp=tcp)
    # the target disappears: the in-domain chase finds nothing, the CNAME is dropped
    dyn.delete(key_of(target))
    poll(sky, alias, "A", lambda m: m.rcode() == dns.rcode.NOERROR and not m.answer)
    # and comes back
    dyn.put(key_of(target), j(host="10.0.30.9"))
    poll(sky, alias, "A", lambda m: rr_lines(m.answer, alias) ==
         [CNAME(alias, target), A(target, "10.0.30.9")])


def test_srv_target_change_visible_in_additional(sky, dyn):
    name, target = n("srv.dyn"), n("srvtgt.dyn")
    dyn.put(key_of(target), j(host="10.0.30.10"))
    dyn.put(key_of(name) + "/x", j(host=target, port=80))
    poll(sky, name, "SRV", lambda m: m.additional)
    warm(sky, name, "SRV")
    dyn.put(key_of(target), j(host="10.0.30.11"))
    msg = poll(sky, name, "SRV", lambda m: rr_lines(m.additional, name) ==
               [A(target, "10.0.30.11")])
    assert rr_lines(msg.answer, name) == [SRV(name, 10, 100, 80, target)]


def test_ns_follows_ns_dns(sky, dyn):
    msg = warm(sky, D, "NS")
    assert len(rr_lines(msg.answer, D)) == 2
    ns3 = key_of(n("ns3.ns.dns"))
    dyn.put(ns3, j(host="127.0.0.54"))
    try:
        msg = poll(sky, D, "NS", lambda m: len(rr_lines(m.answer, D)) == 3)
        assert f"{D} 3600 IN NS {n('ns3.ns.dns')}" in rr_lines(msg.answer, D)
        assert A(n("ns3.ns.dns"), "127.0.0.54") in rr_lines(msg.additional, D)
    finally:
        dyn.delete(ns3)
    poll(sky, D, "NS", lambda m: len(rr_lines(m.answer, D)) == 2)


def test_local_dns_follows_local_name(sky, dyn):
    local = n("local.dns")
    msg = warm(sky, local, "A")
    assert answers(msg, local) == [A(local, "10.0.20.1")]
    dyn.put(key_of(LOCAL_NAME) + "/extra", j(host="10.0.30.12"))
    poll(sky, local, "A", lambda m: answers(m, local) ==
         [A(local, "10.0.20.1"), A(local, "10.0.30.12")])


def test_ptr_put_after_forwarded(sky, dyn):
    name = "2.0.0.10.in-addr.arpa."
    msg = sky.query(name, "PTR")
    assert msg.rcode() == dns.rcode.NXDOMAIN  # not in etcd: forwarded, upstream says NX
    sky.query(name, "PTR", tcp=True)
    dyn.put("/skydns/arpa/in-addr/10/0/0/2", j(host=n("two.dyn")))
    msg = poll(sky, name, "PTR", lambda m: m.answer)
    assert rr_lines(msg.answer, name) == [f"{name} 3600 IN PTR {n('two.dyn')}"]
    assert not msg.flags & dns.flags.AA
    dyn.put("/skydns/arpa/in-addr/10/0/0/2", j(host=n("deux.dyn")))
    poll(sky, name, "PTR", lambda m: rr_lines(m.answer, name) ==
         [f"{name} 3600 IN PTR {n('deux.dyn')}"])


def test_wildcard_answer_follows_changes(sky, dyn):
    name = n("*.wc.dyn")
    dyn.put(key_of(n("a.wc.dyn")), j(host="10.0.30.13"))
    poll(sky, name, "A", lambda m: m.answer)
    warm(sky, name, "A")
    dyn.put(key_of(n("b.wc.dyn")), j(host="10.0.30.14"))
    poll(sky, name, "A", lambda m: answers(m, name) ==
         [A(name, "10.0.30.13"), A(name, "10.0.30.14")])


def test_revoked_lease_removes_record(sky, dyn):
    name = n("leased.dyn")
    lease = dyn.lease(60)
    dyn.put(key_of(name), j(host="10.0.30.15"), lease=lease)
    msg = poll(sky, name, "A", lambda m: m.answer)
    assert 0 < msg.answer[0].ttl <= 60
    warm(sky, name, "A")
    lease.revoke()
    poll(sky, name, "A", is_nx)


def test_case_preserved_across_cache(sky):
    """The owner follows the client's spelling whatever spelling filled the cache."""
    spellings = ["dUaL.skydns.local.", "dual.skydns.local.", "DUAL.SKYDNS.LOCAL.",
                 "Dual.SkyDns.Local."]
    for _ in range(2):
        for name in spellings:
            for tcp in (False, True):
                msg = sky.query(name, "AAAA", tcp=tcp)
                assert [rrset.name.to_text() for rrset in msg.answer] == [name]
                assert msg.question[0].name.to_text() == name


# -- skydns.record unit tests ----------------------------------------------------------------

from skydns import record as R  # noqa: E402


@pytest.mark.parametrize("value", [
    "not json {", "[1, 2]", '"a string"', "42", '{"port":"80"}', '{"port":true}',
    '{"port":80.5}', '{"port":70000}', '{"priority":-1}', '{"ttl":"30"}',
    '{"host":"10.0.0.300"}', '{"host":"1.2.3"}', '{"host":"fd00::zz"}', '{"host":5}',
    '{"text":["a"]}', '{"mail":"yes"}', '{"mail":1}', '{"group":1}', b"\xff\xfe",
])
def test_parse_record_rejects(value):
    with pytest.raises(R.RecordError):
        R.parse_record("/skydns/local/skydns/x", value)


def test_parse_record_fields():
    r = R.parse_record("/skydns/local/skydns/b/a",
                       '{"HOST":"10.0.0.1","Port":80,"TtL":5,"MAIL":true,"Priority":3,'
                       '"WEIGHT":7,"TEXT":"t","Group":"g","TargetStrip":1,"other":{"x":1}}')
    assert (r.host, r.port, r.ttl, r.mail, r.priority, r.weight, r.text, r.group,
            r.targetstrip) == ("10.0.0.1", 80, 5, True, 3, 7, "t", "g", 1)
    assert str(r.ip) == "10.0.0.1" and r.family == 4 and r.target is None
    r = R.parse_record("/k", b'{"host":"fd00::1"}')
    assert r.family == 6 and r.port == 0 and r.priority == 0 and r.ttl == 0 and not r.mail
    r = R.parse_record("/k", '{"host":"WWW.Example.COM"}')
    assert r.ip is None and r.target == "www.example.com."
    r = R.parse_record("/k", '{"text":"only text"}')
    assert r.ip is None and r.target is None and r.text == "only text"


def test_name_key_mapping():
    assert R.name_to_key("a.b.skydns.local.") == "/skydns/local/skydns/b/a"
    assert R.name_to_key("A.B.SkyDNS.Local") == "/skydns/local/skydns/b/a"
    assert R.name_to_key("web.ns.svc.cluster.local.", "custom") == \
        "/custom/local/cluster/svc/ns/web"
    assert R.key_to_name("/skydns/local/skydns/b/a") == "a.b.skydns.local."
    assert R.key_to_name("/skydns/arpa/in-addr/10/0/0/1") == "1.0.0.10.in-addr.arpa."
    assert R.key_to_name("/custom/local/cluster/x", "custom") == "x.cluster.local."
    for name in ("a.b.skydns.local.", "_http._tcp.web.ns.svc.cluster.local.", V6_PTR_NAME):
        assert R.key_to_name(R.name_to_key(name)) == name
        assert R.name_to_key(name) == key_of(name)


@pytest.mark.parametrize("host,label", [
    ("10.0.0.1", "c88f1059"), ("10.3.0.214", "6ead029a"), ("10.244.1.10", "eab4ec")])
def test_fnv1a32_label(host, label):
    value = f'{{"host":"{host}","priority":10,"weight":10,"ttl":30,"targetstrip":0}}'
    assert R.fnv1a32_label(value) == label == fnv1a32(value)
    assert R.encode_record(host) == value


@pytest.mark.parametrize("host,port,priority,weight,ttl,targetstrip,owner", [
    ("10.0.0.1", 0, 10, 10, 30, 0, None), ("web.ns.svc.cluster.local.", 80, 10, 10, 30, 0, None),
    ("h", 0, 1, 2, 3, 4, "kube2sky"), ("", 0, 10, 10, 0, 0, None),
    ('quote" back\\slash \u00e9 \n', 65535, 0, 0, 0, 1, 'o"wner')])
def test_encode_record_is_json_dumps(host, port, priority, weight, ttl, targetstrip, owner):
    """Assembled by hand for speed, but the same text as json.dumps of the fields."""
    fields = {"host": host, **({"port": port} if port else {}), "priority": priority,
              "weight": weight, "ttl": ttl, "targetstrip": targetstrip,
              **({"owner": owner} if owner is not None else {})}
    assert R.encode_record(host, port, priority, weight, ttl, targetstrip, owner) == \
        json.dumps(fields, separators=(",", ":"))


def test_encode_record_port():
    assert R.encode_record("web.ns.svc.cluster.local.", 80) == \
        '{"host":"web.ns.svc.cluster.local.","port":80,"priority":10,"weight":10,"ttl":30,' \
        '"targetstrip":0}'
    assert R.encode_text("1.1.0") == '{"text":"1.1.0"}'
    assert R.encode_text("1.1.0", owner="kube2sky") == '{"text":"1.1.0","owner":"kube2sky"}'
    owned = R.encode_record("10.0.0.1", owner="kube2sky")
    assert owned.endswith(',"owner":"kube2sky"}') and R.owned_by(owned, "kube2sky")
    assert not R.owned_by(R.encode_record("10.0.0.1"), "kube2sky")
    assert not R.owned_by(R.encode_record("10.0.0.1", owner="kube2sky-not"), "kube2sky")
    assert R.parse_record("/skydns/local/a", owned).host == "10.0.0.1"  # served unchanged
