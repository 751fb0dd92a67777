"""Zone transfer (AXFR, RFC 5936) of the domain to the addresses ``-transfer-to`` allows, as
CoreDNS's ``transfer`` plugin; over TCP (and TLS) only.

What a transfer carries. A SkyDNS name answers for its whole subtree: ``web.default.svc``
gathers the A records of the leaves kube2sky writes below it, and ``svc.<domain>`` every
service's. No zone file can say "everything below", so the transfer carries what skydns
answers at each name that holds a record or has records right below it (a service, a
pod's address name, an SRV name, a headless endpoint), for the types those records give
(A, AAAA, CNAME, TXT, MX, SRV), computed by the same Authority as a query. A secondary then
answers those names as skydns does. Names higher up (a namespace, ``svc.<domain>``), whose
answers are SkyDNS's subdomain gatherings, are not carried, and neither are the records of
other names a CNAME, SRV or MX answer adds. Where skydns answers a CNAME at a name, only
the CNAME is carried there (a zone may hold nothing else beside it). Wildcard keys become
``*`` names, which a secondary applies by DNS's wildcard rule, not SkyDNS's.

The names are listed when the transfer starts and answered 2 ms of work per reactor turn
(so that a cluster's zone does not hold up the queries meanwhile), from the store as it
is then: a record changed during a transfer may or may not be in it, as with any server
that does not snapshot its zone; the SOA serial does not tell (SkyDNS's serial is the
hour). Each message is sent as soon as it is full, and counts as activity for the TCP
idle timeout (a big zone takes longer than it); while the client does not read what was
sent, the transfer waits instead of buffering the zone for it.
"""

from __future__ import annotations

import copy
import logging
import time

import dns.rcode
import dns.rdatatype
from twisted.internet import defer, task

from . import encoder
from .authority import Result, text_labels
from .record import labels_to_name
from .store import Node, leaf

log = logging.getLogger("skydns.transfer")

T = dns.rdatatype
MESSAGE_BYTES = 60000   # a message is sent once it holds about this much (at most 64 KiB)
SLICE = 0.002           # seconds of zone work per reactor turn: what a query may wait


class _Slice:
    """When the cooperator's turn is over (Twisted's default turn is 10 ms)."""

    def __init__(self):
        self.end = time.monotonic() + SLICE

    def __call__(self) -> bool:
        return time.monotonic() >= self.end


COOPERATOR = task.Cooperator(terminationPredicateFactory=_Slice)


def carried_names(store, apex_labels) -> list:
    """The key labels of the names a transfer carries, in key order (see the module
    docstring): each name holding a record, and each whose children are all records or
    SRV data below ``_`` labels (a service and its leaves, a pod's address name); not a
    name with other names below it (a namespace, even one holding an ExternalName
    service's record)."""
    top = store.node(apex_labels)
    if top is None:
        return []
    out = []
    stack = [(tuple(apex_labels), top)]
    while stack:
        labels, node = stack.pop()
        children = node.children
        if node.value is not None or (children and all(
                child.__class__ is not Node or (not child.children and child.value is not None)
                or label.startswith("_") for label, child in children.items())
                and any(child.__class__ is not Node for child in children.values())):
            out.append(labels)
        for label in sorted(children, reverse=True):
            child = children[label]
            if child.__class__ is Node:
                stack.append((labels + (label,), child))
            else:
                out.append(labels + (label,))  # a bare record: a name of its own
    return out


def types_of(store, node, labels, own) -> list:
    """The types to ask at a carried name: those its records and the records right below
    it answer (SkyDNS gathers them), and SRV, which every record answers."""
    records = [own] if own is not None else []
    for label, child in node.children.items():
        if child.__class__ is not Node or child.value is not None:
            record = store.record_at(leaf(child), labels + (label,))
            if record is not None:
                records.append(record)
    types = set()
    for record in records:
        if record.family == 4 or record.target:
            types.add(T.A)
        if record.family == 6 or record.target:
            types.add(T.AAAA)
        if record.text:
            types.add(T.TXT)
        if record.mail:
            types.add(T.MX)
    return sorted(types) + [T.SRV]


