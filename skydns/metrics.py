"""Prometheus metrics with SkyDNS's names, kept as plain counters.

The UDP hot path must not take a lock per query, so counting is plain integer arithmetic on
lists owned by this module, and a custom prometheus_client collector turns them into
metric families when /metrics is scraped.

Every answer is also counted by what CoreDNS labels its metrics with (``coremetrics``):
query type, rcode, whether it is a denial (NXDOMAIN or NODATA), transport and sizes. A
prebuilt answer's slot is keyed by all of them (they are the same for every reply from
one entry), so the hot path still adds to two integers per reply; the general path
counts each answer (with the query type its caller parsed already, when it did). Query
types CoreDNS does not name are counted together, so the counters stay few whatever
clients ask.
"""

from __future__ import annotations

import bisect
import collections
import functools

import dns.rdatatype
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)
from prometheus_client.registry import CollectorRegistry

from .wire import question_end

SYSTEMS = ("auth", "cache", "recursive", "reverse", "stub")
DURATION_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SIZE_BUCKETS = (64, 128, 256, 512, 1024, 1500, 4096, 16384, 65535)
# CoreDNS's own buckets (plugin/metrics/vars), so that its dashboards' quantiles read alike.
CORE_DURATION_BUCKETS = tuple(0.00025 * 2 ** i for i in range(16))
CORE_SIZE_BUCKETS = (0, 100, 200, 300, 400, 511, 1023, 2047, 4095, 8291, 16000, 32000,
                     48000, 64000)


# Query types CoreDNS names in its labels (vars.monitorType); the others are counted as
# OTHER_TYPE, so that clients asking for every type number cannot grow the counters.
MONITORED_TYPES = frozenset(dns.rdatatype.from_text(t) for t in (
    "A", "AAAA", "NS", "PTR", "SOA", "CNAME", "MX", "TXT", "SRV", "NAPTR", "DS", "DNSKEY",
    "RRSIG", "NSEC", "NSEC3", "HINFO", "IXFR", "AXFR", "ANY", "CAA", "SVCB", "HTTPS"))
OTHER_TYPE = -1


def question_type(query: bytes) -> int:
    """The query type of a query's single question, as counted (0: unreadable)."""
    end = question_end(query)
    qtype = int.from_bytes(query[end - 4:end - 2], "big") if end > 0 else 0
    return qtype if qtype in MONITORED_TYPES else OTHER_TYPE


def reply_rcode(reply: bytes) -> int:
    """A reply's rcode; SERVFAIL for bytes too short to say."""
    return reply[3] & 0x0F if len(reply) > 3 else 2


def answer_key(reply: bytes, query: bytes) -> tuple:
    """(qtype, rcode, denial, query size) of a reply: what CoreDNS's metrics label an
    answer with, beside its size."""
    return question_type(query), reply_rcode(reply), is_denial(reply), len(query)


def is_denial(reply: bytes) -> bool:
    """NXDOMAIN, or NOERROR without answers (NODATA): what caches call a denial."""
    if len(reply) < 8:
        return False
    rcode = reply[3] & 0x0F
    return rcode == 3 or (rcode == 0 and reply[6:8] == b"\x00\x00")


class Histogram:
    """Bucket counts plus a sum; ``observe`` takes a weight so batches cost one call."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value, weight=1):
        self.counts[bisect.bisect_left(self.bounds, value)] += weight
        self.total += value * weight

    def add(self, other: "Histogram"):
        """Count ``other``'s observations in this one too (same bounds)."""
        self.counts = [a + b for a, b in zip(self.counts, other.counts)]
        self.total += other.total

    def cumulative(self):
        out, running = [], 0
        for bound, count in zip(self.bounds + (float("inf"),), self.counts):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return out


core_durations = functools.partial(Histogram, CORE_DURATION_BUCKETS)
core_sizes = functools.partial(Histogram, CORE_SIZE_BUCKETS)


def upstream_label(server) -> str:
    """(host, port) as CoreDNS's forward metrics name an upstream (``to``)."""
    host, port = server
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class UpstreamMetrics:
    """What CoreDNS's forward plugin counts, per upstream: queries sent, replies by rcode
    and their round-trip times, failures (a timeout, a refusal, an error), and queries
    refused because -max-concurrent were in flight."""

    def __init__(self):
        self.requests = collections.Counter()   # server -> queries sent
        self.responses = collections.Counter()  # (server, rcode) -> replies
        self.durations = collections.defaultdict(core_durations)  # by (server, rcode)
        self.failures = collections.Counter()   # server -> failed queries
        self.rejects = 0

    def sent(self, server):
        self.requests[server] += 1

    def answered(self, server, reply: bytes, seconds: float):
        key = (server, reply_rcode(reply))
        self.responses[key] += 1
        self.durations[key].observe(seconds)

    def failed(self, server):
        self.failures[server] += 1


class AnswerStats:
    """The general path's answers of one (system, proto, qtype, rcode, denial): how many,
    and their request sizes, response sizes and durations in CoreDNS's buckets."""

    __slots__ = ("count", "request", "response", "duration")

    def __init__(self):
        self.count = 0
        self.request = core_sizes()
        self.response = core_sizes()
        self.duration = core_durations()


