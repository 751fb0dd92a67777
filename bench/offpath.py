#!/usr/bin/env python3
"""skydns against dnsmasq off the hot path (issue 8), every load in one table, same run.

Loads (each one row: skydns figures, dnsmasq figures, the ratio, the issue's target):

* ``hits``: repeated A queries for the N existing names (as dnsperf_vs_dnsmasq.py).
* ``ndots``: what pods with ``ndots:5`` send for service names (A+AAAA down the search path,
  stopping at the first answer): NXDOMAINs, hits and NODATAs, asked repeatedly.
* ``autopath``: the ndots mix's lookups from a pod that skydns knows (``-autopath``, a pod
  record for 127.0.0.1 in the mix's namespace): only each lookup's first name is sent, and
  skydns walks the rest; dnsmasq gets the whole ndots mix. Compared in lookups a second
  (one name and type resolved), since the two send different numbers of queries for one.
* ``misses``: unique nonexistent names in the zone, each asked once.
* ``fwd-cached``: 1,000 external names asked repeatedly, forwarded to an upstream dnsmasq
  (TTL 300); skydns with ``-rcache 10000``, against a caching dnsmasq forwarder.
* ``fwd-uncached``: unique external names, each asked once; skydns with its defaults,
  against a dnsmasq forwarder with ``--cache-size=0``.
* ``probe-misses``: a one-at-a-time probe for an existing name (50 qps, 0.5 s timeout) while
  dnsperf floods unique misses at full rate: probe p50/p99/loss.
* ``probe-wide``: the same probe while 5 wide queries a second arrive (skydns:
  ``*.svc.cluster.local SRV`` and ``cluster.local SRV``, EDNS 1232; dnsmasq: a hosts name
  with as many A records): probe p50/p99/loss and server CPU seconds per wide query.

Servers are pinned to CPU 0, dnsperf, the probe, the wide-query sender and the upstream
dnsmasq to CPU 1. Runs are interleaved (skydns, dnsmasq, skydns, ...). Every answer kind is
checked on both servers before measuring, and the response codes of every run after it.
All traffic goes to 127.0.0.1; every process started here is stopped by its PID (also on
Ctrl-C and SIGTERM) and the temporary directory is removed.

Run from the repository root::

    .venv/bin/python bench/offpath.py                       # 7 loads, 3 x 10 s each
    .venv/bin/python bench/offpath.py --seconds 3 --runs 1  # quick check
    .venv/bin/python bench/offpath.py --only misses,probe-misses --skydns-dir /tmp/before

See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# --------------------------------------------------------------------------- client child
# The probe and the wide-query sender run as separate processes pinned to the client CPU
# (``offpath.py --_client`` with a JSON spec on stdin, JSON result on stdout). This part
# needs only the standard library, so the child starts fast.

LOOPBACK = "127.0.0.1"


def _client_probe(sock, spec, queries, start, end, max_sends):
    """One query at a time at a fixed rate: latency of each, or lost after the timeout."""
    interval = 1.0 / spec["qps"]
    timeout = spec["timeout"]
    expect = bytes.fromhex(spec["expect"]) if spec.get("expect") else b""
    lat, lost, wrong, sent, k = [], 0, 0, 0, 0
    while sent < max_sends:
        slot = start + k * interval
        if slot >= end:
            break
        now = time.monotonic()
        if slot > now:
            time.sleep(slot - now)
        qid = random.getrandbits(16)
        wire = struct.pack("!H", qid) + queries[sent % len(queries)][2:]
        t0 = time.perf_counter()
        try:
            sock.send(wire)
        except OSError:
            pass
        sent += 1
        got = None
        for _ in range(1000):                 # bounded: stale replies are skipped
            left = t0 + timeout - time.perf_counter()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                data = sock.recv(65535)
            except socket.timeout:
                break
            except OSError:                   # e.g. ICMP port unreachable: server gone
                time.sleep(min(left, 0.01))
                continue
            if len(data) >= 12 and data[:2] == wire[:2]:
                got = data
                break
        if got is None:
            lost += 1
        else:
            lat.append(time.perf_counter() - t0)
            rcode, ancount = got[3] & 0x0F, struct.unpack("!H", got[6:8])[0]
            if rcode != 0 or ancount == 0 or (expect and expect not in got[12:]):
                wrong += 1
        # The next free slot: a slow answer skips the slots it overran (no catch-up burst).
        k = max(k + 1, math.ceil((time.monotonic() - start) / interval))
    return {"sent": sent, "lost": lost, "wrong": wrong, "latencies": lat}


def _client_blast(sock, spec, queries, start, end, max_sends):
    """Send at a fixed rate without waiting; collect replies (TC flag, size, latency)."""
    interval = 1.0 / spec["qps"]
    sock.setblocking(False)
    pending: dict[int, float] = {}
    sent = replies = tc = nbytes = 0
    lat = []
    drain_end = end + spec.get("drain", 2.0)
    next_send = start
    for _ in range(10_000_000):               # bounded; exits on time below
        now = time.monotonic()
        if now < end and now >= next_send and sent < max_sends:
            qid = sent % 65536
            wire = struct.pack("!H", qid) + queries[sent % len(queries)][2:]
            try:
                sock.send(wire)
                pending[qid] = time.perf_counter()
            except OSError:
                pass
            sent += 1
            next_send += interval
            continue
        if now >= end and (not pending or now >= drain_end):
            break
        wait = (next_send - now) if now < end else (drain_end - now)
        ready, _, _ = select.select([sock], [], [], max(0.0, min(wait, 0.05)))
        if not ready:
            continue
        for _ in range(100):
            try:
                data = sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            if len(data) < 12:
                continue
            t_sent = pending.pop(struct.unpack("!H", data[:2])[0], None)
            if t_sent is None:
                continue
            replies += 1
            nbytes += len(data)
            tc += bool(data[2] & 0x02)
            lat.append(time.perf_counter() - t_sent)
    return {"sent": sent, "replies": replies, "tc": tc, "bytes": nbytes, "latencies": lat}


def client_main() -> int:
    spec = json.loads(sys.stdin.read())
    queries = [bytes.fromhex(h) for h in spec["queries"]]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((LOOPBACK, spec["port"]))
        time.sleep(max(0.0, spec.get("delay", 0.0)))
        start = time.monotonic()
        end = start + spec["seconds"]
        max_sends = int(spec["qps"] * spec["seconds"]) + 5
        run = _client_probe if spec["mode"] == "probe" else _client_blast
        res = run(sock, spec, queries, start, end, max_sends)
    res["elapsed"] = time.monotonic() - start
    res["timeout_ms"] = 1000.0 * spec.get("timeout", 0)
    json.dump(res, sys.stdout)
    return 0


if __name__ == "__main__" and sys.argv[1:2] == ["--_client"]:
    sys.exit(client_main())

# --------------------------------------------------------------------------- the benchmark

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dnsperf_vs_dnsmasq import (REPO, BenchError, Proc, cpu_seconds, find_tool,  # noqa: E402
                                free_port, ip_for, log, name_for, run_dnsperf, skydns_command,
                                start_etcd, stop_all, taskset, vm_rss_kib, wait_until)

import dns.exception  # noqa: E402
import dns.flags  # noqa: E402
import dns.message  # noqa: E402
import dns.query  # noqa: E402
import dns.rcode  # noqa: E402
import dns.rdatatype  # noqa: E402

LOADS = ("hits", "ndots", "autopath", "misses", "fwd-cached", "fwd-uncached", "probe-misses", "probe-wide")
UPSTREAM_ADDR = "10.9.9.9"
EXT = "ext.test."
POD_NS = "app"                      # the namespace of the pod sending the ndots mix
WIDE_DNSMASQ_NAME = "wide.bench.svc.cluster.local."
WIDE_SKYDNS = ("*.svc.cluster.local.", "cluster.local.")
EDNS_PAYLOAD = 1232
WIDE_DRAIN = 2.0                     # seconds the wide sender waits for late replies
TARGETS = {                          # from issue 8
    "hits": ("ratio", 0.8), "ndots": ("ratio", 0.8), "misses": ("ratio", 0.3),
    "autopath": ("lookups", None),  # (issue 12 asks for the figures, sets no target)
    "fwd-cached": ("ratio", 0.7), "fwd-uncached": ("ratio", 0.5),
    "probe-misses": ("probe", (None, 10.0)), "probe-wide": ("probe", (1.0, 50.0)),
}
TITLES = {
    "hits": "hits (existing names, repeated)",
    "ndots": "ndots:5 mix",
    "autopath": "ndots:5 lookups, skydns -autopath",
    "misses": "unique misses",
    "fwd-cached": "forwarded, cached",
    "fwd-uncached": "forwarded, uncached",
    "probe-misses": "probe under a miss flood",
    "probe-wide": "probe under 5 wide q/s",
}


def describe(load: str, a) -> str:
    """What a load sends and how each server is set up, printed with its figures."""
    hosts = (f"hosts file of the {a.names} names"
             f"{f' + {WIDE_DNSMASQ_NAME} with {a.wide_records} A' if load == 'probe-wide' else ''}")
    local = f"dnsmasq: {hosts}, --local=/cluster.local/ (misses NXDOMAIN locally)"
    probe = (f"probe: {name_for(a.names // 2)} A, one at a time, {a.probe_qps:g} qps, "
             f"lost after {a.probe_timeout * 1000:g} ms")
    return {
        "hits": f"dnsperf cycles {a.names} existing names (A); skydns defaults; "
                f"dnsmasq: {hosts}",
        "ndots": f"dnsperf cycles {10 * a.names} queries: per service svcN.bench from a pod "
                 f"in namespace {POD_NS}, A+AAAA for svcN.bench.{POD_NS}.svc.cluster.local "
                 f"(NXDOMAIN), svcN.bench.svc.cluster.local (A hit, AAAA NODATA), and for "
                 f"svcN.bench.svc: .{POD_NS}.svc.cluster.local, .svc.cluster.local (NXDOMAIN),"
                 f" .cluster.local (hit, NODATA): 60% NXDOMAIN; {local}",
        "autopath": f"the ndots mix's {4 * a.names} lookups (name and type); skydns "
                    f"-autopath -autopath-search= with a pod record for {LOOPBACK} in "
                    f"{POD_NS} gets each lookup's first name only (A+AAAA for "
                    f"svcN.bench.{POD_NS}.svc.cluster.local and svcN.bench.svc.{POD_NS}.svc"
                    f".cluster.local: a CNAME to svcN.bench.svc.cluster.local and its A, or "
                    f"NODATA); dnsmasq the whole ndots mix ({local}); lookups/s = qps x "
                    f"lookups per query (1 and {NDOTS_LOOKUPS_PER_QUERY:g})",
        "misses": f"dnsperf -n 1 through a file of unique uHEXxTAG.bench.svc.cluster.local "
                  f"A, new per run; {local}",
        "fwd-cached": f"dnsperf cycles {a.ext_names} names eN.{EXT} A; skydns -rcache=10000 "
                      f"(-rcache-ttl default); dnsmasq: --server=127.0.0.1#upstream "
                      f"--cache-size=10000; upstream dnsmasq --address=/{EXT.rstrip('.')}/"
                      f"{UPSTREAM_ADDR} --local-ttl=300",
        "fwd-uncached": f"dnsperf -n 1 through a file of unique fHEXxTAG.{EXT} A, new per "
                        f"run; skydns defaults; dnsmasq: --server=127.0.0.1#upstream "
                        f"--cache-size=0",
        "probe-misses": f"dnsperf floods unique misses as in 'misses' (-q {a.outstanding}) "
                        f"while the {probe} runs from 1 s after its start; {local}",
        "probe-wide": f"{a.wide_qps:g} wide queries/s, EDNS {EDNS_PAYLOAD}, not waiting for "
                      f"replies: skydns alternates {' and '.join(n + ' SRV' for n in WIDE_SKYDNS)}"
                      f" over {a.names} + {a.wide_records} records (the latter with port 80),"
                      f" dnsmasq gets {WIDE_DNSMASQ_NAME} A; {probe}; CPU-s/wide q = server "
                      f"CPU during the run and {WIDE_DRAIN:g} s drain (probe included) / wide "
                      f"replies; {local}",
    }[load]


def wide_ip(i: int) -> str:
    return f"11.{i // 62500 % 250}.{i // 250 % 250}.{i % 250 + 1}"


def ext_name(i: int) -> str:
    return f"e{i}.{EXT}"


def ndots_mix(i: int) -> list[tuple[str, str]]:
    """The queries a pod in namespace ``app`` (search ``app.svc.cluster.local svc.cluster.local
    cluster.local``, ndots:5) sends, A and AAAA in parallel per candidate as glibc does, and
    stopping at the first candidate that exists, for two spellings of service svc{i} in
    namespace bench: ``svc{i}.bench`` (2 candidates) and ``svc{i}.bench.svc`` (3)."""
    out = []
    for cands in ((f"svc{i}.bench.{POD_NS}.svc.cluster.local.", name_for(i)),
                  (f"svc{i}.bench.svc.{POD_NS}.svc.cluster.local.",
                   f"svc{i}.bench.svc.svc.cluster.local.", name_for(i))):
        for name in cands:
            out += [(name, "A"), (name, "AAAA")]
    return out


# Lookups (one name and type resolved) per query of the ndots mix: 4 of its 10 queries per
# service end one (the answers and the NODATAs); with autopath every query ends one.
NDOTS_LOOKUPS_PER_QUERY = 0.4
POD_RECORD = f"/skydns/local/cluster/pod/{POD_NS}/127-0-0-1/bench"


def autopath_mix(i: int) -> list[tuple[str, str]]:
    """What the pod of ``ndots_mix`` sends when skydns walks its search path: each lookup's
    first name, A and AAAA."""
    return [(name, rdtype) for name in (f"svc{i}.bench.{POD_NS}.svc.cluster.local.",
                                        f"svc{i}.bench.svc.{POD_NS}.svc.cluster.local.")
            for rdtype in ("A", "AAAA")]


def pod_record(etcd_port: int, skydns_dir: Path, present: bool) -> None:
    """Put (or delete) the record that makes 127.0.0.1, where dnsperf sends from, a pod of
    namespace POD_NS for skydns's autopath."""
    sys.path.insert(0, str(skydns_dir))
    import etcd3
    from skydns.record import encode_record

    client = etcd3.client(host=LOOPBACK, port=etcd_port, timeout=30)
    try:
        if present:
            client.put(POD_RECORD, encode_record(LOOPBACK))
        else:
            client.delete(POD_RECORD)
    finally:
        client.close()


