#!/usr/bin/env python3
"""A zone transfer of a cluster's zone (skydns -transfer-to), and what it does to queries.

Writes N services (an A leaf and a named port each, kube2sky's layout) into a temporary
etcd, starts skydns with -transfer-to=127.0.0.1, and runs kdig -t AXFR while a probe asks
one service's A record every 10 ms; the same probe runs first without a transfer, as the
reference (same run, same server). Prints the records, the time, and the probe's p50 /
p99 / max with and without. All traffic to 127.0.0.1; etcd and skydns are stopped by PID.

    .venv/bin/python bench/transfer.py [--services 10000] [--probe-seconds 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))

import dns.message  # noqa: E402
import dns.query  # noqa: E402

from procs import Etcd, Skydns  # noqa: E402
from cluster_scale import percentile  # noqa: E402
from skydns.record import encode_record  # noqa: E402


def write_services(client, count):
    items = []
    for i in range(count):
        ns, name = f"ns{i % 50}", f"s{i}"
        ip = f"10.{96 + i // 62500}.{i // 250 % 250}.{i % 250 + 1}"
        key = f"/skydns/local/cluster/svc/{ns}/{name}"
        items.append((f"{key}/{i:08x}", encode_record(ip)))
        items.append((f"{key}/_tcp/_http/{i:08x}",
                      encode_record(f"{name}.{ns}.svc.cluster.local.", port=80)))
    for start in range(0, len(items), 128):
        client.transaction(compare=[], failure=[], success=[
            client.transactions.put(k, v) for k, v in items[start:start + 128]])


def probe(port, stop, deadline):
    """Latencies (s) of one A query every 10 ms until ``stop`` is set or ``deadline``."""
    query = dns.message.make_query("s1.ns1.svc.cluster.local.", "A")
    out = []
    while not stop.is_set() and time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            dns.query.udp(query, "127.0.0.1", port=port, timeout=2)
            out.append(time.perf_counter() - started)
        except Exception:
            out.append(2.0)
        time.sleep(0.01)
    return out


def figures(latencies):
    ms = [latency * 1000 for latency in latencies]
    return (f"n={len(ms)} p50 {percentile(ms, 50):.2f} ms, p99 {percentile(ms, 99):.2f} ms, "
            f"max {max(ms):.1f} ms")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--probe-seconds", type=float, default=5.0,
                    help="length of the reference probe without a transfer (5)")
    a = ap.parse_args(argv)
    etcd = Etcd().start()
    sky = None
    try:
        client = etcd.client()
        write_services(client, a.services)
        client.close()
        sky = Skydns(etcd.url, "-domain=cluster.local.", "-transfer-to=127.0.0.1").start()
        quiet = probe(sky.port, threading.Event(), time.monotonic() + a.probe_seconds)
        stop, during = threading.Event(), []
        thread = threading.Thread(target=lambda: during.extend(
            probe(sky.port, stop, time.monotonic() + 600)))
        thread.start()
        started = time.perf_counter()
        out = subprocess.run(["kdig", "-p", str(sky.port), "@127.0.0.1", "-t", "AXFR",
                              "cluster.local.", "+noall", "+answer"],
                             capture_output=True, text=True, timeout=600)
        wall = time.perf_counter() - started
        stop.set()
        thread.join()
        records = len([line for line in out.stdout.splitlines() if line.strip()])
        if out.returncode != 0 or records < 2:
            print(out.stderr, file=sys.stderr)
            return 1
        print(f"{a.services} services: AXFR of {records} records (SOA twice) in {wall:.2f} s"
              f" ({records / wall:.0f} records/s)")
        print(f"probe without a transfer: {figures(quiet)}")
        print(f"probe during the transfer: {figures(during)}")
        print(f"ratio of p50s: {sorted(during)[len(during) // 2] / sorted(quiet)[len(quiet) // 2]:.1f}x")
        return 0
    finally:
        if sky is not None:
            sky.close()
        etcd.close()


if __name__ == "__main__":
    sys.exit(main())
