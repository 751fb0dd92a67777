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
from skydns.forward import random16
from skydns.rcache import (STALE_TTL, ResponseCache, cache_key, decrement_ttls, lifetime,
                           personalize, relayed, resource_records, scan)

SLOW = 0.5  # seconds the stand-in waits before answering a name starting with "slow"


# -- the upstream stand-in -----------------------------------------------------------------

def zone_answer(query):
    """The stand-in's answer, chosen by the first label: ``ttlN`` (A with TTL N), ``nx``
    (NXDOMAIN, SOA TTL 300 and minimum 1), ``nodata`` (NOERROR, nothing, no SOA), ``fail``
    (SERVFAIL), ``big`` (60 A records), ``medium`` (30), a PTR question (PTR
    ext.example.com.), else A. A name with a ``noedns`` label is cut at 512 bytes over UDP
    whatever the query's EDNS size, as a server without EDNS does."""
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
    elif label.startswith("medium"):  # over 512 bytes, well under 1232
        response.answer.append(dns.rrset.from_text_list(
            q.name, 300, "IN", "A", [f"192.0.2.{i}" for i in range(1, 31)]))
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
        if transport == "udp" and ".noedns." in name:
            limit = 512
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


def test_scan_agrees_with_the_records_it_walks():
    """scan's one pass gives what resource_records' full list does, for every shape the
    cache sees: answers with OPT, negative answers with a SOA, NODATA without one."""
    _, reply = sample_reply()
    wires = [reply.to_wire(), negative(dns.rcode.NXDOMAIN, 300, 1),
             negative(dns.rcode.NOERROR, 20, 600), negative(dns.rcode.NXDOMAIN, 9, 7, True),
             dns.message.make_response(dns.message.make_query("a.example.com.", "A")).to_wire()]
    for wire in wires:
        rrs = resource_records(wire)
        plain = [(section, rtype, off, end) for section, rtype, off, end in rrs if rtype != 41]
        offsets, low, answered, soa_minimum = scan(wire)
        assert offsets == [off for _, _, off, _ in plain]
        ttls = [int.from_bytes(wire[off:off + 4], "big") for off in offsets]
        assert low == (min(ttls) if ttls else None)
        assert answered == any(section == 1 for section, *_ in plain)
        soa = [end for section, rtype, _, end in plain if section == 2 and rtype == 6]
        assert soa_minimum == (int.from_bytes(wire[soa[0] - 4:soa[0]], "big") if soa else None)
    assert scan(negative(dns.rcode.NXDOMAIN, 300, 1))[3] == 1
    for cut in (len(wires[0]) - 1, 40, 13):
        with pytest.raises(ValueError):
            scan(wires[0][:cut])


def test_query_ids_do_not_come_from_the_seedable_generator():
    """IDs and socket picks come from the OS: seeding ``random`` (or recovering its state
    from outputs) must not make them repeat."""
    import random
    random.seed(7)
    first = [random16() for _ in range(64)]
    random.seed(7)
    second = [random16() for _ in range(64)]
    assert first != second
    assert all(0 <= n < 65536 for n in first + second)
    assert len(set(random16() for _ in range(5000))) > 4000  # 16 bits, not a few values


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


def test_cache_is_bounded_in_bytes_too():
    """An upstream's replies may be up to 64 KiB: the entries alone are no bound."""
    cache = ResponseCache(10000, 60, clock=Clock(), max_bytes=8000)
    keys = []
    for i in range(40):
        query = dns.message.make_query(f"w{i}.example.com.", "A")
        reply = dns.message.make_response(query)
        reply.answer.append(dns.rrset.from_text_list(
            f"w{i}.example.com.", 30, "IN", "A", [f"192.0.2.{j + 1}" for j in range(60)]))
        keys.append(cache_key(query.to_wire(), False))
        cache.store(keys[-1], reply.to_wire(), 65535)
        assert cache.bytes == sum(e.cost for e in cache.entries.values()) <= 8000
    assert 1 < len(cache) < 10 and cache.evicted == 40 - len(cache)
    assert keys[-1] in cache.entries and keys[0] not in cache.entries
    assert ResponseCache(10, 60, max_bytes=0).store(keys[0], reply.to_wire(), 512) is None


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


def test_truncated_reply_relayed_not_cached_and_tcp_cached(sky, upstream):
    for _ in range(2):
        reply = ask(sky, "big.tc.example.com.")
        assert reply.flags & dns.flags.TC
    assert upstream.count("big.tc.example.com.", transport="udp") == 2
    for _ in range(2):
        reply = ask(sky, "big.tc.example.com.", tcp=True)
        assert len(addresses(reply)) == 60 and not reply.flags & dns.flags.TC
    assert upstream.count("big.tc.example.com.", transport="tcp") == 1


