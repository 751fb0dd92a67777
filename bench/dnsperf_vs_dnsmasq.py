#!/usr/bin/env python3
"""Throughput of the skydns server against dnsmasq, measured with dnsperf in the same run.

Starts a throw-away etcd, writes N SkyDNS A records into it, starts ``skydns`` on them and
``dnsmasq`` on a hosts file holding the same names and addresses, then runs ``dnsperf``
against each server in turn (skydns, dnsmasq, skydns, dnsmasq, ...) and prints queries
per second, latency, losses and the skydns/dnsmasq ratio of the medians.

Both servers are pinned to the same CPU (default 0) and dnsperf to another (default 1),
so each server gets exactly one core and the load generator never competes with it.
etcd is left unpinned by default (``--etcd-cpus`` changes that); the per-run CPU figures
show whether it did any work while skydns was being measured.

All traffic goes to 127.0.0.1. Every process started here is stopped by its PID on exit,
also on Ctrl-C or SIGTERM, and the temporary directory is removed.

Run from the repository root::

    .venv/bin/python bench/dnsperf_vs_dnsmasq.py --names 1000 --seconds 10 --runs 3

See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOOPBACK = "127.0.0.1"
ZONE = "cluster.local."
# Records live below this DNS name; svc{i} is prepended.
SUFFIX = "bench.svc.cluster.local."
REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent          # the venv's bin dir when run as .venv/bin/python
CLK_TCK = os.sysconf("SC_CLK_TCK")
TXN_OPS = 128                              # etcd's default --max-txn-ops is 128


class BenchError(Exception):
    """Something the benchmark needs did not work; the message says what."""


# --------------------------------------------------------------------------- helpers

def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def find_tool(name: str, *extra_dirs: Path) -> str:
    """``name`` from the venv's bin dir (or ``extra_dirs``), else from PATH, else /usr/sbin."""
    for d in (BIN, REPO / ".venv" / "bin", *extra_dirs):
        p = d / name
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if not found:
        raise BenchError(f"{name} not found (looked in {BIN} and PATH)")
    return found


def free_port() -> int:
    """A port that is free on 127.0.0.1 for both UDP and TCP (DNS servers bind both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind((LOOPBACK, 0))
            port = t.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.bind((LOOPBACK, port))
            except OSError:
                continue
            return port
    raise BenchError("could not find a free port on 127.0.0.1")


def ip_for(i: int) -> str:
    """A unique, valid address for record i, never ending in .0 or .255."""
    n = i + 1 + i // 254 * 2                 # skip host parts 0 and 255 in every /24
    return f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}"


def name_for(i: int) -> str:
    return f"svc{i}.{SUFFIX}"


def taskset(cpus: str | None, argv: list[str]) -> list[str]:
    if not cpus:
        return argv
    return [find_tool("taskset"), "-c", cpus, *argv]


def descendants(pid: int) -> list[int]:
    """PIDs of all live descendants of ``pid`` (read from /proc), deepest last."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo and len(out) < 10000:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime of the given processes, in seconds (dead ones count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])   # fields 14 and 15 of stat(5)
    return total / CLK_TCK


def parse_cpulist(spec: str) -> set[int]:
    """``"0"``, ``"0-2,5"`` -> {0, 1, 2, 5}; empty means no pinning (empty set)."""
    cpus: set[int] = set()
    for part in filter(None, spec.replace(" ", "").split(",")):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def core_ticks(cpus: set[int]) -> tuple[int, int]:
    """(busy, total) jiffies of the given CPUs from /proc/stat; busy includes the
    interrupt and softirq time that no process is charged for (loopback delivery)."""
    busy = total = 0
    if not cpus:
        return 0, 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *vals = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            v = [int(x) for x in vals[:8]]   # user nice system idle iowait irq softirq steal
            total += sum(v)
            busy += sum(v) - v[3] - v[4]
    return busy, total


def busy_pct(t0: tuple[int, int], t1: tuple[int, int]) -> float | None:
    dt = t1[1] - t0[1]
    return 100.0 * (t1[0] - t0[0]) / dt if dt > 0 else None


