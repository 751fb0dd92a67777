"""CoreDNS-named metrics (``coredns_dns_requests_total``...) from a real skydns: every
query sent is counted once, by type, transport, zone and rcode; the caches' hits and the
upstream's requests match what the caching rules say; and the Grafana dashboard shipped in
manifests/ asks only for metrics skydns exports.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from procs import Skydns, free_port
from skydns import coremetrics
from skydns.metrics import Metrics, answer_key, is_denial

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DASHBOARD = os.path.join(ROOT, "manifests", "grafana-coredns-dashboard.json")
ZONE = "cluster.local."


def scrape(port) -> dict:
    """{(sample name, sorted labels without server/view): value} of one /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items()
                                  if k not in ("server", "view", "family")))
            out[sample.name, labels] = sample.value
    return out


def delta(after, before, name, **labels):
    """The change of one sample (0 when absent), or of the sum over every label set that
    holds ``labels`` when the sample has more labels than given."""
    def total(samples):
        return sum(value for (n, have), value in samples.items() if n == name
                   and set(labels.items()) <= set(have))
    return total(after) - total(before)


@pytest.fixture
def sky(etcd_client, upstream, start_skydns):
    etcd_client.put("/skydns/local/cluster/svc/ns/web/x", json.dumps({"host": "10.0.0.1"}))
    port = free_port()
    server = start_skydns("-domain=cluster.local.", upstream=upstream.address,
                          env={"PROMETHEUS_PORT": str(port)})
    server.metrics_port = port
    return server


def test_every_query_is_counted_once_by_what_coredns_labels(sky):
    before = scrape(sky.metrics_port)
    web, nope = f"web.ns.svc.{ZONE}", f"nope.ns.svc.{ZONE}"
    for _ in range(5):
        assert sky.query(web, "A").answer
    for _ in range(4):
        assert sky.query(nope, "A").rcode() == 3
    for _ in range(3):
        reply = sky.query(web, "AAAA")
        assert reply.rcode() == 0 and not reply.answer
    for _ in range(3):
        assert sky.query("www.example.com.", "A").answer
    for _ in range(2):
        assert sky.query(web, "A", tcp=True).answer
    after = scrape(sky.metrics_port)
    total = 5 + 4 + 3 + 3 + 2
    name = "coredns_dns_requests_total"
    assert delta(after, before, name) == total
    assert delta(after, before, name, type="A", zone=ZONE) == 5 + 4 + 2
    assert delta(after, before, name, type="AAAA", zone=ZONE) == 3
    assert delta(after, before, name, zone=".") == 3
    assert delta(after, before, name, proto="tcp") == 2
    responses = "coredns_dns_responses_total"
    assert delta(after, before, responses) == total
    assert delta(after, before, responses, rcode="NXDOMAIN", zone=ZONE) == 4
    assert delta(after, before, responses, rcode="NOERROR", zone=".") == 3
    assert delta(after, before, responses, plugin="forward") == 1  # then the cache's
    # every answer timed and sized once
    assert delta(after, before, "coredns_dns_request_duration_seconds_count") == total
    assert delta(after, before, "coredns_dns_request_size_bytes_count") == total
    assert delta(after, before, "coredns_dns_response_size_bytes_count") == total
    # the caches: the first answer of a name is computed; a denial is kept from the
    # second time it is asked; forwarded answers go to the response cache
    hits = "coredns_cache_hits_total"
    assert delta(after, before, hits, type="success", zones=ZONE) == (5 - 1) + 2
    assert delta(after, before, hits, type="denial", zones=ZONE) == (4 - 2) + (3 - 2)
    assert delta(after, before, hits, type="success", zones=".") == 3 - 1
    assert after["coredns_cache_entries", (("type", "denial"), ("zones", ZONE))] == 2
    assert after["coredns_cache_entries", (("type", "success"), ("zones", "."))] == 1
    # the upstream was asked once
    to = f"127.0.0.1:{sky.upstream.split(':')[1]}"
    assert delta(after, before, "coredns_forward_requests_total", to=to) == 1
    assert delta(after, before, "coredns_forward_responses_total", to=to,
                 rcode="NOERROR") == 1
    assert delta(after, before, "coredns_forward_request_duration_seconds_count",
                 to=to) == 1
    build = [labels for (n, labels) in after if n == "coredns_build_info"]
    assert build and dict(build[0])["version"].startswith("skydns-kube-")


