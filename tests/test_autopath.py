"""autopath (-autopath): a pod's search path walked on the server, as CoreDNS's autopath.

A real etcd holds a cluster's records and pod records for loopback addresses (so that a
query sent from 127.0.0.2 comes from "a pod in default"), a real skydns serves them with
-autopath, and the upstream stand-in answers the names outside the cluster. Every row is
(client, name, type) -> (rcode, answer), asked over UDP twice (the second may come from a
cache) and over TCP. The expected answers are CoreDNS's autopath rules written out: the
first name of the pod's search path that is not NXDOMAIN, with a CNAME from the asked name
to it; NXDOMAIN as asked when the querier is no pod of that namespace.

All traffic stays on 127.0.0.0/8.
"""

from __future__ import annotations

import time
import urllib.request

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from procs import Upstream, free_port, wait_for

CPREFIX = "/skydns/local/cluster"
D = "cluster.local."
POD = "127.0.0.2"          # a pod in namespace default
HOST_NET = "127.0.0.3"     # a hostNetwork pod in kube-system (the node's IP)
TWO_NS = "127.0.0.4"       # an IP with pod records in two namespaces
NOT_A_POD = "127.0.0.5"
LATE_POD = "127.0.0.6"     # becomes a pod of default during a test
SEARCH = "corp.example."   # the node's search domain (-autopath-search)
CHANGE_WAIT = 2.0


def kube_value(host, port=0):
    port_part = f'"port":{port},' if port else ""
    return (f'{{"host":"{host}",{port_part}"priority":10,"weight":10,"ttl":30,'
            f'"targetstrip":0,"owner":"kube2sky"}}')


def dashed(ip):
    return ip.replace(".", "-")


RECORDS = {
    f"{CPREFIX}/svc/default/web/a1": kube_value("10.0.0.10"),
    f"{CPREFIX}/svc/other/db/b2": kube_value("10.0.0.20"),
    f"{CPREFIX}/node1": kube_value("10.0.0.30"),
    f"{CPREFIX}/pod/default/{dashed(POD)}/c3": kube_value(POD),
    f"{CPREFIX}/pod/kube-system/{dashed(HOST_NET)}/host-network": kube_value(HOST_NET),
    f"{CPREFIX}/pod/default/{dashed(TWO_NS)}/d4": kube_value(TWO_NS),
    f"{CPREFIX}/pod/other/{dashed(TWO_NS)}/d4": kube_value(TWO_NS),
}

UPSTREAM_ZONE = {
    ("www.example.com.", "A"): ["192.0.2.10"],
    ("www.example.com.", "AAAA"): ["2001:db8::10"],
    ("mail.example.com.", "A"): ["192.0.2.25"],
    ("app.corp.example.", "A"): ["192.0.2.50"],
}


def asked(name):
    """The first name a pod of default asks for ``name`` (ndots:5, search path)."""
    return f"{name}.default.svc.{D}"


def cname_then(name, found, rdtype, *rdata):
    return [f"{name} CNAME {found}"] + [f"{found} {rdtype} {rd}" for rd in rdata]


# (client, name, type) -> (rcode, answer as "owner TYPE rdata" lines)
CASES = [
    # Found upstream, at the bare name (the last of the search path).
    (POD, asked("www.example.com"), "A", "NOERROR",
     cname_then(asked("www.example.com"), "www.example.com.", "A", "192.0.2.10")),
    (POD, asked("www.example.com"), "AAAA", "NOERROR",
     cname_then(asked("www.example.com"), "www.example.com.", "AAAA", "2001:db8::10")),
    # Found in the cluster: svc.<domain>, then <domain>.
    (POD, asked("db.other"), "A", "NOERROR",
     cname_then(asked("db.other"), f"db.other.svc.{D}", "A", "10.0.0.20")),
    (POD, asked("node1"), "A", "NOERROR",
     cname_then(asked("node1"), f"node1.{D}", "A", "10.0.0.30")),
    # Found under the node's search domain.
    (POD, asked("app"), "A", "NOERROR",
     cname_then(asked("app"), "app.corp.example.", "A", "192.0.2.50")),
    # The name exists as asked: answered as always, no walk.
    (POD, asked("web"), "A", "NOERROR", [f"{asked('web')} A 10.0.0.10"]),
    # NODATA further down the path ends the walk as CoreDNS does: no CNAME.
    (POD, asked("mail.example.com"), "MX", "NOERROR", []),
    # Nothing anywhere: NXDOMAIN as asked.
    (POD, asked("nothing.anywhere"), "A", "NXDOMAIN", []),
    # An upstream failure ends the walk: NXDOMAIN, and the pod walks its path itself.
    (POD, asked("broken.example"), "A", "NXDOMAIN", []),
    # Not the pod's namespace: not the first name of its search path.
    (POD, f"www.example.com.other.svc.{D}", "A", "NXDOMAIN", []),
    # Not a pod, a hostNetwork pod, an IP in two namespaces: never walked.
    (NOT_A_POD, asked("www.example.com"), "A", "NXDOMAIN", []),
    (HOST_NET, f"www.example.com.kube-system.svc.{D}", "A", "NXDOMAIN", []),
    (TWO_NS, asked("www.example.com"), "A", "NXDOMAIN", []),
    (TWO_NS, f"www.example.com.other.svc.{D}", "A", "NXDOMAIN", []),
]


