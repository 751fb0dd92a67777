"""The general query path: decides who answers a query and builds the response message.

Order of decisions, as in SkyDNS's ServeDNS: CHAOS, ANY, stub zones, the cluster domain
(authoritative, optionally DNSSEC-signed), reverse names from /skydns/arpa, and everything
else forwarded upstream. Everything uncommon lives here; the hot path only replays answers
this module produced before.
"""

from __future__ import annotations

import logging
import random
import socket
import time

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from twisted.internet import defer
from twisted.python.failure import Failure

from . import __version__
from . import encoder
from . import wire as wirefmt
from .authority import Result, hourly_serial, labels_of, name_text
from .forward import ForwardError, Overloaded, random16
from .rcache import ResponseCache, cache_key, personalize, relayed
from .record import labels_to_name
from .retry import RateLimitedLog

log = logging.getLogger("skydns.resolver")

T = dns.rdatatype
STUB_OPTION = 65011
REVERSE_ZONES = (dns.name.from_text("in-addr.arpa."), dns.name.from_text("ip6.arpa."))
# SkyDNS's answer to `authors.bind. TXT CH` and `<domain> TXT CH`: one TXT per author, TTL 0.
AUTHORS = ("Erik St. Martin", "Brian Ketelsen", "Miek Gieben", "Michael Crosby")
# Forwarding events counted in skydns_forward_events_total{event}.
FORWARD_EVENTS = ("coalesced", "prefetch", "stale", "tcp-retry")
PREFETCH_FRACTION = 0.1  # refresh a popular entry in the last tenth of its life...
PREFETCH_MIN_WINDOW = 1.0  # ...or its last second, for short TTLs (they count whole seconds)


def with_ra(reply: bytes) -> bytes:
    """A reply relayed from upstream, with RA set: recursion is what this server offers."""
    return reply[:3] + bytes([reply[3] | 0x80]) + reply[4:]


class Reply:
    """What the general path decided: a message to render, raw relayed bytes, or nothing."""

    __slots__ = ("message", "wire", "system", "cacheable", "deps")

    def __init__(self, message=None, wire=None, system="auth", cacheable=False, deps=()):
        self.message = message
        self.wire = wire
        self.system = system
        self.cacheable = cacheable
        self.deps = deps


