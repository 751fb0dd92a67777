#!/usr/bin/env python3
"""How fast skydns loads and follows etcd, against a plain etcd3 client in the same run.

Three figures, each with a reference measured in the same run on the same etcd:

* **load**: seconds from starting skydns until it answers the last of N names, and the
  seconds skydns itself logged for its range read + load; reference: one paged range read
  of the same prefix by a bare etcd3 client.
* **change latency**: for M new names put one at a time, the time from calling put
  until skydns answers the name over UDP; reference: the time until a bare etcd3 watch on
  the same prefix sees the event (measured for the same puts).
* **memory**: skydns's VmRSS with N records, against a skydns serving an empty tree.

Run from the repository root (all traffic on 127.0.0.1; every process stopped by PID)::

    .venv/bin/python bench/etcd_sync.py --names 50000 --changes 200
"""

from __future__ import annotations

import argparse
import queue
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dnsperf_vs_dnsmasq import (LOOPBACK, REPO, BenchError, Proc, free_port,  # noqa: E402
                                load_records, name_for, skydns_command, start_etcd, vm_rss_kib,
                                wait_until)

sys.path.insert(0, str(REPO))
import dns.message  # noqa: E402
import dns.query  # noqa: E402
import dns.rcode  # noqa: E402
import etcd3  # noqa: E402

from skydns.record import encode_record  # noqa: E402

PREFIX = "/skydns/local/cluster/svc/bench/"


def answered(port: int, name: str) -> bool:
    reply = dns.query.udp(dns.message.make_query(name, "A"), LOOPBACK, port=port, timeout=0.5)
    return reply.rcode() == dns.rcode.NOERROR and bool(reply.answer)


def start_skydns(tmp: Path, etcd_port: int, name: str, package_dir: Path = REPO
                 ) -> tuple[Proc, int]:
    port = free_port()
    argv = [*skydns_command(package_dir), f"-addr={LOOPBACK}:{port}",
            f"-machines=http://{LOOPBACK}:{etcd_port}", "-domain=cluster.local.",
            f"-nameservers={LOOPBACK}:9", "-healthz-port=0"]
    return Proc(name, argv, tmp), port


def raw_range_read(etcd_port: int) -> tuple[float, int]:
    client = etcd3.MultiEndpointEtcd3Client(
        [etcd3.Endpoint(LOOPBACK, etcd_port, secure=False, time_retry=0.2,
                        opts=[("grpc.max_receive_message_length", 256 * 1024 * 1024)])],
        timeout=60, failover=True)
    try:
        started = time.perf_counter()
        count = sum(1 for _ in client.get_prefix(PREFIX))
        return time.perf_counter() - started, count
    finally:
        client.close()


def logged_load_seconds(proc: Proc) -> float | None:
    match = re.search(r"read (\d+) keys under \S+ in ([0-9.]+)s", proc.logpath.read_text())
    return float(match.group(2)) if match else None


def measure_changes(etcd_port: int, dns_port: int, count: int, timeout: float):
    """Latency from calling put until skydns answers the name, and until a bare watch
    sees the event (both include the put's own round trip)."""
    client = etcd3.MultiEndpointEtcd3Client(
        [etcd3.Endpoint(LOOPBACK, etcd_port, secure=False, time_retry=0.2)], timeout=10,
        failover=True)
    seen = queue.Queue()
    watch_id = client.add_watch_prefix_callback(
        "/skydns/local/cluster/svc/change/",
        lambda response: [seen.put((time.perf_counter(), ev.key)) for ev in
                          getattr(response, "events", [])])
    dns_ms, watch_ms = [], []
    try:
        for i in range(count):
            name = f"c{i}.change.svc.cluster.local."
            put_start = time.perf_counter()
            client.put(f"/skydns/local/cluster/svc/change/c{i}/x",
                       encode_record(f"10.200.{i // 250}.{i % 250 + 1}"))
            deadline = time.perf_counter() + timeout
            while not answered(dns_port, name):
                if time.perf_counter() > deadline:
                    raise BenchError(f"skydns did not answer {name} within {timeout}s")
                time.sleep(0.0002)
            dns_ms.append((time.perf_counter() - put_start) * 1000)
            when, _ = seen.get(timeout=timeout)
            watch_ms.append((when - put_start) * 1000)
    finally:
        client.cancel_watch(watch_id)
        client.close()
    return dns_ms, watch_ms


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", type=int, default=50000)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=120.0, help="bound for each wait")
    parser.add_argument("--skydns-dir", type=Path, default=REPO,
                        help="directory holding the skydns package to run (default: this "
                             "repository; e.g. a worktree of an older commit)")
    args = parser.parse_args(argv)
    procs = []
    with tempfile.TemporaryDirectory(prefix="skydns-bench-sync-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            etcd, etcd_port = start_etcd(tmp, None)
            procs.append(etcd)
            empty, empty_port = start_skydns(tmp, etcd_port, "skydns-empty", args.skydns_dir)
            procs.append(empty)
            wait_until("the empty skydns to answer", lambda: dns.query.udp(
                dns.message.make_query("version.bind.", "TXT", "CH"), LOOPBACK,
                port=empty_port, timeout=0.5), empty, timeout=args.timeout)
            time.sleep(1.0)
            empty_rss = vm_rss_kib(empty.pid)
            empty.stop()

            started = time.perf_counter()
            load_records(etcd_port, args.names)
            write_s = time.perf_counter() - started
            raw_s, raw_count = raw_range_read(etcd_port)

            sky, port = start_skydns(tmp, etcd_port, "skydns", args.skydns_dir)
            procs.append(sky)
            started = time.perf_counter()
            last = name_for(args.names - 1)
            wait_until(f"skydns to answer {last}", lambda: answered(port, last), sky,
                       timeout=args.timeout, interval=0.01)
            ready_s = time.perf_counter() - started
            loaded_s = logged_load_seconds(sky)
            rss = vm_rss_kib(sky.pid)
            dns_ms, watch_ms = measure_changes(etcd_port, port, args.changes, args.timeout)
        finally:
            for proc in reversed(procs):
                proc.stop()

    def q(values, pct):
        values = sorted(values)
        return values[min(len(values) - 1, int(len(values) * pct / 100))]

    print(f"\nnames={args.names} (written in {write_s:.1f}s) changes={args.changes}")
    print(f"load: skydns start-to-answer {ready_s:.2f}s; its own read+load "
          f"{loaded_s if loaded_s is not None else float('nan'):.2f}s; "
          f"bare etcd3 range read of {raw_count} keys {raw_s:.2f}s")
    if loaded_s:
        print(f"load ratio (skydns read+load / bare range read): {loaded_s / raw_s:.2f}")
    print(f"change latency ms (put called -> answered over UDP): median "
          f"{statistics.median(dns_ms):.2f} p90 {q(dns_ms, 90):.2f} max {max(dns_ms):.2f}")
    print(f"reference: bare watch event ms: median {statistics.median(watch_ms):.2f} "
          f"p90 {q(watch_ms, 90):.2f} max {max(watch_ms):.2f}")
    print(f"latency ratio (skydns / bare watch, medians): "
          f"{statistics.median(dns_ms) / max(statistics.median(watch_ms), 1e-3):.1f}")
    if rss and empty_rss:
        print(f"memory: VmRSS {rss / 1024:.1f} MiB with {args.names} records, "
              f"{empty_rss / 1024:.1f} MiB empty: "
              f"{(rss - empty_rss) * 1024 / args.names:.0f} bytes per record")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
