"""End-to-end tests of skydns as operators see it: forwarding, stub zones, message size,
malformed packets, etcd outages and compaction, /healthz and metrics, flags, environment and
/skydns/config, DNSSEC, the response cache, round robin and shutdown.

Everything runs against a real etcd, a real skydns process and real UDP/TCP (dnspython), on
127.0.0.1 only. Groups that can share a server use class-scoped fixtures with their own
``-path-prefix`` (the ``etcd_client`` fixture empties ``/skydns/`` before every test).
"""

from __future__ import annotations

import base64
import collections
import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import dns.dnssec
import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from procs import Etcd, Skydns, Upstream, free_port, wait_for

ZONE = {
    ("www.example.com.", "A"): ["192.0.2.10"],
    ("www.example.com.", "AAAA"): ["2001:db8::10"],
    ("mail.example.com.", "A"): ["192.0.2.25"],
    ("localhost.", "A"): ["127.0.0.1"],
}
STUB_OPTION = 65011


# -- helpers -------------------------------------------------------------------------------


class CountingUpstream(Upstream):
    """procs.Upstream (which records transports) with this module's zone by default."""

    def __init__(self, zone=None):
        super().__init__(ZONE if zone is None else zone)


class SilentServer:
    """A UDP socket and a TCP listener that accept queries and never answer them."""

    def __init__(self):
        self.port = free_port()
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", self.port))
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind(("127.0.0.1", self.port))
        self.tcp.listen(16)

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def received(self):
        """Number of datagrams waiting unread (i.e. queries skydns sent here)."""
        self.udp.setblocking(False)
        n = 0
        while True:
            try:
                self.udp.recv(65535)
                n += 1
            except BlockingIOError:
                return n

    def close(self):
        self.udp.close()
        self.tcp.close()


def key_of(name, prefix="skydns"):
    labels = name.rstrip(".").lower().split(".")
    return "/" + prefix + "/" + "/".join(reversed(labels))


def put(client, name, value, prefix="skydns"):
    key = key_of(name, prefix)
    client.put(key, value if isinstance(value, str) else json.dumps(value))
    return key


def put_many(client, items):
    """Write (key, value) pairs in transactions of at most 100 operations."""
    items = list(items)
    for i in range(0, len(items), 100):
        client.transaction(compare=[], failure=[], success=[
            client.transactions.put(k, v if isinstance(v, str) else json.dumps(v))
            for k, v in items[i:i + 100]])


@contextlib.contextmanager
def running(etcd_url, *flags, upstream=None, env=None, wait_loaded=True):
    server = Skydns(etcd_url, *flags, upstream=upstream, env=env)
    try:
        server.start(wait_loaded=wait_loaded)
        yield server
    finally:
        server.close()


def addresses(message):
    return [rd.address for rrset in message.answer if rrset.rdtype in (1, 28) for rd in rrset]


def wait_answer(server, name, rdtype="A", predicate=None, timeout=15.0):
    """Poll until ``name`` answers (with rdata satisfying ``predicate`` when given)."""
    def check():
        reply = server.query(name, rdtype, timeout=1.0)
        if reply.rcode() != dns.rcode.NOERROR or not reply.answer:
            return None
        if predicate is not None and not predicate(reply):
            return None
        return reply
    return wait_for(check, timeout=timeout, what=f"{name} {rdtype} to answer")


def wait_rcode(server, name, rcode, rdtype="A", timeout=15.0):
    return wait_for(lambda: server.query(name, rdtype, timeout=1.0).rcode() == rcode,
                    timeout=timeout, what=f"{name} to answer {dns.rcode.to_text(rcode)}")


def raw_udp(port, wire, timeout=1.0):
    """Send raw bytes, return the raw reply or None when nothing came within ``timeout``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(wire, ("127.0.0.1", port))
        try:
            return s.recv(65535)
        except socket.timeout:
            return None


def tcp_read_message(sock):
    def read(n):
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("connection closed")
            data += chunk
        return data
    return read(int.from_bytes(read(2), "big"))


def tcp_send(sock, wire):
    sock.sendall(len(wire).to_bytes(2, "big") + wire)


def http_get(port, path, timeout=5):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(text, name, labels=None):
    """The value of one Prometheus sample, or None."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not m or m.group(1) != name:
            continue
        if labels is not None:
            got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            if got != labels:
                continue
        return float(m.group(3))
    return None


