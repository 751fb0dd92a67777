"""The query pipeline in process for forwarded names: a table of (name, type, upstream
behaviour) -> (rcode, answer, TTL, seconds until the reply, queries the upstream got),
asked through the transports' own code on a loaded RecordStore, with a stand-in upstream
and one injected clock.

What is real: UDPServer.doRead (the UDP reader: wire cache, then the response cache's UDP
index, then ``QueryHandler.handle(data, tcp=False, addr=...)``), DNSTCPProtocol (wire
cache, then ``handle(data, tcp=True, client=...)``), QueryHandler, Resolver (response
cache, coalescing, serve-stale, prefetch, CNAME targets through ``lookup_target``),
Authority, and the Forwarder with its UDP socket pools, query IDs, timeouts, server
order and health marks, and its one-connection-per-query TCP exchange.

What stands in, and why there: the Forwarder talks to its upstreams only through the
reactor (``listenUDP`` for its pooled sockets, ``connectTCP`` for TCP, ``callLater`` for
timeouts), so the stand-in is a reactor: a ``twisted.internet.task.Clock`` whose
``listenUDP`` and ``connectTCP`` hand the Forwarder's own protocols fake transports
wired to a table of upstream answers. A reply comes ``LATENCY`` seconds later on the
clock, into the very socket protocol the query went out from, under the ID the Forwarder
chose; a silent upstream never replies, so the Forwarder's own ``rtimeout`` timer fails the
query when the clock gets there. Standing in for the Forwarder itself would leave its
timeouts, ID matching and health marks untested; standing in lower (real sockets) would
need a real reactor and real waiting. No socket is opened and nothing waits: the test
moves the clock from one scheduled call to the next until the reply is out, and the
seconds that took on the clock are part of the expectation.

The clocks: the Forwarder takes ``clock=``, the Resolver too (for its response cache,
also the one a reconfiguration makes), and the Authority (the SOA serial). The UDP reader's miss budget and the
latency metrics read time.perf_counter, which decides nothing here.

Not covered here, and why: for a plain UDP query the production UDP reader's owner sets
``QueryHandler.relay`` (skydns.relay.UDPRelay), which sends forwarded queries itself from
raw sockets and times them out by time.monotonic, with no clock or socket seam; here the
relay is not set, so UDP queries take the Forwarder path, which production UDP takes when
the relay declines (every upstream down, over -max-concurrent, the query already in
flight on the Forwarder path) and for CNAME targets. The relay is tested in process with
real sockets (test_relay.py) and end to end (test_forwarding.py). Truncated replies and
the retry over TCP, stub zones and the loop probe stay end to end too.

Expected answers are literal: names, TTLs, rcodes and seconds, as the README's
"Forwarding and the response cache" states them.
"""

from __future__ import annotations

import dataclasses

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.python.failure import Failure

from skydns.authority import Authority
from skydns.config import Config
from skydns.forward import Forwarder
from skydns.metrics import Metrics
from skydns.resolver import Resolver
from skydns.server import DNSTCPFactory, QueryHandler, UDPServer
from skydns.store import RecordStore
from skydns.wire import WireCache

UP1, UP2 = ("127.0.0.1", 5301), ("127.0.0.1", 5302)
LATENCY = 0.125   # seconds on the clock an upstream takes to reply (exact in binary)
RTIMEOUT = 2.0    # -rtimeout
NOW = 1767225600 + 1234  # the Authority's clock: SOA serials are 1767225600
MAX_STEPS = 200   # clock jumps per exchange, at most
MAX_WAIT = 30.0   # seconds on the clock an exchange may take, at most

RECORDS = {  # ExternalName services, as kube2sky writes them
    "/skydns/local/cluster/svc/default/ext": '{"host":"www.example.com.","ttl":30}',
    "/skydns/local/cluster/svc/default/extgone": '{"host":"gone.example.com.","ttl":30}',
}


# -- upstream behaviours: functions of the query (a dns.message) -> reply, or None --------

