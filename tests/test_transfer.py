"""Zone transfer (-transfer-to, AXFR over TCP), against a real skydns on a real etcd.

The zone transferred must be what skydns answers: every (name, type) in it is asked again
with an ordinary query, and the answers must have the same records. kube2sky's layout
gives the names (services, headless endpoints, SRV names, pods, an ExternalName, the
schema version); what the transfer leaves out (names with other names below them) and
refuses (other zones, addresses outside -transfer-to, no -transfer-to) is checked too.
"""

from __future__ import annotations

import os
import subprocess

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.xfr
import dns.zone
import pytest

from procs import tool
from skydns.record import encode_record, encode_text
from skydns.store import RecordStore
from skydns.transfer import carried_names

D = "cluster.local."
BASE = "/skydns/local/cluster"
BIG = 1000  # endpoints of one headless service: the zone spans several messages

RECORDS = {
    f"{BASE}/svc/default/web/a1": encode_record("10.0.0.10"),
    f"{BASE}/svc/default/web/_tcp/_http/a1": encode_record(f"web.default.svc.{D}", port=80),
    f"{BASE}/svc/default/db/p0": encode_record("10.244.0.5"),
    f"{BASE}/svc/default/db/p1": encode_record("10.244.0.6"),
    f"{BASE}/svc/default/ext": encode_record("www.example.com."),
    f"{BASE}/svc/default/v6/b2": encode_record("fd00::10"),
    f"{BASE}/dns-version": encode_text("1.1.0"),
    f"{BASE}/pod/default/10-244-0-5/c3": encode_record("10.244.0.5"),
    f"{BASE}/dns/ns/ns1": encode_record("10.96.0.10"),
}


def big_records():
    return {f"{BASE}/svc/big/many/e{i}": encode_record(f"10.{100 + i // 62500}."
                                                       f"{i // 250 % 250}.{i % 250 + 1}")
            for i in range(BIG)}


@pytest.fixture(scope="module")
def records(etcd):
    client = etcd.client()
    client.delete_prefix("/skydns/")
    for key, value in {**RECORDS, **big_records()}.items():
        client.put(key, value)
    yield client
    client.delete_prefix("/skydns/")
    client.close()


@pytest.fixture(scope="module")
def sky(etcd, records):
    from procs import Skydns
    server = Skydns(etcd.url, f"-domain={D}", "-transfer-to=127.0.0.1/32,10.0.0.0/8")
    try:
        yield server.start()
    finally:
        server.close()


def transfer(sky, zone=D, source="127.0.0.1"):
    """The messages of an AXFR (dnspython's client checks the SOA framing)."""
    return list(dns.query.xfr("127.0.0.1", zone, port=sky.port, timeout=20,
                              source=source, lifetime=60, relativize=False))


def rdata_set(rrset):
    return sorted(rd.to_text() for rd in rrset)


def test_the_zone_is_what_skydns_answers(sky):
    messages = transfer(sky)
    zone = dns.zone.from_xfr(iter(messages), relativize=False)
    carried = {}
    for name, node in zone.nodes.items():
        for rdataset in node.rdatasets:
            carried[name.to_text(), rdataset.rdtype] = sorted(rd.to_text()
                                                              for rd in rdataset)
    assert len(messages) > 1  # the big headless service spans messages
    for (name, rdtype), want in carried.items():
        if rdtype == dns.rdatatype.SOA:
            continue
        if name.endswith(f".many.big.svc.{D}") and not name.startswith(("e1.", "e999.")):
            continue  # the big service's endpoint names: two of them are asked
        for tcp in (False, True):
            q = dns.message.make_query(name, rdtype, use_edns=0, payload=65535)
            response = (dns.query.tcp if tcp else dns.query.udp)(
                q, "127.0.0.1", port=sky.port, timeout=5)
            if response.flags & dns.flags.TC:
                continue  # too big for UDP (-max-udp-size): asked over TCP next
            got = sorted(rd.to_text() for rrset in response.answer
                         if rrset.name.to_text() == name and rrset.rdtype == rdtype
                         for rd in rrset)
            assert got == want, (name, dns.rdatatype.to_text(rdtype), tcp)
    names = {name for name, _ in carried}
    for name in (D, f"web.default.svc.{D}", f"a1.web.default.svc.{D}",
                 f"_http._tcp.web.default.svc.{D}", f"db.default.svc.{D}",
                 f"p0.db.default.svc.{D}", f"ext.default.svc.{D}", f"v6.default.svc.{D}",
                 f"dns-version.{D}", f"10-244-0-5.default.pod.{D}",
                 f"ns1.ns.dns.{D}", f"many.big.svc.{D}"):
        assert name in names, name
    for name in (f"default.svc.{D}", f"svc.{D}", f"pod.{D}", f"_tcp.web.default.svc.{D}"):
        assert name not in names, name  # SkyDNS's subdomain gatherings: not carried
    assert carried[f"ext.default.svc.{D}", dns.rdatatype.CNAME] == ["www.example.com."]
    assert [t for n, t in carried if n == f"ext.default.svc.{D}"] == [dns.rdatatype.CNAME]
    assert len(carried[f"many.big.svc.{D}", dns.rdatatype.A]) == BIG
    assert carried[D, dns.rdatatype.NS] == [f"ns1.ns.dns.{D}"]


