"""Prometheus metrics with SkyDNS's names, kept as plain counters.

The UDP hot path must not take a lock per query, so counting is plain integer arithmetic on
lists owned by this module, and a custom prometheus_client collector turns them into
metric families when /metrics is scraped.
"""

from __future__ import annotations

import bisect
import collections

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)
from prometheus_client.registry import CollectorRegistry

SYSTEMS = ("auth", "cache", "recursive", "reverse", "stub")
DURATION_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SIZE_BUCKETS = (64, 128, 256, 512, 1024, 1500, 4096, 16384, 65535)


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

    def cumulative(self):
        out, running = [], 0
        for bound, count in zip(self.bounds + (float("inf"),), self.counts):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return out


class Metrics:
    """Everything skydns counts; one instance per process."""

    def __init__(self):
        self.requests = dict.fromkeys(SYSTEMS, 0)
        self.duration = {s: Histogram(DURATION_BUCKETS) for s in SYSTEMS}
        self.size = {s: Histogram(SIZE_BUCKETS) for s in SYSTEMS}
        self.errors = collections.Counter()
        self.cache_misses = collections.Counter()
        # Fast-path slots: [count, bytes] per (system, size); the hot path adds to them.
        self.fast_slots = {}
        self.gauges = {}  # name -> (help, callable returning a number)
        self.counters = {}  # name -> (help, label, callable returning {label value: count})
        self.signature_misses = None  # callable, set when DNSSEC is on

    def slot(self, system: str, size: int) -> list:
        """The counter pair that a prebuilt answer of this size and system adds to."""
        key = (system, size)
        slot = self.fast_slots.get(key)
        if slot is None:
            slot = self.fast_slots[key] = [0, 0]
        return slot

    def observe(self, system, seconds, size):
        self.requests[system] += 1
        self.duration[system].observe(seconds)
        self.size[system].observe(size)

    def observe_fast_batch(self, count, seconds):
        """Duration of a batch of fast-path answers, booked as ``count`` equal queries."""
        if count:
            self.duration["auth"].observe(seconds / count, count)

    def error(self, cause):
        self.errors[cause] += 1

    def gauge(self, name, helptext, func):
        self.gauges[name] = (helptext, func)

    def labelled_counter(self, name, helptext, label, func):
        self.counters[name] = (helptext, label, func)

    def _fast_totals(self):
        requests = dict.fromkeys(SYSTEMS, 0)
        sizes = {s: Histogram(SIZE_BUCKETS) for s in SYSTEMS}
        for (system, size), (count, nbytes) in self.fast_slots.items():
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
            merged.counts = [a + b for a, b in zip(h.counts, f.counts)]
            merged.total = h.total + f.total
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
        return registry