def answer_lines(response):
    return sorted(f"{rrset.name} {dns.rdatatype.to_text(rrset.rdtype)} {rd.to_text()}"
                  for rrset in response.answer for rd in rrset)


def query(sky, client, name, rdtype, tcp=False):
    q = dns.message.make_query(name, rdtype)
    if tcp:
        return dns.query.tcp(q, "127.0.0.1", port=sky.port, timeout=5, source=client)
    return dns.query.udp(q, "127.0.0.1", port=sky.port, timeout=5, source=client)


@pytest.fixture(scope="module")
def upstream_mod():
    server = Upstream(UPSTREAM_ZONE, failing=("broken.example.",))
    yield server
    server.close()


@pytest.fixture(scope="module")
def records(etcd):
    client = etcd.client()
    client.delete_prefix("/skydns/")
    for key, value in RECORDS.items():
        client.put(key, value)
    yield client
    client.delete_prefix("/skydns/")
    client.close()


@pytest.fixture(scope="module")
def sky(etcd, records, upstream_mod):
    from procs import Skydns
    server = Skydns(etcd.url, f"-domain={D}", "-autopath", f"-autopath-search={SEARCH}",
                    upstream=upstream_mod.address,
                    env={"PROMETHEUS_PORT": str(free_port())})
    try:
        yield server.start()
    finally:
        server.close()


@pytest.mark.parametrize("client,name,rdtype,rcode,answer", CASES,
                         ids=[f"{c}-{n}-{t}" for c, n, t, *_ in CASES])
def test_autopath_table(sky, client, name, rdtype, rcode, answer):
    for tcp in (False, False, True):
        response = query(sky, client, name, rdtype, tcp)
        where = f"{'TCP' if tcp else 'UDP'} from {client}"
        assert dns.rcode.to_text(response.rcode()) == rcode, where
        assert answer_lines(response) == sorted(answer), where
        assert response.question[0].name.to_text() == name, where
        if rcode == "NXDOMAIN":
            assert [r.rdtype for r in response.authority] == [dns.rdatatype.SOA], where


def test_answers_for_one_client_are_never_served_to_another(sky):
    """Each NXDOMAIN asked twice by a non-pod would enter the wire cache; the pod still
    gets its walk, and the non-pod its NXDOMAIN, in either order."""
    first, second = asked("first.example"), asked("app")
    for _ in range(3):
        assert query(sky, NOT_A_POD, second, "A").rcode() == dns.rcode.NXDOMAIN
    assert answer_lines(query(sky, POD, second, "A")) == sorted(
        cname_then(second, "app.corp.example.", "A", "192.0.2.50"))
    pod_walked = asked("www.example.com")
    for _ in range(3):
        assert query(sky, POD, pod_walked, "A").rcode() == dns.rcode.NOERROR
    for tcp in (False, False, True):
        assert query(sky, NOT_A_POD, pod_walked, "A", tcp).rcode() == \
            dns.rcode.NXDOMAIN
    assert query(sky, NOT_A_POD, first, "A").rcode() == dns.rcode.NXDOMAIN