def answer(rdtype, ttl, data):
    """The asked name's one record of ``rdtype``."""
    def reply(query):
        response = dns.message.make_response(query)
        response.answer.append(dns.rrset.from_text(query.question[0].name, ttl, "IN", rdtype,
                                                   data))
        return response
    return reply


def a(ttl, address):
    return answer("A", ttl, address)


def ptr(ttl, target):
    return answer("PTR", ttl, target)


def negative(rcode, soa_ttl, minimum):
    def reply(query):
        response = dns.message.make_response(query)
        response.set_rcode(rcode)
        response.authority.append(dns.rrset.from_text(
            "example.com.", soa_ttl, "IN", "SOA",
            f"ns.example.com. hostmaster.example.com. 1 7200 900 1209600 {minimum}"))
        return response
    return reply


def nxdomain(soa_ttl, minimum):
    return negative(dns.rcode.NXDOMAIN, soa_ttl, minimum)


def nodata(soa_ttl, minimum):
    return negative(dns.rcode.NOERROR, soa_ttl, minimum)


def nodata_without_soa(query):
    return dns.message.make_response(query)


def servfail(query):
    response = dns.message.make_response(query)
    response.set_rcode(dns.rcode.SERVFAIL)
    return response


def silent(query):
    return None


# -- the reactor stand-in: a Clock, and fake UDP ports / TCP connections to a table -------

class FakeUDPPort:
    """What ``listenUDP`` returns: the Forwarder's pooled socket writes queries here."""

    def __init__(self, network, proto):
        self.network = network
        self.protocol = proto
        self.server = None
        self.listening = True

    def connect(self, host, port):
        self.server = (host, port)

    def write(self, data, addr=None):
        reply = self.network.respond(self.server, "udp", data)
        if reply is not None:
            self.network.clock.callLater(LATENCY, self._deliver, reply)

    def _deliver(self, reply):
        if self.listening:
            self.protocol.datagramReceived(reply, self.server)

    def stopListening(self):
        if self.listening:
            self.listening = False
            self.protocol.doStop()


class FakeTCPConnection:
    """What ``connectTCP`` sets up: the Forwarder's TCP exchange writes its query here."""

    def __init__(self, network, proto, server):
        self.network = network
        self.protocol = proto
        self.server = server
        self.buffer = b""
        self.connected = True

    def write(self, data):
        self.buffer += data
        while len(self.buffer) >= 2 and len(self.buffer) >= 2 + int.from_bytes(
                self.buffer[:2], "big"):
            size = int.from_bytes(self.buffer[:2], "big")
            message, self.buffer = self.buffer[2:2 + size], self.buffer[2 + size:]
            reply = self.network.respond(self.server, "tcp", message)
            if reply is not None:
                self.network.clock.callLater(
                    LATENCY, self._deliver, len(reply).to_bytes(2, "big") + reply)

    def _deliver(self, data):
        if self.connected:
            self.protocol.dataReceived(data)

    def loseConnection(self):
        if self.connected:
            self.connected = False
            self.protocol.connectionLost(Failure(ConnectionDone("closed")))

    disconnect = loseConnection  # (as the connector)


class Network:
    """The reactor the Forwarder and the UDP reader are given: time is ``clock``; the
    upstream servers answer from ``zone`` ((name, type) -> behaviour) and record every
    query they get in ``received`` as (server, transport, name, type)."""

    def __init__(self, zone):
        self.clock = task.Clock()
        self.callLater = self.clock.callLater
        self.seconds = self.clock.seconds
        self.zone = dict(zone)
        self.silent_servers = set()
        self.received = []

    def listenUDP(self, port, proto, interface="", maxPacketSize=8192):
        fake = FakeUDPPort(self, proto)
        proto.makeConnection(fake)
        return fake

    def connectTCP(self, host, port, factory, timeout=30):
        proto = factory.buildProtocol(IPv4Address("TCP", host, port))
        connection = FakeTCPConnection(self, proto, (host, port))
        proto.makeConnection(connection)
        return connection

    def addReader(self, reader):
        pass

    def removeReader(self, reader):
        pass

    def respond(self, server, transport, wire):
        query = dns.message.from_wire(wire)
        question = query.question[0]
        name = question.name.to_text().lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.received.append((server, transport, name, rdtype))
        if server in self.silent_servers:
            return None
        response = self.zone.get((name, rdtype), nxdomain(300, 300))(query)
        return None if response is None else response.to_wire()

    def sent(self, name=None, server=None):
        return sum(1 for s, _, n, _ in self.received
                   if name in (None, n) and server in (None, s))


