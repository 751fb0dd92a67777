"""Forwarding to upstream name servers over the client's transport (UDP or TCP).

Servers are tried one after another (starting at a rotating index with ``ns_rotate``), each
for ``rtimeout`` seconds; the first reply wins. A server that failed (timeout, refusal) is
tried only after the healthy ones until it answers again: every HEALTH_PROBE_INTERVAL seconds
one query it would have had is also sent to it in the background, and its reply marks it
healthy. At most ``max_concurrent`` queries are upstream at once; over that, ``Overloaded`` at
once. All of it is Twisted: Deferreds, callLater timeouts, the reactor's own UDP ports and TCP
connections.

UDP goes through a pool of long-lived sockets per upstream server (as CoreDNS's forward
plugin and dnsmasq do), not a fresh socket per query: a socket, a bind, an epoll
registration and their teardown per query capped forwarding at a few thousand queries a
second. Each pooled socket is bound to a port the OS picks at random and connected to its
server (so the kernel drops datagrams from any other address); its queries are multiplexed
by ID. What keeps a reply from being spoofed:

* every query gets a fresh random 16-bit ID, one not outstanding on its socket;
* every query goes out from a socket picked at random from the server's pool of up to
  POOL_SIZE sockets, each replaced after SOCKET_QUERIES queries or SOCKET_LIFETIME seconds,
  so the source ports keep changing;
* a reply is only taken when it comes to the socket its query went out from, from the
  server it was sent to, with QR set, an ID outstanding there and the query's question
  (the name compared case-insensitively; an error reply without a question, as some servers
  send for FORMERR, SERVFAIL, NOTIMP or REFUSED, is taken as dnspython does).

The trade against a socket per query: a per-query port is one of ~28,000 ephemeral ports,
unknown to anyone but the kernel; a pooled port is one of at most POOL_SIZE that live for at
most SOCKET_LIFETIME seconds. An off-path attacker who does not know the pool's ports still
has to guess port and ID (about 31 bits); one who has learnt them (a side channel, a
compromised client on the host) has 4 bits of port and 16 of ID left for that socket's
lifetime, against 31 with per-query sockets. That is the choice CoreDNS and dnsmasq make
for an order of magnitude more throughput; identical queries in flight are coalesced
upstream of this (one query per question at a time), so a flood of one name does not give
an attacker more IDs to hit.

An ICMP "port unreachable" on a pooled socket (``connectionRefused``, or with epoll the port
closed under it, see ``_PooledSocket.stopProtocol``) fails every query outstanding on it
at once with "refused", and the socket is replaced, so failover to the next server stays
immediate. TCP is still one connection per query.
"""

from __future__ import annotations

import array
import logging
import os
import random
import struct
import time

import dns.rcode
from twisted.internet import defer, error, protocol
from twisted.protocols.basic import Int16StringReceiver

from .config import parse_hostport
from .metrics import UpstreamMetrics
from .rcache import question_key
from .wire import question_end

log = logging.getLogger("skydns.forward")

HEALTH_PROBE_INTERVAL = 2.0  # seconds between background probes of a server marked down
POOL_SIZE = 16           # UDP sockets open at once per upstream server, at most
SOCKET_QUERIES = 1000    # queries sent from a pooled socket before it is replaced
SOCKET_LIFETIME = 10.0   # seconds a pooled socket takes new queries before it is replaced

_random16 = array.array("H")


def random16() -> int:
    """A 16-bit number from the OS's CSPRNG, for query IDs and the pick of a pooled socket
    (the port): ``random``'s Mersenne Twister can be predicted from its outputs (624 words
    give away its state), and predictable IDs and ports are what a cache-poisoning attacker
    needs. Read 8 KB at a time, so a number costs no system call."""
    if not _random16:
        _random16.frombytes(os.urandom(8192))
    return _random16.pop()

# Error replies a server may send without the question (dnspython accepts them too).
_QUESTIONLESS_RCODES = frozenset((dns.rcode.FORMERR, dns.rcode.SERVFAIL, dns.rcode.NOTIMP,
                                  dns.rcode.REFUSED))


class ForwardError(Exception):
    """No upstream server gave a usable reply."""


