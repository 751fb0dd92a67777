"""Forwarding and the response cache: TTLs aged from the raw bytes, negative caching by the
SOA (RFC 2308), the client's ID and question spelling, coalescing of identical queries,
the cap on upstream queries, serve-stale (RFC 8767), upstream health and prefetch.

The wire functions get fast unit tests checked against dnspython; the behaviour is tested
against a real skydns process, real UDP/TCP on 127.0.0.1 and an upstream stand-in whose
answers (TTL, rcode, SOA, delay, silence) are chosen by the first label of the name.
"""

from __future__ import annotations

import collections
import contextlib
import json
import re
import select
import socket
import socketserver
import threading
import time
import urllib.request

import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from procs import Skydns, free_port, wait_for
from skydns.rcache import (STALE_TTL, ResponseCache, cache_key, decrement_ttls, lifetime,
                           personalize, relayed, resource_records)

SLOW = 0.5  # seconds the stand-in waits before answering a name starting with "slow"


# -- the upstream stand-in -----------------------------------------------------------------

def zone_answer(query):
    """The stand-in's answer, chosen by the first label: ``ttlN`` (A with TTL N), ``nx``
    (NXDOMAIN, SOA TTL 300 and minimum 1), ``nodata`` (NOERROR, nothing, no SOA), ``fail``
    (SERVFAIL), ``big`` (60 A records), a PTR question (PTR ext.example.com.), else A."""
    q = query.question[0]
    label = q.name.labels[0].decode().lower() if len(q.name) > 1 else ""
    response = dns.message.make_response(query)
    if label.startswith("nx"):
        response.set_rcode(dns.rcode.NXDOMAIN)
        response.authority.append(dns.rrset.from_text(
            "example.com.", 300, "IN", "SOA", "ns.example.com. h.example.com. 1 2 3 4 1"))
    elif label.startswith("nodata"):
        pass
    elif label.startswith("fail"):
        response.set_rcode(dns.rcode.SERVFAIL)
    elif label.startswith("big"):
        response.answer.append(dns.rrset.from_text_list(
            q.name, 300, "IN", "A", [f"192.0.2.{i}" for i in range(1, 61)]))
    elif q.rdtype == dns.rdatatype.PTR:
        response.answer.append(dns.rrset.from_text(q.name, 300, "IN", "PTR",
                                                   "ext.example.com."))
    else:
        m = re.match(r"ttl(\d+)", label)
        response.answer.append(dns.rrset.from_text(q.name, int(m.group(1)) if m else 300,
                                                   "IN", "A", "192.0.2.1"))
    return response


class Scripted:
    """An upstream DNS server on 127.0.0.1 (UDP and TCP, a thread per query) answering with
    ``respond(query)``; counts queries per (name, type, transport); ``silent`` drops them."""

    def __init__(self, respond=zone_answer):
        self.respond = respond
        self.silent = False
        self.counts = collections.Counter()
        self.lock = threading.Lock()
        self.port = free_port()
        upstream = self

        class UDP(socketserver.BaseRequestHandler):
            def handle(self):
                data, sock = self.request
                out = upstream.reply(data, "udp")
                if out:
                    sock.sendto(out, self.client_address)

        class TCP(socketserver.StreamRequestHandler):
            def handle(self):
                length = int.from_bytes(self.rfile.read(2), "big")
                out = upstream.reply(self.rfile.read(length), "tcp")
                if out:
                    self.wfile.write(len(out).to_bytes(2, "big") + out)

        socketserver.UDPServer.allow_reuse_address = True
        socketserver.TCPServer.allow_reuse_address = True
        self.servers = [socketserver.ThreadingUDPServer(("127.0.0.1", self.port), UDP),
                        socketserver.ThreadingTCPServer(("127.0.0.1", self.port), TCP)]
        for server in self.servers:
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                             daemon=True).start()

    def reply(self, wire, transport):
        query = dns.message.from_wire(wire)
        q = query.question[0]
        name = q.name.to_text().lower()
        with self.lock:
            self.counts[(name, dns.rdatatype.to_text(q.rdtype), transport)] += 1
        if self.silent:
            return None
        if name.startswith("slow"):
            time.sleep(SLOW)
        limit = 65535 if transport == "tcp" else max(512, query.payload if query.edns >= 0
                                                     else 512)
        return self.respond(query).to_wire(max_size=limit, prefer_truncation=True)

    def count(self, name, rdtype="A", transport=None):
        with self.lock:
            return sum(n for (qname, qtype, tr), n in self.counts.items()
                       if qname == name.lower() and qtype == rdtype
                       and transport in (None, tr))

    def total(self):
        with self.lock:
            return sum(self.counts.values())

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def close(self):
        servers, self.servers = self.servers, []
        for server in servers:
            server.shutdown()
            server.server_close()