def run_skydns(args, env=None, timeout=20):
    """Run the skydns command to completion (for bad flags); returns CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "skydns", *args], capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, **(env or {})))


@pytest.fixture
def counting_upstream():
    server = CountingUpstream()
    yield server
    server.close()


@pytest.fixture
def silent():
    servers = []

    def make():
        servers.append(SilentServer())
        return servers[-1]
    yield make
    for s in servers:
        s.close()


@pytest.fixture
def private_etcd():
    """A second etcd (own data dir and ports), not started: tests stop/start it at will."""
    server = Etcd()
    yield server
    server.close()


# -- 1. forwarding -------------------------------------------------------------------------


class TestForwarding:
    @pytest.fixture(scope="class")
    @classmethod
    def up(cls):
        server = CountingUpstream()
        yield server
        server.close()

    @pytest.fixture(scope="class")
    @classmethod
    def sky(cls, etcd, up):
        with running(etcd.url, "-path-prefix=fwd", upstream=up.address) as server:
            yield server

    @pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
    def test_forwarded_over_client_transport(self, sky, up, tcp):
        up.reset()
        query = dns.message.make_query("www.example.com.", "A")
        query.id = 4242
        send = dns.query.tcp if tcp else dns.query.udp
        reply = send(query, "127.0.0.1", port=sky.port, timeout=5)
        assert reply.id == 4242
        assert reply.rcode() == dns.rcode.NOERROR
        assert reply.flags & dns.flags.QR and reply.flags & dns.flags.RA
        assert not reply.flags & dns.flags.AA
        assert addresses(reply) == ["192.0.2.10"]
        assert up.transports == ["tcp" if tcp else "udp"]
        assert [q.question[0].name.to_text() for q in up.queries] == ["www.example.com."]

    def test_upstream_nxdomain_is_relayed(self, sky, up):
        up.reset()
        reply = sky.query("nothing.example.com.", "A")
        assert reply.rcode() == dns.rcode.NXDOMAIN
        assert reply.flags & dns.flags.RA
        assert len(up.queries) == 1

    @pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
    @pytest.mark.parametrize("name", ["nonexistent.", "localhost.", "Wpad.", "com."])
    def test_fewer_labels_than_ndots_is_nxdomain_not_forwarded(self, sky, up, name, tcp):
        """SkyDNS answered SERVFAIL here; a pod's search path ends with such a name, so we
        answer NXDOMAIN with a root SOA (see the README), the second time from the cache."""
        up.reset()
        for _ in range(2):
            started = time.monotonic()
            reply = sky.query(name, "A", tcp=tcp)
            assert time.monotonic() - started < 1.0
            assert reply.rcode() == dns.rcode.NXDOMAIN
            assert reply.flags & dns.flags.RA and not reply.flags & dns.flags.AA
            assert len(reply.authority) == 1
            soa = reply.authority[0]
            assert soa.rdtype == dns.rdatatype.SOA and soa.name.to_text() == "."
            assert soa[0].minimum == soa.ttl == 60
            assert reply.question[0].name.to_text() == name  # the client's spelling
        time.sleep(0.1)
        assert up.queries == []

    def test_root_is_forwarded(self, sky, up):
        up.reset()
        sky.query(".", "NS")
        assert len(up.queries) == 1

    def test_no_rec(self, etcd, counting_upstream):
        with running(etcd.url, "-no-rec", "-path-prefix=fwd",
                     upstream=counting_upstream.address) as sky:
            for tcp in (False, True):
                reply = sky.query("www.example.com.", "A", tcp=tcp)
                assert reply.rcode() == dns.rcode.SERVFAIL
            # authoritative answers still work with -no-rec
            assert sky.query("skydns.local.", "SOA").rcode() == dns.rcode.NOERROR
        assert counting_upstream.queries == []

    def test_ndots_flag(self, etcd, counting_upstream):
        with running(etcd.url, "-ndots=1", upstream=counting_upstream.address) as sky:
            reply = sky.query("localhost.", "A")
            assert reply.rcode() == dns.rcode.NOERROR
            assert addresses(reply) == ["127.0.0.1"]
        with running(etcd.url, "-ndots=3", upstream=counting_upstream.address) as sky:
            counting_upstream.reset()
            assert sky.query("example.com.", "A").rcode() == dns.rcode.NXDOMAIN
            assert addresses(sky.query("www.example.com.", "A")) == ["192.0.2.10"]
            assert len(counting_upstream.queries) == 1


def _ten_queries(sky, tcp=False):
    for i in range(10):
        query = dns.message.make_query("www.example.com.", "A")
        query.id = 1000 + i
        send = dns.query.tcp if tcp else dns.query.udp
        reply = send(query, "127.0.0.1", port=sky.port, timeout=5)
        assert reply.rcode() == dns.rcode.NOERROR and reply.id == 1000 + i


class TestUpstreamChoice:
    @pytest.fixture
    def two(self):
        a, b = CountingUpstream(), CountingUpstream()
        yield a, b
        a.close()
        b.close()

    def test_ns_rotate_uses_both(self, etcd, two):
        a, b = two
        with running(etcd.url, "-rcache=0", f"-nameservers={a.address},{b.address}") as sky:
            _ten_queries(sky)
        assert a.queries and b.queries
        assert len(a.queries) + len(b.queries) == 10

    def test_ns_rotate_false_uses_first_only(self, etcd, two):
        a, b = two
        with running(etcd.url, "-ns-rotate=false", "-rcache=0",
                     f"-nameservers={a.address},{b.address}") as sky:
            _ten_queries(sky)
            _ten_queries(sky, tcp=True)
        assert len(a.queries) == 20
        assert b.queries == []

    def test_first_upstream_refusing_falls_over(self, etcd, counting_upstream):
        dead = free_port()  # nothing listens there: ICMP port unreachable / TCP RST
        with running(etcd.url, "-ns-rotate=false", "-rtimeout=1s",
                     f"-nameservers=127.0.0.1:{dead},{counting_upstream.address}") as sky:
            for tcp in (False, True):
                reply = sky.query("www.example.com.", "A", tcp=tcp, timeout=5)
                assert reply.rcode() == dns.rcode.NOERROR
                assert addresses(reply) == ["192.0.2.10"]
        assert counting_upstream.transports == ["udp", "tcp"]

    @pytest.mark.parametrize("tcp", [
        pytest.param(False, id="udp"),
        pytest.param(True, id="tcp"),
    ])
    def test_refused_upstream_fails_over_at_once(self, etcd, counting_upstream, tcp):
        """SkyDNS (Go) moved to the next server as soon as the read failed with ECONNREFUSED;
        a refused port must not cost a client the whole read timeout."""
        dead = free_port()
        with running(etcd.url, "-ns-rotate=false", "-rtimeout=2s",
                     f"-nameservers=127.0.0.1:{dead},{counting_upstream.address}") as sky:
            started = time.monotonic()
            reply = sky.query("www.example.com.", "A", tcp=tcp, timeout=5)
            elapsed = time.monotonic() - started
            assert addresses(reply) == ["192.0.2.10"]
            assert elapsed < 1.0, f"took {elapsed:.2f}s with -rtimeout=2s"

    def test_first_upstream_silent_falls_over_after_rtimeout(self, etcd, counting_upstream,
                                                             silent):
        quiet = silent()
        with running(etcd.url, "-ns-rotate=false", "-rtimeout=300ms",
                     f"-nameservers={quiet.address},{counting_upstream.address}") as sky:
            started = time.monotonic()
            reply = sky.query("www.example.com.", "A", timeout=5)
            elapsed = time.monotonic() - started
            assert reply.rcode() == dns.rcode.NOERROR
            assert addresses(reply) == ["192.0.2.10"]
            assert 0.25 <= elapsed < 2.0
            assert quiet.received() == 1

    def test_every_upstream_dead_is_servfail_in_bounded_time(self, etcd, silent):
        first, second = silent(), silent()
        with running(etcd.url, "-rtimeout=300ms",
                     f"-nameservers={first.address},{second.address}") as sky:
            for tcp in (False, True):
                started = time.monotonic()
                reply = sky.query("www.example.com.", "A", tcp=tcp, timeout=5)
                elapsed = time.monotonic() - started
                assert reply.rcode() == dns.rcode.SERVFAIL
                assert elapsed < 2.0, elapsed
            # and the server is still fine afterwards
            assert sky.query("version.bind.", "TXT", rdclass="CH").rcode() == dns.rcode.NOERROR
        assert first.received() >= 1 and second.received() >= 1


# -- 2. stub zones -------------------------------------------------------------------------


class TestStubZones:
    @pytest.fixture(scope="class")
    @classmethod
    def stub(cls):
        server = CountingUpstream()
        yield server
        server.close()

    @pytest.fixture(scope="class")
    @classmethod
    def default_up(cls):
        server = CountingUpstream({("www.example.com.", "A"): ["198.51.100.1"],
                                   ("www.example.net.", "A"): ["198.51.100.2"]})
        yield server
        server.close()

    @pytest.fixture(scope="class")
    @classmethod
    def sky(cls, etcd, stub, default_up):
        client = etcd.client()
        client.delete_prefix("/stub/")
        client.put("/stub/local/skydns/dns/stub/com/example/ns1",
                   json.dumps({"host": "127.0.0.1", "port": stub.port}))
        with running(etcd.url, "-stubzones", "-path-prefix=stub",
                     upstream=default_up.address) as server:
            wait_answer(server, "www.example.com.", predicate=lambda r:
                        addresses(r) == ["192.0.2.10"])
            yield server
        client.delete_prefix("/stub/")
        client.close()

    @pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
    def test_stub_zone_forwarded_with_option(self, sky, stub, default_up, tcp):
        stub.reset()
        default_up.reset()
        query = dns.message.make_query("mail.example.com.", "A")
        send = dns.query.tcp if tcp else dns.query.udp
        reply = send(query, "127.0.0.1", port=sky.port, timeout=5)
        assert reply.id == query.id
        assert reply.rcode() == dns.rcode.NOERROR
        assert addresses(reply) == ["192.0.2.25"]
        assert default_up.queries == []
        assert stub.transports == ["tcp" if tcp else "udp"]
        (forwarded,) = stub.queries
        options = [o for o in forwarded.options if o.otype == STUB_OPTION]
        assert len(options) == 1
        assert options[0].to_wire() == b"\x01"

    def test_other_names_use_default_nameservers(self, sky, stub, default_up):
        stub.reset()
        default_up.reset()
        reply = sky.query("www.example.net.", "A")
        assert addresses(reply) == ["198.51.100.2"]
        assert stub.queries == []
        assert len(default_up.queries) == 1
        assert not any(o.otype == STUB_OPTION for o in default_up.queries[0].options)

    def test_query_already_marked_is_dropped(self, sky, stub):
        stub.reset()
        query = dns.message.make_query("www.example.com.", "A", use_edns=0, options=[
            dns.edns.GenericOption(STUB_OPTION, b"\x01")])
        with pytest.raises(dns.exception.Timeout):
            dns.query.udp(query, "127.0.0.1", port=sky.port, timeout=1.0)
        assert stub.queries == []
        # the server still answers afterwards
        assert addresses(sky.query("www.example.com.", "A")) == ["192.0.2.10"]

    def test_stub_zone_added_at_runtime(self, sky, stub, etcd):
        client = etcd.client()
        try:
            client.put("/stub/local/skydns/dns/stub/org/example/ns1",
                       json.dumps({"host": "127.0.0.1", "port": stub.port}))
            stub.zone[("www.example.org.", "A")] = ["192.0.2.99"]
            wait_answer(sky, "www.example.org.",
                        predicate=lambda r: addresses(r) == ["192.0.2.99"])
        finally:
            client.delete("/stub/local/skydns/dns/stub/org/example/ns1")
            client.close()


# -- 3. size -------------------------------------------------------------------------------


class TestSize:
    N = 60

    @pytest.fixture(scope="class")
    @classmethod
    def sky(cls, etcd):
        client = etcd.client()
        client.delete_prefix("/size/")
        items = [(f"/size/local/skydns/big/h{i}", {"host": f"10.1.{i // 250}.{i % 250 + 1}"})
                 for i in range(cls.N)]
        items.append(("/size/local/skydns/medium", {"text": "m" * 350}))
        # two TXT records that together exceed 65535 bytes
        items += [(f"/size/local/skydns/huge/t{i}", {"text": chr(ord("a") + i) * 40000})
                  for i in range(2)]
        put_many(client, items)
        # The client's buffer is what these tests are about: no server-side cap below it.
        with running(etcd.url, "-path-prefix=size", "-max-udp-size=65535") as server:
            yield server
        client.delete_prefix("/size/")
        client.close()

    def test_udp_without_edns_is_512_and_truncated(self, sky):
        query = dns.message.make_query("big.skydns.local.", "A")
        wire = raw_udp(sky.port, query.to_wire(), timeout=3)
        assert wire is not None and len(wire) <= 512
        reply = dns.message.from_wire(wire, ignore_trailing=True)
        assert reply.flags & dns.flags.TC
        assert reply.id == query.id

    def test_udp_respects_client_edns_size(self, sky):
        query = dns.message.make_query("big.skydns.local.", "A", use_edns=0, payload=800)
        wire = raw_udp(sky.port, query.to_wire(), timeout=3)
        assert wire is not None
        assert len(wire) <= 800
        reply = dns.message.from_wire(wire, ignore_trailing=True)
        assert reply.flags & dns.flags.TC
        assert reply.id == query.id and reply.rcode() == dns.rcode.NOERROR

    def test_udp_truncation_cuts_the_answer_to_fit(self, sky):
        """Spec: 'still too big over UDP: cut the answer and set TC' (SkyDNS's Fit kept as
        many answer records as fit the client's buffer)."""
        counts = {}
        for payload in (None, 800):
            kwargs = {"use_edns": 0, "payload": payload} if payload else {}
            query = dns.message.make_query("big.skydns.local.", "A", **kwargs)
            wire = raw_udp(sky.port, query.to_wire(), timeout=3)
            reply = dns.message.from_wire(wire, ignore_trailing=True)
            assert reply.flags & dns.flags.TC
            assert len(wire) <= (payload or 512)
            counts[payload] = len(addresses(reply))
        assert counts[None] >= 20, counts  # 16 bytes per A record: ~29 fit in 512
        assert counts[800] > counts[None], counts

    def test_edns_size_below_512_counts_as_512(self, sky):
        query = dns.message.make_query("medium.skydns.local.", "TXT", use_edns=0, payload=256)
        wire = raw_udp(sky.port, query.to_wire(), timeout=3)
        reply = dns.message.from_wire(wire)
        assert 256 < len(wire) <= 512
        assert not reply.flags & dns.flags.TC
        assert b"".join(reply.answer[0][0].strings) == b"m" * 350

    def test_udp_large_edns_gets_everything(self, sky):
        reply = sky.query("big.skydns.local.", "A", use_edns=0, payload=4096)
        assert not reply.flags & dns.flags.TC
        assert len(addresses(reply)) == self.N

    def test_tcp_gets_everything(self, sky):
        reply = sky.query("big.skydns.local.", "A", tcp=True)
        assert not reply.flags & dns.flags.TC
        assert reply.rcode() == dns.rcode.NOERROR
        assert len(addresses(reply)) == self.N

    def test_additional_dropped_before_truncating(self, sky):
        full = sky.query("big.skydns.local.", "SRV", tcp=True)
        assert sum(len(r) for r in full.answer) == self.N
        assert sum(len(r) for r in full.additional) == self.N  # glue A records
        answer_only = dns.message.make_response(dns.message.make_query(
            "big.skydns.local.", "SRV", use_edns=0, payload=4096))
        answer_only.answer = full.answer
        answer_size = len(answer_only.to_wire())
        assert answer_size + 100 < len(full.to_wire())  # glue really matters
        # room for the answer but not the glue: additional goes, no TC
        payload = answer_size + 40
        query = dns.message.make_query("big.skydns.local.", "SRV", use_edns=0, payload=payload)
        wire = raw_udp(sky.port, query.to_wire(), timeout=3)
        reply = dns.message.from_wire(wire)
        assert len(wire) <= payload
        assert not reply.flags & dns.flags.TC
        assert sum(len(r) for r in reply.answer) == self.N
        assert sum(len(r) for r in reply.additional) == 0
        # less room than the answer: TC
        query = dns.message.make_query("big.skydns.local.", "SRV", use_edns=0,
                                       payload=answer_size - 100)
        wire = raw_udp(sky.port, query.to_wire(), timeout=3)
        reply = dns.message.from_wire(wire, ignore_trailing=True)
        assert reply.flags & dns.flags.TC
        assert len(wire) <= answer_size - 100

    def test_over_65535_is_tcp_servfail_and_udp_tc(self, sky):
        reply = sky.query("huge.skydns.local.", "TXT", tcp=True, timeout=5)
        assert reply.rcode() == dns.rcode.SERVFAIL
        assert not reply.answer
        reply = sky.query("huge.skydns.local.", "TXT", use_edns=0, payload=4096)
        assert reply.flags & dns.flags.TC
        # one of them alone is fine over TCP
        reply = sky.query("t0.huge.skydns.local.", "TXT", tcp=True, timeout=5)
        assert reply.rcode() == dns.rcode.NOERROR
        assert b"".join(reply.answer[0][0].strings) == b"a" * 40000


# -- 4. malformed packets ------------------------------------------------------------------


class TestMalformed:
    @pytest.fixture(scope="class")
    @classmethod
    def sky(cls, etcd):
        client = etcd.client()
        client.put("/malformed/local/skydns/ok", json.dumps({"host": "10.9.9.9"}))
        with running(etcd.url, "-path-prefix=malformed") as server:
            yield server
        client.delete_prefix("/malformed/")
        client.close()

    @staticmethod
    def healthy(sky):
        for tcp in (False, True):
            reply = sky.query("ok.skydns.local.", "A", tcp=tcp)
            assert addresses(reply) == ["10.9.9.9"]

    def test_short_packets_get_no_reply(self, sky):
        header = bytes.fromhex("abcd01000001000000000000")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.7)
            for n in range(12):
                s.sendto(header[:n], ("127.0.0.1", sky.port))
            with pytest.raises(socket.timeout):
                s.recv(65535)
        self.healthy(sky)

    def test_garbage_question_is_formerr_with_same_id(self, sky):
        for tail in (b"\x05ab", b"\xff\xff\xff\xff", b"\x03www\x00\x00"):
            wire = bytes.fromhex("beef01000001000000000000") + tail
            out = raw_udp(sky.port, wire)
            assert out is not None, tail
            assert out[:2] == b"\xbe\xef"
            assert out[2] & 0x80  # QR
            assert out[3] & 0x0F == dns.rcode.FORMERR
        self.healthy(sky)

    def test_question_count_not_one_is_formerr(self, sky):
        two = dns.message.make_query("ok.skydns.local.", "A")
        two.question.append(dns.message.make_query("ok.skydns.local.", "AAAA").question[0])
        for wire in (bytes.fromhex("beef01000000000000000000"), two.to_wire()):
            out = raw_udp(sky.port, wire)
            assert out is not None
            assert out[:2] == wire[:2] and out[2] & 0x80
            assert out[3] & 0x0F == dns.rcode.FORMERR
        self.healthy(sky)

    def test_other_opcodes_and_edns_versions(self, sky):
        for opcode in (dns.opcode.NOTIFY, dns.opcode.UPDATE, dns.opcode.STATUS):
            query = dns.message.make_query("ok.skydns.local.", "SOA")
            query.set_opcode(opcode)
            reply = dns.message.from_wire(raw_udp(sky.port, query.to_wire()))
            assert reply.id == query.id
            assert reply.rcode() == dns.rcode.NOTIMP, opcode
        query = dns.message.make_query("ok.skydns.local.", "A", use_edns=1)
        reply = dns.query.udp(query, "127.0.0.1", port=sky.port, timeout=3)
        assert reply.rcode() == dns.rcode.BADVERS
        assert reply.edns == 0 and not reply.answer
        self.healthy(sky)

    def test_response_packets_are_not_answered(self, sky):
        query = dns.message.make_query("ok.skydns.local.", "A")
        query.flags |= dns.flags.QR
        assert raw_udp(sky.port, query.to_wire(), timeout=0.7) is None
        self.healthy(sky)

    def test_random_bytes(self, sky):
        rnd = random.Random(1234)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(300):
                s.sendto(bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(0, 200))),
                         ("127.0.0.1", sky.port))
            s.settimeout(0.5)
            replies = []
            with contextlib.suppress(socket.timeout):
                while True:
                    replies.append(s.recv(65535))
        for out in replies:  # whatever came back is a well-formed response header
            assert len(out) >= 12 and out[2] & 0x80
        self.healthy(sky)
        assert sky.proc.poll() is None

    def test_tcp_garbage(self, sky):
        good = dns.message.make_query("ok.skydns.local.", "A")
        with socket.create_connection(("127.0.0.1", sky.port), timeout=3) as s:
            tcp_send(s, bytes.fromhex("beef01000001000000000000") + b"\xff\xff")
            out = tcp_read_message(s)
            assert out[:2] == b"\xbe\xef" and out[3] & 0x0F == dns.rcode.FORMERR
            tcp_send(s, b"\x01\x02\x03")  # too short: ignored, connection stays usable
            tcp_send(s, good.to_wire())
            reply = dns.message.from_wire(tcp_read_message(s))
            assert reply.id == good.id and addresses(reply) == ["10.9.9.9"]
        with socket.create_connection(("127.0.0.1", sky.port), timeout=3) as s:
            s.sendall(bytes(random.Random(7).getrandbits(8) for _ in range(3000)))
        with socket.create_connection(("127.0.0.1", sky.port), timeout=3) as s:
            s.sendall(b"\x00\x30\x12")  # a length prefix and then the client goes away
        self.healthy(sky)
        assert sky.proc.poll() is None