# --------------------------------------------------------------------------- records, servers

def write_records(etcd_port: int, names: int, wide: int, skydns_dir: Path) -> None:
    """N A records (as dnsperf_vs_dnsmasq.py) and ``wide`` records with ports, written with
    the record encoder of the skydns package under test, 128 puts a transaction."""
    sys.path.insert(0, str(skydns_dir))
    import etcd3
    from skydns.record import encode_record, fnv1a32_label

    items = []
    for i in range(names):
        value = encode_record(ip_for(i))
        items.append((f"/skydns/local/cluster/svc/bench/svc{i}/{fnv1a32_label(value)}", value))
    for i in range(wide):
        value = encode_record(wide_ip(i), port=80)
        items.append((f"/skydns/local/cluster/svc/wide/s{i}/{fnv1a32_label(value)}", value))
    client = etcd3.client(host=LOOPBACK, port=etcd_port, timeout=30)
    try:
        for start in range(0, len(items), 128):
            ops = [client.transactions.put(k, v) for k, v in items[start:start + 128]]
            ok, _ = client.transaction(compare=[], success=ops, failure=[])
            if not ok:
                raise BenchError("etcd transaction failed")
        got = sum(1 for _ in client.get_prefix("/skydns/local/cluster/svc/", keys_only=True))
        if got != len(items):
            raise BenchError(f"wrote {len(items)} records but etcd holds {got}")
    finally:
        client.close()