def _size(rdtype, data) -> int:
    """At least the wire size of one record's data (names counted uncompressed)."""
    if data.__class__ is bytes:
        return len(data)
    if data.__class__ is str:
        return len(data) + 2
    if data.__class__ is tuple:
        return sum(len(x) + 2 if x.__class__ is str else
                   len(x) + 1 if x.__class__ is bytes else 4 for x in data)
    return 512


class Transfer:
    """Serves one AXFR: ``start`` computes the zone and sends it with ``send(bytes)``,
    in messages rendered by ``encoder`` (compressed, ~60 KB each)."""

    def __init__(self, authority, data: bytes, qend: int, send, wait_writable=None):
        # The same semantics, without the upstream lookups of targets outside the domain:
        # only what a name owns is carried, and every answer is then computed at once.
        self.authority = copy.copy(authority)
        self.authority.upstream = lambda name, rdtype: defer.succeed([])
        self.query_id = data[:2]
        self.flags = 0x8000 | 0x0400 | (data[2] & 0x01) << 8  # QR, AA, RD as asked
        self.question = data[12:qend]
        self.send = send
        self.wait_writable = wait_writable  # None, or a Deferred to wait for (see server)
        self.sets = []   # (owner, rdtype, ttl, datas) of the message being filled
        self.size = 0
        self.records = 0

    def start(self):
        """A Deferred that fires with the number of records sent, once all are."""
        config = self.authority.config
        apex = config.domain_text
        _, soa = self.authority.soa()
        self.soa = (apex, T.SOA, config.ttl, [soa])
        self._add(self.soa)
        for rrset in self._answer(apex, text_labels(apex), T.NS):
            self._add(rrset)
        names = carried_names(self.authority.store, text_labels(apex))
        return COOPERATOR.cooperate(self._work(names)).whenDone().addCallback(self._end)

    def _work(self, names):
        """One name per step; the cooperator runs steps for ``SLICE`` per reactor turn."""
        store = self.authority.store
        for labels in names:
            name = labels_to_name(labels) if labels else "."
            node = store.node(labels)
            if node is None:
                continue  # deleted since the transfer started
            own = store.record_at(node, labels)
            sets = ({s[1]: s for s in self._answer(name, labels, T.CNAME)}
                    if own is not None and own.target else {})
            if not sets:
                for rdtype in types_of(store, node, labels, own):
                    for rrset in self._answer(name, labels, rdtype):
                        sets[rrset[1]] = rrset
                if T.CNAME in sets:
                    sets = {T.CNAME: sets[T.CNAME]}
            for rdtype in sorted(sets):
                self._add(sets[rdtype])
            yield self.wait_writable() if self.wait_writable is not None else None

    def _answer(self, name, labels, rdtype) -> list:
        """The answer RRsets (encoder sets) skydns gives for (name, rdtype) that are
        owned by ``name``."""
        d = self.authority.query(name, labels, rdtype)
        result = []
        d.addBoth(result.append)
        if not result or not isinstance(result[0], Result):
            return []  # failed (a bug: the query path logs such failures)
        answer = result[0]
        if answer.rcode != dns.rcode.NOERROR:
            return []
        return Result.rrsets([r for r in answer.answer if r[0] == name])

    def _add(self, rrset):
        """Add an RRset to the message being filled (sent when full); one too big for a
        message goes in pieces (RFC 5936 lets an RRset span messages)."""
        owner, rdtype, ttl, datas = rrset
        each = len(owner) + 12
        sizes = [each + _size(rdtype, data) for data in datas]
        total = sum(sizes)
        if total > MESSAGE_BYTES // 2 and len(datas) > 1:
            piece, size = [], 0
            for data, data_size in zip(datas, sizes):
                if piece and size + data_size > MESSAGE_BYTES // 2:
                    self._add((owner, rdtype, ttl, piece))
                    piece, size = [], 0
                piece.append(data)
                size += data_size
            self._add((owner, rdtype, ttl, piece))
            return
        if self.sets and self.size + total > MESSAGE_BYTES:
            self._flush()
        self.sets.append(rrset)
        self.records += len(datas)
        self.size += total

    def _flush(self):
        if self.sets:
            self.send(encoder.message(self.query_id, self.flags, self.question, self.sets,
                                      (), (), None, 65535))
        self.sets, self.size = [], 0

    def _end(self, _):
        self._add(self.soa)
        self._flush()
        return self.records
