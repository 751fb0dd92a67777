#!/usr/bin/env python3
"""Cluster scale (issue 9): kube2sky and skydns on a large seeded cluster, each figure
beside a reference measured in the same run.

The cluster, written as one JSON ``List`` and seeded into the Kubernetes API emulator
(``python -m kubeemu --seed FILE``, a separate process):

* ``--namespaces`` Namespace objects (``ns-0`` ...); every other object goes to
  ``ns-(i mod namespaces)``.
* ``--services`` services ``svc-i``: the first half ClusterIP (address allocated by the
  emulator) with two named ports, ``http`` 80/TCP and ``metrics`` 9090/TCP; the other half
  headless (``clusterIP: None``, same ports), each with a v1 Endpoints object holding
  ``--addresses`` ready addresses (10.64.0.0/11) and the same two named ports; every other
  headless service has a ``hostname`` on each address. The emulator mirrors the Endpoints
  into EndpointSlices itself.
* ``--pods`` running pods ``pod-i`` (``status.phase: Running``, ``status.podIP`` in
  10.128.0.0/10).

Then, on 127.0.0.1 only:

1. The emulator's own list time (plain HTTP GET of pods, services, endpointslices: whole,
   and in pages of 500), a floor under kube2sky's list phase.
2. kube2sky against a fresh etcd: seconds from start to ``/readiness`` 200, keys under
   ``/skydns/`` and ``/kube2sky/keys/``, VmRSS (and VmHWM) then. Reference: a bare etcd3
   client writing the same number of keys in 128-op transactions into another fresh etcd;
   and CoreDNS's published memory formula, (pods + services)/1000 + 54 MB.
3. kube2sky restarted against the synced etcd: seconds to ``/readiness`` 200 and the keys
   it wrote (from its log line ``initial sync done in ...: N keys desired, W written, D
   deleted``). Target: 0 written, <= 5 s.
4. skydns cold load of all the records: seconds from start to ``/healthz`` 200, and VmRSS
   then. Reference: one bare etcd3 ``get_prefix("/skydns/")`` range read; the CoreDNS
   formula.
   Last (after the churn, so that its memory figures start from the cache as loaded):
   one client asks once for the A name and both SRV names of every headless service
   (``--skip-wide`` to leave out); skydns's VmRSS after it, against just before it and
   the manifest's 200Mi limit (the answer cache's byte budget at work).
5. API create -> correct UDP answer: ``--creates`` new ClusterIP services, one at a time,
   each POSTed to the emulator (the request ``CoreV1Api.create_namespaced_service`` sends);
   skydns is then asked ``<name>.<ns>.svc.cluster.local. A`` over UDP every ~1 ms until it
   answers with the clusterIP from the create response (or ``--create-timeout``).
   p50/p99/max from the start of the POST; the POST alone is the reference. The POSTs
   share one kept-alive connection, as the kubernetes client's pool does
   (``--new-connections`` opens one per POST).

Prints progress while waiting, then one markdown table (figure | measured | reference |
target) and one JSON line with every figure. Every process started here is stopped by
its PID on exit (also on Ctrl-C and SIGTERM) and the temporary directory is removed.

Run from the repository root::

    .venv/bin/python bench/cluster_scale.py                      # the issue's sizes
    .venv/bin/python bench/cluster_scale.py --services 400 --pods 800 --addresses 5
    .venv/bin/python bench/cluster_scale.py --skip-restart --skip-skydns   # sync only
    .venv/bin/python bench/cluster_scale.py --kube2sky-dir /tmp/before     # another build
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import random
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dnsperf_vs_dnsmasq import (LOOPBACK, REPO, BenchError, Proc, find_tool, free_port,  # noqa: E402
                                log, skydns_command, start_etcd, stop_all, vm_rss_kib)

sys.path.insert(0, str(REPO))
import dns.exception  # noqa: E402
import dns.message  # noqa: E402
import dns.rdatatype  # noqa: E402
import etcd3  # noqa: E402
from skydns.rcache import resource_records  # noqa: E402

ZONE = "cluster.local."
RECORDS = "/skydns/"
MARKERS = "/kube2sky/keys/"
# kube2sky's log lines that time its phases: lists, reconcile, writes, the end of the sync.
PHASE_LINE = re.compile(r"listed \d+ |listed objects applied|reconciled etcd|wrote \d+ keys|"
                        r"initial sync done")
TXN_OPS = 128                                   # etcd's default --max-txn-ops
GRPC_OPTIONS = [("grpc.max_receive_message_length", 256 * 1024 * 1024)]  # as skydns
PORTS = [{"name": "http", "port": 80, "protocol": "TCP"},
         {"name": "metrics", "port": 9090, "protocol": "TCP"}]
POD_NET, POD_SPAN = 128, 64                     # pods in 10.128.0.0/10
EP_NET, EP_SPAN = 64, 32                        # endpoint addresses in 10.64.0.0/11
PROGRESS_EVERY = 5.0
LIST_PAGE = 500
SYNC_LINE = re.compile(r"initial sync done in ([\d.]+)s: (\d+) keys desired, (\d+) written, "
                       r"(\d+) deleted")
TARGETS = {"sync_s": 15.0, "kube2sky_rss_mib": 200.0, "restart_s": 5.0,
           "skydns_load_s": 3.0, "skydns_rss_mib": 150.0, "create_p99_ms": 50.0,
           "wide_rss_mib": 200.0}


# --------------------------------------------------------------------------- helpers

def status_kib(pid: int, field: str) -> int | None:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM), or None if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def mib(kib: int | None) -> float | None:
    return None if kib is None else kib / 1024


def coredns_mb(pods: int, services: int) -> float:
    """CoreDNS's published memory formula (kubernetes plugin, default settings)."""
    return (pods + services) / 1000 + 54