def query(port: int, name: str, rdtype: str, payload: int | None = None, timeout=2.0):
    q = dns.message.make_query(name, rdtype, use_edns=0 if payload else None,
                               payload=payload or 512)
    return dns.query.udp(q, LOOPBACK, port=port, timeout=timeout, ignore_trailing=True,
                         raise_on_truncation=False)


def addresses(r) -> set[str]:
    return {rd.address for rrset in r.answer if rrset.rdtype in (dns.rdatatype.A,
                                                                  dns.rdatatype.AAAA)
            for rd in rrset}


def expect_answer(port: int, name: str, addr: str, rdtype: str = "A") -> bool:
    r = query(port, name, rdtype)
    if r.rcode() != dns.rcode.NOERROR or addr not in addresses(r):
        raise BenchError(f"{name} {rdtype}: {dns.rcode.to_text(r.rcode())} "
                         f"{sorted(addresses(r))}, expected {addr}")
    return True


def expect_rcode(port: int, name: str, rdtype: str, rcode: int, empty: bool = True) -> None:
    r = query(port, name, rdtype)
    if r.rcode() != rcode or (empty and r.answer):
        raise BenchError(f"{name} {rdtype}: {dns.rcode.to_text(r.rcode())} with "
                         f"{len(r.answer)} answer RRsets, expected "
                         f"{dns.rcode.to_text(rcode)}{' and no answer' if empty else ''}")


def start_skydns(tmp: Path, name: str, etcd_port: int, upstream: int, args,
                 extra: list[str]) -> tuple[Proc, int]:
    port = free_port()
    argv = [*skydns_command(args.skydns_dir), f"-addr={LOOPBACK}:{port}",
            f"-machines=http://{LOOPBACK}:{etcd_port}", "-domain=cluster.local.",
            f"-nameservers={LOOPBACK}:{upstream}", "-healthz-port=0", *extra,
            *args.skydns_arg]
    proc = Proc(name, taskset(args.server_cpus, argv), tmp)
    try:
        wait_until("an answer for svc0", lambda: expect_answer(port, name_for(0), ip_for(0)),
                   proc, timeout=args.startup_timeout, interval=0.25)
    except BaseException:
        proc.stop()
        raise
    return proc, port


def start_dnsmasq(tmp: Path, name: str, cpus: str, extra: list[str], ready, timeout: float
                  ) -> tuple[Proc, int]:
    """dnsmasq with no config file, resolv.conf or /etc/hosts, plus ``extra``; ``ready(port)``
    is called until it returns True."""
    port = free_port()
    argv = [find_tool("dnsmasq"), "--keep-in-foreground", "--conf-file=/dev/null",
            f"--port={port}", f"--listen-address={LOOPBACK}", "--bind-interfaces",
            "--no-resolv", "--no-hosts", "--pid-file=",
            f"--log-facility={tmp / (name + '-own.log')}", *extra]
    if os.geteuid() == 0:
        argv.append("--user=root")
    proc = Proc(name, taskset(cpus, argv), tmp)
    try:
        wait_until(f"{name} answering", lambda: ready(port), proc, timeout=timeout,
                   interval=0.1)
    except BaseException:
        proc.stop()
        raise
    return proc, port


# --------------------------------------------------------------------------- query files