def vm_rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class Proc:
    """A started server process, stopped by PID (and its descendants by theirs)."""

    def __init__(self, name: str, argv: list[str], logdir: Path):
        self.name = name
        self.argv = argv
        self.logpath = logdir / f"{name}.log"
        self._log = open(self.logpath, "wb")
        self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                      stderr=subprocess.STDOUT, cwd=str(logdir))
        self.pid = self.popen.pid
        self.seen_children: set[int] = set()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tree(self) -> list[int]:
        kids = descendants(self.pid) if self.alive() else []
        self.seen_children.update(kids)
        return [self.pid, *kids]

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.logpath.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        if self.alive():
            self.tree()                       # remember worker PIDs before the parent goes
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        # Workers the server did not take down with it: by PID, only if still ours.
        for pid in sorted(self.seen_children):
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                continue
        deadline = time.monotonic() + 5
        for pid in sorted(self.seen_children):
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                time.sleep(0.05)
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self._log.close()


def stop_all(procs: list[Proc]) -> None:
    """Stop started processes, last first; one that will not stop does not keep the others."""
    for p in reversed(procs):
        try:
            p.stop()
        except Exception as exc:  # noqa: BLE001 - keep stopping the others
            log(f"could not stop {p.name} (pid {p.pid}): {exc}")


def skydns_command(package_dir: Path) -> list[str]:
    """The skydns command running the skydns package in ``package_dir`` (this repository,
    or e.g. a worktree of an older commit for a before figure): PYTHONPATH puts it ahead of
    the installed one, and the processes' cwd is a temporary directory. Without the
    SIGTERM lameduck where the build has one: a bench stops skydns many times, and the
    wait would only add seconds to each stop."""
    command = [find_tool("env"), f"PYTHONPATH={package_dir}", sys.executable, "-m", "skydns"]
    config = Path(package_dir) / "skydns" / "config.py"
    if config.is_file() and '"lameduck"' in config.read_text():
        command.append("-lameduck=0")
    return command