def ip_in(net: int, span: int, n: int) -> str:
    """The n-th address of 10.net.0.0 (``span`` /16s), never ending in .0 or .255."""
    block, host = divmod(n, 254)
    if block // 256 >= span:
        raise BenchError(f"address {n} does not fit in 10.{net}.0.0 + {span} /16s")
    return f"10.{net + block // 256}.{block % 256}.{host + 1}"


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile; math.inf stands for a probe that never got its answer."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def etcd_client(port: int):
    return etcd3.client(host=LOOPBACK, port=port, timeout=120, grpc_options=GRPC_OPTIONS)


def count(client, prefix: str) -> int:
    return client.get_prefix_response(prefix, count_only=True).count


def progress_wait(what: str, check, procs: list[Proc], timeout: float, status=None,
                  interval: float = 0.1) -> float:
    """Call ``check()`` until truthy; returns the seconds it took. Logs ``status()`` every
    PROGRESS_EVERY seconds; raises if one of ``procs`` exits or after ``timeout``."""
    started = time.monotonic()
    deadline = started + timeout
    next_report = started + PROGRESS_EVERY
    last_err = None
    while True:
        for proc in procs:
            if not proc.alive():
                raise BenchError(f"{proc.name} exited with code {proc.popen.returncode} while "
                                 f"waiting for {what}; its log ends:\n{proc.log_tail()}")
        try:
            if check():
                return time.monotonic() - started
            last_err = None
        except Exception as exc:  # noqa: BLE001 - the last error is reported on timeout
            last_err = exc
        now = time.monotonic()
        if now >= deadline:
            raise BenchError(f"{what}: not done after {timeout:.0f} s (last error: "
                             f"{last_err!r}); {procs[0].name}'s log ends:\n"
                             f"{procs[0].log_tail()}")
        if now >= next_report:
            extra = ""
            if status is not None:
                try:
                    extra = ", " + status()
                except Exception as exc:  # noqa: BLE001 - progress only
                    extra = f", (status unavailable: {exc.__class__.__name__})"
            log(f"  ... {what}: {now - started:.0f} s{extra}")
            next_report = now + PROGRESS_EVERY
        time.sleep(interval)


# --------------------------------------------------------------------------- the cluster

