"""Forwarded UDP queries relayed from socket to socket, the way the UDP reader answers.

The general forwarding path (``Resolver.forward`` and ``Forwarder``) is built of Deferreds:
a query outstanding upstream costs an ``inlineCallbacks`` generator, a chain of callbacks,
a waiter for coalescing and a ``callLater`` timer. That is right for what is rare (stub
zones, TCP, CNAME targets, serve-stale when every upstream is down, retries over TCP), but
a pod's external lookups are all forwarded, and a name nobody asked before cost about
100 us there, against about 8 us for a bare relay loop in Python on the same machine.

This relay does the common case directly: a plain UDP query (``wire.parse_query``) for a
name outside the domain that the response cache does not hold is sent, under a fresh
random ID, from one of a pool of connected UDP sockets to the first server in
``Forwarder.order`` (healthy ones first), and the reply, once it has that ID outstanding
on that socket, QR and the same question, is sent back with the client's ID and question,
RA set, and stored in the response cache. Identical queries in flight share one upstream
query. Sockets are read by the reactor as plain IReadDescriptors, like the UDP reader's.
Timeouts are one sweep every SWEEP seconds over the queries outstanding, not a timer each
(nor a queue of every query sent: that kept tens of thousands of answered queries alive for
``-rtimeout``, and the cyclic garbage collector walked them all); a query that timed out, or whose socket was
refused (ICMP), goes to the next server, and when none is left gets a stale answer from
the response cache (RFC 8767) or SERVFAIL. The server's health, the ``-max-concurrent``
count and the ordering are the Forwarder's, shared with the general path. A truncated
reply for a client that takes more than 512 bytes is handed to the general path's retry
over TCP.

The pool has the security properties of the Forwarder's (see ``forward``): POOL_SIZE
sockets per server on ports chosen by the OS, each replaced after SOCKET_QUERIES queries or
SOCKET_LIFETIME seconds, and a 16-bit random ID per query.
"""

from __future__ import annotations

import logging
import socket
import time

from twisted.internet.interfaces import IReadDescriptor
from zope.interface import implementer

from . import encoder
from .forward import POOL_SIZE, SOCKET_LIFETIME, SOCKET_QUERIES, ForwardError, random16
from .rcache import personalize, question_key

log = logging.getLogger("skydns.relay")

SWEEP = 0.05  # seconds between looks for queries that have waited -rtimeout
SERVFAIL = 2
TC = 0x02
WITH_RA = [bytes((flags | 0x80,)) for flags in range(256)]  # the second flags byte, RA set


class _Query:
    """One upstream query and the clients waiting for it."""

    __slots__ = ("key", "name", "wire", "qend", "limit", "servers", "tried", "sock", "qid",
                 "deadline", "done", "waiters", "question", "sent")

    def __init__(self, key, name, wire, qend, limit, servers):
        self.key = key            # rcache.cache_key: the question lower-cased after 10 bytes
        self.name = name
        self.wire = wire          # the first client's query (its ID is replaced upstream)
        self.qend = qend
        self.limit = limit        # the UDP size of these clients (same key: same size)
        self.servers = servers
        self.tried = 0
        self.sock = None
        self.qid = 0
        self.deadline = 0.0
        self.sent = 0.0           # when it went to the server it waits for
        self.done = False
        self.waiters = []         # (query bytes, address, started) of every client
        self.question = key[1][10:qend - 2]  # question_key(wire, qend), from the key


@implementer(IReadDescriptor)
class _RelaySocket:
    """A connected UDP socket to one server; ``ids`` maps the IDs outstanding on it."""

    def __init__(self, relay, server):
        self.relay = relay
        self.server = server
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.connect(server)
        self.ids = {}
        self.sent = 0
        self.born = time.monotonic()
        self.retired = False
        relay.reactor.addReader(self)

    def fileno(self):
        return self.sock.fileno()

    def logPrefix(self):
        return "skydns-relay"

    def connectionLost(self, reason):
        # With epoll an ICMP "port unreachable" arrives as an error event, on which the
        # reactor drops the descriptor without a read: the server refused.
        if self.sock.fileno() >= 0:
            self.relay.refused(self)

    def expired(self, now):
        return self.sent >= SOCKET_QUERIES or now - self.born >= SOCKET_LIFETIME

    def doRead(self):
        recv = self.sock.recv
        for _ in range(256):
            try:
                data = recv(65535)
            except BlockingIOError:
                return
            except ConnectionRefusedError:
                self.relay.refused(self)
                return
            except OSError:
                continue
            if len(data) >= 12 and data[2] & 0x80:
                self.relay.reply(self, data)

    def close(self):
        if self.sock.fileno() >= 0:
            self.relay.reactor.removeReader(self)
            self.sock.close()
        retiring = self.relay.retiring.get(self.server)
        if retiring:
            retiring.discard(self)