@contextlib.contextmanager
def running(etcd, *flags, upstream, metrics=False):
    """A skydns process forwarding to ``upstream`` (a "host:port" list), optionally with
    /metrics on a free port (``sky.metrics_port``)."""
    env = {}
    port = None
    if metrics:
        port = free_port()
        env["PROMETHEUS_PORT"] = str(port)
    sky = Skydns(etcd.url, *flags, f"-nameservers={upstream}", env=env)
    sky.metrics_port = port
    try:
        sky.start()
        yield sky
    finally:
        sky.close()


def scrape(sky, name, labels=None):
    """One sample of the server's /metrics, or None."""
    with urllib.request.urlopen(f"http://127.0.0.1:{sky.metrics_port}/metrics",
                                timeout=5) as r:
        text = r.read().decode()
    want = "" if labels is None else "{" + ",".join(f'{k}="{v}"' for k, v in
                                                    labels.items()) + "}"
    for line in text.splitlines():
        if line.startswith(name + want + " "):
            return float(line.split()[-1])
    return None


def ask(sky, name, rdtype="A", tcp=False, qid=None, timeout=3.0, **kwargs):
    query = dns.message.make_query(name, rdtype, **kwargs)
    if qid is not None:
        query.id = qid
    send = dns.query.tcp if tcp else dns.query.udp
    return send(query, "127.0.0.1", port=sky.port, timeout=timeout)