def cluster_items(a) -> list[dict]:
    namespaces = [f"ns-{k}" for k in range(a.namespaces)]
    items: list[dict] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}
                         for n in namespaces]
    clusterip = a.services - a.services // 2
    address = 0
    for i in range(a.services):
        ns, name = namespaces[i % a.namespaces], f"svc-{i}"
        meta = {"name": name, "namespace": ns, "labels": {"app": name}}
        spec = {"type": "ClusterIP", "selector": {"app": name},
                "ports": [dict(p, targetPort=p["port"]) for p in PORTS]}
        if i >= clusterip:
            spec["clusterIP"] = "None"
        items.append({"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec})
        if i < clusterip:
            continue
        hostnames = (i - clusterip) % 2 == 0
        addresses = []
        for j in range(a.addresses):
            entry = {"ip": ip_in(EP_NET, EP_SPAN, address)}
            if hostnames:
                entry["hostname"] = f"host-{j}"
            addresses.append(entry)
            address += 1
        items.append({"apiVersion": "v1", "kind": "Endpoints",
                      "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
                      "subsets": [{"addresses": addresses, "ports": PORTS}]})
    for i in range(a.pods):
        ip = ip_in(POD_NET, POD_SPAN, i)
        items.append({"apiVersion": "v1", "kind": "Pod",
                      "metadata": {"name": f"pod-{i}", "namespace": namespaces[i % a.namespaces],
                                   "labels": {"app": f"svc-{i % max(1, a.services)}"}},
                      "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.9"}]},
                      "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
    return items


def write_seed(a, path: Path) -> dict:
    started = time.perf_counter()
    items = cluster_items(a)
    text = json.dumps({"apiVersion": "v1", "kind": "List", "items": items},
                      separators=(",", ":"))
    path.write_text(text)
    headless = a.services // 2
    return {"seconds": time.perf_counter() - started, "bytes": len(text),
            "objects": len(items), "clusterip": a.services - headless, "headless": headless,
            "endpoint_addresses": headless * a.addresses}


# --------------------------------------------------------------------------- processes

def start_emulator(a, tmp: Path, seed: Path) -> tuple[Proc, str, float]:
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    proc = Proc("kubeemu", [sys.executable, "-m", "kubeemu", "--host", LOOPBACK,
                            "--port", str(port), "--seed", str(seed),
                            "--history", str(a.history)], tmp)
    banner = f"kubeemu: serving the Kubernetes API emulator at {url}"

    def up():
        if banner not in proc.logpath.read_text(errors="replace"):
            return False
        return http_get(url + "/version")[0] == 200

    seconds = progress_wait("kubeemu seeding", up, [proc], a.seed_timeout, interval=0.1,
                            status=lambda: f"kubeemu VmRSS {vm_rss_kib(proc.pid) / 1024:.0f} MiB")
    return proc, url, seconds


def kube2sky_argv(a, api_url: str, etcd_port: int, health_port: int) -> list[str]:
    if a.kube2sky_dir:
        base = [find_tool("env"), f"PYTHONPATH={a.kube2sky_dir}", sys.executable, "-m",
                "kube2sky"]
    else:
        base = [find_tool("kube2sky")]
    return [*base, f"--kube-master-url={api_url}",
            f"--etcd-server=http://{LOOPBACK}:{etcd_port}",
            f"--healthz-port={health_port}", f"--healthz-addr={LOOPBACK}", *a.kube2sky_arg]


def run_kube2sky(a, name: str, tmp: Path, procs: list[Proc], api_url: str,
                 etcd_port: int) -> tuple[Proc, dict]:
    """Start kube2sky and wait for /readiness 200, logging progress; returns its figures."""
    health = free_port()
    client = etcd_client(etcd_port)
    started = time.monotonic()
    proc = Proc(name, kube2sky_argv(a, api_url, etcd_port, health), tmp)
    procs.append(proc)
    ready_url = f"http://{LOOPBACK}:{health}/readiness"

    def ready():
        return http_get(ready_url, timeout=2)[0] == 200

    def status():
        code, body = http_get(ready_url, timeout=2)
        reason = " / ".join(body.decode(errors="replace").split("\n")[:2]).strip()
        return (f"{count(client, RECORDS)} records + {count(client, MARKERS)} markers in "
                f"etcd, VmRSS {vm_rss_kib(proc.pid) / 1024:.0f} MiB, readiness {code}: "
                f"{reason[:120]}")

    try:
        progress_wait(f"{name} readiness", ready, [proc], a.timeout, status, interval=0.05)
        seconds = time.monotonic() - started
        out = {"seconds": seconds, "vmrss_kib": vm_rss_kib(proc.pid),
               "vmhwm_kib": status_kib(proc.pid, "VmHWM"),
               "records": count(client, RECORDS), "markers": count(client, MARKERS)}
    finally:
        client.close()
    # The controller logs the line right after it marks itself ready: allow it a moment.
    deadline = time.monotonic() + 3
    match = None
    while time.monotonic() < deadline:
        text = proc.logpath.read_text(errors="replace")
        match = SYNC_LINE.search(text)
        if match:
            break
        time.sleep(0.05)
    phases = [line.split(": ", 1)[-1] for line in text.splitlines() if PHASE_LINE.search(line)]
    for line in phases:
        log(f"  {name} log: {line}")
    if match:
        out.update(log_seconds=float(match.group(1)), desired=int(match.group(2)),
                   written=int(match.group(3)), deleted=int(match.group(4)))
    else:
        out.update(log_seconds=None, desired=None, written=None, deleted=None)
    return proc, out


def start_skydns(a, tmp: Path, procs: list[Proc], etcd_port: int) -> tuple[Proc, int, dict]:
    port = free_port()
    health = free_port()
    while health == port:
        health = free_port()
    argv = [*skydns_command(a.skydns_dir), f"-addr={LOOPBACK}:{port}",
            f"-machines=http://{LOOPBACK}:{etcd_port}", f"-domain={ZONE}",
            f"-nameservers={LOOPBACK}:9", f"-healthz-port={health}",
            f"-healthz-addr={LOOPBACK}", "-workers=1", *a.skydns_arg]
    started = time.monotonic()
    proc = Proc("skydns", argv, tmp)
    procs.append(proc)
    url = f"http://{LOOPBACK}:{health}/healthz"

    def healthy():
        return http_get(url, timeout=2)[0] == 200

    def status():
        code, body = http_get(url, timeout=2)
        return (f"VmRSS {vm_rss_kib(proc.pid) / 1024:.0f} MiB, /healthz {code}: "
                f"{' / '.join(body.decode(errors='replace').split(chr(10))[:2])[:120]}")

    progress_wait("skydns /healthz", healthy, [proc], a.timeout, status, interval=0.05)
    seconds = time.monotonic() - started
    return proc, port, {"seconds": seconds, "vmrss_kib": vm_rss_kib(proc.pid),
                        "vmhwm_kib": status_kib(proc.pid, "VmHWM")}


# --------------------------------------------------------------------------- references

def emulator_lists(api_url: str) -> dict:
    """Seconds to GET (and json-parse) each list from the emulator, whole and paged."""
    paths = {"pods": "/api/v1/pods", "services": "/api/v1/services",
             "endpointslices": "/apis/discovery.k8s.io/v1/endpointslices"}
    out = {}
    host, port = api_url.rsplit("//", 1)[1].split(":")
    for kind, path in paths.items():
        conn = http.client.HTTPConnection(host, int(port), timeout=300)
        try:
            started = time.perf_counter()
            conn.request("GET", path, headers={"Accept": "application/json"})
            resp = conn.getresponse()
            body = resp.read()
            body_s = time.perf_counter() - started
            if resp.status != 200:
                raise BenchError(f"GET {path}: HTTP {resp.status}")
            items = len(json.loads(body)["items"])
            whole_s = time.perf_counter() - started
            started, pages, token, paged_items = time.perf_counter(), 0, "", 0
            for _ in range(100000):
                query = f"?limit={LIST_PAGE}" + (f"&continue={token}" if token else "")
                conn.request("GET", path + query, headers={"Accept": "application/json"})
                resp = conn.getresponse()
                page = resp.read()
                if resp.status != 200:
                    raise BenchError(f"GET {path}{query}: HTTP {resp.status}")
                doc = json.loads(page)
                pages += 1
                paged_items += len(doc["items"])
                token = (doc.get("metadata") or {}).get("continue")
                if not token:
                    break
            paged_s = time.perf_counter() - started
        finally:
            conn.close()
        out[kind] = {"items": items, "bytes": len(body), "body_s": body_s, "whole_s": whole_s,
                     "paged_s": paged_s, "pages": pages, "paged_items": paged_items}
    return out


def bare_writes(etcd_port: int, keys: int) -> float:
    """Seconds for one etcd3 client to put ``keys`` keys in 128-op transactions."""
    client = etcd_client(etcd_port)
    value = '{"host":"10.64.0.1","port":80,"priority":10,"weight":10,"ttl":30}'
    try:
        started = time.perf_counter()
        ops = []
        for i in range(keys):
            ops.append(client.transactions.put(f"/bench/k{i}", value))
            if len(ops) == TXN_OPS or i == keys - 1:
                ok, _ = client.transaction(compare=[], success=ops, failure=[])
                if not ok:
                    raise BenchError("bare etcd transaction failed")
                ops = []
        return time.perf_counter() - started
    finally:
        client.close()


def bare_read(etcd_port: int) -> tuple[float, int, int]:
    """Seconds for one range read of every key under /skydns/; (seconds, keys, bytes)."""
    client = etcd_client(etcd_port)
    try:
        started = time.perf_counter()
        response = client.get_prefix_response(RECORDS)
        kvs = list(response.kvs)
        nbytes = sum(len(kv.key) + len(kv.value) for kv in kvs)
        return time.perf_counter() - started, len(kvs), nbytes
    finally:
        client.close()


# --------------------------------------------------------------------------- create -> answer

def answer_has(wire: bytes, want: str) -> bool:
    """Whether a NOERROR reply answers the A address ``want``. The answer section is walked
    here rather than parsed by dnspython (~0.2 ms for a 20-address answer): a timed change
    is polled every millisecond, and under churn the parsing was most of this bench's own
    CPU, taken from the servers it measures. Raises ValueError for a malformed reply."""
    return socket.inet_aton(want) in a_rdata(wire)


def a_rdata(wire: bytes) -> list[bytes]:
    """The 4-byte rdata of every A record in a reply's answer section ([] unless the
    rcode is NOERROR), by skydns's own walk of a message's records
    (``skydns.rcache.resource_records``)."""
    if len(wire) < 12:
        raise ValueError("shorter than a DNS header")
    if wire[3] & 0x0F:
        return []
    return [wire[end - 4:end] for section, rtype, ttl_at, end in resource_records(wire)
            if section == 1 and rtype == 1 and end - ttl_at == 10]  # TTL, length, 4 bytes


def poll_answer(sock: socket.socket, qname: str, want: str, deadline: float,
                interval: float) -> tuple[float | None, int]:
    """Ask ``qname`` A every ``interval`` s until the answer holds ``want``; returns
    (perf_counter time of the right answer or None at ``deadline``, queries sent)."""
    wire = bytearray(dns.message.make_query(qname, dns.rdatatype.A).to_wire())
    sent = 0
    next_send = time.perf_counter()
    while True:
        now = time.perf_counter()
        if now >= deadline:
            return None, sent
        if next_send > now:
            time.sleep(next_send - now)
        qid = random.getrandbits(16)
        wire[0:2] = qid.to_bytes(2, "big")
        try:
            sock.send(wire)
        except OSError:
            pass
        sent += 1
        next_send = time.perf_counter() + interval
        wait_until = min(deadline, time.perf_counter() + 0.2)
        for _ in range(1000):                # bounded: stale replies are skipped
            left = wait_until - time.perf_counter()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                data = sock.recv(65535)
            except socket.timeout:
                break
            except OSError:                  # ICMP unreachable: the server is gone
                time.sleep(min(left, 0.01))
                break
            if len(data) < 12 or data[:2] != wire[:2]:
                continue
            got = time.perf_counter()
            try:
                if answer_has(data, want):
                    return got, sent
            except ValueError:
                pass
            break


def wide_queries(a, dns_port: int, sky: Proc) -> dict:
    """skydns's VmRSS before and after one UDP query (EDNS 4096) for the A name and each
    named port's SRV name of every headless service: the answer cache at its fullest
    (a headless answer is kept in up to 16 round-robin rotations), one client's worth."""
    clusterip = a.services - a.services // 2
    names = []
    for i in range(clusterip, a.services):
        fqdn = f"svc-{i}.ns-{i % a.namespaces}.svc.{ZONE}"
        names.append((fqdn, dns.rdatatype.A))
        names += [(f"_{p['name']}._tcp.{fqdn}", dns.rdatatype.SRV) for p in PORTS]
    before = vm_rss_kib(sky.pid)
    answered, started = 0, time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((LOOPBACK, dns_port))
        sock.settimeout(2)
        for i, (name, rdtype) in enumerate(names):
            query = dns.message.make_query(name, rdtype, use_edns=0, payload=4096)
            sock.send(query.to_wire())
            try:
                reply = dns.message.from_wire(sock.recv(65535))
                answered += bool(reply.answer)
            except (socket.timeout, dns.exception.DNSException):
                pass
            if i % 5000 == 4999:
                log(f"  ... wide queries: {i + 1} of {len(names)}, skydns VmRSS "
                    f"{vm_rss_kib(sky.pid) / 1024:.0f} MiB")
    return {"queries": len(names), "answered": answered,
            "seconds": time.monotonic() - started, "before_kib": before,
            "after_kib": vm_rss_kib(sky.pid), "vmhwm_kib": status_kib(sky.pid, "VmHWM")}


def create_to_answer(a, api_url: str, dns_port: int, sky: Proc, k2s: Proc) -> dict:
    host, port = api_url.rsplit("//", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if a.new_connections:
        headers["Connection"] = "close"
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((LOOPBACK, dns_port))
    latencies, create_ms, queries, lost = [], [], [], 0
    consecutive_lost = 0
    try:
        for k in range(a.creates):
            for proc in (sky, k2s):
                if not proc.alive():
                    raise BenchError(f"{proc.name} died during the create test:\n"
                                     f"{proc.log_tail()}")
            ns, name = f"ns-{k % a.namespaces}", f"probe-{k}"
            body = json.dumps({"apiVersion": "v1", "kind": "Service",
                               "metadata": {"name": name, "namespace": ns},
                               "spec": {"type": "ClusterIP", "selector": {"app": name},
                                        "ports": PORTS}})
            t0 = time.perf_counter()
            conn.request("POST", f"/api/v1/namespaces/{ns}/services", body=body,
                         headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            t_created = time.perf_counter()
            if a.new_connections:
                conn.close()                 # the next request connects afresh
            if resp.status != 201:
                raise BenchError(f"creating {ns}/{name}: HTTP {resp.status}: {data[:300]!r}")
            ip = json.loads(data)["spec"]["clusterIP"]
            create_ms.append(1000 * (t_created - t0))
            got, sent = poll_answer(sock, f"{name}.{ns}.svc.{ZONE}", ip,
                                    t0 + a.create_timeout, a.poll_interval)
            queries.append(sent)
            if got is None:
                lost += 1
                consecutive_lost += 1
                latencies.append(math.inf)
                log(f"  {name}.{ns}: no correct answer within {a.create_timeout:g} s")
                if consecutive_lost >= 3:
                    raise BenchError(f"3 services in a row never got a correct answer; "
                                     f"kube2sky's log ends:\n{k2s.log_tail(10)}\n"
                                     f"skydns's log ends:\n{sky.log_tail(10)}")
            else:
                consecutive_lost = 0
                latencies.append(1000 * (got - t0))
            if (k + 1) % 50 == 0:
                done = [x for x in latencies if x != math.inf]
                log(f"  ... create -> answer: {k + 1}/{a.creates}, p50 so far "
                    f"{percentile(done, 50):.1f} ms")
    finally:
        conn.close()
        sock.close()
    return {"count": len(latencies), "lost": lost,
            "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
            "max_ms": max(latencies), "create_p50_ms": percentile(create_ms, 50),
            "create_p99_ms": percentile(create_ms, 99),
            "queries_per_create_p50": percentile(queries, 50),
            "over_35ms": sum(1 for x in latencies if x > 35),
            "latencies_ms": [round(x, 2) for x in latencies]}


# --------------------------------------------------------------------------- report

def fmt_ms(v: float, timeout_s: float) -> str:
    return f">{timeout_s * 1000:.0f}" if v == math.inf else f"{v:.1f}"


def verdict(ok: bool) -> str:
    return "met" if ok else "not met"


def report(a, res: dict) -> None:
    seed, sizes = res["seed"], res["sizes"]
    coredns = coredns_mb(a.pods, a.services)
    print()
    print(f"sizes: {a.services} services ({sizes['clusterip']} ClusterIP with 2 ports, "
          f"{sizes['headless']} headless x {a.addresses} addresses = "
          f"{sizes['endpoint_addresses']} endpoint addresses, half with hostnames), "
          f"{a.pods} pods, {a.namespaces} namespaces; {seed['objects']} objects seeded")
    print(f"seed: JSON List {seed['bytes'] / 1e6:.1f} MB written in {seed['seconds']:.1f} s; "
          f"kubeemu start + seed until /version answers: {res['kubeemu']['start_s']:.1f} s, "
          f"kubeemu VmRSS then {mib(res['kubeemu']['vmrss_kib']):.0f} MiB")
    rows = []
    lists = res.get("lists")
    if lists:
        whole = " + ".join(f"{k} {v['whole_s']:.2f} s ({v['items']}, {v['bytes'] / 1e6:.1f} MB)"
                           for k, v in lists.items())
        paged = ", ".join(f"{k} {v['paged_s']:.2f} s ({v['pages']} pages)"
                          for k, v in lists.items())
        total = sum(v["whole_s"] for v in lists.values())
        rows.append(("emulator list, plain HTTP GET + json.loads (no kube2sky)",
                     f"{whole} = {total:.2f} s", f"paged by {LIST_PAGE}: {paged}",
                     "reference: floor under the list phase"))
    s = res.get("sync")
    if s:
        keys = s["records"] + s["markers"]
        bare = res["bare_writes_s"]
        rows.append(("kube2sky initial sync to /readiness 200 (fresh etcd)",
                     f"{s['seconds']:.2f} s ({s['records']} records + {s['markers']} markers, "
                     f"{keys / s['seconds']:,.0f} keys/s; kube2sky logs "
                     f"{'?' if s['log_seconds'] is None else format(s['log_seconds'], '.1f')} s"
                     f", {s['written']} written)",
                     f"bare etcd3, {TXN_OPS}-op txns of {keys} keys: {bare:.2f} s "
                     f"({keys / bare:,.0f} keys/s); ratio {s['seconds'] / bare:.1f}x",
                     f"<= {TARGETS['sync_s']:g} s {verdict(s['seconds'] <= TARGETS['sync_s'])}"))
        rss = mib(s["vmrss_kib"])
        rows.append(("kube2sky VmRSS after the sync",
                     f"{rss:.1f} MiB (peak VmHWM {mib(s['vmhwm_kib']):.1f} MiB)",
                     f"CoreDNS formula (pods + services)/1000 + 54 = {coredns:.1f} MB",
                     f"<= {TARGETS['kube2sky_rss_mib']:g} MiB "
                     f"{verdict(rss <= TARGETS['kube2sky_rss_mib'])}"))
    r = res.get("restart")
    if r:
        written = "? (log line not found)" if r["written"] is None else str(r["written"])
        detail = "" if r["desired"] is None else \
            f" ({r['desired']} desired, {r['deleted']} deleted; log says {r['log_seconds']:.1f} s)"
        ok = r["written"] == 0 and r["seconds"] <= TARGETS["restart_s"]
        rows.append(("kube2sky restart against the synced etcd",
                     f"{r['seconds']:.2f} s to /readiness 200, {written} keys written{detail}",
                     f"the cold sync above: {s['seconds']:.2f} s, {s['written']} written"
                     if s else "-", f"0 written, <= {TARGETS['restart_s']:g} s {verdict(ok)}"))
    k = res.get("skydns")
    if k:
        read_s, read_keys, read_bytes = res["bare_read"]
        rows.append(("skydns cold load, start to /healthz 200",
                     f"{k['seconds']:.2f} s (with an empty etcd: "
                     f"{res['skydns_empty']['seconds']:.2f} s)",
                     f"bare etcd3 get_prefix('/skydns/') of "
                     f"{read_keys} keys ({read_bytes / 1e6:.1f} MB): {read_s:.2f} s; ratio "
                     f"{k['seconds'] / read_s:.1f}x",
                     f"<= {TARGETS['skydns_load_s']:g} s "
                     f"{verdict(k['seconds'] <= TARGETS['skydns_load_s'])}"))
        rss = mib(k["vmrss_kib"])
        empty = res["skydns_empty"]
        per_record = (k["vmrss_kib"] - empty["vmrss_kib"]) * 1024 / max(1, read_keys)
        rows.append(("skydns VmRSS when /healthz is 200",
                     f"{rss:.1f} MiB (peak VmHWM {mib(k['vmhwm_kib']):.1f} MiB); "
                     f"{per_record:.0f} B per record over an empty store's "
                     f"{mib(empty['vmrss_kib']):.1f} MiB",
                     f"CoreDNS formula: {coredns:.1f} MB",
                     f"<= {TARGETS['skydns_rss_mib']:g} MiB "
                     f"{verdict(rss <= TARGETS['skydns_rss_mib'])}"))
    c = res.get("create")
    if c:
        t = a.create_timeout
        rows.append((f"API create -> correct UDP answer ({c['count']} ClusterIP services)",
                     f"p50 {fmt_ms(c['p50_ms'], t)} / p99 {fmt_ms(c['p99_ms'], t)} / max "
                     f"{fmt_ms(c['max_ms'], t)} ms, {c['over_35ms']} over 35 ms, "
                     f"{c['lost']} lost",
                     f"the POST alone: p50 {c['create_p50_ms']:.1f} / p99 "
                     f"{c['create_p99_ms']:.1f} ms",
                     f"p99 <= {TARGETS['create_p99_ms']:g} ms "
                     f"{verdict(c['p99_ms'] <= TARGETS['create_p99_ms'])}"))
    if res.get("churn"):
        from churn import report_rows
        rows.extend(report_rows(a, res["churn"]))
    w = res.get("wide")
    if w:
        after = mib(w["after_kib"])
        rows.append((f"skydns VmRSS after one client asked every headless service's A and "
                     f"SRV names once ({w['queries']} queries)",
                     f"{after:.1f} MiB (peak VmHWM {mib(w['vmhwm_kib']):.1f} MiB); "
                     f"{w['answered']} answered in {w['seconds']:.1f} s",
                     f"VmRSS just before: {mib(w['before_kib']):.1f} MiB",
                     f"<= {TARGETS['wide_rss_mib']:g} MiB (the manifest's limit) "
                     f"{verdict(after <= TARGETS['wide_rss_mib'])}"))
    print()
    print("| figure | measured | reference (same run) | target |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    print(json.dumps(finite({"args": {k: (str(v) if isinstance(v, Path) else v)
                                      for k, v in vars(a).items()},
                             "coredns_formula_mb": coredns, **res}), separators=(",", ":")))


