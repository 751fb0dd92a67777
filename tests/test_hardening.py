"""Hardening: what a bad record, a greedy client or a signal must not do to cluster DNS.

Against a real etcd and real skydns processes over real sockets:
- bad values in etcd (at load and in a watch transaction beside good keys) are skipped one
  key at a time, logged once and counted by reason; everything else is served;
- values that cannot fit in a DNS message are refused when read, not on every query;
- UDP replies are capped (-max-udp-size, default 1232) whatever buffer the client claims,
  authoritative and relayed alike; TCP still gets the whole answer;
- names at or below an underscore label answer only SRV and TXT; never two CNAMEs for one
  owner (names with fewer labels than -ndots: test_operations.TestForwarding);
- SIGHUP is harmless, SIGTERM still stops.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import time

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from procs import Skydns, free_port, wait_for
from test_operations import (CountingUpstream, http_get, key_of, metric, put, put_many,
                             raw_udp, running)

D = "skydns.local."

# Bad values, each with the reason kind it must be counted under.
BAD_VALUES = {
    "digits": ('{"host":"10.0.0.1","port":' + "9" * 5000 + "}", "json"),
    "deep": ("[" * 100000 + "]" * 100000, "json"),
    "deepobj": ('{"host":' + "[" * 500 + "]" * 500 + "}", "type"),
    "hugetxt": (json.dumps({"text": "t" * 70000}), "size"),
    "surrogate": ('{"text":"\\ud800"}', "encoding"),
    "notjson": ("{host:", "json"),
}


def with_metrics(start, *flags, **kwargs):
    """``start(*flags)`` with /metrics on a port of its own: (server, metrics port)."""
    port = free_port()
    kwargs["env"] = {"PROMETHEUS_PORT": str(port)}
    server = start(*flags, **kwargs)
    return server, port


def scrape(port):
    status, text = http_get(port, "/metrics")
    assert status == 200
    return text


def skipped(port, reason):
    return metric(scrape(port), "skydns_records_skipped_total", {"reason": reason}) or 0


def ask(sky, name, rdtype, tcp=False):
    """A query whose reply keeps one RR per RRset: dnspython would otherwise keep only one
    CNAME per owner while parsing, hiding exactly the duplicates we look for."""
    query = dns.message.make_query(name, rdtype)
    if tcp:
        return dns.query.tcp(query, "127.0.0.1", port=sky.port, timeout=3.0,
                             one_rr_per_rrset=True)
    return dns.query.udp(query, "127.0.0.1", port=sky.port, timeout=3.0,
                         one_rr_per_rrset=True)


@contextlib.contextmanager
def records_in(etcd, prefix, items):
    """``items`` (key, value) written under /<prefix>/ for the time of the block."""
    client = etcd.client()
    client.delete_prefix(f"/{prefix}/")
    try:
        put_many(client, items)
        yield
    finally:
        client.delete_prefix(f"/{prefix}/")
        client.close()


def log_count(sky, *words):
    return sum(1 for line in sky.output().splitlines() if all(w in line for w in words))


class TestBadDataAtLoad:
    """Bad values already in etcd when skydns starts: it must still load and serve."""

    @pytest.fixture(scope="class")
    @classmethod
    def sky(cls, etcd):
        items = [(f"/bad/local/skydns/zone/{name}", value)
                 for name, (value, _) in BAD_VALUES.items()]
        items += [("/bad/local/skydns/zone/good", {"host": "10.0.0.7"}),
                  ("/bad/local/skydns/zone/text", {"text": "fine"}),
                  ("/bad/local/skydns/" + "/".join(["abcdefghijklmnop"] * 16) + "/x",
                   {"host": "10.0.0.8"})]  # a key whose name is longer than 255 bytes
        port = free_port()
        with records_in(etcd, "bad", items), running(
                etcd.url, "-path-prefix=bad", env={"PROMETHEUS_PORT": str(port)}) as server:
            server.metrics_port = port
            yield server

    def test_loads_and_is_healthy(self, sky):
        status, body = sky.healthz()
        assert status == 200, body

    @pytest.mark.parametrize("tcp", [False, True])
    def test_good_records_beside_bad_ones_are_served(self, sky, tcp):
        reply = sky.query(f"good.zone.{D}", "A", tcp=tcp)
        assert reply.rcode() == dns.rcode.NOERROR
        assert [rd.address for rd in reply.answer[0]] == ["10.0.0.7"]
        # the name above the bad keys answers with the good ones only, promptly
        reply = sky.query(f"zone.{D}", "A", tcp=tcp)
        assert sorted(rd.address for rrset in reply.answer for rd in rrset) == ["10.0.0.7"]
        reply = sky.query(f"zone.{D}", "TXT", tcp=tcp)
        assert [rd.strings for rrset in reply.answer for rd in rrset] == [(b"fine",)]

    @pytest.mark.parametrize("name", sorted(BAD_VALUES))
    def test_bad_key_answers_nxdomain(self, sky, name):
        for rdtype in ("A", "TXT", "SRV"):
            reply = sky.query(f"{name}.zone.{D}", rdtype)
            assert reply.rcode() == dns.rcode.NXDOMAIN, (name, rdtype)

    def test_each_bad_key_counted_by_reason_and_logged_once(self, sky):
        expected = {}
        for _, kind in BAD_VALUES.values():
            expected[kind] = expected.get(kind, 0) + 1
        expected["key"] = 1
        for kind, count in expected.items():
            assert skipped(sky.metrics_port, kind) == count, kind
        for _ in range(3):  # queries never log again
            sky.query(f"zone.{D}", "TXT")
            sky.query(f"zone.{D}", "SRV")
        for name in BAD_VALUES:
            assert log_count(sky, "skipping record", f"/zone/{name}:") == 1, name
        assert log_count(sky, "Traceback") == 0
        assert log_count(sky, "skipping record", "cannot fit in a DNS message") == 1


def test_bad_values_in_one_watch_transaction_lose_nothing(etcd_client, start_skydns):
    """One etcd response carries several events: a bad one must not drop the others."""
    sky, mport = with_metrics(start_skydns)
    put(etcd_client, f"before.{D}", {"host": "10.0.1.1"})
    wait_for(lambda: sky.query(f"before.{D}").answer, what="first record")
    ops = [etcd_client.transactions.put(key_of(f"{name}.tx.{D}"), value)
           for name, (value, _) in BAD_VALUES.items()]
    ops.insert(2, etcd_client.transactions.put(key_of(f"good1.tx.{D}"), '{"host":"10.0.1.2"}'))
    ops.append(etcd_client.transactions.put(key_of(f"good2.tx.{D}"), '{"host":"10.0.1.3"}'))
    etcd_client.transaction(compare=[], success=ops, failure=[])
    for name, address in (("good1", "10.0.1.2"), ("good2", "10.0.1.3")):
        reply = wait_for(lambda: sky.query(f"{name}.tx.{D}").answer, timeout=5,
                         what=f"{name} from the same transaction")
        assert reply[0][0].address == address
    reply = sky.query(f"tx.{D}", "A")
    assert sorted(rd.address for rrset in reply.answer for rd in rrset) == [
        "10.0.1.2", "10.0.1.3"]
    for name, (value, kind) in BAD_VALUES.items():
        assert sky.query(f"{name}.tx.{D}").rcode() == dns.rcode.NXDOMAIN
    assert skipped(mport, "json") == 3 and skipped(mport, "size") == 1
    # the same bad value written again is not logged or counted again
    etcd_client.put(key_of(f"hugetxt.tx.{D}"), BAD_VALUES["hugetxt"][0])
    put(etcd_client, f"after.{D}", {"host": "10.0.1.4"})
    wait_for(lambda: sky.query(f"after.{D}").answer, what="a later record")
    assert skipped(mport, "size") == 1
    assert log_count(sky, "skipping record", "/tx/hugetxt:") == 1
    # a bad value replaced by a good one is served
    put(etcd_client, f"hugetxt.tx.{D}", {"text": "small now"})
    reply = wait_for(lambda: sky.query(f"hugetxt.tx.{D}", "TXT").answer, what="fixed value")
    assert reply[0][0].strings == (b"small now",)
    assert metric(scrape(mport), "skydns_skipped_records") == len(BAD_VALUES) - 1


def test_largest_text_that_fits_is_served_over_tcp(etcd_client, start_skydns):
    """The parse-time limit is exactly what one message can carry."""
    from skydns.record import MAX_TEXT_BYTES
    sky = start_skydns()
    put(etcd_client, f"max.{D}", {"text": "m" * MAX_TEXT_BYTES})
    put(etcd_client, f"over.{D}", {"text": "o" * (MAX_TEXT_BYTES + 1)})
    reply = wait_for(lambda: sky.query(f"max.{D}", "TXT", tcp=True).answer, what="max TXT")
    assert sum(len(s) for s in reply[0][0].strings) == MAX_TEXT_BYTES
    assert sky.query(f"over.{D}", "TXT", tcp=True).rcode() == dns.rcode.NXDOMAIN
    reply = sky.query(f"max.{D}", "TXT")  # UDP: truncated, never silence
    assert reply.flags & dns.flags.TC


# -- UDP amplification ------------------------------------------------------------------------

class TestUdpCap:
    N = 400

    @pytest.fixture(scope="class")
    @classmethod
    def big_upstream(cls):
        server = CountingUpstream({("wide.example.com.", "A"):
                                   [f"192.0.2.{i % 250 + 1}" for i in range(60)] +
                                   [f"198.51.100.{i % 250 + 1}" for i in range(60)] +
                                   [f"203.0.113.{i % 250 + 1}" for i in range(60)]})
        yield server
        server.close()

    @pytest.fixture(scope="class")
    @classmethod
    def records(cls, etcd):
        with records_in(etcd, "amp", [(f"/amp/local/skydns/svc/s{i}/_tcp/_http/x",
                                       {"host": f"10.2.{i // 250}.{i % 250 + 1}", "port": 80})
                                      for i in range(cls.N)]):
            yield

    @pytest.fixture(scope="class")
    @classmethod
    def sky(cls, etcd, records, big_upstream):
        with running(etcd.url, "-path-prefix=amp", upstream=big_upstream.address) as server:
            yield server

    def _udp(self, sky, name, rdtype, payload):
        query = dns.message.make_query(name, rdtype, use_edns=0, payload=payload)
        wire = raw_udp(sky.port, query.to_wire(), timeout=5)
        assert wire is not None
        return query, wire, dns.message.from_wire(wire, ignore_trailing=True)

    def test_wide_answer_capped_at_1232_with_tc(self, sky):
        query, wire, reply = self._udp(sky, f"*.svc.{D}", "SRV", 65535)
        assert len(wire) <= 1232
        assert reply.flags & dns.flags.TC and reply.id == query.id
        assert len(wire) / len(query.to_wire()) < 30  # was ~970x before the cap
        assert reply.payload <= 1232  # and we do not advertise more than we send

    def test_tcp_still_gets_everything(self, sky):
        reply = sky.query(f"*.svc.{D}", "SRV", tcp=True, use_edns=0, payload=65535)
        assert not reply.flags & dns.flags.TC
        assert sum(len(rrset) for rrset in reply.answer) == self.N

    def test_small_client_buffers_still_respected(self, sky):
        _, wire, reply = self._udp(sky, f"*.svc.{D}", "SRV", 600)
        assert len(wire) <= 600 and reply.flags & dns.flags.TC

    def test_forwarded_reply_capped_too(self, sky, big_upstream):
        query, wire, reply = self._udp(sky, "wide.example.com.", "A", 65535)
        assert len(wire) <= 1232
        assert reply.flags & dns.flags.TC and reply.id == query.id
        assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.RA
        assert reply.question[0].name.to_text() == "wide.example.com."
        full = sky.query("wide.example.com.", "A", tcp=True)
        assert len(full.answer[0]) == 180

    def test_flag_raises_the_cap(self, etcd, records):
        with running(etcd.url, "-path-prefix=amp", "-max-udp-size=4096") as sky:
            _, wire, reply = self._udp(sky, f"*.svc.{D}", "SRV", 65535)
            assert 1232 < len(wire) <= 4096 and reply.flags & dns.flags.TC


# -- wide answers and memory -------------------------------------------------------------------

def test_answer_cache_keeps_to_its_memory_budget(etcd, start_skydns):
    """Each wide answer is kept in up to 16 rotations: counted by entries alone, a client
    asking every headless service of a big cluster once grew skydns by 178 MiB. With
    -answer-cache-mb=1, 200 names of 20 addresses (~7 KiB an entry, 1.4 MiB in all) stay
    within 1 MiB, the oldest go, and every answer is still whole and right."""
    names = [f"w{i}.wide.{D}" for i in range(200)]
    items = [(f"/wide/local/skydns/wide/w{i}/ip{j}", {"host": f"10.9.{i}.{j + 1}"})
             for i in range(200) for j in range(20)]
    with records_in(etcd, "wide", items):
        sky, port = with_metrics(start_skydns, "-path-prefix=wide", "-answer-cache-mb=1")
        for _ in range(2):  # the second round is answered from the cache where it kept them
            for i, name in enumerate(names):
                reply = sky.query(name, "A", use_edns=0, payload=4096)
                assert sorted(rd.address for rd in reply.answer[0]) == sorted(
                    f"10.9.{i}.{j + 1}" for j in range(20)), name
        text = scrape(port)
        held = metric(text, "skydns_wire_cache_bytes")
        assert 0 < held <= 1024 * 1024
        assert metric(text, "skydns_cache_evictions_total", {"cache": "wire"}) > 0
        assert sky.query(names[-1], "A", use_edns=0, payload=4096).answer  # still served


# -- answers that real resolvers misread ------------------------------------------------------

class TestInterop:
    @pytest.fixture(scope="class")
    @classmethod
    def sky(cls, etcd):
        p = "/interop/local/skydns"
        items = [
            (f"{p}/svc/web/1", {"host": "10.3.0.1"}),
            (f"{p}/svc/web/_tcp/_http/1", {"host": "web.svc.skydns.local", "port": 80}),
            (f"{p}/svc/web/_tcp/_https/1", {"host": "web.svc.skydns.local", "port": 443}),
            (f"{p}/svc/web/_tcp/_http/txt", {"text": "attribute text"}),
            # two name hosts under one name, and one whose target does not exist
            (f"{p}/multi/a", {"host": "gone.skydns.local"}),
            (f"{p}/multi/b", {"host": "t1.skydns.local"}),
            (f"{p}/multi/c", {"host": "t2.skydns.local"}),
            (f"{p}/t1", {"host": "10.3.1.1"}),
            (f"{p}/t2", {"host": "10.3.2.2"}),
            (f"{p}/srv/1", {"host": "multi.skydns.local", "port": 53}),
        ]
        with records_in(etcd, "interop", items), running(
                etcd.url, "-path-prefix=interop") as server:
            yield server

    @pytest.mark.parametrize("tcp", [False, True])
    @pytest.mark.parametrize("rdtype", ["A", "AAAA", "CNAME", "MX", "PTR"])
    def test_attribute_names_answer_nodata(self, sky, rdtype, tcp):
        for name in (f"_http._tcp.web.svc.{D}", f"_tcp.web.svc.{D}"):
            for _ in range(2):  # the second answer comes from the wire cache
                reply = sky.query(name, rdtype, tcp=tcp)
                assert reply.rcode() == dns.rcode.NOERROR, (name, rdtype)
                assert reply.answer == [], (name, rdtype, reply.answer)
                assert reply.flags & dns.flags.AA
                assert [r.rdtype for r in reply.authority] == [dns.rdatatype.SOA]
                assert reply.authority[0].name.to_text() == D

    def test_attribute_names_keep_srv_and_txt(self, sky):
        reply = sky.query(f"_http._tcp.web.svc.{D}", "SRV")
        assert [(rd.port, rd.target.to_text()) for rd in reply.answer[0]] == [
            (80, f"web.svc.{D}")]
        reply = sky.query(f"_http._tcp.web.svc.{D}", "TXT")
        assert [rd.strings for rd in reply.answer[0]] == [(b"attribute text",)]

    def test_missing_attribute_name_is_nxdomain(self, sky):
        reply = sky.query(f"_ftp._tcp.web.svc.{D}", "A")
        assert reply.rcode() == dns.rcode.NXDOMAIN

    def test_service_address_unchanged(self, sky):
        reply = sky.query(f"web.svc.{D}", "A")
        assert [rd.address for rd in reply.answer[0]] == ["10.3.0.1"]

    @pytest.mark.parametrize("tcp", [False, True])
    def test_one_cname_per_owner_the_first_that_resolves(self, sky, tcp):
        seen = set()
        for _ in range(5):
            reply = ask(sky, f"multi.{D}", "A", tcp=tcp)
            cnames = [rrset for rrset in reply.answer if rrset.rdtype == dns.rdatatype.CNAME]
            assert len(cnames) == 1, reply.answer
            # key order: a (gone: does not resolve), then b -> t1
            assert cnames[0][0].target.to_text() == f"t1.{D}"
            addresses = [rd.address for rrset in reply.answer
                         if rrset.rdtype == dns.rdatatype.A for rd in rrset]
            assert addresses == ["10.3.1.1"]
            seen.add(reply.to_wire()[2:])
        assert len(seen) == 1

    def test_one_cname_per_owner_in_additional(self, sky):
        reply = ask(sky, f"srv.{D}", "SRV")
        owners = {}
        for rrset in reply.additional:
            if rrset.rdtype == dns.rdatatype.CNAME:
                owners[rrset.name] = owners.get(rrset.name, 0) + len(rrset)
        assert owners and all(count == 1 for count in owners.values()), reply.additional


# -- signals ------------------------------------------------------------------------------------

def test_sighup_is_harmless_and_sigterm_still_stops(etcd_client, start_skydns):
    sky = start_skydns()
    put(etcd_client, f"hup.{D}", {"host": "10.4.0.1"})
    wait_for(lambda: sky.query(f"hup.{D}").answer, what="record")
    for _ in range(3):
        sky.proc.send_signal(signal.SIGHUP)
    time.sleep(0.3)
    assert sky.proc.poll() is None, sky.output()[-2000:]
    assert sky.query(f"hup.{D}").answer[0][0].address == "10.4.0.1"
    assert sky.healthz()[0] == 200
    assert log_count(sky, "SIGHUP ignored") >= 1
    sky.proc.send_signal(signal.SIGTERM)
    assert sky.proc.wait(timeout=5) == 0


def test_sigterm_lameduck_fails_probes_at_once_and_answers_until_it_ends(etcd_client,
                                                                         start_skydns):
    """A rollout's SIGTERM: the probes fail at once (the endpoints controller takes the
    replica out of the Service) while DNS is still answered for -lameduck, then skydns
    exits 0 by itself."""
    sky = start_skydns("-lameduck=2s")
    put(etcd_client, f"duck.{D}", {"host": "10.4.0.2"})
    wait_for(lambda: sky.query(f"duck.{D}").answer, what="record")
    assert sky.status("/readyz")[0] == 200
    sky.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    status, body = sky.healthz()
    assert status == 503 and "lameduck" in body, body
    assert sky.status("/readyz")[0] == 503
    assert sky.status("/livez")[0] == 200  # the kubelet must not restart it meanwhile
    answered = []
    for _ in range(400):  # bounded: ~20 ms a round
        if sky.proc.poll() is not None:
            break
        try:
            if sky.query(f"duck.{D}", timeout=0.2).answer[0][0].address == "10.4.0.2":
                answered.append(time.monotonic() - signalled)
        except dns.exception.Timeout:
            pass
        time.sleep(0.02)
    assert sky.proc.wait(timeout=5) == 0
    stopped = time.monotonic() - signalled
    assert answered and answered[-1] >= 1.5, answered[-3:]  # answering through the lameduck
    assert 1.9 <= stopped <= 5, stopped
    assert log_count(sky, "lameduck for 2s") == 1


@pytest.mark.parametrize("signals", [[signal.SIGINT], [signal.SIGTERM, signal.SIGTERM]])
def test_sigint_or_a_second_signal_stops_at_once(etcd_client, start_skydns, signals):
    sky = start_skydns("-lameduck=60s")
    for signum in signals:
        sky.proc.send_signal(signum)
        time.sleep(0.2)
    assert sky.proc.wait(timeout=5) == 0


def test_nsid_tells_which_replica_answered(etcd_client, start_skydns):
    """RFC 5001: a query with an empty NSID option gets the server's identifier; one
    without gets no NSID, also after the NSID answer was cached."""
    sky = start_skydns("-nsid=kube-dns-7c9f-x2l4q")
    put(etcd_client, f"nsid.{D}", {"host": "10.4.0.3"})
    wait_for(lambda: sky.query(f"nsid.{D}").answer, what="record")
    asks = [dns.edns.GenericOption(dns.edns.NSID, b"")]
    for name, rcode in ((f"nsid.{D}", dns.rcode.NOERROR), (f"none.{D}", dns.rcode.NXDOMAIN)):
        for _ in range(3):  # the first from the general path, then from the wire cache
            for tcp in (False, True):
                reply = sky.query(name, "A", tcp=tcp, use_edns=0, options=asks)
                assert reply.rcode() == rcode
                nsid = [o.nsid for o in reply.options if o.otype == dns.edns.NSID]
                assert nsid == [b"kube-dns-7c9f-x2l4q"], (name, tcp, reply.options)
            padded = [dns.edns.GenericOption(dns.edns.PADDING, b"\0" * 8)]
            for options in ([], padded):  # the fast path; the general one, as NSID's
                plain = sky.query(name, "A", use_edns=0, options=options)
                assert plain.rcode() == rcode
                assert not [o for o in plain.options if o.otype == dns.edns.NSID]
    assert sky.query(f"nsid.{D}").answer[0][0].address == "10.4.0.3"


def test_no_nsid_unless_configured(etcd_client, start_skydns):
    sky = start_skydns()
    reply = sky.query(f"none.{D}", "A", use_edns=0,
                      options=[dns.edns.GenericOption(dns.edns.NSID, b"")])
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert not [o for o in reply.options if o.otype == dns.edns.NSID]


# -- forwarding loops --------------------------------------------------------------------------

class LoopingRelay:
    """An "upstream" that forwards every UDP query to ``target`` and relays the reply: a
    node resolver pointed back at cluster DNS."""

    def __init__(self):
        import socket
        import threading
        self.port = free_port()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.settimeout(0.2)
        self.target = None
        self.relayed = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        import socket
        while not self.stopped.is_set():
            try:
                data, client = self.sock.recvfrom(65535)
            except (socket.timeout, OSError):
                continue
            if self.target is None:
                continue
            self.relayed += 1
            out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            out.settimeout(1.0)
            try:
                out.sendto(data, self.target)
                self.sock.sendto(out.recv(65535), client)
            except (socket.timeout, OSError):
                pass
            finally:
                out.close()

    def close(self):
        self.stopped.set()
        self.thread.join(timeout=2)
        self.sock.close()


def test_forwarding_loop_found_at_run_time_is_reported_not_amplified(etcd, etcd_client):
    """The upstream forwards back to skydns: the probe comes back, /healthz says which
    upstream loops, the probe is answered SERVFAIL instead of going round again, and the
    cluster's own names are still answered."""
    relay = LoopingRelay()
    sky = Skydns(etcd.url, "-loop-probe=true", upstream=f"127.0.0.1:{relay.port}")
    relay.target = ("127.0.0.1", sky.port)  # known before it starts and sends the probe
    try:
        sky.start()
        put(etcd_client, f"loop.{D}", {"host": "10.4.0.4"})
        status, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(sky.healthz()),
                                what="the loop to be reported")
        assert f"forwarding loop: a probe sent to upstream 127.0.0.1:{relay.port}" in body
        assert sky.status("/livez")[0] == 200
        time.sleep(0.5)
        assert relay.relayed <= 3  # the probe went round once, not until it timed out
        assert log_count(sky, "forwarding loop") == 1
        assert wait_for(lambda: sky.query(f"loop.{D}").answer)[0][0].address == "10.4.0.4"
    finally:
        sky.close()
        relay.close()