class FakeUDPSocket:
    """The UDP reader's socket: datagrams in ``inbox``, replies out to ``outbox``."""

    def __init__(self):
        self.inbox = []
        self.outbox = []

    def recvfrom(self, size):
        if not self.inbox:
            raise BlockingIOError
        return self.inbox.pop(0)

    def sendto(self, data, addr):
        self.outbox.append((data, addr))

    def fileno(self):
        return -1

    def close(self):
        pass


class Pipeline:
    """One skydns as skydns.main wires it (minus the UDP relay, see the docstring), on the
    stand-in reactor."""

    def __init__(self, zone, **flags):
        flags.setdefault("nameservers", ["%s:%d" % UP1])
        self.config = Config(domain="cluster.local.", rtimeout=RTIMEOUT, **flags)
        self.network = Network(zone)
        self.clock = self.network.clock
        store = RecordStore("skydns")
        store.replace_all([(k, v.encode(), 0) for k, v in RECORDS.items()], revision=1)
        authority = Authority(store, self.config, clock=lambda: NOW)
        self.forwarder = Forwarder(self.network, self.config, clock=self.clock.seconds)
        self.resolver = Resolver(self.config, store, authority, self.forwarder, Metrics(),
                                 clock=self.clock.seconds)
        authority.upstream = self.resolver.lookup_target  # as skydns.main does
        self.handler = QueryHandler(self.resolver, WireCache(), self.resolver.metrics,
                                    self.config)
        self.socket = FakeUDPSocket()
        self.udp = UDPServer(self.network, self.socket, self.handler, self.handler.cache,
                             self.resolver.metrics)
        self.udp.start()
        self.tcp = DNSTCPFactory(self.handler, self.handler.cache)
        self.next_port = 40000

    def exchange(self, queries, tcp):
        """Send the queries (wire bytes) at once, each from its own client port (over TCP
        each on its own connection), and move the clock from one scheduled call to the
        next until every reply is out: [(reply bytes, seconds it took on the clock)]."""
        start = self.clock.seconds()
        clients = []
        for data in queries:
            self.next_port += 1
            clients.append(("127.0.0.1", self.next_port))
        if tcp:
            connections = [self._connect(data, client) for data, client in zip(queries,
                                                                                clients)]
        else:
            self.socket.inbox.extend(zip(queries, clients))
            self.udp.doRead()
        got = {}
        for _ in range(MAX_STEPS):
            if tcp:
                for i, (_, transport) in enumerate(connections):
                    if i not in got and transport.value():
                        got[i] = (transport.value(), self.clock.seconds() - start)
            else:
                for data, addr in self.socket.outbox:
                    got[clients.index(addr)] = (data, self.clock.seconds() - start)
                self.socket.outbox.clear()
            if len(got) == len(queries):
                break
            due = [call.getTime() for call in self.clock.getDelayedCalls() if call.active()]
            assert due, f"{len(queries) - len(got)} queries unanswered, nothing scheduled"
            assert min(due) - start <= MAX_WAIT, "no reply within 30 s on the clock"
            self.clock.advance(min(due) - self.clock.seconds())
        else:
            raise AssertionError(f"no reply after {MAX_STEPS} scheduled calls")
        out = []
        for i in range(len(queries)):
            data, took = got[i]
            if tcp:
                size = int.from_bytes(data[:2], "big")
                assert len(data) == 2 + size, "one whole reply per query"
                data = data[2:]
                connections[i][1].loseConnection()
            out.append((data, took))
        return out

    def _connect(self, data, client):
        address = IPv4Address("TCP", *client)
        proto = self.tcp.buildProtocol(address)
        proto.callLater = self.clock.callLater  # its idle timeout, on our clock
        transport = StringTransportWithDisconnection(peerAddress=address)
        transport.protocol = proto
        proto.makeConnection(transport)
        proto.dataReceived(len(data).to_bytes(2, "big") + data)
        return proto, transport