def test_truncated_udp_reply_asked_again_over_tcp_when_the_client_takes_more(sky, upstream):
    name = "medium.noedns.example.com."
    for _ in range(2):  # the second from the cache
        reply = ask(sky, name, use_edns=0, payload=1232)
        assert not reply.flags & dns.flags.TC and len(addresses(reply)) == 30
    assert upstream.count(name, transport="udp") == 1
    assert upstream.count(name, transport="tcp") == 1
    reply = ask(sky, name)  # a 512-byte client: the truncated reply, it retries itself
    assert reply.flags & dns.flags.TC and not reply.answer
    assert upstream.count(name, transport="tcp") == 1
    assert scrape(sky, "skydns_forward_events_total", {"event": "tcp-retry"}) >= 1


def test_external_targets_looked_up_through_the_response_cache(etcd, upstream):
    """A wide answer that names hosts outside the domain is not kept in the wire cache,
    but its upstream lookups are: one per target and TTL, not one per query."""
    client = etcd.client()
    try:
        for i in range(5):
            client.put(f"/tgt/local/skydns/ext/e{i}",
                       json.dumps({"host": f"ttl300.target{i}.example.net", "port": 80}))
        with running(etcd, "-path-prefix=tgt", upstream=upstream.address) as sky:
            for _ in range(5):
                reply = ask(sky, "ext.skydns.local.", "SRV", use_edns=0, payload=4096)
                assert len(reply.answer[0]) == 5 and len(reply.additional) == 5
            for i in range(5):
                assert upstream.count(f"ttl300.target{i}.example.net.", "A") == 1
                assert upstream.count(f"ttl300.target{i}.example.net.", "AAAA") == 1
    finally:
        client.delete_prefix("/tgt/")
        client.close()


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


# -- UDP socket pools: IDs multiplexed over long-lived sockets ----------------------------

def numbered(query):
    """An A answer telling names apart: ``nN.<anything>`` gets 10.0.N/256.N%256."""
    name = query.question[0].name
    n = int(name.labels[0].decode()[1:])
    return answer_with(query, f"10.0.{n // 256}.{n % 256}")


def test_many_concurrent_queries_each_get_their_own_answer(etcd):
    """200 distinct names at once over UDP share a few upstream sockets: every answer
    must be its own name's (the IDs of the multiplexed queries never mixed up)."""
    numbers = Scripted(numbered)
    try:
        with running(etcd, "-rcache=0", "-rtimeout=2s", upstream=numbers.address) as s:
            names = [f"n{i}.pool.example.com." for i in range(200)]
            replies = concurrently(s, names, timeout=10.0)
            for i, (name, (_, reply)) in enumerate(zip(names, replies)):
                assert reply.rcode() == dns.rcode.NOERROR, (name, reply)
                assert reply.question[0].name.to_text() == name
                assert addresses(reply) == [f"10.0.{i // 256}.{i % 256}"], name
            assert numbers.total() == 200
    finally:
        numbers.close()


def other_question(query):
    """A reply with the query's ID and flags but for another name (a spoofing attempt or a
    confused server)."""
    other = dns.message.make_query("elsewhere.example.net.", query.question[0].rdtype)
    other.id = query.id
    other.flags = query.flags
    response = dns.message.make_response(other)
    response.answer.append(dns.rrset.from_text("elsewhere.example.net.", 300, "IN", "A",
                                               "203.0.113.66"))
    return response


def shouted(query):
    """The right question, the name spelled in capitals (as a 0x20-style server might)."""
    response = answer_with(query, "198.51.100.20")
    response.question[0] = dns.rrset.RRset(
        dns.name.from_text(query.question[0].name.to_text().upper()),
        query.question[0].rdclass, query.question[0].rdtype)
    return response


def test_reply_with_another_question_is_not_accepted(etcd):
    liar, honest, loud = Scripted(other_question), Scripted(), Scripted(shouted)
    try:
        with running(etcd, "-ns-rotate=false", "-rtimeout=500ms", "-rcache=0",
                     upstream=f"{liar.address},{honest.address}") as s:
            started = time.monotonic()
            reply = ask(s, "q1.liar.example.com.")
            assert addresses(reply) == ["192.0.2.1"]  # the next server's answer
            assert time.monotonic() - started >= 0.45  # after the liar's timeout
            assert liar.count("q1.liar.example.com.") == 1
            assert honest.count("q1.liar.example.com.") == 1
        with running(etcd, "-rtimeout=500ms", "-rcache=0", upstream=liar.address) as s:
            started = time.monotonic()
            assert ask(s, "q2.liar.example.com.").rcode() == dns.rcode.SERVFAIL
            assert time.monotonic() - started >= 0.45
        with running(etcd, "-rtimeout=500ms", "-rcache=0", upstream=loud.address) as s:
            started = time.monotonic()  # names compare case-insensitively
            reply = ask(s, "q3.loud.example.com.")
            assert addresses(reply) == ["198.51.100.20"]
            assert time.monotonic() - started < 0.4
    finally:
        for server in (liar, honest, loud):
            server.close()


