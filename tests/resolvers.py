"""Real resolvers in front of skydns, for tests/test_real_resolvers.py.

- ``PodNetns``: a network namespace that looks like a pod's: a veth pair to the host with
  link-local addresses, ``lo`` up, and ``/etc/netns/NAME/resolv.conf`` (which
  ``ip netns exec`` bind-mounts over /etc/resolv.conf), so glibc's stub resolver inside it
  uses a skydns on the host end of the veth.
- ``Unbound`` and ``Dnsmasq``: Debian's unbound and dnsmasq as subprocesses on 127.0.0.1,
  configured from scratch (no system configuration files are read).

Nothing here sends traffic anywhere but 127.0.0.1 and the namespace's own addresses; every
process is stopped by PID, every namespace, veth and temporary directory is removed.
Missing tools or privileges skip the tests, except under CI (``$CI`` set), where they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import dns.message
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

from procs import free_port, stop_process, tool, wait_for

IN_CI = bool(os.environ.get("CI"))
NETNS_PREFIX = "skyt-"


def require(ok, why):
    """Skip the test when ``ok`` is false; under CI fail instead (CI must have it all)."""
    if ok:
        return
    if IN_CI:
        pytest.fail(f"CI must provide this: {why}")
    pytest.skip(why)


def _resolved(argv):
    """argv with a bare command name replaced by its path (sbin may not be on PATH)."""
    if "/" in argv[0]:
        return list(argv)
    return [tool(argv[0]) or argv[0], *argv[1:]]


def run(argv, timeout=10.0, check=True):
    return subprocess.run(_resolved(argv), capture_output=True, text=True, timeout=timeout,
                          check=check)


# -- DNS helpers ---------------------------------------------------------------------------

def ask(port, name, rdtype="A", host="127.0.0.1", edns=True, timeout=5.0):
    """A query as a stub resolver sends it (RD, EDNS 1232 unless ``edns`` is false), over
    UDP and again over TCP when the answer is truncated. Returns the response."""
    query = dns.message.make_query(name, rdtype, use_edns=0 if edns else False, payload=1232)
    response, _ = dns.query.udp_with_fallback(query, host, port=port, timeout=timeout,
                                             ignore_trailing=True)
    return response


def ask_udp(port, name, rdtype="A", host="127.0.0.1", timeout=5.0):
    """One plain UDP query without EDNS (512-byte answers); no TCP retry."""
    query = dns.message.make_query(name, rdtype)
    return dns.query.udp(query, host, port=port, timeout=timeout, ignore_trailing=True)


def section(rrsets):
    """A section as sorted (owner, type, rdata) texts: case-insensitive, without TTLs, in
    no particular order (skydns rotates answers; unbound 0x20-randomises the case it asks
    with)."""
    return sorted((rrset.name.to_text().lower(), dns.rdatatype.to_text(rrset.rdtype),
                   rd.to_text().lower()) for rrset in rrsets for rd in rrset)


def summary(response):
    """(rcode text, answer section) of a response, for comparisons and failure messages."""
    return dns.rcode.to_text(response.rcode()), section(response.answer)


def types_in(response):
    return {dns.rdatatype.to_text(rrset.rdtype) for rrset in response.answer}


def version_query_answers(port):
    """True once something answers a CHAOS TXT query on 127.0.0.1:port (any rcode)."""
    query = dns.message.make_query("version.bind.", "TXT", dns.rdataclass.CH)
    dns.query.udp(query, "127.0.0.1", port=port, timeout=0.5)
    return True


# -- a pod-like network namespace ----------------------------------------------------------

def _stale_netns():
    """Namespaces of this naming scheme left by a test run whose process is gone."""
    try:
        out = run(["ip", "netns", "list"], check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    stale = []
    for name in names:
        if name.startswith(NETNS_PREFIX) and name[len(NETNS_PREFIX):].isdigit():
            if not os.path.exists(f"/proc/{name[len(NETNS_PREFIX):]}"):
                stale.append(name)
    return stale


def _address_in_use(address):
    out = run(["ip", "-o", "-4", "addr", "show"], check=False).stdout
    return any(f"inet {address}/" in line for line in out.splitlines())


class PodNetns:
    """``ip netns add skyt-<pid>`` with a veth pair to the host: the host end gets
    ``169.254.53.(4k+1)/30`` and the namespace end ``.(4k+2)`` (a /30 of 169.254.53.0/24
    not in use on the host), and ``/etc/netns/NAME/resolv.conf`` holds
    ``resolv_conf`` with ``{nameserver}`` replaced by the host end's address.

    ``close()`` removes the namespace (which removes the veth pair), the host end if it is
    still there, and /etc/netns/NAME (and /etc/netns if this created it and it is empty).
    """

    def __init__(self, resolv_conf):
        pid = os.getpid()
        self.name = f"{NETNS_PREFIX}{pid}"
        self.host_if = f"skyh{pid}"[:15]
        self.ns_if = f"skyn{pid}"[:15]
        self.resolv_conf_template = resolv_conf
        self.etc_dir = f"/etc/netns/{self.name}"
        self.created_etc_netns = False
        self.host_ip = self.ns_ip = None
        self.created = False

    def create(self):
        for stale in _stale_netns() + ([self.name] if self._exists() else []):
            self._remove(stale)
        for i in range(64):  # start at a /30 of this PID's, so parallel runs differ
            k = (os.getpid() + i) % 64
            host_ip, ns_ip = f"169.254.53.{4 * k + 1}", f"169.254.53.{4 * k + 2}"
            if not _address_in_use(host_ip) and not _address_in_use(ns_ip):
                break
        else:
            raise RuntimeError("no free /30 in 169.254.53.0/24 on this host")
        self.host_ip, self.ns_ip = host_ip, ns_ip
        try:
            run(["ip", "netns", "add", self.name])
            self.created = True
            run(["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if])
            run(["ip", "link", "set", self.ns_if, "netns", self.name])
            run(["ip", "addr", "add", f"{host_ip}/30", "dev", self.host_if])
            run(["ip", "link", "set", self.host_if, "up"])
            self.exec(["ip", "addr", "add", f"{ns_ip}/30", "dev", self.ns_if])
            self.exec(["ip", "link", "set", self.ns_if, "up"])
            self.exec(["ip", "link", "set", "lo", "up"])
            if not os.path.isdir("/etc/netns"):
                os.makedirs("/etc/netns")
                self.created_etc_netns = True
            os.makedirs(self.etc_dir, exist_ok=True)
            with open(os.path.join(self.etc_dir, "resolv.conf"), "w") as fh:
                fh.write(self.resolv_conf_template.format(nameserver=host_ip))
        except BaseException:
            self.close()
            raise
        return self

    def _exists(self):
        return os.path.exists(f"/run/netns/{self.name}")

    def exec(self, argv, timeout=10.0, check=True):
        """Run ``argv`` inside the namespace (with its resolv.conf); a CompletedProcess."""
        return run(["ip", "netns", "exec", self.name, *_resolved(argv)], timeout=timeout,
                   check=check)

    def resolv_conf(self):
        return self.exec(["cat", "/etc/resolv.conf"]).stdout

    @staticmethod
    def _remove(name):
        run(["ip", "netns", "delete", name], check=False)
        shutil.rmtree(f"/etc/netns/{name}", ignore_errors=True)

    def close(self):
        errors = []
        if self.created or self._exists():
            result = run(["ip", "netns", "delete", self.name], check=False)
            if result.returncode != 0 and self._exists():
                errors.append(f"ip netns delete {self.name}: {result.stderr.strip()}")
        # Deleting the namespace destroys the veth pair; delete the host end if it is left.
        if run(["ip", "link", "show", self.host_if], check=False).returncode == 0:
            run(["ip", "link", "delete", self.host_if], check=False)
        shutil.rmtree(self.etc_dir, ignore_errors=True)
        if self.created_etc_netns:
            try:
                os.rmdir("/etc/netns")
            except OSError:
                pass
        self.created = False
        if errors:
            raise RuntimeError("; ".join(errors))


def netns_usable():
    """(ok, why not): root, the ip command, and ip netns in working order."""
    if os.geteuid() != 0:
        return False, "not root: cannot create network namespaces"
    if not tool("ip"):
        return False, "no ip command (Debian package iproute2)"
    try:
        result = run(["ip", "netns", "list"], check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"ip netns does not work: {exc}"
    if result.returncode != 0:
        return False, f"ip netns does not work: {result.stderr.strip()}"
    return True, ""


# -- skydns on another address -------------------------------------------------------------

# -- unbound and dnsmasq -------------------------------------------------------------------

class _Daemon:
    """A resolver subprocess on 127.0.0.1:port, with its files in a temporary directory."""

    name = "daemon"

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix=f"skydns-test-{self.name}-")
        os.chmod(self.dir, 0o755)
        self.port = free_port()
        self.logpath = os.path.join(self.dir, f"{self.name}.log")
        self.proc = None

    def argv(self):
        raise NotImplementedError

    def start(self):
        with open(os.path.join(self.dir, "stdout.log"), "ab") as out:
            self.proc = subprocess.Popen(self.argv(), stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        try:
            wait_for(self._up, timeout=15, what=f"{self.name} to answer")
        except BaseException:
            self.close()
            raise
        return self

    def _up(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n"
                               f"{self.output()}")
        return version_query_answers(self.port)

    def output(self):
        text = ""
        for path in (os.path.join(self.dir, "stdout.log"), self.logpath):
            try:
                with open(path, errors="replace") as fh:
                    text += fh.read()
            except OSError:
                pass
        return text

    def stop(self):
        stop_process(self.proc, timeout=5)
        self.proc = None

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Unbound(_Daemon):
    """unbound with a stub zone for ``zone`` to skydns and everything else forwarded to
    ``upstream`` (host:port on 127.0.0.1), so it never asks the root servers. Query-name
    minimisation and 0x20 (use-caps-for-id) are on; no trust anchor, no remote control, no
    file of the system's configuration is read."""

    name = "unbound"

    def __init__(self, skydns_port, upstream_port, zone="cluster.local"):
        super().__init__()
        self.conf = os.path.join(self.dir, "unbound.conf")
        with open(self.conf, "w") as fh:
            fh.write(f"""\
server:
    interface: 127.0.0.1
    port: {self.port}
    access-control: 127.0.0.0/8 allow
    do-ip6: no
    do-daemonize: no
    chroot: ""
    username: ""
    directory: "{self.dir}"
    pidfile: "{os.path.join(self.dir, 'unbound.pid')}"
    use-syslog: no
    logfile: "{self.logpath}"
    verbosity: 1
    log-queries: yes
    num-threads: 1
    qname-minimisation: yes
    use-caps-for-id: yes
    do-not-query-localhost: no
    domain-insecure: "{zone}"
    local-zone: "{zone}." nodefault

stub-zone:
    name: "{zone}"
    stub-addr: 127.0.0.1@{skydns_port}

forward-zone:
    name: "."
    forward-addr: 127.0.0.1@{upstream_port}

remote-control:
    control-enable: no
""")

    def checkconf(self):
        result = run([tool("unbound-checkconf"), self.conf], check=False)
        if result.returncode != 0:
            raise RuntimeError(f"unbound-checkconf: {result.stdout}{result.stderr}")
        return result.stdout

    def argv(self):
        return [tool("unbound"), "-d", "-c", self.conf]


class Dnsmasq(_Daemon):
    """dnsmasq as kube-dns ran it in front of skydns: ``cluster.local`` to skydns, the rest
    to ``upstream``; no /etc/resolv.conf, /etc/hosts or /etc/dnsmasq.conf."""

    name = "dnsmasq"

    def __init__(self, skydns_port, upstream_port, zone="cluster.local"):
        super().__init__()
        self.skydns_port, self.upstream_port, self.zone = skydns_port, upstream_port, zone

    def argv(self):
        return [tool("dnsmasq"), "--no-daemon", "--conf-file=/dev/null",
                "--no-resolv", "--no-hosts", "--bind-interfaces",
                "--listen-address=127.0.0.1", f"--port={self.port}",
                f"--server=/{self.zone}/127.0.0.1#{self.skydns_port}",
                f"--server=127.0.0.1#{self.upstream_port}",
                "--log-queries", f"--log-facility={self.logpath}"]
