"""Authoritative answers straight to bytes, without building dnspython objects.

The query semantics (``authority``) describe records as plain tuples ``(owner, rdtype,
ttl, data)``: owner and target names as lower-case absolute text, ``data`` a small
hashable value per type (see ``RDATA``). This module groups them into RRsets the way
dnspython does (first-seen order, duplicates dropped, the RRset's TTL the smallest of its
records, one CNAME per owner) and writes the message, compressing names against the
question and against each other exactly as dnspython's renderer does, so both paths give
byte-identical messages (the tests compare them). dnspython stays for what is rare:
DNSSEC signing, which needs Rdata objects, and queries the fast path does not accept.

    A, AAAA         packed address bytes
    CNAME, NS, PTR  target name
    MX              (preference, exchange name)
    SRV             (priority, weight, port, target name)   target never compressed
    TXT             tuple of character-strings (bytes, at most 255 each)
    SOA             (mname, rname, serial, refresh, retry, expire, minimum)
"""

from __future__ import annotations

import socket
import struct

import dns.name
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

T_A, T_NS, T_CNAME, T_SOA, T_PTR, T_MX, T_TXT, T_AAAA, T_SRV = 1, 2, 5, 6, 12, 15, 16, 28, 33
ROTATED = (T_A, T_AAAA, T_SRV)
IN = dns.rdataclass.IN
_FIXED = struct.Struct("!HHIH")
_QR, _AA, _TC, _RD, _RA = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080
SERVFAIL = 2


class TooBig(Exception):
    """The message does not fit the size limit."""


# -- grouping ---------------------------------------------------------------------------

def rrsets(records) -> list:
    """Group (owner, rdtype, ttl, data) into RRsets ``[owner, rdtype, ttl, [data...]]``,
    in first-seen order, as dnspython's Rdataset.add does: a duplicate is dropped but
    still lowers the TTL; the RRset's TTL is the smallest added. RFC 2181 10.1: one CNAME
    per owner, the first one stays."""
    sets = {}
    seen = {}
    for owner, rdtype, ttl, data in records:
        key = (owner, rdtype)
        rrset = sets.get(key)
        if rrset is None:
            sets[key] = [owner, rdtype, ttl, [data]]
            seen[key] = {data}
            continue
        if rdtype == T_CNAME:
            continue
        if ttl < rrset[2]:
            rrset[2] = ttl
        datas = seen[key]
        if data not in datas:
            datas.add(data)
            rrset[3].append(data)
    return list(sets.values())


def rotated(answer, shift: int) -> list:
    """The answer RRsets with the data of each A/AAAA/SRV RRset rotated by ``shift``."""
    out = []
    for owner, rdtype, ttl, datas in answer:
        if rdtype in ROTATED and len(datas) > 1:
            k = shift % len(datas)
            datas = datas[k:] + datas[:k]
        out.append([owner, rdtype, ttl, datas])
    return out


def rotations(answer) -> int:
    """How many distinct rotations the answer has (the longest rotated RRset)."""
    return max((len(datas) for _, rdtype, _, datas in answer if rdtype in ROTATED), default=1)


# -- rendering --------------------------------------------------------------------------

class _Writer:
    """One message being written: bytes so far and the compression table (lower-case
    name suffix text -> offset), filled as dnspython fills its own."""

    __slots__ = ("out", "compress")

    def __init__(self, head: bytes, question: bytes, qname: str | None = None):
        self.out = bytearray(head)
        self.out += question
        if qname is None:
            qname = _wire_text(question[:-4].lower())
        # In text, a label starts at the same offset as in the wire (length byte + label
        # for label + dot), so each suffix of the question name is at 12 + its index.
        compress = self.compress = {}
        start = 0
        end = len(qname) - 1
        while start < end:
            compress[qname[start:] if start else qname] = 12 + start
            start = qname.index(".", start) + 1

    def name(self, text: str, compress: bool = True):
        out = self.out
        if "\\" in text:
            raise ValueError(f"{text!r}: escaped labels are left to dnspython")
        if text == ".":
            out.append(0)
            return
        table = self.compress if compress else None
        start = 0
        end = len(text)
        while start < end:
            suffix = text[start:] if start else text
            if table is not None:
                pos = table.get(suffix)
                if pos is not None:
                    out += (0xC000 | pos).to_bytes(2, "big")
                    return
                if len(out) <= 0x3FFF:
                    table[suffix] = len(out)
            dot = text.index(".", start)
            label = text[start:dot].encode("ascii")
            out.append(len(label))
            out += label
            start = dot + 1
        out.append(0)

    def record(self, owner, rdtype, ttl, data):
        self.name(owner)
        out = self.out
        at = len(out)
        out += _FIXED.pack(rdtype, 1, ttl, 0)
        if rdtype == T_A or rdtype == T_AAAA:
            out += data
        elif rdtype == T_SRV:
            out += struct.pack("!HHH", data[0], data[1], data[2])
            self.name(data[3], compress=False)
        elif rdtype in (T_CNAME, T_PTR, T_NS):
            self.name(data)
        elif rdtype == T_TXT:
            for chunk in data:
                out.append(len(chunk))
                out += chunk
        elif rdtype == T_MX:
            out += data[0].to_bytes(2, "big")
            self.name(data[1])
        elif rdtype == T_SOA:
            self.name(data[0])
            self.name(data[1])
            out += struct.pack("!IIIII", *data[2:])
        else:
            raise ValueError(f"no encoder for type {rdtype}")
        length = len(out) - at - 10
        out[at + 8:at + 10] = length.to_bytes(2, "big")

    def section(self, sets) -> int:
        count = 0
        for owner, rdtype, ttl, datas in sets:
            for data in datas:
                self.record(owner, rdtype, ttl, data)
                count += 1
        return count


