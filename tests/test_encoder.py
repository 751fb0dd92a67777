"""The byte encoder against dnspython: the same Result must render to the same message.

In-process and fast: the semantics tables' records (test_semantics) are loaded into a
RecordStore, every table row is answered by the Authority (with an in-memory upstream for
names outside the domain), and the Result is rendered twice: by ``skydns.encoder`` (the
fast path) and through dnspython objects and ``wire.render`` (the general path, which
DNSSEC signing uses). Both must give identical bytes, for every round-robin rotation, with
and without EDNS, within small and large size limits, over UDP and TCP. Then the query
parser (``wire.parse_query``) against dnspython's, and the wire cache's bounds.
"""

from __future__ import annotations

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.update
import pytest
from twisted.internet import defer

import test_semantics as sem
from skydns import encoder
from skydns import wire as wirefmt
from skydns.authority import Authority, labels_of, name_text
from skydns.config import Config
from skydns.forward import ForwardError
from skydns.store import RecordStore

CAP = 1232


def upstream_zone():
    """The semantics tests' upstream zone as an in-memory upstream callable."""
    names = {owner for owner, _ in sem.UPSTREAM_ZONE}

    def lookup(name, rdtype):
        text = name.to_text().lower()
        if text not in names:  # NXDOMAIN: the resolver's lookup_target fails then
            return defer.fail(ForwardError(f"upstream answered NXDOMAIN for {text}"))
        texts = sem.UPSTREAM_ZONE.get((text, dns.rdatatype.to_text(rdtype)))
        if not texts:
            return defer.succeed([])
        rrset = dns.rrset.from_text_list(name, 300, "IN", rdtype, texts)
        return defer.succeed([(rrset.name, rrset.rdtype, rrset.ttl, r) for r in rrset])
    return lookup


def authority_for(server: str, extra=None) -> Authority:
    if server == "sky":
        config = Config(domain="skydns.local.", local=sem.LOCAL_NAME)
    else:
        config = Config(domain="cluster.local.")
    store = RecordStore("skydns")
    records = {**sem.RECORDS, **sem.CLUSTER_RECORDS, **(extra or {})}
    store.replace_all([(k, v.encode(), 0) for k, v in records.items()], revision=1)
    return Authority(store, config, upstream=upstream_zone())


def answer(authority, qname, qtype):
    name = dns.name.from_text(qname)
    found = []
    authority.query(name_text(name), labels_of(name), qtype).addBoth(found.append)
    assert found, "the in-memory upstream answers synchronously"
    assert not isinstance(found[0], Exception)
    return found[0]


def query_wire(qname, qtype, payload):
    """A query as a stub resolver sends it; ``payload`` None: without EDNS."""
    if payload is None:
        q = dns.message.make_query(qname, qtype)
    else:
        q = dns.message.make_query(qname, qtype, use_edns=0, payload=payload)
    q.flags |= dns.flags.RD
    return q.to_wire()


def both(result, data, tcp, shift=0):
    """The encoder's message and dnspython's for one Result, one query, one rotation."""
    request = dns.message.from_wire(data)
    query = wirefmt.parse_query(data)
    limit = 65535 if tcp else wirefmt.udp_limit(request, CAP)
    assert limit == (65535 if tcp else wirefmt.fast_udp_limit(query, CAP))
    answer_sets = encoder.rotated(encoder.rrsets(result.answer), shift)
    authority_sets = encoder.rrsets(result.authority)
    additional_sets = encoder.rrsets(result.additional)
    flags = 0x8000 | 0x0100 | 0x0080 | (0x0400 if result.aa else 0) | result.rcode
    opt = encoder.opt_record(CAP) if query.edns else None
    ours, _ = encoder.render(data[:2], flags, data[12:query.qend], answer_sets,
                             authority_sets, additional_sets, opt, limit, tcp)
    response = dns.message.make_response(request, recursion_available=True,
                                         our_payload=CAP)
    if result.aa:
        response.flags |= dns.flags.AA
    response.set_rcode(result.rcode)
    response.answer = encoder.to_dnspython(answer_sets)
    response.authority = encoder.to_dnspython(authority_sets)
    response.additional = encoder.to_dnspython(additional_sets)
    theirs = wirefmt.render(response, limit, tcp)
    return ours, theirs


TABLE = [c for c in sem.CASES
         if c.qtype not in ("ANY",) and wirefmt.parse_query(query_wire(c.qname, c.qtype, None))]
AUTHORITIES = {}


def authority_of(server):
    if server not in AUTHORITIES:
        AUTHORITIES[server] = authority_for(server)
    return AUTHORITIES[server]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id()) for c in TABLE
                                  if c.qname.endswith(("skydns.local.", "cluster.local."))])
@pytest.mark.parametrize("payload", [None, 512, 4096], ids=["no-edns", "edns512", "edns4096"])
@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_encoder_matches_dnspython(case, payload, tcp):
    authority = authority_of(case.server)
    result = answer(authority, case.qname, dns.rdatatype.from_text(case.qtype))
    data = query_wire(case.qname, case.qtype, payload)
    rotations = encoder.rotations(encoder.rrsets(result.answer))
    for shift in range(min(rotations, wirefmt.MAX_VARIANTS)):
        ours, theirs = both(result, data, tcp, shift)
        assert ours == theirs, dns.message.from_wire(theirs).to_text()