@pytest.mark.parametrize("zone,source", [("example.org.", "127.0.0.1"),
                                         (f"svc.{D}", "127.0.0.1"),
                                         (D, "127.0.0.2")])
def test_refused_outside_the_zone_or_the_allowed_addresses(sky, zone, source):
    with pytest.raises(dns.xfr.TransferError, match="REFUSED"):
        transfer(sky, zone, source)
    q = dns.message.make_query(zone, "AXFR")
    response = dns.query.tcp(q, "127.0.0.1", port=sky.port, timeout=5, source=source)
    assert response.rcode() == dns.rcode.REFUSED
    assert "zone transfer of" in sky.output() and "refused" in sky.output()


def test_refused_to_everyone_without_the_flag(start_skydns, records):
    plain = start_skydns(f"-domain={D}")
    response = dns.query.tcp(dns.message.make_query(D, "AXFR"), "127.0.0.1",
                             port=plain.port, timeout=5)
    assert response.rcode() == dns.rcode.REFUSED


def test_kdig_reads_the_same_zone(sky):
    if not tool("kdig"):
        if os.environ.get("CI"):
            pytest.fail("kdig missing (knot-dnsutils) under CI")
        pytest.skip("no kdig (Debian package knot-dnsutils)")
    out = subprocess.run(["kdig", "-p", str(sky.port), "@127.0.0.1", "-t", "AXFR", D,
                          "+noall", "+answer"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = [line.split() for line in out.stdout.splitlines() if line.strip()]
    assert lines[0][3] == "SOA" and lines[-1][3] == "SOA"
    zone = dns.zone.from_xfr(iter(transfer(sky)), relativize=False)
    count = sum(len(rds) for _, node in zone.nodes.items() for rds in node.rdatasets)
    assert len(lines) == count + 1  # the SOA twice


def test_carried_names_in_process():
    store = RecordStore()
    store.replace_all([(k, v, 0) for k, v in RECORDS.items()], 1)
    names = {".".join(reversed(labels)) for labels in carried_names(store, ("local",
                                                                            "cluster"))}
    assert "cluster.svc.default.web" not in names  # (labels are joined root-first here)
    assert "web.default.svc.cluster.local" in names
    assert "default.svc.cluster.local" not in names
    assert "ext.default.svc.cluster.local" in names
    assert "_http._tcp.web.default.svc.cluster.local" in names
    assert "_tcp.web.default.svc.cluster.local" not in names
    assert carried_names(store, ("org", "example")) == []


def test_the_bench_runs():
    """bench/transfer.py (kdig's AXFR of a small zone, the probe with and without)."""
    if not tool("kdig"):
        if os.environ.get("CI"):
            pytest.fail("kdig missing (knot-dnsutils) under CI")
        pytest.skip("no kdig (Debian package knot-dnsutils)")
    import sys
    from pathlib import Path
    bench = Path(__file__).resolve().parent.parent / "bench" / "transfer.py"
    out = subprocess.run([sys.executable, str(bench), "--services", "50",
                          "--probe-seconds", "0.3"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr + out.stdout
    assert "50 services: AXFR of 352 records" in out.stdout, out.stdout


def test_a_long_transfer_is_activity_and_waits_for_a_slow_reader():
    """In process, the TCP protocol with a fake transport and clock: each message of a
    transfer restarts the idle timeout (a big zone takes longer than it, with no query
    coming in), and while the client does not read, the transfer waits (nothing is
    buffered for it) until it does, or fails when the connection goes."""
    from twisted.internet import defer, task
    from twisted.internet.testing import StringTransport
    from twisted.python.failure import Failure
    from skydns.server import DNSTCPFactory

    class Handler:
        def transfer(self, data, client, send, wait_writable):
            self.send, self.wait, self.client = send, wait_writable, client
            self.done = defer.Deferred()
            return self.done

    class NoCache:
        def answer(self, data, tcp=False):
            return None

    handler, clock = Handler(), task.Clock()
    factory = DNSTCPFactory(handler, NoCache())
    proto = factory.buildProtocol(("127.0.0.1", 0))
    proto.callLater = clock.callLater
    transport = StringTransport()
    proto.makeConnection(transport)
    axfr = dns.message.make_query(D, "AXFR").to_wire()
    proto.dataReceived(len(axfr).to_bytes(2, "big") + axfr)
    assert handler.client == transport.getPeer().host
    for _ in range(5):  # 5 idle timeouts long, a message in each
        clock.advance(factory.idle_timeout * 0.9)
        handler.send(b"message")
        assert transport.connected and not transport.disconnecting
    assert transport.value().count(b"message") == 5
    assert handler.wait() is None  # the client reads: go on
    proto.pauseProducing()          # it stopped: the transport's buffer is full
    waiting = handler.wait()
    assert not waiting.called
    proto.resumeProducing()
    assert waiting.called and waiting.result is None
    proto.pauseProducing()
    lost = handler.wait()
    proto.connectionLost(Failure(Exception("gone")))
    assert lost.called and isinstance(lost.result, Failure)
    lost.addErrback(lambda f: None)
    after = handler.wait()  # after the connection went: fails at once
    assert after.called and isinstance(after.result, Failure)
    after.addErrback(lambda f: None)