def query(name, qtype, qid):
    message = dns.message.make_query(name, qtype)
    message.id = qid
    return message.to_wire()


def lines(section):
    """The records as text, lower-cased: a name compressed to the question (an owner, or
    inside a SOA) has the client's spelling, which is checked on the question."""
    return [rrset.to_text().lower() for rrset in section]


def lower(texts):
    return [text.lower() for text in texts]


# -- the table ------------------------------------------------------------------------------

@dataclasses.dataclass
class Step:
    """One query, ``after`` seconds on the clock after the previous reply (the upstream's
    behaviours updated with ``upstream`` first), and what it must get: rcode, answer and
    authority (TTLs included), AA, the seconds until the reply, and the queries the
    upstream servers received so far."""

    rcode: str = "NOERROR"
    answer: list = dataclasses.field(default_factory=list)
    authority: list = dataclasses.field(default_factory=list)
    took: float = LATENCY
    sent: int = 1
    after: float = 0.0
    upstream: dict = None
    aa: bool = False


@dataclasses.dataclass
class Row:
    id: str
    name: str
    qtype: str
    upstream: dict
    steps: list
    flags: dict = dataclasses.field(default_factory=dict)
    events: dict = dataclasses.field(default_factory=dict)  # skydns_forward_events, non-zero


WWW = ("www.example.com.", "A")
WWW_A = "www.example.com. 300 IN A 192.0.2.10"
NX_SOA = "example.com. {} IN SOA ns.example.com. hostmaster.example.com. 1 7200 900 1209600 5"
ND_SOA = ("example.com. {} IN SOA ns.example.com. hostmaster.example.com. 1 7200 900 "
          "1209600 3600")
CLUSTER_SOA = ("cluster.local. 60 IN SOA ns.dns.cluster.local. hostmaster.skydns.local. "
               "1767225600 28800 7200 604800 60")
ROOT_SOA = ". 60 IN SOA a.root-servers.net. nstld.verisign-grs.com. 1767225600 1800 900 "\
    "604800 60"
EXT_CNAME = "ext.default.svc.cluster.local. 30 IN CNAME www.example.com."

