#!/usr/bin/env python3
"""Endpoint churn (issue 9): ``--churn-rate`` endpoint changes a second for
``--churn-seconds`` through the API, every change served, none lost, propagation p99 and
memory, each figure beside a reference from the same run.

A change is what kube2sky consumes by default: it reads EndpointSlices when the API serves
discovery.k8s.io/v1 (``--endpoints-source=auto``), and kubeemu does. So one change is one
PUT of a headless service's EndpointSlice (the request the EndpointSlice controller's
Update sends) in which one endpoint's address is replaced by a fresh IP (10.32.0.0/11,
never used elsewhere), keeping its hostname, as when a StatefulSet pod is rescheduled.
kubeemu does not put back slices that clients edit, so the PUT is the change kube2sky sees.
Changes go round-robin over the headless services (and over each service's endpoints), so
a service is changed again only after every other one was; ``--churn-writers`` kept-alive
connections share the pace, each owning its own services.

What is measured, on 127.0.0.1 only:

* the rate: API acks a second against the rate asked; the PUT alone (p50/p99) and how late
  the pacer sent (a writer that cannot keep the pace sends at once, and stops at the end);
* propagation: every ``--churn-sample``-th change, from the PUT's ack until skydns's UDP
  answer for ``<service>.<ns>.svc.cluster.local. A`` holds the new IP (polled every
  ``--poll-interval``, up to ``--churn-timeout``); p50/p99/max and how many were never seen
  (lost). A change whose endpoint was replaced again before it was seen is "superseded",
  not lost. Reference: the same at 10 changes a second for 5 s (every change timed), just
  before the churn;
* every change served: once the writers stop, each changed service's A answer against the
  address set the API then holds, until all match or ``--churn-timeout`` x 6; the
  mismatches left (target 0), and etcd's record count against the count before the churn
  (each change swaps one address for another, so it must not move);
* memory: VmRSS of kube2sky, skydns (and etcd, kubeemu) once a second: at the start, after
  the warm-up (10 s, or a third of a short run) and at the end, and the growth after the
  warm-up in MiB a minute (least squares over the samples).

``churn()`` is the phase ``cluster_scale.py`` runs after its create -> answer figure;
``main()`` here seeds a smaller cluster with cluster_scale's helpers and runs only this::

    .venv/bin/python bench/churn.py                                   # 2000 services, 1000/s x 60 s
    .venv/bin/python bench/churn.py --services 200 --pods 400 --addresses 5 \\
        --churn-rate 100 --churn-seconds 10
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import math
import os
import queue
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cluster_scale as cs  # noqa: E402
from dnsperf_vs_dnsmasq import (CLK_TCK, LOOPBACK, BenchError, Proc, core_ticks,  # noqa: E402
                                cpu_seconds, log, start_etcd, stop_all)

import dns.exception  # noqa: E402
import dns.message  # noqa: E402
import dns.rdatatype  # noqa: E402
import etcd3  # noqa: E402
import msgspec  # noqa: E402  (kube2sky's own dependency: JSON for a fraction of json's CPU)

SLICES = "/apis/discovery.k8s.io/v1"
FRESH_NET, FRESH_SPAN = 32, 32                  # fresh endpoint addresses in 10.32.0.0/11
REFERENCE_RATE, REFERENCE_SECONDS = 10, 5       # the low-rate propagation reference
PROBERS = 16                                    # sampled changes polled at once
ALL_CPUS = set(range(os.cpu_count() or 1))      # the machine's idle time is over all of them
SAMPLE_EVERY = 1.0                              # seconds between VmRSS samples
MAX_API_ERRORS = 20
TARGETS = {"rate": 1000, "seconds": 60, "p99_ms": 50.0, "growth_mib_min": 1.0}


# --------------------------------------------------------------------------- flags

def add_churn_flags(ap: argparse.ArgumentParser) -> None:
    """The churn flags, shared by cluster_scale.py and main() here."""
    ap.add_argument("--churn-rate", type=float, default=1000,
                    help="endpoint changes a second through the API (1000)")
    ap.add_argument("--churn-seconds", type=float, default=60,
                    help="seconds of churn (60)")
    ap.add_argument("--churn-sample", type=int, default=25,
                    help="every Nth change is timed through DNS (25: at 1000/s, 40 a second, "
                         "each polled every --poll-interval; 1 in 10 made the polling a few "
                         "thousand queries a second, measured load on the servers measured)")
    ap.add_argument("--churn-writers", type=int, default=2,
                    help="kept-alive API connections sharing the pace, each owning its own "
                         "services (2)")
    ap.add_argument("--churn-timeout", type=float, default=5,
                    help="seconds a timed change may take to be answered; x 6 for the final "
                         "check (5)")
    ap.add_argument("--skip-churn", action="store_true", help="no endpoint churn figures")


def check_churn_flags(ap: argparse.ArgumentParser, a) -> None:
    if not (0 < a.churn_rate <= 20000) or not (0 < a.churn_seconds <= 3600) \
            or not (1 <= a.churn_sample <= 100000) or not (1 <= a.churn_writers <= 32) \
            or not (0 < a.churn_timeout <= 60):
        ap.error("need --churn-rate in (0, 20000], --churn-seconds in (0, 3600], "
                 "--churn-sample >= 1, --churn-writers 1..32, --churn-timeout in (0, 60]")
    if a.churn_rate * a.churn_seconds > FRESH_SPAN * 256 * 254 - 10000:
        ap.error("too many changes for the fresh address range")


# --------------------------------------------------------------------------- the API side

class Target:
    """One headless service and its only EndpointSlice, as the API last acked it."""

    def __init__(self, service: dict, slice_: dict):
        self.ns = service["metadata"]["namespace"]
        self.name = service["metadata"]["name"]
        self.slice = slice_
        self.path = f"{SLICES}/namespaces/{self.ns}/endpointslices/{slice_['metadata']['name']}"
        self.qname = f"{self.name}.{self.ns}.svc.{cs.ZONE}"
        self.changes = 0

    def ip_at(self, slot: int) -> str:
        return self.slice["endpoints"][slot]["addresses"][0]

    def with_ip(self, slot: int, ip: str) -> bytes:
        """The PUT body: the acked slice (its resourceVersion too) with one address new."""
        body = dict(self.slice)
        endpoints = list(body["endpoints"])
        endpoints[slot] = dict(endpoints[slot], addresses=[ip])
        body["endpoints"] = endpoints
        return msgspec.json.encode(body)


def ready_ips(slice_: dict) -> set[str]:
    """The addresses kube2sky publishes for a headless service's slice."""
    return {ip for ep in slice_.get("endpoints") or []
            if (ep.get("conditions") or {}).get("ready") in (None, True)
            for ip in ep.get("addresses") or []}


