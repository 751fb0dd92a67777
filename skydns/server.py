"""DNS transports: the UDP hot path and TCP, both feeding the general path on a miss.

The UDP socket is registered with the reactor as a plain IReadDescriptor. On each readiness
event ``doRead`` drains up to ``BATCH`` datagrams; for each it does what the hot path must
and nothing else: one dict lookup of the query bytes, and a send of the prebuilt answer with
the client's ID and question spliced in. Everything else (parsing, forwarding, DNSSEC, EDNS
edge cases) goes to QueryHandler, whose answers are rendered, sent, and, when they can be
reused, stored in the wire cache for the next query.
"""

from __future__ import annotations

import logging
import socket
import time

import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype
from twisted.internet import defer, protocol
from twisted.python.failure import Failure
from twisted.internet.interfaces import IReadDescriptor
from twisted.protocols.basic import Int16StringReceiver
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer

from . import wire as wirefmt

log = logging.getLogger("skydns.server")

BATCH = 512
TCP_IDLE_TIMEOUT = 10


class QueryHandler:
    """Parses a query, asks the Resolver, renders the reply and feeds the wire cache."""

    def __init__(self, resolver, cache, metrics, config):
        self.resolver = resolver
        self.cache = cache
        self.metrics = metrics
        self.config = config

    def handle(self, data: bytes, tcp: bool):
        """Reply bytes, a Deferred firing with them (or None), or None to send nothing."""
        started = time.perf_counter()
        if len(data) < 12 or data[2] & 0x80:
            self.metrics.error("malformed")
            return None  # no header to answer, or not a query: never answer responses
        try:
            request = dns.message.from_wire(data)
        except Exception as exc:
            self.metrics.error("formerr")
            if self.config.verbose:
                log.info("malformed query: %s", exc)
            return wirefmt.formerr(data)
        try:
            d = self.resolver.resolve(request, data, tcp)
        except Exception:
            log.exception("failed to answer %s", request.question)
            self.metrics.error("internal")
            return self._servfail(request)
        if d.called:  # answered synchronously: no upstream involved
            result = []
            d.addBoth(result.append)
            return self._finish(result[0], request, data, tcp, started)
        return d.addBoth(self._finish, request, data, tcp, started)

    def _servfail(self, request):
        response = dns.message.make_response(request)
        response.set_rcode(dns.rcode.SERVFAIL)
        return wirefmt.to_wire(response)

    def _finish(self, reply, request, data, tcp, started):
        if reply is None:
            return None  # deliberately unanswered (a stub-forwarding loop)
        if isinstance(reply, Failure):
            log.error("failed to answer %s: %s", request.question, reply.getTraceback())
            self.metrics.error("internal")
            return self._servfail(request)
        if reply.wire is not None:
            out = reply.wire
        else:
            limit = 65535 if tcp else wirefmt.udp_limit(request)
            out = wirefmt.render(reply.message, limit, tcp)
            if out[2] & 0x02:
                self.metrics.error("truncated")
            if reply.cacheable and len(out) <= wirefmt.CACHEABLE_SIZE and not out[2] & 0x02:
                self._store(reply, data, out)
        self.metrics.observe(reply.system, time.perf_counter() - started, len(out))
        if self.config.verbose:
            q = request.question[0]
            log.info("%s %s %s -> %s %d bytes (%s)", "tcp" if tcp else "udp", q.name,
                     dns.rdatatype.to_text(q.rdtype), dns.rcode.to_text(out[3] & 0x0F),
                     len(out), reply.system)
        return out

    def _store(self, reply, data, out):
        message = reply.message
        count = wirefmt.variant_count(message, self.config.round_robin)
        responses = [out]  # rotation 0 is the answer just rendered
        if count > 1:
            original = message.answer
            for shift in range(1, count):
                message.answer = wirefmt.rotated(original, shift)
                responses.append(wirefmt.to_wire(message))
            message.answer = original
            if any(len(r) > wirefmt.CACHEABLE_SIZE for r in responses):
                return
        self.metrics.cache_misses["wire"] += 1
        slot = self.metrics.slot(reply.system, len(out))
        self.cache.insert(data, responses, reply.deps, slot)


@implementer(IReadDescriptor)
class UDPServer:
    """The UDP hot path, registered with ``reactor.addReader``."""

    def __init__(self, reactor, sock: socket.socket, handler: QueryHandler, cache, metrics):
        self.reactor = reactor
        self.sock = sock
        self.handler = handler
        self.cache = cache
        self.metrics = metrics

    def fileno(self):
        return self.sock.fileno()

    def logPrefix(self):
        return "skydns-udp"

    def connectionLost(self, reason):
        log.info("UDP listener closed: %s", reason.getErrorMessage())

    def start(self):
        self.reactor.addReader(self)

    def stop(self):
        self.reactor.removeReader(self)
        self.sock.close()

    def doRead(self):
        recvfrom = self.sock.recvfrom
        sendto = self.sock.sendto
        table = self.cache.table
        served = 0
        started = time.perf_counter()
        for _ in range(BATCH):
            try:
                data, addr = recvfrom(65535)
            except BlockingIOError:
                break
            except OSError:
                continue  # e.g. an ICMP error queued on the socket
            entry = table.get(data[2:].lower())
            if entry is None:
                self._slow(data, addr)
                continue
            n = entry[3]
            if n > 1:
                i = entry[4] = (entry[4] + 1) % n
                out = data[:2] + entry[0] + data[12:entry[1]] + entry[2][i]
            else:
                out = data[:2] + entry[0] + data[12:entry[1]] + entry[2][0]
            slot = entry[5]
            slot[0] += 1
            slot[1] += len(out)
            served += 1
            try:
                sendto(out, addr)
            except OSError:
                pass  # send buffer full: UDP may drop, the client retries
        if served:
            self.metrics.observe_fast_batch(served, time.perf_counter() - started)

    def _slow(self, data, addr):
        try:
            out = self.handler.handle(data, tcp=False)
        except Exception:
            log.exception("unexpected error handling a UDP query from %s", addr)
            return
        if isinstance(out, defer.Deferred):
            out.addCallback(self._send, addr)
            out.addErrback(lambda f: log.error("UDP reply to %s failed: %s", addr,
                                               f.getErrorMessage()))
        else:
            self._send(out, addr)

    def _send(self, out, addr):
        if out:
            try:
                self.sock.sendto(out, addr)
            except OSError as exc:
                log.debug("could not send to %s: %s", addr, exc)


class DNSTCPProtocol(Int16StringReceiver, TimeoutMixin):
    """DNS over TCP: length-prefixed messages, several per connection, idle timeout."""

    def connectionMade(self):
        self.setTimeout(TCP_IDLE_TIMEOUT)

    def stringReceived(self, data):
        self.resetTimeout()
        cached = self.factory.cache.answer(data)
        if cached is not None:
            self.sendString(cached)
            return
        try:
            out = self.factory.handler.handle(data, tcp=True)
        except Exception:
            log.exception("unexpected error handling a TCP query")
            self.transport.loseConnection()
            return
        if isinstance(out, defer.Deferred):
            out.addCallback(self._send)
        else:
            self._send(out)

    def _send(self, out):
        if out and self.transport.connected:
            self.sendString(out)

    def timeoutConnection(self):
        self.transport.loseConnection()


class DNSTCPFactory(protocol.ServerFactory):
    protocol = DNSTCPProtocol

    def __init__(self, handler, cache):
        self.handler = handler
        self.cache = cache


def bind_udp(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock
