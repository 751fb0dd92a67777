"""skydns's counters under the names and labels CoreDNS exports, so that dashboards and
alerts written for CoreDNS (``coredns_dns_requests_total``, ``coredns_cache_hits_total``,
``coredns_forward_responses_total``...) work unchanged. Served beside the SkyDNS names on
the same /metrics; nothing is counted twice, the families are derived when scraped.

How skydns's parts map to CoreDNS's labels:
- ``zone``: the cluster domain for what is answered from etcd (``system`` auth), ``.``
  for everything else (forwarded, stub zones, reverse names, the response cache), as a
  Corefile with a ``cluster.local`` block and a ``.`` block reports them.
- ``plugin`` (who wrote the response): ``cache`` for prebuilt answers and the response
  cache, ``etcd`` for answers computed from the records, ``forward`` for relayed ones.
- ``type`` of ``coredns_dns_request_duration_seconds``: the UDP reader answers prebuilt
  replies in batches and times each batch, not each query, so those durations (the batch's
  time over its size) carry ``type="batch"``; every other answer has its query type.
- ``coredns_cache_*``: the wire cache (prebuilt answers, ``zones`` the domain) and the
  response cache (forwarded answers, ``zones`` ``.``); ``type`` is ``success`` or
  ``denial`` (NXDOMAIN, or NOERROR without answers), as CoreDNS splits them.
- ``coredns_forward_healthcheck_failures_total``: skydns has no separate health check; a
  query that fails on an upstream (timeout, refusal, error) marks it down until a probe
  answers, and is counted here.
"""

from __future__ import annotations

import collections
import sys

import dns.rcode
import dns.rdatatype
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)

from . import __version__
from .metrics import (MONITORED_TYPES, core_durations, core_sizes, is_denial,
                      upstream_label)

PLUGIN_OF_SYSTEM = {"auth": "etcd", "reverse": "etcd", "cache": "cache",
                    "recursive": "forward", "stub": "forward"}


def type_label(qtype) -> str:
    """A counted query type as CoreDNS labels it (``metrics.question_type`` kept only the
    types it names); None is the batch-timed prebuilt answers' (see above)."""
    if qtype is None:
        return "batch"
    return dns.rdatatype.to_text(qtype) if qtype in MONITORED_TYPES else "other"


def rcode_label(rcode: int) -> str:
    try:
        return dns.rcode.to_text(rcode)
    except ValueError:
        return str(rcode)


def server_label(config) -> str:
    """``dns://:53`` for all addresses, ``dns://HOST:PORT`` otherwise (CoreDNS's form)."""
    host, port = config.listen
    host = "" if host in ("", "0.0.0.0", "::") else host
    return f"dns://{host}:{port}"


def family_label(config) -> str:
    """1 for IPv4, 2 for IPv6: the family of the address the DNS socket is bound to."""
    return "2" if ":" in config.listen[0] else "1"