class UDPRelay:
    """Relays plain forwarded UDP queries; ``send(bytes, address)`` answers a client."""

    def __init__(self, reactor, resolver, forwarder, metrics, send):
        self.reactor = reactor
        self.resolver = resolver
        self.forwarder = forwarder
        self.metrics = metrics
        self.send = send
        self.querylog = None               # a QueryLog (skydns.querylog) with -log-queries
        self.pools = {}                    # server -> [_RelaySocket] taking new queries
        self.retiring = {}                 # server -> {_RelaySocket} retired, queries on them
        self.in_flight = {}                # cache key -> _Query, until answered or failed
        self._sweep_call = None

    # -- sending ---------------------------------------------------------------------------

    def relay(self, query, data: bytes, addr, limit: int, started: float, key) -> bool:
        """Take the query (True) or leave it to the general path (False); ``key`` is its
        response cache key (``rcache.cache_key``), which the caller looked up already."""
        forwarder = self.forwarder
        cap = forwarder.config.max_concurrent
        if forwarder.all_down() or (cap and forwarder.outstanding >= cap):
            return False  # stale answers at once, or SERVFAIL "overloaded": general path
        if key is None or key in self.resolver.in_flight:
            return False
        pending = self.in_flight.get(key)
        if pending is not None:
            pending.waiters.append((data, addr, started))
            self.resolver.events["coalesced"] += 1
            return True
        servers = forwarder.order(forwarder.servers(), data[0] << 8 | data[1], data, False)
        if not servers:
            return False
        pending = _Query(key, query.name, data, query.qend, limit, servers)
        pending.waiters.append((data, addr, started))
        self.in_flight[key] = pending
        forwarder.outstanding += 1
        if self.resolver.rcache.size:
            self.metrics.cache_misses["response"] += 1
        self._send(pending)
        return True

    def _send(self, pending):
        """To the next server not tried yet; when none is left, the query fails."""
        servers = pending.servers
        while pending.tried < len(servers):
            server = servers[pending.tried]
            pending.tried += 1
            now = time.monotonic()
            try:
                sock = self._socket(server, now)
            except OSError as exc:
                self.forwarder._failed(server, exc)
                continue
            ids = sock.ids
            for _ in range(64):
                qid = random16()
                if qid not in ids:
                    break
            else:
                continue
            try:
                sock.sock.send(qid.to_bytes(2, "big") + pending.wire[2:])
            except BlockingIOError:
                continue  # the socket's buffer is full: the next server
            except OSError as exc:
                self.forwarder._failed(server, exc)
                continue
            ids[qid] = pending
            sock.sent += 1
            self.forwarder.stats.sent(server)
            pending.sock, pending.qid, pending.sent = sock, qid, now
            pending.deadline = now + self.forwarder.config.rtimeout
            if self._sweep_call is None:
                self._sweep_call = self.reactor.callLater(SWEEP, self._sweep)
            return
        self._failed(pending, "no upstream answered")

    def _socket(self, server, now):
        pool = self.pools.get(server)
        if pool is None:
            pool = self.pools[server] = []
        # A retired socket stays open until its queries are done, and counts: at most
        # POOL_SIZE sockets are open per server, as in the Forwarder's pool.
        retiring = self.retiring.get(server)
        if len(pool) + (len(retiring) if retiring else 0) < POOL_SIZE:
            sock = _RelaySocket(self, server)
            pool.append(sock)
            return sock
        if not pool:  # every socket is retiring with queries on it: use one of them
            return next(iter(retiring))
        i = random16() % len(pool)
        sock = pool[i]
        if sock.expired(now):
            del pool[i]
            self._retire(sock)
            return self._socket(server, now)  # a new one if that made room, else another
        return sock

    def _retire(self, sock):
        """No new queries; closed once its outstanding ones are answered or timed out."""
        sock.retired = True
        if sock.ids:
            self.retiring.setdefault(sock.server, set()).add(sock)
        else:
            sock.close()

    # -- replies ---------------------------------------------------------------------------

    def reply(self, sock, data: bytes):
        qid = data[0] << 8 | data[1]
        pending = sock.ids.get(qid)
        if pending is None:
            return  # not outstanding here (late, or not ours): ignored
        if data[4:6] != b"\x00\x01" or question_key(data, pending.qend) != pending.question:
            return  # a reply to another question: the query waits on
        del sock.ids[qid]
        if sock.retired and not sock.ids:
            sock.close()
        self.forwarder.stats.answered(sock.server, data, time.monotonic() - pending.sent)
        self.forwarder._answered(sock.server)
        reply = data[:3] + WITH_RA[data[3]] + data[4:]  # relayed with RA set
        if reply[2] & TC and pending.limit > 512:
            self._finish(pending)
            d = self.resolver._over_tcp(pending.wire, reply, self.resolver.rcache,
                                        pending.key, pending.limit, None)
            d.addCallback(self._answer_all, pending)
            d.addErrback(lambda f: log.error("relay: TCP retry failed: %s",
                                             f.getErrorMessage()))
            return
        if reply[3] & 0x0F == SERVFAIL:
            stale = self.resolver._stale(self.resolver.rcache, pending.key, pending.wire)
            if stale is not None:
                self._finish(pending)
                self._answer_all(stale.wire, pending)
                return
        if len(reply) <= pending.limit:
            self.resolver.rcache.store(pending.key, reply, pending.limit, qend=pending.qend)
        self._finish(pending)
        self._answer_all(reply, pending)

    def _finish(self, pending):
        pending.done = True
        self.forwarder.outstanding -= 1
        if self.in_flight.get(pending.key) is pending:
            del self.in_flight[pending.key]

    def _answer_all(self, reply, pending):
        for data, addr, started in pending.waiters:
            out = personalize(reply, data, pending.qend)
            if len(out) > pending.limit:  # cut to header and question, TC set
                out = self._bare(data, pending.qend, (out[2] << 8 | out[3]) | 0x0200)
                self.metrics.error("truncated")
            self._deliver(out, addr, started, data)

    def _bare(self, data, qend, flags):
        """Header and question only (the query had EDNS when anything follows them)."""
        return encoder.header_only(data, qend, flags, self.forwarder.config.max_udp_size
                                   if len(data) > qend else None)

    def _deliver(self, out, addr, started, data):
        seconds = time.perf_counter() - started
        self.metrics.observe("recursive", seconds, out, data)
        try:
            self.send(out, addr)
        except OSError:
            pass  # the send buffer is full: UDP may drop, the client retries
        if self.querylog is not None:
            self.querylog.record(addr, "udp", data, out, seconds)

    # -- timeouts and failures -------------------------------------------------------------

    def _sweep(self):
        self._sweep_call = None
        now = time.monotonic()
        late = [pending for pending in self.in_flight.values() if pending.deadline <= now]
        for pending in late:
            if pending.done:
                continue  # failed meanwhile (a refusal moved it on and nothing was left)
            sock = pending.sock
            if sock.ids.get(pending.qid) is pending:
                del sock.ids[pending.qid]
                if sock.retired and not sock.ids:
                    sock.close()
            timeout = self.forwarder.config.rtimeout
            self.forwarder._failed(sock.server, ForwardError(
                f"{sock.server[0]}:{sock.server[1]} timed out after {timeout:g}s"))
            self._send(pending)
        if self.in_flight and self._sweep_call is None:
            self._sweep_call = self.reactor.callLater(SWEEP, self._sweep)

    def refused(self, sock):
        """ICMP port unreachable: every query outstanding on this socket moves on now."""
        pool = self.pools.get(sock.server, [])
        if sock in pool:
            pool.remove(sock)
        ids, sock.ids = sock.ids, {}
        sock.close()  # removing a reader the reactor already dropped is harmless
        self.forwarder._failed(sock.server, ForwardError(
            f"{sock.server[0]}:{sock.server[1]} refused"))
        for pending in ids.values():
            self._send(pending)  # with a new deadline

    def _failed(self, pending, reason):
        self._finish(pending)
        resolver = self.resolver
        stale = resolver._stale(resolver.rcache, pending.key, pending.wire)
        resolver.failure_log.warn("forwarding %s failed: %s%s", pending.name, reason,
                                  "; serving a stale answer" if stale else "")
        if stale is not None:
            self._answer_all(stale.wire, pending)
            return
        self.metrics.error("fail")
        for data, addr, started in pending.waiters:
            flags = 0x8000 | (data[2] << 8 & 0x0100) | 0x0080 | SERVFAIL
            self._deliver(self._bare(data, pending.qend, flags), addr, started, data)

    def stop(self):
        if self._sweep_call is not None and self._sweep_call.active():
            self._sweep_call.cancel()
        for sock in [s for pool in self.pools.values() for s in pool] + \
                [s for retiring in self.retiring.values() for s in retiring]:
            sock.close()
        self.pools.clear()
        self.retiring.clear()