# -- 5. etcd lifecycle ---------------------------------------------------------------------


def test_servfail_until_etcd_is_reachable(private_etcd, start_skydns):
    sky = start_skydns(wait_loaded=False, etcd_url=private_etcd.url)
    for name, rdtype in (("a.skydns.local.", "A"), ("missing.skydns.local.", "A"),
                         ("skydns.local.", "SOA"), ("x.skydns.local.", "SRV")):
        for tcp in (False, True):
            reply = sky.query(name, rdtype, tcp=tcp)
            assert reply.rcode() == dns.rcode.SERVFAIL, (name, rdtype, tcp)
    status, body = sky.healthz()
    assert status == 503 and "not loaded" in body
    # nothing to serve yet: not ready either
    status, body = sky.status("/readyz")
    assert status == 503 and "not loaded" in body
    private_etcd.start()
    client = private_etcd.client()
    try:
        put(client, "a.skydns.local.", {"host": "10.0.0.1"})
        reply = wait_answer(sky, "a.skydns.local.", timeout=20)
        assert addresses(reply) == ["10.0.0.1"]
        assert sky.query("missing.skydns.local.").rcode() == dns.rcode.NXDOMAIN
        wait_for(lambda: sky.healthz()[0] == 200, timeout=10, what="healthz 200")
    finally:
        client.close()