class PortRecorder:
    """A one-thread UDP stand-in answering ``numbered`` at once and recording the source
    port of every query it gets."""

    def __init__(self):
        self.port = free_port()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", self.port))
        self.ports = collections.Counter()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stop.is_set():
            ready, _, _ = select.select([self.sock], [], [], 0.1)
            if not ready:
                continue
            data, address = self.sock.recvfrom(65535)
            self.ports[address[1]] += 1
            self.sock.sendto(numbered(dns.message.from_wire(data)).to_wire(), address)

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


def sockets_connected_to(port):
    """UDP sockets (in this network namespace) connected to 127.0.0.1:port."""
    remote = f"0100007F:{port:04X}"
    with open("/proc/net/udp") as fh:
        return sum(1 for line in fh.readlines()[1:] if line.split()[2] == remote)


def test_source_ports_vary_and_a_pool_stays_within_its_size(etcd):
    from skydns.forward import POOL_SIZE
    recorder = PortRecorder()
    most = [0]
    sampling = threading.Event()

    def sample():
        deadline = time.monotonic() + 120
        while not sampling.is_set() and time.monotonic() < deadline:
            most[0] = max(most[0], sockets_connected_to(recorder.port))
            time.sleep(0.01)
    sampler = threading.Thread(target=sample, daemon=True)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with running(etcd, "-rcache=0", "-rtimeout=2s", upstream=recorder.address) as s:
            sampler.start()
            answered = 0
            deadline = time.monotonic() + 60
            for batch in range(25):  # 2,500 distinct names, 100 in flight at a time
                want = {}
                for i in range(100):
                    n = batch * 100 + i
                    query = dns.message.make_query(f"n{n}.ports.example.com.", "A")
                    query.id = n
                    want[n] = f"10.0.{n // 256}.{n % 256}"
                    client.sendto(query.to_wire(), ("127.0.0.1", s.port))
                while want and time.monotonic() < deadline:
                    ready, _, _ = select.select([client], [], [], 0.5)
                    if ready:
                        reply = dns.message.from_wire(client.recv(65535))
                        assert addresses(reply) == [want.pop(reply.id)]
                        answered += 1
                assert not want, f"{len(want)} of batch {batch} unanswered"
            assert answered == 2500
            assert sum(recorder.ports.values()) == 2500
            assert len(recorder.ports) >= 2, recorder.ports  # not one fixed source port
            assert s.port not in recorder.ports
    finally:
        sampling.set()
        if sampler.is_alive():
            sampler.join(timeout=5)
        client.close()
        recorder.close()
    assert 1 <= most[0] <= POOL_SIZE, most[0]


# -- the pools against a fake reactor: deterministic bounds, replacement, refusal ---------

class FakePort:
    def __init__(self, reactor, proto):
        self.reactor = reactor
        self.protocol = proto
        self.sent = []
        self.connected_to = None
        self.open = True

    def connect(self, host, port):
        self.connected_to = (host, port)

    def write(self, data, addr=None):
        self.sent.append(data)
        self.reactor.sent.append((self, data))

    def stopListening(self):
        if self.open:
            self.open = False
            self.reactor.open_ports -= 1
            self.protocol.doStop()


class FakeReactor:
    """twisted's task.Clock for timers plus listenUDP handing out FakePorts."""

    def __init__(self):
        from twisted.internet import task
        self.clock = task.Clock()
        self.callLater = self.clock.callLater
        self.seconds = self.clock.seconds
        self.ports = []
        self.sent = []   # (port, datagram) in the order sent
        self.open_ports = 0
        self.most_open = 0

    def listenUDP(self, port, proto, interface="", maxPacketSize=8192):
        fake = FakePort(self, proto)
        self.ports.append(fake)
        self.open_ports += 1
        self.most_open = max(self.most_open, self.open_ports)
        proto.makeConnection(fake)
        return fake


def pool_forwarder(*servers, rtimeout=2.0):
    from skydns.config import Config
    from skydns.forward import Forwarder
    reactor = FakeReactor()
    config = Config(nameservers=list(servers), rtimeout=rtimeout, ns_rotate=False,
                    max_concurrent=0)
    return reactor, Forwarder(reactor, config, clock=reactor.seconds)


def answer_datagram(port, data, name=None):
    """The stand-in's reply to ``data`` (optionally for another name) into ``port``."""
    query = dns.message.from_wire(data)
    response = numbered(query) if name is None else other_question(query)
    port.protocol.datagramReceived(response.to_wire(), port.connected_to)


def collect(d, into, key):
    d.addCallbacks(lambda wire: into.__setitem__(key, dns.message.from_wire(wire)),
                   lambda f: into.__setitem__(key, f.value))


