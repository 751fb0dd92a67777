"""DNS over TCP under hostile or unusual clients: pipelining without reading, half-close,
many queries pending upstream at once, and the idle timeout of a client that stopped reading.

Everything runs against a real etcd, a real skydns process and real sockets on 127.0.0.1.
Every loop is bounded in count and time, and every socket is closed.
"""

from __future__ import annotations

import collections
import json
import os
import select
import socket
import time

import dns.message
import dns.query
import dns.rcode
import pytest

from procs import Skydns, Upstream, free_port, wait_for

try:  # the figures the server uses (absent from servers older than these tests)
    from skydns import server as _server
except ImportError:  # pragma: no cover
    _server = None
IN_FLIGHT_CAP = getattr(_server, "TCP_MAX_IN_FLIGHT", 32)
IDLE_TIMEOUT = getattr(_server, "TCP_IDLE_TIMEOUT", 10)

PIPELINED = 500_000        # queries a non-reading client sends (18 MB; 46 MB buffered unbounded)
RSS_GROWTH_LIMIT = 20_000  # KiB the server may grow by while such a client is connected
TCP_ESTABLISHED = 1        # tcpi_state of struct tcp_info (linux/tcp.h)


# -- helpers -------------------------------------------------------------------------------


def put(client, name, value):
    labels = name.rstrip(".").lower().split(".")
    client.put("/skydns/" + "/".join(reversed(labels)), json.dumps(value))


def frame(wire: bytes) -> bytes:
    return len(wire).to_bytes(2, "big") + wire


def query_wire(name, rdtype="A", qid=None) -> bytes:
    message = dns.message.make_query(name, rdtype)
    if qid is not None:
        message.id = qid
    return message.to_wire()


def addresses(message):
    return [rd.address for rrset in message.answer if rrset.rdtype in (1, 28) for rd in rrset]


def vm_rss_kib(pid) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def socket_inodes(pid) -> set:
    """The inodes of the sockets process ``pid`` has open."""
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out


def server_side_inode(server_port, client_sock) -> int | None:
    """The inode of the server's end of ``client_sock`` (a 127.0.0.1 TCP connection)."""
    client_port = client_sock.getsockname()[1]
    local = f"0100007F:{server_port:04X}"
    remote = f"0100007F:{client_port:04X}"
    with open("/proc/net/tcp") as fh:
        next(fh)
        for line in fh:
            fields = line.split()
            if fields[1] == local and fields[2] == remote:
                return int(fields[9])
    return None


def tcp_state(sock) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


def non_reading_client(port, rcvbuf=32 * 1024) -> socket.socket:
    """A TCP connection with a small receive buffer (the kernel then holds few replies)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(3)
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def push(sock, blob: bytes, stall=1.5, limit=8.0) -> int:
    """Write ``blob`` without ever reading; stop when it is all sent, when the kernel has
    taken nothing for ``stall`` seconds, or after ``limit`` seconds. Returns bytes sent."""
    view = memoryview(blob)
    sent = 0
    started = last_progress = time.monotonic()
    while sent < len(blob):
        now = time.monotonic()
        if now - last_progress > stall or now - started > limit:
            break
        try:
            n = sock.send(view[sent:sent + 65536])
        except BlockingIOError:
            select.select([], [sock], [], 0.05)
            continue
        sent += n
        last_progress = time.monotonic()
    return sent


def read_messages(sock, count, timeout, until_eof=True) -> tuple[list, bool]:
    """Read up to ``count`` DNS messages; returns (messages, eof_seen) once ``count`` were
    read (and, with ``until_eof``, the peer closed), or when ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    buf = b""
    messages = []
    eof = False
    while time.monotonic() < deadline and not eof:
        if not until_eof and len(messages) >= count:
            break
        ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BlockingIOError):
            chunk = b""
        if not chunk:
            eof = True
        buf += chunk
        while len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big"):
            n = int.from_bytes(buf[:2], "big")
            messages.append(dns.message.from_wire(buf[2:2 + n]))
            buf = buf[2 + n:]
    assert len(messages) <= count, f"{len(messages)} replies to {count} queries"
    return messages, eof


def timed_tcp_query(port, name, timeout=2.0):
    started = time.monotonic()
    reply = dns.query.tcp(dns.message.make_query(name, "A"), "127.0.0.1", port=port,
                          timeout=timeout)
    return reply, time.monotonic() - started


