"""The README's run command (scripts/localstack.py, which scripts/run-local runs after
setting up the virtualenv): the whole stack answers, and SIGTERM leaves nothing behind."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import dns.message
import dns.query
import pytest

from procs import free_port, stop_process, wait_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def children_of(pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True).stdout
    return [int(p) for p in out.split()]


def start_stack(tmp_path, dns_port, kubeconfig=""):
    """scripts/localstack.py on free ports (DNS on ``dns_port``): the emulator, or the
    cluster in ``kubeconfig`` given as $KUBECONFIG; returns (process, log file, a function
    reading the log so far)."""
    ports = {name: free_port() for name in ("etcd", "healthz", "api", "kube2sky")}
    log = open(tmp_path / "stack.log", "w+b")
    proc = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "scripts", "localstack.py"),
         f"--dns-port={dns_port}", f"--etcd-port={ports['etcd']}",
         f"--healthz-port={ports['healthz']}", f"--api-port={ports['api']}",
         f"--kube2sky-port={ports['kube2sky']}"],
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
        env=dict(os.environ, KUBECONFIG=kubeconfig))

    def output():
        log.flush()
        return (tmp_path / "stack.log").read_text(errors="replace")
    try:
        wait_for(lambda: "[stack] ready" in output() or proc.poll() is not None, timeout=90,
                 what="the stack to be ready")
    except Exception:
        stop_process(proc, timeout=30)  # its own SIGTERM handler stops the children
        log.close()
        raise
    return proc, log, output


def test_run_local_answers_and_stops_cleanly(tmp_path):
    ports = {"dns": free_port()}
    proc, log, output = start_stack(tmp_path, ports["dns"])
    children = []
    try:
        text = output()
        assert proc.poll() is None, text
        children = children_of(proc.pid)
        assert len(children) == 4, text  # etcd, kubeemu, kube2sky, skydns
        # Each process's output is prefixed with its name.
        for name in ("etcd", "kubeemu", "kube2sky", "skydns"):
            assert re.search(rf"^\[{name}\] ", text, re.M), name
        # The printed dig works as printed.
        dig = re.search(r"dig @127\.0\.0\.1 -p (\d+) (web\.demo\.svc\.cluster\.local) A", text)
        assert dig and int(dig.group(1)) == ports["dns"]
        reply = dns.query.udp(dns.message.make_query(dig.group(2), "A"), "127.0.0.1",
                              port=ports["dns"], timeout=3)
        assert [rd.address for rrset in reply.answer for rd in rrset]
        data_dir = re.search(r"--data-dir (\S+)", subprocess.run(
            ["ps", "-o", "args=", "-p", str(children[0])], capture_output=True,
            text=True).stdout)
    finally:
        stop_process(proc, timeout=30)
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)  # only if the stack left one behind
            except ProcessLookupError:
                pass
        log.close()
    assert proc.returncode == 0, (tmp_path / "stack.log").read_text(errors="replace")
    assert "[stack] stopped" in (tmp_path / "stack.log").read_text(errors="replace")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in children):
        time.sleep(0.1)
    left = [p for p in children if os.path.exists(f"/proc/{p}")
            and "zombie" not in open(f"/proc/{p}/status").read().lower()]
    assert left == [], "processes left behind"
    if data_dir:
        assert not os.path.exists(os.path.dirname(data_dir.group(1))), "temp data left"


@pytest.mark.parametrize("script", ["scripts/run-local", "scripts/test", ".ci/run"])
def test_readme_commands_exist_and_are_the_first_lines(script):
    readme = open(os.path.join(REPO, "README.md")).read().splitlines()
    commands = [line.strip() for line in readme[:5] if line.strip().startswith("bash ")]
    assert [c.split()[1] for c in commands] == ["scripts/run-local", "scripts/test"]
    assert os.access(os.path.join(REPO, script), os.X_OK)


def test_run_local_stops_everything_when_one_process_dies(tmp_path):
    """If skydns dies, the stack says so and stops the others; a busy port is replaced."""
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 0))
    dns_port = busy.getsockname()[1]
    proc, log, output = start_stack(tmp_path, dns_port)
    try:
        assert f"port {dns_port} for DNS is in use" in output()
        children = children_of(proc.pid)
        skydns = [p for p in children
                  if open(f"/proc/{p}/cmdline").read().split("\0")[1:3] == ["-m", "skydns"]]
        assert len(skydns) == 1
        os.kill(skydns[0], signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        stop_process(proc, timeout=30)  # SIGTERM: the runner stops its children itself
        busy.close()
        log.close()
    text = (tmp_path / "stack.log").read_text(errors="replace")
    assert "[stack] skydns exited" in text and "stopping the rest" in text
    assert "[stack] stopped" in text
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in children):
        time.sleep(0.1)
    assert [p for p in children if os.path.exists(f"/proc/{p}")
            and "zombie" not in open(f"/proc/{p}/status").read().lower()] == []


def test_run_local_uses_the_cluster_in_kubeconfig(tmp_path):
    """With --kubeconfig (or $KUBECONFIG) kube2sky syncs that cluster; no emulator starts."""
    from kubeemu import Emulator
    cluster = Emulator(port=0).start()  # stands in for a real cluster here
    try:
        cluster.apply({"apiVersion": "v1", "kind": "Service",
                       "metadata": {"name": "far", "namespace": "default"},
                       "spec": {"clusterIP": "10.96.77.7",
                                "ports": [{"name": "http", "port": 80}]}})
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters: [{{name: c, cluster: {{server: '{cluster.url}'}}}}]\n"
            "users: [{name: u, user: {}}]\n"
            "contexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n")
        dns_port = free_port()
        proc, log, text = start_stack(tmp_path, dns_port, kubeconfig=str(kubeconfig))
        try:
            assert "instead of the emulator" in text()
            assert not re.search(r"^\[kubeemu\]", text(), re.M)
            reply = dns.query.udp(dns.message.make_query("far.default.svc.cluster.local.", "A"),
                                  "127.0.0.1", port=dns_port, timeout=3)
            assert [rd.address for rrset in reply.answer for rd in rrset] == ["10.96.77.7"]
        finally:
            stop_process(proc, timeout=30)
            log.close()
    finally:
        cluster.stop()
