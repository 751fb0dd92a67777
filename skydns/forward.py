"""Forwarding to upstream name servers over the client's transport (UDP or TCP).

A forwarded query gets a fresh random ID and, for UDP, a fresh socket with an OS-chosen
source port, so upstream replies cannot be confused or easily spoofed. Servers are tried one
after another (starting at a rotating index with ``ns_rotate``), each for ``rtimeout``
seconds; the first reply wins. A server that failed (timeout, refusal) is tried only after
the healthy ones until it answers again: every HEALTH_PROBE_INTERVAL seconds one query it
would have had is also sent to it in the background, and its reply marks it healthy. At most
``max_concurrent`` queries are upstream at once; over that, ``Overloaded`` at once. All of it
is Twisted: Deferreds, callLater timeouts, the reactor's own UDP ports and TCP connections.
"""

from __future__ import annotations

import logging
import random
import struct
import time

import dns.exception
import dns.flags
import dns.message
import dns.rcode
from twisted.internet import defer, error, protocol
from twisted.protocols.basic import Int16StringReceiver

from .config import parse_hostport

log = logging.getLogger("skydns.forward")

HEALTH_PROBE_INTERVAL = 2.0  # seconds between background probes of a server marked down


class ForwardError(Exception):
    """No upstream server gave a usable reply."""


class Overloaded(ForwardError):
    """``max_concurrent`` queries are upstream already: fail now rather than queue."""


class _UDPExchange(protocol.DatagramProtocol):
    """One query, one reply, over a connected UDP socket."""

    def __init__(self, wire: bytes, host: str, port: int):
        self.wire = wire
        self.host = host
        self.port = port
        self.deferred = defer.Deferred()
        self.query_id = wire[:2]

    def startProtocol(self):
        self.transport.connect(self.host, self.port)
        self.transport.write(self.wire)

    def datagramReceived(self, data, addr):
        # Only a reply to our query (same ID, QR set) ends the exchange.
        if len(data) >= 12 and data[:2] == self.query_id and data[2] & 0x80:
            if not self.deferred.called:
                self.deferred.callback(data)

    def connectionRefused(self):
        if not self.deferred.called:
            self.deferred.errback(ForwardError(f"{self.host}:{self.port} refused"))

    def stopProtocol(self):
        # With epoll an ICMP "port unreachable" arrives as an error event that closes the
        # port instead of calling connectionRefused: fail over now, not after rtimeout.
        if not self.deferred.called:
            self.deferred.errback(ForwardError(f"{self.host}:{self.port} refused"))


class _TCPExchange(Int16StringReceiver):
    def connectionMade(self):
        self.sendString(self.factory.wire)

    def stringReceived(self, data):
        # As over UDP, only a reply to our query (same ID, QR set) is an answer.
        if not self.factory.deferred.called:
            if len(data) >= 12 and data[:2] == self.factory.wire[:2] and data[2] & 0x80:
                self.factory.deferred.callback(data)
            else:
                self.factory.deferred.errback(ForwardError("not a reply to our query"))
        self.transport.loseConnection()

    def connectionLost(self, reason):
        if not self.factory.deferred.called:
            self.factory.deferred.errback(ForwardError("connection closed without a reply"))


class _TCPExchangeFactory(protocol.ClientFactory):
    protocol = _TCPExchange

    def __init__(self, wire):
        self.wire = wire
        self.deferred = defer.Deferred()

    def clientConnectionFailed(self, connector, reason):
        if not self.deferred.called:
            self.deferred.errback(ForwardError(str(reason.value)))


def exchange(reactor, wire: bytes, host: str, port: int, tcp: bool, timeout: float):
    """Send one DNS message to host:port and fire with the raw reply (or fail)."""
    if tcp:
        factory = _TCPExchangeFactory(wire)
        connector = reactor.connectTCP(host, port, factory, timeout=timeout)
        d = factory.deferred
        cleanup = connector.disconnect
    else:
        proto = _UDPExchange(wire, host, port)
        try:
            udp_port = reactor.listenUDP(0, proto, interface="::" if ":" in host else "",
                                         maxPacketSize=65535)
        except error.CannotListenError as exc:
            return defer.fail(ForwardError(str(exc)))
        d = proto.deferred
        cleanup = udp_port.stopListening

    timer = reactor.callLater(timeout, lambda: d.called or d.errback(
        ForwardError(f"{host}:{port} timed out after {timeout:g}s")))

    def done(result):
        if timer.active():
            timer.cancel()
        cleanup()
        return result
    return d.addBoth(done)