def timed_udp_query(port, name, timeout=2.0):
    started = time.monotonic()
    reply = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port,
                          timeout=timeout)
    return reply, time.monotonic() - started


class SilentTCP:
    """A TCP listener that accepts connections (skydns forwards TCP queries over TCP) and
    never answers; it counts the connections it accepted."""

    def __init__(self):
        self.port = free_port()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(512)
        self.listener.setblocking(False)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the port stays ours
        self.udp.bind(("127.0.0.1", self.port))
        self.accepted = []

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def accept_for(self, seconds):
        """Accept every connection that arrives within ``seconds``; returns how many."""
        deadline = time.monotonic() + seconds
        got = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return got
            ready, _, _ = select.select([self.listener], [], [], left)
            if not ready:
                continue
            for _ in range(1000):
                try:
                    conn, _ = self.listener.accept()
                except BlockingIOError:
                    break
                self.accepted.append(conn)
                got += 1

    def close(self):
        for conn in self.accepted:
            conn.close()
        self.listener.close()
        self.udp.close()


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def up():
    server = Upstream({("www.example.com.", "A"): ["192.0.2.10"]})
    # socketserver listens with a backlog of 5; up to TCP_MAX_IN_FLIGHT forwarded queries
    # connect at once, and a dropped SYN is retried only after 1 s (rtimeout is 2 s).
    server.tcp.socket.listen(128)
    yield server
    server.close()


@pytest.fixture(scope="module")
def sky(etcd, up):
    server = Skydns(etcd.url, upstream=up.address)
    server.start()
    yield server
    server.close()


def wait_answer(sky, name):
    return wait_for(lambda: addresses(sky.query(name, timeout=1.0)), timeout=15,
                    what=f"{name} to answer")


# -- 1. a client that pipelines and never reads --------------------------------------------


def test_pipelining_without_reading_keeps_memory_bounded(sky, etcd_client):
    put(etcd_client, "pipe.skydns.local.", {"host": "10.0.1.1"})
    put(etcd_client, "other.skydns.local.", {"host": "10.0.1.2"})
    wait_answer(sky, "pipe.skydns.local.")
    wait_answer(sky, "other.skydns.local.")
    pid = sky.proc.pid
    before = vm_rss_kib(pid)
    one = frame(query_wire("pipe.skydns.local.", qid=4242))
    blob = one * PIPELINED
    bad = non_reading_client(sky.port)
    try:
        sent = push(bad, blob, stall=1.5, limit=10.0)
        time.sleep(1.0)  # whatever the server still had queued, it has handled by now
        grown = vm_rss_kib(pid) - before
        assert grown < RSS_GROWTH_LIMIT, (
            f"VmRSS grew by {grown} KiB while a client sent {sent // len(one)} queries unread")
        print(f"VmRSS {before} -> {before + grown} KiB; {sent // len(one)} queries sent")

        # Others are answered at once while that connection is stalled.
        for _ in range(3):
            reply, took = timed_udp_query(sky.port, "other.skydns.local.")
            assert addresses(reply) == ["10.0.1.2"] and took < 1.0, took
            reply, took = timed_tcp_query(sky.port, "other.skydns.local.")
            assert addresses(reply) == ["10.0.1.2"] and took < 1.0, took

        inode = server_side_inode(sky.port, bad)
        assert inode is not None and inode in socket_inodes(pid)
    finally:
        bad.close()  # unread replies: the kernel sends RST
    wait_for(lambda: inode not in socket_inodes(pid), timeout=5,
             what="skydns to close its end of the closed connection")
    reply, took = timed_tcp_query(sky.port, "pipe.skydns.local.")
    assert addresses(reply) == ["10.0.1.1"]