def finite(obj):
    """A copy for JSON: an infinite latency (a lost probe) becomes null."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, float) and (math.isinf(obj) or math.isnan(obj)):
        return None
    return obj


# --------------------------------------------------------------------------- main

def run(a, tmp: Path, procs: list[Proc]) -> dict:
    res: dict = {}
    seed_path = tmp / "cluster.json"
    res["seed"] = write_seed(a, seed_path)
    res["sizes"] = {k: res["seed"][k] for k in ("clusterip", "headless", "endpoint_addresses")}
    log(f"seed file: {res['seed']['objects']} objects, {res['seed']['bytes'] / 1e6:.1f} MB, "
        f"written in {res['seed']['seconds']:.1f} s; starting kubeemu")
    emu, api_url, start_s = start_emulator(a, tmp, seed_path)
    procs.append(emu)
    res["kubeemu"] = {"start_s": start_s, "vmrss_kib": vm_rss_kib(emu.pid)}
    log(f"kubeemu seeded and serving at {api_url} (pid {emu.pid}) after {start_s:.1f} s")

    if not a.skip_lists:
        res["lists"] = emulator_lists(api_url)
        log("emulator lists: " + ", ".join(f"{k} {v['whole_s']:.2f} s whole, "
                                             f"{v['paged_s']:.2f} s paged"
                                             for k, v in res["lists"].items()))
    for d in ("a", "b"):
        (tmp / d).mkdir()
    etcd, etcd_port = start_etcd(tmp / "a", None)
    procs.append(etcd)
    log(f"etcd up on {LOOPBACK}:{etcd_port} (pid {etcd.pid}); starting kube2sky")
    k2s, res["sync"] = run_kube2sky(a, "kube2sky", tmp, procs, api_url, etcd_port)
    sync = res["sync"]
    log(f"kube2sky (pid {k2s.pid}) ready after {sync['seconds']:.2f} s: {sync['records']} records, "
        f"{sync['markers']} markers, VmRSS {mib(sync['vmrss_kib']):.1f} MiB")

    ref, ref_port = start_etcd(tmp / "b", None)
    procs.append(ref)
    res["bare_writes_s"] = bare_writes(ref_port, sync["records"] + sync["markers"])
    ref.stop()
    procs.remove(ref)
    log(f"bare etcd writes of {sync['records'] + sync['markers']} keys: "
        f"{res['bare_writes_s']:.2f} s")

    if not a.skip_restart:
        k2s.stop()
        procs.remove(k2s)
        k2s, res["restart"] = run_kube2sky(a, "kube2sky-restart", tmp, procs, api_url,
                                           etcd_port)
        r = res["restart"]
        log(f"kube2sky restart (pid {k2s.pid}) ready after {r['seconds']:.2f} s, wrote "
            f"{r['written']} keys, "
            f"{r['records']} records now")

    if a.skip_skydns:
        return res
    res["bare_read"] = bare_read(etcd_port)
    log(f"bare etcd range read of {res['bare_read'][1]} keys: {res['bare_read'][0]:.2f} s; "
        f"starting skydns")
    (tmp / "empty").mkdir()
    empty, empty_port = start_etcd(tmp / "empty", None)
    procs.append(empty)
    bare_sky, _, res["skydns_empty"] = start_skydns(a, tmp, procs, empty_port)
    for proc in (bare_sky, empty):
        proc.stop()
        procs.remove(proc)
    log(f"skydns with an empty store: VmRSS {mib(res['skydns_empty']['vmrss_kib']):.1f} MiB, "
        f"/healthz 200 after {res['skydns_empty']['seconds']:.2f} s")
    sky, dns_port, res["skydns"] = start_skydns(a, tmp, procs, etcd_port)
    log(f"skydns (pid {sky.pid}) /healthz 200 after {res['skydns']['seconds']:.2f} s, VmRSS "
        f"{mib(res['skydns']['vmrss_kib']):.1f} MiB")

    if not a.skip_create:
        res["create"] = create_to_answer(a, api_url, dns_port, sky, k2s)
        c = res["create"]
        log(f"create -> answer over {c['count']}: p50 {c['p50_ms']:.1f} ms, p99 "
            f"{c['p99_ms']:.1f} ms, max {c['max_ms']:.1f} ms, {c['lost']} lost")

    if not a.skip_churn:
        from churn import churn              # here: churn.py imports this module
        res["churn"] = churn(a, api_url, dns_port, etcd_port,
                             {"kube2sky": k2s, "skydns": sky, "etcd": etcd, "kubeemu": emu})

    if not a.skip_wide:  # last: the churn's memory figures start from the cache as loaded
        res["wide"] = w = wide_queries(a, dns_port, sky)
        log(f"wide queries: {w['answered']} of {w['queries']} answered in {w['seconds']:.1f} s"
            f", skydns VmRSS {mib(w['before_kib']):.1f} -> {mib(w['after_kib']):.1f} MiB")
    return res


def add_cluster_flags(ap: argparse.ArgumentParser, services: int, pods: int) -> None:
    """The seeded cluster and the processes run against it (also churn.py's)."""
    ap.add_argument("--services", type=int, default=services,
                    help=f"services, half ClusterIP and half headless ({services})")
    ap.add_argument("--addresses", type=int, default=20,
                    help="ready addresses in the Endpoints of each headless service (20)")
    ap.add_argument("--pods", type=int, default=pods, help=f"running pods ({pods})")
    ap.add_argument("--namespaces", type=int, default=10, help="namespaces (10)")
    ap.add_argument("--history", type=int, default=100000,
                    help="kubeemu --history, events kept for watch replay (100000)")
    ap.add_argument("--timeout", type=float, default=600,
                    help="seconds to wait for each kube2sky sync and the skydns load (600)")
    ap.add_argument("--seed-timeout", type=float, default=600,
                    help="seconds to wait for kubeemu to load the seed and serve (600)")
    ap.add_argument("--kube2sky-dir", type=Path, default=None,
                    help="run kube2sky from the package in this directory (python -m "
                         "kube2sky with PYTHONPATH; default: the venv's kube2sky)")
    ap.add_argument("--kube2sky-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for kube2sky (repeatable)")
    ap.add_argument("--skydns-dir", type=Path, default=REPO,
                    help="directory holding the skydns package to run (this repository)")
    ap.add_argument("--skydns-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for skydns (repeatable)")


def check_cluster_flags(ap: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """Refuse sizes the address ranges cannot hold; resolve the package directories."""
    if not (1 <= a.namespaces <= 1000) or a.services < 2 or a.pods < 0 \
            or not (1 <= a.addresses <= 1000):
        ap.error("need --namespaces 1..1000, --services >= 2, --pods >= 0, "
                 "--addresses 1..1000")
    if (a.services // 2) * a.addresses > EP_SPAN * 256 * 254 or a.pods > POD_SPAN * 256 * 254:
        ap.error("too many endpoint addresses or pods for their address ranges")
    if a.kube2sky_dir:
        a.kube2sky_dir = a.kube2sky_dir.resolve()
    a.skydns_dir = a.skydns_dir.resolve()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cluster_flags(ap, services=10000, pods=20000)
    ap.add_argument("--creates", type=int, default=200,
                    help="services created one at a time for the create -> answer figure "
                         "(200)")
    ap.add_argument("--create-timeout", type=float, default=5,
                    help="seconds a created service may take to be answered (5)")
    ap.add_argument("--poll-interval", type=float, default=0.001,
                    help="seconds between DNS queries for a created service (0.001)")
    ap.add_argument("--new-connections", action="store_true",
                    help="a new connection per create (default: one kept-alive connection, "
                         "as the kubernetes client's pool)")
    ap.add_argument("--skip-restart", action="store_true", help="no kube2sky restart figure")
    ap.add_argument("--skip-skydns", action="store_true",
                    help="no skydns figures (implies --skip-create and --skip-churn)")
    ap.add_argument("--skip-create", action="store_true",
                    help="no API create -> answer figure")
    ap.add_argument("--skip-wide", action="store_true",
                    help="no figure of skydns's memory after every headless name is asked")
    ap.add_argument("--skip-lists", action="store_true",
                    help="do not time the emulator's own lists")
    from churn import add_churn_flags, check_churn_flags
    add_churn_flags(ap)
    a = ap.parse_args(argv)
    check_churn_flags(ap, a)
    check_cluster_flags(ap, a)
    if not (1 <= a.creates <= 10000) or not (0 < a.create_timeout <= 60) \
            or not (0 < a.poll_interval <= 1):
        ap.error("need --creates 1..10000, --create-timeout in (0, 60], "
                 "--poll-interval in (0, 1]")
    if a.skip_skydns:
        a.skip_create = a.skip_churn = a.skip_wide = True

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    # SIGINT too: a shell starts background jobs with it ignored, and Ctrl-C or kill -INT
    # must still stop everything.
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, on_term)

    tmp = Path(tempfile.mkdtemp(prefix="skydns-cluster-scale-"))
    procs: list[Proc] = []
    rc = 0
    started = time.monotonic()
    try:
        res = run(a, tmp, procs)
        report(a, res)
        log(f"total {time.monotonic() - started:.0f} s")
    except (BenchError, OSError, dns.exception.DNSException,
            etcd3.exceptions.Etcd3Exception) as exc:
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
