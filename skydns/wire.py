"""Wire format: prebuilt answers for the hot path, and rendering with the size rules.

The wire cache maps the bytes of a query after its ID, lower-cased, to the answer's bytes
after the question. Answering a cached query is then: slice, one dict lookup, concatenate
the client's ID and question (so the owner name keeps the client's spelling: every answer
name points at the question by compression), send. Entries are made the first time a query
is answered by the general path and dropped when a record they were computed from changes
(see ``invalidate``), so each answer is computed once per change, not once per query.
"""

from __future__ import annotations

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

ROTATED_TYPES = (dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.SRV)
MAX_VARIANTS = 16
CACHEABLE_SIZE = 512  # fits any client buffer, so one entry serves UDP and TCP alike


def question_end(wire: bytes) -> int:
    """Offset just past the single question (qname, qtype, qclass), or -1."""
    pos = 12
    n = len(wire)
    while pos < n:
        length = wire[pos]
        if length == 0:
            end = pos + 5
            return end if end <= n else -1
        if length & 0xC0:
            return -1  # no compression in a question we accept
        pos += length + 1
    return -1


def formerr(wire: bytes) -> bytes | None:
    """FORMERR for a packet whose header can be read (keep ID, opcode, RD), else None."""
    if len(wire) < 12 or wire[2] & 0x80:
        return None
    return wire[:2] + bytes([0x80 | (wire[2] & 0x79), dns.rcode.FORMERR]) + b"\x00" * 8


def udp_limit(request: dns.message.Message, cap: int = 65535) -> int:
    """512 without EDNS0, else the client's advertised size (never below 512), at most
    ``cap``: a small query claiming a 64 KB buffer must not buy a 64 KB reply (DNS Flag
    Day 2020: 1232 bytes avoids fragmentation, and fragments are what spoofers exploit)."""
    if request.edns < 0:
        return 512
    return max(512, min(request.payload, cap))


def truncated(request: dns.message.Message, reply: bytes, payload: int) -> bytes:
    """A relayed reply too big for UDP, cut to its header and question with TC set, so
    the client retries over TCP (what an upstream would have sent for a smaller buffer)."""
    response = dns.message.make_response(request, our_payload=payload)
    response.flags = (reply[2] << 8 | reply[3]) & ~0x000F | dns.flags.TC
    response.set_rcode(reply[3] & 0x0F)
    return to_wire(response)


def to_wire(message: dns.message.Message, limit: int = 65535) -> bytes:
    """Render in the order we built (dnspython shuffles RRsets unless told not to; our
    round robin is deliberate, see ``rotated``)."""
    return message.to_wire(max_size=limit, want_shuffle=False)


def render(response: dns.message.Message, limit: int, tcp: bool) -> bytes:
    """Render within ``limit``: drop the additional section first; then over UDP cut the
    answer to the records that fit and set TC, and over TCP give SERVFAIL rather than a
    partial answer."""
    try:
        return to_wire(response, limit)
    except dns.exception.TooBig:
        pass
    response.additional = []
    try:
        return to_wire(response, limit)
    except dns.exception.TooBig:
        pass
    if tcp:
        response.answer = []
        response.authority = []
        response.set_rcode(dns.rcode.SERVFAIL)
        return to_wire(response, limit)
    return _truncate(response, limit)


def _truncate(response, limit):
    """The longest prefix of the answer records that fits, with TC set (SkyDNS's Fit)."""
    records = [(rrset, rdata) for rrset in response.answer for rdata in rrset]
    response.authority = []
    response.flags |= dns.flags.TC

    def with_first(count):
        sets = []
        for rrset, rdata in records[:count]:
            if not sets or sets[-1][0] is not rrset:
                sets.append((rrset, rrset.copy()))
                sets[-1][1].clear()
            sets[-1][1].add(rdata)
        response.answer = [copy for _, copy in sets]
        return to_wire(response, limit)

    low, high, best = 0, len(records), None
    while low <= high:
        middle = (low + high) // 2
        try:
            wire = with_first(middle)
        except dns.exception.TooBig:
            high = middle - 1
            continue
        best, low = wire, middle + 1
    return best if best is not None else with_first(0)


def rotated(answer, shift: int) -> list:
    """The answer RRsets with the rdata of each A/AAAA/SRV RRset rotated by ``shift``."""
    out = []
    for rrset in answer:
        if rrset.rdtype in ROTATED_TYPES and len(rrset) > 1:
            items = list(rrset)
            k = shift % len(items)
            new = rrset.copy()
            new.clear()
            for rdata in items[k:] + items[:k]:
                new.add(rdata, rrset.ttl)
            out.append(new)
        else:
            out.append(rrset)
    return out


def variant_count(response: dns.message.Message, round_robin: bool) -> int:
    if not round_robin:
        return 1
    sizes = [len(r) for r in response.answer if r.rdtype in ROTATED_TYPES]
    return min(max(sizes, default=1), MAX_VARIANTS)


class WireCache:
    """Prebuilt answers keyed by query bytes; the UDP reader reads ``table`` directly.

    An entry is a list ``[header, question_end, variants, n_variants, next, slot]``:
    response flags and counts (10 bytes), where the question ends in the query, the answer
    bytes after the question (one per round-robin rotation), and the metrics slot.
    """

    def __init__(self, max_entries: int = 100000):
        self.max_entries = max_entries
        self.table = {}
        self.deps = {}   # key label tuple -> set of table keys computed from it

    def __len__(self):
        return len(self.table)

    def insert(self, query: bytes, responses: list, deps, slot):
        """Store the answer rendered for ``query``; all responses share header/question."""
        qend = question_end(query)
        if qend < 0:
            return
        variants = []
        header = responses[0][2:12]
        for wire in responses:
            if wire[2:12] != header or wire[12:qend].lower() != query[12:qend].lower():
                return  # not the same shape: never serve something we did not render
            variants.append(wire[qend:])
        key = query[2:].lower()
        if key not in self.table and len(self.table) >= self.max_entries:
            self.table.pop(next(iter(self.table)))
            if len(self.deps) > 4 * self.max_entries:
                self.clear()
        self.table[key] = [header, qend, tuple(variants), len(variants), 0, slot]
        for labels in deps:
            self.deps.setdefault(labels, set()).add(key)

    def invalidate(self, labels: tuple):
        """A record at ``labels`` changed: drop answers for that name and every ancestor."""
        table, deps = self.table, self.deps
        for i in range(len(labels) + 1):
            keys = deps.pop(labels[:i], None)
            if keys:
                for key in keys:
                    table.pop(key, None)

    def clear(self):
        self.table.clear()
        self.deps.clear()

    def answer(self, query: bytes):
        """The cached reply to ``query`` or None (the same logic the UDP reader inlines)."""
        entry = self.table.get(query[2:].lower())
        if entry is None:
            return None
        n = entry[3]
        if n > 1:
            i = entry[4] = (entry[4] + 1) % n
        else:
            i = 0
        return query[:2] + entry[0] + query[12:entry[1]] + entry[2][i]