class Metrics:
    """Everything skydns counts; one instance per process. ``coredns``: count each answer
    of the general path by CoreDNS's labels too (~1.1 us more an answer); off when
    /metrics is not served at all."""

    def __init__(self, coredns: bool = True):
        self.coredns = coredns
        self.requests = dict.fromkeys(SYSTEMS, 0)
        self.duration = {s: Histogram(DURATION_BUCKETS) for s in SYSTEMS}
        self.size = {s: Histogram(SIZE_BUCKETS) for s in SYSTEMS}
        self.errors = collections.Counter()
        self.cache_misses = collections.Counter()
        # Fast-path slots: [count, bytes, of them over TCP] per (system, size, qtype,
        # rcode, denial, query size); the hot path adds to the first two.
        self.fast_slots = {}
        # The general path's answers by (system, proto, qtype, rcode, denial), with their
        # sizes and durations in CoreDNS's buckets; the prebuilt answers' durations per
        # (system, qtype) (see observe_fast_batch).
        self.answers = collections.defaultdict(AnswerStats)
        self.core_duration = collections.defaultdict(core_durations)
        self.collectors = []  # more collectors for the same registry (coremetrics)
        self.gauges = {}  # name -> (help, callable returning a number)
        self.counters = {}  # name -> (help, label, callable returning {label value: count})
        self.signature_misses = None  # callable, set when DNSSEC is on

    def slot(self, system: str, reply: bytes, query: bytes) -> list:
        """The counters that a prebuilt answer (``reply`` to ``query``) adds to."""
        key = (system, len(reply)) + answer_key(reply, query)
        slot = self.fast_slots.get(key)
        if slot is None:
            slot = self.fast_slots[key] = [0, 0, 0]
        return slot

    def observe(self, system, seconds, reply: bytes, query: bytes = b"", tcp=False,
                qtype=None):
        """One answer of the general path (or a response-cache hit over TCP); ``qtype``
        when the caller has parsed the query already (``question_type`` otherwise)."""
        size = len(reply)
        self.requests[system] += 1
        self.duration[system].observe(seconds)
        self.size[system].observe(size)
        if not self.coredns:
            return
        if qtype is None:
            qtype = question_type(query)
        elif qtype not in MONITORED_TYPES:
            qtype = OTHER_TYPE
        stats = self.answers[system, "tcp" if tcp else "udp", qtype, reply_rcode(reply),
                             is_denial(reply)]
        stats.count += 1
        stats.response.observe(size)
        stats.request.observe(len(query))
        stats.duration.observe(seconds)

    def observe_tcp_hit(self, seconds, query: bytes):
        """The time of a prebuilt answer sent over TCP (counted by its slot already)."""
        self.duration["auth"].observe(seconds)
        self.core_duration["auth", question_type(query)].observe(seconds)

    def observe_fast_batch(self, count, seconds, forwarded=0):
        """Duration of a batch of prebuilt answers (``count`` from the wire cache,
        ``forwarded`` from the response cache), booked as that many equal queries. Once
        per batch of the UDP reader, which is often a query or two: kept to the least."""
        each = seconds / (count + forwarded)
        if count:
            self.duration["auth"].observe(each, count)
            if self.coredns:  # of no one query type (see coremetrics)
                self.core_duration["auth", None].observe(each, count)
        if forwarded:
            self.duration["cache"].observe(each, forwarded)
            if self.coredns:
                self.core_duration["cache", None].observe(each, forwarded)

    def error(self, cause):
        self.errors[cause] += 1

    def gauge(self, name, helptext, func):
        self.gauges[name] = (helptext, func)

    def labelled_counter(self, name, helptext, label, func):
        self.counters[name] = (helptext, label, func)

    def _fast_totals(self):
        requests = dict.fromkeys(SYSTEMS, 0)
        sizes = {s: Histogram(SIZE_BUCKETS) for s in SYSTEMS}
        for (system, size, *_), (count, nbytes, _) in self.fast_slots.items():
            if count:
                requests[system] += count
                sizes[system].counts[bisect.bisect_left(SIZE_BUCKETS, size)] += count
                sizes[system].total += nbytes
        return requests, sizes

    def collect(self):
        fast_requests, fast_sizes = self._fast_totals()
        requests = CounterMetricFamily("skydns_dns_request_count", "DNS requests by system",
                                       labels=["system"])
        for system in SYSTEMS:
            requests.add_metric([system], self.requests[system] + fast_requests[system])
        yield requests
        duration = HistogramMetricFamily("skydns_dns_request_duration_seconds",
                                         "Time to answer a request", labels=["system"])
        for system in SYSTEMS:
            h = self.duration[system]
            duration.add_metric([system], h.cumulative(), h.total)
        yield duration
        size = HistogramMetricFamily("skydns_dns_response_size_bytes", "Response size",
                                     labels=["system"])
        for system in SYSTEMS:
            h, f = self.size[system], fast_sizes[system]
            merged = Histogram(SIZE_BUCKETS)
            merged.add(h)
            merged.add(f)
            size.add_metric([system], merged.cumulative(), merged.total)
        yield size
        errors = CounterMetricFamily("skydns_dns_error_count", "Errors by cause",
                                     labels=["cause"])
        for cause, count in sorted(self.errors.items()):
            errors.add_metric([cause], count)
        yield errors
        misses = CounterMetricFamily("skydns_dns_cachemiss_count", "Cache misses by cache",
                                     labels=["cache"])
        if self.signature_misses is not None:
            self.cache_misses["signature"] = self.signature_misses()
        for cache in ("response", "signature", "wire"):
            misses.add_metric([cache], self.cache_misses[cache])
        yield misses
        for name, (helptext, label, func) in sorted(self.counters.items()):
            family = CounterMetricFamily(name, helptext, labels=[label])
            for value, count in sorted(func().items()):
                family.add_metric([value], count)
            yield family
        for name, (helptext, func) in sorted(self.gauges.items()):
            yield GaugeMetricFamily(name, helptext, value=func())

    def registry(self) -> CollectorRegistry:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        for collector in self.collectors:
            registry.register(collector)
        return registry