WIDE = {f"{sem.CPREFIX}/svc/wide/w{i:03d}": sem.kube_value(f"10.9.{i // 250}.{i % 250 + 1}",
                                                           8000 + i)
        for i in range(300)}


@pytest.mark.parametrize("qname,qtype", [("wide.svc.cluster.local.", "SRV"),
                                         ("wide.svc.cluster.local.", "A"),
                                         ("*.svc.cluster.local.", "SRV"),
                                         ("cluster.local.", "SRV")])
@pytest.mark.parametrize("payload", [None, 1232], ids=["no-edns", "edns1232"])
@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_wide_answers_truncate_like_dnspython(qname, qtype, payload, tcp):
    """Over UDP the longest prefix that fits, with TC; over TCP all of it (or SERVFAIL)."""
    authority = authority_for("cluster", WIDE)
    result = answer(authority, qname, dns.rdatatype.from_text(qtype))
    assert len(result.answer) >= 300
    data = query_wire(qname, qtype, payload)
    for shift in (0, 1, 7):
        ours, theirs = both(result, data, tcp, shift)
        assert ours == theirs
        reply = dns.message.from_wire(ours)
        if tcp:
            assert not reply.flags & dns.flags.TC
        else:
            assert reply.flags & dns.flags.TC and len(ours) <= (payload or 512)


def test_wildcard_answer_is_cacheable_and_depends_on_its_prefix():
    authority = authority_for("cluster", WIDE)
    result = answer(authority, "*.wide.svc.cluster.local.", dns.rdatatype.SRV)
    assert result.cacheable and len(result.answer) == 300
    assert result.deps == {("local", "cluster", "svc", "wide")}


def test_a_miss_depends_on_its_closest_existing_ancestor():
    """A flood of unique names under one service shares one dependency entry."""
    authority = authority_of("cluster")
    deps = set()
    for i in range(50):
        result = answer(authority, f"u{i}.x.default.svc.cluster.local.", dns.rdatatype.A)
        assert result.rcode == dns.rcode.NXDOMAIN
        deps |= result.deps
    assert deps == {("local", "cluster", "svc", "default")}


# -- the query parser ---------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: dns.message.make_query("Web.Default.svc.cluster.local.", "A"),
    lambda: dns.message.make_query("_http._tcp.web.default.svc.cluster.local.", "SRV",
                                   use_edns=0, payload=4096, want_dnssec=True),
    lambda: dns.message.make_query("*.svc.cluster.local.", "SRV", use_edns=0, payload=100),
    lambda: dns.message.make_query("x.cluster.local.", "TXT", use_edns=0,
                                   options=[dns.edns.CookieOption(b"12345678", b"")]),
])
def test_parse_query_reads_what_dnspython_reads(make):
    data = make().to_wire()
    request = dns.message.from_wire(data)
    query = wirefmt.parse_query(data)
    question = request.question[0]
    assert query.name == name_text(question.name)
    assert query.labels == labels_of(question.name)
    assert query.qtype == question.rdtype
    assert query.edns == (request.edns >= 0)
    assert query.do == bool(request.ednsflags & dns.flags.DO)
    assert wirefmt.fast_udp_limit(query, CAP) == wirefmt.udp_limit(request, CAP)


@pytest.mark.parametrize("make", [
    lambda: dns.message.make_query("a.cluster.local.", "ANY"),
    lambda: dns.message.make_query("a.cluster.local.", "TXT", rdclass="CH"),
    lambda: dns.message.make_query("a\\.b.cluster.local.", "A"),
    lambda: dns.message.make_query("\\195\\169.cluster.local.", "A"),
    lambda: dns.message.make_query("a.cluster.local.", "A", use_edns=1),
    lambda: dns.message.make_query("a.cluster.local.", "A", use_edns=0,
                                   options=[dns.edns.GenericOption(12, b"\x00" * 4)]),
    lambda: dns.update.UpdateMessage("cluster.local."),
])
def test_parse_query_leaves_the_unusual_to_dnspython(make):
    assert wirefmt.parse_query(make().to_wire()) is None


def test_parse_query_refuses_truncated_or_trailing_bytes():
    data = dns.message.make_query("a.cluster.local.", "A").to_wire()
    assert wirefmt.parse_query(data) is not None
    for cut in range(1, len(data) - 12):
        assert wirefmt.parse_query(data[:-cut]) is None
    assert wirefmt.parse_query(data + b"\x00") is None


# -- the wire cache -----------------------------------------------------------------------

def cache_entry(cache, i, negative, deps):
    data = query_wire(f"n{i}.x.cluster.local.", "A", None)
    reply = bytearray(data)
    reply[2] |= 0x80
    cache.insert(data, [bytes(reply)], deps, [0, 0, 0], negative=negative)
    return data