def write_lines(path: Path, lines) -> int:
    n = 0
    with open(path, "w") as f:
        chunk = []
        for line in lines:
            chunk.append(line)
            if len(chunk) >= 65536:
                f.write("".join(chunk))
                n += len(chunk)
                chunk = []
        f.write("".join(chunk))
        n += len(chunk)
    return n


def unique_file(path: Path, kind: str, count: int) -> int:
    """``count`` names never asked before: a random tag per file and a counter per line."""
    tag = f"{random.getrandbits(32):08x}"
    suffix = "bench.svc.cluster.local." if kind == "miss" else EXT
    first = "u" if kind == "miss" else "f"
    return write_lines(path, (f"{first}{i:x}x{tag}.{suffix} A\n" for i in range(count)))


def wire_hex(name: str, rdtype: str, payload: int | None = None) -> str:
    q = dns.message.make_query(name, rdtype, use_edns=0 if payload else None,
                               payload=payload or 512)
    q.flags |= dns.flags.RD
    return q.to_wire().hex()


# --------------------------------------------------------------------------- measuring

def percentile(sorted_vals: list[float], p: float) -> float:
    if not sorted_vals:
        return math.inf
    return sorted_vals[max(0, math.ceil(p / 100 * len(sorted_vals)) - 1)]


def run_client(args, spec: dict) -> subprocess.Popen:
    argv = [sys.executable, str(Path(__file__).resolve()), "--_client"]
    if spec["mode"] == "probe" and args.probe_rt:
        # The probe shares the client core with dnsperf, which a flood keeps busy; at a
        # real-time priority its 50 queries a second are sent and read the moment they
        # are due, so its latency is the server's and not the scheduler's.
        argv = [args.probe_rt, "-f", "1", *argv]
    argv = taskset(args.client_cpus, argv)
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdin.write(json.dumps(spec).encode())
    p.stdin.close()
    p.stdin = None                            # communicate() must not flush it again
    return p


def collect_client(p: subprocess.Popen, timeout: float) -> dict:
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
    if p.returncode != 0:
        raise BenchError(f"client exited {p.returncode}: {err.decode(errors='replace')}")
    return json.loads(out)


def probe_figures(res: dict) -> dict:
    """p50/p99 over every probe sent, a lost one counting as slower than any answer."""
    lat = sorted(x * 1000 for x in res["latencies"]) + [math.inf] * res["lost"]
    sent = res["sent"] or 1
    return {"probe_sent": res["sent"], "probe_timeout_ms": res["timeout_ms"],
            "probe_p50_ms": percentile(lat, 50),
            "probe_p99_ms": percentile(lat, 99),
            "probe_loss_pct": 100.0 * res["lost"] / sent,
            "probe_wrong_pct": 100.0 * res["wrong"] / sent}


def rcode_check(load: str, r: dict, server: str) -> tuple[float, str | None]:
    """Share of answers with the expected response codes, and a warning if it is off."""
    rc = r["rcodes"]
    done = r["completed"] or 1
    noerr, nx = rc.get("NOERROR", 0), rc.get("NXDOMAIN", 0)
    if load == "ndots" or (load == "autopath" and server == "dnsmasq"):
        ok = 100.0 * (noerr + nx) / done
        nx_share = 100.0 * nx / done
        if not 50 <= nx_share <= 70:
            return ok, f"{server}: {nx_share:.1f}% NXDOMAIN in the ndots mix, expected 60%"
    elif load in ("misses", "probe-misses"):
        ok = 100.0 * nx / done
    else:
        ok = 100.0 * noerr / done
    return ok, (f"{server}: only {ok:.2f}% of answers had the expected response code "
                f"({rc})" if ok < 99.0 else None)


