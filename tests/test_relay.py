"""The UDP relay in-process: real sockets on 127.0.0.1, the test as the upstream server.

The real QueryHandler, Resolver, Forwarder and UDPRelay; the reactor is the stand-in of
test_udp_queue (the test calls the relay sockets' ``doRead`` and the timeout sweep itself),
so each step can be checked: what went upstream, what the client got, and what the relay
still holds afterwards.
"""

from __future__ import annotations

import dataclasses
import gc
import select
import socket

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

import test_encoder as te
from skydns import relay as relay_mod
from skydns.forward import Forwarder
from skydns.metrics import Metrics
from skydns.resolver import Resolver
from skydns.server import QueryHandler
from skydns.wire import WireCache
from test_udp_queue import Turns


@pytest.fixture
def parts():
    upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    upstream.bind(("127.0.0.1", 0))
    upstream.settimeout(2)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.settimeout(2)
    authority = te.authority_for("cluster")
    config = dataclasses.replace(authority.config, rtimeout=0.05,
                                 nameservers=["127.0.0.1:%d" % upstream.getsockname()[1]])
    turns = Turns()
    forwarder = Forwarder(turns, config)
    resolver = Resolver(config, authority.store, authority, forwarder, Metrics())
    handler = QueryHandler(resolver, WireCache(), resolver.metrics, config)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    relay = relay_mod.UDPRelay(turns, resolver, forwarder, resolver.metrics, sender.sendto)
    handler.relay = relay
    yield handler, relay, upstream, client
    relay.stop()
    for sock in (upstream, client, sender):
        sock.close()


def ask(handler, client, name, qid):
    query = dns.message.make_query(name, "A")
    query.id = qid
    taken = handler.handle(query.to_wire(), tcp=False, addr=client.getsockname())
    assert taken is None  # the relay took it: it answers the client itself
    return query


def answer_upstream(relay, upstream, address="192.0.2.7"):
    """Read one forwarded query, answer it, and let the relay read the reply."""
    data, source = upstream.recvfrom(65535)
    query = dns.message.from_wire(data)
    response = dns.message.make_response(query)
    response.flags &= ~dns.flags.RA
    response.answer.append(dns.rrset.from_text(query.question[0].name, 300, "IN", "A",
                                               address))
    upstream.sendto(response.to_wire(), source)
    socks = [s for pool in relay.pools.values() for s in pool]
    ready, _, _ = select.select(socks, [], [], 2)
    for sock in ready:
        sock.doRead()
    return query


def live_queries():
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, relay_mod._Query)]


def test_answered_queries_are_not_kept(parts):
    handler, relay, upstream, client = parts
    for i in range(20):
        ask(handler, client, f"n{i}.example.com.", 1000 + i)
        answer_upstream(relay, upstream)
        reply = dns.message.from_wire(client.recv(65535))
        assert reply.id == 1000 + i and reply.rcode() == dns.rcode.NOERROR
        assert reply.flags & dns.flags.RA
        assert reply.answer[0][0].address == "192.0.2.7"
    assert not relay.in_flight
    assert live_queries() == []  # nothing answered is held until its -rtimeout is up
    assert len(handler.resolver.rcache) == 20


def test_identical_queries_share_one_upstream_query(parts):
    handler, relay, upstream, client = parts
    ask(handler, client, "same.example.com.", 1)
    ask(handler, client, "SAME.example.com.", 2)
    answer_upstream(relay, upstream)
    got = {}
    for _ in range(2):
        reply = dns.message.from_wire(client.recv(65535))
        got[reply.id] = reply.question[0].name.to_text()
    assert got == {1: "same.example.com.", 2: "SAME.example.com."}  # each its spelling
    upstream.settimeout(0.1)
    with pytest.raises(socket.timeout):
        upstream.recv(65535)  # only one query went upstream
    assert relay.resolver.events["coalesced"] == 1


def test_timed_out_query_fails_after_the_sweep_and_is_released(parts):
    handler, relay, upstream, client = parts
    ask(handler, client, "silent.example.com.", 9)
    upstream.recv(65535)  # never answered
    assert relay.in_flight and relay._sweep_call is not None
    deadline = next(iter(relay.in_flight.values())).deadline
    while relay_mod.time.monotonic() < deadline:
        select.select([], [], [], 0.01)
    relay._sweep()
    reply = dns.message.from_wire(client.recv(65535))
    assert reply.id == 9 and reply.rcode() == dns.rcode.SERVFAIL
    assert not relay.in_flight and live_queries() == []


def open_sockets_to(port):
    """UDP sockets (in this network namespace) connected to 127.0.0.1:port."""
    remote = f"0100007F:{port:04X}"
    with open("/proc/net/udp") as fh:
        return sum(1 for line in fh.readlines()[1:] if line.split()[2] == remote)


def test_retired_sockets_with_queries_on_them_count_in_the_pool(parts, monkeypatch):
    """Every socket expires after one query here, and no reply comes: each retires with a
    query on it and stays open. At most POOL_SIZE sockets are open at once all the same
    (before, the pool replaced each at once: one open socket per query outstanding)."""
    handler, relay, upstream, client = parts
    monkeypatch.setattr(relay_mod, "SOCKET_QUERIES", 1)
    port = upstream.getsockname()[1]
    for i in range(3 * relay_mod.POOL_SIZE):
        ask(handler, client, f"r{i}.example.com.", 2000 + i)
        assert open_sockets_to(port) <= relay_mod.POOL_SIZE
    assert open_sockets_to(port) == relay_mod.POOL_SIZE
    assert len(relay.in_flight) == 3 * relay_mod.POOL_SIZE
    # the replies come: each retired socket closes with its last query, and new ones open
    for _ in range(3 * relay_mod.POOL_SIZE):
        data, source = upstream.recvfrom(65535)
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        response.answer.append(dns.rrset.from_text(query.question[0].name, 300, "IN", "A",
                                                   "192.0.2.8"))
        upstream.sendto(response.to_wire(), source)
    socks = [s for pool in relay.pools.values() for s in pool] + \
        [s for retiring in relay.retiring.values() for s in retiring]
    deadline = relay_mod.time.monotonic() + 5
    while relay.in_flight and relay_mod.time.monotonic() < deadline:
        ready, _, _ = select.select([s for s in socks if s.sock.fileno() >= 0], [], [], 0.5)
        for sock in ready:
            sock.doRead()
    assert not relay.in_flight
    assert sorted(dns.message.from_wire(client.recv(65535)).id
                  for _ in range(3 * relay_mod.POOL_SIZE)) == \
        list(range(2000, 2000 + 3 * relay_mod.POOL_SIZE))
    assert not any(relay.retiring.values())
    assert open_sockets_to(port) <= relay_mod.POOL_SIZE