def test_etcd_config_applied_when_etcd_comes_up_late(private_etcd, start_skydns):
    """/skydns/config cannot be read at start (etcd down): it applies on the first load."""
    private_etcd.start()
    client = private_etcd.client()
    client.put("/skydns/config", json.dumps({"ttl": 77}))
    put(client, "late.skydns.local.", {"host": "10.0.8.1"})
    client.close()
    private_etcd.stop()
    sky = start_skydns(wait_loaded=False, etcd_url=private_etcd.url)
    assert sky.query("late.skydns.local.").rcode() == dns.rcode.SERVFAIL
    private_etcd.start()
    reply = wait_answer(sky, "late.skydns.local.", timeout=20)
    assert addresses(reply) == ["10.0.8.1"]
    assert reply.answer[0].ttl == 77


def test_etcd_outage_served_from_memory_then_rewatch(private_etcd, start_skydns):
    private_etcd.start()
    client = private_etcd.client()
    try:
        put(client, "a.skydns.local.", {"host": "10.0.0.1"})
        put(client, "b.skydns.local.", {"host": "10.0.0.2"})
        sky = start_skydns(etcd_url=private_etcd.url)
        assert addresses(sky.query("a.skydns.local.")) == ["10.0.0.1"]
        assert sky.healthz()[0] == 200

        private_etcd.stop()
        status, body = wait_for(lambda: (lambda h: h if h[0] == 503 else None)(sky.healthz()),
                                timeout=15, what="healthz 503 after etcd stopped")
        assert "etcd" in body and body.strip()
        # alive all the same: a liveness probe on /livez must not restart it now
        assert sky.get("/livez") == "ok\n"
        # and ready: the records are there, served from memory, and /readyz says so
        status, body = sky.status("/readyz")
        assert status == 200 and body.startswith("ok, serving the records of etcd revision")
        # still served from memory, cached or not, over both transports
        for tcp in (False, True):
            assert addresses(sky.query("a.skydns.local.", tcp=tcp)) == ["10.0.0.1"]
            assert addresses(sky.query("b.skydns.local.", tcp=tcp)) == ["10.0.0.2"]
            assert sky.query("c.skydns.local.", tcp=tcp).rcode() == dns.rcode.NXDOMAIN

        private_etcd.start()
        put(client, "c.skydns.local.", {"host": "10.0.0.3"})
        client.delete(key_of("b.skydns.local."))
        put(client, "a.skydns.local.", {"host": "10.0.0.11"})
        wait_answer(sky, "c.skydns.local.", timeout=25)
        wait_answer(sky, "a.skydns.local.", predicate=lambda r: addresses(r) == ["10.0.0.11"])
        wait_rcode(sky, "b.skydns.local.", dns.rcode.NXDOMAIN)
        wait_for(lambda: sky.healthz()[0] == 200, timeout=15, what="healthz back to 200")
        assert sky.status("/readyz") == (200, "ok\n")
        # and the new watch keeps delivering changes
        put(client, "d.skydns.local.", {"host": "10.0.0.4"})
        wait_answer(sky, "d.skydns.local.", timeout=10)
    finally:
        client.close()


def test_changes_made_elsewhere_during_outage_are_replayed(private_etcd, start_skydns):
    """etcd comes back with revisions skydns never saw (not compacted): the re-watch from
    the last seen revision must replay them, deletions included."""
    private_etcd.start()
    client = private_etcd.client()
    put(client, "stay.skydns.local.", {"host": "10.0.7.1"})
    put(client, "gone.skydns.local.", {"host": "10.0.7.2"})
    client.close()
    sky = start_skydns(etcd_url=private_etcd.url)
    assert addresses(sky.query("gone.skydns.local.")) == ["10.0.7.2"]
    private_etcd.stop()
    wait_for(lambda: sky.healthz()[0] == 503, timeout=15, what="healthz 503")
    other = free_port()
    private_etcd.start(port=other)
    client = private_etcd.client(other)
    try:
        client.delete(key_of("gone.skydns.local."))
        put(client, "fresh.skydns.local.", {"host": "10.0.7.3"})
        put(client, "stay.skydns.local.", {"host": "10.0.7.4"})
    finally:
        client.close()
    private_etcd.stop()
    private_etcd.start()
    wait_answer(sky, "fresh.skydns.local.", timeout=30)
    wait_rcode(sky, "gone.skydns.local.", dns.rcode.NXDOMAIN, timeout=5)
    assert addresses(sky.query("stay.skydns.local.")) == ["10.0.7.4"]
    wait_for(lambda: sky.healthz()[0] == 200, timeout=15, what="healthz 200")