def test_pool_multiplexes_ids_bounds_sockets_and_replaces_them():
    from skydns.forward import POOL_SIZE, SOCKET_QUERIES
    reactor, forwarder = pool_forwarder("127.0.0.1:5300")
    results = {}
    total = 3 * POOL_SIZE * SOCKET_QUERIES // 2
    for start in range(0, total, 500):  # 500 in flight, answered in a shuffled order
        reactor.sent.clear()
        for n in range(start, start + 500):
            query = dns.message.make_query(f"n{n}.fake.example.com.", "A")
            query.id = n % 65536
            collect(forwarder.forward(query.to_wire(), tcp=False), results, n)
        assert forwarder.outstanding == 500
        ids = [(port, data[:2]) for port, data in reactor.sent]
        assert len(set(ids)) == len(ids)  # no ID outstanding twice on one socket
        assert all(port.connected_to == ("127.0.0.1", 5300) for port, _ in reactor.sent)
        for port, data in reversed(reactor.sent):
            answer_datagram(port, data)
        assert forwarder.outstanding == 0
    for n in range(total):
        assert results[n].id == n % 65536
        assert addresses(results[n]) == [f"10.0.{n // 256}.{n % 256}"]
    assert reactor.most_open <= POOL_SIZE
    assert len(reactor.ports) > POOL_SIZE  # sockets are replaced after SOCKET_QUERIES
    # A soft limit: while every one of the POOL_SIZE sockets is retiring with queries still
    # pending on it (here up to 500 in flight), new queries share one of them.
    assert all(len(port.sent) <= SOCKET_QUERIES + 500 for port in reactor.ports)
    pool = forwarder.pools[("127.0.0.1", 5300)]
    assert pool.open_count() == reactor.open_ports <= POOL_SIZE


def test_pool_ignores_replies_that_are_not_answers_and_times_out():
    reactor, forwarder = pool_forwarder("127.0.0.1:5300", rtimeout=1.0)
    results = {}
    query = dns.message.make_query("n7.fake.example.com.", "A")
    collect(forwarder.forward(query.to_wire(), tcp=False), results, "q")
    port, data = reactor.sent[-1]
    answer_datagram(port, data, name="other")  # another question: ignored
    wrong_id = bytearray(numbered(dns.message.from_wire(data)).to_wire())
    wrong_id[0] ^= 0xFF
    port.protocol.datagramReceived(bytes(wrong_id), port.connected_to)  # an ID not sent
    no_qr = bytearray(data)  # the query itself echoed back: QR clear
    port.protocol.datagramReceived(bytes(no_qr), port.connected_to)
    assert results == {}
    reactor.clock.advance(1.0)
    assert "timed out" in str(results["q"])
    answer_datagram(port, data)  # too late: nobody waits for it any more
    assert "timed out" in str(results["q"]) and forwarder.outstanding == 0


def test_refusal_fails_everything_on_the_socket_at_once_and_replaces_it():
    from skydns.forward import ForwardError
    reactor, forwarder = pool_forwarder("127.0.0.1:5300", "127.0.0.1:5301")
    results = {}
    for n in range(40):
        query = dns.message.make_query(f"n{n}.fake.example.com.", "A")
        collect(forwarder.forward(query.to_wire(), tcp=False), results, n)
    first = [port for port in reactor.ports if port.connected_to[1] == 5300]
    victim = first[0]
    on_victim = [dns.message.from_wire(d).question[0].name for p, d in reactor.sent
                 if p is victim]
    assert on_victim
    victim.protocol.connectionRefused()  # ICMP port unreachable
    assert not victim.open
    moved = [(p, d) for p, d in reactor.sent if p.connected_to[1] == 5301]
    assert len(moved) == len(on_victim)  # each went on to the next server at once
    for port, data in moved:
        answer_datagram(port, data)
    for n in range(40):
        if dns.name.from_text(f"n{n}.fake.example.com.") in on_victim:
            assert addresses(results[n]) == [f"10.0.0.{n}"]
        else:
            assert n not in results
    assert not isinstance(results.get(0), ForwardError)
    # the epoll way: the port closed under the socket
    other = next(p for p in first[1:] if p.open)
    on_other = sum(1 for p, _ in reactor.sent if p is other)
    before = len(reactor.sent)
    other.stopListening()
    assert len(reactor.sent) - before == on_other
    sockets_before = len(reactor.ports)
    query = dns.message.make_query("n99.fake.example.com.", "A")
    collect(forwarder.forward(query.to_wire(), tcp=False), results, 99)
    # the refused sockets are out of the pool: a new one may be opened in their place
    pool = forwarder.pools[("127.0.0.1", 5300)]
    assert victim.protocol not in pool.active and other.protocol not in pool.active
    assert len(reactor.ports) >= sockets_before
