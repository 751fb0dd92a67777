"""Forwarding to upstream name servers over the client's transport (UDP or TCP).

A forwarded query gets a fresh random ID and, for UDP, a fresh socket with an OS-chosen
source port, so upstream replies cannot be confused or easily spoofed. Servers are tried one
after another (starting at a rotating index with ``ns_rotate``), each for ``rtimeout``
seconds; the first reply wins. All of it is Twisted: Deferreds, callLater timeouts, the
reactor's own UDP ports and TCP connections.
"""

from __future__ import annotations

import logging
import random
import struct

import dns.exception
import dns.flags
import dns.message
import dns.rcode
from twisted.internet import defer, error, protocol
from twisted.protocols.basic import Int16StringReceiver

from .config import parse_hostport

log = logging.getLogger("skydns.forward")


class ForwardError(Exception):
    """No upstream server gave a usable reply."""


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
        if not self.factory.deferred.called:
            self.factory.deferred.callback(data)
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

    def __init__(self, reactor, config):
        self.reactor = reactor
        self.config = config

    def servers(self):
        return [parse_hostport(ns, 53) for ns in self.config.nameservers]

    @defer.inlineCallbacks
    def forward(self, wire: bytes, tcp: bool, servers=None, rotate_key: int = 0):
        """Relay a query; fire with the reply's wire bytes carrying the original ID."""
        servers = self.servers() if servers is None else servers
        if not servers:
            raise ForwardError("no upstream name servers configured")
        start = rotate_key % len(servers) if self.config.ns_rotate else 0
        original_id = struct.unpack("!H", wire[:2])[0]
        failures = []
        for i in range(len(servers)):
            host, port = servers[(start + i) % len(servers)]
            try:
                reply = yield exchange(self.reactor, with_id(wire, random.getrandbits(16)),
                                       host, port, tcp, self.config.rtimeout)
            except Exception as exc:  # every failure just moves on to the next server
                failures.append(str(exc))
                continue
            return with_id(reply, original_id)
        raise ForwardError("; ".join(failures))

    @defer.inlineCallbacks
    def lookup(self, name, rdtype):
        """Answer records for a name outside the domain (CNAME, SRV and MX targets)."""
        if self.config.no_rec:
            raise ForwardError("recursion disabled (-no-rec)")
        query = dns.message.make_query(name, rdtype)
        wire = yield self.forward(query.to_wire(), tcp=False, rotate_key=query.id)
        reply = dns.message.from_wire(wire)
        if reply.flags & dns.flags.TC:
            wire = yield self.forward(query.to_wire(), tcp=True, rotate_key=query.id)
            reply = dns.message.from_wire(wire)
        if reply.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            # NXDOMAIN is an answer (no records): SkyDNS then kept the bare CNAME.
            raise ForwardError(f"upstream answered {dns.rcode.to_text(reply.rcode())}")
        return [(rrset.name, rrset.rdtype, rrset.ttl, rdata)
                for rrset in reply.answer for rdata in rrset]