def test_compaction_during_outage_forces_reload(private_etcd, start_skydns):
    private_etcd.start()
    client = private_etcd.client()
    for i in range(5):
        put(client, f"keep{i}.skydns.local.", {"host": f"10.0.1.{i + 1}"})
    put(client, "gone.skydns.local.", {"host": "10.0.2.1"})
    put(client, "gone2.sub.skydns.local.", {"host": "10.0.2.2"})
    put(client, "changed.skydns.local.", {"host": "10.0.3.1"})
    client.close()
    sky = start_skydns(etcd_url=private_etcd.url)
    assert addresses(sky.query("gone.skydns.local.")) == ["10.0.2.1"]
    assert addresses(sky.query("changed.skydns.local.")) == ["10.0.3.1"]
    assert sky.query("new.skydns.local.").rcode() == dns.rcode.NXDOMAIN

    private_etcd.stop()
    wait_for(lambda: sky.healthz()[0] == 503, timeout=15, what="healthz 503")

    other = free_port()
    private_etcd.start(port=other)  # skydns cannot see this one
    client = private_etcd.client(other)
    try:
        client.delete(key_of("gone.skydns.local."))
        client.delete(key_of("gone2.sub.skydns.local."))
        put(client, "new.skydns.local.", {"host": "10.0.4.1"})
        for i in range(20):  # many revisions, so the old one is well behind
            put(client, "churn.skydns.local.", {"host": f"10.0.5.{i + 1}"})
        client.delete(key_of("churn.skydns.local."))
        revision = client.put(key_of("changed.skydns.local."),
                              json.dumps({"host": "10.0.3.2"})).header.revision
        client.compact(revision, physical=True)
    finally:
        client.close()
    private_etcd.stop()
    # still the old data while etcd is away
    assert addresses(sky.query("gone.skydns.local.")) == ["10.0.2.1"]

    private_etcd.start()
    wait_answer(sky, "new.skydns.local.", timeout=30)
    assert addresses(sky.query("new.skydns.local.")) == ["10.0.4.1"]
    for tcp in (False, True):
        assert sky.query("gone.skydns.local.", tcp=tcp).rcode() == dns.rcode.NXDOMAIN
        assert sky.query("gone2.sub.skydns.local.", tcp=tcp).rcode() == dns.rcode.NXDOMAIN
        assert sky.query("sub.skydns.local.", tcp=tcp).rcode() == dns.rcode.NXDOMAIN
        assert sky.query("churn.skydns.local.", tcp=tcp).rcode() == dns.rcode.NXDOMAIN
        assert addresses(sky.query("changed.skydns.local.", tcp=tcp)) == ["10.0.3.2"]
        for i in range(5):
            assert addresses(sky.query(f"keep{i}.skydns.local.", tcp=tcp)) == [f"10.0.1.{i + 1}"]
    # the parent name now answers exactly the surviving records
    all_a = sky.query("skydns.local.", "A", use_edns=0, payload=4096)
    assert sorted(addresses(all_a)) == sorted(
        [f"10.0.1.{i + 1}" for i in range(5)] + ["10.0.3.2", "10.0.4.1"])
    wait_for(lambda: sky.healthz()[0] == 200, timeout=15, what="healthz 200 after reload")
    # and it watches again
    client = private_etcd.client()
    try:
        put(client, "after.skydns.local.", {"host": "10.0.6.1"})
        wait_answer(sky, "after.skydns.local.", timeout=10)
    finally:
        client.close()
    assert "compacted" in sky.output() or "reload" in sky.output().lower()


# -- 6. /healthz and metrics ---------------------------------------------------------------


def test_healthz_ok_when_loaded(etcd_client, start_skydns):
    sky = start_skydns()
    assert sky.healthz() == (200, "ok\n")


def test_healthz_query(etcd_client, start_skydns):
    sky = start_skydns("-healthz-query=probe.skydns.local.")
    status, body = sky.healthz()
    assert status == 503
    assert "probe.skydns.local" in body and "NXDOMAIN" in body
    put(etcd_client, "probe.skydns.local.", {"host": "10.0.0.53"})
    wait_for(lambda: sky.healthz()[0] == 200, timeout=10, what="healthz 200 with the probe")
    # a probe name with no A record (only TXT) is not healthy either
    put(etcd_client, "probe.skydns.local.", {"text": "no address"})
    wait_for(lambda: sky.healthz()[0] == 503, timeout=10, what="healthz 503 with NODATA")


def test_metrics(etcd_client, start_skydns, counting_upstream):
    mport = free_port()
    sky = start_skydns(upstream=counting_upstream.address,
                       env={"PROMETHEUS_PORT": str(mport), "PROMETHEUS_PATH": "/prom"})
    put(etcd_client, "m.skydns.local.", {"host": "10.0.0.7"})
    etcd_client.put(key_of("bad.skydns.local."), "{not json")
    wait_answer(sky, "m.skydns.local.")

    def scrape():
        status, text = http_get(mport, "/prom")
        assert status == 200
        return text
    wait_for(lambda: metric(scrape(), "skydns_skipped_records") == 1, timeout=10,
             what="the bad value to be skipped")
    before = scrape()
    for name in ("skydns_dns_request_count_total", "skydns_skipped_records",
                 "skydns_etcd_watch_up"):
        assert name in before, name
    assert metric(before, "skydns_etcd_watch_up") == 1
    assert metric(before, "skydns_etcd_syncs_total", {"what": "load"}) == 1  # at start
    assert metric(before, "skydns_etcd_syncs_total", {"what": "watch"}) == 1
    assert metric(before, "skydns_skipped_records") == 1
    auth0 = metric(before, "skydns_dns_request_count_total", {"system": "auth"})
    rec0 = metric(before, "skydns_dns_request_count_total", {"system": "recursive"}) or 0
    nx0 = metric(before, "skydns_dns_error_count_total", {"cause": "nxdomain"}) or 0
    assert auth0 is not None
    for _ in range(5):  # the first goes through the general path, the rest the fast path
        assert addresses(sky.query("m.skydns.local.")) == ["10.0.0.7"]
    for _ in range(2):
        assert sky.query("nope.skydns.local.").rcode() == dns.rcode.NXDOMAIN
    sky.query("www.example.com.")
    after = scrape()
    assert 'skydns_dns_error_count_total{cause="nxdomain"}' in after
    assert metric(after, "skydns_dns_request_count_total", {"system": "auth"}) >= auth0 + 7
    assert metric(after, "skydns_dns_request_count_total", {"system": "recursive"}) >= rec0 + 1
    assert metric(after, "skydns_dns_error_count_total", {"cause": "nxdomain"}) >= nx0 + 1
    # bad record removed: the gauge follows
    etcd_client.delete(key_of("bad.skydns.local."))
    wait_for(lambda: metric(scrape(), "skydns_skipped_records") == 0, timeout=10,
             what="skipped records back to 0")
    # the default path is not served when PROMETHEUS_PATH is set
    assert http_get(mport, "/metrics")[0] == 404


# -- 7. flags and environment --------------------------------------------------------------


class ManifestSkydns(Skydns):
    """skydns started with exactly the arguments of the Kubernetes 1.1/1.2 pod manifest."""

    def argv(self):
        return [sys.executable, "-m", "skydns", f"-machines={self.etcd_url}",
                f"-addr=127.0.0.1:{self.port}", "-ns-rotate=false", "-domain=cluster.local."]