def wait_until(what: str, check, proc: Proc, timeout: float, interval: float = 0.2):
    """Call ``check()`` until it returns a truthy value; bounded by ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_err = None
    for _ in range(int(timeout / interval) + 10):
        if not proc.alive():
            raise BenchError(f"{proc.name} exited with code {proc.popen.returncode} while "
                             f"waiting for {what}; its log ends:\n{proc.log_tail()}")
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - the last error is reported on timeout
            last_err = exc
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise BenchError(f"{proc.name}: {what} not ready after {timeout:.0f} s (last error: "
                     f"{last_err!r}); its log ends:\n{proc.log_tail()}")


# --------------------------------------------------------------------------- etcd

def start_etcd(tmp: Path, cpus: str | None) -> tuple[Proc, int]:
    client, peer = free_port(), free_port()
    while peer == client:
        peer = free_port()
    data = tmp / "etcd-data"
    argv = taskset(cpus, [
        find_tool("etcd"), "--name", "bench", "--data-dir", str(data),
        "--listen-client-urls", f"http://{LOOPBACK}:{client}",
        "--advertise-client-urls", f"http://{LOOPBACK}:{client}",
        "--listen-peer-urls", f"http://{LOOPBACK}:{peer}",
        "--initial-advertise-peer-urls", f"http://{LOOPBACK}:{peer}",
        "--initial-cluster", f"bench=http://{LOOPBACK}:{peer}",
        "--initial-cluster-state", "new", "--log-outputs", "stderr",
        "--unsafe-no-fsync",
    ])
    proc = Proc("etcd", argv, tmp)
    etcdctl = find_tool("etcdctl")

    def healthy():
        r = subprocess.run([etcdctl, f"--endpoints=http://{LOOPBACK}:{client}",
                            "--command-timeout=2s", "endpoint", "health"],
                           capture_output=True, timeout=10, env={**os.environ,
                                                                 "ETCDCTL_API": "3"})
        return r.returncode == 0

    wait_until("etcd endpoint health", healthy, proc, timeout=30, interval=0.3)
    return proc, client


def load_records(etcd_port: int, names: int) -> None:
    """Write the SkyDNS records with the etcd3 client, 128 puts per transaction."""
    sys.path.insert(0, str(REPO))
    import etcd3
    from skydns.record import encode_record, fnv1a32_label

    client = etcd3.client(host=LOOPBACK, port=etcd_port, timeout=30)
    try:
        ops = []
        for i in range(names):
            value = encode_record(ip_for(i))
            key = f"/skydns/local/cluster/svc/bench/svc{i}/{fnv1a32_label(value)}"
            ops.append(client.transactions.put(key, value))
            if len(ops) == TXN_OPS or i == names - 1:
                ok, _ = client.transaction(compare=[], success=ops, failure=[])
                if not ok:
                    raise BenchError("etcd transaction failed")
                ops = []
        count = client.get_prefix("/skydns/local/cluster/svc/bench/", keys_only=True)
        got = sum(1 for _ in count)
        if got != names:
            raise BenchError(f"wrote {names} records but etcd holds {got}")
    finally:
        client.close()


# --------------------------------------------------------------------------- DNS servers

def dns_probe(port: int, i: int = 0) -> bool:
    """True when the server on ``port`` answers name i with NOERROR and its A record."""
    import dns.message
    import dns.query
    import dns.rcode
    import dns.rdatatype

    q = dns.message.make_query(name_for(i), dns.rdatatype.A)
    r = dns.query.udp(q, LOOPBACK, port=port, timeout=1.0)
    if r.rcode() != dns.rcode.NOERROR:
        raise BenchError(f"rcode {dns.rcode.to_text(r.rcode())}")
    addrs = {rd.address for rrset in r.answer if rrset.rdtype == dns.rdatatype.A
             for rd in rrset}
    if ip_for(i) not in addrs:
        raise BenchError(f"answer {sorted(addrs)} lacks {ip_for(i)}")
    return True


def verify_sample(server: str, port: int, names: int) -> None:
    """Spot-check a few names besides svc0 (first, last, a middle one)."""
    for i in sorted({0, names // 2, names - 1}):
        try:
            dns_probe(port, i)
        except Exception as exc:  # noqa: BLE001
            raise BenchError(f"{server} gave a wrong answer for {name_for(i)}: {exc}") from exc


def start_skydns(tmp: Path, etcd_port: int, cpus: str, workers: int | None,
                 extra: list[str], timeout: float, binary: str) -> tuple[Proc, int]:
    port = free_port()
    argv = [binary, f"-addr={LOOPBACK}:{port}", f"-machines=http://{LOOPBACK}:{etcd_port}",
            f"-domain={ZONE}", f"-nameservers={LOOPBACK}:9", "-healthz-port=0"]
    if workers is not None:
        argv.append(f"-workers={workers}")
    argv += extra
    proc = Proc("skydns", taskset(cpus, argv), tmp)
    wait_until("a NOERROR A answer for svc0", lambda: dns_probe(port), proc,
               timeout=timeout, interval=0.25)
    return proc, port


def start_dnsmasq(tmp: Path, names: int, cpus: str, timeout: float) -> tuple[Proc, int]:
    hosts = tmp / "bench.hosts"
    with open(hosts, "w") as f:
        for i in range(names):
            f.write(f"{ip_for(i)} {name_for(i).rstrip('.')}\n")
    os.chmod(tmp, 0o755)                      # readable by dnsmasq's user on SIGHUP too
    os.chmod(hosts, 0o644)
    port = free_port()
    argv = [find_tool("dnsmasq"), "--keep-in-foreground", "--conf-file=/dev/null",
            f"--port={port}", f"--listen-address={LOOPBACK}", "--bind-interfaces",
            "--no-resolv", "--no-hosts", f"--addn-hosts={hosts}",
            "--cache-size=10000", "--local-ttl=30", "--pid-file=",
            f"--log-facility={tmp / 'dnsmasq-own.log'}"]
    if os.geteuid() == 0:
        argv.append("--user=root")            # no need to drop to 'nobody' for a benchmark
    proc = Proc("dnsmasq", taskset(cpus, argv), tmp)
    wait_until("a NOERROR A answer for svc0", lambda: dns_probe(port), proc,
               timeout=timeout, interval=0.1)
    return proc, port


# --------------------------------------------------------------------------- dnsperf

_PATTERNS = {
    "sent": r"Queries sent:\s+(\d+)",
    "completed": r"Queries completed:\s+(\d+)",
    "lost": r"Queries lost:\s+(\d+)",
    "run_time": r"Run time \(s\):\s+([\d.]+)",
    "qps": r"Queries per second:\s+([\d.]+)",
    "avg_latency_s": r"Average Latency \(s\):\s+([\d.]+)",
    "latency_stddev_s": r"Latency StdDev \(s\):\s+([\d.]+)",
}


def parse_dnsperf(out: str) -> dict:
    res = {}
    for key, pat in _PATTERNS.items():
        m = re.search(pat, out)
        if not m:
            raise BenchError(f"dnsperf output lacks {key!r}:\n{out}")
        res[key] = float(m.group(1))
    m = re.search(r"Average Latency \(s\):\s+[\d.]+\s+\(min ([\d.]+), max ([\d.]+)\)", out)
    if m:
        res["min_latency_s"], res["max_latency_s"] = float(m.group(1)), float(m.group(2))
    m = re.search(r"Response codes:\s+(.*)", out)
    res["rcodes"] = {}
    if m:
        for code, n in re.findall(r"([A-Z]+) (\d+)", m.group(1)):
            res["rcodes"][code] = int(n)
    res["lost_pct"] = 100.0 * res["lost"] / res["sent"] if res["sent"] else 0.0
    return res


def run_dnsperf(args, port: int, qfile: Path, seconds: float, server: Proc,
                extra: tuple = ()) -> dict:
    """One dnsperf run of at most ``seconds`` against ``port``; ``extra`` adds dnsperf
    options (e.g. ``("-n", "1")`` to go through a file of unique names only once)."""
    argv = taskset(args.client_cpus, [
        find_tool("dnsperf"), "-s", LOOPBACK, "-p", str(port), "-d", str(qfile),
        "-l", str(seconds), "-c", str(args.clients), "-T", str(args.threads),
        "-q", str(args.outstanding), "-t", str(args.query_timeout),
        *(["-Q", str(args.max_qps)] if args.max_qps else []), *extra])
    tree = server.tree()
    cpu0 = cpu_seconds(tree)
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    srv_cores, cli_cores = parse_cpulist(args.server_cpus), parse_cpulist(args.client_cpus)
    st0, ct0 = core_ticks(srv_cores), core_ticks(cli_cores)
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    try:
        out, _ = p.communicate(timeout=seconds + args.query_timeout + 30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
    wall = time.monotonic() - t0
    cpu1 = cpu_seconds(tree)
    st1, ct1 = core_ticks(srv_cores), core_ticks(cli_cores)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)   # dnsperf (taskset execs it)
    client_cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    text = out.decode(errors="replace")
    if p.returncode != 0:
        raise BenchError(f"dnsperf exited {p.returncode}:\n{text}")
    res = parse_dnsperf(text)
    res["server_cpu_pct"] = 100.0 * (cpu1 - cpu0) / wall if wall > 0 else 0.0
    res["dnsperf_cpu_pct"] = 100.0 * client_cpu / wall if wall > 0 else 0.0
    # Whole-core busy time (None when not pinned): with softirq, unlike the figures above.
    res["server_core_busy_pct"] = busy_pct(st0, st1)
    res["client_core_busy_pct"] = busy_pct(ct0, ct1)
    return res


# --------------------------------------------------------------------------- main

def fmt_run(label: str, r: dict) -> str:
    return (f"{label:<11} {r['qps']:>10.0f} {r['avg_latency_s'] * 1000:>10.3f} "
            f"{r['lost_pct']:>7.2f} {r.get('noerror_pct', 0):>8.2f} "
            f"{r.get('server_cpu_pct', 0):>8.0f} {_pct(r.get('server_core_busy_pct')):>9} "
            f"{r.get('dnsperf_cpu_pct', 0):>9.0f} {_pct(r.get('client_core_busy_pct')):>10}")


def _pct(v) -> str:
    return "-" if v is None else f"{v:.0f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--names", type=int, default=1000, help="number of A records (1000)")
    ap.add_argument("--seconds", type=float, default=10, help="length of each dnsperf run (10)")
    ap.add_argument("--runs", type=int, default=3, help="dnsperf runs per server (3)")
    ap.add_argument("--workers", type=int, default=None,
                    help="pass -workers=N to skydns (SO_REUSEPORT worker processes)")
    ap.add_argument("--only", choices=("both", "skydns", "dnsmasq"), default="both",
                    help="measure only one server (dnsmasq needs no etcd and no skydns)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON here")
    ap.add_argument("--server-cpus", default="0",
                    help="taskset CPU list for both servers (0); '' for no pinning")
    ap.add_argument("--client-cpus", default="1",
                    help="taskset CPU list for dnsperf (1); '' for no pinning")
    ap.add_argument("--etcd-cpus", default="",
                    help="taskset CPU list for etcd (unpinned by default)")
    ap.add_argument("--clients", type=int, default=4, help="dnsperf -c, UDP sockets (4)")
    ap.add_argument("--threads", type=int, default=1, help="dnsperf -T (1)")
    ap.add_argument("--outstanding", type=int, default=100,
                    help="dnsperf -q, queries in flight at most (100)")
    ap.add_argument("--max-qps", type=int, default=0,
                    help="dnsperf -Q: cap the offered load, e.g. to read latency below "
                         "saturation (0 = no cap, measure the maximum)")
    ap.add_argument("--query-timeout", type=float, default=2,
                    help="dnsperf -t: seconds before a query counts as lost (2)")
    ap.add_argument("--warmup", type=float, default=1,
                    help="seconds of unrecorded dnsperf load per server first (1; 0 = none)")
    ap.add_argument("--startup-timeout", type=float, default=30,
                    help="seconds to wait for each server to answer (30)")
    ap.add_argument("--skydns", metavar="PATH",
                    help="the skydns executable (default: skydns in the venv's bin, else PATH)")
    ap.add_argument("--skydns-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for skydns, e.g. --skydns-arg=-verbose (repeatable)")
    args = ap.parse_args(argv)
    if not (1 <= args.names <= 1_000_000):
        ap.error("--names must be 1..1000000")
    if not (0 < args.seconds <= 600) or not (1 <= args.runs <= 50):
        ap.error("--seconds must be in (0, 600] and --runs in 1..50")
    if args.workers is not None and args.workers < 1:
        ap.error("--workers must be >= 1")

    servers = ["skydns", "dnsmasq"] if args.only == "both" else [args.only]

    # SIGTERM unwinds like Ctrl-C so the finally block below stops everything.
    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    tmp = Path(tempfile.mkdtemp(prefix="skydns-bench-"))
    procs: list[Proc] = []
    results: dict[str, list[dict]] = {s: [] for s in servers}
    ports: dict[str, int] = {}
    started: dict[str, Proc] = {}
    rc = 0
    try:
        for tool in ("dnsperf", "dnsmasq" if "dnsmasq" in servers else None,
                     "taskset" if (args.server_cpus or args.client_cpus) else None):
            if tool:
                find_tool(tool)
        qfile = tmp / "queries.txt"
        with open(qfile, "w") as f:
            for i in range(args.names):
                f.write(f"{name_for(i)} A\n")

        if "skydns" in servers:
            skydns_bin = args.skydns or find_tool("skydns")
            t0 = time.monotonic()
            etcd, etcd_port = start_etcd(tmp, args.etcd_cpus or None)
            procs.append(etcd)
            log(f"etcd up on {LOOPBACK}:{etcd_port} (pid {etcd.pid}) "
                f"in {time.monotonic() - t0:.1f} s")
            t0 = time.monotonic()
            load_records(etcd_port, args.names)
            log(f"wrote {args.names} records in {time.monotonic() - t0:.1f} s")
            t0 = time.monotonic()
            sky, ports["skydns"] = start_skydns(tmp, etcd_port, args.server_cpus,
                                                args.workers, args.skydns_arg,
                                                args.startup_timeout, skydns_bin)
            procs.append(sky)
            started["skydns"] = sky
            log(f"skydns answering on {LOOPBACK}:{ports['skydns']} (pid {sky.pid}) "
                f"after {time.monotonic() - t0:.1f} s")
        if "dnsmasq" in servers:
            dm, ports["dnsmasq"] = start_dnsmasq(tmp, args.names, args.server_cpus,
                                                 args.startup_timeout)
            procs.append(dm)
            started["dnsmasq"] = dm
            log(f"dnsmasq answering on {LOOPBACK}:{ports['dnsmasq']} (pid {dm.pid})")
        for s in servers:
            verify_sample(s, ports[s], args.names)

        if args.warmup > 0:
            for s in servers:
                run_dnsperf(args, ports[s], qfile, args.warmup, started[s])

        etcd_cpu = {s: 0.0 for s in servers}
        etcd_proc = etcd if "skydns" in servers else None
        for run in range(args.runs):
            for s in servers:
                e0 = cpu_seconds([etcd_proc.pid]) if etcd_proc else 0.0
                r = run_dnsperf(args, ports[s], qfile, args.seconds, started[s])
                if etcd_proc:
                    etcd_cpu[s] += cpu_seconds([etcd_proc.pid]) - e0
                done = r["completed"] or 1
                r["noerror_pct"] = 100.0 * r["rcodes"].get("NOERROR", 0) / done
                results[s].append(r)
                log(f"run {run + 1}/{args.runs} {s}: {r['qps']:.0f} qps, "
                    f"{r['avg_latency_s'] * 1000:.3f} ms, lost {r['lost_pct']:.2f}%")
                if not started[s].alive():
                    raise BenchError(f"{s} died during the run:\n{started[s].log_tail()}")

        rss = {}
        for s in servers:
            tree = started[s].tree()
            parts = [vm_rss_kib(p) for p in tree]
            rss[s] = {"pid": started[s].pid, "processes": len(tree),
                      "vmrss_kib": sum(p for p in parts if p)}

        # ---------------------------------------------------------------- report
        print()
        print(f"names={args.names} seconds={args.seconds:g} runs={args.runs} "
              f"workers={args.workers if args.workers is not None else '-'} "
              f"server cpus={args.server_cpus or 'any'} dnsperf cpus="
              f"{args.client_cpus or 'any'} (-c {args.clients} -T {args.threads} "
              f"-q {args.outstanding}"
              f"{f' -Q {args.max_qps}' if args.max_qps else ''})")
        print()
        print(f"{'run':<11} {'qps':>10} {'avg ms':>10} {'lost %':>7} {'NOERROR%':>8} "
              f"{'srv cpu%':>8} {'srv core%':>9} {'perf cpu%':>9} {'perf core%':>10}")
        for run in range(args.runs):
            for s in servers:
                print(fmt_run(f"{s}#{run + 1}", results[s][run]))
        print()
        med = {}
        for s in servers:
            rs = results[s]
            med[s] = {k: statistics.median(r[k] for r in rs)
                      for k in ("qps", "avg_latency_s", "lost_pct", "server_cpu_pct",
                                "dnsperf_cpu_pct", "noerror_pct")}
            for k in ("server_core_busy_pct", "client_core_busy_pct"):
                vals = [r[k] for r in rs if r[k] is not None]
                med[s][k] = statistics.median(vals) if vals else None
            print(fmt_run(f"{s} med", med[s]))
        print()
        ratio = ratio_cpu = None
        if len(servers) == 2 and med["dnsmasq"]["qps"] > 0:
            ratio = med["skydns"]["qps"] / med["dnsmasq"]["qps"]
            print(f"skydns/dnsmasq median qps: ratio {ratio:.2f} of dnsmasq")
            per_cpu = {s: med[s]["qps"] * 100.0 / med[s]["server_cpu_pct"]
                       for s in servers if med[s]["server_cpu_pct"] > 0}
            if len(per_cpu) == 2 and per_cpu["dnsmasq"] > 0:
                ratio_cpu = per_cpu["skydns"] / per_cpu["dnsmasq"]
                print(f"queries per server CPU-second: skydns {per_cpu['skydns']:.0f}, "
                      f"dnsmasq {per_cpu['dnsmasq']:.0f}: ratio {ratio_cpu:.2f} of dnsmasq")
            idle = [s for s in servers
                    if (med[s]["server_core_busy_pct"] or 100) < 90]
            if idle:
                print(f"note: the server core was < 90% busy during the {' and '.join(idle)}"
                      f" runs: dnsperf, not the server, set the pace there, so the "
                      f"per-CPU ratio is the fairer figure")
        for s in servers:
            print(f"{s} VmRSS after the runs: {rss[s]['vmrss_kib'] / 1024:.1f} MiB "
                  f"(pid {rss[s]['pid']}, {rss[s]['processes']} process"
                  f"{'es' if rss[s]['processes'] != 1 else ''})")
        if etcd_proc:
            per = ", ".join(f"during {s} runs {etcd_cpu[s]:.2f} s" for s in servers)
            print(f"etcd CPU time: {per}")

        bad = [s for s in servers if med[s]["noerror_pct"] < 99.0]
        for s in bad:
            print(f"WARNING: {s} answered only {med[s]['noerror_pct']:.2f}% NOERROR "
                  f"(response codes {results[s][-1]['rcodes']})")
        if bad:
            rc = 1

        if args.json:
            doc = {"names": args.names, "seconds": args.seconds, "runs": args.runs,
                   "workers": args.workers, "server_cpus": args.server_cpus,
                   "client_cpus": args.client_cpus,
                   "dnsperf": {"clients": args.clients, "threads": args.threads,
                               "outstanding": args.outstanding, "max_qps": args.max_qps},
                   "results": results, "median": med, "ratio_qps": ratio,
                   "ratio_qps_per_cpu": ratio_cpu,
                   "rss": rss, "etcd_cpu_s": etcd_cpu if etcd_proc else None}
            Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
            log(f"wrote {args.json}")
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