def test_paused_and_resumed_connection_answers_every_query_once(sky, etcd_client):
    """A client that stops reading until the server stops reading, then reads and sends
    the rest: every query is answered exactly once across the pauses and resumes."""
    put(etcd_client, "again.skydns.local.", {"host": "10.0.1.3"})
    wait_answer(sky, "again.skydns.local.")
    count = 250_000
    body = query_wire("again.skydns.local.")[2:]
    blob = b"".join(frame((i & 0xFFFF).to_bytes(2, "big") + body) for i in range(count))
    sock = non_reading_client(sky.port)
    try:
        sent = push(sock, blob, stall=0.5, limit=5.0)
        assert sent < len(blob), "the server never stopped reading"
        view = memoryview(blob)
        ids = collections.Counter()
        buf = b""
        deadline = time.monotonic() + 30
        while sum(ids.values()) < count and time.monotonic() < deadline:
            want_write = [sock] if sent < len(blob) else []
            readable, writable, _ = select.select([sock], want_write, [], 0.5)
            if writable:
                try:
                    sent += sock.send(view[sent:sent + 65536])
                except BlockingIOError:
                    pass
            if readable:
                chunk = sock.recv(262144)
                assert chunk, "skydns closed the connection"
                buf += chunk
                offset = 0
                while len(buf) - offset >= 2:
                    n = int.from_bytes(buf[offset:offset + 2], "big")
                    if len(buf) - offset < 2 + n:
                        break
                    ids[int.from_bytes(buf[offset + 2:offset + 4], "big")] += 1
                    offset += 2 + n
                buf = buf[offset:]
        expected = collections.Counter(i & 0xFFFF for i in range(count))
        assert ids == expected, f"{sum(ids.values())} replies to {count} queries"
    finally:
        sock.close()


# -- 2. half-close after the last query ----------------------------------------------------


@pytest.mark.parametrize("names", [
    pytest.param(["fresh"], id="one-general-path"),
    pytest.param(["www.example.com."], id="one-forwarded"),
    pytest.param(["cached", "fresh", "www.example.com."], id="three-pipelined"),
    pytest.param(["www.example.com."] * (IN_FLIGHT_CAP + 8) + ["fresh", "cached"],
                 id="more-forwarded-than-the-cap"),
])
def test_half_close_gets_every_answer_then_eof(sky, etcd_client, names, request):
    tag = request.node.callspec.id
    expected = {}
    put(etcd_client, f"cached-{tag}.skydns.local.", {"host": "10.0.2.1"})
    put(etcd_client, f"fresh-{tag}.skydns.local.", {"host": "10.0.2.2"})
    wait_answer(sky, f"cached-{tag}.skydns.local.")  # now in the wire cache
    wait_for(lambda: sky.query(f"fresh-{tag}.skydns.local.", "TXT").rcode() == 0,
             what="the fresh name to be loaded")     # loaded, but its A never asked for
    wire = b""
    for i, name in enumerate(names):
        qname = name if name.endswith(".") else f"{name}-{tag}.skydns.local."
        qid = 1000 + i
        wire += frame(query_wire(qname, qid=qid))
        expected[qid] = {"cached": ["10.0.2.1"], "fresh": ["10.0.2.2"],
                         "www.example.com.": ["192.0.2.10"]}[name]
    with socket.create_connection(("127.0.0.1", sky.port), timeout=3) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        sock.sendall(wire)
        sock.shutdown(socket.SHUT_WR)  # the FIN goes in the same segment as the queries
        messages, eof = read_messages(sock, len(names), timeout=10)
    got = {m.id: addresses(m) for m in messages}
    assert got == expected
    assert eof, "the server should close the connection after the last answer"


# -- 3. queries pending upstream: at most TCP_MAX_IN_FLIGHT per connection --------------------