class Bench:
    def __init__(self, args, tmp: Path):
        self.args = args
        self.tmp = tmp
        self.procs: list[Proc] = []
        self.clients: list[subprocess.Popen] = []
        self.warnings: list[str] = []
        self.results: dict[str, dict] = {}
        self.etcd_port = 0
        self.upstream_port = 0
        self.hosts = tmp / "bench.hosts"
        self.rate_hint: dict[str, float] = {}

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        a = self.args
        for tool in ("dnsperf", "dnsmasq", "taskset" if a.server_cpus or a.client_cpus else None):
            if tool:
                find_tool(tool)
        t0 = time.monotonic()
        etcd, self.etcd_port = start_etcd(self.tmp, a.etcd_cpus or None)
        self.procs.append(etcd)
        write_records(self.etcd_port, a.names, a.wide_records, a.skydns_dir)
        log(f"etcd on {LOOPBACK}:{self.etcd_port} (pid {etcd.pid}) with {a.names} + "
            f"{a.wide_records} wide records, {time.monotonic() - t0:.1f} s")
        with open(self.hosts, "w") as f:
            for i in range(a.names):
                f.write(f"{ip_for(i)} {name_for(i).rstrip('.')}\n")
            for i in range(a.wide_records):
                f.write(f"{wide_ip(i)} {WIDE_DNSMASQ_NAME.rstrip('.')}\n")
        os.chmod(self.tmp, 0o755)
        os.chmod(self.hosts, 0o644)
        up, self.upstream_port = start_dnsmasq(
            self.tmp, "upstream", a.upstream_cpus,
            [f"--address=/{EXT.rstrip('.')}/{UPSTREAM_ADDR}", "--local-ttl=300"],
            lambda p: expect_answer(p, ext_name(0), UPSTREAM_ADDR), a.startup_timeout)
        self.procs.append(up)
        r = query(self.upstream_port, ext_name(1), "A")
        if r.answer[0].ttl != 300:
            raise BenchError(f"upstream answers TTL {r.answer[0].ttl}, expected 300")
        log(f"upstream dnsmasq on {LOOPBACK}:{self.upstream_port} (pid {up.pid}): "
            f"*.{EXT} A {UPSTREAM_ADDR} TTL 300")
        self.cyclic = {}
        self.cyclic["hits"] = self.tmp / "hits.txt"
        write_lines(self.cyclic["hits"], (f"{name_for(i)} A\n" for i in range(a.names)))
        self.cyclic["ndots"] = self.tmp / "ndots.txt"
        write_lines(self.cyclic["ndots"], (f"{n} {t}\n" for i in range(a.names)
                                           for n, t in ndots_mix(i)))
        self.cyclic["autopath"] = self.tmp / "autopath.txt"
        write_lines(self.cyclic["autopath"], (f"{n} {t}\n" for i in range(a.names)
                                              for n, t in autopath_mix(i)))
        self.cyclic["fwd-cached"] = self.tmp / "fwd-cached.txt"
        write_lines(self.cyclic["fwd-cached"],
                    (f"{ext_name(i)} A\n" for i in range(a.ext_names)))

    # ------------------------------------------------------------------ servers per load
    def servers_for(self, load: str) -> dict[str, tuple[Proc, int]]:
        a = self.args
        sky_extra = ["-rcache=10000"] if load == "fwd-cached" else []
        if load == "autopath":
            sky_extra = ["-autopath", "-autopath-search="]
            pod_record(self.etcd_port, a.skydns_dir, True)
        local = [f"--addn-hosts={self.hosts}", "--local=/cluster.local/", "--local-ttl=30",
                 "--cache-size=10000"]
        if load == "hits":
            dm_extra = [f"--addn-hosts={self.hosts}", "--local-ttl=30", "--cache-size=10000"]
        elif load == "fwd-cached":
            dm_extra = [f"--server={LOOPBACK}#{self.upstream_port}", "--cache-size=10000"]
        elif load == "fwd-uncached":
            dm_extra = [f"--server={LOOPBACK}#{self.upstream_port}", "--cache-size=0"]
        else:
            dm_extra = local
        if load.startswith("fwd"):
            def ready(p):
                return expect_answer(p, ext_name(0), UPSTREAM_ADDR)
        else:
            def ready(p):
                return expect_answer(p, name_for(0), ip_for(0))
        out = {}
        if "skydns" in a.servers:
            out["skydns"] = start_skydns(self.tmp, f"skydns-{load}", self.etcd_port,
                                         self.upstream_port, a, sky_extra)
            self.procs.append(out["skydns"][0])
        if "dnsmasq" in a.servers:
            out["dnsmasq"] = start_dnsmasq(self.tmp, f"dnsmasq-{load}", a.server_cpus,
                                           dm_extra, ready, a.startup_timeout)
            self.procs.append(out["dnsmasq"][0])
        return out

    def verify(self, load: str, server: str, port: int) -> str:
        """Sample the answers this load depends on; returns what was checked."""
        a = self.args
        mid = a.names // 2
        if load in ("hits", "probe-misses", "probe-wide", "ndots", "misses"):
            for i in sorted({0, mid, a.names - 1}):
                expect_answer(port, name_for(i), ip_for(i))
        checked = "existing names answer their address"
        if load == "autopath" and server == "skydns":
            for name, rdtype in autopath_mix(mid):
                r = query(port, name, rdtype)
                want = [dns.rdatatype.CNAME, dns.rdatatype.A] if rdtype == "A" else []
                if r.rcode() != dns.rcode.NOERROR or [x.rdtype for x in r.answer] != want:
                    raise BenchError(f"autopath {name} {rdtype}: "
                                     f"{dns.rcode.to_text(r.rcode())} {r.answer}")
            return checked + "; autopath answers CNAME + A (and NODATA for AAAA)"
        if load in ("ndots", "autopath"):
            for name, rdtype in ndots_mix(mid):
                if name == name_for(mid):
                    if rdtype == "AAAA":
                        expect_rcode(port, name, rdtype, dns.rcode.NOERROR)
                else:
                    expect_rcode(port, name, rdtype, dns.rcode.NXDOMAIN)
            checked += "; search-path misses NXDOMAIN; AAAA NODATA"
        if load in ("misses", "probe-misses"):
            tag = f"{random.getrandbits(32):08x}"
            for i in range(3):
                expect_rcode(port, f"check{i}x{tag}.bench.svc.cluster.local.", "A",
                             dns.rcode.NXDOMAIN)
            checked += "; unique misses NXDOMAIN"
        if load.startswith("fwd"):
            expect_answer(port, ext_name(a.ext_names - 1), UPSTREAM_ADDR)
            tag = f"{random.getrandbits(32):08x}"
            expect_answer(port, f"check{tag}.{EXT}", UPSTREAM_ADDR)
            checked = f"forwarded names answer {UPSTREAM_ADDR}"
        if load == "probe-wide":
            names = WIDE_SKYDNS if server == "skydns" else (WIDE_DNSMASQ_NAME,)
            rdtype = "SRV" if server == "skydns" else "A"
            for name in names:
                r = query(port, name, rdtype, payload=EDNS_PAYLOAD, timeout=10)
                tc = bool(r.flags & dns.flags.TC)
                if r.rcode() != dns.rcode.NOERROR or not (r.answer or tc):
                    raise BenchError(f"wide {name} {rdtype}: {dns.rcode.to_text(r.rcode())}"
                                     f", {len(r.answer)} answer RRsets, TC {tc}")
            checked += f"; wide {rdtype} answers NOERROR (answers or TC)"
        return checked

    # ------------------------------------------------------------------ one run
    def unique_lines(self, load: str, seconds: float) -> int:
        """Enough unique names that no server runs out: ``seconds`` times the larger of
        --unique-rate and 1.5 x the fastest warm-up of this load."""
        rate = max(self.args.unique_rate, 1.5 * self.rate_hint.get(load, 0))
        return int(min(max(self.args.min_unique, seconds * rate), 20_000_000))

    def dnsperf_run(self, load: str, server: str, proc: Proc, port: int, seconds: float,
                    qfile: Path | None = None, lines: int | None = None) -> dict:
        """dnsperf cycling through the load's file, or once through ``qfile`` of unique
        names (a throw-away one when None, e.g. for the warm-up)."""
        a = self.args
        extra: tuple = ()
        own = None
        if load in self.cyclic:
            qfile = self.cyclic["ndots" if load == "autopath" and server == "dnsmasq"
                                else load]
        else:
            extra = ("-n", "1")
            if qfile is None:
                own = qfile = self.tmp / "unique-warmup.txt"
                lines = unique_file(qfile, "miss" if "miss" in load else "fwd",
                                    int(max(10_000, 2 * seconds * a.unique_rate)))
        rss0 = vm_rss_kib(proc.pid)
        try:
            r = run_dnsperf(a, port, qfile, seconds, proc, extra)
        finally:
            if own is not None:
                own.unlink()
        if load == "autopath":
            r["lookups_per_s"] = r["qps"] * (1 if server == "skydns"
                                             else NDOTS_LOOKUPS_PER_QUERY)
        r["vmrss_kib"] = vm_rss_kib(proc.pid)
        r["vmrss_growth_kib"] = (r["vmrss_kib"] or 0) - (rss0 or 0)
        if lines is not None and r["sent"] >= lines and own is None:
            self.warnings.append(f"{load} {server}: the file of {lines} unique names ran "
                                 f"out after {r['run_time']:.1f} s; raise --unique-rate")
        if not proc.alive():
            raise BenchError(f"{server} died during {load}:\n{proc.log_tail()}")
        return r

    def run_once(self, load: str, server: str, proc: Proc, port: int, seconds: float,
                 qfile: Path | None, lines: int | None) -> dict:
        a = self.args
        if load in ("hits", "ndots", "autopath", "fwd-cached"):
            return self.dnsperf_run(load, server, proc, port, seconds)
        if load in ("misses", "fwd-uncached"):
            return self.dnsperf_run(load, server, proc, port, seconds, qfile, lines)
        probe_name = name_for(a.names // 2)
        probe = {"mode": "probe", "port": port, "qps": a.probe_qps,
                 "timeout": a.probe_timeout,
                 "queries": [wire_hex(probe_name, "A")],
                 "expect": socket.inet_aton(ip_for(a.names // 2)).hex()}
        if load == "probe-misses":
            delay = min(1.0, seconds * 0.2)
            probe.update(delay=delay, seconds=max(0.5, seconds - delay - 0.5))
            p = run_client(a, probe)
            self.clients.append(p)
            r = self.dnsperf_run("probe-misses", server, proc, port, seconds, qfile, lines)
            r.update(probe_figures(collect_client(p, seconds + 30)))
            self.clients.remove(p)
            r["flood_qps"] = r["qps"]
            return r
        # probe-wide
        if server == "skydns":
            wide = [wire_hex(n, "SRV", EDNS_PAYLOAD) for n in WIDE_SKYDNS]
        else:
            wide = [wire_hex(WIDE_DNSMASQ_NAME, "A", EDNS_PAYLOAD)]
        blast = {"mode": "blast", "port": port, "qps": a.wide_qps, "seconds": seconds,
                 "queries": wide, "drain": WIDE_DRAIN}
        probe.update(seconds=seconds)
        tree = proc.tree()
        cpu0 = cpu_seconds(tree)
        t0 = time.monotonic()
        pw = run_client(a, blast)
        self.clients.append(pw)
        pp = run_client(a, probe)
        self.clients.append(pp)
        rp = collect_client(pp, seconds + 30)
        rw = collect_client(pw, seconds + 30)
        wall = time.monotonic() - t0
        cpu = cpu_seconds(tree) - cpu0
        self.clients.remove(pp)
        self.clients.remove(pw)
        r = probe_figures(rp)
        wl = sorted(x * 1000 for x in rw["latencies"]) + \
            [math.inf] * (rw["sent"] - rw["replies"])
        r.update(wide_sent=rw["sent"], wide_replies=rw["replies"],
                 wide_tc_pct=100.0 * rw["tc"] / (rw["replies"] or 1),
                 wide_reply_bytes=rw["bytes"] / (rw["replies"] or 1),
                 wide_p50_ms=percentile(wl, 50),
                 server_cpu_s=cpu, server_cpu_pct=100.0 * cpu / wall,
                 cpu_s_per_wide=cpu / (rw["replies"] or rw["sent"] or 1),
                 vmrss_kib=vm_rss_kib(proc.pid))
        if not proc.alive():
            raise BenchError(f"{server} died during {load}:\n{proc.log_tail()}")
        return r

    # ------------------------------------------------------------------ one load
    def measure(self, load: str) -> None:
        a = self.args
        log(f"--- {load}")
        servers = self.servers_for(load)
        try:
            checks = {}
            for s, (proc, port) in servers.items():
                try:
                    checks[s] = self.verify(load, s, port)
                except (BenchError, dns.exception.DNSException) as exc:
                    raise BenchError(f"{load}: {s} gave a wrong answer: {exc}") from exc
            log(f"checked on {', '.join(servers)}: {next(iter(checks.values()))}")
            if a.warmup > 0 and load != "probe-wide":
                for s, (proc, port) in servers.items():
                    w = self.dnsperf_run(load, s, proc, port, a.warmup)
                    self.rate_hint[load] = max(self.rate_hint.get(load, 0), w["qps"])
            runs = {s: [] for s in servers}
            unique = load in ("misses", "fwd-uncached", "probe-misses")
            for run in range(a.runs):
                # One file of unique names per run, shared by the servers (each asks each
                # name once), so a run never repeats a name its server has seen.
                qfile = lines = None
                if unique:
                    qfile = self.tmp / f"unique-{run}.txt"
                    lines = unique_file(qfile, "fwd" if load == "fwd-uncached" else "miss",
                                        self.unique_lines(load, a.seconds))
                try:
                    for s, (proc, port) in servers.items():
                        r = self.run_once(load, s, proc, port, a.seconds, qfile, lines)
                        if "rcodes" in r:
                            r["ok_pct"], warn = rcode_check(load, r, s)
                            if warn:
                                self.warnings.append(f"{load} run {run + 1} {warn}")
                        if r.get("probe_wrong_pct"):
                            self.warnings.append(f"{load} run {run + 1} {s}: "
                                                 f"{r['probe_wrong_pct']:.1f}% wrong probe "
                                                 f"answers")
                        runs[s].append(r)
                        log(f"{load} run {run + 1}/{a.runs} {s}: {short(load, r)}")
                finally:
                    if qfile is not None:
                        qfile.unlink(missing_ok=True)
            self.results[load] = {"runs": runs, "median": {s: median_of(rs)
                                                           for s, rs in runs.items()},
                                  "checked": checks}
        finally:
            for proc, _ in servers.values():
                proc.stop()
                self.procs.remove(proc)
            if load == "autopath" and "skydns" in servers:
                pod_record(self.etcd_port, a.skydns_dir, False)


def median_of(rs: list[dict]) -> dict:
    keys = [k for k, v in rs[0].items() if isinstance(v, (int, float)) and
            all(isinstance(r.get(k), (int, float)) for r in rs)]
    return {k: statistics.median(r[k] for r in rs) for k in keys}


def ms(v: float, timeout_ms: float | None = None) -> str:
    if v == math.inf:
        return f">{timeout_ms:g}" if timeout_ms else "lost"
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def kqps(v: float) -> str:
    return f"{v / 1000:.1f}k" if v >= 1000 else f"{v:.0f}"


def short(load: str, r: dict) -> str:
    if "probe_p99_ms" in r:
        t = r["probe_timeout_ms"]
        s = (f"probe p50 {ms(r['probe_p50_ms'], t)} ms, p99 {ms(r['probe_p99_ms'], t)} ms, "
             f"loss {r['probe_loss_pct']:.1f}%")
        if "flood_qps" in r:
            s += f" (flood {kqps(r['flood_qps'])} qps)"
        if "cpu_s_per_wide" in r:
            s += (f", {r['cpu_s_per_wide']:.3g} CPU-s/wide query, wide p50 "
                  f"{ms(r['wide_p50_ms'], 1000 * WIDE_DRAIN)} ms")
        return s
    lookups = (f", {kqps(r['lookups_per_s'])} lookups/s" if "lookups_per_s" in r else "")
    return f"{kqps(r['qps'])} qps{lookups}, {r['avg_latency_s'] * 1000:.2f} ms avg"


def cell(load: str, m: dict) -> str:
    if load.startswith("probe"):
        t = m["probe_timeout_ms"]
        s = (f"p50 {ms(m['probe_p50_ms'], t)} / p99 {ms(m['probe_p99_ms'], t)} ms, loss "
             f"{m['probe_loss_pct']:.1f}%")
        if load == "probe-misses":
            return s + f" (flood {kqps(m['flood_qps'])} qps)"
        return s + f"; {m['cpu_s_per_wide']:.3g} CPU-s/wide q"
    if "lookups_per_s" in m:
        return f"{kqps(m['lookups_per_s'])} lookups/s ({kqps(m['qps'])} qps)"
    return f"{kqps(m['qps'])} qps, {ms(m['avg_latency_s'] * 1000)} ms"


def ratio_and_target(load: str, med: dict) -> tuple[str, str]:
    kind, target = TARGETS[load]
    sky, ref = med.get("skydns"), med.get("dnsmasq")
    if kind == "lookups":
        if sky and ref and ref["lookups_per_s"] > 0:
            return f"{sky['lookups_per_s'] / ref['lookups_per_s']:.2f} (lookups/s)", \
                "none set"
        return "-", "none set"
    if kind == "ratio":
        txt = f"≥ {target:.1f}x"
        if sky and ref and ref["qps"] > 0:
            ratio = sky["qps"] / ref["qps"]
            shown = f"{ratio:.2f}"
            if sky.get("server_cpu_pct") and ref.get("server_cpu_pct"):
                per_cpu = ratio * ref["server_cpu_pct"] / sky["server_cpu_pct"]
                shown += f" ({per_cpu:.2f} per CPU-s)"
            return shown, f"{txt} {'met' if ratio >= target else 'not met'}"
        return "-", txt
    loss_max, p99_max = target
    txt = (f"loss ≤ {loss_max:g}%, p99 ≤ {p99_max:g} ms" if loss_max is not None
           else f"p99 < {p99_max:g} ms")
    ratio = "-"
    if sky and ref:
        if ref["probe_p99_ms"] > 0 and sky["probe_p99_ms"] != math.inf:
            ratio = f"p99 {sky['probe_p99_ms'] / ref['probe_p99_ms']:.1f}x"
        elif ref["probe_p99_ms"] > 0:
            ratio = f"p99 >{sky['probe_timeout_ms'] / ref['probe_p99_ms']:.0f}x"
    if sky:
        if loss_max is None:
            ok = sky["probe_p99_ms"] < p99_max
        else:
            ok = sky["probe_p99_ms"] <= p99_max and sky["probe_loss_pct"] <= loss_max
        txt += " met" if ok else " not met"
    return ratio, txt


def report(bench: Bench) -> None:
    a = bench.args
    print()
    print(f"skydns from {a.skydns_dir}; names={a.names} wide-records={a.wide_records} "
          f"ext-names={a.ext_names} seconds={a.seconds:g} runs={a.runs}; servers on CPU "
          f"{a.server_cpus or 'any'}, dnsperf/probe/wide sender on CPU {a.client_cpus or 'any'}"
          f", upstream dnsmasq on CPU {a.upstream_cpus or 'any'} (dnsperf -c {a.clients} "
          f"-T {a.threads} -q {a.outstanding}); probe {a.probe_qps:g} qps, timeout "
          f"{a.probe_timeout * 1000:g} ms, {'SCHED_FIFO' if a.probe_rt else 'normal priority'}")
    for load, res in bench.results.items():
        print()
        print(f"{load}: {TITLES[load]}")
        print(f"  ({describe(load, a)})")
        for run in range(a.runs):
            for s, rs in res["runs"].items():
                r = rs[run]
                extra = ""
                if "qps" in r and "probe_p99_ms" not in r:
                    extra = (f", lost {r['lost_pct']:.2f}%, expected rcode "
                             f"{r.get('ok_pct', 0):.1f}%, srv cpu {r['server_cpu_pct']:.0f}%"
                             f", srv core {fmt_pct(r['server_core_busy_pct'])}, client core "
                             f"{fmt_pct(r['client_core_busy_pct'])}")
                    if load in ("misses", "fwd-uncached"):
                        extra += f", VmRSS +{r['vmrss_growth_kib'] / 1024:.1f} MiB"
                elif "cpu_s_per_wide" in r:
                    extra = (f", wide sent {r['wide_sent']} answered {r['wide_replies']} "
                             f"TC {r['wide_tc_pct']:.0f}% {r['wide_reply_bytes']:.0f} B, "
                             f"srv cpu {r['server_cpu_pct']:.0f}%")
                print(f"  {s}#{run + 1:<3} {short(load, r)}{extra}")
        ratio, target = ratio_and_target(load, res["median"])
        for s, m in res["median"].items():
            print(f"  {s} median: {short(load, m)}")
        print(f"  ratio: {ratio}; target {target}")
        if load in ("misses", "fwd-uncached") and "skydns" in res["median"]:
            m = res["median"]["skydns"]
            if m.get("completed"):
                print(f"  skydns VmRSS grew {m['vmrss_growth_kib'] / 1024:.1f} MiB over "
                      f"{m['completed']:.0f} unique names (median run): "
                      f"{m['vmrss_growth_kib'] * 1024 / m['completed']:.0f} B per name")
    print()
    print("| load | skydns | dnsmasq | ratio | target |")
    print("|---|---|---|---|---|")
    for load, res in bench.results.items():
        med = res["median"]
        ratio, target = ratio_and_target(load, med)
        ref = cell(load, med["dnsmasq"]) if "dnsmasq" in med else "-"
        if load == "probe-wide" and "dnsmasq" in med:
            ref += f" ({a.wide_records} A of one name)"
        print(f"| {TITLES[load]} | {cell(load, med['skydns']) if 'skydns' in med else '-'} | "
              f"{ref} | {ratio} | {target} |")
    print()
    print("qps rows: dnsperf median qps and average latency at saturation; ratio = skydns "
          "qps / dnsmasq qps (and the same per second of server CPU, which is the fairer "
          "figure when dnsperf's core, not the server's, set the pace). probe rows: a probe lost counts as slower than any answer; "
          "ratio = skydns p99 / dnsmasq p99. probe-wide's dnsmasq reference has no wildcard: "
          f"it is asked one hosts name with {a.wide_records} A records (EDNS {EDNS_PAYLOAD}).")
    for w in bench.warnings:
        print(f"WARNING: {w}")


def finite(obj):
    """A copy for JSON: an infinite latency (every probe lost) becomes null."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite(v) for v in obj]
    if isinstance(obj, float) and math.isinf(obj):
        return None
    return obj


def fmt_pct(v) -> str:
    return "-" if v is None else f"{v:.0f}%"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10, help="length of each run (10)")
    ap.add_argument("--runs", type=int, default=3, help="runs per server and load (3)")
    ap.add_argument("--only", default=",".join(LOADS),
                    help=f"comma-separated loads to run (all: {','.join(LOADS)})")
    ap.add_argument("--servers", default="skydns,dnsmasq",
                    help="skydns,dnsmasq (default) or one of them")
    ap.add_argument("--skydns-dir", type=Path, default=REPO,
                    help="directory holding the skydns package to measure (this repository)")
    ap.add_argument("--skydns-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for every skydns started (repeatable)")
    ap.add_argument("--names", type=int, default=1000,
                    help="A records / existing names (1000)")
    ap.add_argument("--wide-records", type=int, default=1000,
                    help="records with ports for the wide SRV queries, and A records of "
                         "dnsmasq's wide name (1000)")
    ap.add_argument("--ext-names", type=int, default=1000,
                    help="external names of the forwarded-cached load (1000)")
    ap.add_argument("--unique-rate", type=float, default=200_000,
                    help="unique names per second of run in each file of unique names "
                         "(200000), or 1.5 x the fastest warm-up of the load if that is "
                         "more; at least --min-unique")
    ap.add_argument("--min-unique", type=int, default=500_000,
                    help="smallest file of unique names (500000)")
    ap.add_argument("--probe-qps", type=float, default=50, help="probe rate (50)")
    ap.add_argument("--probe-timeout", type=float, default=0.5,
                    help="seconds before a probe counts as lost (0.5)")
    ap.add_argument("--wide-qps", type=float, default=5, help="wide queries a second (5)")
    ap.add_argument("--no-probe-rt", action="store_true",
                    help="run the probe at normal priority (default: chrt -f 1, SCHED_FIFO, "
                         "when running as root)")
    ap.add_argument("--warmup", type=float, default=3,
                    help="seconds of unrecorded load per server and load first (3; skydns "
                         "is not at full speed on the ndots mix after 1 s)")
    ap.add_argument("--server-cpus", default="0", help="taskset CPUs of the servers (0)")
    ap.add_argument("--client-cpus", default="1",
                    help="taskset CPUs of dnsperf, the probe and the wide sender (1)")
    ap.add_argument("--upstream-cpus", default="1",
                    help="taskset CPUs of the upstream dnsmasq (1, with the clients)")
    ap.add_argument("--etcd-cpus", default="", help="taskset CPUs of etcd (unpinned)")
    ap.add_argument("--clients", type=int, default=4, help="dnsperf -c (4)")
    ap.add_argument("--threads", type=int, default=1, help="dnsperf -T (1)")
    ap.add_argument("--outstanding", type=int, default=100, help="dnsperf -q (100)")
    ap.add_argument("--query-timeout", type=float, default=2, help="dnsperf -t (2)")
    ap.add_argument("--startup-timeout", type=float, default=30,
                    help="seconds to wait for each server to answer (30)")
    ap.add_argument("--json", metavar="FILE", help="also write every figure as JSON here")
    args = ap.parse_args(argv)
    args.max_qps = 0
    loads = [x for x in args.only.replace(" ", "").split(",") if x]
    bad = [x for x in loads if x not in LOADS]
    if bad or not loads:
        ap.error(f"unknown load(s) {bad}; choose from {','.join(LOADS)}")
    args.loads = [x for x in LOADS if x in loads]
    args.servers = [s for s in ("skydns", "dnsmasq") if s in args.servers.split(",")]
    if not args.servers:
        ap.error("--servers must name skydns and/or dnsmasq")
    if not (0 < args.seconds <= 600) or not (1 <= args.runs <= 50):
        ap.error("--seconds must be in (0, 600] and --runs in 1..50")
    if not (1 <= args.names <= 1_000_000) or not (1 <= args.wide_records <= 100_000) \
            or not (1 <= args.ext_names <= 1_000_000):
        ap.error("--names, --ext-names must be 1..1000000, --wide-records 1..100000")
    if not (0 < args.probe_qps <= 1000) or not (0 < args.wide_qps <= 1000) \
            or not (0 < args.probe_timeout <= 10):
        ap.error("--probe-qps, --wide-qps must be in (0, 1000], --probe-timeout in (0, 10]")
    args.skydns_dir = args.skydns_dir.resolve()
    args.probe_rt = None
    if not args.no_probe_rt and os.geteuid() == 0:
        try:
            args.probe_rt = find_tool("chrt")
        except BenchError:
            log("chrt not found: the probe runs at normal priority")

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    tmp = Path(tempfile.mkdtemp(prefix="skydns-offpath-"))
    bench = Bench(args, tmp)
    rc = 0
    t_start = time.monotonic()
    try:
        bench.setup()
        for load in args.loads:
            bench.measure(load)
        report(bench)
        log(f"total {time.monotonic() - t_start:.0f} s")
        if bench.warnings:
            rc = 1
        if args.json:
            Path(args.json).write_text(json.dumps(finite(
                {"args": {k: (str(v) if isinstance(v, Path) else v)
                          for k, v in vars(args).items()},
                 "results": bench.results, "warnings": bench.warnings}),
                indent=2, default=str) + "\n")
            log(f"wrote {args.json}")
    except (BenchError, dns.exception.DNSException, OSError) as exc:
        log(f"error: {exc}")
        rc = 2
    except KeyboardInterrupt as exc:
        log(f"interrupted ({exc or 'Ctrl-C'}); stopping")
        rc = 130
    finally:
        for p in bench.clients:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        stop_all(bench.procs)
        shutil.rmtree(tmp, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
