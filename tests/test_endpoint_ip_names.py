"""Headless endpoints without a hostname answer under their dashed IP, end to end.

CoreDNS's kubernetes plugin answers ``10-244-1-10.db.<ns>.svc.cluster.local A 10.244.1.10``
(IPv6 ``fd00::1`` as ``fd00--1``) for an endpoint without a hostname; kube2sky writes that
name as a second leaf beside the hash-labelled one. The records ``service_records`` makes
for one headless service (IPv4 and IPv6 endpoints, with and without hostnames, a hostname
that looks like another endpoint's dashed IP, a named port) are written into a real etcd
and a real skydns is asked over UDP. The table is (name, type) -> (rcode, answer): the
dashed names answer A/AAAA, and what was there before (the subdomain answers, SRV, PTR,
the hashed names) is exactly what the layout without dashed leaves gives, computed here
from the original kube2sky's hash labels, not from the code under test.
"""

from __future__ import annotations

import ipaddress

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest

from kube2sky.records import Layout, from_slices, service_records
from procs import Skydns

NS = "ipnames"
ZONE = f"db.{NS}.svc.cluster.local."
PORT = 5432
# (ip, hostname or None): published (ready) addresses of the headless service ``db``
V4 = [("10.244.1.10", None), ("10.244.2.7", "pg-0"), ("10.244.3.3", None),
      ("10.244.5.5", "10-244-9-9"), ("10.244.9.9", None)]
V6 = [("fd00::1", None), ("fd00::2", "pg-1"), ("2001:db8::1:0:0:7", None)]
NOT_READY = [("10.244.4.4", None)]
ENDPOINTS = V4 + V6


def kube2sky_label(ip):
    """The original kube2sky's leaf label: FNV-1a 32 of its value, lower-case hex."""
    text = '{"host":"%s","priority":10,"weight":10,"ttl":30,"targetstrip":0}' % ip
    h = 0x811C9DC5
    for byte in text.encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return format(h, "x")


def name_of(ip, hostname):
    """The endpoint's name before dashed leaves: its hostname, else its hash label."""
    return f"{hostname or kube2sky_label(ip)}.{ZONE}"


def service_and_slices():
    service = {"metadata": {"namespace": NS, "name": "db"},
               "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": PORT}]}}

    def endpoint(ip, hostname, ready=True):
        out = {"addresses": [ip], "conditions": {"ready": ready}}
        if hostname:
            out["hostname"] = hostname
        return out

    def one(name, family, endpoints):
        return {"metadata": {"namespace": NS, "name": name,
                             "labels": {"kubernetes.io/service-name": "db"}},
                "addressType": family, "endpoints": endpoints,
                "ports": [{"name": "pg", "port": PORT, "protocol": "TCP"}]}
    slices = [one("db-v4", "IPv4", [endpoint(ip, h) for ip, h in V4]
                  + [endpoint(ip, h, ready=False) for ip, h in NOT_READY]),
              one("db-v6", "IPv6", [endpoint(ip, h) for ip, h in V6])]
    return service, slices


