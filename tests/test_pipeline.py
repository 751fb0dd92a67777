"""The query pipeline in process: every row of the semantics table (tests/test_semantics.py)
for skydns.local. and cluster.local. names, through ``QueryHandler.handle`` as the
transports call it (the wire cache first, as the UDP reader and TCP do), on a RecordStore
loaded with the table's records and an upstream that answers from memory. The rows are
checked by the semantics tests' own ``check``, so the same expectations hold without a
process, a socket or etcd.

The end-to-end table stays: it is what shows the transports, the etcd load and watch,
leases counting down, and the names that are forwarded (those need a reactor here).
"""

from __future__ import annotations

import time

import dns.message
import dns.rcode
import pytest
from twisted.internet import defer

import test_semantics as sem
from test_encoder import authority_for
from skydns.forward import Forwarder
from skydns.metrics import Metrics
from skydns.resolver import Resolver
from skydns.server import QueryHandler
from skydns.wire import WireCache

# The table's servers whose flags the in-process config has, and their domains: names
# outside them are forwarded, which needs a reactor.
SERVERS = {"sky": "skydns.local.", "cluster": "cluster.local."}
ROWS = [c for c in sem.CASES + [p.values[0] for p in sem.REGRESSIONS]
        if c.server in SERVERS and c.qname.lower().endswith(SERVERS[c.server])]
HANDLERS = {}


def handler_for(server: str) -> QueryHandler:
    """One handler per server, kept for the module, as one process serves every query."""
    if server not in HANDLERS:
        authority = authority_for(server)  # its upstream: the table's, from memory
        config = authority.config
        resolver = Resolver(config, authority.store, authority, Forwarder(None, config),
                            Metrics())
        HANDLERS[server] = QueryHandler(resolver, WireCache(), resolver.metrics, config)
    return HANDLERS[server]


def ask(handler: QueryHandler, case, tcp: bool) -> dns.message.Message:
    data = dns.message.make_query(case.qname, case.qtype).to_wire()
    out = handler.cache.answer(data, tcp)
    if out is None:
        out = handler.handle(data, tcp=tcp)
        if isinstance(out, defer.Deferred):
            done = []
            out.addBoth(done.append)
            assert done, f"{case.qname} {case.qtype} waits for a reactor"
            out = done[0]
    assert isinstance(out, bytes), out
    return dns.message.from_wire(out, one_rr_per_rrset=True)


def test_the_rows_cover_both_domains():
    servers = {c.server for c in ROWS}
    assert servers == set(SERVERS)
    assert len(ROWS) > 150


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id()) for c in ROWS])
def test_row_through_the_handler(case):
    """UDP three times (computed, then from the wire cache once a denial is asked twice),
    then TCP: each answer as the end-to-end row expects."""
    handler = handler_for(case.server)
    for tcp in (False, False, False, True):
        t0 = time.time()
        message = ask(handler, case, tcp)
        t1 = time.time()
        sem.check(case, message, t0, t1)


def test_cached_rows_are_served_from_the_wire_cache():
    """After the table, asking again hits the wire cache for the rows it keeps: the hot
    path was exercised, not only the general one."""
    hits = 0
    for case in ROWS:
        handler = handler_for(case.server)
        data = dns.message.make_query(case.qname, case.qtype).to_wire()
        if handler.cache.answer(data) is not None:
            hits += 1
    assert hits > len(ROWS) // 2
    assert any(ask(handler_for("cluster"), c, False).rcode() == dns.rcode.NXDOMAIN
               for c in ROWS if c.server == "cluster")