ROWS = [
    Row("forwarded A", *WWW, {WWW: a(300, "192.0.2.10")}, [
        Step(answer=[WWW_A])]),
    Row("repeat from the cache, TTL run down; cached at most -rcache-ttl (60 s)", *WWW,
        {WWW: a(300, "192.0.2.10")}, [
            Step(answer=[WWW_A]),
            Step(after=3.5, took=0, answer=["www.example.com. 297 IN A 192.0.2.10"]),
            Step(after=55.5, took=0, answer=["www.example.com. 241 IN A 192.0.2.10"]),
            Step(after=1.0, sent=2, answer=[WWW_A])]),
    Row("expiry at the upstream TTL, then refetched", "ttl10.example.com.", "A",
        {("ttl10.example.com.", "A"): a(10, "192.0.2.11")}, [
            Step(answer=["ttl10.example.com. 10 IN A 192.0.2.11"]),
            Step(after=9.875, took=0, answer=["ttl10.example.com. 1 IN A 192.0.2.11"]),
            Step(after=0.125, sent=2, answer=["ttl10.example.com. 10 IN A 192.0.2.11"]),
            Step(after=5.0, took=0, sent=2, answer=["ttl10.example.com. 5 IN A 192.0.2.11"])]),
    Row("NXDOMAIN forwarded, cached for the SOA minimum (5 s)", "nx.example.com.", "A",
        {("nx.example.com.", "A"): nxdomain(300, 5)}, [
            Step("NXDOMAIN", authority=[NX_SOA.format(300)]),
            Step("NXDOMAIN", after=4.875, took=0, authority=[NX_SOA.format(296)]),
            Step("NXDOMAIN", after=0.125, sent=2, authority=[NX_SOA.format(300)])]),
    Row("NODATA forwarded, cached for the SOA's TTL (3 s) under its minimum",
        "nodata.example.com.", "AAAA", {("nodata.example.com.", "AAAA"): nodata(3, 3600)}, [
            Step(authority=[ND_SOA.format(3)]),
            Step(after=2.875, took=0, authority=[ND_SOA.format(1)]),
            Step(after=0.125, sent=2, authority=[ND_SOA.format(3)])]),
    Row("NODATA without a SOA: not cached (RFC 2308 5)", "bare.example.com.", "AAAA",
        {("bare.example.com.", "AAAA"): nodata_without_soa}, [
            Step(), Step(sent=2)]),
    Row("upstream SERVFAIL relayed, not cached", "fail.example.com.", "A",
        {("fail.example.com.", "A"): servfail}, [
            Step("SERVFAIL"), Step("SERVFAIL", sent=2)]),
    Row("upstream timeout: SERVFAIL after -rtimeout, and again (the only server)",
        "silent.example.com.", "A", {("silent.example.com.", "A"): silent}, [
            Step("SERVFAIL", took=RTIMEOUT), Step("SERVFAIL", took=RTIMEOUT, sent=2)]),
    Row("stale after a timeout; at once while the upstream is down; fresh once it is back",
        "stale.example.com.", "A", {("stale.example.com.", "A"): a(1, "192.0.2.12")}, [
            Step(answer=["stale.example.com. 1 IN A 192.0.2.12"]),
            Step(after=1.5, upstream={("stale.example.com.", "A"): silent}, took=RTIMEOUT,
                 sent=2, answer=["stale.example.com. 30 IN A 192.0.2.12"]),
            Step(took=0, sent=3, answer=["stale.example.com. 30 IN A 192.0.2.12"]),
            Step(after=2.5, upstream={("stale.example.com.", "A"): a(1, "192.0.2.12")},
                 took=0, sent=4, answer=["stale.example.com. 30 IN A 192.0.2.12"]),
            Step(after=0.5, took=0, sent=4, answer=["stale.example.com. 1 IN A 192.0.2.12"])],
        events={"stale": 3}),
    Row("stale on an upstream SERVFAIL, within -rcache-stale (5 s) of expiry only",
        "old.example.com.", "A", {("old.example.com.", "A"): a(1, "192.0.2.14")}, [
            Step(answer=["old.example.com. 1 IN A 192.0.2.14"]),
            Step(after=4.75, upstream={("old.example.com.", "A"): servfail}, sent=2,
                 answer=["old.example.com. 30 IN A 192.0.2.14"]),
            Step(after=0.875, sent=3, answer=["old.example.com. 30 IN A 192.0.2.14"]),
            Step("SERVFAIL", sent=4)], flags={"rcache_stale": 5}, events={"stale": 2}),
    Row("-rcache-stale=0: SERVFAIL after the timeout", "old.example.com.", "A",
        {("old.example.com.", "A"): a(1, "192.0.2.14")}, [
            Step(answer=["old.example.com. 1 IN A 192.0.2.14"]),
            Step("SERVFAIL", after=1.5, upstream={("old.example.com.", "A"): silent},
                 took=RTIMEOUT, sent=2)], flags={"rcache_stale": 0}),
    Row("popular entry prefetched in its last second (-rcache-prefetch=3)",
        "popular.example.com.", "A", {("popular.example.com.", "A"): a(10, "192.0.2.15")}, [
            Step(answer=["popular.example.com. 10 IN A 192.0.2.15"]),
            Step(after=0.875, took=0, answer=["popular.example.com. 10 IN A 192.0.2.15"]),
            Step(took=0, answer=["popular.example.com. 10 IN A 192.0.2.15"]),
            Step(after=8.5, took=0, sent=2, answer=["popular.example.com. 1 IN A 192.0.2.15"]),
            Step(after=0.5, took=0, sent=2,
                 answer=["popular.example.com. 10 IN A 192.0.2.15"])], events={"prefetch": 1}),
    Row("-no-rec: SERVFAIL, nothing forwarded", *WWW, {WWW: a(300, "192.0.2.10")}, [
        Step("SERVFAIL", took=0, sent=0)], flags={"no_rec": True}),
    Row("short name (under -ndots 2): NXDOMAIN with a root SOA, not forwarded",
        "nonexistent.", "A", {}, [
            Step("NXDOMAIN", took=0, sent=0, authority=[ROOT_SOA])]),
    Row("reverse name without a PTR record forwarded and cached", "7.7.0.10.in-addr.arpa.",
        "PTR", {("7.7.0.10.in-addr.arpa.", "PTR"): ptr(300, "ext.example.com.")}, [
            Step(answer=["7.7.0.10.in-addr.arpa. 300 IN PTR ext.example.com."]),
            Step(after=10, took=0,
                 answer=["7.7.0.10.in-addr.arpa. 290 IN PTR ext.example.com."])]),
    Row("cluster CNAME to an outside name: the target from upstream, then its cache",
        "ext.default.svc.cluster.local.", "A", {WWW: a(300, "192.0.2.10")}, [
            Step(aa=True, answer=[EXT_CNAME, "www.example.com. 30 IN A 192.0.2.10"]),
            Step(aa=True, after=30, took=0, answer=[EXT_CNAME,
                                                    "www.example.com. 30 IN A 192.0.2.10"]),
            Step(aa=True, after=30, sent=2, answer=[EXT_CNAME,
                                                    "www.example.com. 30 IN A 192.0.2.10"])]),
    Row("cluster CNAME to an outside name that is NXDOMAIN there: NODATA",
        "extgone.default.svc.cluster.local.", "A",
        {("gone.example.com.", "A"): nxdomain(300, 5)}, [
            Step(aa=True, authority=[CLUSTER_SOA]),
            Step(aa=True, after=1, took=0, authority=[CLUSTER_SOA])]),
]


