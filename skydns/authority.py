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

import socket

import dns.exception
import dns.name
import dns.rcode
import dns.rdatatype
from twisted.internet import defer

from . import encoder
from .forward import ForwardError
from .record import dashed_ip, key_to_name

T = dns.rdatatype
MAX_CNAME_DEPTH = 8
WILDCARDS = ("*", "any")


class Result:
    """An authoritative answer before it is rendered: records are ``encoder`` tuples
    (owner text, rdtype, ttl, data), rendered to bytes directly or through dnspython."""

    __slots__ = ("rcode", "aa", "answer", "authority", "additional", "cacheable", "deps",
                 "system")

    def __init__(self, system="auth"):
        self.rcode = dns.rcode.NOERROR
        self.aa = True
        self.answer = []        # (owner text, rdtype, ttl, data)
        self.authority = []
        self.additional = []
        self.cacheable = True   # False when leases or upstream data are involved
        self.deps = set()       # key label tuples this answer was computed from
        self.system = system

    rrsets = staticmethod(encoder.rrsets)


def labels_of(name: dns.name.Name) -> tuple:
    """Key labels (root-most first, lower-case) of an absolute name."""
    return tuple(label.decode("ascii", "backslashreplace").lower()
                 for label in reversed(name.labels[:-1]))


def text_labels(text: str) -> tuple:
    """Key labels of a lower-case absolute name in text (record hosts: plain labels)."""
    return tuple(reversed(text[:-1].split("."))) if text != "." else ()


def name_text(name: dns.name.Name) -> str:
    """The lower-case absolute text the semantics use for a dnspython name."""
    return name.to_text().lower()


def packed(record) -> bytes:
    """A record's address as A/AAAA data."""
    return record.ip.packed


def split_txt(text: str) -> tuple:
    """TXT character-strings hold at most 255 bytes: split longer text."""
    data = text.encode("utf-8")
    return tuple(data[i:i + 255] for i in range(0, len(data), 255)) or (b"",)


def attribute_name(labels) -> bool:
    """At or below an underscore label (``_http._tcp.<svc>``: RFC 8552 attribute leaves),
    which answer only SRV and TXT."""
    return any(label.startswith("_") for label in labels)


