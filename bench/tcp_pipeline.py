#!/usr/bin/env python3
"""Memory of a DNS server under one TCP client that pipelines queries and never reads,
skydns against dnsmasq measured in the same run.

Starts a throw-away etcd with one SkyDNS A record (``svc0.bench.svc.cluster.local.``), a
skydns serving it and a dnsmasq serving the same name from a hosts file. For each server in
turn it opens one TCP connection and writes ``--queries`` copies of the same A query
without ever reading a reply, until all are written, or the kernel took nothing for
``--stall`` seconds (the server stopped reading), or ``--max-seconds`` passed. It then
reports the server's VmRSS before and after (summed over its processes: dnsmasq forks a
child per TCP connection), its peak (VmHWM), whether the server still answers another
client over UDP and over a second TCP connection while that connection is stalled, and
its VmRSS once the connection is closed. The figures to read are the growth of each server
and the ratio of their resident memory afterwards.

``--skydns-dir DIR`` runs the skydns package found in DIR (e.g. an older checkout) instead
of this repository's, to measure a before figure with the same script.

All traffic goes to 127.0.0.1; every process started here is stopped by its PID.

Run from the repository root::

    .venv/bin/python bench/tcp_pipeline.py --queries 2000000
    .venv/bin/python bench/tcp_pipeline.py --skydns-dir /path/to/old/checkout
"""

from __future__ import annotations

import argparse
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dnsperf_vs_dnsmasq import (LOOPBACK, REPO, BenchError, Proc, dns_probe,  # noqa: E402
                                free_port, load_records, log, name_for, skydns_command,
                                start_dnsmasq, start_etcd, stop_all, wait_until)

import dns.message  # noqa: E402
import dns.query  # noqa: E402
import dns.rcode  # noqa: E402


def status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_kib(proc: Proc, field: str = "VmRSS") -> int:
    return sum(status_kib(pid, field) for pid in proc.tree())


def start_skydns(tmp: Path, etcd_port: int, package_dir: Path, timeout: float):
    port = free_port()
    argv = [*skydns_command(package_dir), f"-addr={LOOPBACK}:{port}", f"-machines=http://{LOOPBACK}:{etcd_port}",
            "-domain=cluster.local.", f"-nameservers={LOOPBACK}:9", "-healthz-port=0"]
    proc = Proc("skydns", argv, tmp)
    wait_until("a NOERROR A answer for svc0", lambda: dns_probe(port), proc,
               timeout=timeout, interval=0.25)
    return proc, port


def settle(proc: Proc, seconds: float = 10.0) -> int:
    """VmRSS once it stops moving (two samples 0.5 s apart within 512 KiB), or after
    ``seconds``: a server may still be working through what the kernel had buffered."""
    last = tree_kib(proc)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = tree_kib(proc)
        if abs(now - last) < 512:
            return now
        last = now
    return last


def timed(fn) -> float | None:
    """Milliseconds ``fn`` took to get a NOERROR answer, or None if it failed."""
    started = time.perf_counter()
    try:
        reply = fn()
    except Exception:  # noqa: BLE001 - a timeout is the answer here
        return None
    if reply.rcode() != dns.rcode.NOERROR or not reply.answer:
        return None
    return (time.perf_counter() - started) * 1000