def spelled(name, i):
    """``name`` with some letters in capitals (0x20), differently for each ``i``."""
    return "".join(c.upper() if (i >> (k % 8)) & 1 else c for k, c in enumerate(name))


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_row(row, tcp):
    pipe = Pipeline(row.upstream, **row.flags)
    for i, step in enumerate(row.steps):
        where = f"step {i + 1}"
        pipe.clock.advance(step.after)
        if step.upstream:
            pipe.network.zone.update(step.upstream)
        qid = 0x1000 + i
        name = spelled(row.name, i)
        [(out, took)] = pipe.exchange([query(name, row.qtype, qid)], tcp)
        reply = dns.message.from_wire(out, one_rr_per_rrset=True)
        assert reply.id == qid, where
        assert reply.question[0].name.to_text() == name, where  # the client's spelling
        assert dns.rcode.to_text(reply.rcode()) == step.rcode, (where, reply.to_text())
        assert lines(reply.answer) == lower(step.answer), (where, reply.to_text())
        assert lines(reply.authority) == lower(step.authority), (where, reply.to_text())
        assert bool(reply.flags & dns.flags.AA) == step.aa, where
        assert reply.flags & dns.flags.RA, where
        assert not reply.flags & dns.flags.TC, where
        assert took == step.took, where
        assert pipe.network.sent() == step.sent, (where, pipe.network.received)
    assert pipe.resolver.events == {"coalesced": 0, "prefetch": 0, "stale": 0, "tcp-retry": 0,
                                    **row.events}
    want = "tcp" if tcp else "udp"  # forwarded over the client's transport (targets: UDP)
    if not row.name.endswith("cluster.local."):
        assert all(transport == want for _, transport, _, _ in pipe.network.received)


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_identical_queries_in_flight_share_one_upstream_query(tcp):
    """Five clients ask for one name at once (their own IDs, their own spellings): one
    upstream query; each gets its own ID and spelling back."""
    pipe = Pipeline({WWW: a(300, "192.0.2.10")})
    names = [spelled("www.example.com.", i) for i in (0, 1, 2, 5, 255)]
    replies = pipe.exchange([query(name, "A", 0x2000 + i) for i, name in enumerate(names)],
                            tcp)
    for i, (name, (out, took)) in enumerate(zip(names, replies)):
        reply = dns.message.from_wire(out)
        assert reply.id == 0x2000 + i
        assert reply.question[0].name.to_text() == name
        assert lines(reply.answer) == lower(["www.example.com. 300 IN A 192.0.2.10"])
        assert took == LATENCY
    assert pipe.network.received == [(UP1, "tcp" if tcp else "udp", "www.example.com.", "A")]
    assert pipe.resolver.events["coalesced"] == 4