def _wire_text(wire: bytes) -> str:
    labels = []
    pos = 0
    while wire[pos]:
        labels.append(wire[pos + 1:pos + 1 + wire[pos]].decode("ascii"))
        pos += wire[pos] + 1
    return ".".join(labels) + "."


def opt_record(payload: int) -> bytes:
    """Our OPT RR: root owner, our UDP payload size, extended rcode/version/flags 0."""
    return b"\x00\x00\x29" + payload.to_bytes(2, "big") + b"\x00\x00\x00\x00\x00\x00"


def message(query_id: bytes, flags: int, question: bytes, answer, authority, additional,
            opt: bytes | None, limit: int, qname: str | None = None) -> bytes:
    """The whole message, or TooBig when it does not fit ``limit`` bytes. ``qname`` is
    the question's name as lower-case text, when the caller has it."""
    out, complete = render(query_id, flags, question, answer, authority, additional, opt,
                           limit, True, qname)
    if not complete:
        raise TooBig()
    return out


def header_only(query: bytes, qend: int, flags: int, payload: int | None) -> bytes:
    """A reply of the query's header and question only, with our OPT advertising
    ``payload`` when the query had EDNS (SERVFAIL, or TC for a reply cut to nothing)."""
    opt = opt_record(payload) if payload else None
    return message(query[:2], flags, query[12:qend], (), (), (), opt, 65535)


def render(query_id, flags, question, answer, authority, additional, opt, limit, tcp,
           qname=None):
    """(message, complete): within ``limit``, with the rules of ``wire.render``: drop the
    additional section first; then over UDP the longest prefix of the answer records that
    fits, with TC and no authority (SkyDNS's Fit); over TCP SERVFAIL rather than a partial
    answer. ``complete`` is False when anything was left out.

    One pass: the records are written in order and the message length noted after each
    answer record and after the authority section. Since a record's bytes depend only on
    what precedes it (compression points backwards), cutting the message at one of those
    lengths gives exactly what rendering the shorter message would (dnspython's way, which
    the tests compare against, renders each candidate again). Writing stops as soon as the
    answer alone no longer fits: nothing after that can be sent.
    """
    w = _Writer(query_id + b"\x00" * 10, question, qname)
    out = w.out
    room = limit - (len(opt) if opt is not None else 0)
    ends = []  # message length after each answer record that fits
    whole_answer = True
    for owner, rdtype, ttl, datas in answer:
        for data in datas:
            w.record(owner, rdtype, ttl, data)
            if len(out) > room:
                whole_answer = False
                break
            ends.append(len(out))
        if not whole_answer:
            break
    if whole_answer:
        ns = w.section(authority)
        after_ns = len(out)
        ar = w.section(additional)
        if len(out) <= room:
            return _finish(out, flags, len(ends), ns, ar, opt), True
        if after_ns <= room:
            return _finish(out[:after_ns], flags, len(ends), ns, 0, opt), False
    if tcp:
        servfail = (flags & ~0x000F) | SERVFAIL
        return _finish(out[:12 + len(question)], servfail, 0, 0, 0, opt), False
    cut = ends[-1] if ends else 12 + len(question)
    return _finish(out[:cut], flags | _TC, len(ends), 0, 0, opt), False


def _finish(out: bytearray, flags, an, ns, ar, opt) -> bytes:
    if opt is not None:
        out += opt
        ar += 1
    out[2:12] = struct.pack("!HHHHH", flags, 1, an, ns, ar)
    return bytes(out)


# -- dnspython, for DNSSEC and the general path -----------------------------------------

def to_rdata(rdtype: int, data):
    """The dnspython Rdata for one record's data."""
    if rdtype == T_A:
        return A(IN, T_A, socket.inet_ntop(socket.AF_INET, data))
    if rdtype == T_AAAA:
        return AAAA(IN, T_AAAA, socket.inet_ntop(socket.AF_INET6, data))
    if rdtype == T_SRV:
        return SRV(IN, T_SRV, data[0], data[1], data[2], dns.name.from_text(data[3]))
    if rdtype == T_CNAME:
        return CNAME(IN, T_CNAME, dns.name.from_text(data))
    if rdtype == T_PTR:
        return PTR(IN, T_PTR, dns.name.from_text(data))
    if rdtype == T_NS:
        return NS(IN, T_NS, dns.name.from_text(data))
    if rdtype == T_TXT:
        return TXT(IN, T_TXT, list(data))
    if rdtype == T_MX:
        return MX(IN, T_MX, data[0], dns.name.from_text(data[1]))
    if rdtype == T_SOA:
        return SOA(IN, T_SOA, dns.name.from_text(data[0]), dns.name.from_text(data[1]),
                   *data[2:])
    raise ValueError(f"no conversion for type {rdtype}")


def to_dnspython(sets) -> list:
    """RRsets as dnspython RRset objects (same order, TTLs and data)."""
    out = []
    for owner, rdtype, ttl, datas in sets:
        rrset = dns.rrset.RRset(dns.name.from_text(owner), IN, rdtype)
        for data in datas:
            rrset.add(to_rdata(rdtype, data), ttl)
        out.append(rrset)
    return out