def test_negative_answers_cannot_evict_positive_ones():
    cache = wirefmt.WireCache(max_entries=100)
    positive = [cache_entry(cache, i, False, [("local", "cluster", "x", f"n{i}")])
                for i in range(50)]
    for i in range(50, 2050):
        cache_entry(cache, i, True, [("local", "cluster", "x")])
    assert all(cache.answer(q) is not None for q in positive)
    assert 0 < len(cache.negative) <= cache.max_negative


def test_evicted_entries_leave_the_dependency_index():
    cache = wirefmt.WireCache(max_entries=10)
    for i in range(1000):
        cache_entry(cache, i, False, [("local", "cluster", "x", f"n{i}")])
    assert len(cache.table) == 10
    assert sum(len(keys) if isinstance(keys, set) else 1
               for keys in cache.deps.values()) == 10
    for i in range(990, 1000):
        cache.invalidate(("local", "cluster", "x", f"n{i}"))
    assert not cache.table and not cache.tcp_table and not cache.deps


def test_bytes_outside_the_name_never_collide_in_the_key():
    """Type 65 (HTTPS) is the byte "A": lower-cased it would be type 97."""
    cache = wirefmt.WireCache()
    https = query_wire("web.cluster.local.", 65, None)
    twin = query_wire("web.cluster.local.", 97, None)
    for query in (https, twin):
        reply = bytearray(query)
        reply[2] |= 0x80
        cache.insert(query, [bytes(reply)], [("local", "cluster", "web")], [0, 0, 0])
    assert cache.answer(https) is None and cache.answer(twin) is None


# -- the NXDOMAIN template ----------------------------------------------------------------

def handler_for(server):
    from skydns.forward import Forwarder
    from skydns.metrics import Metrics
    from skydns.resolver import Resolver
    from skydns.server import QueryHandler
    authority = authority_for(server)
    config = authority.config
    forwarder = Forwarder(None, config)
    resolver = Resolver(config, authority.store, authority, forwarder, Metrics())
    return QueryHandler(resolver, wirefmt.WireCache(), resolver.metrics, config)


MISSING = [  # names whose suffixes could change how the SOA compresses
    ("sky", "nope.skydns.local."), ("sky", "x.ns.dns.skydns.local."),
    ("sky", "ab.ns.dns.skydns.local."), ("sky", "a.bns.dns.skydns.local."),
    ("sky", "hostmaster.skydns.local."), ("sky", "x.hostmaster.skydns.local."),
    ("sky", "Mixed.CASE.Skydns.Local."), ("sky", "_srv._tcp.nope.skydns.local."),
    ("cluster", "u1.default.svc.cluster.local."), ("cluster", "u22.default.svc.cluster.local."),
    ("cluster", "a.dns.cluster.local."), ("cluster", "ns.dns.cluster.local.x.cluster.local."),
]


@pytest.mark.parametrize("server,qname", MISSING)
@pytest.mark.parametrize("qtype", ["A", "SRV", "TXT", "MX"])
@pytest.mark.parametrize("payload", [None, 1232], ids=["no-edns", "edns"])
def test_nxdomain_template_matches_the_full_path(server, qname, qtype, payload):
    handler = handler_for(server)
    data = query_wire(qname, qtype, payload)
    assert handler.resolver.missing_name(wirefmt.parse_query(data)) is not None
    result = answer(handler.resolver.authority, qname, dns.rdatatype.from_text(qtype))
    assert result.rcode == dns.rcode.NXDOMAIN
    _, theirs = both(result, data, tcp=False)
    for repeat in range(3):  # template made, template reused, then from the wire cache
        out = handler.handle(data, tcp=False)
        cached = handler.cache.answer(data)
        assert out == theirs
    assert cached == theirs
    other = query_wire("zz" + qname, qtype, payload)  # the same shape: one template
    assert handler.handle(other, tcp=False) == both(result_for(handler, other), other,
                                                    tcp=False)[1]


def result_for(handler, data):
    request = dns.message.from_wire(data)
    q = request.question[0]
    return answer(handler.resolver.authority, q.name.to_text(), q.rdtype)


def test_nxdomain_without_rd_and_names_that_exist_are_not_templates():
    handler = handler_for("cluster")
    request = dns.message.make_query("nothing.cluster.local.", "A")
    request.flags = 0
    data = request.to_wire()
    reply = dns.message.from_wire(handler.handle(data, tcp=False))
    assert reply.rcode() == dns.rcode.NXDOMAIN and not reply.flags & dns.flags.RD
    for name in ("cluster.local.", "web.default.svc.cluster.local.", "*.svc.cluster.local."):
        query = wirefmt.parse_query(query_wire(name, "A", None))
        assert handler.resolver.missing_name(query) is None


def test_a_flood_of_unique_misses_stays_out_of_the_wire_cache():
    handler = handler_for("cluster")
    for i in range(2000):
        handler.handle(query_wire(f"u{i}.default.svc.cluster.local.", "A", None), False)
    assert len(handler.cache) == 0
    assert len(handler.cache.templates) == 4  # one per name length (u0..u1999)
