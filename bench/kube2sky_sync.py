#!/usr/bin/env python3
"""kube2sky's initial sync of a large cluster, against bare etcd writes in the same run.

Fills the Kubernetes API emulator with N ClusterIP services (one named port each: an A, an
SRV and a PTR record) and N/2 pods, starts kube2sky against it and a fresh etcd, and
measures the seconds until ``/readiness`` is 200 (everything listed, reconciled and
written). Reference, in the same run on another fresh etcd: writing the same number of
keys (records plus ownership markers) with a bare etcd3 client in 128-operation
transactions. Also prints kube2sky's VmRSS after the sync.

    .venv/bin/python bench/kube2sky_sync.py --services 5000

All traffic on 127.0.0.1; every process stopped by PID.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dnsperf_vs_dnsmasq import (LOOPBACK, REPO, BenchError, Proc, find_tool, free_port,  # noqa: E402
                                start_etcd, vm_rss_kib, wait_until)

sys.path.insert(0, str(REPO))
import etcd3  # noqa: E402

from kubeemu import Emulator  # noqa: E402


def fill(emu, services, pods):
    store = emu.store
    for i in range(services):
        store.create("services", {"metadata": {"name": f"svc{i}", "namespace": "default"},
                                  "spec": {"ports": [{"name": "http", "port": 80}]}},
                     namespace="default")
    for i in range(pods):
        pod = store.create("pods", {"metadata": {"name": f"pod{i}", "namespace": "default"},
                                    "spec": {"containers": [{"name": "c", "image": "x"}]}},
                           namespace="default")
        pod["status"] = {"podIP": f"10.{200 + i // 65536}.{i // 256 % 256}.{i % 256}"}
        store.update("pods", pod, namespace="default", subresource="status")


def bare_writes(etcd_port, keys):
    client = etcd3.client(host=LOOPBACK, port=etcd_port, timeout=30)
    started = time.perf_counter()
    ops = []
    for i in range(keys):
        ops.append(client.transactions.put(f"/bench/k{i}", '{"host":"10.0.0.1"}'))
        if len(ops) == 128 or i == keys - 1:
            client.transaction(compare=[], success=ops, failure=[])
            ops = []
    elapsed = time.perf_counter() - started
    client.close()
    return elapsed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=5000)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    pods = args.services // 2
    procs = []
    emu = Emulator(port=0, history=1000).start()
    with tempfile.TemporaryDirectory(prefix="skydns-bench-k2s-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            started = time.perf_counter()
            fill(emu, args.services, pods)
            fill_s = time.perf_counter() - started
            (tmp / "a").mkdir()
            (tmp / "b").mkdir()
            etcd, etcd_port = start_etcd(tmp / "a", None)
            procs.append(etcd)
            health = free_port()
            k2s = Proc("kube2sky", [find_tool("kube2sky"), f"--kube-master-url={emu.url}",
                                    f"--etcd-server=http://{LOOPBACK}:{etcd_port}",
                                    f"--healthz-port={health}", f"--healthz-addr={LOOPBACK}"],
                       tmp)
            procs.append(k2s)
            started = time.perf_counter()

            def ready():
                with urllib.request.urlopen(f"http://{LOOPBACK}:{health}/readiness",
                                            timeout=2) as response:
                    return response.status == 200
            wait_until("kube2sky readiness", ready, k2s, timeout=args.timeout, interval=0.1)
            sync_s = time.perf_counter() - started
            rss = vm_rss_kib(k2s.pid)
            client = etcd3.client(host=LOOPBACK, port=etcd_port, timeout=30)
            keys = sum(1 for _ in client.get_prefix("/skydns/", keys_only=True))
            markers = sum(1 for _ in client.get_prefix("/kube2sky/keys/", keys_only=True))
            client.close()
            ref_etcd, ref_port = start_etcd(tmp / "b", None)
            procs.append(ref_etcd)
            bare_s = bare_writes(ref_port, keys + markers)
        finally:
            for proc in reversed(procs):
                proc.stop()
            emu.stop()
    print(f"\nservices={args.services} pods={pods} (emulator filled in {fill_s:.1f}s)")
    print(f"kube2sky: list + reconcile + write {keys} records and {markers} markers: "
          f"ready after {sync_s:.2f}s ({(keys + markers) / sync_s:,.0f} keys/s)")
    print(f"reference: bare etcd3 transactions of the same {keys + markers} keys: "
          f"{bare_s:.2f}s ({(keys + markers) / bare_s:,.0f} keys/s)")
    print(f"ratio (kube2sky sync / bare writes): {sync_s / bare_s:.1f}")
    if rss:
        print(f"kube2sky VmRSS after the sync: {rss / 1024:.1f} MiB")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
