"""DNS transports: the UDP hot path and TCP, both feeding the general path on a miss.

The UDP socket is registered with the reactor as a plain IReadDescriptor. On each readiness
event ``doRead`` drains up to ``BATCH`` datagrams; for each it does what the hot path must
and nothing else: one dict lookup of the query bytes, and a send of the prebuilt answer with
the client's ID and question spliced in. Everything else (parsing, forwarding, DNSSEC, EDNS
edge cases) goes to QueryHandler, whose answers are rendered, sent, and, when they can be
reused, stored in the wire cache for the next query.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import socket
import struct
import time

import dns.edns
import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype
from twisted.internet import defer, protocol
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.internet.interfaces import IHalfCloseableProtocol, IReadDescriptor
from twisted.protocols.basic import Int16StringReceiver
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer

from . import encoder, transfer
from . import wire as wirefmt
from .config import in_networks
from .rcache import cache_key
from .retry import RateLimitedLog

log = logging.getLogger("skydns.server")

BATCH = 512
# Queries the wire cache cannot answer wait in a queue of at most this many (the oldest is
# dropped beyond it: its client has retried by then), and are worked on for at most
# MISS_BUDGET seconds before the socket is read again, so that queries for names that exist
# are answered at once even while a flood of misses is being worked through.
MAX_PENDING = 4096
MISS_BUDGET = 0.002
TCP_IDLE_TIMEOUT = 10
# Per TCP connection: stop reading queries while more than this many bytes of replies are
# waiting to be sent (the transport's bufferSize; it pauses us, as a streaming producer),
TCP_WRITE_BUFFER = 64 * 1024
# and while this many queries wait for an answer that is not ready yet (forwarded upstream).
TCP_MAX_IN_FLIGHT = 32


MAX_TEMPLATES = 1024
# Response header after the ID for the NXDOMAIN template, by (RD, EDNS): QR, RD copied, AA,
# RA, NXDOMAIN; one question, one authority record (the SOA), the OPT when asked with EDNS.
_NX_HEADERS = {(rd, edns): struct.pack("!HHHHH", 0x8000 | rd << 8 | 0x0400 | 0x0080 | 3, 1,
                                       0, 1, 1 if edns else 0)
               for rd in (0, 1) for edns in (False, True)}


class QueryHandler:
    """Parses a query, asks the Resolver, renders the reply and feeds the wire cache."""

    def __init__(self, resolver, cache, metrics, config):
        self.resolver = resolver
        self.cache = cache
        self.metrics = metrics
        self.config = config
        self.failure_log = RateLimitedLog(log, interval=60.0)
        self.transfers = {"sent": 0, "refused": 0}  # AXFR requests by what they got
        self.refusal_log = RateLimitedLog(log, interval=10.0)

    relay = None  # a UDPRelay, set by the UDP reader's owner (see skydns.relay)
    loop = None   # a LoopProbe (skydns.loop), when -loop-probe is on
    autopath = None  # an Autopath (skydns.autopath), when -autopath is on

    def handle(self, data: bytes, tcp: bool, addr=None, client=None):
        """Reply bytes, a Deferred firing with them (or None), or None to send nothing
        (also when the relay took a UDP query from ``addr``: it answers it itself).
        ``client``: the querier's IP (for autopath), ``addr``'s by default."""
        started = time.perf_counter()
        if len(data) < 12 or data[2] & 0x80:
            self.metrics.error("malformed")
            return None  # no header to answer, or not a query: never answer responses
        query = wirefmt.parse_query(data)
        if query is not None:
            if self.loop is not None and self.loop.came_back(query.name):
                self.metrics.error("loop")  # our own probe: never forwarded again
                flags = 0x8000 | (data[2] << 8 & 0x0100) | 0x0080 | dns.rcode.SERVFAIL
                return encoder.header_only(data, query.qend, flags, None)
            if self.resolver.authority.in_domain(query.name):
                encloser = self.resolver.missing_name(query)
                if encloser is not None:
                    if self.autopath is None or not self.autopath.may_walk(query.labels):
                        return self._nxdomain(query, data, encloser, started, tcp)
                    return self._autopath(query, data, encloser, started, tcp,
                                          client or (addr[0] if addr else None))
                d = self.resolver.fast_query(query)
            else:
                d = None  # forwarded, or a reverse name: the fast path has nothing for it
            finish = self._finish_fast
            if d is None:  # not answered from the store: forwarded, or the general path
                key = cache_key(data, tcp, query.qend)
                cached = self.resolver.cached_forward(data, tcp, key)
                if cached is not None:
                    return self._from_rcache(cached, started, data, tcp)
                if addr is not None and self.relay is not None \
                        and self.resolver.forwardable(query):
                    limit = wirefmt.fast_udp_limit(query, self.config.max_udp_size)
                    if self.relay.relay(query, data, addr, limit, started, key):
                        return None
                d = self.resolver.forward_fast(query, data, tcp)
                finish = self._finish_forward
            if d is not None:
                if d.called:  # no upstream involved: answer now
                    result = []
                    d.addBoth(result.append)
                    return finish(result[0], query, data, tcp, started)
                return d.addBoth(finish, query, data, tcp, started)
        else:
            cached = self.resolver.cached_forward(data, tcp)
            if cached is not None:  # a forwarded answer, found on the raw bytes
                return self._from_rcache(cached, started, data, tcp)
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
            return self._internal_error(request)
        if d.called:  # answered synchronously: no upstream involved
            result = []
            d.addBoth(result.append)
            return self._finish(result[0], request, data, tcp, started)
        return d.addBoth(self._finish, request, data, tcp, started)

    # -- zone transfer (skydns.transfer) -------------------------------------------------

    def transfer(self, data: bytes, client, send, wait_writable=None):
        """An AXFR query over TCP from ``client``: the zone in messages given to ``send``
        (a Deferred firing with None when all are sent), or a refusal's bytes.
        ``wait_writable()``: None, or a Deferred that fires once the connection takes
        more (the transfer waits for it, so a client that reads slowly is not buffered
        for)."""
        try:
            request = dns.message.from_wire(data)
        except Exception:
            self.metrics.error("formerr")
            return wirefmt.formerr(data)
        question = request.question[0] if len(request.question) == 1 else None
        config = self.config
        if question is None or question.name != config.domain_name:
            reason = "not this server's zone"
        elif not in_networks(config.transfer_networks, client):
            reason = f"{client} is not in -transfer-to"
        else:
            self.transfers["sent"] += 1
            started = time.monotonic()
            log.info("zone transfer of %s to %s", config.domain, client)
            d = transfer.Transfer(self.resolver.authority, data, wirefmt.question_end(data),
                                  send, wait_writable).start()

            def done(records):
                log.info("zone transfer of %s to %s: %d records in %.2f s", config.domain,
                         client, records, time.monotonic() - started)
            d.addCallback(done)
            d.addErrback(lambda f: log.error("zone transfer to %s failed: %s", client,
                                             f.getErrorMessage()))
            return d
        self.transfers["refused"] += 1
        self.refusal_log.warn("zone transfer of %s refused to %s: %s",
                              question.name if question else "?", client, reason)
        response = dns.message.make_response(request)
        response.set_rcode(dns.rcode.REFUSED)
        return wirefmt.to_wire(response)

    def _internal_error(self, request, failure=None):
        """SERVFAIL for a query we failed to answer; the traceback is logged at most once
        per interval, so a record that trips a bug cannot flood the log query by query."""
        self.metrics.error("internal")
        if failure is None:
            failure = Failure()
        self.failure_log.warn("failed to answer %s: %s", request.question,
                              failure.getTraceback())
        return self._servfail(request)

    def _servfail(self, request):
        response = dns.message.make_response(request, recursion_available=True)
        response.set_rcode(dns.rcode.SERVFAIL)
        return wirefmt.to_wire(response)

    def _from_rcache(self, cached, started, data, tcp):
        self.metrics.observe("cache", time.perf_counter() - started, cached, data, tcp)
        return cached

    # -- the fast path: a Result encoded straight to bytes --------------------------------

    def _finish_fast(self, result, query, data, tcp, started):
        if isinstance(result, Failure):
            return self._fast_error(query, data, result)
        try:
            out = self._encode(result, query, data, tcp)
        except Exception:
            return self._fast_error(query, data)
        self.metrics.observe(result.system, time.perf_counter() - started, out, data, tcp,
                             query.qtype)
        if self.config.verbose:
            log.info("%s %s %s -> %s %d bytes (%s, fast path)", "tcp" if tcp else "udp",
                     query.name, dns.rdatatype.to_text(query.qtype),
                     dns.rcode.to_text(out[3] & 0x0F), len(out), result.system)
        return out

    def _finish_forward(self, reply, query, data, tcp, started):
        """A forwarded (or stale) reply for a query read by ``parse_query``: relayed as it
        came, or cut to header and question with TC when it is over this client's UDP
        limit (what ``wire.truncated`` does for the general path)."""
        if reply is None:
            return None
        if isinstance(reply, Failure):
            return self._fast_error(query, data, reply)
        try:
            if reply.wire is None:  # an error answer, built with dnspython
                out = wirefmt.render(reply.message, 65535, tcp)
            else:
                out = reply.wire
                cap = self.config.max_udp_size
                if not tcp and len(out) > wirefmt.fast_udp_limit(query, cap):
                    flags = (out[2] << 8 | out[3]) | 0x0200
                    out = encoder.header_only(data, query.qend, flags,
                                              cap if query.edns else None)
                    self.metrics.error("truncated")
        except Exception:
            return self._fast_error(query, data)
        self.metrics.observe(reply.system, time.perf_counter() - started, out, data, tcp,
                             query.qtype)
        if self.config.verbose:
            log.info("%s %s %s -> %s %d bytes (%s)", "tcp" if tcp else "udp", query.name,
                     dns.rdatatype.to_text(query.qtype), dns.rcode.to_text(out[3] & 0x0F),
                     len(out), reply.system)
        return out

    def _nxdomain(self, query, data, encloser, started, tcp, keep=True):
        """NXDOMAIN for a name that does not exist, from a template: the SOA record after
        the question is the same bytes for every name of the same length and last labels
        (its names compress against the question), so it is rendered once per shape and
        hour. Stored in the wire cache only when the same query comes a second time: a
        flood of unique names never enters it; and never when autopath may answer the
        name otherwise for another client (``keep``): the UDP reader does not ask who
        asks. Only this NXDOMAIN needs that care: a name autopath may walk is answered
        NXDOMAIN here and nowhere else."""
        cache = self.cache
        qend = query.qend
        shape = (qend, query.name[-self.resolver.soa_suffix_length() - 1:],
                 self.resolver.authority.negative_ttl(query.name))
        tail = cache.templates.get(shape)
        if tail is None:
            tail = self._nxdomain_tail(query, data)
            if len(cache.templates) >= MAX_TEMPLATES:
                cache.templates.clear()
            cache.templates[shape] = tail
        rd = data[2] & 0x01
        head = _NX_HEADERS[rd, query.edns]
        if query.edns:
            out = b"".join((data[:2], head, data[12:qend], tail,
                            encoder.opt_record(self.config.max_udp_size)))
        else:
            out = b"".join((data[:2], head, data[12:qend], tail))
        self.metrics.error("nxdomain")
        self.metrics.observe("auth", time.perf_counter() - started, out, data, tcp,
                             query.qtype)
        if self.config.verbose:
            log.info("%s %s -> NXDOMAIN %d bytes (auth, template)", query.name,
                     dns.rdatatype.to_text(query.qtype), len(out))
        if keep and cache.seen_before(data):
            self.metrics.cache_misses["wire"] += 1
            cache.insert(data, [out], (encloser,), self.metrics.slot("auth", out, data),
                         negative=True)
        return out

    # -- autopath (skydns.autopath) -------------------------------------------------------

    def _autopath(self, query, data, encloser, started, tcp, client):
        """A missing name: the first answer of the pod's search path when ``client`` is a
        pod of the name's namespace, else (or when there is none) NXDOMAIN."""
        autopath = self.autopath
        namespace = autopath.namespace(client, query.labels) if client else None
        if namespace is None:
            return self._nxdomain(query, data, encloser, started, tcp, keep=False)
        out = autopath.kept(namespace, data, tcp)
        if out is not None:
            return self._walked(out, query, data, encloser, started, tcp)
        limit = 65535 if tcp else wirefmt.fast_udp_limit(query, self.config.max_udp_size)
        kept_as = (namespace, autopath.generation)
        try:
            out = autopath.walk(data, query.qend, autopath.queries(query.labels, data,
                                                                   query.qend),
                                self._inner_lookup(tcp), limit, tcp)
        except Exception:
            out = Failure()
        if out is None or out.__class__ is bytes or isinstance(out, Failure):
            return self._walked(out, query, data, encloser, started, tcp, kept_as)
        return out.addBoth(self._walked, query, data, encloser, started, tcp, kept_as)

    def _walked(self, out, query, data, encloser, started, tcp, kept_as=None):
        """Send what a walk found (kept as (namespace, generation) when given), or
        NXDOMAIN."""
        if isinstance(out, Failure):
            self.failure_log.warn("autopath for %s failed: %s", query.name,
                                  out.getTraceback())
            out = None
        if out is None:
            return self._nxdomain(query, data, encloser, started, tcp, keep=False)
        if kept_as is not None:
            self.autopath.keep(kept_as[0], data, tcp, out, kept_as[1])
        system = "auth" if out[2] & 0x04 else "recursive"
        self.metrics.observe(system, time.perf_counter() - started, out, data, tcp,
                             query.qtype)
        if self.config.verbose:
            log.info("%s %s -> %s %d bytes (autopath)", query.name,
                     dns.rdatatype.to_text(query.qtype), dns.rcode.to_text(out[3] & 0x0F),
                     len(out))
        return out

    def _inner_lookup(self, tcp):
        """How a walk asks one name: as a client's query would be answered (the wire
        cache first, as the transports do), without counting it as a request."""
        inner = self._inner
        if inner is None:
            inner = self._inner = QueryHandler(self.resolver, self.cache,
                                               Uncounted(self.metrics), self.config)
            inner.autopath = self.autopath  # for what it may cache (never walks: no client)
            self.reconfigure(self.config)  # the inner one's, without -verbose
        cache = self.cache

        def lookup(wire):
            out = cache.answer(wire, tcp, count=False)
            return out if out is not None else inner.handle(wire, tcp)
        return lookup

    _inner = None  # the QueryHandler a walk asks through

    def reconfigure(self, config):
        self.config = config
        if self._inner is not None:  # -verbose logs what clients asked only
            self._inner.config = dataclasses.replace(config, verbose=False)

    def _nxdomain_tail(self, query, data):
        """The SOA record as the encoder writes it after this question."""
        authority = self.resolver.authority
        ttl = authority.negative_ttl(query.name)
        owner, soa = authority.soa(ttl)
        record = (owner, dns.rdatatype.SOA, ttl, soa)
        out = encoder.message(data[:2], 0, data[12:query.qend], (), [record[:3] + ([soa],)],
                              (), None, 65535, query.name)
        return out[query.qend:]

    def _fast_error(self, query, data, failure=None):
        """SERVFAIL for a fast-path query that failed; the traceback rate-limited."""
        self.metrics.error("internal")
        if failure is None:
            failure = Failure()
        self.failure_log.warn("failed to answer %s: %s", query.name, failure.getTraceback())
        flags = 0x8000 | (data[2] << 8 & 0x0100) | 0x0080 | dns.rcode.SERVFAIL
        return encoder.header_only(data, query.qend, flags,
                                   self.config.max_udp_size if query.edns else None)

    def _encode(self, result, query, data, tcp):
        """Render a Result for a query read by ``parse_query``, and store it in the wire
        cache when it can be reused: every rotation of its answer, for this transport (and
        for both when nothing had to be left out to fit the limit)."""
        cap = self.config.max_udp_size
        udp_limit = wirefmt.fast_udp_limit(query, cap)
        limit = 65535 if tcp else udp_limit
        flags = (0x8000 | (data[2] << 8 & 0x0100) | 0x0080 | (0x0400 if result.aa else 0)
                 | result.rcode)
        opt = encoder.opt_record(cap) if query.edns else None
        question = data[12:query.qend]
        authority = encoder.rrsets(result.authority)
        additional = encoder.rrsets(result.additional)
        answer = self.resolver.answer_rrsets(result)
        self.resolver.count_negative(result)
        out, complete = encoder.render(data[:2], flags, question, answer, authority,
                                       additional, opt, limit, tcp, query.name)
        truncated = bool(out[2] & 0x02)
        if truncated:
            self.metrics.error("truncated")
        if not result.cacheable:
            return out
        count = 1
        if self.config.round_robin and not truncated:
            count = min(encoder.rotations(answer), wirefmt.MAX_VARIANTS,
                        max(1, wirefmt.WIDE_ENTRY_BYTES // len(out)))
        responses = [out]
        for shift in range(1, count):
            variant, whole = encoder.render(
                data[:2], flags, question, encoder.rotated(answer, shift), authority,
                additional, opt, limit, tcp, query.name)
            responses.append(variant)
            complete = complete and whole
        self.metrics.cache_misses["wire"] += 1
        slot = self.metrics.slot(result.system, out, data)
        # Whole and within what this query may get over UDP: the same bytes for both.
        shared = complete and max(map(len, responses)) <= udp_limit
        negative = not result.answer
        if negative and not self.cache.seen_before(data):
            return out  # stored the second time it is asked (see _nxdomain)
        self.cache.insert(data, responses, result.deps, slot, tcp=tcp, shared=shared,
                          negative=negative)
        return out

    # -- the general path ----------------------------------------------------------------

    def _finish(self, reply, request, data, tcp, started):
        if reply is None:
            return None  # deliberately unanswered (a stub-forwarding loop)
        if isinstance(reply, Failure):
            return self._internal_error(request, reply)
        try:
            out = self._render(reply, request, data, tcp)
        except Exception:
            return self._internal_error(request)
        self.metrics.observe(reply.system, time.perf_counter() - started, out, data, tcp)
        if self.config.verbose:
            q = request.question[0]
            log.info("%s %s %s -> %s %d bytes (%s)", "tcp" if tcp else "udp", q.name,
                     dns.rdatatype.to_text(q.rdtype), dns.rcode.to_text(out[3] & 0x0F),
                     len(out), reply.system)
        return out

    def _render(self, reply, request, data, tcp):
        limit = 65535 if tcp else wirefmt.udp_limit(request, self.config.max_udp_size)
        if reply.wire is not None:  # relayed from upstream or the response cache
            out = reply.wire
            if len(out) > limit:
                out = wirefmt.truncated(request, out, self.config.max_udp_size)
                self.metrics.error("truncated")
            return out
        if self.config.nsid and request.edns == 0 and any(
                option.otype == dns.edns.NSID for option in request.options):
            add_nsid(reply.message, self.config.nsid)
        out = wirefmt.render(reply.message, limit, tcp)
        if out[2] & 0x02:
            self.metrics.error("truncated")
        if reply.cacheable and len(out) <= wirefmt.CACHEABLE_SIZE and not out[2] & 0x02:
            self._store(reply, data, out)
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
        slot = self.metrics.slot(reply.system, out, data)
        self.cache.insert(data, responses, reply.deps, slot, negative=not message.answer)


def add_nsid(message, nsid: str):
    """RFC 5001: the server's identifier in the reply to a query that asked for it (with
    an empty NSID option). Such queries take the general path (the fast path reads only
    cookie options), and a reply cached for one is keyed by its OPT bytes, so only
    queries that ask for the NSID get it."""
    if message.edns < 0:
        message.use_edns(0, 0, 1232)
    message.use_edns(0, message.ednsflags, message.payload,
                     options=[o for o in message.options if o.otype != dns.edns.NSID]
                     + [dns.edns.NSIDOption(nsid.encode())])


class Uncounted:
    """Metrics for the lookups the server makes for itself (an autopath walk's names):
    they use the real cache slots, but count no request, answer or error; the client's
    query is counted once, by its answer."""

    def __init__(self, metrics):
        self._metrics = metrics

    def __getattr__(self, name):
        return getattr(self._metrics, name)

    def observe(self, *args, **kwargs):
        pass

    def error(self, cause):
        pass


@implementer(IReadDescriptor)
class UDPServer:
    """The UDP hot path, registered with ``reactor.addReader``."""

    def __init__(self, reactor, sock: socket.socket, handler: QueryHandler, cache, metrics):
        self.reactor = reactor
        self.sock = sock
        self.handler = handler
        self.cache = cache
        self.metrics = metrics
        self.pending = collections.deque()
        self._drain_call = None

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
        if self._drain_call is not None and self._drain_call.active():
            self._drain_call.cancel()
        self.pending.clear()
        self.sock.close()

    querylog = None  # a QueryLog (skydns.querylog) with -log-queries

    def doRead(self):
        recvfrom = self.sock.recvfrom
        sendto = self.sock.sendto
        qlog = self.querylog
        table = self.cache.table
        resolver = self.handler.resolver
        rindex = resolver.rcache.udp_index
        serve = resolver.serve_entry
        pending = self.pending
        served = forwarded_hits = 0
        started = time.perf_counter()
        for _ in range(BATCH):
            try:
                data, addr = recvfrom(65535)
            except BlockingIOError:
                break
            except OSError:
                continue  # e.g. an ICMP error queued on the socket
            if qlog is not None:
                received = time.perf_counter()
            key = data[2:].lower()
            entry = table.get(key)
            if entry is None:
                forwarded = rindex.get(key)
                if forwarded is not None:  # in the response cache (forwarded answers)
                    try:
                        out = serve(forwarded, data)
                    except Exception:  # never lose the query to a bug here
                        out = None
                else:
                    out = None
                if out is not None:
                    slot = forwarded.slot
                    if slot is None:  # its replies all have one size
                        slot = forwarded.slot = self.metrics.slot("cache", out, data)
                    slot[0] += 1
                    slot[1] += len(out)
                    forwarded_hits += 1
                    try:
                        sendto(out, addr)
                    except OSError:
                        pass
                    if qlog is not None:
                        qlog.record(addr, "udp", data, out, time.perf_counter() - received)
                    continue
                if len(pending) >= MAX_PENDING:
                    pending.popleft()
                    self.metrics.error("dropped")
                pending.append((data, addr))
                continue
            n = entry.count
            if n > 1:
                i = entry.next = (entry.next + 1) % n
                out = data[:2] + entry.header + data[12:entry.qend] + entry.variants[i]
            else:
                out = data[:2] + entry.header + data[12:entry.qend] + entry.variants[0]
            slot = entry.slot
            slot[0] += 1
            slot[1] += len(out)
            served += 1
            try:
                sendto(out, addr)
            except OSError:
                pass  # send buffer full: UDP may drop, the client retries
            if qlog is not None:
                qlog.record(addr, "udp", data, out, time.perf_counter() - received)
        if served or forwarded_hits:
            self.metrics.observe_fast_batch(served, time.perf_counter() - started,
                                            forwarded_hits)
        if pending and self._drain_call is None:
            self._drain()

    def _drain(self):
        """Answer queued misses for at most MISS_BUDGET seconds; come back for the rest
        after the reactor had its turn (and read the socket again). While a drain is
        scheduled, reading only queues: one budget of misses per reactor turn."""
        self._drain_call = None
        pending = self.pending
        deadline = time.perf_counter() + MISS_BUDGET
        while pending:
            data, addr = pending.popleft()
            self._slow(data, addr)
            if time.perf_counter() >= deadline:
                break
        if pending and self._drain_call is None:
            self._drain_call = self.reactor.callLater(0, self._drain)

    def _slow(self, data, addr):
        started = time.perf_counter()
        try:
            out = self.handler.handle(data, tcp=False, addr=addr)
        except Exception:
            log.exception("unexpected error handling a UDP query from %s", addr)
            return
        if out is None:
            return  # nothing to send, or the relay took the query
        if isinstance(out, (bytes, bytearray)):  # not isinstance(Deferred): ABCMeta, slow
            self._send(out, addr, data, started)
        else:
            out.addCallback(self._send, addr, data, started)
            out.addErrback(lambda f: log.error("UDP reply to %s failed: %s", addr,
                                               f.getErrorMessage()))

    def _send(self, out, addr, data, started):
        if out:
            try:
                self.sock.sendto(out, addr)
            except OSError as exc:
                log.debug("could not send to %s: %s", addr, exc)
            if self.querylog is not None:
                self.querylog.record(addr, "udp", data, out, time.perf_counter() - started)


@implementer(IHalfCloseableProtocol)
class DNSTCPProtocol(Int16StringReceiver, TimeoutMixin):
    """DNS over TCP: length-prefixed messages, several per connection, idle timeout.

    Flow control: the protocol is its transport's streaming producer, so a client that
    pipelines queries and never reads cannot make us buffer replies without limit. When
    more than TCP_WRITE_BUFFER bytes of replies are unsent, the transport calls
    ``pauseProducing()``: parsing stops at the next message (one 64 KB read can hold two
    thousand queries) and reading stops; ``resumeProducing()``, once the buffer drained,
    goes on. Reading also stops while TCP_MAX_IN_FLIGHT queries wait for a Deferred (e.g.
    forwarded upstream), until one completes. The two reasons are tracked apart: reading
    resumes only when neither holds. Replies are written as they complete, in any order
    (RFC 7766 6.2.1.1), and never once the connection is closing or closed.

    A client may half-close after its last query (FIN): everything it sent is answered,
    answers pending upstream included, then the connection is closed. The idle timeout
    closes a connection that sent no query for ``factory.idle_timeout`` seconds, and aborts
    it when the client has stopped reading (our write buffer is full, or a close has not
    finished within another idle period): ``loseConnection()`` would wait forever for
    replies the client never reads.
    """

    _write_full = False  # the transport holds more unsent replies than its bufferSize
    _in_flight = 0       # queries whose answer is a Deferred still pending
    _read_eof = False    # the client half-closed: no more queries will come
    _closing = False     # closing or closed: handle and send nothing more
    _parsing = False     # inside dataReceived

    def connectionMade(self):
        self._client = getattr(self.transport.getPeer(), "host", None)  # (for autopath)
        self._writable = []  # Deferreds of zone transfers waiting to write (see above)
        self.transport.bufferSize = TCP_WRITE_BUFFER
        self.transport.registerProducer(self, True)
        self.setTimeout(self.factory.idle_timeout)

    def dataReceived(self, data):
        if self._parsing:
            return  # a resume (b"") from inside the loop, which re-checks self.paused itself
        self._parsing = True
        try:
            Int16StringReceiver.dataReceived(self, data)  # stops at the next message if paused
        finally:
            self._parsing = False
        if self._read_eof:
            self._finish_if_done()

    def stringReceived(self, data):
        if self._closing:
            return
        self.resetTimeout()
        started = time.perf_counter()
        cached = self.factory.cache.answer(data, tcp=True)
        if cached is not None:
            self.sendString(cached)
            self.factory.handler.metrics.observe_tcp_hit(time.perf_counter() - started, data)
            self._logged(data, cached, started)
            return
        try:
            if wirefmt.is_axfr(data):
                out = self.factory.handler.transfer(data, self._client, self._send_part,
                                                    self._wait_writable)
            else:
                out = self.factory.handler.handle(data, tcp=True, client=self._client)
        except Exception:
            log.exception("unexpected error handling a TCP query")
            self._close()
            return
        if isinstance(out, defer.Deferred):
            self._in_flight += 1
            if self._in_flight >= TCP_MAX_IN_FLIGHT:
                self._update()
            out.addBoth(self._answered, data, started)
        else:
            self._send(out)
            self._logged(data, out, started)

    def _logged(self, data, out, started):
        querylog = self.factory.querylog
        if querylog is not None and out:
            peer = self.transport.getPeer()
            querylog.record((peer.host, peer.port), self.factory.proto, data, out,
                            time.perf_counter() - started)

    def _answered(self, out, data, started):
        self._in_flight -= 1
        if isinstance(out, Failure):
            log.error("no TCP reply: %s", out.getErrorMessage())
        else:
            self._send(out)
            self._logged(data, out, started)
        if not self._closing:
            self._update()
            if self._read_eof:
                self._finish_if_done()
        return None

    def _send(self, out):
        if out and not self._closing and self.transport.connected:
            self.sendString(out)  # may call pauseProducing() at once

    def _send_part(self, out):
        """One message of a zone transfer: activity, for the idle timeout (a transfer
        can take longer than it, with no query coming in meanwhile)."""
        self.resetTimeout()
        self._send(out)

    def _wait_writable(self):
        """None while replies can be written; else a Deferred fired when they can again
        (or failed when the connection goes)."""
        if self._closing:
            return defer.fail(ConnectionDone("the client's connection closed"))
        if not self._write_full:
            return None
        d = defer.Deferred()
        self._writable.append(d)
        return d

    def _wake_writers(self, failure=None):
        waiting, self._writable = self._writable, []
        for d in waiting:
            if failure is None:
                d.callback(None)
            else:
                d.errback(failure)

    def _update(self):
        """Stop reading while either reason holds; resume (and parse what was read) when
        neither does."""
        if self._closing:
            return
        stop = self._write_full or self._in_flight >= TCP_MAX_IN_FLIGHT
        if stop == self.paused:
            return
        self.paused = stop
        if not self._read_eof:  # after EOF the reactor no longer reads this socket
            if stop:
                self.transport.pauseProducing()
            else:
                self.transport.resumeProducing()
        if not stop:
            self.dataReceived(b"")

    # IPushProducer, called by the transport
    def pauseProducing(self):
        self._write_full = True
        self._update()

    def resumeProducing(self):
        self._write_full = False
        self._update()
        if self._writable:
            self._wake_writers()

    def stopProducing(self):
        self._closing = True
        self.paused = True

    # IHalfCloseableProtocol
    def readConnectionLost(self):
        """FIN after the last query: answer everything received, then close."""
        self._read_eof = True
        self._finish_if_done()

    def writeConnectionLost(self):
        """Our sending side is gone: nothing more can be answered."""
        self._abort()

    def _finish_if_done(self):
        if self._closing or self._in_flight or (self.paused and self._message_waiting()):
            return
        self._close()

    def _message_waiting(self):
        buf = self._unprocessed
        return len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big")

    def _close(self):
        """Send what is buffered, then close. The producer is unregistered first: Twisted
        does not close a connection while one it has paused is registered."""
        self._closing = True
        self.paused = True
        self.resetTimeout()  # a client that stops reading now is aborted on idle timeout
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def _abort(self):
        self._closing = True
        self.paused = True
        self.setTimeout(None)
        abort = getattr(self.transport, "abortConnection", self.transport.loseConnection)
        abort()

    def timeoutConnection(self):
        if self._write_full or self._closing:
            # The client stopped reading: its replies would never drain, and a close
            # begun one idle period ago (``_close`` restarts the timer) did not finish.
            self._abort()
        else:
            self._close()

    def connectionLost(self, reason=None):
        self._closing = True
        self.paused = True
        self.setTimeout(None)
        if self._writable:
            self._wake_writers(Failure(ConnectionDone("the client's connection closed")))


class DNSTCPFactory(protocol.ServerFactory):
    protocol = DNSTCPProtocol
    idle_timeout = TCP_IDLE_TIMEOUT  # seconds without a query before a connection is closed

    def __init__(self, handler, cache, proto="tcp", querylog=None):
        self.handler = handler
        self.cache = cache
        self.proto = proto          # as the query log names the transport
        self.querylog = querylog    # a QueryLog (skydns.querylog) with -log-queries


def bind_udp(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock
