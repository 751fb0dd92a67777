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

from . import __version__
from . import wire as wirefmt
from .authority import Result, hourly_serial
from .forward import ForwardError
from .rcache import ResponseCache

log = logging.getLogger("skydns.resolver")

T = dns.rdatatype
STUB_OPTION = 65011
REVERSE_ZONES = (dns.name.from_text("in-addr.arpa."), dns.name.from_text("ip6.arpa."))
AUTHORS = "SkyDNS by Miek Gieben and Brian Ketelsen; Python rewrite by the skydns-kube team"


class RateLimitedLog:
    """One line per ``interval`` for a recurring failure, with how many were not logged:
    an upstream outage is one event for the operator, not one line per query."""

    def __init__(self, logger, interval=10.0, clock=time.monotonic):
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self.next_time = 0.0
        self.suppressed = 0

    def warn(self, msg, *args):
        now = self.clock()
        if now < self.next_time:
            self.suppressed += 1
            return
        if self.suppressed:
            msg += f" (and {self.suppressed} similar failures in the last {self.interval:g}s)"
        self.logger.warning(msg, *args)
        self.suppressed = 0
        self.next_time = now + self.interval


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
    def __init__(self, config, store, authority, forwarder, metrics, signer=None):
        self.config = config
        self.store = store
        self.authority = authority
        self.forwarder = forwarder
        self.metrics = metrics
        self.signer = signer
        self.rcache = ResponseCache(config.rcache, config.rcache_ttl)
        self._stubs = None
        self.failure_log = RateLimitedLog(log)
        store.change_listeners.append(self._store_changed)
        store.reset_listeners.append(self._store_reset)

    def reconfigure(self, config):
        self.config = config
        self.authority.config = config
        self.forwarder.config = config
        self.rcache = ResponseCache(config.rcache, config.rcache_ttl)
        self._stubs = None

    # -- stub zones ----------------------------------------------------------------------

    def _store_changed(self, labels):
        prefix = self.config.stub_labels
        if labels[:len(prefix)] == prefix:
            self._stubs = None

    def _store_reset(self):
        self._stubs = None
        self.rcache.clear()

    def stub_zones(self):
        """zone Name -> [(host, port)] from the records under stub.dns.<domain>."""
        if self._stubs is None:
            stubs = {}
            node = self.store.node(self.config.stub_labels)
            for rel, record in (self.store.subtree(node) if node else []):
                if len(rel) < 2 or record.ip is None:
                    continue
                zone = dns.name.from_text(".".join(reversed(rel[:-1])) + ".")
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
        if qtype == T.ANY:
            return defer.succeed(self.error(request, dns.rcode.REFUSED, "refused"))
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
                result = self.authority.ptr_record(qname, Result())
                if result is not None:
                    return defer.succeed(self.from_result(request, result))
            return self.forward(request, wire, tcp, system="reverse")
        return self.forward(request, wire, tcp, system="recursive")

    def error(self, request, rcode, cause, system="auth"):
        response = dns.message.make_response(request)
        response.set_rcode(rcode)
        self.metrics.error(cause)
        return Reply(response, system=system)

    def chaos(self, request, qname, qtype):
        answers = {
            "version.bind.": "skydns-kube " + __version__,
            "version.server.": "skydns-kube " + __version__,
            "hostname.bind.": socket.gethostname(),
            "id.server.": socket.gethostname(),
            "authors.bind.": AUTHORS,
        }
        text = answers.get(qname.to_text().lower())
        if qtype != T.TXT or text is None:
            return self.error(request, dns.rcode.SERVFAIL, "fail")
        response = dns.message.make_response(request)
        response.answer.append(dns.rrset.from_text_list(
            qname, 0, dns.rdataclass.CH, T.TXT, ['"%s"' % text.replace('"', "")]))
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
        result = yield self.authority.query(qname, qtype)
        response = self.from_result(request, result).message
        if dnssec:
            if result.rcode == dns.rcode.NXDOMAIN or not result.answer:
                nxdomain = result.rcode == dns.rcode.NXDOMAIN
                encloser = (self.authority.closest_encloser(qname) if nxdomain else qname)
                if encloser == qname and nxdomain:
                    encloser = self.config.domain_name
                self.signer.add_denial(response, qname, nxdomain, encloser,
                                       self.authority.types_at(qname), self.config.min_ttl)
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
        response = self.make_response(request, aa=result.aa)
        response.set_rcode(result.rcode)
        response.answer = Result.rrsets(result.answer)
        response.authority = Result.rrsets(result.authority)
        response.additional = Result.rrsets(result.additional)
        if self.config.round_robin and not result.cacheable:
            # Cached answers rotate in the wire cache; these are built anew each time.
            count = wirefmt.variant_count(response, True)
            response.answer = wirefmt.rotated(response.answer, random.randrange(count))
        if result.rcode == dns.rcode.NXDOMAIN:
            self.metrics.error("nxdomain")
        elif not result.answer and result.rcode == dns.rcode.NOERROR:
            self.metrics.error("nodata")
        return Reply(response, system=result.system, cacheable=result.cacheable,
                     deps=result.deps)

    # -- forwarding ----------------------------------------------------------------------

    def cached_forward(self, data: bytes, tcp: bool) -> bytes | None:
        """The response cache's reply for these raw query bytes (client's ID), or None."""
        return None

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
        # The reply was shaped by the client's EDNS (OPT present, UDP size), so that is
        # part of the key: a reply fetched for a 4096-byte client never goes to a 512 one.
        shape = "tcp" if tcp else (request.edns,
                                   wirefmt.udp_limit(request, self.config.max_udp_size))
        key = ResponseCache.key(qname, request.question[0].rdtype, request.question[0].rdclass,
                                bool(request.ednsflags & dns.flags.DO), shape)
        cached = self.rcache.get(key)
        if cached is not None:
            return Reply(wire=wire[:2] + cached[2:], system="cache")
        if self.config.rcache:
            self.metrics.cache_misses["response"] += 1
        try:
            reply = yield self.forwarder.forward(wire, tcp, rotate_key=request.id)
        except ForwardError as exc:
            self.failure_log.warn("forwarding %s failed: %s", qname, exc)
            return self.error(request, dns.rcode.SERVFAIL, "fail", system=system)
        reply = reply[:3] + bytes([reply[3] | 0x80]) + reply[4:]  # relayed with RA set
        if reply[3] & 0x0F in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            self.rcache.put(key, reply)
        return Reply(wire=reply, system=system)

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
        except ForwardError as exc:
            self.failure_log.warn("stub forwarding %s failed: %s", request.question[0].name,
                                  exc)
            return self.error(request, dns.rcode.SERVFAIL, "fail", system="stub")
        return Reply(wire=reply, system="stub")

