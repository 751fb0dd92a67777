"""The cluster_scale/churn benches poll skydns every millisecond for a timed change and
read the A addresses of each reply with a small walker of the answer section instead of
dnspython (cheaper, so the bench takes less CPU from the servers it measures). The walker
must read what dnspython reads, on replies dnspython writes (compressed or not)."""

from __future__ import annotations

import importlib.util
import random
import socket
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "cluster_scale.py"


@pytest.fixture(scope="module")
def cluster_scale():
    spec = importlib.util.spec_from_file_location("cluster_scale_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reply(rng, qname, rcode=dns.rcode.NOERROR):
    query = dns.message.make_query(qname, dns.rdatatype.A, use_edns=rng.random() < 0.5)
    msg = dns.message.make_response(query)
    msg.set_rcode(rcode)
    for _ in range(rng.randrange(4)):
        owner = rng.choice([qname, "other.example.", f"x{rng.randrange(9)}.{qname}"])
        kind = rng.choice(["A", "AAAA", "CNAME", "SRV", "TXT"])
        if kind == "A":
            rdatas = [socket.inet_ntoa(rng.randbytes(4)) for _ in range(rng.randrange(1, 25))]
        elif kind == "AAAA":
            rdatas = [socket.inet_ntop(socket.AF_INET6, rng.randbytes(16))]
        elif kind == "CNAME":
            rdatas = ["target.example."]
        elif kind == "SRV":
            rdatas = [f"10 10 {rng.randrange(1, 65535)} t{rng.randrange(5)}.{qname}"]
        else:
            rdatas = ['"' + "x" * rng.randrange(60) + '"']
        section = msg.answer if rng.random() < 0.8 else msg.additional
        section.append(dns.rrset.from_text_list(owner, 30, "IN", kind, rdatas))
    return msg


def test_the_walker_reads_the_a_addresses_dnspython_reads(cluster_scale):
    rng = random.Random(5)
    for i in range(400):
        rcode = dns.rcode.NOERROR if i % 5 else dns.rcode.NXDOMAIN
        msg = reply(rng, f"svc-{i}.ns-{i % 7}.svc.cluster.local.", rcode)
        wire = msg.to_wire()
        parsed = dns.message.from_wire(wire)
        want = sorted(rd.address for rrset in parsed.answer if rrset.rdtype == dns.rdatatype.A
                      for rd in rrset) if parsed.rcode() == dns.rcode.NOERROR else []
        got = sorted(socket.inet_ntoa(rdata) for rdata in cluster_scale.a_rdata(wire))
        assert got == want
        for address in want[:3]:
            assert cluster_scale.answer_has(wire, address)
        assert not cluster_scale.answer_has(wire, "0.0.0.1") or "0.0.0.1" in want


@pytest.mark.parametrize("cut", [5, 13, 30, -3])
def test_a_truncated_reply_is_a_value_error_not_a_wrong_answer(cluster_scale, cut):
    msg = dns.message.make_response(dns.message.make_query("a.example.", "A"))
    msg.answer.append(dns.rrset.from_text("a.example.", 30, "IN", "A", "10.0.0.1"))
    with pytest.raises(ValueError):
        cluster_scale.a_rdata(msg.to_wire()[:cut])
