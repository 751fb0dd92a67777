"""Query semantics: what SkyDNS answers for a name in its domain, computed from the store.

This is the authoritative resolver. It turns (name, type) into an answer, authority and
additional section following SkyDNS's documented behaviour (subdomain queries, wildcards,
CNAME chasing, SRV weights, groups, NXDOMAIN vs NODATA...). It never talks to the network
itself: names outside the domain are looked up through the ``upstream`` callable, which
returns a Deferred, so an answer that needs no upstream is computed synchronously.

Each Result says which names (as key label tuples) it was computed from, so the wire cache
can drop it when a record at or below one of those names changes.
"""

from __future__ import annotations

import time

import dns.flags
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.CNAME import CNAME
from dns.rdtypes.ANY.MX import MX
from dns.rdtypes.ANY.NS import NS
from dns.rdtypes.ANY.PTR import PTR
from dns.rdtypes.ANY.SOA import SOA
from dns.rdtypes.ANY.TXT import TXT
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.AAAA import AAAA
from dns.rdtypes.IN.SRV import SRV
from twisted.internet import defer

from .record import key_to_name

IN = dns.rdataclass.IN
T = dns.rdatatype
MAX_CNAME_DEPTH = 8
WILDCARDS = ("*", "any")


class Result:
    """An authoritative answer before it is rendered to a message."""

    __slots__ = ("rcode", "aa", "answer", "authority", "additional", "cacheable", "deps",
                 "system")

    def __init__(self, system="auth"):
        self.rcode = dns.rcode.NOERROR
        self.aa = True
        self.answer = []        # (owner Name, rdtype, ttl, rdata)
        self.authority = []
        self.additional = []
        self.cacheable = True   # False when leases, upstream data or wildcards are involved
        self.deps = set()       # key label tuples this answer was computed from
        self.system = system

    @staticmethod
    def rrsets(records):
        """Group (owner, type, ttl, rdata) into RRsets, keeping first-seen order."""
        sets = {}
        for owner, rdtype, ttl, rdata in records:
            key = (owner.canonicalize(), rdtype)
            rrset = sets.get(key)
            if rdtype == T.CNAME and rrset is not None:
                continue  # RFC 2181 10.1: one CNAME per owner name; the first one stays
            if rrset is None:
                rrset = sets[key] = dns.rrset.RRset(owner, IN, rdtype)
            rrset.add(rdata, ttl)
        return list(sets.values())


def labels_of(name: dns.name.Name) -> tuple:
    """Key labels (root-most first, lower-case) of an absolute name."""
    return tuple(label.decode("ascii", "backslashreplace").lower()
                 for label in reversed(name.labels[:-1]))


def split_txt(text: str) -> list[bytes]:
    """TXT character-strings hold at most 255 bytes: split longer text."""
    data = text.encode("utf-8")
    return [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]


def attribute_name(labels) -> bool:
    """At or below an underscore label (``_http._tcp.<svc>``: RFC 8552 attribute leaves),
    which answer only SRV and TXT."""
    return any(label.startswith("_") for label in labels)


def hourly_serial(now: float) -> int:
    """SOA serial: the Unix time truncated to the hour (SkyDNS's), as an unsigned 32 bits."""
    return int(now) // 3600 * 3600 & 0xFFFFFFFF


def strip_labels(name: str, count: int) -> str:
    """Drop ``count`` leftmost labels (SkyDNS's targetstrip); ignored if too many."""
    if count <= 0:
        return name
    labels = name.rstrip(".").split(".")
    if count >= len(labels):
        return name
    return ".".join(labels[count:]) + "."


class NameNotFound(Exception):
    """No key exists at or below the name (NXDOMAIN)."""