def test_over_max_concurrent_is_servfail_at_once():
    """-max-concurrent=2 and five distinct names at once: two go upstream, three get
    SERVFAIL without waiting."""
    names = [f"n{i}.cap.example.com." for i in range(5)]
    pipe = Pipeline({(name, "A"): a(300, "192.0.2.20") for name in names},
                    max_concurrent=2, rcache=0)
    replies = pipe.exchange([query(name, "A", 0x3000 + i) for i, name in enumerate(names)],
                            False)
    got = [(dns.rcode.to_text(dns.message.from_wire(out).rcode()), took)
           for out, took in replies]
    assert got == [("NOERROR", LATENCY), ("NOERROR", LATENCY), ("SERVFAIL", 0),
                   ("SERVFAIL", 0), ("SERVFAIL", 0)]
    assert pipe.network.sent() == 2
    assert pipe.resolver.metrics.errors["overloaded"] == 3


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_a_silent_server_is_tried_last_until_it_answers_again(tcp):
    """Two servers in order (-ns-rotate=false), the first silent: the first query waits
    for its timeout, the next ones go to the second server at once; once the first answers
    again, its background probe (every 2 s) puts it back first in line."""
    names = [f"a{i}.health.example.com." for i in range(6)]
    pipe = Pipeline({(name, "A"): a(300, "192.0.2.30") for name in names}, rcache=0,
                    ns_rotate=False, nameservers=["%s:%d" % UP1, "%s:%d" % UP2])
    pipe.network.silent_servers.add(UP1)

    def ask(i):
        [(out, took)] = pipe.exchange([query(names[i], "A", 0x4000 + i)], tcp)
        assert lines(dns.message.from_wire(out).answer) == lower([
            f"{names[i]} 300 IN A 192.0.2.30"])
        return took

    assert ask(0) == RTIMEOUT + LATENCY
    assert [ask(i) for i in (1, 2, 3)] == [LATENCY] * 3
    assert (pipe.network.sent(server=UP1), pipe.network.sent(server=UP2)) == (1, 4)
    pipe.network.silent_servers.clear()
    pipe.clock.advance(2.0)  # the first server's probe is due
    assert ask(4) == LATENCY  # from the second; the first gets it too, in the background
    assert pipe.network.sent(names[4], UP1) == 1 and pipe.network.sent(names[4], UP2) == 1
    assert ask(5) == LATENCY
    assert pipe.network.sent(names[5], UP1) == 1 and pipe.network.sent(names[5], UP2) == 0


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_when_every_server_is_down_a_query_reaches_each_once(tcp):
    """The only upstream timed out and is marked down; when its probe is due the next
    query is sent to it once: that query is the probe (a background probe beside it sent
    the same query twice)."""
    names = [f"b{i}.down.example.com." for i in range(2)]
    pipe = Pipeline({(name, "A"): a(300, "192.0.2.40") for name in names}, rcache=0)
    pipe.network.silent_servers.add(UP1)
    [(out, took)] = pipe.exchange([query(names[0], "A", 0x5000)], tcp)
    assert dns.message.from_wire(out).rcode() == dns.rcode.SERVFAIL and took == RTIMEOUT
    pipe.network.silent_servers.clear()
    pipe.clock.advance(2.0)  # its probe is due
    [(out, took)] = pipe.exchange([query(names[1], "A", 0x5001)], tcp)
    assert lines(dns.message.from_wire(out).answer) == lower([
        f"{names[1]} 300 IN A 192.0.2.40"])
    assert took == LATENCY
    assert pipe.network.sent(names[1], UP1) == 1
    assert not pipe.forwarder.down  # and it counts as back