def with_id(wire: bytes, query_id: int) -> bytes:
    return struct.pack("!H", query_id) + wire[2:]


class Forwarder:
    """Relays queries to upstream servers and looks up out-of-domain names."""

    def __init__(self, reactor, config, clock=time.monotonic):
        self.reactor = reactor
        self.config = config
        self.clock = clock
        self.outstanding = 0  # forward() calls not finished yet
        self.down = {}        # (host, port) -> clock() of its next background probe

    def servers(self):
        return [parse_hostport(ns, 53) for ns in self.config.nameservers]

    def down_count(self) -> int:
        return sum(1 for server in self.servers() if server in self.down)

    def all_down(self) -> bool:
        """Every default server failed its last query: an answer would take rtimeouts."""
        servers = self.servers()
        return bool(servers) and all(server in self.down for server in servers)

    def forward(self, wire: bytes, tcp: bool, servers=None, rotate_key: int = 0):
        """Relay a query; fire with the reply's wire bytes carrying the original ID."""
        limit = self.config.max_concurrent
        if limit and self.outstanding >= limit:
            return defer.fail(Overloaded(f"{self.outstanding} upstream queries in flight"))
        self.outstanding += 1
        d = self._forward(wire, tcp, self.servers() if servers is None else servers,
                          rotate_key)
        return d.addBoth(self._finished)

    def _finished(self, result):
        self.outstanding -= 1
        return result

    @defer.inlineCallbacks
    def _forward(self, wire, tcp, servers, rotate_key):
        if not servers:
            raise ForwardError("no upstream name servers configured")
        original_id = struct.unpack("!H", wire[:2])[0]
        failures = []
        for host, port in self.order(servers, rotate_key, wire, tcp):
            try:
                reply = yield exchange(self.reactor, with_id(wire, random.getrandbits(16)),
                                       host, port, tcp, self.config.rtimeout)
            except Exception as exc:  # every failure just moves on to the next server
                failures.append(str(exc))
                self._failed((host, port), exc)
                continue
            self._answered((host, port))
            return with_id(reply, original_id)
        raise ForwardError("; ".join(failures))

    def order(self, servers, rotate_key, wire, tcp):
        """Servers in the order to try: rotated (``ns_rotate``), healthy ones first, those
        marked down last (still tried when nothing else answers). A down server whose
        probe is due gets this query in the background too."""
        start = rotate_key % len(servers) if self.config.ns_rotate else 0
        rotated = servers[start:] + servers[:start]
        healthy = [s for s in rotated if s not in self.down]
        if len(healthy) == len(rotated):
            return rotated
        now = self.clock()
        for server in rotated:
            if server in self.down and now >= self.down[server]:
                self._probe(server, wire, tcp, now)
        return healthy + [s for s in rotated if s in self.down]

    def _probe(self, server, wire, tcp, now):
        self.down[server] = now + HEALTH_PROBE_INTERVAL
        d = exchange(self.reactor, with_id(wire, random.getrandbits(16)), *server, tcp,
                     self.config.rtimeout)
        d.addCallbacks(lambda _: self._answered(server), lambda _: None)

    def _failed(self, server, exc):
        if server not in self.down:
            log.warning("upstream %s:%d failed (%s): tried last until it answers again",
                        server[0], server[1], exc)
        self.down[server] = self.clock() + HEALTH_PROBE_INTERVAL

    def _answered(self, server):
        if self.down.pop(server, None) is not None:
            log.info("upstream %s:%d answers again", *server)

    @defer.inlineCallbacks
    def lookup(self, name, rdtype):
        """Answer records for a name outside the domain (CNAME, SRV and MX targets)."""
        if self.config.no_rec:
            raise ForwardError("recursion disabled (-no-rec)")
        query = dns.message.make_query(name, rdtype)
        wire = yield self.forward(query.to_wire(), tcp=False, rotate_key=query.id)
        reply = dns.message.from_wire(wire)
        if reply.flags & dns.flags.TC:  # too big for UDP: the same query over TCP
            wire = yield self.forward(query.to_wire(), tcp=True, rotate_key=query.id)
            reply = dns.message.from_wire(wire)
        if reply.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            # NXDOMAIN is an answer (no records): SkyDNS then kept the bare CNAME.
            raise ForwardError(f"upstream answered {dns.rcode.to_text(reply.rcode())}")
        return [(rrset.name, rrset.rdtype, rrset.ttl, rdata)
                for rrset in reply.answer for rdata in rrset]