def test_a_failing_upstream_is_counted(etcd, start_skydns):
    port = free_port()
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: refused at once
    server = start_skydns("-domain=cluster.local.", f"-nameservers={dead}",
                          env={"PROMETHEUS_PORT": str(port)})
    before = scrape(port)
    assert server.query("www.example.com.", "A").rcode() == 2  # SERVFAIL
    after = scrape(port)
    assert delta(after, before, "coredns_forward_requests_total", to=dead) == 1
    assert delta(after, before, "coredns_forward_healthcheck_failures_total", to=dead) == 1
    assert delta(after, before, "coredns_forward_responses_total", to=dead) == 0
    assert delta(after, before, "coredns_dns_responses_total", rcode="SERVFAIL") == 1


def test_the_dashboard_asks_only_for_metrics_skydns_exports(sky):
    for name in ("web.ns.svc.cluster.local.", "www.example.com."):
        sky.query(name, "A")
    with urllib.request.urlopen(f"http://127.0.0.1:{sky.metrics_port}/metrics") as reply:
        families = list(text_string_to_metric_families(reply.read().decode()))
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "gauge": ("",)}  # a family without samples yet (no failure so far) counts
    exported = {family.name + suffix for family in families
                for suffix in suffixes.get(family.type, ("",))}
    with open(DASHBOARD) as fh:
        dashboard = json.load(fh)
    exprs = [target["expr"] for panel in dashboard["panels"]
             for target in panel.get("targets", [])]
    assert len(exprs) >= 10
    used = {name for expr in exprs
            for name in re.findall(r"\b((?:coredns|skydns)_[a-z_]+)\b", expr)}
    assert used and used <= exported, used - exported
    # every label a query groups or filters by is one skydns sets
    labels = {label for expr in exprs
              for group in re.findall(r"by \(([^)]*)\)", expr)
              for label in map(str.strip, group.split(","))}
    assert labels <= {"le", "proto", "type", "zone", "rcode", "to", "zones", "instance",
                      "server", "plugin"}, labels


# -- pure parts ------------------------------------------------------------------------------


def query_bytes(name, rdtype):
    import dns.message
    return dns.message.make_query(name, rdtype).to_wire()


def test_answer_key_reads_type_rcode_and_denial():
    query = query_bytes("a.b.", "SRV")
    nx = query[:2] + b"\x81\x83" + query[4:]
    nodata = query[:2] + b"\x81\x80" + query[4:]
    answered = query[:2] + b"\x81\x80" + query[4:6] + b"\x00\x01" + query[8:]
    assert answer_key(nx, query) == (33, 3, True, len(query))
    assert answer_key(nodata, query)[1:3] == (0, True)
    assert answer_key(answered, query)[1:3] == (0, False)
    assert not is_denial(query[:2] + b"\x81\x82" + query[4:])  # SERVFAIL: not a denial


def test_labels_follow_coredns():
    assert coremetrics.type_label(1) == "A"
    assert coremetrics.type_label(65280) == "other"  # a private type: one label value
    assert coremetrics.type_label(None) == "batch"
    assert coremetrics.rcode_label(3) == "NXDOMAIN"

    class Config:
        listen = ("0.0.0.0", 53)
    assert coremetrics.server_label(Config) == "dns://:53"
    assert coremetrics.family_label(Config) == "1"
    Config.listen = ("::1", 5353)
    assert coremetrics.server_label(Config) == "dns://::1:5353"
    assert coremetrics.family_label(Config) == "2"


def test_the_general_path_counts_sizes_in_coredns_buckets():
    metrics = Metrics()
    query = query_bytes("x.cluster.local.", "A")
    reply = query[:2] + b"\x85\x80" + query[4:6] + b"\x00\x01" + query[8:] + bytes(150)
    metrics.observe("auth", 0.0003, reply, query, tcp=True)
    (key, stats), = metrics.answers.items()
    assert key == ("auth", "tcp", 1, 0, False)
    assert stats.count == 1 and stats.response.total == len(reply)
    assert stats.response.counts[2] == 1  # 100 < size <= 200
    assert stats.request.counts[1] == 1 and stats.request.total == len(query)  # 0 < size <= 100


def test_unnamed_query_types_share_one_counter():
    """A client asking for every type number must not grow the counters: types CoreDNS
    does not name are counted as one ("other")."""
    metrics = Metrics()
    for rdtype in range(1000, 3000):
        query = query_bytes("x.cluster.local.", rdtype)
        metrics.observe("auth", 0.0001, query[:2] + b"\x85\x83" + query[4:], query)
    (key, stats), = metrics.answers.items()
    assert stats.count == 2000 and coremetrics.type_label(key[2]) == "other"