def test_a_private_upstream_that_answers_is_probed_once_and_healthy(start_skydns):
    from test_operations import CountingUpstream
    upstream = CountingUpstream()
    try:
        sky = start_skydns("-loop-probe=true", upstream=upstream.address)
        wait_for(lambda: any(q.question[0].rdtype == dns.rdatatype.HINFO
                             for q in upstream.queries), what="the probe")
        probes = [q for q in upstream.queries if q.question[0].rdtype == dns.rdatatype.HINFO]
        assert len(probes) == 1 and len(probes[0].question[0].name.labels) == 3
        status, body = sky.healthz()
        assert status == 200, body
    finally:
        upstream.close()


@pytest.mark.parametrize("listen, upstream, why", [
    ("0.0.0.0:53", "127.0.0.1:53", "this server itself"),
    ("127.0.0.1:1053", "127.0.0.1:1053", "this server itself"),
    ("[::]:53", "[::1]:53", "this server itself"),
    ("0.0.0.0:53", "127.0.0.53:53", "systemd-resolved"),
])
def test_upstreams_that_loop_by_their_address_are_refused_at_start(listen, upstream, why):
    from skydns import config as cfg
    with pytest.raises(cfg.ConfigError, match=why):
        cfg.from_args([f"-addr={listen}", f"-nameservers={upstream}"], environ={})
    for fine in ("127.0.0.11:53", "127.0.0.1:5353", "10.0.0.10:53"):  # docker's, dnsmasq's
        cfg.from_args([f"-addr={listen}", f"-nameservers={fine}"], environ={})