def test_pod_manifest_arguments(etcd, etcd_client):
    put(etcd_client, "web.default.svc.cluster.local.", {"host": "10.0.0.80"})
    put(etcd_client, "x.skydns.local.", {"host": "10.0.0.81"})
    # SKYDNS_HEALTHZ_PORT=0: no extra listener on 0.0.0.0:8080; upstreams never the real ones
    sky = ManifestSkydns(etcd.url, env={"SKYDNS_HEALTHZ_PORT": "0", "PROMETHEUS_PORT": "",
                                        "SKYDNS_NAMESERVERS": "127.0.0.1:9",
                                        "SKYDNS_DOMAIN": "", "SKYDNS_ADDR": ""})
    try:
        sky.start(wait_loaded=False)
        reply = wait_answer(sky, "web.default.svc.cluster.local.")
        assert addresses(reply) == ["10.0.0.80"]
        assert reply.flags & dns.flags.AA
        soa = sky.query("cluster.local.", "SOA")
        assert soa.rcode() == dns.rcode.NOERROR
        assert soa.answer[0][0].mname.to_text() == "ns.dns.cluster.local."
        assert sky.query("nope.svc.cluster.local.").rcode() == dns.rcode.NXDOMAIN
        # skydns.local. is not served: it is forwarded (to the dead 127.0.0.1:9)
        assert not sky.query("x.skydns.local.", timeout=6).answer
    finally:
        sky.close()


def test_domain_from_environment_and_flag_wins(etcd, etcd_client, start_skydns):
    put(etcd_client, "a.env.local.", {"host": "10.0.0.1"})
    put(etcd_client, "a.flag.local.", {"host": "10.0.0.2"})
    sky = start_skydns("-no-rec", env={"SKYDNS_DOMAIN": "env.local"})
    assert addresses(sky.query("a.env.local.")) == ["10.0.0.1"]
    assert sky.query("a.flag.local.").rcode() == dns.rcode.SERVFAIL  # not ours, -no-rec
    sky = start_skydns("-no-rec", "-domain=flag.local.", env={"SKYDNS_DOMAIN": "env.local."})
    assert addresses(sky.query("a.flag.local.")) == ["10.0.0.2"]
    assert sky.query("a.env.local.").rcode() == dns.rcode.SERVFAIL
    # the Go flag spellings: "-flag value" and "--flag=value"
    sky = start_skydns("-no-rec", "--domain", "flag.local")
    assert addresses(sky.query("a.flag.local.")) == ["10.0.0.2"]


def test_ndots_from_environment(etcd, start_skydns, counting_upstream):
    sky = start_skydns(upstream=counting_upstream.address, env={"SKYDNS_NDOTS": "1"})
    assert addresses(sky.query("localhost.")) == ["127.0.0.1"]
    sky = start_skydns("-ndots=2", upstream=counting_upstream.address,
                       env={"SKYDNS_NDOTS": "1"})
    assert sky.query("localhost.").rcode() == dns.rcode.NXDOMAIN


class EnvOnlySkydns(Skydns):
    """Leaves -nameservers out of the command line, so SKYDNS_NAMESERVERS decides."""

    def argv(self):
        return [a for a in super().argv() if not a.startswith("-nameservers=127.0.0.1:9")]


def test_nameservers_from_environment(etcd, counting_upstream):
    sky = EnvOnlySkydns(etcd.url, env={"SKYDNS_NAMESERVERS": counting_upstream.address})
    try:
        sky.start()
        assert addresses(sky.query("www.example.com.")) == ["192.0.2.10"]
        assert len(counting_upstream.queries) == 1
    finally:
        sky.close()


@pytest.mark.parametrize("flag, words", [
    ("-ndots=abc", ["ndots", "abc"]),
    ("-rtimeout=soon", ["rtimeout", "soon"]),
    ("-round-robin=maybe", ["round-robin", "maybe"]),
    ("-addr=127.0.0.1:99999", ["99999"]),
    ("-domain=bad..name", ["bad..name"]),
    ("-ttl=-5", ["ttl"]),
    ("-no-such-flag=1", ["no-such-flag"]),
])
def test_bad_flag_values_exit_nonzero(flag, words):
    base = ["-machines=http://127.0.0.1:9", "-nameservers=127.0.0.1:9", "-healthz-port=0",
            f"-addr=127.0.0.1:{free_port()}"]
    result = run_skydns(base + [flag], env={"PROMETHEUS_PORT": ""})
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr, (flag, result.stderr)


def test_bad_environment_value_exits_nonzero():
    result = run_skydns(["-machines=http://127.0.0.1:9", "-nameservers=127.0.0.1:9",
                         "-healthz-port=0"], env={"SKYDNS_NDOTS": "two"})
    assert result.returncode != 0
    assert "SKYDNS_NDOTS" in result.stderr and "Traceback" not in result.stderr


# -- 8. /skydns/config ---------------------------------------------------------------------


def test_etcd_config_overrides_flags_and_follows_changes(etcd_client, start_skydns,
                                                         counting_upstream):
    etcd_client.put("/skydns/config",
                    json.dumps({"domain": "other.local.", "ttl": 120, "ndot": 1}))
    put(etcd_client, "x.other.local.", {"host": "10.2.0.1"})
    put(etcd_client, "y.other.local.", {"host": "10.2.0.2", "ttl": 30})
    put(etcd_client, "x.skydns.local.", {"host": "10.2.0.3"})
    sky = start_skydns("-domain=skydns.local.", "-ttl=3600", "-ndots=2",
                       upstream=counting_upstream.address)
    reply = sky.query("x.other.local.")
    assert addresses(reply) == ["10.2.0.1"]
    assert reply.answer[0].ttl == 120
    assert reply.flags & dns.flags.AA
    assert sky.query("y.other.local.").answer[0].ttl == 30
    soa = sky.query("other.local.", "SOA")
    assert soa.answer and soa.answer[0].ttl == 120
    # skydns.local. is no longer ours: it goes upstream (which says NXDOMAIN)
    counting_upstream.reset()
    reply = sky.query("x.skydns.local.")
    assert reply.rcode() == dns.rcode.NXDOMAIN and not reply.flags & dns.flags.AA
    assert len(counting_upstream.queries) == 1
    # ndot 1: a single-label name is forwarded
    assert addresses(sky.query("localhost.")) == ["127.0.0.1"]

    # a change at runtime is applied
    second = CountingUpstream({("www.example.com.", "A"): ["203.0.113.9"]})
    try:
        etcd_client.put("/skydns/config", json.dumps(
            {"domain": "other.local.", "ttl": 300, "ndot": 1, "nameservers": [second.address]}))
        wait_answer(sky, "x.other.local.", predicate=lambda r: r.answer[0].ttl == 300)
        assert addresses(sky.query("www.example.com.")) == ["203.0.113.9"]
        assert len(second.queries) == 1
    finally:
        second.close()
    etcd_client.put("/skydns/config", json.dumps({"domain": "skydns.local.", "ttl": 300}))
    wait_answer(sky, "x.skydns.local.", predicate=lambda r: addresses(r) == ["10.2.0.3"]
                and r.flags & dns.flags.AA)
    assert sky.query("localhost.").rcode() == dns.rcode.NXDOMAIN  # back to ndots 2
    # removing the config brings the flags back
    etcd_client.delete("/skydns/config")
    wait_answer(sky, "x.skydns.local.", predicate=lambda r: r.answer[0].ttl == 3600)


def test_bad_etcd_config_is_ignored(etcd_client, start_skydns):
    etcd_client.put("/skydns/config", json.dumps({"ttl": "lots"}))
    put(etcd_client, "x.skydns.local.", {"host": "10.2.0.1"})
    sky = start_skydns()
    reply = sky.query("x.skydns.local.")
    assert addresses(reply) == ["10.2.0.1"] and reply.answer[0].ttl == 3600
    assert "config" in sky.output()


# -- 9. DNSSEC -----------------------------------------------------------------------------


def _nsec3_int(name):
    return int.from_bytes(base64.b32hexdecode(dns.dnssec.nsec3_hash(name, None, 0, 1)), "big")


def _covers(rrset, value):
    owner = int.from_bytes(base64.b32hexdecode(rrset.name.labels[0].upper()), "big")
    nxt = int.from_bytes(rrset[0].next, "big")
    if owner < nxt:
        return owner < value < nxt
    return value > owner or value < nxt