def concurrently(sky, names, timeout=3.0):
    """Send one UDP query per name at once (each from its own socket, its own ID), then
    [(seconds until its reply came, reply)] in the order of ``names``."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in names]
    queries = {}
    try:
        for i, (sock, name) in enumerate(zip(sockets, names)):
            query = dns.message.make_query(name, "A")
            query.id = 3000 + i
            queries[sock] = query
            sock.sendto(query.to_wire(), ("127.0.0.1", sky.port))
        started = time.monotonic()
        got = {}
        while len(got) < len(sockets) and time.monotonic() - started < timeout:
            ready, _, _ = select.select([s for s in sockets if s not in got], [], [], 0.1)
            for sock in ready:
                reply = dns.message.from_wire(sock.recv(65535))
                assert reply.id == queries[sock].id
                got[sock] = (time.monotonic() - started, reply)
        assert len(got) == len(sockets), f"{len(sockets) - len(got)} queries unanswered"
        return [got[sock] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def ttls(message):
    return [rrset.ttl for section in (message.answer, message.authority, message.additional)
            for rrset in section]


def addresses(message):
    return [rd.address for rrset in message.answer if rrset.rdtype == 1 for rd in rrset]


@pytest.fixture(scope="module")
def upstream():
    server = Scripted()
    yield server
    server.close()


@pytest.fixture(scope="module")
def sky(etcd, upstream):
    """The default settings (cache on), /metrics on, its own key prefix."""
    with running(etcd, "-path-prefix=fwdt", "-rtimeout=1s", upstream=upstream.address,
                 metrics=True) as server:
        yield server


# -- pure functions ------------------------------------------------------------------------

def sample_reply(want_dnssec=True):
    """A reply with a compressed answer chain, authority, additional and an OPT (DO set)."""
    query = dns.message.make_query("www.Example.com.", "A", use_edns=0,
                                   want_dnssec=want_dnssec)
    reply = dns.message.make_response(query)
    reply.use_edns(0, dns.flags.DO if want_dnssec else 0, 1232)
    reply.answer.append(dns.rrset.from_text("www.Example.com.", 300, "IN", "CNAME",
                                            "web.example.com."))
    reply.answer.append(dns.rrset.from_text("web.example.com.", 20, "IN", "A",
                                            "192.0.2.1", "192.0.2.2"))
    reply.authority.append(dns.rrset.from_text("example.com.", 3600, "IN", "NS",
                                               "ns1.example.com."))
    reply.additional.append(dns.rrset.from_text("ns1.example.com.", 5, "IN", "A",
                                                "192.0.2.53"))
    return query, reply


def test_decrement_ttls_matches_dnspython():
    _, reply = sample_reply()
    wire = reply.to_wire(want_shuffle=False)
    out = decrement_ttls(wire, 7)
    expected = dns.message.from_wire(wire)
    for section in (expected.answer, expected.authority, expected.additional):
        for rrset in section:
            rrset.ttl = max(0, rrset.ttl - 7)
    assert out == expected.to_wire(want_shuffle=False)
    got = dns.message.from_wire(out)
    assert ttls(got) == [293, 13, 3593, 0]
    assert got.ednsflags == reply.ednsflags and got.ednsflags & dns.flags.DO  # OPT untouched
    assert got.payload == reply.payload
    assert decrement_ttls(wire, 0) == wire


def test_resource_records_follow_compression_and_reject_cut_messages():
    _, reply = sample_reply()
    wire = reply.to_wire()
    rrs = resource_records(wire)
    assert [(section, rtype) for section, rtype, _, _ in rrs] == [
        (1, 5), (1, 1), (1, 1), (2, 2), (3, 1), (3, 41)]
    assert rrs[-1][3] == len(wire)
    for cut in (len(wire) - 1, 40, 13):
        with pytest.raises(ValueError):
            resource_records(wire[:cut])


def negative(rcode, soa_ttl, minimum, answer=False):
    query = dns.message.make_query("nx.example.com.", "A")
    reply = dns.message.make_response(query)
    reply.set_rcode(rcode)
    if answer:
        reply.answer.append(dns.rrset.from_text("nx.example.com.", 50, "IN", "CNAME",
                                                "x.example.net."))
    reply.authority.append(dns.rrset.from_text(
        "example.com.", soa_ttl, "IN", "SOA", f"ns.example.com. h.example.com. 1 2 3 4 {minimum}"))
    return reply.to_wire()


def test_lifetime():
    _, reply = sample_reply(want_dnssec=False)  # OPT "TTL" 0 must not count
    assert lifetime(reply.to_wire(), 60) == 5
    assert lifetime(reply.to_wire(), 3) == 3
    # RFC 2308: the smaller of the SOA's TTL and its minimum
    assert lifetime(negative(dns.rcode.NXDOMAIN, 300, 1), 60) == 1
    assert lifetime(negative(dns.rcode.NXDOMAIN, 10, 600), 60) == 10
    assert lifetime(negative(dns.rcode.NOERROR, 300, 30), 60) == 30  # NODATA
    assert lifetime(negative(dns.rcode.NXDOMAIN, 300, 600, answer=True), 60) == 50
    assert lifetime(negative(dns.rcode.NXDOMAIN, 300, 600), 20) == 20
    nodata = dns.message.make_response(dns.message.make_query("a.example.com.", "A"))
    assert lifetime(nodata.to_wire(), 60) is None  # negative without a SOA
    for rcode in (dns.rcode.SERVFAIL, dns.rcode.REFUSED):
        nodata.set_rcode(rcode)
        assert lifetime(nodata.to_wire(), 60) is None
    wire = bytearray(reply.to_wire())
    wire[2] |= 0x02  # TC
    assert lifetime(bytes(wire), 60) is None
    zero = dns.message.from_wire(reply.to_wire())
    zero.answer[0].ttl = 0
    assert lifetime(zero.to_wire(), 60) is None


def wire_of(name, rdtype="A", **kwargs):
    query = dns.message.make_query(name, rdtype, **kwargs)
    query.id = 4321
    return query.to_wire()


def test_cache_key():
    base = cache_key(wire_of("www.example.com."), False)
    assert cache_key(wire_of("WwW.ExAmPlE.CoM."), False) == base
    assert cache_key(wire_of("www.example.com."), True) != base
    different = [wire_of("www.example.com.", "AAAA"), wire_of("www.example.org."),
                 wire_of("www.example.com.", use_edns=0),
                 wire_of("www.example.com.", use_edns=0, want_dnssec=True)]
    query = dns.message.make_query("www.example.com.", "A")
    query.flags &= ~dns.flags.RD
    different.append(query.to_wire())
    assert len({cache_key(w, False) for w in different} | {base}) == len(different) + 1
    # only the name is folded: HTTPS (65, "A") is not type 97 ("a"), nor an EDNS size
    assert cache_key(wire_of("a.example.com.", 65), False) != \
        cache_key(wire_of("a.example.com.", 97), False)
    assert cache_key(wire_of("a.example.com.", use_edns=0, payload=0x441), False) != \
        cache_key(wire_of("a.example.com.", use_edns=0, payload=0x461), False)
    two = dns.message.make_query("a.example.com.", "A")
    two.question.append(two.question[0])
    assert cache_key(two.to_wire(), False) is None
    compressed = wire_of("a.")[:12] + b"\xc0\x0c\x00\x01\x00\x01"
    assert cache_key(compressed, False) is None


def test_personalize_keeps_the_clients_id_and_spelling():
    query, reply = sample_reply()
    client = dns.message.make_query("WWW.example.COM.", "A", use_edns=0, want_dnssec=True)
    client.id = 999
    data, wire = client.to_wire(), reply.to_wire()
    out = dns.message.from_wire(personalize(wire, data, 12 + 17 + 4))
    assert out.id == 999 and out.question[0].name.to_text() == "WWW.example.COM."
    assert out.answer[0].name.to_text() == "WWW.example.COM."  # compressed to the question
    assert dns.message.from_wire(relayed(wire, data)).question[0].name.to_text() == \
        "WWW.example.COM."
    other = dns.message.make_query("other.example.com.", "A").to_wire()
    assert relayed(wire, other) == other[:2] + wire[2:]  # not its question: only the ID


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def entry_for(name, ttl, cache, **kwargs):
    query = dns.message.make_query(name, "A")
    reply = dns.message.make_response(query)
    reply.answer.append(dns.rrset.from_text(name, ttl, "IN", "A", "192.0.2.9"))
    key = cache_key(query.to_wire(), False)
    return key, cache.store(key, reply.to_wire(), 512, **kwargs)


def test_cache_ages_entries_and_serves_stale_for_a_bounded_time():
    clock = Clock()
    cache = ResponseCache(10, 60, stale=5, clock=clock)
    key, entry = entry_for("a.example.com.", 10, cache)
    assert entry.life == 10
    clock.now += 1.5
    assert cache.fresh(key, clock.now) is entry
    assert ttls(dns.message.from_wire(entry.reply_at(clock.now))) == [9]
    clock.now += 2
    assert ttls(dns.message.from_wire(entry.reply_at(clock.now))) == [7]
    clock.now = 110.0
    assert cache.fresh(key, clock.now) is None and cache.expired(key, clock.now) is entry
    assert ttls(dns.message.from_wire(entry.stale_reply())) == [STALE_TTL]
    clock.now = 115.0
    assert cache.expired(key, clock.now) is None and len(cache) == 0


def test_cache_is_bounded_least_recently_used_out_and_accounts_bytes():
    cache = ResponseCache(2, 60, clock=Clock())
    a, _ = entry_for("a.example.com.", 30, cache)
    b, _ = entry_for("b.example.com.", 30, cache)
    assert cache.fresh(a, 100.0)  # a is now the most recent
    c, _ = entry_for("c.example.com.", 30, cache)
    assert set(cache.entries) == {a, c} and cache.evicted == 1
    assert cache.bytes == sum(e.cost for e in cache.entries.values()) > 0
    d, _ = entry_for("4.0.0.10.in-addr.arpa.", 30, cache, deps=("arpa", "in-addr", "10"))
    assert cache.by_deps == {("arpa", "in-addr", "10"): {d}}
    cache.drop(("arpa", "in-addr", "10"))
    assert d not in cache.entries and cache.by_deps == {}
    cache.clear()
    assert len(cache) == 0 and cache.bytes == 0


def test_cache_refuses_what_it_must_not_keep():
    cache = ResponseCache(10, 60, clock=Clock())
    query = dns.message.make_query("a.example.com.", "A")
    key = cache_key(query.to_wire(), False)
    other = dns.message.make_response(dns.message.make_query("b.example.com.", "A"))
    other.answer.append(dns.rrset.from_text("b.example.com.", 30, "IN", "A", "192.0.2.1"))
    assert cache.store(key, other.to_wire(), 512) is None  # not this question
    failed = dns.message.make_response(query)
    failed.set_rcode(dns.rcode.SERVFAIL)
    assert cache.store(key, failed.to_wire(), 512) is None
    assert ResponseCache(0, 60).store(key, other.to_wire(), 512) is None  # -rcache=0
    assert len(cache) == 0


# -- through a real server -----------------------------------------------------------------

def test_ttl_aged_and_clients_id_and_spelling_kept(sky, upstream):
    first = ask(sky, "ttl5.case.example.com.", qid=1111)
    assert first.id == 1111 and ttls(first) == [5]
    time.sleep(1.1)
    second = ask(sky, "TTL5.CaSe.Example.Com.", qid=2222)
    assert second.id == 2222
    assert second.question[0].name.to_text() == "TTL5.CaSe.Example.Com."
    assert addresses(second) == ["192.0.2.1"] and ttls(second) == [4]
    assert second.flags & dns.flags.RA
    assert upstream.count("ttl5.case.example.com.") == 1


def test_negative_answer_cached_for_the_soa_minimum(sky, upstream):
    for _ in range(2):
        reply = ask(sky, "nx.neg.example.com.")
        assert reply.rcode() == dns.rcode.NXDOMAIN and reply.authority
    assert upstream.count("nx.neg.example.com.") == 1
    time.sleep(1.1)  # the SOA minimum is 1 s
    assert ask(sky, "nx.neg.example.com.").rcode() == dns.rcode.NXDOMAIN
    assert upstream.count("nx.neg.example.com.") == 2


@pytest.mark.parametrize("name, rcode", [("nodata.a.example.com.", dns.rcode.NOERROR),
                                         ("fail.a.example.com.", dns.rcode.SERVFAIL)])
def test_not_cached_without_soa_or_on_servfail(sky, upstream, name, rcode):
    for _ in range(2):
        assert ask(sky, name).rcode() == rcode
    assert upstream.count(name) == 2


def test_truncated_reply_relayed_not_cached_and_tcp_cached(sky, upstream):
    for _ in range(2):
        reply = ask(sky, "big.tc.example.com.")
        assert reply.flags & dns.flags.TC
    assert upstream.count("big.tc.example.com.", transport="udp") == 2
    for _ in range(2):
        reply = ask(sky, "big.tc.example.com.", tcp=True)
        assert len(addresses(reply)) == 60 and not reply.flags & dns.flags.TC
    assert upstream.count("big.tc.example.com.", transport="tcp") == 1


def test_identical_queries_in_flight_share_one_upstream_query(sky, upstream):
    name = "slow.coalesce.example.com."
    before = scrape(sky, "skydns_forward_events_total", {"event": "coalesced"})
    spellings = ["".join(c.upper() if (i >> k) & 1 else c for k, c in enumerate(name))
                 for i in range(20)]  # one key: names compare case-insensitively
    replies = concurrently(sky, spellings)
    for spelling, (_, reply) in zip(spellings, replies):
        assert reply.question[0].name.to_text() == spelling
        assert addresses(reply) == ["192.0.2.1"]
    assert upstream.count(name) == 1
    assert scrape(sky, "skydns_forward_events_total", {"event": "coalesced"}) == before + 19


def test_popular_entry_prefetched_before_it_expires(sky, upstream):
    name = "ttl2.prefetch.example.com."
    started = time.monotonic()
    for _ in range(4):  # one miss, three hits
        assert addresses(ask(sky, name)) == ["192.0.2.1"]
    time.sleep(max(0, started + 1.2 - time.monotonic()))  # in the entry's last second
    assert ttls(ask(sky, name)) == [1]
    wait_for(lambda: upstream.count(name) == 2, timeout=2, what="the prefetch")
    time.sleep(max(0, started + 2.3 - time.monotonic()))  # past the first entry's end
    reply = ask(sky, name)
    assert addresses(reply) == ["192.0.2.1"] and ttls(reply)[0] in (1, 2)
    assert upstream.count(name) == 2
    assert scrape(sky, "skydns_forward_events_total", {"event": "prefetch"}) >= 1


def test_ptr_record_replaces_a_cached_forwarded_answer(sky, upstream, etcd):
    name = "5.0.0.10.in-addr.arpa."
    for _ in range(2):
        assert ask(sky, name, "PTR").answer[0][0].target.to_text() == "ext.example.com."
    assert upstream.count(name, "PTR") == 1
    client = etcd.client()
    try:
        client.put("/fwdt/arpa/in-addr/10/0/0/5", json.dumps({"host": "svc.skydns.local."}))
        wait_for(lambda: ask(sky, name, "PTR").answer[0][0].target.to_text()
                 == "svc.skydns.local.", timeout=5, what="the PTR record to answer")
    finally:
        client.delete_prefix("/fwdt/arpa/")
        client.close()


def test_stub_zone_replaces_cached_forwarded_answers(etcd, upstream):
    stub = Scripted(lambda q: answer_with(q, "198.51.100.7"))
    client = etcd.client()
    try:
        with running(etcd, "-path-prefix=fwds", "-stubzones", upstream=upstream.address) as s:
            for _ in range(2):
                assert addresses(ask(s, "www.stubbed.test.")) == ["192.0.2.1"]
            assert upstream.count("www.stubbed.test.") == 1
            client.put("/fwds/local/skydns/dns/stub/test/stubbed/ns1",
                       json.dumps({"host": "127.0.0.1", "port": stub.port}))
            wait_for(lambda: addresses(ask(s, "www.stubbed.test.")) == ["198.51.100.7"],
                     timeout=5, what="the stub zone to answer")
    finally:
        client.delete_prefix("/fwds/")
        client.close()
        stub.close()


def answer_with(query, address):
    response = dns.message.make_response(query)
    response.answer.append(dns.rrset.from_text(query.question[0].name, 300, "IN", "A",
                                               address))
    return response


def test_over_max_concurrent_is_servfail_at_once(etcd, upstream):
    with running(etcd, "-max-concurrent=2", "-rcache=0", upstream=upstream.address,
                 metrics=True) as s:
        replies = concurrently(s, [f"slow{i}.cap.example.com." for i in range(5)])
        failed = [t for t, reply in replies if reply.rcode() == dns.rcode.SERVFAIL]
        assert sorted(reply.rcode() for _, reply in replies) == [0, 0, 2, 2, 2]
        assert max(failed) < SLOW / 2, replies  # not queued behind the slow upstream
        assert sum(upstream.count(f"slow{i}.cap.example.com.") for i in range(5)) == 2
        assert scrape(s, "skydns_dns_error_count_total", {"cause": "overloaded"}) == 3


def test_stale_answer_served_when_every_upstream_fails(etcd):
    dying = Scripted()
    try:
        with running(etcd, "-rcache-stale=60", "-rtimeout=500ms", upstream=dying.address,
                     metrics=True) as s:
            assert ttls(ask(s, "ttl1.stale.example.com.")) == [1]
            dying.silent = True  # every upstream fails from now on
            time.sleep(1.1)
            started = time.monotonic()
            reply = ask(s, "ttl1.stale.example.com.", qid=4444)
            assert 0.4 < time.monotonic() - started < 1.5  # after the upstream's timeout
            assert reply.id == 4444 and reply.rcode() == dns.rcode.NOERROR
            assert addresses(reply) == ["192.0.2.1"] and ttls(reply) == [STALE_TTL]
            started = time.monotonic()  # the only upstream is marked down now:
            reply = ask(s, "TTL1.stale.example.com.")
            assert time.monotonic() - started < 0.3  # stale at once (RFC 8767 5)
            assert reply.question[0].name.to_text() == "TTL1.stale.example.com."
            assert ttls(reply) == [STALE_TTL]
            assert ask(s, "never.stale.example.com.").rcode() == dns.rcode.SERVFAIL
            assert scrape(s, "skydns_forward_events_total", {"event": "stale"}) == 2
            dying.silent = False  # back: the background refresh brings a fresh answer
            wait_for(lambda: ttls(ask(s, "ttl1.stale.example.com.")) == [1], timeout=5,
                     what="a fresh answer")
    finally:
        dying.close()


def test_failed_upstream_skipped_until_it_answers_again(etcd):
    first, second = Scripted(), Scripted()
    first.silent = True
    try:
        with running(etcd, "-ns-rotate=false", "-rtimeout=1s", "-rcache=0",
                     upstream=f"{first.address},{second.address}") as s:
            started = time.monotonic()
            assert addresses(ask(s, "a0.health.example.com.")) == ["192.0.2.1"]
            assert time.monotonic() - started >= 0.9  # waited for the silent one
            for i in range(1, 4):
                started = time.monotonic()
                assert addresses(ask(s, f"a{i}.health.example.com.")) == ["192.0.2.1"]
                assert time.monotonic() - started < 0.5, "the failed server was tried first"
            assert first.total() == 1 and second.total() == 4
            first.silent = False
            time.sleep(2.3)  # the failed server's next probe is due
            ask(s, "a4.health.example.com.")  # probes it in the background
            wait_for(lambda: first.count("a4.health.example.com.") == 1, timeout=2,
                     what="the probe")
            time.sleep(0.1)
            ask(s, "a5.health.example.com.")
            assert first.count("a5.health.example.com.") == 1  # first in order again
            assert second.count("a5.health.example.com.") == 0
    finally:
        first.close()
        second.close()