class Overloaded(ForwardError):
    """``max_concurrent`` queries are upstream already: fail now rather than queue."""


# -- UDP: a pool of connected sockets per server, queries multiplexed by ID ---------------

def _question_of(wire: bytes):
    """(question end offset, case-folded question) of a one-question query, else None."""
    if wire[4:6] != b"\x00\x01":
        return None
    qend = question_end(wire)
    if qend < 0:
        return None
    return qend, question_key(wire, qend)


def _answers(reply: bytes, question) -> bool:
    """The reply (QR set, ID already matched) is to a query with ``question``."""
    if question is None:  # a query we could not parse the question of: as before, ID only
        return True
    qend, key = question
    if reply[4:6] == b"\x00\x01":
        return question_key(reply, qend) == key
    return reply[4:6] == b"\x00\x00" and reply[3] & 0x0F in _QUESTIONLESS_RCODES


class _PooledSocket(protocol.DatagramProtocol):
    """One long-lived UDP socket of a pool, connected to the pool's server. ``pending``
    maps the 16-bit ID of each query outstanding on it to (Deferred, question, timer)."""

    def __init__(self, pool, born: float):
        self.pool = pool
        self.pending = {}
        self.sent = 0
        self.born = born
        self.port = None       # the reactor's listening port, once open
        self.retired = False   # takes no new queries; closes once nothing is pending
        self.closed = False

    def startProtocol(self):
        self.transport.connect(self.pool.host, self.pool.port)

    def expired(self, now: float) -> bool:
        return self.sent >= SOCKET_QUERIES or now - self.born >= SOCKET_LIFETIME

    def query(self, wire: bytes, timeout: float):
        """Send ``wire`` under an ID not outstanding here; a Deferred firing with the raw
        reply, or failing with ForwardError on timeout or refusal."""
        pending = self.pending
        for _ in range(64):  # at most SOCKET_QUERIES of the 65,536 IDs are ever in use
            qid = random16()
            if qid not in pending:
                break
        else:
            return defer.fail(ForwardError(f"{self.pool.name}: no free query ID"))
        wire = struct.pack("!H", qid) + wire[2:]
        d = defer.Deferred(lambda d: self._drop(qid, d))
        timer = self.pool.reactor.callLater(timeout, self._timed_out, qid, d, timeout)
        pending[qid] = (d, _question_of(wire), timer)
        self.sent += 1
        try:
            self.transport.write(wire)  # a refusal seen here fails this query too
        except Exception as exc:  # e.g. ENOBUFS, EMSGSIZE: this query only
            if self._drop(qid, d):
                d.errback(ForwardError(f"{self.pool.name}: {exc}"))
        return d

    def datagramReceived(self, data, addr):
        if len(data) < 12 or not data[2] & 0x80:
            return
        entry = self.pending.get((data[0] << 8) | data[1])
        if entry is None or not _answers(data, entry[1]):
            return  # not a reply to a query outstanding here: ignored, the query waits on
        del self.pending[(data[0] << 8) | data[1]]
        if entry[2].active():
            entry[2].cancel()
        entry[0].callback(data)
        if self.retired and not self.pending:
            self.close()

    def _drop(self, qid, d) -> bool:
        """Forget the query ``qid`` if it is still ``d``'s; True when it was."""
        entry = self.pending.get(qid)
        if entry is None or entry[0] is not d:
            return False
        del self.pending[qid]
        if entry[2].active():
            entry[2].cancel()
        if self.retired and not self.pending:
            self.close()
        return True

    def _timed_out(self, qid, d, timeout):
        if self._drop(qid, d):
            d.errback(ForwardError(f"{self.pool.name} timed out after {timeout:g}s"))

    def connectionRefused(self):
        self._refused()

    def stopProtocol(self):
        # With epoll an ICMP "port unreachable" arrives as an error event that closes the
        # port instead of calling connectionRefused: fail over now, not after rtimeout.
        self.closed = True
        self._refused()

    def _refused(self):
        """The server refused (ICMP): every query outstanding here fails now, and the
        socket is replaced."""
        self.pool.discard(self)
        self.retired = True
        pending, self.pending = self.pending, {}
        for d, _, timer in pending.values():
            if timer.active():
                timer.cancel()
        for d, _, _ in pending.values():
            d.errback(ForwardError(f"{self.pool.name} refused"))
        self.close()

    def close(self):
        self.retired = True
        self.pool.discard(self)
        if self.port is not None and not self.closed:
            self.closed = True
            self.port.stopListening()


