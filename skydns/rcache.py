"""The response cache for forwarded answers (``-rcache N``), on raw wire bytes.

Authoritative answers never need it (the wire cache holds them and is always current). A
forwarded reply is kept under the client's query bytes after the ID (flags, question, EDNS
OPT: everything that shaped the reply), with the name lower-cased, and served before any
parsing: the client's ID and question spelling spliced in, every TTL lowered by the entry's
age in whole seconds. Entries live for the reply's smallest TTL, negative answers for the
SOA's TTL or minimum (RFC 2308), at most ``-rcache-ttl``; past that they may still be served
for ``-rcache-stale`` seconds when no upstream answers (RFC 8767). At most N entries, the
least recently used out first.
"""

from __future__ import annotations

import array
import collections
import re
import struct
import sys
import time

from .wire import question_end

OPT = 41
SOA = 6
NOERROR, NXDOMAIN = 0, 3
TC = 0x02
STALE_TTL = 30  # RFC 8767 4: the TTL of a stale answer
ENTRY_OVERHEAD = 150  # bytes of an OrderedDict slot and its link (tracemalloc: ~600 per entry)

def _fixed_size() -> int:
    """The part of an entry's size that does not depend on its key and reply lengths."""
    key, entry = (False, b""), Entry()
    return (sys.getsizeof(key) + sys.getsizeof(b"") + sys.getsizeof(b"")
            + sys.getsizeof(array.array("H")) + sys.getsizeof(entry) + ENTRY_OVERHEAD)


# -- pure functions on wire bytes -----------------------------------------------------------

def question_key(wire: bytes, qend: int) -> bytes:
    """The question with its name lower-cased: names compare case-insensitively, but the
    type and class must not be folded (type 65, HTTPS, is not type 97)."""
    return wire[12:qend - 4].lower() + wire[qend - 4:qend]


def cache_key(data: bytes, tcp: bool, qend: int | None = None):
    """The cache key of a query: (transport, bytes after the ID with the name lower-cased),
    or None for a query without exactly one plain question. A caller that parsed the
    question already passes where it ends."""
    if qend is None:
        if data[4:6] != b"\x00\x01":
            return None
        qend = question_end(data)
        if qend < 0:
            return None
    return (tcp, data[2:12] + question_key(data, qend) + data[qend:])


def same_question(reply: bytes, data: bytes, qend: int) -> bool:
    """The reply's single question is the query's, names compared case-insensitively."""
    return reply[4:6] == b"\x00\x01" and question_key(reply, qend) == question_key(data, qend)


def personalize(reply: bytes, data: bytes, qend: int) -> bytes:
    """A reply with the client's ID and question bytes (its spelling of the name): resolvers
    using 0x20 or dnspython's checks want their own question back."""
    return data[:2] + reply[2:12] + data[12:qend] + reply[qend:]


def relayed(reply: bytes, data: bytes) -> bytes:
    """An upstream reply for this client: its ID, and its question when the reply has it."""
    qend = question_end(data)
    if qend > 0 and same_question(reply, data, qend):
        return personalize(reply, data, qend)
    return data[:2] + reply[2:]


