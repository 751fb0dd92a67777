"""Wire format: prebuilt answers for the hot path, and rendering with the size rules.

The wire cache maps the bytes of a query after its ID, lower-cased, to the answer's bytes
after the question. Answering a cached query is then: slice, one dict lookup, concatenate
the client's ID and question (so the owner name keeps the client's spelling: every answer
name points at the question by compression), send. Entries are made the first time a query
is answered by the general path and dropped when a record they were computed from changes
(see ``invalidate``), so each answer is computed once per change, not once per query.
"""

from __future__ import annotations

import itertools
import re
import sys

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

ROTATED_TYPES = (dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.SRV)
MAX_VARIANTS = 16
WIDE_ENTRY_BYTES = 64 * 1024  # round-robin rotations kept of a wide answer, in bytes
CACHEABLE_SIZE = 512  # fits any client buffer, so one entry serves UDP and TCP alike
MAX_BYTES = 32 * 1024 * 1024  # the wire cache's default memory budget (-answer-cache-mb)


class Entry:
    """One prebuilt answer of the WireCache. Slots, read by name: as fast as a list's
    indexes in the UDP reader's loop (CPython 3.11 specialises both)."""

    __slots__ = ("header", "qend", "variants", "count", "next", "slot", "deps", "cost")

    def __init__(self, header: bytes, qend: int, variants: tuple, slot, deps: tuple,
                 cost: int):
        self.header = header      # response flags and counts: the 10 bytes after the ID
        self.qend = qend          # where the question ends in the query
        self.variants = variants  # the bytes after the question, one per rotation
        self.count = len(variants)
        self.next = 0             # the rotation served last
        self.slot = slot          # the metrics slot its hits are counted in
        self.deps = deps          # the dependency labels it is registered under
        self.cost = cost          # its memory in bytes (``_cost``)


# What an entry costs besides its key's and answers' bytes: the entry, its variants
# tuple and header, the bytes objects' own headers, a slot in each table and the index.
ENTRY_FIXED = (sys.getsizeof(Entry(b"", 0, (), None, (), 0)) + sys.getsizeof(())
               + sys.getsizeof(b"\0" * 10) + sys.getsizeof(b"") + 2 * 100)
VARIANT_FIXED = sys.getsizeof(b"") + 8  # a variant's bytes object header and tuple slot
# A dependency: its label tuple (the labels themselves are interned, shared by all
# entries) and its share of the index (a slot holding the key; a set when several share
# the labels), as tracemalloc sees a cluster's answers.
DEP_FIXED = sys.getsizeof(("",) * 6) + 8 + 60


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


class Query:
    """The parts of a plain query that the fast path needs, read from its bytes."""

    __slots__ = ("qend", "name", "labels", "qtype", "edns", "payload", "do")

    def __init__(self, qend, name, labels, qtype, edns, payload, do):
        self.qend = qend        # offset just past the question
        self.name = name        # lower-case absolute text
        self.labels = labels    # key labels, root-most first
        self.qtype = qtype
        self.edns = edns        # an OPT record was present
        self.payload = payload  # the client's UDP size (512 without EDNS)
        self.do = do            # DNSSEC OK


# The key lower-cases all of the query for speed, so bytes outside the name that happen to
# be ASCII letters (type 65 is "A", an EDNS size of 0x0441 ends in "A") would collide with
# their lower-case twins. Queries with a letter there are never stored: then no key in the
# table has one, and a query whose lowered key gained one cannot match.
_LETTERS = re.compile(rb"[A-Za-z]")
_PLAIN_NAME = re.compile(rb"[a-z0-9_*\-.]*")
# Meta and pseudo types, left to the general path (ANY is refused there, OPT is no question).
_GENERAL_TYPES = frozenset((0, 41, 251, 252, 253, 254, 255))
_COOKIE = 10


def parse_query(data: bytes) -> Query | None:
    """A Query when ``data`` is a standard query with one IN question of plain labels
    (letters, digits, ``-``, ``_``, ``*``) and nothing else but an OPT record of version 0
    without options or with a well-formed cookie; None for anything else, which the
    general path parses (and, if need be, refuses) with dnspython."""
    n = len(data)
    if n < 17 or data[2] & 0xF8 or data[4:10] != b"\x00\x01\x00\x00\x00\x00":
        return None  # a response, another opcode, or not exactly one question
    arcount = data[10] << 8 | data[11]
    if arcount > 1:
        return None
    raw = []
    pos = 12
    while True:
        if pos >= n:
            return None
        length = data[pos]
        if not length:
            break
        if length > 63:
            return None  # a compression pointer or a reserved label type
        raw.append(data[pos + 1:pos + 1 + length])
        pos += length + 1
    if pos - 11 > 255:
        return None  # longer than a name may be
    qend = pos + 5
    if qend > n or data[pos + 3:pos + 5] != b"\x00\x01":
        return None
    qtype = data[pos + 1] << 8 | data[pos + 2]
    if qtype in _GENERAL_TYPES:
        return None
    joined = b".".join(raw).lower()
    # Plain characters only, and no dot inside a label (the dots are the joins).
    if not _PLAIN_NAME.fullmatch(joined) or joined.count(b".") != len(raw) - 1:
        return None
    if raw:
        name = joined.decode("ascii") + "."
        labels = name[:-1].split(".")
        labels.reverse()
    else:
        name, labels = ".", []
    if not arcount:
        if qend != n:
            return None
        return Query(qend, name, tuple(labels), qtype, False, 512, False)
    end = qend + 11
    if end > n or data[qend:qend + 3] != b"\x00\x00\x29" or data[qend + 6]:
        return None  # not an OPT at the root, or EDNS version above 0
    rdlength = data[qend + 9] << 8 | data[qend + 10]
    if end + rdlength != n:
        return None
    if rdlength and not _cookie_only(data[end:]):
        return None
    payload = data[qend + 3] << 8 | data[qend + 4]
    return Query(qend, name, tuple(labels), qtype, True, payload, bool(data[qend + 7] & 0x80))