class Resolver:
    def __init__(self, config, store, authority, forwarder, metrics, signer=None,
                 clock=time.monotonic):
        self.config = config
        self.clock = clock  # the response cache's (TTLs run down, stale windows)
        self.store = store
        self.authority = authority
        self.forwarder = forwarder
        self.metrics = metrics
        self.signer = signer
        self.rcache = self._new_rcache(config)
        self.in_flight = {}  # cache key -> Deferreds waiting for the one upstream query
        self.coalesced = 0   # of those, the ones that did not send it (bounded too)
        self.events = dict.fromkeys(FORWARD_EVENTS, 0)
        self._stubs = None
        self.failure_log = RateLimitedLog(log)
        store.change_listeners.append(self._store_changed)
        store.reset_listeners.append(self._store_reset)
        self._register_metrics(metrics)

    def reconfigure(self, config):
        """A new response cache: its size, TTL bounds and staleness are the config's."""
        self.config = config
        self.rcache = self._new_rcache(config)
        self._stubs = None

    def _new_rcache(self, config):
        return ResponseCache(config.rcache, config.rcache_ttl, config.rcache_stale,
                             clock=self.clock, max_bytes=config.rcache_mb * 1024 * 1024)

    def _register_metrics(self, metrics):
        metrics.labelled_counter(
            "skydns_forward_events", "Forwarded queries coalesced into one upstream query, "
            "prefetches, stale answers served, response cache evictions", "event",
            lambda: dict(self.events, evicted=self.rcache.evicted))
        metrics.gauge("skydns_rcache_entries", "Forwarded answers cached",
                      lambda: len(self.rcache))
        metrics.gauge("skydns_rcache_bytes", "Approximate memory of the cached forwarded "
                      "answers (keys, replies, entries)", lambda: self.rcache.bytes)
        metrics.gauge("skydns_upstream_in_flight", "Queries waiting for an upstream server",
                      lambda: self.forwarder.outstanding)
        metrics.gauge("skydns_upstreams_down", "Upstream servers marked down (tried last)",
                      self.forwarder.down_count)

    # -- stub zones ----------------------------------------------------------------------

    def _store_changed(self, labels):
        prefix = self.config.stub_labels
        if labels[:len(prefix)] == prefix:
            self._stubs = None
            if self.config.stubzones:  # a new stub zone must win over answers cached before
                self.rcache.clear()
        elif labels[:1] == ("arpa",):  # a PTR record now answers what was forwarded
            self.rcache.drop(labels)

    def _store_reset(self):
        self._stubs = None
        self.rcache.clear()

    def stub_zones(self):
        """zone Name -> [(host, port)] from the records under stub.dns.<domain>."""
        if self._stubs is None:
            stubs = {}
            node = self.store.node(self.config.stub_labels)
            subtree = self.store.subtree(node, self.config.stub_labels) if node else []
            for rel, record in subtree:
                if len(rel) < 2 or record.ip is None:
                    continue
                zone = dns.name.from_text(labels_to_name(rel[:-1]))
                stubs.setdefault(zone, []).append((str(record.ip), record.port or 53))
            self._stubs = stubs
        return self._stubs

    def stub_for(self, qname):
        best = None
        for zone, servers in self.stub_zones().items():
            if qname.is_subdomain(zone) and (best is None or len(zone) > len(best[0])):
                best = (zone, servers)
        return best

    # -- entry point ---------------------------------------------------------------------

    def resolve(self, request: dns.message.Message, wire: bytes, tcp: bool):
        """A Deferred firing with a Reply (fires at once when no upstream is involved)."""
        if request.opcode() != dns.opcode.QUERY:
            return defer.succeed(self.error(request, dns.rcode.NOTIMP, "notimp"))
        if len(request.question) != 1:
            return defer.succeed(self.error(request, dns.rcode.FORMERR, "formerr"))
        if request.edns > 0:
            return defer.succeed(self.error(request, dns.rcode.BADVERS, "badvers"))
        question = request.question[0]
        qname, qtype, qclass = question.name, question.rdtype, question.rdclass
        if qclass == dns.rdataclass.CH:
            return defer.succeed(self.chaos(request, qname, qtype))
        if qtype == T.ANY:  # refused without RA, as SkyDNS does
            return defer.succeed(self.error(request, dns.rcode.REFUSED, "refused", ra=False))
        if qclass != dns.rdataclass.IN:
            return defer.succeed(self.error(request, dns.rcode.REFUSED, "refused"))
        if self.config.stubzones:
            stub = self.stub_for(qname)
            if stub is not None:
                return self.forward_stub(request, stub[1], tcp)
        if qname.is_subdomain(self.config.domain_name):
            return self.authoritative(request, qname, qtype)
        if qtype == T.PTR and any(qname.is_subdomain(z) for z in REVERSE_ZONES):
            if self.store.loaded:
                result = self.authority.ptr_record(name_text(qname), labels_of(qname),
                                                   Result())
                if result is not None:
                    return defer.succeed(self.from_result(request, result))
            return self.forward(request, wire, tcp, system="reverse")
        return self.forward(request, wire, tcp, system="recursive")

    def error(self, request, rcode, cause, system="auth", ra=True):
        """An answer with no records. RA is set (SkyDNS sets it on every reply but the ANY
        refusal): a SERVFAIL for a name that could not be forwarded still comes from a
        server that offers recursion, and a stub resolver may skip a server without it."""
        response = dns.message.make_response(request, recursion_available=ra)
        response.set_rcode(rcode)
        self.metrics.error(cause)
        return Reply(response, system=system)

    def chaos(self, request, qname, qtype):
        """CHAOS TXT as SkyDNS answers it: the version, the host name, and the authors at
        ``authors.bind.`` and at the domain's own name; AA and RA set, TTL 0."""
        version = "skydns-kube " + __version__
        answers = {
            "version.bind.": (version,),
            "version.server.": (version,),
            "hostname.bind.": (socket.gethostname(),),
            "id.server.": (socket.gethostname(),),
            "authors.bind.": AUTHORS,
            self.config.domain_text: AUTHORS,
        }
        texts = answers.get(qname.to_text().lower())
        if qtype != T.TXT or texts is None:
            return self.error(request, dns.rcode.SERVFAIL, "fail")
        response = self.make_response(request, aa=True)
        response.answer.append(dns.rrset.from_text_list(
            qname, 0, dns.rdataclass.CH, T.TXT,
            ['"%s"' % text.replace("\\", "").replace('"', "") for text in texts]))
        return Reply(response)

    # -- authoritative -------------------------------------------------------------------

    @defer.inlineCallbacks
    def authoritative(self, request, qname, qtype):
        if not self.store.loaded:
            # Never a false NXDOMAIN: until the first load we do not know what exists.
            return self.error(request, dns.rcode.SERVFAIL, "fail")
        dnssec = self.signer is not None and bool(request.ednsflags & dns.flags.DO)
        if dnssec and qtype == T.DNSKEY and qname == self.config.domain_name:
            response = self.make_response(request, aa=True)
            response.answer.append(self.signer.dnskey_rrset())
            self.secure(response, request)
            return Reply(response)
        result = yield self.authority.query(name_text(qname), labels_of(qname), qtype)
        response = self.from_result(request, result).message
        if dnssec:
            if result.rcode == dns.rcode.NXDOMAIN or not result.answer:
                nxdomain = result.rcode == dns.rcode.NXDOMAIN
                encloser = (self.authority.closest_encloser(qname) if nxdomain else qname)
                if encloser == qname and nxdomain:
                    encloser = self.config.domain_name
                self.signer.add_denial(response, qname, nxdomain, encloser,
                                       self.authority.types_at(qname),
                                       self.authority.negative_ttl(name_text(qname)))
            self.secure(response, request)
            return Reply(response, system="auth")
        return Reply(response, system=result.system, cacheable=result.cacheable,
                     deps=result.deps)

    def secure(self, response, request):
        response.use_edns(0, dns.flags.DO, 4096)
        self.signer.sign_response(response)
        if not request.flags & dns.flags.CD:
            response.flags |= dns.flags.AD

    def make_response(self, request, aa):
        response = dns.message.make_response(request, recursion_available=True,
                                             our_payload=self.config.max_udp_size)
        if aa:
            response.flags |= dns.flags.AA
        return response

    def from_result(self, request, result):
        """The Result as a dnspython message (the general path, and DNSSEC signing)."""
        response = self.make_response(request, aa=result.aa)
        response.set_rcode(result.rcode)
        response.answer = encoder.to_dnspython(self.answer_rrsets(result))
        response.authority = encoder.to_dnspython(Result.rrsets(result.authority))
        response.additional = encoder.to_dnspython(Result.rrsets(result.additional))
        self.count_negative(result)
        return Reply(response, system=result.system, cacheable=result.cacheable,
                     deps=result.deps)

    def answer_rrsets(self, result):
        """The answer's RRsets; one not cached is rotated at random here (cached answers
        rotate in the wire cache)."""
        answer = Result.rrsets(result.answer)
        if self.config.round_robin and not result.cacheable:
            count = min(encoder.rotations(answer), wirefmt.MAX_VARIANTS)
            answer = encoder.rotated(answer, random.randrange(count))
        return answer

    def count_negative(self, result):
        if result.rcode == dns.rcode.NXDOMAIN:
            self.metrics.error("nxdomain")
        elif not result.answer and result.rcode == dns.rcode.NOERROR:
            self.metrics.error("nodata")

    # -- the fast path -------------------------------------------------------------------

    def missing_name(self, query):
        """For a plain query of a name in the domain that does not exist, the labels of its
        closest existing ancestor (the answer is NXDOMAIN whatever the type: every record
        kind looks at that name or below it); None otherwise, or when the fast path does
        not answer (see ``fast_query``). The apex and ``local.dns`` always exist, and a
        wildcard label matches names that do."""
        config = self.config
        if not self.store.loaded or config.stubzones:
            return None
        if query.do and self.signer is not None:
            return None
        name = query.name
        if name == config.domain_text or not self.authority.in_domain(name):
            return None
        if config.local and name == config.local_dns_text:
            return None
        labels = query.labels
        if "*" in labels or "any" in labels:
            return None
        depth = self.store.existing_depth(labels)
        return labels[:depth] if depth < len(labels) else None

    def soa_suffix_length(self) -> int:
        """Characters at the end of a name that can decide how the SOA compresses against
        it: those of the longest SOA name (its names compress only against suffixes); one
        more is compared, which says whether a suffix of that length starts a label."""
        config = self.config
        return max(len("ns.dns." + config.domain_text), len(config.hostmaster_text))

    def fast_query(self, query):
        """A Deferred Result for a plain query (``wire.parse_query``) in the domain, or
        None when the general path must answer it: not in the domain (forwarding, reverse
        names), DNSSEC requested from a signing server, stub zones configured, or the store
        not loaded yet (SERVFAIL there)."""
        if not self.store.loaded or self.config.stubzones:
            return None
        if query.do and self.signer is not None:
            return None
        if not self.authority.in_domain(query.name):
            return None
        return self.authority.query(query.name, query.labels, query.qtype)

    # -- forwarding ----------------------------------------------------------------------

    def cached_forward(self, data: bytes, tcp: bool, key=None) -> bytes | None:
        """The response cache's reply for these raw query bytes (``key``: their
        ``cache_key``, when the caller has it), or None: the client's ID and question,
        TTLs aged. A popular entry near its end is refreshed meanwhile."""
        cache = self.rcache
        if not cache.entries:
            return None
        if key is None:
            key = cache_key(data, tcp)
        if key is None:
            return None
        now = cache.clock()
        entry = cache.fresh(key, now)
        if entry is None:
            return None
        entry.hits += 1
        if self._prefetch_due(entry, now):
            self._prefetch(key, entry, cache)
        return personalize(entry.reply_at(now), data, entry.qend)

    def serve_entry(self, entry, data: bytes) -> bytes | None:
        """``cached_forward`` for an entry the UDP reader found in ``rcache.udp_index``."""
        cache = self.rcache
        now = cache.clock()
        expires = entry.expires
        if now >= expires:
            return None
        entry.hits += 1
        cache.entries.move_to_end(entry.key)
        left = expires - now
        if left <= PREFETCH_MIN_WINDOW or left <= entry.life * PREFETCH_FRACTION:
            if self._prefetch_due(entry, now):  # near the end only: checked in full there
                self._prefetch(entry.key, entry, cache)
        reply = entry.reply_at(now) if now - entry.stored >= entry.age + 1 else entry.reply
        qend = entry.qend
        return data[:2] + reply[2:12] + data[12:qend] + reply[qend:]

    def _prefetch_due(self, entry, now):
        hits = self.config.rcache_prefetch
        return (hits and entry.hits >= hits and not entry.prefetching
                and entry.expires - now <= max(entry.life * PREFETCH_FRACTION,
                                               PREFETCH_MIN_WINDOW))

    def _prefetch(self, key, entry, cache):
        """Refresh an entry in the background: one upstream query, whoever asks meanwhile."""
        entry.prefetching = True
        self.events["prefetch"] += 1
        self._refresh(key, entry, cache)

    def _refresh(self, key, entry, cache):
        """Ask upstream again for a cached entry's query, not waiting for the reply (which
        replaces the entry); the query is rebuilt from the key."""
        query = b"\x00\x00" + key[1]
        d = self._fetch(key, query, key[0], random16(), cache, entry.limit,
                        entry.deps)
        d.addErrback(lambda f: self.failure_log.warn(
            "refreshing %s failed: %s", dns.name.from_wire(query, 12)[0], f.getErrorMessage()))

    @defer.inlineCallbacks
    def forward(self, request, wire, tcp, system):
        qname = request.question[0].name
        if len(qname) - 1 < self.config.ndots and qname != dns.name.root:
            return self.short_name(request, system)
        if self.config.no_rec:
            response = dns.message.make_response(request, recursion_available=True)
            response.set_rcode(dns.rcode.SERVFAIL)
            self.metrics.error("norec")
            return Reply(response, system=system)
        # A reply bigger than this client takes is cut for it with TC, so it is not cached.
        limit = 65535 if tcp else wirefmt.udp_limit(request, self.config.max_udp_size)
        deps = labels_of(qname) if system == "reverse" else None  # a PTR record may come
        reply = yield self._relay(wire, tcp, limit, system, qname, lambda: request, deps)
        return reply

    def forward_fast(self, query, wire, tcp):
        """``forward`` for a plain query (``wire.parse_query``) outside the domain, without
        parsing it with dnspython unless something fails; None when the general path must
        answer it (stub zones, reverse names, names with fewer labels than ``-ndots``,
        ``-no-rec``)."""
        if not self.forwardable(query):
            return None
        config = self.config
        limit = 65535 if tcp else wirefmt.fast_udp_limit(query, config.max_udp_size)
        return self._relay(wire, tcp, limit, "recursive", query.name,
                           lambda: dns.message.from_wire(wire), None)

    def forwardable(self, query) -> bool:
        """A plain query that is simply forwarded: outside the domain (a name of ours stays
        ours even when the fast path leaves it to dnspython, e.g. for DNSSEC), no stub
        zones, no reverse name (the store may have its PTR), at least ``-ndots`` labels,
        recursion allowed."""
        config = self.config
        if config.stubzones or config.no_rec or query.name.endswith(".arpa."):
            return False
        if self.authority.in_domain(query.name):
            return False
        return bool(query.labels) and len(query.labels) >= config.ndots

    @defer.inlineCallbacks
    def _relay(self, wire, tcp, limit, system, qname, request_of, deps):
        """Forward ``wire`` (or answer it from the stale cache); ``request_of()`` gives the
        parsed query for the error answers, which are built with dnspython."""
        cache = self.rcache
        key = cache_key(wire, tcp)
        if cache.size:
            self.metrics.cache_misses["response"] += 1
        if key is not None and self.forwarder.all_down():
            # RFC 8767 5: a stale answer now rather than after every server's timeout; the
            # refresh (shared by all who ask) goes on in the background.
            entry = cache.expired(key, cache.clock())
            if entry is not None:
                self._refresh(key, entry, cache)
                return self._stale_reply(entry, wire)
        try:
            reply = yield self._fetch(key, wire, tcp, wire[0] << 8 | wire[1], cache, limit,
                                      deps)
        except Overloaded:
            self.metrics.error("overloaded")
            return self.error(request_of(), dns.rcode.SERVFAIL, "fail", system=system)
        except ForwardError as exc:
            stale = self._stale(cache, key, wire)
            self.failure_log.warn("forwarding %s failed: %s%s", qname, exc,
                                  "; serving a stale answer" if stale else "")
            return stale or self.error(request_of(), dns.rcode.SERVFAIL, "fail",
                                       system=system)
        if reply[3] & 0x0F == dns.rcode.SERVFAIL:  # the upstream could not resolve it
            stale = self._stale(cache, key, wire)
            if stale is not None:
                return stale
        if not tcp and reply[2] & 0x02 and limit > 512:
            reply = yield self._over_tcp(wire, reply, cache, key, limit, deps)
        return Reply(wire=relayed(reply, wire), system=system)

    @defer.inlineCallbacks
    def lookup_target(self, name, rdtype):
        """Answer records (owner, type, ttl, rdata) for a name outside the domain: the CNAME,
        SRV and MX targets the query semantics chase. Through the response cache, so an
        answer naming external hosts (a wide one included, which is not kept in the wire
        cache then) asks upstream once per TTL rather than once per query, and identical
        lookups in flight share one upstream query. Over TCP when the UDP reply is cut."""
        if self.config.no_rec:
            raise ForwardError("recursion disabled (-no-rec)")
        query = dns.message.make_query(name, rdtype)
        wire = query.to_wire()
        reply = None
        for tcp in (False, True):
            reply = self.cached_forward(wire, tcp)
            if reply is None:
                reply = yield self._fetch(cache_key(wire, tcp), wire, tcp, query.id,
                                          self.rcache, 65535 if tcp else 512, None)
            if not reply[2] & 0x02:
                break
        message = dns.message.from_wire(reply)
        if message.rcode() != dns.rcode.NOERROR:
            # SkyDNS's Lookup fails on any other rcode, NXDOMAIN included, and the CNAME
            # (or the glue) that needed the target is left out of the answer.
            raise ForwardError(f"upstream answered {dns.rcode.to_text(message.rcode())}")
        return [(rrset.name, rrset.rdtype, rrset.ttl, rdata)
                for rrset in message.answer for rdata in rrset]

    @defer.inlineCallbacks
    def _over_tcp(self, wire, truncated, cache, key, limit, deps):
        """A truncated UDP reply from upstream, asked again over TCP: an upstream that cuts
        at 512 bytes (no EDNS) may have left out what this client's buffer can take. The
        whole reply is cached for TCP clients, and for this UDP query when it fits; the
        truncated one stays the answer when it does not (the client retries over TCP)."""
        self.events["tcp-retry"] += 1
        tcp_key = cache_key(wire, True)
        try:
            whole = yield self._fetch(tcp_key, wire, True, wire[0] << 8 | wire[1], cache,
                                      65535, deps)
        except ForwardError:
            return truncated
        if len(whole) > limit or whole[2] & 0x02:
            return truncated
        if key is not None:
            cache.store(key, whole, limit, deps)
        return whole

    def _fetch(self, key, wire, tcp, rotate_key, cache, limit, deps):
        """A Deferred upstream reply (RA set) to ``wire``. Identical queries in flight (same
        key) share one upstream query; the reply is cached once, for all of them."""
        waiter = defer.Deferred()
        waiters = self.in_flight.get(key) if key is not None else None
        if waiters is not None:
            most = self.config.max_concurrent
            if most and self.coalesced >= most:  # a flood of one name costs memory too
                return defer.fail(Overloaded(f"{self.coalesced} queries wait for others"))
            self.coalesced += 1
            self.events["coalesced"] += 1
            waiters.append(waiter)
            return waiter
        waiters = [waiter]
        if key is not None:
            self.in_flight[key] = waiters
        d = self.forwarder.forward(wire, tcp, rotate_key=rotate_key)
        d.addCallback(self._arrived, key, cache, limit, deps)
        d.addBoth(self._fan_out, key, waiters)
        return waiter

    @staticmethod
    def _arrived(reply, key, cache, limit, deps):
        reply = with_ra(reply)
        if key is not None and len(reply) <= limit:
            cache.store(key, reply, limit, deps)
        return reply

    def _fan_out(self, result, key, waiters):
        if key is not None and self.in_flight.get(key) is waiters:
            del self.in_flight[key]
        self.coalesced -= len(waiters) - 1
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)
        return None

    def _stale(self, cache, key, wire):
        """An expired entry for this query, as RFC 8767 allows when no upstream answers:
        TTL 30 everywhere. None when there is none (or it is older than -rcache-stale)."""
        entry = cache.expired(key, cache.clock()) if key is not None else None
        return None if entry is None else self._stale_reply(entry, wire)

    def _stale_reply(self, entry, wire):
        self.events["stale"] += 1
        return Reply(wire=personalize(entry.stale_reply(), wire, entry.qend), system="cache")

    def short_name(self, request, system):
        """NXDOMAIN, with a root SOA for negative caching, for a name with fewer labels than
        ``ndots``: not forwarded, as in SkyDNS, but a definite answer instead of SkyDNS's
        SERVFAIL. A pod's ndots:5 search path ends in the bare name (``nonexistent.``), and
        on SERVFAIL musl waits and retries, Go says "server misbehaving", glibc and c-ares
        report a temporary failure. Cached like an authoritative answer."""
        response = self.make_response(request, aa=False)
        response.set_rcode(dns.rcode.NXDOMAIN)
        serial = hourly_serial(self.authority.clock())
        response.authority.append(dns.rrset.from_text(
            dns.name.root, self.config.min_ttl, dns.rdataclass.IN, T.SOA,
            f"a.root-servers.net. nstld.verisign-grs.com. {serial} 1800 900 604800 "
            f"{self.config.min_ttl}"))
        self.metrics.error("nxdomain")
        # A stub zone created later for this name must replace the cached answer.
        return Reply(response, system=system, cacheable=True, deps=(self.config.stub_labels,))

    @defer.inlineCallbacks
    def forward_stub(self, request, servers, tcp):
        """Forward to a stub zone's servers, marked with EDNS0 option 65011 against loops."""
        if any(option.otype == STUB_OPTION for option in request.options):
            log.info("dropping %s: it already passed through a stub forwarder",
                     request.question[0].name)
            self.metrics.error("stubloop")
            return None
        marked = dns.message.make_query(request.question[0].name, request.question[0].rdtype,
                                        request.question[0].rdclass)
        marked.id = request.id
        marked.flags = request.flags
        options = list(request.options) + [dns.edns.GenericOption(STUB_OPTION, b"\x01")]
        marked.use_edns(0, request.ednsflags if request.edns >= 0 else 0,
                        request.payload if request.edns >= 0 else 512, options=options)
        try:
            reply = yield self.forwarder.forward(marked.to_wire(), tcp, servers=servers,
                                                 rotate_key=request.id)
        except Overloaded:
            self.metrics.error("overloaded")
            return self.error(request, dns.rcode.SERVFAIL, "fail", system="stub")
        except ForwardError as exc:
            self.failure_log.warn("stub forwarding %s failed: %s", request.question[0].name,
                                  exc)
            return self.error(request, dns.rcode.SERVFAIL, "fail", system="stub")
        return Reply(wire=with_ra(reply), system="stub")