def rows():
    """(name, type) -> (rcode, sorted answer rdata texts)."""
    v4 = sorted(ip for ip, _ in V4)
    v6 = sorted(ip for ip, _ in V6)
    table = {
        # the dashed names of the endpoints without a hostname (CoreDNS's)
        (f"10-244-1-10.{ZONE}", "A"): ("NOERROR", ["10.244.1.10"]),
        (f"10-244-3-3.{ZONE}", "A"): ("NOERROR", ["10.244.3.3"]),
        (f"fd00--1.{ZONE}", "AAAA"): ("NOERROR", ["fd00::1"]),
        (f"2001-db8--1-0-0-7.{ZONE}", "AAAA"): ("NOERROR", ["2001:db8::1:0:0:7"]),
        (f"10-244-1-10.{ZONE}", "AAAA"): ("NOERROR", []),
        (f"fd00--1.{ZONE}", "A"): ("NOERROR", []),
        # endpoints with a hostname are named by it only; not-ready ones not at all
        (f"10-244-2-7.{ZONE}", "A"): ("NXDOMAIN", []),
        (f"fd00--2.{ZONE}", "AAAA"): ("NXDOMAIN", []),
        (f"10-244-4-4.{ZONE}", "A"): ("NXDOMAIN", []),
        # a hostname that is another endpoint's dashed IP keeps that name
        (f"10-244-9-9.{ZONE}", "A"): ("NOERROR", ["10.244.5.5"]),
        # the whole service, and its wildcard: each address once
        (ZONE, "A"): ("NOERROR", v4),
        (ZONE, "AAAA"): ("NOERROR", v6),
        (f"*.{ZONE}", "A"): ("NOERROR", v4),
        # the named port: one SRV per endpoint, target its name as before
        (f"_pg._tcp.{ZONE}", "SRV"): ("NOERROR", sorted(
            f"{PORT} {name_of(ip, h)}" for ip, h in ENDPOINTS)),
    }
    for ip, hostname in ENDPOINTS:
        family = "A" if ipaddress.ip_address(ip).version == 4 else "AAAA"
        table[(name_of(ip, hostname), family)] = ("NOERROR", [ip])
        table[(dns.reversename.from_address(ip).to_text(), "PTR")] = (
            "NOERROR", [name_of(ip, hostname)])
    return table


def srv_of_the_service():
    """SRV for the service name itself (and its wildcard), before dashed leaves: per
    endpoint one for its address leaf (port 0) and one for the named port, both targeting
    its name."""
    want = ("NOERROR", sorted(f"{port} {name_of(ip, h)}" for ip, h in ENDPOINTS
                              for port in (0, PORT)))
    return {(ZONE, "SRV"): want, (f"*.{ZONE}", "SRV"): want}


@pytest.fixture(scope="module")
def sky(etcd):
    service, slices = service_and_slices()
    records, problems = service_records(Layout("cluster.local", ttl=30), service,
                                        from_slices(slices))
    assert problems == []
    client = etcd.client()
    client.delete_prefix("/skydns/")
    for key, value in records.items():
        client.put(key, value)
    server = Skydns(etcd.url, "-domain=cluster.local.", "-ns-rotate=false", "-rcache=0")
    server.start()
    yield server
    server.close()
    client.delete_prefix("/skydns/")
    client.close()


def ask(server, name, rdtype):
    """(rcode text, sorted answer rdata texts of type ``rdtype``) over UDP with EDNS (the
    service's SRV answer is bigger than 512 bytes), never truncated; one RR per RRset, so
    that a duplicate would show. SRV rdata as ``port target``."""
    message = dns.message.make_query(name, rdtype, use_edns=0, payload=4096)
    response = dns.query.udp(message, "127.0.0.1", port=server.port, timeout=3.0,
                             one_rr_per_rrset=True)
    assert not response.flags & dns.flags.TC, response.to_text()
    want = dns.rdatatype.from_text(rdtype)
    data = []
    for rrset in response.answer:
        if rrset.rdtype != want:
            continue
        for rd in rrset:
            data.append(f"{rd.port} {rd.target}" if want == dns.rdatatype.SRV
                        else rd.to_text())
    return dns.rcode.to_text(response.rcode()), sorted(data)


ROWS = rows()


@pytest.mark.parametrize("name, rdtype", list(ROWS), ids=[f"{n}/{t}" for n, t in ROWS])
def test_answers(sky, name, rdtype):
    assert ask(sky, name, rdtype) == ROWS[(name, rdtype)]


# skydns collapses records of equal identity (host, port, priority, weight, text) and
# keeps the first in key order, except that a leaf named by its own dashed address yields to
# another name: so the port-0 SRV of an address still names its hash leaf, even where the
# dashed label sorts first (10-244-1-10 < eab4ec).
@pytest.mark.parametrize("name, rdtype", list(srv_of_the_service()))
def test_srv_for_the_service_name_is_as_before(sky, name, rdtype):
    assert ask(sky, name, rdtype) == srv_of_the_service()[(name, rdtype)]