def _cookie_only(options: bytes) -> bool:
    """Exactly one option, a DNS cookie of a valid length (RFC 7873: 8, or 16 to 40)."""
    if len(options) < 4 or options[0] << 8 | options[1] != _COOKIE:
        return False
    length = options[2] << 8 | options[3]
    return len(options) == 4 + length and (length == 8 or 16 <= length <= 40)


def is_axfr(data: bytes) -> bool:
    """Whether ``data`` is a query with one question, of type AXFR (252)."""
    if len(data) < 17 or data[2] & 0x80 or data[4:6] != b"\x00\x01":
        return False
    qend = question_end(data)
    return qend > 0 and data[qend - 4:qend - 2] == b"\x00\xfc"


def fast_udp_limit(query: Query, cap: int) -> int:
    """``udp_limit`` for a Query read by ``parse_query``."""
    return max(512, min(query.payload, cap)) if query.edns else 512


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


def _cost(key: bytes, variants, deps) -> int:
    """What an entry holds in memory, roughly: its key, its answers, its dependencies'
    label tuples and index sets, and ENTRY_FIXED."""
    return (len(key) + ENTRY_FIXED + sum(map(len, variants))
            + VARIANT_FIXED * len(variants) + DEP_FIXED * len(deps))


def _oldest(table: dict, size: int) -> list:
    """The oldest eighth of a full table, evicted at once: finding a dict's first key skips
    the slots of every entry deleted before it, so evicting one at a time costs more and
    more as the table ages (a flood of unique names made that a fifth of the time)."""
    return list(itertools.islice(table, max(1, size // 8)))


class WireCache:
    """Prebuilt answers keyed by query bytes; the transports read ``table`` (UDP) and
    ``tcp_table`` directly.

    Each answer is an ``Entry``. One that was rendered whole serves both transports (it
    is in both tables); one cut to fit a UDP limit (additional dropped or truncated with
    TC) only UDP, and a TCP rendering of a wide answer only TCP.

    Bounded: at most ``max_entries`` per table and ``max_bytes`` in all (the oldest eighth
    out when full), and negative answers (NXDOMAIN, NODATA) at most a quarter of the
    entries, so a flood of unique names cycles through its own share instead of evicting
    the answers for names that exist. The byte budget is what keeps memory in a limit: a
    headless service's answer is kept in up to 16 rotations, ~12 KiB, so asking once for
    every name of a cluster with 5,000 headless services of 20 endpoints (15,000
    queries) took 178 MiB when only the entries were counted. An entry leaves its
    dependency index with it.
    """

    def __init__(self, max_entries: int = 100000, max_bytes: int = MAX_BYTES):
        self.max_entries = max_entries
        self.max_negative = max(1, max_entries // 4)
        self.max_bytes = max_bytes
        self.bytes = 0      # the cost (see ``_cost``) of every entry held, each counted once
        self.evicted = 0    # entries that left to make room (not those a change dropped)
        self.evicted_denials = 0  # of those, negative answers (NXDOMAIN, NODATA)
        self.table = {}
        self.tcp_table = {}
        self.negative = {}  # keys of negative answers, oldest first (an ordered set)
        self.deps = {}      # key label tuple -> the table key computed from it (or a set)
        self.recent_misses = set()  # negative answers asked once (see seen_before)
        self.templates = {}  # prebuilt parts of answers (the server's NXDOMAIN tails)

    def __len__(self):
        """Distinct answers (one serving both transports counts once)."""
        table = self.table
        return len(table) + sum(1 for key in self.tcp_table if key not in table)

    def insert(self, query: bytes, responses: list, deps, slot, tcp: bool = False,
               shared: bool = True, negative: bool = False):
        """Store the answer rendered for ``query`` (one response per rotation; those whose
        header differs from the first, e.g. truncated differently, are left out)."""
        qend = question_end(query)
        if qend < 0 or _LETTERS.search(query, 2, 12) or _LETTERS.search(query, qend - 4):
            return
        header = responses[0][2:12]
        question = query[12:qend].lower()
        variants = []
        for wire in responses:
            if wire[12:qend].lower() != question:
                return  # not the same shape: never serve something we did not render
            if wire[2:12] == header:
                variants.append(wire[qend:])
        key = query[2:].lower()
        deps = tuple(deps)
        old = self.table.get(key) or self.tcp_table.get(key)
        if old is not None and old.deps == deps:
            deps = old.deps  # the labels the index holds already, not a second copy
        else:  # one string per label for all entries (a wide SRV answer has ~20 deps)
            deps = tuple(tuple(map(sys.intern, labels)) for labels in deps)
        cost = _cost(key, variants, deps)
        if cost > self.max_bytes:
            return  # bigger than the whole budget: answered by the general path each time
        entry = Entry(header, qend, tuple(variants), slot, deps, cost)
        if shared:
            tables = (self.table, self.tcp_table)
        else:
            tables = (self.tcp_table,) if tcp else (self.table,)
        for table in tables:
            if key not in table and len(table) >= self.max_entries:
                for old in _oldest(table, self.max_entries):
                    self._evict(table, old)
                    self.evicted += 1
            self._put(table, key, entry)
        self.bytes += cost
        if negative:
            self.negative[key] = None
            if len(self.negative) > self.max_negative:
                for old in _oldest(self.negative, self.max_negative):
                    self._drop(old)
        index = self.deps
        for labels in deps:
            keys = index.get(labels)
            if keys is None:
                index[labels] = key  # most labels name one entry: its key, not a set
            elif keys.__class__ is set:
                keys.add(key)
            elif keys != key:
                index[labels] = {keys, key}
        self._make_room()

    def _put(self, table, key, entry):
        """``table[key] = entry``, uncounting the entry it replaces unless the other table
        still holds that one."""
        replaced = table.get(key)
        table[key] = entry
        if replaced is not None and self._other(table).get(key) is not replaced:
            self.bytes -= replaced.cost

    def _other(self, table):
        return self.tcp_table if table is self.table else self.table

    def _make_room(self):
        """Evict the oldest eighth of each table until the entries fit ``max_bytes`` (each
        round removes at least one entry while any is left, so this ends)."""
        while self.bytes > self.max_bytes and (self.table or self.tcp_table):
            for table in (self.table, self.tcp_table):
                for old in _oldest(table, len(table)) if table else ():
                    self._evict(table, old)
                    self.evicted += 1

    def seen_before(self, query: bytes) -> bool:
        """Whether this query's negative answer was asked for recently; notes it if not.
        Negative answers are stored on the second request, so that a flood of names asked
        once each costs one set entry per name (cleared in bulk) instead of an entry."""
        key = query[2:].lower()
        recent = self.recent_misses
        if key in recent:
            recent.discard(key)
            return True
        if len(recent) >= self.max_negative:
            recent.clear()
        recent.add(key)
        return False

    def _evict(self, table, key):
        if key in self.negative:
            self.evicted_denials += 1
        entry = table.pop(key)
        other = self._other(table).get(key)
        if other is not entry:
            self.bytes -= entry.cost
        if other is None:
            self.negative.pop(key, None)
            self._unindex(key, entry)

    def _drop(self, key):
        """Remove ``key`` from both tables and from every index it is in."""
        self.negative.pop(key, None)
        udp = self.table.pop(key, None)
        tcp = self.tcp_table.pop(key, None)
        for entry in (udp, tcp) if tcp is not udp else (udp,):
            if entry is not None:
                self.bytes -= entry.cost
                self._unindex(key, entry)

    def _unindex(self, key, entry):
        deps = self.deps
        for labels in entry.deps:
            keys = deps.get(labels)
            if keys.__class__ is set:
                keys.discard(key)
                if not keys:
                    del deps[labels]
            elif keys == key:
                del deps[labels]

    def invalidate(self, labels: tuple):
        """A record at ``labels`` changed: drop answers for that name and every ancestor."""
        deps = self.deps
        for i in range(len(labels) + 1):
            keys = deps.pop(labels[:i], None)
            if keys is not None:
                for key in keys if keys.__class__ is set else (keys,):
                    self._drop(key)

    def clear(self):
        self.bytes = 0
        self.table.clear()
        self.tcp_table.clear()
        self.negative.clear()
        self.deps.clear()
        self.recent_misses.clear()
        self.templates.clear()

    def answer(self, query: bytes, tcp: bool = False, count: bool = True):
        """The cached reply to ``query`` or None (the same logic the UDP reader inlines),
        counted in the entry's metrics slot (and as TCP, over TCP) unless ``count`` is
        false (a lookup the server makes for itself, see skydns.autopath)."""
        entry = (self.tcp_table if tcp else self.table).get(query[2:].lower())
        if entry is None:
            return None
        n = entry.count
        if n > 1:
            i = entry.next = (entry.next + 1) % n
        else:
            i = 0
        out = query[:2] + entry.header + query[12:entry.qend] + entry.variants[i]
        if not count:
            return out
        slot = entry.slot
        slot[0] += 1
        slot[1] += len(out)
        if tcp:
            slot[2] += 1
        return out