def _name_end(wire: bytes, pos: int) -> int:
    """Offset past the name at ``pos``, which may end in a compression pointer."""
    while True:
        length = wire[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            return pos + 2
        if length & 0xC0:
            raise ValueError(f"bad label type at {pos}")
        pos += length + 1


def resource_records(wire: bytes) -> list:
    """(section 1-3, type, offset of the TTL, end of the rdata) for every RR after the
    question; ValueError when the message is cut or malformed."""
    try:
        qdcount, *counts = struct.unpack_from("!4H", wire, 4)
        pos = 12
        for _ in range(qdcount):
            pos = _name_end(wire, pos) + 4
        rrs = []
        for section, count in enumerate(counts, 1):
            for _ in range(count):
                pos = _name_end(wire, pos)
                rtype, _, _, rdlength = struct.unpack_from("!HHIH", wire, pos)
                rrs.append((section, rtype, pos + 4, pos + 10 + rdlength))
                pos += 10 + rdlength
    except (IndexError, struct.error) as exc:
        raise ValueError(f"truncated message: {exc}") from None
    if pos > len(wire):
        raise ValueError("truncated rdata")
    return rrs


def scan(wire: bytes) -> tuple:
    """What caching needs from a reply, in one pass over its RRs: (offsets of the TTL of
    every RR but the OPT, whose "TTL" holds EDNS flags; the smallest of those TTLs or None;
    whether the answer section has an RR; the MINIMUM of the first SOA in the authority
    section or None). ValueError when the message is cut or malformed."""
    unpack = struct.unpack_from
    offsets, low, answered, soa_minimum = [], None, False, None
    try:
        qdcount, ancount, nscount, arcount = unpack("!4H", wire, 4)
        pos = 12
        for _ in range(qdcount):
            pos = _name_end(wire, pos) + 4
        answer_end, authority_end = ancount, ancount + nscount
        for i in range(authority_end + arcount):
            pos = _name_end(wire, pos)
            rtype, _, ttl, rdlength = unpack("!HHIH", wire, pos)
            pos += 10 + rdlength
            if rtype == OPT:
                continue
            offsets.append(pos - rdlength - 6)
            if low is None or ttl < low:
                low = ttl
            if i < answer_end:
                answered = True
            elif rtype == SOA and soa_minimum is None and i < authority_end:
                (soa_minimum,) = unpack("!I", wire, pos - 4)
    except (IndexError, struct.error) as exc:
        raise ValueError(f"truncated message: {exc}") from None
    if pos > len(wire):
        raise ValueError("truncated rdata")
    return offsets, low, answered, soa_minimum


def ttl_offsets(wire: bytes) -> array.array:
    """Offsets of the TTL of every RR but the OPT (whose "TTL" holds EDNS flags)."""
    return array.array("H", scan(wire)[0])


def rewrite_ttls(wire: bytes, offsets, change) -> bytes:
    """A copy of ``wire`` with each TTL at ``offsets`` replaced by ``change(ttl)``."""
    out = bytearray(wire)
    for off in offsets:
        (ttl,) = struct.unpack_from("!I", out, off)
        struct.pack_into("!I", out, off, change(ttl))
    return bytes(out)


def decrement_ttls(wire: bytes, age: int) -> bytes:
    """Every RR's TTL lowered by ``age`` seconds (not below 0), the OPT left alone."""
    return rewrite_ttls(wire, ttl_offsets(wire), lambda ttl: max(0, ttl - age))


def lifetime(wire: bytes, cap: int, scanned=None) -> int | None:
    """Seconds a reply may be cached, or None: NOERROR with an answer lives for its
    smallest TTL; NXDOMAIN and NODATA (RFC 2308) for the smallest of the TTLs and the SOA's
    minimum, and not at all without a SOA (RFC 2308 5); at most ``cap``. Truncated replies
    and every other rcode (SERVFAIL, REFUSED...) are not cached. ``scanned``: ``scan(wire)``
    when the caller has it."""
    if len(wire) < 12 or wire[2] & TC or wire[3] & 0x0F not in (NOERROR, NXDOMAIN):
        return None
    _, low, answered, soa_minimum = scan(wire) if scanned is None else scanned
    life = cap if low is None else min(low, cap)
    if wire[3] & 0x0F == NXDOMAIN or not answered:
        if soa_minimum is None:
            return None
        life = min(life, soa_minimum)
    return life if life > 0 else None


_LETTERS = re.compile(rb"[A-Za-z]")


def hot_key(key, qend: int) -> bytes | None:
    """For a UDP entry, the query bytes after the ID all lower-cased (the UDP reader's
    wire-cache key), which equal the key's bytes when nothing outside the name is an ASCII
    letter; None for TCP entries and for queries where lower-casing would fold a type or
    size byte (those are found by ``cache_key`` on the general path)."""
    tcp, rest = key
    if tcp or _LETTERS.search(rest, 0, 10) or _LETTERS.search(rest, qend - 6):
        return None
    return rest


# -- the cache -----------------------------------------------------------------------------

class Entry:
    """One cached reply; ``reply`` holds the TTLs as of ``age`` seconds after ``stored``."""

    __slots__ = ("key", "reply", "offsets", "qend", "stored", "age", "life", "expires",
                 "hits", "prefetching", "limit", "deps", "cost", "slot", "hot")

    def reply_at(self, now: float) -> bytes:
        """The reply aged to ``now``; rewritten once per second, not once per hit."""
        age = int(now - self.stored)
        if age > self.age:
            delta = age - self.age
            self.reply = rewrite_ttls(self.reply, self.offsets, lambda t: max(0, t - delta))
            self.age = age
        return self.reply

    def stale_reply(self) -> bytes:
        return rewrite_ttls(self.reply, self.offsets, lambda t: STALE_TTL)


KEY_FIXED = _fixed_size()


class ResponseCache:
    """key (see ``cache_key``) -> Entry, least recently used first; at most ``size``
    entries and ``max_bytes`` of them (an upstream's answers may be up to 64 KiB each: by
    entries alone, 10,000 of those would be 640 MiB)."""

    def __init__(self, size: int, max_ttl: int, stale: int = 0, clock=time.monotonic,
                 max_bytes: int = 16 * 1024 * 1024):
        self.size = size
        self.max_bytes = max_bytes
        self.max_ttl = max_ttl
        self.stale = stale
        self.clock = clock
        self.entries = collections.OrderedDict()
        self.by_deps = {}  # labels -> keys of entries to drop when those labels change
        # UDP entries by the bytes of the query after the ID, all lower-cased: the key the
        # UDP reader has already computed for the wire cache (see ``hot_key``).
        self.udp_index = {}
        self.bytes = 0     # approximate memory of all entries
        self.evicted = 0

    def __len__(self):
        return len(self.entries)

    def fresh(self, key, now: float) -> Entry | None:
        """The entry for ``key`` if it has not expired (it becomes the most recent)."""
        entry = self.entries.get(key)
        if entry is None or now >= entry.expires:
            return None
        self.entries.move_to_end(key)
        return entry

    def expired(self, key, now: float) -> Entry | None:
        """An expired entry still within the serve-stale window; older ones are dropped."""
        entry = self.entries.get(key)
        if entry is None or now < entry.expires:
            return None
        if now >= entry.expires + self.stale:
            self.remove(key)
            return None
        return entry

    def store(self, key, reply: bytes, limit: int, deps=None, qend=None) -> Entry | None:
        """Cache an upstream reply to the query ``key`` if it may be (see ``lifetime``) and
        answers that very question; ``deps`` are labels whose change must drop it. A caller
        that compared the reply's question already passes where the question ends."""
        if (not self.size or len(reply) < 12 or reply[3] & 0x0F not in (NOERROR, NXDOMAIN)
                or len(reply) > self.max_bytes):
            return None
        try:
            scanned = scan(reply)  # parsed once for the lifetime and the TTLs
            life = lifetime(reply, self.max_ttl, scanned)
            if qend is None:
                query = b"\x00\x00" + key[1]
                qend = question_end(query)
                if qend < 0 or not same_question(reply, query, qend):
                    return None
            if life is None:
                return None
            offsets = array.array("H", scanned[0])
        except ValueError:
            return None
        entry = Entry()
        entry.key = key
        entry.reply, entry.offsets, entry.qend = reply, offsets, qend
        entry.stored = stored = self.clock()
        entry.age, entry.life, entry.expires = 0, life, stored + life
        entry.hits, entry.prefetching, entry.limit, entry.deps = 0, False, limit, deps
        entry.slot = None  # the metrics counters the UDP reader adds this entry's hits to
        # sys.getsizeof of the key tuple, its bytes, the reply, the offsets and the entry,
        # without the five calls (their fixed parts, measured once, are KEY_FIXED).
        entry.cost = cost = len(key[1]) + len(reply) + 2 * len(offsets) + KEY_FIXED
        entries = self.entries
        if key in entries:
            self.remove(key)
        entries[key] = entry
        self.bytes += cost
        entry.hot = hot = hot_key(key, qend)
        if hot is not None:
            self.udp_index[hot] = entry
        if deps is not None:
            self.by_deps.setdefault(deps, set()).add(key)
        while len(entries) > self.size or self.bytes > self.max_bytes:
            self._forget(*entries.popitem(last=False))  # the least recently used
            self.evicted += 1
        return entry

    def remove(self, key):
        entry = self.entries.pop(key, None)
        if entry is not None:
            self._forget(key, entry)

    def _forget(self, key, entry):
        """Drop the indexes of an entry taken out of ``entries``."""
        self.bytes -= entry.cost
        if entry.hot is not None:
            self.udp_index.pop(entry.hot, None)
        if entry.deps is not None:
            keys = self.by_deps.get(entry.deps)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self.by_deps[entry.deps]

    def drop(self, labels: tuple):
        """Drop the entries that depend on ``labels`` (a record there changed)."""
        for key in list(self.by_deps.get(labels, ())):
            self.remove(key)

    def clear(self):
        self.entries.clear()
        self.by_deps.clear()
        self.udp_index.clear()
        self.bytes = 0