def test_resolved_stub_in_resolv_conf_is_replaced_by_its_servers(tmp_path):
    from skydns import config as cfg
    resolv = tmp_path / "resolv.conf"
    resolved = tmp_path / "resolved.conf"
    resolv.write_text("nameserver 127.0.0.53\noptions edns0 trust-ad\n")
    resolved.write_text("nameserver 10.0.0.2\nnameserver 10.0.0.3\n")
    assert cfg.resolv_conf_nameservers(str(resolv), str(resolved)) == [
        "10.0.0.2:53", "10.0.0.3:53"]
    assert cfg.resolv_conf_nameservers(str(resolv), str(tmp_path / "none")) == []
    resolv.write_text("nameserver 127.0.0.53\nnameserver 192.0.2.1\n")
    assert cfg.resolv_conf_nameservers(str(resolv), str(tmp_path / "none")) == ["192.0.2.1:53"]


@pytest.mark.parametrize("host, probed", [
    ("8.8.8.8", False), ("2001:4860:4860::8888", False),  # public: cannot reach us
    ("10.0.0.1", True), ("127.0.0.1", True), ("169.254.20.10", True), ("fd00::1", True),
    ("dns.example", True),  # a name: cannot tell
])
def test_only_upstreams_that_could_forward_back_are_probed(host, probed):
    from skydns.loop import may_loop
    assert may_loop(host) is probed