def address_alias(record) -> bool:
    """Whether a record's key is named by its own address, dashed (``.../10-244-1-10`` for
    10.244.1.10, as kube2sky names a headless endpoint the way CoreDNS answers it, beside
    its hashed name). Of duplicate records, such a name yields to any other as the SRV/MX
    target: it says no more than the address, and the other name is the one answers used
    before the alias existed."""
    if record.ip is None:
        return False
    return record.key[record.key.rfind("/") + 1:].lower() == dashed_ip(record.ip)


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
    """Answers for names inside the configured domain, from a RecordStore.

    Names are lower-case absolute text (``web.ns.svc.cluster.local.``) with their key
    labels beside them, and records are ``encoder`` tuples, so that an answer is computed
    without building dnspython objects (see ``encoder``).
    """

    def __init__(self, store, config, upstream=None, clock=time.time):
        self.store = store
        self.config = config
        self.upstream = upstream  # f(Name, rdtype) -> Deferred[list of (owner, type, ttl, rdata)]
        self.clock = clock

    def reconfigure(self, config):
        """Read per query: nothing is derived from it."""
        self.config = config

    # -- helpers -------------------------------------------------------------------------

    @property
    def domain(self) -> dns.name.Name:
        return self.config.domain_name

    def in_domain(self, text: str) -> bool:
        domain = self.config.domain_text
        return text == domain or text.endswith("." + domain)

    def ttl(self, record) -> int:
        """A record's TTL now: its own (or -ttl), its zone's (-zone-ttl), capped by what
        is left of its etcd lease."""
        ttl, fixed = record.ttl or self.config.ttl, record.ttl
        if self.config.zone_ttls:
            zone = self.zone_of_key(record.key)
            if zone is not None:
                ttl = fixed = zone.ttl
        if record.lease:
            remaining = self.store.remaining_lease(record.lease)
            if remaining is not None:
                ttl = min(ttl, remaining) if fixed else remaining
        return ttl

    def answer_ttl(self, record, result) -> int:
        """The TTL of a record that goes into ``result``. A leased record's TTL runs down
        with its lease, so an answer holding one is not kept (``result.cacheable``)."""
        if record.lease:
            result.cacheable = False
        return self.ttl(record)

    def zone_of_key(self, key: str):
        """The closest ``-zone-ttl`` zone holding an etcd key, or None."""
        key = key.lower()
        for zone in self.config.zone_ttls:
            prefix = zone.key_prefix
            if key.startswith(prefix) and (len(key) == len(prefix) or key[len(prefix)] == "/"):
                return zone
        return None

    def zone_of_name(self, name: str):
        """The closest ``-zone-ttl`` zone holding a name (lower-case absolute text)."""
        for zone in self.config.zone_ttls:
            if name == zone.name or name.endswith("." + zone.name):
                return zone
        return None

    def negative_ttl(self, name: str) -> int:
        """TTL and minimum of the SOA in a negative answer for ``name``: its zone's
        (``-zone-ttl``), else ``-min-ttl``."""
        zone = self.zone_of_name(name) if self.config.zone_ttls else None
        return self.config.min_ttl if zone is None else zone.negative

    def record_name(self, record) -> str:
        """The DNS name of a record's own key (SRV/MX/NS targets of address records)."""
        name = record.name
        if name is None:
            name = record.name = key_to_name(record.key, self.config.path_prefix)
        return name

    def depend(self, labels, result, found: bool):
        """Record what an answer was computed from, for the wire cache's invalidation (a
        change at a key drops the answers registered at that key and at its ancestors).
        A wildcard answer depends on everything below the labels before the first
        wildcard; an answer that found nothing on the deepest ancestor that exists, so
        that a flood of unique names shares one entry there instead of one each."""
        for i, label in enumerate(labels):
            if label in WILDCARDS:
                labels = labels[:i]
                break
        if not found:
            labels = labels[:self.store.existing_depth(labels)]
        result.deps.add(labels)

    # Which records at and below a name (wildcards allowed) each answer reads. All raise
    # NameNotFound when the name does not exist.

    def records(self, labels, result):
        """A and AAAA answers (with the CNAMEs they chase) and TXT: of one group, without
        SRV data (records below an underscore label)."""
        return self.lookup(labels, result, srv_data=False, grouped=True)

    def srv_data(self, labels, result):
        """SRV answers, and whether a name exists at all: of one group, SRV data too."""
        return self.lookup(labels, result, srv_data=True, grouped=True)

    def mail_hosts(self, labels, result):
        """MX answers: every group (SkyDNS's), without SRV data."""
        return self.lookup(labels, result, srv_data=False, grouped=False)

    def name_servers(self, labels, result):
        """The apex's NS answer, from ns.dns.<domain>: every record, of every group."""
        return self.lookup(labels, result, srv_data=True, grouped=False)

    def lookup(self, labels, result, srv_data: bool, grouped: bool):
        """Records at and below ``labels``, deduplicated; those below an underscore label
        only with ``srv_data``; of the chosen group only (``group``) when ``grouped``."""
        nodes = self.store.match(labels, WILDCARDS)
        self.depend(labels, result, bool(nodes))
        if not nodes:
            raise NameNotFound()
        seen = {}  # identity -> index in records
        records = []
        for found_labels, node in nodes:
            for _, record in self.store.subtree(node, found_labels,
                                                skip_underscore=not srv_data):
                identity = record.identity()
                index = seen.get(identity)
                if index is None:
                    seen[identity] = len(records)
                    records.append(record)
                elif address_alias(records[index]) and not address_alias(record):
                    records[index] = record  # the other name of that address is the target
        return self.group(records) if grouped else records

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

    def soa(self, minimum=None):
        """(owner, data) of the zone's SOA; the serial changes hourly (SkyDNS's). Its
        minimum is ``-min-ttl`` unless given (a negative answer's, see negative_ttl)."""
        config = self.config
        return config.domain_text, ("ns.dns." + config.domain_text, config.hostmaster_text,
                                    hourly_serial(self.clock()), 28800, 7200, 604800,
                                    config.min_ttl if minimum is None else minimum)

    def negative(self, result, nxdomain, qname):
        result.rcode = dns.rcode.NXDOMAIN if nxdomain else dns.rcode.NOERROR
        result.answer = []
        ttl = self.negative_ttl(qname)
        owner, data = self.soa(ttl)
        result.authority = [(owner, T.SOA, ttl, data)]
        return result

    # -- entry point ---------------------------------------------------------------------

    @defer.inlineCallbacks
    def query(self, qname: str, labels: tuple, qtype: int):
        """Answer (qname, qtype) for a name in the domain; a Deferred firing with a Result.

        The record kinds below are generators run with ``yield from`` inside this one
        ``inlineCallbacks``: they yield only the Deferreds of upstream lookups, so an
        answer from the store alone is computed synchronously in one call.

        ``qname`` is the lower-case absolute text of the name asked, ``labels`` its key
        labels (``text_labels``, or ``labels_of`` for a name with unusual characters).
        """
        result = Result()
        lookup, lookup_labels = qname, labels
        config = self.config
        if config.local and qname == config.local_dns_text:
            lookup = name_text(dns.name.from_text(config.local))
            lookup_labels = text_labels(lookup)
        apex = qname == config.domain_text
        if attribute_name(labels) and qtype not in (T.SRV, T.TXT):
            # Answered like a type the name does not have (NODATA), not with a CNAME to the
            # SRV target: qname-minimising resolvers ask `_http._tcp.<svc> A` first and
            # would apply that CNAME to the SRV question.
            qtype = None
        try:
            if qtype in (T.A, T.AAAA):
                records = yield from self.address_records(qname, lookup, lookup_labels, qtype,
                                                     result, ())
            elif qtype == T.SOA and apex:
                zone = self.zone_of_name(qname) if config.zone_ttls else None
                if zone is None:
                    owner, data = self.soa()
                    records = [(qname, T.SOA, config.ttl, data)]
                else:
                    owner, data = self.soa(zone.negative)
                    records = [(qname, T.SOA, zone.ttl, data)]
            elif qtype == T.NS and apex:
                records = self.ns_records(qname, result)
            elif qtype == T.TXT:
                records = self.txt_records(qname, lookup_labels, result)
            elif qtype == T.CNAME:
                records = self.cname_records(qname, lookup_labels, result)
            elif qtype == T.MX:
                records = yield from self.mx_records(qname, lookup_labels, result)
            elif qtype == T.SRV:
                records = yield from self.srv_records(qname, lookup_labels, result)
            else:
                if not apex:
                    self.srv_data(lookup_labels, result)  # NXDOMAIN or NODATA
                records = []
        except NameNotFound:
            return self.negative(result, not apex, qname)
        if not records:
            return self.negative(result, False, qname)
        result.answer = self.finish_answer(records)
        return result

    def finish_answer(self, records):
        """Remove identical records; with several, lower every TTL to the smallest."""
        seen = set()
        unique = []
        for record in records:
            owner, rdtype, _ttl, data = record
            if (owner, rdtype, data) in seen:
                continue
            seen.add((owner, rdtype, data))
            unique.append(record)
        if len(unique) > 1:
            low = min(min(ttl for _, _, ttl, _ in unique), self.config.ttl)
            unique = [(owner, rdtype, low, data) for owner, rdtype, _, data in unique]
        return unique

    # -- record kinds --------------------------------------------------------------------

    def address_records(self, owner, lookup, labels, qtype, result, previous):
        """A/AAAA for ``lookup``, owned by ``owner``; name hosts become chased CNAMEs."""
        records = self.records(labels, result)
        if attribute_name(labels):
            return []  # a chase into an SRV attribute name finds no addresses
        out = []
        cname_owner = False  # at most one CNAME for this owner (RFC 2181 10.1)
        want_family = 4 if qtype == T.A else 6
        for record in records:
            if record.ip is not None:
                if record.family == want_family:
                    out.append((owner, qtype, self.answer_ttl(record, result), record.ip.packed))
                continue
            target = record.target
            if target is None or target == owner or cname_owner:
                continue
            chain = previous + (owner,)
            if len(chain) > MAX_CNAME_DEPTH or target in chain:
                continue  # too deep, or a loop
            cname = (owner, T.CNAME, self.answer_ttl(record, result), target)
            if self.in_domain(target):
                try:
                    chased = yield from self.address_records(
                        target, target, text_labels(target), qtype, result, chain)
                except NameNotFound:
                    continue
                if chased:
                    out.append(cname)
                    out.extend(chased)
                    cname_owner = True
                continue
            external = yield from self.lookup_upstream(target, qtype, result)
            if external is not None:
                out.append(cname)
                out.extend(external)
                cname_owner = True
        return out

    def lookup_upstream(self, name, qtype, result):
        """Upstream answer records for an out-of-domain name (as ``encoder`` tuples: the
        address and CNAME records of the answer), or None if that failed."""
        result.cacheable = False
        if self.upstream is None:
            return None
        try:
            records = yield self.upstream(dns.name.from_text(name), qtype)
        except (ForwardError, dns.exception.DNSException):
            return None  # upstream failed or sent nonsense: the answer goes without it
        return [light for light in map(upstream_record, records) if light is not None]

    def weights(self, records):
        totals = {}
        for record in records:
            priority = record.priority or self.config.priority
            totals[priority] = totals.get(priority, 0) + (record.weight or 100)
        return totals

    def srv_records(self, qname, labels, result):
        records = self.srv_data(labels, result)
        records = [r for r in records if r.ip is not None or r.target is not None]
        totals = self.weights(records)
        out = []
        looked_up = set()
        for record in records:
            priority = record.priority or self.config.priority
            weight = 100 * (record.weight or 100) // totals[priority]
            ttl = self.answer_ttl(record, result)
            if record.ip is not None:
                target = strip_labels(self.record_name(record), record.targetstrip)
            else:
                target = strip_labels(record.target, record.targetstrip)
            out.append((qname, T.SRV, ttl, (priority, weight, record.port, target)))
            yield from self.target_and_glue(record, target, ttl, result, looked_up)
        return out

    @staticmethod
    def glue(name, record, ttl):
        return (name, T.A if record.family == 4 else T.AAAA, ttl, record.ip.packed)

    def target_and_glue(self, record, target, ttl, result, looked_up: set):
        """The additional records for an SRV or MX target: the record's own address as
        glue when it has one, else the target's addresses (once per target)."""
        if record.ip is not None:
            result.additional.append(self.glue(target, record, ttl))
        elif target not in looked_up:
            looked_up.add(target)
            extra = yield from self.target_addresses(target, result)
            result.additional.extend(extra)

    def target_addresses(self, target, result):
        """A and AAAA (with CNAMEs) for an SRV/MX target, in-domain or upstream."""
        extra = []
        for qtype in (T.A, T.AAAA):
            if self.in_domain(target):
                try:
                    found = yield from self.address_records(target, target, text_labels(target),
                                                       qtype, result, ())
                except NameNotFound:
                    found = []
            else:
                found = yield from self.lookup_upstream(target, qtype, result)
            extra.extend(found or [])
        return extra

    def mx_records(self, qname, labels, result):
        records = self.mail_hosts(labels, result)
        out = []
        looked_up = set()
        for record in records:
            if not record.mail or (record.ip is None and record.target is None):
                continue
            preference = record.priority or self.config.priority
            ttl = self.answer_ttl(record, result)
            target = self.record_name(record) if record.ip is not None else record.target
            yield from self.target_and_glue(record, target, ttl, result, looked_up)
            out.append((qname, T.MX, ttl, (preference, target)))
        return out

    def txt_records(self, qname, labels, result):
        records = self.records(labels, result)
        return [(qname, T.TXT, self.answer_ttl(r, result), split_txt(r.text))
                for r in records if r.text]

    def cname_records(self, qname, labels, result):
        """CNAME looks at the exact key only and answers only a name host."""
        node = self.store.node(labels)
        self.depend(labels, result, node is not None)
        if node is None:
            raise NameNotFound()
        record = self.store.record_at(node, labels)
        if record is None or record.target is None:
            return []
        return [(qname, T.CNAME, self.answer_ttl(record, result), record.target)]

    def ns_records(self, qname, result):
        """NS at the apex: the names of the records under ns.dns.<domain>, with glue."""
        ns_labels = text_labels("ns.dns." + self.config.domain_text)
        try:
            records = self.name_servers(ns_labels, result)
        except NameNotFound:
            records = []
        out = []
        for record in records:
            if record.ip is None:
                continue
            target = self.record_name(record)
            ttl = self.answer_ttl(record, result)
            out.append((qname, T.NS, ttl, target))
            result.additional.append(self.glue(target, record, ttl))
        return out

    def ptr_record(self, qname: str, labels: tuple, result):
        """PTR from /<prefix>/arpa/...: exact key, the host is the target. None if absent."""
        result.aa = False
        result.system = "reverse"
        record = self.store.exact(labels)
        self.depend(labels, result, record is not None)
        if record is None or record.target is None:
            return None
        result.answer = [(qname, T.PTR, self.answer_ttl(record, result), record.target)]
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
        labels = labels_of(qname)
        node = self.store.node(labels)
        if node is None:
            return types
        for rel, record in self.store.subtree(node, labels):
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


def upstream_record(record):
    """An upstream answer record (owner Name, rdtype, ttl, dnspython rdata) as an
    ``encoder`` tuple; None for types an address chase does not use (e.g. DNAME)."""
    owner, rdtype, ttl, rdata = record
    if rdtype == T.A:
        data = socket.inet_pton(socket.AF_INET, rdata.address)
    elif rdtype == T.AAAA:
        data = socket.inet_pton(socket.AF_INET6, rdata.address)
    elif rdtype == T.CNAME:
        data = name_text(rdata.target)
    else:
        return None
    return (name_text(owner), rdtype, ttl, data)