def pipeline(name: str, proc: Proc, port: int, args) -> dict:
    query = dns.message.make_query(name_for(0), "A")
    wire = query.to_wire()
    dns.query.tcp(query, LOOPBACK, port=port, timeout=5)  # warm the server's TCP path
    time.sleep(1.0)
    res = {"rss_before": tree_kib(proc), "hwm_before": tree_kib(proc, "VmHWM")}
    framed = len(wire).to_bytes(2, "big") + wire
    chunk = memoryview(framed * (65536 // len(framed)))
    total = len(framed) * args.queries
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect((LOOPBACK, port))
    sock.setblocking(False)
    sent = 0
    peak = res["rss_before"]
    started = last_progress = last_sample = time.monotonic()
    try:
        while sent < total:
            now = time.monotonic()
            if now - last_progress > args.stall or now - started > args.max_seconds:
                break
            if now - last_sample > 0.25:
                peak = max(peak, tree_kib(proc))
                last_sample = now
            offset = sent % len(chunk)
            piece = chunk[offset:offset + min(len(chunk) - offset, total - sent)]
            try:
                n = sock.send(piece)
            except BlockingIOError:
                select.select([], [sock], [], 0.05)
                continue
            except (BrokenPipeError, ConnectionResetError):
                res["closed_by_server"] = True  # dnsmasq: at most 100 queries a connection
                break
            sent += n
            last_progress = time.monotonic()
        res["seconds"] = last_progress - started
        res["sent"] = sent // len(framed)
        res["stalled"] = sent < total and not res.get("closed_by_server")
        res["rss_after"] = settle(proc)
        res["peak"] = max(peak, res["rss_after"], tree_kib(proc, "VmHWM"))
        res["udp_ms"] = timed(lambda: dns.query.udp(dns.message.make_query(name_for(0), "A"),
                                                    LOOPBACK, port=port, timeout=2))
        res["tcp_ms"] = timed(lambda: dns.query.tcp(dns.message.make_query(name_for(0), "A"),
                                                    LOOPBACK, port=port, timeout=2))
    finally:
        sock.close()
    time.sleep(2.0)
    res["rss_closed"] = tree_kib(proc)
    res["alive"] = proc.alive()
    log(f"{name}: {res['sent']} queries written in {res['seconds']:.1f} s"
        f"{' (then the server stopped reading)' if res['stalled'] else ''}"
        f"{' (then the server closed the connection)' if res.get('closed_by_server') else ''}")
    return res


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=2_000_000,
                    help="queries pipelined on the one connection (2000000)")
    ap.add_argument("--stall", type=float, default=3.0,
                    help="stop writing after this many seconds without progress (3)")
    ap.add_argument("--max-seconds", type=float, default=120.0,
                    help="stop writing after this many seconds in any case (120)")
    ap.add_argument("--skydns-dir", type=Path, default=REPO,
                    help="directory holding the skydns package to run (this repository)")
    ap.add_argument("--only", choices=("both", "skydns", "dnsmasq"), default="both")
    ap.add_argument("--startup-timeout", type=float, default=30)
    args = ap.parse_args(argv)
    if not 1 <= args.queries <= 50_000_000:
        ap.error("--queries must be 1..50000000")
    package_dir = args.skydns_dir.resolve()
    if args.only != "dnsmasq" and not (package_dir / "skydns" / "__main__.py").is_file():
        ap.error(f"no skydns package in {package_dir}")
    servers = ["skydns", "dnsmasq"] if args.only == "both" else [args.only]

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)

    tmp = Path(tempfile.mkdtemp(prefix="skydns-bench-tcp-"))
    procs: list[Proc] = []
    results: dict[str, dict] = {}
    rc = 0
    try:
        if "skydns" in servers:
            etcd, etcd_port = start_etcd(tmp, None)
            procs.append(etcd)
            load_records(etcd_port, 1)
            sky, port = start_skydns(tmp, etcd_port, package_dir, args.startup_timeout)
            procs.append(sky)
            log(f"skydns from {package_dir} on {LOOPBACK}:{port} (pid {sky.pid})")
            results["skydns"] = pipeline("skydns", sky, port, args)
            sky.stop()
        if "dnsmasq" in servers:
            dm, port = start_dnsmasq(tmp, 1, "", args.startup_timeout)
            procs.append(dm)
            log(f"dnsmasq on {LOOPBACK}:{port} (pid {dm.pid})")
            results["dnsmasq"] = pipeline("dnsmasq", dm, port, args)
            dm.stop()

        print()
        print(f"queries={args.queries} stall={args.stall:g}s skydns from {package_dir}")
        print(f"{'server':<8} {'sent':>9} {'ended':>7} {'RSS before':>10} {'after':>7} "
              f"{'grown':>7} {'peak':>7} {'closed':>7} {'udp ms':>7} {'tcp ms':>7}   (MiB)")
        for s, r in results.items():
            def ms(v):
                return "fail" if v is None else f"{v:.1f}"
            ended = ("closed" if r.get("closed_by_server") else
                     "stalled" if r["stalled"] else "all")
            print(f"{s:<8} {r['sent']:>9} {ended:>7} "
                  f"{mib(r['rss_before']):>10} {mib(r['rss_after']):>7} "
                  f"{mib(r['rss_after'] - r['rss_before']):>7} {mib(r['peak']):>7} "
                  f"{mib(r['rss_closed']):>7} {ms(r['udp_ms']):>7} {ms(r['tcp_ms']):>7}")
        if len(results) == 2:
            sky, dm = results["skydns"], results["dnsmasq"]
            print(f"\nVmRSS after, skydns/dnsmasq: ratio {sky['rss_after'] / dm['rss_after']:.1f}"
                  f" (before: {sky['rss_before'] / dm['rss_before']:.1f})")
            floor = 1024
            print(f"growth, skydns/dnsmasq: ratio "
                  f"{max(sky['rss_after'] - sky['rss_before'], 0) / max(dm['rss_after'] - dm['rss_before'], floor):.1f}"
                  f" (dnsmasq's growth counted as at least 1 MiB)")
        for s, r in results.items():
            if not r["alive"] or r["udp_ms"] is None or r["tcp_ms"] is None:
                print(f"WARNING: {s} did not answer other clients while stalled "
                      f"(alive={r['alive']})")
                rc = 1
    except BenchError as exc:
        log(f"error: {exc}")
        rc = 2
    except KeyboardInterrupt as exc:
        log(f"interrupted ({exc or 'Ctrl-C'}); stopping")
        rc = 130
    finally:
        stop_all(procs)
        shutil.rmtree(tmp, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