class TestDnssec:
    @pytest.fixture(scope="class")
    @classmethod
    def sky(cls, etcd, tmp_path_factory):
        base = __import__("skydns.dnssec", fromlist=["generate_key_files"]).generate_key_files(
            str(tmp_path_factory.mktemp("dnssec")), "skydns.local.")
        client = etcd.client()
        client.delete_prefix("/sec/")
        client.put("/sec/local/skydns/a", json.dumps({"host": "10.0.0.1"}))
        client.put("/sec/local/skydns/svc/b1", json.dumps({"host": "10.0.0.2"}))
        client.put("/sec/local/skydns/svc/b2", json.dumps({"host": "10.0.0.3"}))
        with running(etcd.url, f"-dnssec={base}", "-path-prefix=sec") as server:
            yield server
        client.delete_prefix("/sec/")
        client.close()

    @pytest.fixture(scope="class")
    @classmethod
    def keys(cls, sky):
        reply = sky.query("skydns.local.", "DNSKEY", want_dnssec=True)
        assert reply.rcode() == dns.rcode.NOERROR
        dnskey = reply.find_rrset(reply.answer, dns.name.from_text("skydns.local."), "IN",
                                  "DNSKEY")
        keys = {dnskey.name: dnskey}
        sig = reply.find_rrset(reply.answer, dnskey.name, "IN", "RRSIG", "DNSKEY")
        dns.dnssec.validate(dnskey, sig, keys)
        return keys

    @staticmethod
    def validate_section(section, keys):
        sigs = {(r.name, r.covers): r for r in section if r.rdtype == dns.rdatatype.RRSIG}
        data = [r for r in section if r.rdtype != dns.rdatatype.RRSIG]
        assert data
        for rrset in data:
            sig = sigs.get((rrset.name, rrset.rdtype))
            assert sig is not None, f"no RRSIG for {rrset.name} {rrset.rdtype!r}"
            dns.dnssec.validate(rrset, sig, keys)

    @pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
    def test_signed_answer(self, sky, keys, tcp):
        for name, count in (("a.skydns.local.", 1), ("svc.skydns.local.", 2)):
            reply = sky.query(name, "A", want_dnssec=True, tcp=tcp)
            assert reply.rcode() == dns.rcode.NOERROR
            assert reply.flags & dns.flags.AD
            assert reply.ednsflags & dns.flags.DO
            assert len(addresses(reply)) == count
            self.validate_section(reply.answer, keys)

    def test_signed_apex_soa(self, sky, keys):
        reply = sky.query("skydns.local.", "SOA", want_dnssec=True)
        assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AD
        self.validate_section(reply.answer, keys)

    def test_signed_srv_with_glue(self, sky, keys):
        reply = sky.query("svc.skydns.local.", "SRV", want_dnssec=True)
        self.validate_section(reply.answer, keys)
        self.validate_section(reply.additional, keys)

    @pytest.mark.parametrize("qname, encloser", [
        ("nope.skydns.local.", "skydns.local."),
        ("deep.er.skydns.local.", "skydns.local."),
        ("x.y.svc.skydns.local.", "svc.skydns.local."),
    ])
    def test_nxdomain_has_nsec3(self, sky, keys, qname, encloser):
        qname = dns.name.from_text(qname)
        encloser = dns.name.from_text(encloser)
        reply = sky.query(qname, "A", want_dnssec=True)
        assert reply.rcode() == dns.rcode.NXDOMAIN
        assert reply.flags & dns.flags.AD and reply.flags & dns.flags.AA
        nsec3 = [r for r in reply.authority if r.rdtype == dns.rdatatype.NSEC3]
        assert nsec3
        self.validate_section(reply.authority, keys)
        for r in nsec3:
            assert r[0].algorithm == 1 and r[0].iterations == 0 and r[0].salt == b""
        owners = {r.name.labels[0].decode().upper() for r in nsec3}
        assert dns.dnssec.nsec3_hash(encloser, None, 0, 1) in owners  # closest encloser
        next_closer = qname.split(len(encloser) + 1)[1]
        assert any(_covers(r, _nsec3_int(next_closer)) for r in nsec3)  # next closer
        wildcard = dns.name.Name((b"*",) + encloser.labels)
        assert any(_covers(r, _nsec3_int(wildcard)) for r in nsec3)  # no wildcard
        soa = [r for r in reply.authority if r.rdtype == dns.rdatatype.SOA]
        assert soa and soa[0].name == dns.name.from_text("skydns.local.")

    def test_nodata_has_nsec3(self, sky, keys):
        reply = sky.query("a.skydns.local.", "TXT", want_dnssec=True)
        assert reply.rcode() == dns.rcode.NOERROR and not reply.answer
        nsec3 = [r for r in reply.authority if r.rdtype == dns.rdatatype.NSEC3]
        assert nsec3
        self.validate_section(reply.authority, keys)
        match = dns.dnssec.nsec3_hash("a.skydns.local.", None, 0, 1)
        (r,) = [r for r in nsec3 if r.name.labels[0].decode().upper() == match]
        assert dns.rdatatype.TXT not in _bitmap_types(r[0])
        assert dns.rdatatype.A in _bitmap_types(r[0])

    def test_without_do_no_signatures(self, sky):
        for tcp in (False, True):
            for name, rdtype in (("a.skydns.local.", "A"), ("nope.skydns.local.", "A")):
                reply = sky.query(name, rdtype, tcp=tcp)
                assert not any(r.rdtype in (dns.rdatatype.RRSIG, dns.rdatatype.NSEC3)
                               for r in reply.answer + reply.authority + reply.additional)
                assert not reply.flags & dns.flags.AD
        # DNSKEY without DO: no signature either
        reply = sky.query("skydns.local.", "DNSKEY", use_edns=0)
        assert not any(r.rdtype == dns.rdatatype.RRSIG for r in reply.answer)

    def test_do_after_plain_query_still_signed(self, sky, keys):
        """The wire cache must not hand a DO query the unsigned answer (or vice versa)."""
        sky.query("svc.skydns.local.", "A")
        sky.query("svc.skydns.local.", "A")
        reply = sky.query("svc.skydns.local.", "A", want_dnssec=True)
        self.validate_section(reply.answer, keys)
        reply = sky.query("svc.skydns.local.", "A")
        assert not any(r.rdtype == dns.rdatatype.RRSIG for r in reply.answer)


def test_dnssec_with_rsasha1_nsec3_sha1_key(etcd_client, start_skydns, tmp_path):
    """An algorithm-7 key from an old SkyDNS deployment: skydns starts, warns once, and signs
    answers and NSEC3 denials with algorithm 7 (checked over UDP)."""
    from skydns.dnssec import generate_key_files

    base = generate_key_files(str(tmp_path), "skydns.local.", 7)
    put(etcd_client, "a.skydns.local.", {"host": "10.0.0.1"})
    # 2048-bit RSA signatures are 256 bytes: a signed NXDOMAIN does not fit in the default
    # -max-udp-size of 1232 (it would come back with TC, for a retry over TCP).
    sky = start_skydns(f"-dnssec={base}", "-max-udp-size=4096")
    reply = sky.query("skydns.local.", "DNSKEY", want_dnssec=True, payload=4096)
    dnskey = reply.find_rrset(reply.answer, dns.name.from_text("skydns.local."), "IN", "DNSKEY")
    assert [rd.algorithm for rd in dnskey] == [7]
    keys = {dnskey.name: dnskey}
    TestDnssec.validate_section(reply.answer, keys)

    reply = sky.query("a.skydns.local.", "A", want_dnssec=True, payload=4096)
    assert addresses(reply) == ["10.0.0.1"] and reply.flags & dns.flags.AD
    TestDnssec.validate_section(reply.answer, keys)
    reply = sky.query("nope.skydns.local.", "A", want_dnssec=True, payload=4096)
    assert reply.rcode() == dns.rcode.NXDOMAIN and not reply.flags & dns.flags.TC
    assert any(r.rdtype == dns.rdatatype.NSEC3 for r in reply.authority)
    assert len(reply.to_wire()) > 1232
    TestDnssec.validate_section(reply.authority, keys)
    sigs = [rd for r in reply.answer + reply.authority if r.rdtype == dns.rdatatype.RRSIG
            for rd in r]
    assert sigs and all(rd.algorithm == 7 for rd in sigs)

    warnings = [ln for ln in sky.output().splitlines()
                if " WARNING " in ln and "RSASHA1-NSEC3-SHA1" in ln]
    assert len(warnings) == 1
    assert base + ".private" in warnings[0] and "ECDSAP256SHA256 (13)" in warnings[0]