# -- the query log -------------------------------------------------------------------------------

QUERY_LINE = re.compile(
    r'skydns\.query: 127\.0\.0\.1:(\d+) - (\d+) "(\S+) IN (\S+) (udp|tcp) (\d+) (true|false) '
    r'(\d+)" (\S+) (\S+) (\d+) (\d+\.\d{6})s$')


def query_lines(sky):
    return [m.groups() for m in map(QUERY_LINE.search, sky.output().splitlines()) if m]


def test_query_log_has_one_coredns_style_line_per_answer(etcd_client, start_skydns):
    """Wire-cache hits, the general path, NXDOMAIN, forwarded (relayed) and TCP answers:
    each one line with the client, ID, question, transport, sizes, rcode and flags."""
    from test_operations import CountingUpstream
    upstream = CountingUpstream()
    try:
        sky = start_skydns("-log-queries=1000", upstream=upstream.address)
        put(etcd_client, f"logged.{D}", {"host": "10.4.0.5"})
        wait_for(lambda: sky.query(f"logged.{D}").answer, what="record")
        asked = []
        for name, rdtype, tcp, edns in ((f"logged.{D}", "A", False, -1),
                                        (f"logged.{D}", "A", False, -1),  # from the cache
                                        (f"missing.{D}", "A", False, 0),
                                        (f"logged.{D}", "A", True, -1),
                                        ("www.example.com.", "A", False, -1)):
            query = dns.message.make_query(name, rdtype, use_edns=edns)
            reply = (dns.query.tcp if tcp else dns.query.udp)(query, "127.0.0.1",
                                                               port=sky.port, timeout=3)
            asked.append((query, reply, tcp))
        # A line is written just after its reply is sent: wait for every query's line
        # (the lines of the start-up and record probes are there long before).
        ids = {query.id for query, _, _ in asked}
        lines = wait_for(lambda: (lambda got: got if ids <= {int(g[1]) for g in got}
                                  else None)(query_lines(sky)), what="the query lines")
        for query, reply, tcp in asked:
            mine = [g for g in lines if int(g[1]) == query.id]
            assert len(mine) == 1, (query.question, lines)
            _, _, qtype, name, proto, size, do, bufsize, rcode, flags, rsize, _ = mine[0]
            assert (qtype, name, proto) == ("A", query.question[0].name.to_text(),
                                            "tcp" if tcp else "udp")
            assert int(size) == len(query.to_wire()) and do == "false"
            assert int(bufsize) == (query.payload if query.edns >= 0 else 512)
            assert rcode == dns.rcode.to_text(reply.rcode())
            assert int(rsize) == len(reply.to_wire())
            assert flags.split(",")[0] == "qr" and ("aa" in flags) == bool(
                reply.flags & dns.flags.AA)
    finally:
        upstream.close()


def test_query_log_is_rate_limited_and_says_what_it_left_out(etcd_client, start_skydns):
    sky = start_skydns("-log-queries=5")
    put(etcd_client, f"many.{D}", {"host": "10.4.0.6"})
    wait_for(lambda: sky.query(f"many.{D}").answer, what="record")
    started = time.monotonic()
    for _ in range(60):
        sky.query(f"many.{D}")
    time.sleep(max(0.0, 1.2 - (time.monotonic() - started)))
    sky.query(f"many.{D}")  # the next second's first query reports the one before
    logged = wait_for(lambda: log_count(sky, "queries not logged in the last second"),
                      what="the left-out count")
    assert logged >= 1
    # at most 5 lines a second: the 62 queries took at most ~2 seconds here
    assert len(query_lines(sky)) <= 5 * (int(time.monotonic() - started) + 2) < 62


def test_no_query_lines_without_the_flag(etcd_client, start_skydns):
    sky = start_skydns()
    put(etcd_client, f"quiet.{D}", {"host": "10.4.0.7"})
    wait_for(lambda: sky.query(f"quiet.{D}").answer, what="record")
    for _ in range(3):
        sky.query(f"quiet.{D}")
    assert query_lines(sky) == []
