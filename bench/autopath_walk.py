#!/usr/bin/env python3
"""What an autopath walk costs in process: ``QueryHandler.handle`` for the first names of a
pod's lookups (``svcN.bench.app.svc.cluster.local``, found at ``svcN.bench.svc...``),
walked each time, kept from an earlier walk, and the same queries' NXDOMAIN for a client
that is no pod (the reference, same run). No sockets: the server's own time only.

    .venv/bin/python bench/autopath_walk.py [--queries 5000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import dns.message  # noqa: E402

from skydns.authority import Authority  # noqa: E402
from skydns.autopath import Autopath  # noqa: E402
from skydns.config import Config  # noqa: E402
from skydns.forward import Forwarder  # noqa: E402
from skydns.metrics import Metrics  # noqa: E402
from skydns.record import encode_record  # noqa: E402
from skydns.resolver import Resolver  # noqa: E402
from skydns.server import QueryHandler  # noqa: E402
from skydns.store import RecordStore  # noqa: E402
from skydns.wire import WireCache  # noqa: E402

POD, NOT_A_POD = ("127.0.0.1", 5353), ("127.0.0.9", 5353)


def handler(services: int) -> QueryHandler:
    config = Config(domain="cluster.local.", nameservers=["127.0.0.1:9"], autopath=True,
                    autopath_search=[])
    store = RecordStore()
    items = [(f"/skydns/local/cluster/svc/bench/svc{i}/x",
              encode_record(f"10.1.{i // 250}.{i % 250}"), 0) for i in range(services)]
    items.append(("/skydns/local/cluster/pod/app/127-0-0-1/x", encode_record(POD[0]), 0))
    store.replace_all(items, 1)
    authority = Authority(store, config)
    metrics = Metrics()
    resolver = Resolver(config, store, authority, Forwarder(None, config), metrics)
    out = QueryHandler(resolver, WireCache(), metrics, config)
    out.autopath = Autopath(store, config)
    return out


def per_query(h, queries, addr) -> float:
    started = time.perf_counter()
    for q in queries:
        h.handle(q, tcp=False, addr=addr)
    return (time.perf_counter() - started) / len(queries) * 1e6


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=5000)
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)
    h = handler(a.services)
    queries = [dns.message.make_query(f"svc{i % a.services}.bench.app.svc.cluster.local.",
                                      "A").to_wire() for i in range(a.queries)]
    first = dns.message.from_wire(h.handle(queries[0], tcp=False, addr=POD))
    assert [r.rdtype for r in first.answer] == [5, 1], first  # CNAME, then A
    for _ in range(a.rounds):
        nx = per_query(h, queries, NOT_A_POD)
        h.autopath.answers.clear()
        kept = per_query(h, queries, POD)  # the first ask of each name walks
        h.autopath.answers.clear()
        h.autopath.keep = lambda *args: None  # nothing kept: every query walks
        walked_each = per_query(h, queries, POD)
        del h.autopath.keep
        print(f"NXDOMAIN to a non-pod {nx:.1f} us; walked each time {walked_each:.1f} us "
              f"({walked_each / nx:.2f}x); kept after the first ask {kept:.1f} us "
              f"({kept / nx:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