def test_in_flight_cap_per_connection(start_skydns, etcd_client):
    count = IN_FLIGHT_CAP * 2 + 16  # three rounds of upstream timeouts
    silent = SilentTCP()
    try:
        sky = start_skydns(f"-nameservers={silent.address}", "-rtimeout=1s")
        put(etcd_client, "local.skydns.local.", {"host": "10.0.3.1"})
        wait_answer(sky, "local.skydns.local.")
        with socket.create_connection(("127.0.0.1", sky.port), timeout=3) as sock:
            sock.sendall(b"".join(frame(query_wire(f"q{i}.example.net.", qid=i))
                                  for i in range(count)))
            # Before the first upstream timeout (1 s), only the cap may be waiting.
            first = silent.accept_for(0.7)
            assert first == IN_FLIGHT_CAP, (
                f"{first} queries forwarded at once from one connection")
            messages = []
            deadline = time.monotonic() + 12
            buf = b""
            sock.setblocking(False)
            while len(messages) < count and time.monotonic() < deadline:
                silent.accept_for(0.05)
                try:
                    chunk = sock.recv(65536)
                except BlockingIOError:
                    continue
                assert chunk, "skydns closed the connection"
                buf += chunk
                while len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big"):
                    n = int.from_bytes(buf[:2], "big")
                    messages.append(dns.message.from_wire(buf[2:2 + n]))
                    buf = buf[2 + n:]
            assert sorted(m.id for m in messages) == list(range(count))
            assert {m.rcode() for m in messages} == {dns.rcode.SERVFAIL}
            assert len(silent.accepted) == count  # each forwarded once, none dropped
            # The connection is still good for more.
            sock.setblocking(True)
            sock.sendall(frame(query_wire("local.skydns.local.", qid=7)))
            sock.settimeout(3)
            reply, _ = read_messages(sock, 1, timeout=3, until_eof=False)
            assert [m.id for m in reply] == [7] and addresses(reply[0]) == ["10.0.3.1"]
    finally:
        silent.close()


# -- 4. the idle timeout closes a connection whose client stopped reading ------------------


def test_idle_timeout_closes_a_stalled_non_reading_connection(sky, etcd_client):
    put(etcd_client, "stall.skydns.local.", {"host": "10.0.4.1"})
    wait_answer(sky, "stall.skydns.local.")
    blob = frame(query_wire("stall.skydns.local.", qid=99)) * 200_000  # ~10 MB of replies
    bad = non_reading_client(sky.port)
    try:
        push(bad, blob, stall=0.5, limit=4.0)
        stalled = time.monotonic()
        inode = server_side_inode(sky.port, bad)
        assert inode is not None
        wait_for(lambda: inode not in socket_inodes(sky.proc.pid),
                 timeout=IDLE_TIMEOUT + 4, interval=0.2,
                 what="the idle timeout to close the stalled connection")
        assert time.monotonic() - stalled < IDLE_TIMEOUT + 4
        assert tcp_state(bad) != TCP_ESTABLISHED
    finally:
        bad.close()


# -- 5. the two reasons to stop reading are tracked apart (in-process, a fake transport) ---


def test_write_pause_and_in_flight_cap_are_tracked_apart():
    from twisted.internet import defer
    from twisted.internet.testing import StringTransport
    from skydns.server import DNSTCPFactory

    pending = []

    class Handler:
        def handle(self, data, tcp, client=None):
            pending.append((defer.Deferred(), data))
            return pending[-1][0]

    class NoCache:
        def answer(self, data, tcp=False):
            return None

    proto = DNSTCPFactory(Handler(), NoCache()).buildProtocol(("127.0.0.1", 0))
    transport = StringTransport()
    proto.makeConnection(transport)
    try:
        queries = [(i + 1).to_bytes(2, "big") + b"\x01\x00" + bytes(8)
                   for i in range(IN_FLIGHT_CAP + 5)]
        proto.dataReceived(b"".join(frame(q) for q in queries))
        assert len(pending) == IN_FLIGHT_CAP  # parsing stopped at the cap
        assert transport.producerState == "paused"

        proto.pauseProducing()  # the transport: unsent replies passed its bufferSize
        d, data = pending.pop(0)
        d.callback(data)  # one completes: below the cap, but the write buffer is full
        assert len(pending) == IN_FLIGHT_CAP - 1
        assert transport.producerState == "paused"
        assert transport.value() == frame(data)  # written as it completed

        proto.resumeProducing()  # the write buffer drained: one more fits under the cap
        assert len(pending) == IN_FLIGHT_CAP
        assert transport.producerState == "paused"

        for d, data in pending[:5]:  # out of order is fine
            d.callback(data)
        del pending[:5]
        assert len(pending) == IN_FLIGHT_CAP - 1  # the last 4 queued queries were parsed
        assert transport.producerState == "producing"

        proto.readConnectionLost()  # the client half-closed: answer the rest, then close
        assert not transport.disconnecting
        for d, data in pending[::-1]:
            d.callback(data)
        assert transport.disconnecting
        assert transport.producer is None
        assert transport.value().count(b"\x01\x00" + bytes(8)) == len(queries)
    finally:
        proto.connectionLost(None)