class Authority:
    """Answers for names inside the configured domain, from a RecordStore."""

    def __init__(self, store, config, upstream=None, clock=time.time):
        self.store = store
        self.config = config
        self.upstream = upstream  # f(Name, rdtype) -> Deferred[list of (owner, type, ttl, rdata)]
        self.clock = clock

    # -- helpers -------------------------------------------------------------------------

    @property
    def domain(self) -> dns.name.Name:
        return self.config.domain_name

    def in_domain(self, name: dns.name.Name) -> bool:
        return name.is_subdomain(self.domain)

    def ttl(self, record, result) -> int:
        ttl = record.ttl or self.config.ttl
        if record.lease:
            result.cacheable = False
            remaining = self.store.remaining_lease(record.lease)
            if remaining is not None:
                ttl = min(ttl, remaining) if record.ttl else remaining
        return ttl

    def records(self, labels, result, srv=False, group=True):
        """Records at and below ``labels`` (wildcards allowed), deduplicated and grouped.

        Returns None when the name does not exist. Without ``srv``, records below an
        underscore label are left out (they are SRV data).
        """
        if any(label in WILDCARDS for label in labels):
            result.cacheable = False
        result.deps.add(labels)
        nodes = self.store.match(labels, WILDCARDS)
        if not nodes:
            return None
        seen = set()
        records = []
        for node in nodes:
            for _, record in self.store.subtree(node, skip_underscore=not srv):
                identity = record.identity()
                if identity in seen:
                    continue
                seen.add(identity)
                records.append(record)
        return self.group(records) if group else records

    @staticmethod
    def group(records):
        """The group of the shallowest record that has one decides; ungrouped records stay."""
        chosen, depth = None, None
        for record in records:
            if record.group and (depth is None or record.depth < depth):
                chosen, depth = record.group, record.depth
        if chosen is None:
            return records
        return [r for r in records if not r.group or r.group == chosen]

    def soa(self):
        domain = self.domain
        rdata = SOA(IN, T.SOA, dns.name.from_text("ns.dns", domain),
                    self.config.hostmaster_name, hourly_serial(self.clock()), 28800, 7200,
                    604800, self.config.min_ttl)
        return domain, rdata

    def negative(self, result, nxdomain):
        result.rcode = dns.rcode.NXDOMAIN if nxdomain else dns.rcode.NOERROR
        result.answer = []
        owner, rdata = self.soa()
        result.authority = [(owner, T.SOA, self.config.min_ttl, rdata)]
        return result

    # -- entry point ---------------------------------------------------------------------

    @defer.inlineCallbacks
    def query(self, qname: dns.name.Name, qtype: int):
        """Answer (qname, qtype) for a name in the domain; a Deferred firing with a Result."""
        result = Result()
        lookup = qname
        if qname == self.config.local_dns_name and self.config.local:
            lookup = dns.name.from_text(self.config.local)
        labels = labels_of(lookup)
        apex = qname == self.domain
        if attribute_name(labels) and qtype not in (T.SRV, T.TXT):
            # Answered like a type the name does not have (NODATA), not with a CNAME to the
            # SRV target: qname-minimising resolvers ask `_http._tcp.<svc> A` first and
            # would apply that CNAME to the SRV question.
            qtype = None
        try:
            if qtype in (T.A, T.AAAA):
                records = yield self.address_records(qname, lookup, qtype, result, ())
            elif qtype == T.SOA and apex:
                owner, rdata = self.soa()
                records = [(qname, T.SOA, self.config.ttl, rdata)]
            elif qtype == T.NS and apex:
                records = self.ns_records(qname, result)
            elif qtype == T.TXT:
                records = self.txt_records(qname, labels, result)
            elif qtype == T.CNAME:
                records = self.cname_records(qname, labels, result)
            elif qtype == T.MX:
                records = yield self.mx_records(qname, labels, result)
            elif qtype == T.SRV:
                records = yield self.srv_records(qname, labels, result)
            else:
                if not apex and self.records(labels, result, srv=True) is None:
                    raise NameNotFound()
                records = []
        except NameNotFound:
            if apex:
                return self.negative(result, nxdomain=False)
            return self.negative(result, nxdomain=True)
        if not records:
            return self.negative(result, nxdomain=False)
        result.answer = self.finish_answer(records)
        return result

    def finish_answer(self, records):
        """Remove identical records; with several, lower every TTL to the smallest."""
        seen = set()
        unique = []
        for owner, rdtype, ttl, rdata in records:
            key = (owner.canonicalize(), rdtype, rdata)
            if key in seen:
                continue
            seen.add(key)
            unique.append((owner, rdtype, ttl, rdata))
        if len(unique) > 1:
            low = min(min(r[2] for r in unique), self.config.ttl)
            unique = [(o, t, low, d) for o, t, _, d in unique]
        return unique

    # -- record kinds --------------------------------------------------------------------

    @defer.inlineCallbacks
    def address_records(self, owner, lookup, qtype, result, previous):
        """A/AAAA for ``lookup``, owned by ``owner``; name hosts become chased CNAMEs."""
        labels = labels_of(lookup)
        records = self.records(labels, result)
        if records is None:
            raise NameNotFound()
        if attribute_name(labels):
            return []  # a chase into an SRV attribute name finds no addresses
        out = []
        cname_owner = False  # at most one CNAME for this owner (RFC 2181 10.1)
        want_family = 4 if qtype == T.A else 6
        owner_text = owner.to_text().lower()
        for record in records:
            if record.ip is not None:
                if record.family == want_family:
                    rdclass = A if want_family == 4 else AAAA
                    out.append((owner, qtype, self.ttl(record, result),
                                rdclass(IN, qtype, str(record.ip))))
                continue
            target_text = record.target
            if target_text is None or target_text == owner_text or cname_owner:
                continue
            chain = previous + (owner_text,)
            if len(chain) > MAX_CNAME_DEPTH or target_text in chain:
                continue  # too deep, or a loop
            target = dns.name.from_text(target_text)
            cname = (owner, T.CNAME, self.ttl(record, result), CNAME(IN, T.CNAME, target))
            if self.in_domain(target):
                try:
                    chased = yield self.address_records(
                        target, target, qtype, result, chain)
                except NameNotFound:
                    continue
                if chased:
                    out.append(cname)
                    out.extend(chased)
                    cname_owner = True
                continue
            external = yield self.lookup_upstream(target, qtype, result)
            if external is not None:
                out.append(cname)
                out.extend(external)
                cname_owner = True
        return out

    @defer.inlineCallbacks
    def lookup_upstream(self, name, qtype, result):
        """Upstream answer records for an out-of-domain name, or None if that failed."""
        result.cacheable = False
        if self.upstream is None:
            return None
        try:
            records = yield self.upstream(name, qtype)
        except Exception:
            return None
        return records

    def weights(self, records):
        totals = {}
        for record in records:
            priority = record.priority or self.config.priority
            totals[priority] = totals.get(priority, 0) + (record.weight or 100)
        return totals

    @defer.inlineCallbacks
    def srv_records(self, qname, labels, result):
        records = self.records(labels, result, srv=True)
        if records is None:
            raise NameNotFound()
        records = [r for r in records if r.ip is not None or r.target is not None]
        totals = self.weights(records)
        out = []
        looked_up = set()
        for record in records:
            priority = record.priority or self.config.priority
            weight = 100 * (record.weight or 100) // totals[priority]
            ttl = self.ttl(record, result)
            if record.ip is not None:
                target = strip_labels(key_to_name(record.key, self.config.path_prefix),
                                      record.targetstrip)
            else:
                target = strip_labels(record.target, record.targetstrip)
            target_name = dns.name.from_text(target)
            out.append((qname, T.SRV, ttl,
                        SRV(IN, T.SRV, priority, weight, record.port, target_name)))
            if record.ip is not None:
                result.additional.append(self.glue(target_name, record, ttl))
                continue
            if target in looked_up:
                continue
            looked_up.add(target)
            extra = yield self.target_addresses(target_name, result)
            result.additional.extend(extra)
        return out

    def glue(self, name, record, ttl):
        if record.family == 4:
            return (name, T.A, ttl, A(IN, T.A, str(record.ip)))
        return (name, T.AAAA, ttl, AAAA(IN, T.AAAA, str(record.ip)))

    @defer.inlineCallbacks
    def target_addresses(self, target, result):
        """A and AAAA (with CNAMEs) for an SRV/MX target, in-domain or upstream."""
        extra = []
        for qtype in (T.A, T.AAAA):
            if self.in_domain(target):
                try:
                    found = yield self.address_records(target, target, qtype, result, ())
                except NameNotFound:
                    found = []
            else:
                found = yield self.lookup_upstream(target, qtype, result)
            extra.extend(found or [])
        return extra

    @defer.inlineCallbacks
    def mx_records(self, qname, labels, result):
        records = self.records(labels, result, group=False)
        if records is None:
            raise NameNotFound()
        out = []
        looked_up = set()
        for record in records:
            if not record.mail or (record.ip is None and record.target is None):
                continue
            preference = record.priority or self.config.priority
            ttl = self.ttl(record, result)
            if record.ip is not None:
                target = dns.name.from_text(key_to_name(record.key, self.config.path_prefix))
                result.additional.append(self.glue(target, record, ttl))
            else:
                target = dns.name.from_text(record.target)
                if record.target not in looked_up:
                    looked_up.add(record.target)
                    extra = yield self.target_addresses(target, result)
                    result.additional.extend(extra)
            out.append((qname, T.MX, ttl, MX(IN, T.MX, preference, target)))
        return out

    def txt_records(self, qname, labels, result):
        records = self.records(labels, result)
        if records is None:
            raise NameNotFound()
        return [(qname, T.TXT, self.ttl(r, result), TXT(IN, T.TXT, split_txt(r.text)))
                for r in records if r.text]

    def cname_records(self, qname, labels, result):
        """CNAME looks at the exact key only and answers only a name host."""
        if any(label in WILDCARDS for label in labels):
            result.cacheable = False
        result.deps.add(labels)
        node = self.store.node(labels)
        if node is None:
            raise NameNotFound()
        record = node.record
        if record is None or record.target is None:
            return []
        return [(qname, T.CNAME, self.ttl(record, result),
                 CNAME(IN, T.CNAME, dns.name.from_text(record.target)))]

    def ns_records(self, qname, result):
        """NS at the apex: the names of the records under ns.dns.<domain>, with glue."""
        ns_name = dns.name.from_text("ns.dns", self.domain)
        records = self.records(labels_of(ns_name), result, srv=True, group=False) or []
        out = []
        for record in records:
            if record.ip is None:
                continue
            target = dns.name.from_text(key_to_name(record.key, self.config.path_prefix))
            ttl = self.ttl(record, result)
            out.append((qname, T.NS, ttl, NS(IN, T.NS, target)))
            result.additional.append(self.glue(target, record, ttl))
        return out

    def ptr_record(self, qname, result):
        """PTR from /<prefix>/arpa/...: exact key, the host is the target. None if absent."""
        result.aa = False
        result.system = "reverse"
        labels = labels_of(qname)
        result.deps.add(labels)
        record = self.store.exact(labels)
        if record is None or record.target is None:
            return None
        result.answer = [(qname, T.PTR, self.ttl(record, result),
                          PTR(IN, T.PTR, dns.name.from_text(record.target)))]
        return result

    # -- for DNSSEC denial ---------------------------------------------------------------

    def closest_encloser(self, qname: dns.name.Name) -> dns.name.Name:
        name = qname
        while name != self.domain and len(name) > 1:
            if self.store.node(labels_of(name)) is not None:
                return name
            name = name.parent()
        return self.domain

    def types_at(self, qname: dns.name.Name) -> set:
        """The types a name answers, for the NSEC3 type bitmap of a NODATA proof."""
        types = set()
        if qname == self.domain:
            types |= {T.SOA, T.NS, T.DNSKEY, T.NSEC3PARAM}
        node = self.store.node(labels_of(qname))
        if node is None:
            return types
        for rel, record in self.store.subtree(node):
            underscore = any(label.startswith("_") for label in rel)
            if record.family == 4 and not underscore:
                types.add(T.A)
            elif record.family == 6 and not underscore:
                types.add(T.AAAA)
            elif record.target and not underscore:
                types.add(T.CNAME)
            if record.text and not underscore:
                types.add(T.TXT)
            if record.mail and not underscore:
                types.add(T.MX)
            if record.host:
                types.add(T.SRV)
        return types
