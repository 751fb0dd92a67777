#!/usr/bin/env python3
"""Amplification and bad-data figures for skydns, each against a reference in the same run.

* **UDP amplification**: reply bytes / query bytes over UDP for wide queries that claim a
  65,535-byte EDNS buffer (``*.wide.svc SRV`` over N services, ``wide.svc A`` with N
  addresses under one name); reference: dnsmasq answering a name with the same N addresses
  from a hosts file, asked the same way.
* **Bad data at load**: seconds from start until skydns answers the last of N good records
  when etcd also holds values it cannot use (an integer of 5,000 digits, JSON nested
  100,000 deep, a 70 KB TXT); reference: the same N records without them. Code that fails on
  such a value never answers: reported as "never" after ``--timeout`` seconds.

``--skydns-dir DIR`` runs the skydns package found in DIR (for example a checkout of an
older commit) instead of this repository's, so before/after figures come from one command.

Run from the repository root (all traffic on 127.0.0.1; every process stopped by PID)::

    .venv/bin/python bench/hardening.py --names 400
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dnsperf_vs_dnsmasq import (LOOPBACK, REPO, BenchError, Proc, find_tool, free_port,  # noqa: E402
                                skydns_command, start_etcd, stop_all, wait_until)

import dns.message  # noqa: E402
import dns.query  # noqa: E402
import dns.rcode  # noqa: E402
import etcd3  # noqa: E402

BAD_VALUES = {
    "digits": '{"host":"10.0.0.1","port":' + "9" * 5000 + "}",
    "deep": "[" * 100000 + "]" * 100000,
    "hugetxt": json.dumps({"text": "t" * 70000}),
}


def ip(i: int, net: int = 10) -> str:
    return f"{net}.{i // 62500 % 250}.{i // 250 % 250}.{i % 250 + 1}"


def write(etcd_port: int, items) -> None:
    client = etcd3.client(host=LOOPBACK, port=etcd_port, timeout=30)
    try:
        items = list(items)
        for start in range(0, len(items), 128):
            ops = [client.transactions.put(k, v) for k, v in items[start:start + 128]]
            client.transaction(compare=[], success=ops, failure=[])
    finally:
        client.close()


def start_skydns(tmp: Path, etcd_port: int, name: str, skydns_dir: Path) -> tuple[Proc, int]:
    port = free_port()
    argv = [*skydns_command(skydns_dir), f"-addr={LOOPBACK}:{port}",
            f"-machines=http://{LOOPBACK}:{etcd_port}", "-domain=cluster.local.",
            f"-nameservers={LOOPBACK}:9", "-healthz-port=0"]
    return Proc(name, argv, tmp), port


def udp_sizes(port: int, name: str, rdtype: str) -> tuple[int, int, bool]:
    query = dns.message.make_query(name, rdtype, use_edns=0, payload=65535)
    wire = query.to_wire()
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(wire, (LOOPBACK, port))
        reply = s.recv(65535)
    return len(wire), len(reply), bool(reply[2] & 0x02)


def answers(port: int, name: str) -> bool:
    reply = dns.query.udp(dns.message.make_query(name, "A"), LOOPBACK, port=port, timeout=0.5)
    return reply.rcode() == dns.rcode.NOERROR and bool(reply.answer)


def timed_load(tmp, etcd_port, name, skydns_dir, last_name, timeout):
    started = time.monotonic()
    proc, port = start_skydns(tmp, etcd_port, name, skydns_dir)
    try:
        wait_until(f"an answer for {last_name}", lambda: answers(port, last_name), proc,
                   timeout=timeout, interval=0.05)
        return time.monotonic() - started
    except BenchError:
        return None
    finally:
        proc.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", type=int, default=400, help="services/addresses (400)")
    parser.add_argument("--load-names", type=int, default=20000,
                        help="good records for the bad-data load (20000)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for a load before calling it 'never'")
    parser.add_argument("--skydns-dir", type=Path, default=REPO,
                        help="directory holding the skydns package to measure")
    args = parser.parse_args(argv)
    n = args.names
    procs = []
    with tempfile.TemporaryDirectory(prefix="bench-hardening-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            etcd, etcd_port = start_etcd(tmp, None)
            procs.append(etcd)
            base = "/skydns/local/cluster/svc"
            write(etcd_port, [(f"{base}/wide/s{i}/_tcp/_http/x",
                               json.dumps({"host": ip(i), "port": 80})) for i in range(n)]
                  + [(f"{base}/wide/addr/a{i}", json.dumps({"host": ip(i, 11)}))
                     for i in range(n)])
            sky, sky_port = start_skydns(tmp, etcd_port, "skydns", args.skydns_dir)
            procs.append(sky)
            wait_until("wide.svc answers", lambda: answers(sky_port, "addr.wide.svc.cluster.local."),
                       sky, timeout=30)
            hosts = tmp / "wide.hosts"
            hosts.write_text("".join(f"{ip(i, 11)} wide.test\n" for i in range(n)))
            os.chmod(tmp, 0o755)
            os.chmod(hosts, 0o644)
            dm_port = free_port()
            dm_argv = [find_tool("dnsmasq"), "--keep-in-foreground", "--conf-file=/dev/null",
                       f"--port={dm_port}", f"--listen-address={LOOPBACK}",
                       "--bind-interfaces", "--no-resolv", "--no-hosts",
                       f"--addn-hosts={hosts}", "--pid-file=",
                       f"--log-facility={tmp / 'dnsmasq-own.log'}"]
            if os.geteuid() == 0:
                dm_argv.append("--user=root")
            dnsmasq = Proc("dnsmasq", dm_argv, tmp)
            procs.append(dnsmasq)
            wait_until("dnsmasq answers", lambda: answers(dm_port, "wide.test."), dnsmasq,
                       timeout=15)

            print(f"UDP amplification, EDNS buffer 65535, {n} records "
                  f"(skydns from {args.skydns_dir}):")
            print(f"  {'server':8} {'query':38} {'in':>4} {'out':>6} {'factor':>7}  TC")
            rows = [("skydns", sky_port, "*.wide.svc.cluster.local.", "SRV"),
                    ("skydns", sky_port, "addr.wide.svc.cluster.local.", "A"),
                    ("dnsmasq", dm_port, "wide.test.", "A")]
            factors = {}
            for server, port, name, rdtype in rows:
                sent, got, tc = udp_sizes(port, name, rdtype)
                factors[(server, rdtype)] = got / sent
                print(f"  {server:8} {name + ' ' + rdtype:38} {sent:4d} {got:6d} "
                      f"{got / sent:6.1f}x  {'yes' if tc else 'no'}")
            ref = factors[("dnsmasq", "A")]
            print(f"  ratio skydns/dnsmasq (A with {n} addresses): "
                  f"{factors[('skydns', 'A')] / ref:.2f}; wide SRV: "
                  f"{factors[('skydns', 'SRV')] / ref:.2f}")
            sky.stop()
            procs.remove(sky)

            m = args.load_names
            write(etcd_port, [(f"/skydns/local/cluster/svc/load/r{i}",
                               json.dumps({"host": ip(i, 12)})) for i in range(m)])
            last = f"r{m - 1}.load.svc.cluster.local."
            clean = timed_load(tmp, etcd_port, "skydns-clean", args.skydns_dir, last,
                               args.timeout)
            write(etcd_port, [(f"/skydns/local/cluster/svc/load/bad/{k}", v)
                              for k, v in BAD_VALUES.items()])
            bad = timed_load(tmp, etcd_port, "skydns-bad", args.skydns_dir, last, args.timeout)

            def fmt(seconds):
                return "never" if seconds is None else f"{seconds:.2f} s"
            print(f"Load of {m} records, start to last answer: clean {fmt(clean)}, with "
                  f"{len(BAD_VALUES)} bad values beside them {fmt(bad)}"
                  + (f" (ratio {bad / clean:.2f})" if bad and clean else
                     f" (no answer within {args.timeout:g} s)"))
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            stop_all(procs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