class _UDPPool:
    """Up to POOL_SIZE connected UDP sockets (retiring ones included) for one server,
    opened as queries need them; each query goes out from one picked at random."""

    def __init__(self, reactor, host: str, port: int, clock, size: int = POOL_SIZE):
        self.reactor = reactor
        self.host = host
        self.port = port
        self.name = f"{host}:{port}"
        self.clock = clock
        self.size = size
        self.active = []       # sockets taking new queries
        self.retiring = set()  # sockets closing as soon as their last query is done
        self.opened = 0        # sockets opened so far (for tests and curiosity)

    def open_count(self) -> int:
        return len(self.active) + len(self.retiring)

    def query(self, wire: bytes, timeout: float):
        try:
            sock = self._pick()
        except error.CannotListenError as exc:
            return defer.fail(ForwardError(str(exc)))
        return sock.query(wire, timeout)

    def _pick(self):
        active = self.active
        if len(active) + len(self.retiring) < self.size:
            return self._open()
        if not active:  # every socket is retiring with queries on it: use one of them
            return random.choice(tuple(self.retiring))
        sock = active[random16() % len(active)] if len(active) > 1 else active[0]
        if sock.expired(self.clock()):
            self._retire(sock)
            if len(active) + len(self.retiring) < self.size:
                return self._open()
            if active:  # the pool is full: a socket that is not due for replacement
                now = self.clock()
                fresh = [s for s in active if not s.expired(now)]
                return random.choice(fresh or active)
        return sock

    def _open(self):
        sock = _PooledSocket(self, self.clock())
        try:
            sock.port = self.reactor.listenUDP(0, sock,
                                               interface="::" if ":" in self.host else "",
                                               maxPacketSize=65535)
        except error.CannotListenError:
            if self.active:  # out of descriptors, say: share an open one
                return random.choice(self.active)
            raise
        self.opened += 1
        self.active.append(sock)
        return sock

    def _retire(self, sock):
        self.discard(sock)
        if sock.pending:
            sock.retired = True
            self.retiring.add(sock)
        else:
            sock.close()

    def discard(self, sock):
        """Take a socket out of the pool (it is closing)."""
        try:
            self.active.remove(sock)
        except ValueError:
            pass
        self.retiring.discard(sock)

    def close(self):
        """Close every socket once its outstanding queries are done."""
        for sock in list(self.active):
            self._retire(sock)


class _UDPExchange(protocol.DatagramProtocol):
    """One query, one reply, over a connected UDP socket of its own (``exchange``)."""

    def __init__(self, wire: bytes, host: str, port: int):
        self.wire = wire
        self.host = host
        self.port = port
        self.deferred = defer.Deferred()
        self.query_id = wire[:2]
        self.question = _question_of(wire)

    def startProtocol(self):
        self.transport.connect(self.host, self.port)
        self.transport.write(self.wire)

    def datagramReceived(self, data, addr):
        # Only a reply to our query (same ID, QR set, same question) ends the exchange.
        if len(data) >= 12 and data[:2] == self.query_id and data[2] & 0x80 \
                and _answers(data, self.question):
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