def test_pod_records_are_followed_as_they_change(sky, records):
    """A new pod's IP is walked for within the change wait; a hostNetwork record beside
    it, or the pod's deletion, stop that."""
    name = asked("www.example.com")

    def walked(client):
        return query(sky, client, name, "A").rcode() == dns.rcode.NOERROR

    assert not walked(LATE_POD)
    key = f"{CPREFIX}/pod/default/{dashed(LATE_POD)}/e5"
    records.put(key, kube_value(LATE_POD))
    wait_for(lambda: walked(LATE_POD), timeout=CHANGE_WAIT, interval=0.05,
             what="a new pod's IP to be walked for")
    host_key = f"{CPREFIX}/pod/default/{dashed(LATE_POD)}/host-network"
    records.put(host_key, kube_value(LATE_POD))
    wait_for(lambda: not walked(LATE_POD), timeout=CHANGE_WAIT, interval=0.05,
             what="a hostNetwork record to stop the walk")
    records.delete(host_key)
    wait_for(lambda: walked(LATE_POD), timeout=CHANGE_WAIT, interval=0.05,
             what="the walk back once the hostNetwork record is gone")
    records.delete(key)
    wait_for(lambda: not walked(LATE_POD), timeout=CHANGE_WAIT, interval=0.05,
             what="a deleted pod's IP to be walked for no more")


def test_answers_kept_from_a_walk_follow_the_records(sky, records):
    """A walk that found a cluster name is answered again without walking, until a
    record changes: a new address of the name found, then the asked name itself."""
    name = asked("kept")
    found_key = f"{CPREFIX}/kept"
    own_key = f"{CPREFIX}/svc/default/kept/f6"
    records.put(found_key, kube_value("10.0.0.40"))
    try:
        wait_for(lambda: answer_lines(query(sky, POD, name, "A")) == sorted(
            cname_then(name, f"kept.{D}", "A", "10.0.0.40")), timeout=CHANGE_WAIT,
            interval=0.05, what="the walk to find kept.cluster.local")
        before = scrape(sky, "skydns_autopath_answers")
        for tcp in (False, False, True, True):
            assert answer_lines(query(sky, POD, name, "A", tcp)) == sorted(
                cname_then(name, f"kept.{D}", "A", "10.0.0.40"))
        kept = scrape(sky, "skydns_autopath_answers")
        key = 'skydns_autopath_answers_total{result="found_kept"}'
        assert kept[key] - before.get(key, 0) >= 2  # the second over each transport
        records.put(found_key, kube_value("10.0.0.41"))
        wait_for(lambda: answer_lines(query(sky, POD, name, "A")) == sorted(
            cname_then(name, f"kept.{D}", "A", "10.0.0.41")), timeout=CHANGE_WAIT,
            interval=0.05, what="the kept answer to follow the new address")
        records.put(own_key, kube_value("10.0.0.42"))
        wait_for(lambda: answer_lines(query(sky, POD, name, "A")) == [f"{name} A 10.0.0.42"],
                 timeout=CHANGE_WAIT, interval=0.05,
                 what="the asked name, once it exists, to be answered as itself")
    finally:
        records.delete(found_key)
        records.delete(own_key)


def scrape(sky, prefix):
    port = sky.env["PROMETHEUS_PORT"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.decode().splitlines()
            if line.startswith(prefix) and not line.startswith("#")}


def total(metrics):
    return sum(metrics.values())


def test_a_walk_counts_as_one_request(sky, upstream_mod):
    """The names a walk asks are not requests of their own: one query, one request (in
    both metric families), and the walk is counted by its result."""
    before = scrape(sky, "coredns_dns_requests_total")
    skydns_before = scrape(sky, "skydns_dns_request_count")
    walks_before = scrape(sky, "skydns_autopath_answers")
    upstream_mod.reset()
    response = query(sky, POD, asked(f"fresh{time.monotonic_ns()}.example.com"), "A")
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert query(sky, POD, asked("mail.example.com"), "A").rcode() == dns.rcode.NOERROR
    assert total(scrape(sky, "coredns_dns_requests_total")) - total(before) == 2
    assert total(scrape(sky, "skydns_dns_request_count")) - total(skydns_before) == 2
    walks = scrape(sky, "skydns_autopath_answers")
    assert walks['skydns_autopath_answers_total{result="found"}'] - walks_before.get(
        'skydns_autopath_answers_total{result="found"}', 0) == 1
    assert walks['skydns_autopath_answers_total{result="not_found"}'] - walks_before.get(
        'skydns_autopath_answers_total{result="not_found"}', 0) == 1
    # The first walk asked upstream for the node's domain and the bare name.
    asked_upstream = [q.question[0].name.to_text() for q in upstream_mod.queries]
    assert any(n.endswith(".example.com.corp.example.") for n in asked_upstream)