def _bitmap_types(rdata):
    out = set()
    for window, bitmap in rdata.windows:
        for i, byte in enumerate(bitmap):
            for bit in range(8):
                if byte & (0x80 >> bit):
                    out.add(window * 256 + i * 8 + bit)
    return out


# -- 10. response cache and round robin ----------------------------------------------------


def test_rcache_serves_forwarded_answers(etcd, start_skydns, counting_upstream):
    sky = start_skydns("-rcache=100", upstream=counting_upstream.address)
    q1 = dns.message.make_query("www.example.com.", "A")
    q2 = dns.message.make_query("www.example.com.", "A")
    r1 = dns.query.udp(q1, "127.0.0.1", port=sky.port, timeout=3)
    r2 = dns.query.udp(q2, "127.0.0.1", port=sky.port, timeout=3)
    assert r1.id == q1.id and r2.id == q2.id
    assert addresses(r1) == addresses(r2) == ["192.0.2.10"]
    assert r2.flags & dns.flags.RA
    assert len(counting_upstream.queries) == 1
    # a different type is a different entry
    assert addresses(sky.query("www.example.com.", "AAAA")) == ["2001:db8::10"]
    assert len(counting_upstream.queries) == 2


BIG_UPSTREAM_ZONE = {
    ("big.example.com.", "A"): [f"192.0.2.{i}" for i in range(1, 41)],  # ~680 bytes
    ("huge.example.com.", "TXT"): ['"%s%02d"' % ("y" * 200, i) for i in range(50)],  # ~10 kB
}


def test_rcache_respects_each_client_udp_size(etcd, start_skydns):
    """Size rule: UDP replies fit 512 bytes (no EDNS) or the client's EDNS size, cached or
    not; a client that sent no OPT gets none back."""
    up = CountingUpstream(BIG_UPSTREAM_ZONE)
    try:
        sky = start_skydns("-rcache=100", upstream=up.address)
        first = sky.query("big.example.com.", "A", use_edns=0, payload=4096)
        assert len(addresses(first)) == 40
        query = dns.message.make_query("big.example.com.", "A")
        wire = raw_udp(sky.port, query.to_wire(), timeout=3)
        reply = dns.message.from_wire(wire, ignore_trailing=True)
        assert reply.id == query.id
        assert len(wire) <= 512, f"{len(wire)}-byte UDP reply to a client without EDNS"
        assert reply.edns < 0
        assert reply.flags & dns.flags.TC or len(addresses(reply)) == 40
    finally:
        up.close()


def test_forwarded_udp_reply_over_8k_is_relayed_whole(etcd, start_skydns):
    up = CountingUpstream(BIG_UPSTREAM_ZONE)
    try:
        sky = start_skydns("-max-udp-size=65535", upstream=up.address)
        query = dns.message.make_query("huge.example.com.", "TXT", use_edns=0, payload=65000)
        wire = raw_udp(sky.port, query.to_wire(), timeout=3)
        assert wire is not None
        reply = dns.message.from_wire(wire)  # FormError when the relay cut it
        assert sum(len(r) for r in reply.answer) == 50
    finally:
        up.close()


def test_no_rcache_forwards_every_query(etcd, start_skydns, counting_upstream):
    sky = start_skydns("-rcache=0", upstream=counting_upstream.address)
    for _ in range(3):
        assert addresses(sky.query("www.example.com.")) == ["192.0.2.10"]
    assert len(counting_upstream.queries) == 3


def _three(etcd_client):
    for i in range(3):
        put(etcd_client, f"h{i}.rr.skydns.local.", {"host": f"10.3.0.{i + 1}"})


RR_SET = ["10.3.0.1", "10.3.0.2", "10.3.0.3"]
def test_round_robin_answers_complete_and_varied(etcd_client, start_skydns):
    """Every answer holds the three addresses; across query shapes the order varies."""
    _three(etcd_client)
    sky = start_skydns()
    orders = set()
    for tcp in (False, True):
        for payload in (None, 1232, 1400, 4096):
            kwargs = {"use_edns": 0, "payload": payload} if payload else {}
            for _ in range(6):
                got = addresses(sky.query("rr.skydns.local.", tcp=tcp, **kwargs))
                assert sorted(got) == RR_SET
                orders.add(tuple(got))
    assert len(orders) > 1


def test_round_robin_every_address_comes_first(etcd_client, start_skydns):
    """Repeated A queries give different first addresses. Each EDNS size is its own wire
    cache entry, so ten sizes are ten chances for the cache to get stuck on one address."""
    _three(etcd_client)
    sky = start_skydns()
    stuck = []
    for payload in range(1200, 1210):
        firsts = collections.Counter()
        for _ in range(30):
            got = addresses(sky.query("rr.skydns.local.", use_edns=0, payload=payload))
            assert sorted(got) == RR_SET
            firsts[got[0]] += 1
        if len(firsts) < 3:
            stuck.append((payload, dict(firsts)))
    assert not stuck, f"first-address counts per EDNS size: {stuck}"


def test_round_robin_off_keeps_order(etcd_client, start_skydns):
    _three(etcd_client)
    sky = start_skydns("-round-robin=false")
    orders = set()
    for tcp in (False, True):
        for _ in range(8):
            got = addresses(sky.query("rr.skydns.local.", tcp=tcp))
            assert sorted(got) == RR_SET
            orders.add(tuple(got))
    assert len(orders) == 1


def test_round_robin_off_keeps_order_of_uncached_answers(etcd_client, start_skydns):
    """-round-robin=false: a 40-address answer (over 512 bytes, so rendered for each query)
    keeps one order."""
    put_many(etcd_client, [(key_of(f"h{i}.many.skydns.local."), {"host": f"10.4.0.{i + 1}"})
                           for i in range(40)])
    sky = start_skydns("-round-robin=false")
    orders = set()
    for _ in range(5):
        got = addresses(sky.query("many.skydns.local.", tcp=True))
        assert len(got) == 40
        orders.add(tuple(got))
    assert len(orders) == 1, f"{len(orders)} different orders in 5 queries"


# -- 11. shutdown --------------------------------------------------------------------------


def _sigterm(sky):
    proc = sky.proc
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=10)
    return code, time.monotonic() - started


def test_sigterm_exits_zero(etcd_client, start_skydns):
    sky = start_skydns()
    idle = socket.create_connection(("127.0.0.1", sky.port), timeout=3)  # an idle TCP client
    try:
        code, elapsed = _sigterm(sky)
    finally:
        idle.close()
    assert code == 0, sky.output()
    assert elapsed < 5


def test_sigterm_exits_zero_while_etcd_unreachable(private_etcd, start_skydns):
    sky = start_skydns(wait_loaded=False, etcd_url=private_etcd.url)
    time.sleep(1.0)  # let the sync thread get into its retry loop
    code, elapsed = _sigterm(sky)
    assert code == 0, sky.output()
    assert elapsed < 5


def test_sigterm_exits_zero_with_a_forward_in_flight(start_skydns, silent):
    quiet = silent()
    sky = start_skydns("-rtimeout=5s", f"-nameservers={quiet.address}")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(dns.message.make_query("www.example.com.", "A").to_wire(),
                 ("127.0.0.1", sky.port))
        time.sleep(0.3)
        code, elapsed = _sigterm(sky)
    assert code == 0, sky.output()
    assert elapsed < 5