# -- TCP: a connection per query ---------------------------------------------------------

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
    """Send one DNS message to host:port and fire with the raw reply (or fail): over TCP,
    or over UDP from a socket of its own (for one-off queries such as the health check's;
    the Forwarder's UDP queries go through its pools)."""
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
        self.stats = UpstreamMetrics()  # per upstream, in CoreDNS's terms (coremetrics)
        self.down = {}        # (host, port) -> clock() of its next background probe
        self.pools = {}       # (host, port) -> _UDPPool, made on first use
        self._servers = self._parse_servers(config)

    def reconfigure(self, config):
        """New default upstreams: the pools of those that are gone are closed."""
        self.config = config
        servers = self._parse_servers(config)
        for server in set(self._servers) - set(servers):
            pool = self.pools.pop(server, None)
            if pool is not None:
                pool.close()
        self._servers = servers

    @staticmethod
    def _parse_servers(config):
        return [parse_hostport(ns, 53) for ns in config.nameservers]

    def servers(self):
        """The default upstreams, (host, port) in -nameservers order."""
        return self._servers

    def down_count(self) -> int:
        return sum(1 for server in self.servers() if server in self.down)

    def all_down(self) -> bool:
        """Every default server failed its last query: an answer would take rtimeouts."""
        if not self.down:
            return False
        servers = self.servers()
        return bool(servers) and all(server in self.down for server in servers)

    def forward(self, wire: bytes, tcp: bool, servers=None, rotate_key: int = 0):
        """Relay a query; fire with the reply's wire bytes carrying the original ID."""
        limit = self.config.max_concurrent
        if limit and self.outstanding >= limit:
            self.stats.rejects += 1
            return defer.fail(Overloaded(f"{self.outstanding} upstream queries in flight"))
        self.outstanding += 1
        d = self._forward(wire, tcp, self.servers() if servers is None else servers,
                          rotate_key)
        return d.addBoth(self._finished)

    def _finished(self, result):
        self.outstanding -= 1
        return result

    def _exchange(self, wire, server, tcp):
        """One query to one server under a fresh random ID: a Deferred raw reply."""
        if tcp:
            return exchange(self.reactor, with_id(wire, random16()), *server,
                            True, self.config.rtimeout)
        pool = self.pools.get(server)
        if pool is None:
            pool = self.pools[server] = _UDPPool(self.reactor, *server, self.clock)
        return pool.query(wire, self.config.rtimeout)  # the socket picks the ID

    def _forward(self, wire, tcp, servers, rotate_key):
        if not servers:
            return defer.fail(ForwardError("no upstream name servers configured"))
        original_id = wire[:2]
        order = iter(self.order(servers, rotate_key, wire, tcp))
        failures = []

        def attempt():
            server = next(order, None)
            if server is None:
                raise ForwardError("; ".join(failures))
            self.stats.sent(server)
            return self._exchange(wire, server, tcp).addCallbacks(
                answered, failed, callbackArgs=(server, self.clock()),
                errbackArgs=(server,))

        def answered(reply, server, sent):
            self.stats.answered(server, reply, self.clock() - sent)
            self._answered(server)
            return original_id + reply[2:]

        def failed(failure, server):  # every failure just moves on to the next server
            failures.append(failure.getErrorMessage())
            self._failed(server, failure.value)
            return attempt()  # a Deferred: the chain waits for the next server

        return attempt()

    def order(self, servers, rotate_key, wire, tcp):
        """Servers in the order to try: rotated (``ns_rotate``), healthy ones first, those
        marked down last (still tried when nothing else answers). A down server whose
        probe is due gets this query in the background too."""
        if len(servers) > 1 and self.config.ns_rotate:
            start = rotate_key % len(servers)
            rotated = servers[start:] + servers[:start]
        else:
            rotated = servers
        if not self.down:
            return rotated
        healthy = [s for s in rotated if s not in self.down]
        if not healthy or len(healthy) == len(rotated):
            return rotated  # with none healthy, this query tries each: no probe beside it
        now = self.clock()
        for server in rotated:
            if server in self.down and now >= self.down[server]:
                self._probe(server, wire, tcp, now)
        return healthy + [s for s in rotated if s in self.down]

    def _probe(self, server, wire, tcp, now):
        self.down[server] = now + HEALTH_PROBE_INTERVAL
        d = self._exchange(wire, server, tcp)
        d.addCallbacks(lambda _: self._answered(server), lambda _: None)

    def _failed(self, server, exc):
        self.stats.failed(server)
        if server not in self.down:
            log.warning("upstream %s:%d failed (%s): tried last until it answers again",
                        server[0], server[1], exc)
        self.down[server] = self.clock() + HEALTH_PROBE_INTERVAL

    def _answered(self, server):
        if self.down and self.down.pop(server, None) is not None:
            log.info("upstream %s:%d answers again", *server)
