"""SkyDNS's response cache (``-rcache N``, ``-rcache-ttl S``) for forwarded answers.

Authoritative answers never need it (the wire cache holds them and is always current), so
this caches what upstream servers said, keyed by the question, for ``rcache_ttl`` seconds,
bounded to N entries (oldest out first).
"""

from __future__ import annotations

import collections
import time


class ResponseCache:
    def __init__(self, size: int, ttl: int, clock=time.monotonic):
        self.size = size
        self.ttl = ttl
        self.clock = clock
        self.entries = collections.OrderedDict()

    @staticmethod
    def key(qname, qtype, qclass, dnssec_ok: bool, transport):
        """``transport`` is "tcp" or, for UDP, what limits the reply (EDNS version, size)."""
        return (qname.to_text().lower(), qtype, qclass, dnssec_ok, transport)

    def get(self, key) -> bytes | None:
        """The cached reply (wire, any ID) or None when absent or expired."""
        if not self.size:
            return None
        entry = self.entries.get(key)
        if entry is None:
            return None
        wire, expires = entry
        if self.clock() >= expires:
            del self.entries[key]
            return None
        return wire

    def put(self, key, wire: bytes):
        if not self.size or not self.ttl:
            return
        self.entries[key] = (wire, self.clock() + self.ttl)
        self.entries.move_to_end(key)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)

    def clear(self):
        self.entries.clear()
