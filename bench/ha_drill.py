"""Failover drills on the HA compose stack (docker-compose.yml + docker-compose.ha.yml).

The stack must be up, for example with
``../shared/tools/compose-check -f docker-compose.yml -f docker-compose.ha.yml``.
A probe asks both skydns (127.0.0.1:1053 and :1054) for web.demo.svc.cluster.local every
10 ms the whole time. Then, one after the other:

1. the etcd leader gets SIGKILL; a service is created through kubeemu (127.0.0.1:6443) at
   once; seconds until both skydns answer it; the member is started again;
2. the leading kube2sky gets SIGKILL; the same; seconds until the other replica leads and
   until the new service is answered; the replica is started again;
3. two of the three etcd members get SIGKILL (no quorum): both skydns must keep answering,
   /healthz must say 503 and /readyz 200 ("from memory"); both members are started again,
   seconds until etcd has a leader and a service created during the outage is answered.

It prints each figure and the probe's count of failed answers, and stops nothing it did
not kill (the stack stays up; ``.venv/bin/docker-compose -f ... down -v`` stops it).
All traffic goes to 127.0.0.1 (published ports) or through ``docker exec``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import threading
import time

import dns.message
import dns.query
import dns.rcode
from kubernetes import client

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPOSE = [os.path.join(ROOT, ".venv", "bin", "docker-compose"),
           "-f", os.path.join(ROOT, "docker-compose.yml"),
           "-f", os.path.join(ROOT, "docker-compose.ha.yml")]
PORTS = (1053, 1054)
MEMBERS = ("etcd", "etcd2", "etcd3")
KUBE2SKY = ("kube2sky", "kube2sky-2")
NAME = "web.demo.svc.cluster.local."


def run(*args, timeout=30) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True,
                          timeout=timeout).stdout


def container(service) -> str:
    return run(*COMPOSE, "ps", "-a", "-q", service).strip()


def in_container(service, *argv, timeout=15) -> str:
    return run("docker", "exec", container(service), *argv, timeout=timeout)


def answered(port, name=NAME) -> bool:
    reply = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port,
                          timeout=1.0)
    return reply.rcode() == dns.rcode.NOERROR and bool(reply.answer)


def wait_for(check, timeout, what, interval=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(interval)
    raise TimeoutError(what)


def etcd_leader(alive=MEMBERS) -> str | None:
    """The compose service of the member that says it leads (each live member is asked
    about itself: ``--cluster`` would fail on the dead one)."""
    for member in alive:
        try:
            out = in_container(member, "etcdctl", "--endpoints=http://127.0.0.1:2379",
                               "--command-timeout=2s", "endpoint", "status", "-w", "json",
                               timeout=10)
        except (subprocess.SubprocessError, OSError):
            continue
        status = json.loads(out)[0]["Status"]
        if status["leader"] == status["header"]["member_id"]:
            return member
    return None


def member_healthy(member) -> bool:
    try:
        in_container(member, "etcdctl", "--endpoints=http://127.0.0.1:2379",
                     "--command-timeout=2s", "endpoint", "health", timeout=10)
        return True
    except (subprocess.SubprocessError, OSError):
        return False


def http_status(service, port, path) -> tuple[int, str]:
    code = ("import urllib.request as u, urllib.error as e\n"
            "try:\n r = u.urlopen('http://127.0.0.1:%d%s', timeout=3); print(r.status)\n"
            "except e.HTTPError as x:\n r = x; print(x.code)\n"
            "print(r.read().decode())" % (port, path))
    out = in_container(service, "python", "-c", code)
    status, _, body = out.partition("\n")
    return int(status), body


def leading_kube2sky() -> str | None:
    for service in KUBE2SKY:
        try:
            if "leading as" in http_status(service, 8081, "/readiness")[1]:
                return service
        except (subprocess.SubprocessError, OSError, ValueError):
            continue
    return None


class Probe(threading.Thread):
    def __init__(self, limit):
        super().__init__(daemon=True)
        self.limit, self.asked, self.failures, self.phase = limit, 0, [], "start"
        self.done = threading.Event()

    def run(self):
        deadline = time.monotonic() + self.limit
        while not self.done.is_set() and time.monotonic() < deadline:
            for port in PORTS:
                self.asked += 1
                try:
                    if not answered(port):
                        self.failures.append((self.phase, port, "no answer"))
                except Exception as exc:
                    self.failures.append((self.phase, port, repr(exc)))
            time.sleep(0.01)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api", default="http://127.0.0.1:6443", help="kubeemu URL")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="longest wait for any one step (s)")
    args = parser.parse_args()
    core = client.CoreV1Api(client.ApiClient(client.Configuration(host=args.api)))
    stamp = int(time.time()) % 100000

    def service(name, last_octet):
        core.create_namespaced_service("demo", {
            "metadata": {"name": f"{name}-{stamp}"},
            "spec": {"clusterIP": f"10.96.{200 + stamp % 50}.{last_octet}",
                     "ports": [{"name": "http", "port": 80}]}})
        return f"{name}-{stamp}.demo.svc.cluster.local."

    def served_on_both(name, since):
        for port in PORTS:
            wait_for(lambda: answered(port, name), args.timeout, f"{name} on :{port}")
        return time.monotonic() - since

    for port in PORTS:
        wait_for(lambda: answered(port), 10, f"{NAME} on :{port} before the drills")
    probe = Probe(limit=20 * args.timeout)
    probe.start()
    figures = {}
    try:
        probe.phase = "etcd leader killed"
        dead = etcd_leader()
        run("docker", "kill", "-s", "KILL", container(dead))
        killed = time.monotonic()
        name = service("after-etcd-leader", 1)
        others = [m for m in MEMBERS if m != dead]
        wait_for(lambda: etcd_leader(others), args.timeout, "a new etcd leader", 0.1)
        figures["etcd leader killed: new leader after (s)"] = time.monotonic() - killed
        figures["etcd leader killed: new service served on both after (s)"] = \
            served_on_both(name, killed)
        run("docker", "start", container(dead))
        wait_for(lambda: all(member_healthy(m) for m in MEMBERS), args.timeout,
                 "all members healthy", 0.5)

        probe.phase = "leading kube2sky killed"
        leader = leading_kube2sky()
        run("docker", "kill", "-s", "KILL", container(leader))
        killed = time.monotonic()
        name = service("after-kube2sky", 2)
        wait_for(lambda: leading_kube2sky() not in (None, leader), args.timeout,
                 "the other kube2sky to lead", 0.1)
        figures[f"kube2sky {leader} killed: other replica leads after (s)"] = \
            time.monotonic() - killed
        figures["kube2sky killed: new service served on both after (s)"] = \
            served_on_both(name, killed)
        run("docker", "start", container(leader))

        probe.phase = "etcd quorum lost"
        lost = [m for m in MEMBERS if m != etcd_leader()][:1] + [etcd_leader()]
        for member in lost:
            run("docker", "kill", "-s", "KILL", container(member))
        name = service("during-quorum-loss", 3)
        time.sleep(8)  # the skydns watches notice, the kube2sky lease (5 s) runs out
        for sky in ("skydns", "skydns-2"):
            health, readyz = http_status(sky, 8080, "/healthz"), http_status(sky, 8080,
                                                                              "/readyz")
            figures[f"quorum lost: {sky} /healthz, /readyz"] = (
                f"{health[0]}, {readyz[0]} {readyz[1].strip().splitlines()[0][:60]}")
        for member in lost:
            run("docker", "start", container(member))
        restarted = time.monotonic()
        wait_for(lambda: etcd_leader(), args.timeout, "quorum again", 0.1)
        figures["quorum back: leader after (s)"] = time.monotonic() - restarted
        figures["quorum back: service created during the outage served after (s)"] = \
            served_on_both(name, restarted)
    finally:
        probe.done.set()
        probe.join(timeout=10)
    for what, value in figures.items():
        print(f"{what:70} {value:.2f}" if isinstance(value, float) else f"{what:70} {value}")
    print(f"probe: {probe.asked} queries asked on {PORTS}, {len(probe.failures)} failed")
    for failure in probe.failures[:10]:
        print("  failed:", failure)
    return 1 if probe.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