class CoreDNSCollector:
    """A prometheus_client collector over one skydns's Metrics, wire cache, resolver
    (its response cache) and forwarder."""

    def __init__(self, metrics, cache, resolver, forwarder):
        self.metrics = metrics
        self.cache = cache
        self.resolver = resolver
        self.forwarder = forwarder

    @property
    def config(self):
        return self.resolver.config  # the live one: /skydns/config may change the domain

    def zone(self, system) -> str:
        return self.config.domain_text if system == "auth" else "."

    def _answers(self):
        """(system, prebuilt, proto, qtype, rcode, denial) -> count, and per (zone, proto)
        the request and response size histograms, of the general path's answers and of
        the prebuilt ones."""
        counts = {}
        requests = collections.defaultdict(core_sizes)
        responses = collections.defaultdict(core_sizes)
        for (system, proto, *labels), stats in list(self.metrics.answers.items()):
            counts[(system, False, proto, *labels)] = stats.count
            zone = self.zone(system)
            requests[zone, proto].add(stats.request)
            responses[zone, proto].add(stats.response)
        for key, (count, _, over_tcp) in list(self.metrics.fast_slots.items()):
            system, size, qtype, rcode, denial, query_size = key
            for proto, n in (("udp", count - over_tcp), ("tcp", over_tcp)):
                if n:
                    key = (system, True, proto, qtype, rcode, denial)
                    counts[key] = counts.get(key, 0) + n
                    responses[self.zone(system), proto].observe(size, n)
                    requests[self.zone(system), proto].observe(query_size, n)
        return counts, requests, responses

    def _durations(self):
        """(zone, type label) -> Histogram of every answer's duration."""
        merged = collections.defaultdict(core_durations)
        timed = [((system, qtype), stats.duration) for (system, _, qtype, _, _), stats
                 in list(self.metrics.answers.items())]
        for (system, qtype), histogram in timed + list(self.metrics.core_duration.items()):
            merged[self.zone(system), type_label(qtype)].add(histogram)
        return merged

    def collect(self):
        server, family = server_label(self.config), family_label(self.config)
        counts, request_sizes, response_sizes = self._answers()
        requests = CounterMetricFamily(
            "coredns_dns_requests", "Counter of DNS requests made per zone, protocol and "
            "family.", labels=["server", "zone", "view", "proto", "family", "type"])
        responses = CounterMetricFamily(
            "coredns_dns_responses", "Counter of response status codes.",
            labels=["server", "zone", "view", "rcode", "plugin"])
        by_request, by_response = {}, {}
        for (system, prebuilt, proto, qtype, rcode, _), count in counts.items():
            zone = self.zone(system)
            key = (zone, proto, type_label(qtype))
            by_request[key] = by_request.get(key, 0) + count
            plugin = "cache" if prebuilt else PLUGIN_OF_SYSTEM.get(system, system)
            key = (zone, rcode_label(rcode), plugin)
            by_response[key] = by_response.get(key, 0) + count
        for (zone, proto, qtype), count in sorted(by_request.items()):
            requests.add_metric([server, zone, "", proto, family, qtype], count)
        for (zone, rcode, plugin), count in sorted(by_response.items()):
            responses.add_metric([server, zone, "", rcode, plugin], count)
        yield requests
        yield responses
        duration = HistogramMetricFamily(
            "coredns_dns_request_duration_seconds", "Histogram of the time (in seconds) "
            "each request took per zone.", labels=["server", "zone", "view", "type"])
        for (zone, qtype), histogram in sorted(self._durations().items()):
            duration.add_metric([server, zone, "", qtype], histogram.cumulative(),
                                histogram.total)
        yield duration
        for name, helptext, histograms in (
                ("coredns_dns_request_size_bytes", "Size of the EDNS0 UDP buffer in bytes "
                 "(64K for TCP) per zone and protocol.", request_sizes),
                ("coredns_dns_response_size_bytes", "Size of the returned response in "
                 "bytes.", response_sizes)):
            family_ = HistogramMetricFamily(name, helptext,
                                            labels=["server", "zone", "view", "proto"])
            for (zone, proto), histogram in sorted(histograms.items()):
                family_.add_metric([server, zone, "", proto], histogram.cumulative(),
                                   histogram.total)
            yield family_
        yield from self._cache(server, counts)
        yield from self._forward()
        panics = CounterMetricFamily("coredns_panics", "A metrics that counts the number "
                                     "of panics (here: queries that failed inside skydns).")
        panics.add_metric([], self.metrics.errors["internal"])
        yield panics
        build = GaugeMetricFamily("coredns_build_info", "A metric with a constant '1' value "
                                  "labeled by version, revision, and goversion from which "
                                  "CoreDNS was built (here: skydns and its Python).",
                                  labels=["version", "revision", "goversion"])
        build.add_metric([f"skydns-kube-{__version__}", "",
                          "python" + ".".join(map(str, sys.version_info[:3]))], 1)
        yield build

    def _cache(self, server, counts):
        """The wire cache as the cluster zone's cache, the response cache as ``.``'s."""
        domain = self.config.domain_text
        wire, rcache = self.cache, self.resolver.rcache
        entries = GaugeMetricFamily("coredns_cache_entries", "The number of elements in "
                                    "the cache.", labels=["server", "type", "zones", "view"])
        denials = len(wire.negative)
        entries.add_metric([server, "success", domain, ""], len(wire) - denials)
        entries.add_metric([server, "denial", domain, ""], denials)
        forwarded_denials = sum(1 for entry in rcache.entries.values()
                                if is_denial(entry.reply))
        entries.add_metric([server, "success", ".", ""], len(rcache) - forwarded_denials)
        entries.add_metric([server, "denial", ".", ""], forwarded_denials)
        yield entries
        hits = CounterMetricFamily("coredns_cache_hits", "The count of cache hits.",
                                   labels=["server", "type", "zones", "view"])
        by_kind = {}
        for (system, prebuilt, _, _, _, denial), count in counts.items():
            if system == "cache":  # the response cache (UDP reader or general path)
                zones = "."
            elif prebuilt:         # the wire cache
                zones = self.zone(system)
            else:
                continue
            key = ("denial" if denial else "success", zones)
            by_kind[key] = by_kind.get(key, 0) + count
        for kind in ("success", "denial"):
            for zones in (domain, "."):
                hits.add_metric([server, kind, zones, ""], by_kind.get((kind, zones), 0))
        yield hits
        misses = CounterMetricFamily("coredns_cache_misses", "The count of cache misses. "
                                     "Deprecated, derive misses from cache hits/requests "
                                     "counters.", labels=["server", "zones", "view"])
        misses.add_metric([server, domain, ""], self.metrics.cache_misses["wire"])
        misses.add_metric([server, ".", ""], self.metrics.cache_misses["response"])
        yield misses
        evictions = CounterMetricFamily("coredns_cache_evictions", "The count of cache "
                                        "evictions.", labels=["server", "type", "zones",
                                                              "view"])
        evictions.add_metric([server, "success", domain, ""],
                             wire.evicted - wire.evicted_denials)
        evictions.add_metric([server, "denial", domain, ""], wire.evicted_denials)
        evictions.add_metric([server, "success", ".", ""], rcache.evicted)
        yield evictions

    def _forward(self):
        stats = self.forwarder.stats
        requests = CounterMetricFamily("coredns_forward_requests", "Counter of requests "
                                       "made per upstream.", labels=["to"])
        for server, count in sorted(stats.requests.items()):
            requests.add_metric([upstream_label(server)], count)
        yield requests
        responses = CounterMetricFamily("coredns_forward_responses", "Counter of responses "
                                        "received per upstream.", labels=["to", "rcode"])
        duration = HistogramMetricFamily("coredns_forward_request_duration_seconds",
                                         "Histogram of the time each request took.",
                                         labels=["to", "rcode"])
        for (server, rcode), count in sorted(stats.responses.items()):
            labels = [upstream_label(server), rcode_label(rcode)]
            responses.add_metric(labels, count)
            histogram = stats.durations[server, rcode]
            duration.add_metric(labels, histogram.cumulative(), histogram.total)
        yield responses
        yield duration
        failures = CounterMetricFamily("coredns_forward_healthcheck_failures", "Counter of "
                                       "the number of failed healthchecks (here: failed "
                                       "queries, which mark an upstream down).",
                                       labels=["to"])
        for server, count in sorted(stats.failures.items()):
            failures.add_metric([upstream_label(server)], count)
        yield failures
        rejects = CounterMetricFamily("coredns_forward_max_concurrent_rejects", "Counter of "
                                      "the number of queries rejected because the "
                                      "concurrent queries were at maximum.")
        rejects.add_metric([], stats.rejects)
        yield rejects