def test_without_the_flag_nothing_is_walked(start_skydns, records, upstream_mod):
    plain = start_skydns(f"-domain={D}", upstream=upstream_mod.address)
    response = query(plain, POD, asked("www.example.com"), "A")
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert answer_lines(response) == []


def test_odd_client_addresses_are_no_pods():
    from skydns.autopath import PodNamespaces
    from skydns.store import RecordStore
    store = RecordStore()
    store.replace_all([(f"{CPREFIX}/pod/default/{dashed(POD)}/c3", kube_value(POD), 0),
                       (f"{CPREFIX}/pod/v6/fd00--1/c3", kube_value("fd00::1"), 0),
                       (f"{CPREFIX}/pod/x", kube_value("10.9.9.9"), 0)], 1)
    pods = PodNamespaces(store, D)
    assert pods.namespace_of(POD) == "default"
    assert pods.namespace_of(f"::ffff:{POD}") == "default"  # a dual-stack socket's form
    assert pods.namespace_of("fd00::1") == "v6"
    assert pods.namespace_of("fd00:0::1") == "v6"
    for odd in ("", "not an ip", "::zz", "10.9.9.9", "127.0.0.9"):
        assert pods.namespace_of(odd) is None


# -- splicing a reply under the asked question, in-process -----------------------------------

def _reply(name, rdtype, answer=(), authority=(), additional=(), edns=False):
    """An upstream-style reply to (name, rdtype), rendered (and compressed) by dnspython."""
    q = dns.message.make_query(name, rdtype, use_edns=0 if edns else False)
    r = dns.message.make_response(q)
    for section, lines in ((r.answer, answer), (r.authority, authority),
                           (r.additional, additional)):
        for line in lines:
            owner, ttl, rtype, rdata = line.split(" ", 3)
            section.append(dns.rrset.from_text(owner, int(ttl), "IN", rtype, rdata))
    return r.to_wire()


ASKED = f"x.default.svc.{D}"
SPLICE_CASES = {
    "A": ("www.example.com.", "A", ["www.example.com. 300 A 192.0.2.10"], [], []),
    "CNAME chain": ("www.example.com.", "A",
                    ["www.example.com. 60 CNAME edge.example.net.",
                     "edge.example.net. 20 A 192.0.2.11"], [], []),
    "SRV with glue": (f"x.svc.{D}", "SRV",
                      [f"x.svc.{D} 30 SRV 10 50 80 a.x.svc.{D}",
                       f"x.svc.{D} 30 SRV 10 50 80 b.x.svc.{D}"], [],
                      [f"a.x.svc.{D} 30 A 10.0.0.1", f"b.x.svc.{D} 30 A 10.0.0.2"]),
    "MX": ("example.com.", "MX", ["example.com. 300 MX 10 mail.example.com."],
           ["example.com. 300 NS ns1.example.com."],
           ["mail.example.com. 300 A 192.0.2.25"]),
    "NODATA under the domain": (f"x.svc.{D}", "AAAA", [],
                                [f"{D} 60 SOA ns.dns.{D} hostmaster.{D} 1 2 3 4 60"], []),
    "NODATA, SOA of another zone": ("www.example.com.", "MX", [],
                                    ["example.com. 300 SOA ns1.example.com. h.example.com. "
                                     "1 2 3 4 300"], []),
    "RP": ("www.example.com.", "RP",
              ["www.example.com. 300 RP a.www.example.com. b.www.example.com."], [], []),
}