def api_conn(api_url: str) -> http.client.HTTPConnection:
    host, port = api_url.rsplit("//", 1)[1].split(":")
    return http.client.HTTPConnection(host, int(port), timeout=30)


def api_get(api_url: str, path: str) -> dict:
    conn = api_conn(api_url)
    try:
        conn.request("GET", path, headers={"Accept": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise BenchError(f"GET {path}: HTTP {resp.status}: {body[:300]!r}")
        return json.loads(body)
    finally:
        conn.close()


def slices_by_service(api_url: str) -> dict[tuple[str, str], list[dict]]:
    out: dict[tuple[str, str], list[dict]] = {}
    for item in api_get(api_url, f"{SLICES}/endpointslices")["items"]:
        service = (item["metadata"].get("labels") or {}).get("kubernetes.io/service-name")
        if service:
            out.setdefault((item["metadata"]["namespace"], service), []).append(item)
    return out


def seed_index(name: str) -> int:
    """``svc-17`` -> 17: the seed's order, which cycles through the namespaces."""
    digits = re.search(r"(\d+)$", name)
    return int(digits.group(1)) if digits else -1


def headless_targets(api_url: str) -> list[Target]:
    """Every headless service with exactly one IPv4 slice with endpoints, in the seed's
    order (so neighbours in the round-robin are in different namespaces)."""
    slices = slices_by_service(api_url)
    targets = []
    for svc in api_get(api_url, "/api/v1/services")["items"]:
        if (svc.get("spec") or {}).get("clusterIP") != "None":
            continue
        mine = slices.get((svc["metadata"]["namespace"], svc["metadata"]["name"]), [])
        if len(mine) == 1 and mine[0].get("addressType") == "IPv4" and mine[0].get("endpoints"):
            targets.append(Target(svc, mine[0]))
    targets.sort(key=lambda t: seed_index(t.name))
    if not targets:
        raise BenchError("no headless service with one EndpointSlice to change")
    return targets


# --------------------------------------------------------------------------- one phase

class Probe:
    """A sampled change waiting to be seen in DNS."""

    def __init__(self, target: Target, slot: int, ip: str, acked: float):
        self.target, self.slot, self.ip, self.acked = target, slot, ip, acked


class Probers:
    """A few threads, each with its own UDP socket, polling skydns for sampled changes, so
    a slow answer does not hold up the timing of the next one. A change still counts from
    its ack when its polling starts late (a busy bench process; the worst delay is kept)."""

    def __init__(self, dns_port: int, interval: float, timeout: float, stop: threading.Event):
        self.dns_port, self.interval, self.timeout, self.stop = dns_port, interval, timeout, stop
        self.inbox: queue.Queue[Probe | None] = queue.Queue()
        self.lock = threading.Lock()
        self.latencies_ms: list[float] = []     # math.inf for a lost change
        self.superseded = 0
        self.max_start_ms = 0.0
        self.submitted = 0
        self.threads = [threading.Thread(target=self._run, name=f"prober-{i}", daemon=True)
                        for i in range(PROBERS)]
        for thread in self.threads:
            thread.start()

    def submit(self, probe: Probe) -> None:
        self.submitted += 1
        self.inbox.put(probe)

    def untimed(self) -> int:
        """Sampled changes no poller finished by the end (pollers all busy)."""
        with self.lock:
            return self.submitted - len(self.latencies_ms) - self.superseded

    def close(self, timeout: float) -> None:
        for _ in self.threads:
            self.inbox.put(None)
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.1, deadline - time.monotonic()))

    def _run(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect((LOOPBACK, self.dns_port))
        try:
            while not self.stop.is_set():
                probe = self.inbox.get()
                if probe is None:
                    return
                self._time(sock, probe)
        finally:
            sock.close()

    def _time(self, sock: socket.socket, probe: Probe) -> None:
        start_ms = 1000 * (time.perf_counter() - probe.acked)
        got, _ = cs.poll_answer(sock, probe.target.qname, probe.ip,
                                probe.acked + self.timeout, self.interval)
        with self.lock:
            self.max_start_ms = max(self.max_start_ms, start_ms)
            if got is not None:
                self.latencies_ms.append(1000 * (got - probe.acked))
            elif probe.target.ip_at(probe.slot) != probe.ip:
                self.superseded += 1
            else:
                self.latencies_ms.append(math.inf)
                log(f"  churn: {probe.target.qname} never answered {probe.ip} within "
                    f"{self.timeout:g} s")


class Writer(threading.Thread):
    """One kept-alive API connection replacing addresses in its own services at its share
    of the rate: change k (over all writers) is due at start + k / rate."""

    def __init__(self, index: int, writers: int, targets: list[Target], api_url: str,
                 rate: float, start: float, end: float, sample: int, fresh, probers: Probers,
                 stop: threading.Event):
        super().__init__(name=f"writer-{index}", daemon=True)
        self.index, self.writers, self.targets = index, writers, targets
        self.api_url, self.rate, self.start_at, self.end = api_url, rate, start, end
        self.sample, self.fresh, self.probers, self.stop = sample, fresh, probers, stop
        self.late_ms: list[float] = []
        self.put_ms: list[float] = []
        self.errors: list[str] = []
        self.last_ack = start

    def run(self) -> None:
        conn = api_conn(self.api_url)
        try:
            for j in range(10 ** 9):
                k = j * self.writers + self.index
                due = self.start_at + k / self.rate
                if due >= self.end or time.perf_counter() >= self.end or self.stop.is_set() \
                        or len(self.errors) >= MAX_API_ERRORS:
                    return                   # a writer behind the pace stops on time too
                target = self.targets[j % len(self.targets)]
                slot = (j // len(self.targets)) % len(target.slice["endpoints"])
                self._change(conn, target, slot, due, k)
        except Exception as exc:  # noqa: BLE001 - reported by the phase
            self.errors.append(f"{exc.__class__.__name__}: {exc}")
        finally:
            conn.close()

    def _change(self, conn, target: Target, slot: int, due: float, k: int) -> None:
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
        ip = cs.ip_in(FRESH_NET, FRESH_SPAN, next(self.fresh))
        body = target.with_ip(slot, ip)
        sent = time.perf_counter()
        conn.request("PUT", target.path, body=body,
                     headers={"Content-Type": "application/json", "Accept": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        acked = time.perf_counter()
        if resp.status != 200:
            self.errors.append(f"PUT {target.path}: HTTP {resp.status}: {data[:200]!r}")
            target.slice = api_get(self.api_url, target.path)   # e.g. a 409: start afresh
            return
        target.slice = msgspec.json.decode(data)
        target.changes += 1
        self.late_ms.append(1000 * (sent - due))
        self.put_ms.append(1000 * (acked - sent))
        self.last_ack = acked
        if k % self.sample == 0:
            self.probers.submit(Probe(target, slot, ip, acked))


class Sampler(threading.Thread):
    """VmRSS (summed over each process's tree) once a second, and whether all still run."""

    def __init__(self, procs: dict[str, Proc], stop: threading.Event):
        super().__init__(name="sampler", daemon=True)
        self.procs, self.stop = procs, stop
        self.pids = {name: proc.tree() for name, proc in procs.items()}
        # This process too (the writers, probers and sampler share the machine with the
        # servers), and the machine's idle time: whether the rate was bounded by the cores.
        self.pids["bench client"] = [os.getpid()]
        self.started = time.perf_counter()
        self.cpu0 = {name: cpu_seconds(pids) for name, pids in self.pids.items()}
        self.ticks0 = core_ticks(ALL_CPUS)
        self.samples: list[tuple[float, dict[str, int]]] = [self._sample()]
        self.dead: str | None = None
        self.done = threading.Event()            # the writers are done: stop sampling

    def _sample(self) -> tuple[float, dict[str, int]]:
        rss = {name: sum(cs.status_kib(pid, "VmRSS") or 0 for pid in pids)
               for name, pids in self.pids.items()}
        return time.perf_counter() - self.started, rss

    def run(self) -> None:
        while not self.done.wait(SAMPLE_EVERY) and not self.stop.is_set():
            self.samples.append(self._sample())
            for name, proc in self.procs.items():
                if not proc.alive():
                    self.dead = f"{name} exited during the churn:\n{proc.log_tail(10)}"
                    self.stop.set()

    def finish(self) -> dict:
        """Stop; the last sample, and each process's CPU as a share of a core."""
        self.done.set()
        self.join(SAMPLE_EVERY + 1)
        self.samples.append(self._sample())
        wall = time.perf_counter() - self.started
        shares = {name: (cpu_seconds(pids) - self.cpu0[name]) / wall
                  for name, pids in self.pids.items()}
        busy, total = (now - then for now, then in zip(core_ticks(ALL_CPUS), self.ticks0))
        shares["machine idle"] = (total - busy) / CLK_TCK / wall
        return shares


def run_phase(targets: list[Target], api_url: str, dns_port: int, rate: float,
              seconds: float, sample: int, writers: int, interval: float, timeout: float,
              fresh, procs: dict[str, Proc] | None = None) -> dict:
    """``rate`` changes a second for ``seconds``; the acks, the PUTs, the propagation of
    every ``sample``-th change and, with ``procs``, their memory and CPU."""
    stop = threading.Event()
    probers = Probers(dns_port, interval, timeout, stop)
    sampler = Sampler(procs, stop) if procs else None
    writers = min(writers, len(targets))
    start = time.perf_counter() + 0.05
    end = start + seconds
    crew = [Writer(w, writers, targets[w::writers], api_url, rate, start, end, sample, fresh,
                   probers, stop) for w in range(writers)]
    try:
        if sampler:
            sampler.start()
        for writer in crew:
            writer.start()
        report_at = time.monotonic() + cs.PROGRESS_EVERY
        while any(w.is_alive() for w in crew) and time.perf_counter() < end + 60:
            for w in crew:
                w.join(0.2)
            if time.monotonic() >= report_at:
                report_at += cs.PROGRESS_EVERY
                acks = sum(len(w.put_ms) for w in crew)
                log(f"  ... churn at {rate:g}/s: {time.perf_counter() - start:.0f} s, "
                    f"{acks} acked, {len(probers.latencies_ms)} timed")
        usage = sampler.finish() if sampler else None
        probers.close(timeout + 5)
    finally:
        stop.set()
    if sampler and sampler.dead:
        raise BenchError(sampler.dead)
    errors = [e for w in crew for e in w.errors]
    if len(errors) >= MAX_API_ERRORS:
        raise BenchError(f"{len(errors)} API errors; the first: {errors[0]}")
    put_ms = [x for w in crew for x in w.put_ms]
    late_ms = [x for w in crew for x in w.late_ms]
    elapsed = max(seconds, max(w.last_ack for w in crew) - start)
    lat = probers.latencies_ms
    out = {"rate_asked": rate, "seconds_asked": seconds, "writers": writers,
           "changes_asked": math.ceil(rate * seconds - 1e-9),
           "acked": len(put_ms), "seconds": elapsed, "rate_acked": len(put_ms) / elapsed,
           "api_errors": len(errors), "api_error_first": errors[0] if errors else None,
           "put_p50_ms": cs.percentile(put_ms, 50), "put_p99_ms": cs.percentile(put_ms, 99),
           "late_p99_ms": cs.percentile(late_ms, 99), "late_max_ms": max(late_ms, default=0),
           "timed": len(lat), "lost": sum(1 for x in lat if x == math.inf),
           "superseded": probers.superseded, "untimed": probers.untimed(),
           "probe_start_max_ms": probers.max_start_ms,
           "p50_ms": cs.percentile(lat, 50), "p99_ms": cs.percentile(lat, 99),
           "max_ms": max(lat, default=math.nan), "latencies_ms": [round(x, 2) for x in lat]}
    if sampler:
        out["cpu_core_share"] = usage
        out["memory"] = memory_figures(sampler.samples, seconds)
    return out


# --------------------------------------------------------------------------- memory

def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB), in MiB a minute."""
    if len(points) < 2:
        return math.nan
    mean_t = sum(t for t, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return math.nan
    return 60 * sum((t - mean_t) * (v - mean_v) for t, v in points) / var


def memory_figures(samples: list[tuple[float, dict[str, int]]], seconds: float) -> dict:
    """Per process: VmRSS at the start, after the warm-up and at the end (MiB), and the
    growth after the warm-up (MiB a minute)."""
    warmup = min(10.0, seconds / 3)
    warm = next((s for s in samples if s[0] >= warmup), samples[-1])
    out = {"warmup_s": warmup, "samples": len(samples)}
    for name in samples[0][1]:
        after = [(t, rss[name] / 1024) for t, rss in samples if t >= warm[0]]
        out[name] = {"start_mib": samples[0][1][name] / 1024, "warm_mib": warm[1][name] / 1024,
                     "end_mib": samples[-1][1][name] / 1024,
                     "growth_mib_per_min": slope_per_minute(after),
                     "series_mib": [round(rss[name] / 1024, 1) for _, rss in samples]}
    return out


# --------------------------------------------------------------------------- served

def a_set(sock: socket.socket, qname: str) -> set[str] | None:
    """The A addresses skydns answers for ``qname`` (EDNS, so no truncation), None if it
    did not answer in three tries."""
    query = dns.message.make_query(qname, dns.rdatatype.A, use_edns=0, payload=4096)
    for _ in range(3):
        query.id = (query.id + 1) % 65536
        sock.send(query.to_wire())
        deadline = time.monotonic() + 0.5
        for _ in range(100):                     # bounded: stale replies are skipped
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                reply = dns.message.from_wire(sock.recv(65535))
            except socket.timeout:
                break
            except (OSError, dns.exception.DNSException):
                continue
            if reply.id == query.id:
                return {rd.address for rrset in reply.answer
                        if rrset.rdtype == dns.rdatatype.A for rd in rrset}
    return None


def served(targets: list[Target], api_url: str, dns_port: int, timeout: float) -> dict:
    """Every changed service's A answer against the addresses the API holds now, checked
    again until all match or ``timeout``: the mismatches at first and at the end."""
    changed = [t for t in targets if t.changes]
    api = slices_by_service(api_url)
    want = {t.qname: set().union(*(ready_ips(s) for s in api.get((t.ns, t.name), [])))
            for t in changed}
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((LOOPBACK, dns_port))
    started = time.monotonic()
    try:
        left = list(want)
        first = None
        for _ in range(10000):
            left = [q for q in left if a_set(sock, q) != want[q]]
            first = len(left) if first is None else first
            if not left or time.monotonic() - started > timeout:
                break
            time.sleep(0.1)
        wrong = {q: sorted(a_set(sock, q) or []) for q in left[:5]}
    finally:
        sock.close()
    return {"changed_services": len(changed), "mismatches_at_first": first or 0,
            "mismatches": len(left), "quiet_s": time.monotonic() - started,
            "examples": {q: {"dns": wrong[q], "api": sorted(want[q])} for q in wrong}}


def record_count(etcd_port: int) -> int:
    client = cs.etcd_client(etcd_port)
    try:
        return cs.count(client, cs.RECORDS)
    finally:
        client.close()


# --------------------------------------------------------------------------- the phase

def churn(a, api_url: str, dns_port: int, etcd_port: int, procs: dict[str, Proc]) -> dict:
    """The churn phase on a synced kube2sky + skydns: the low-rate reference first, then
    ``--churn-rate`` for ``--churn-seconds``, then the served check. ``procs`` names the
    processes whose memory is sampled (kube2sky, skydns, etcd, kubeemu)."""
    targets = headless_targets(api_url)
    fresh = itertools.count()
    records_before = record_count(etcd_port)
    log(f"churn: {len(targets)} headless services, {records_before} records in etcd; "
        f"reference at {REFERENCE_RATE}/s for {REFERENCE_SECONDS} s")
    reference = run_phase(targets, api_url, dns_port, REFERENCE_RATE, REFERENCE_SECONDS, 1, 1,
                          a.poll_interval, a.churn_timeout, fresh)
    log(f"churn reference: p50 {reference['p50_ms']:.1f} / p99 {reference['p99_ms']:.1f} ms "
        f"over {reference['timed']}, {reference['lost']} lost; now {a.churn_rate:g}/s for "
        f"{a.churn_seconds:g} s, 1 in {a.churn_sample} timed")
    load = run_phase(targets, api_url, dns_port, a.churn_rate, a.churn_seconds, a.churn_sample,
                     a.churn_writers, a.poll_interval, a.churn_timeout, fresh, procs)
    log(f"churn: {load['acked']} acked in {load['seconds']:.1f} s ({load['rate_acked']:.0f}/s); "
        f"p50 {load['p50_ms']:.1f} / p99 {load['p99_ms']:.1f} ms over {load['timed']}, "
        f"{load['lost']} lost, {load['superseded']} superseded; checking every changed service")
    check = served(targets, api_url, dns_port, 6 * a.churn_timeout)
    check["records_before"] = records_before
    check["records_after"] = record_count(etcd_port)
    log(f"churn served: {check['mismatches']} of {check['changed_services']} services differ "
        f"({check['mismatches_at_first']} at first, {check['quiet_s']:.1f} s); etcd records "
        f"{check['records_after']} (before {records_before})")
    for qname, sets in check["examples"].items():
        log(f"  churn: {qname} answers {sets['dns']}, the API holds {sets['api']}")
    return {"headless_services": len(targets), "reference": reference, "load": load,
            "served": check}


# --------------------------------------------------------------------------- report

def verdict(ok: bool, note: str = "") -> str:
    return ("met" if ok else "not met") + (f" ({note})" if note else "")


def latency_text(r: dict, timeout: float) -> str:
    return (f"p50 {cs.fmt_ms(r['p50_ms'], timeout)} / p99 {cs.fmt_ms(r['p99_ms'], timeout)} / "
            f"max {cs.fmt_ms(r['max_ms'], timeout)} ms over {r['timed']}, {r['lost']} lost")


def memory_text(m: dict, name: str) -> str:
    p = m[name]
    return (f"{name} {p['start_mib']:.1f} -> {p['warm_mib']:.1f} -> {p['end_mib']:.1f} MiB, "
            f"{p['growth_mib_per_min']:+.1f} MiB/min")


def report_rows(a, res: dict) -> list[tuple[str, str, str, str]]:
    """cluster_scale's table rows for the churn figures."""
    ref, load, check = res["reference"], res["load"], res["served"]
    t = a.churn_timeout
    short = load["rate_asked"] < TARGETS["rate"] or load["seconds_asked"] < TARGETS["seconds"]
    note = f"asked {load['rate_asked']:g}/s for {load['seconds_asked']:g} s" if short else ""
    untimed = f", {load['untimed']} not timed (pollers busy)" if load["untimed"] else ""
    waited = "" if load["probe_start_max_ms"] < 5 else \
        f" (polling began up to {load['probe_start_max_ms']:.0f} ms after an ack, included)"
    cpu = ", ".join(f"{k} {100 * v:.0f}%" for k, v in load["cpu_core_share"].items())
    rows = [(f"endpoint changes acked by the API (EndpointSlice PUT, {load['writers']} "
             f"kept-alive connections, {res['headless_services']} headless services)",
             f"{load['rate_acked']:,.0f}/s ({load['acked']} of {load['changes_asked']} in "
             f"{load['seconds']:.1f} s, {load['api_errors']} errors)",
             f"asked {load['rate_asked']:g}/s; the PUT alone p50 {load['put_p50_ms']:.1f} / "
             f"p99 {load['put_p99_ms']:.1f} ms; sent late p99 {load['late_p99_ms']:.1f} ms; "
             f"CPU, as a share of one core: {cpu}",
             f">= {TARGETS['rate']}/s for {TARGETS['seconds']} s " + verdict(
                 not short and load["rate_acked"] >= 0.99 * load["rate_asked"]
                 and load["acked"] >= 0.99 * load["changes_asked"], note)),
            (f"churn: API ack -> correct UDP answer (1 in {a.churn_sample} changes)",
             f"{latency_text(load, t)}, {load['superseded']} superseded" + untimed + waited,
             f"at {ref['rate_asked']:g}/s (every change): {latency_text(ref, t)}; the PUT alone "
             f"p50 {load['put_p50_ms']:.1f} / p99 {load['put_p99_ms']:.1f} ms",
             f"p99 <= {TARGETS['p99_ms']:g} ms, 0 lost " + verdict(
                 load["p99_ms"] <= TARGETS["p99_ms"] and load["lost"] == 0
                 and not load["untimed"], note)),
            ("churn: every change served (A answer = the API's addresses, once quiet)",
             f"{check['mismatches']} of {check['changed_services']} changed services differ "
             f"(after {check['quiet_s']:.1f} s); etcd {check['records_after']} records",
             f"{check['mismatches_at_first']} differed right after the last change; etcd "
             f"{check['records_before']} records before the churn",
             "0 differ, records unchanged " + verdict(
                 check["mismatches"] == 0
                 and check["records_after"] == check["records_before"]))]
    m = load["memory"]
    info = "; ".join(memory_text(m, n) for n in m if n not in ("kube2sky", "skydns", "warmup_s",
                                                                "samples"))
    flat = all(m[n]["growth_mib_per_min"] <= TARGETS["growth_mib_min"]
               for n in ("kube2sky", "skydns") if n in m)
    rows.append((f"churn: VmRSS start -> after {m['warmup_s']:.0f} s -> end, growth after "
                 f"warm-up ({m['samples']} samples)",
                 "; ".join(memory_text(m, n) for n in ("kube2sky", "skydns") if n in m),
                 info or "-",
                 f"flat (<= {TARGETS['growth_mib_min']:g} MiB/min) " + verdict(flat, note)))
    return rows


# --------------------------------------------------------------------------- main

def setup(a, tmp: Path, procs: list[Proc], res: dict) -> tuple[str, int, int, dict]:
    """A seeded kubeemu, etcd, kube2sky synced to /readiness and skydns serving it."""
    seed_path = tmp / "cluster.json"
    res["seed"] = cs.write_seed(a, seed_path)
    res["sizes"] = {k: res["seed"][k] for k in ("clusterip", "headless", "endpoint_addresses")}
    emu, api_url, start_s = cs.start_emulator(a, tmp, seed_path)
    procs.append(emu)
    res["kubeemu"] = {"start_s": start_s, "vmrss_kib": cs.vm_rss_kib(emu.pid)}
    (tmp / "etcd").mkdir()
    etcd, etcd_port = start_etcd(tmp / "etcd", None)
    procs.append(etcd)
    k2s, res["kube2sky_sync"] = cs.run_kube2sky(a, "kube2sky", tmp, procs, api_url, etcd_port)
    log(f"kube2sky ready after {res['kube2sky_sync']['seconds']:.1f} s "
        f"({res['kube2sky_sync']['records']} records)")
    sky, dns_port, res["skydns_load"] = cs.start_skydns(a, tmp, procs, etcd_port)
    log(f"skydns serving after {res['skydns_load']['seconds']:.1f} s")
    return api_url, dns_port, etcd_port, {"kube2sky": k2s, "skydns": sky, "etcd": etcd,
                                          "kubeemu": emu}


def parse(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    cs.add_cluster_flags(ap, services=2000, pods=4000)
    ap.add_argument("--poll-interval", type=float, default=0.001,
                    help="seconds between DNS queries for a timed change (0.001)")
    add_churn_flags(ap)
    a = ap.parse_args(argv)
    cs.check_cluster_flags(ap, a)
    if a.addresses > 100 or not (0 < a.poll_interval <= 1):
        ap.error("need --addresses <= 100 (the timed answers must fit one UDP message), "
                 "--poll-interval in (0, 1]")
    check_churn_flags(ap, a)
    return a


def main(argv=None) -> int:
    a = parse(argv)

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, on_term)

    tmp = Path(tempfile.mkdtemp(prefix="skydns-churn-"))
    procs: list[Proc] = []
    rc = 0
    try:
        res: dict = {}
        api_url, dns_port, etcd_port, named = setup(a, tmp, procs, res)
        res["churn"] = churn(a, api_url, dns_port, etcd_port, named)
        cs.report(a, res)
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