@pytest.mark.parametrize("case", SPLICE_CASES)
@pytest.mark.parametrize("edns", [False, True], ids=["plain", "edns"])
def test_spliced_reply_equals_the_rendered_one(case, edns):
    from skydns.autopath import Unsplicable, rendered, spliced
    from skydns.wire import question_end
    name, rdtype, answer, authority, additional = SPLICE_CASES[case]
    reply = _reply(name, rdtype, answer, authority, additional, edns)
    data = dns.message.make_query(ASKED, rdtype, use_edns=0 if edns else False).to_wire()
    data = reply[:2] + data[2:]
    qend = question_end(data)
    want = dns.message.from_wire(rendered(reply, data, 65535, False))
    try:
        got = dns.message.from_wire(spliced(reply, data, qend))
    except Unsplicable:
        assert case in ("RP", "NODATA, SOA of another zone"), case
        return
    assert case not in ("RP", "NODATA, SOA of another zone")
    assert got.to_text() == want.to_text()
    assert got.question[0].name.to_text() == ASKED
    if answer:
        assert got.answer[0].to_text() == f"{ASKED} {answer[0].split()[1]} IN CNAME {name}"


def test_the_in_process_bench_runs():
    """bench/autopath_walk.py builds its handler the way skydns does; it must keep
    running (and its first answer be the CNAME and A it asserts)."""
    import subprocess
    import sys
    from pathlib import Path
    bench = Path(__file__).resolve().parent.parent / "bench" / "autopath_walk.py"
    out = subprocess.run([sys.executable, str(bench), "--queries", "300", "--services",
                          "100", "--rounds", "1"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "walked each time" in out.stdout


def test_kept_answers_stay_within_their_byte_bound():
    """In process: a pod asking in many letter cases (each spelling its own query bytes)
    for a name whose answer is wide over TCP must not make the kept answers grow past
    MAX_ANSWER_BYTES (with the entry bound alone, 10,000 answers of 60 KB: 600 MB)."""
    from skydns import autopath as ap
    from skydns.config import Config
    from skydns.store import RecordStore
    autopath = ap.Autopath(RecordStore(), Config(domain=D, nameservers=["127.0.0.1:9"],
                                                 autopath=True, autopath_search=[]))
    wide = b"\x00\x00\x84\x00" + bytes(60000)  # AA, as a headless service's TCP answer
    name = asked("wide")
    spellings = [("".join(c.upper() if i >> k & 1 else c for k, c in enumerate(name)))
                 for i in range(400)]
    for spelling in spellings:
        data = dns.message.make_query(spelling, "SRV").to_wire()
        autopath.keep("default", data, True, wide, autopath.generation)
        assert autopath.answer_bytes <= ap.MAX_ANSWER_BYTES
        assert sum(len(k[2]) + len(v) for k, v in autopath.answers.items()) <= \
            ap.MAX_ANSWER_BYTES
    assert autopath.kept("default", data, True) is not None  # the last one is kept


def test_a_walk_that_began_before_a_change_keeps_nothing():
    """In process: an answer found by a walk is kept only if no record of the domain
    (outside pod/) changed since the walk began (it may have waited for an upstream)."""
    from skydns.autopath import Autopath
    from skydns.config import Config
    from skydns.store import RecordStore
    store = RecordStore()
    store.replace_all([(f"{CPREFIX}/pod/default/{dashed(POD)}/c3", kube_value(POD), 0)], 1)
    autopath = Autopath(store, Config(domain=D, nameservers=["127.0.0.1:9"], autopath=True,
                                      autopath_search=[]))
    data = dns.message.make_query(asked("x"), "A").to_wire()
    reply = b"\x00\x00\x84\x00" + bytes(8)  # AA
    began = autopath.generation
    store.apply_events([("put", f"{CPREFIX}/pod/default/10-1-1-1/d", kube_value("10.1.1.1"),
                         0)], 2)
    autopath.keep("default", data, False, reply, began)  # a pod record: still current
    assert autopath.kept("default", data, False) is not None
    began = autopath.generation
    store.apply_events([("put", f"{CPREFIX}/svc/default/x/e", kube_value("10.0.0.9"), 0)], 3)
    assert autopath.kept("default", data, False) is None  # dropped by the change
    autopath.keep("default", data, False, reply, began)   # found before it: not kept
    assert autopath.kept("default", data, False) is None
    autopath.keep("default", data, False, reply, autopath.generation)
    assert autopath.kept("default", data, False) is not None
