"""autopath: a pod's search path walked on the server, as CoreDNS's ``autopath @kubernetes``.

A pod's resolv.conf has ``ndots:5`` and the search path ``<ns>.svc.<domain> svc.<domain>
<domain>`` plus the node's domains, so its lookup of ``example.com`` asks
``example.com.<ns>.svc.<domain>``, then each next name, up to eight round trips before
the one that exists. With ``-autopath``, the first of those queries from a pod of ``<ns>``
gets the first answer of the whole walk that is not NXDOMAIN, with a CNAME from the asked
name to the name found, and the pod's resolver stops there.

Which pod asks is told by its source IP, from the pod records kube2sky writes
(``pod/<ns>/<dashed-ip>/<leaf>``), so skydns still needs no Kubernetes API. An IP is taken
for no pod when its records are in more than one namespace (an IP reused while a finished
pod's record is still there) or one of them is a hostNetwork pod's (leaf ``host-network``:
every process of that node shares the IP; coredns#2842, #7120). The walk's steps go through
the same query path as a client's (wire cache, response cache, upstreams), but count as no
requests of their own. Autopath answers depend on the client, so they are never kept in the
wire cache, and neither is an NXDOMAIN for a name it may walk from.
"""

from __future__ import annotations

import logging

import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from .authority import text_labels
from .config import peer_ip
from .record import HOST_NETWORK_LABEL, dashed_ip
from .store import Node
from .wire import question_end, render

log = logging.getLogger("skydns.autopath")

NOERROR, NXDOMAIN = dns.rcode.NOERROR, dns.rcode.NXDOMAIN


class PodNamespaces:
    """Client IP -> the namespace of the pod that has it, from the pod records in the store
    (kept up to date by the store's listeners)."""

    def __init__(self, store, domain: str):
        self.store = store
        self.base = ()
        self.owners = {}  # dashed IP -> its namespace, or {namespace: host network} when
        self.set_domain(domain)  # it has several or a hostNetwork pod's record (no answer)
        store.change_listeners.append(self.changed)
        store.reset_listeners.append(self.rebuild)

    def set_domain(self, domain: str):
        """``domain``: absolute, lower-case (as Config keeps it)."""
        base = text_labels(domain) + ("pod",)
        if base != self.base:
            self.base = base
            self.rebuild()

    def rebuild(self):
        self.owners = {}
        pods = self.store.node(self.base)
        if pods is None:
            return
        for namespace, entry in pods.children.items():
            if entry.__class__ is not Node:
                continue  # a record at pod/<label> itself: no pod's
            for dashed, ip_entry in entry.children.items():
                self._update(dashed, namespace, ip_entry)

    def changed(self, labels):
        base = self.base
        n = len(base)
        if len(labels) < n + 2 or labels[n - 1] != "pod" or labels[:n] != base:
            return
        namespace, dashed = labels[n], labels[n + 1]
        self._update(dashed, namespace, self.store.node(base + (namespace, dashed)))

    def _update(self, dashed, namespace, entry):
        """Note what ``pod/<namespace>/<dashed>`` holds now: ``entry`` (None: nothing)."""
        current = self.owners.get(dashed)
        if current is None:
            namespaces = {}
        elif current.__class__ is str:
            namespaces = {current: False}
        else:
            namespaces = dict(current)
        if entry is None:
            namespaces.pop(namespace, None)
        else:
            children = entry.children if entry.__class__ is Node else ()
            namespaces[namespace] = HOST_NETWORK_LABEL in children
        if not namespaces:
            self.owners.pop(dashed, None)
        elif len(namespaces) == 1 and not any(namespaces.values()):
            self.owners[dashed] = next(iter(namespaces))
        else:
            self.owners[dashed] = namespaces

    def namespace_of(self, host: str) -> str | None:
        """The namespace of the one pod that has the IP ``host``, or None."""
        if ":" in host:  # IPv6, or IPv4 as a dual-stack socket gives it
            ip = peer_ip(host)
            if ip is None:
                return None
            host = str(ip)
        found = self.owners.get(dashed_ip(host))
        return found if found.__class__ is str else None


MAX_ANSWERS = 10000  # walks' answers kept (see Autopath.answers), cleared when full...
MAX_ANSWER_BYTES = 8 * 1024 * 1024  # ...or when they would take more: a TCP answer may be
#                                     64 KB, and a pod can vary its query's letter case


class Autopath:
    """Decides which queries are walked, walks them, and keeps the answers found in the
    cluster: ``answers`` maps (namespace, query bytes after the ID) to the reply after
    the ID. Only answers from the store (AA) are kept, whose TTLs do not run down, and
    all of them go at any change of the domain's records outside ``pod/``: whether the
    asked name exists and what the walk finds both depend on those records. Forwarded
    answers are walked each time, through the response cache."""

    def __init__(self, store, config):
        self.pods = PodNamespaces(store, config.domain)
        self.answers = {}
        self.answer_bytes = 0  # of the keys' and answers' bytes in ``answers``
        self.generation = 0  # changes that made kept answers stale (a walk that began
        #                      before one must not keep what it found)
        self.found = 0      # walks that answered with a name further down the path
        self.cached = 0     # queries answered from ``answers`` (such a walk, earlier)
        self.not_found = 0  # walks where every name was NXDOMAIN (or an upstream failed)
        self.reconfigure(config)
        store.change_listeners.append(self.changed)
        store.reset_listeners.append(self.forget)

    def reconfigure(self, config):
        domain = config.domain
        self.zone = text_labels(domain)
        self.search = config.autopath_search
        # What follows the asked name's leading labels in each next name, in wire form.
        suffixes = []
        for suffix in ["svc." + domain, domain] + self.search + ["."]:
            wire = dns.name.from_text(suffix).to_wire()
            if wire not in suffixes:
                suffixes.append(wire)
        self.suffixes = suffixes
        self.pods.set_domain(config.domain)
        self.forget()

    def forget(self):
        """Drop every kept answer, and what walks under way would keep."""
        self.generation += 1
        self.answers.clear()
        self.answer_bytes = 0

    def changed(self, labels):
        """A record changed: the answers kept are stale unless it is a pod record."""
        zone = self.zone
        n = len(zone)
        if not (len(labels) > n and labels[n] == "pod" and labels[:n] == zone):
            self.forget()

    def may_walk(self, labels) -> bool:
        """Whether a name (labels root-most first) has the shape of a first search-path
        query, ``NAME.<ns>.svc.<domain>``: its NXDOMAIN depends on who asks."""
        n = len(self.zone)
        return len(labels) > n + 2 and labels[n] == "svc" and labels[:n] == self.zone

    def namespace(self, host: str, labels) -> str | None:
        """The namespace whose pod at ``host`` asked for ``labels`` (root-most first, a
        name ``may_walk``): when the pod is in the name's <ns>; else None, no walk."""
        namespace = self.pods.namespace_of(host)
        return namespace if namespace == labels[len(self.zone) + 1] else None

    def kept(self, namespace: str, data: bytes, tcp: bool) -> bytes | None:
        """The answer a walk found earlier for this query from this namespace."""
        found = self.answers.get((namespace, tcp, data[2:]))
        if found is None:
            return None
        self.cached += 1
        return data[:2] + found

    def keep(self, namespace: str, data: bytes, tcp: bool, out: bytes, generation: int):
        """Keep a walk's answer, unless records changed since it began (``generation``)."""
        if out[2] & 0x04 and generation == self.generation:  # AA: from the store
            size = len(data) + len(out)
            if (len(self.answers) >= MAX_ANSWERS
                    or self.answer_bytes + size > MAX_ANSWER_BYTES):
                self.answers.clear()
                self.answer_bytes = 0
            self.answers[namespace, tcp, data[2:]] = out[2:]
            self.answer_bytes += size  # (a key kept again is counted twice: cleared sooner)

    def queries(self, labels, data: bytes, qend: int) -> list:
        """The queries to ask after ``data`` (for NAME.<ns>.svc.<domain>, which does not
        exist; ``labels`` its name's, root-most first): NAME under each next domain of
        the search path."""
        n = len(self.zone)
        # NAME's labels are the question's first bytes: all but <ns>.svc.<domain> and root.
        tail = sum(len(label) + 1 for label in labels[:n + 2]) + 1
        base = data[12:qend - 4 - tail]
        head, rest = data[:12], data[qend - 4:]
        return [head + base + suffix + rest for suffix in self.suffixes
                if len(base) + len(suffix) <= 255]

    def walk(self, data: bytes, qend: int, queries, lookup, limit: int, tcp: bool):
        """The reply to the query ``data`` from the first of ``queries`` whose answer is
        not NXDOMAIN, or None when none is (or an upstream failed: the pod then walks its
        path itself). ``lookup(wire)`` answers a query as a client's would be answered:
        bytes, None, or a Deferred firing with either. Bytes, or a Deferred of them."""
        return self._next(None, data, qend, queries, 0, lookup, limit, tcp)

    def _next(self, out, data, qend, queries, i, lookup, limit, tcp):
        while True:
            if out is not None:
                rcode = out[3] & 0x0F if len(out) >= 12 else -1
                if rcode == NOERROR:
                    self.found += 1
                    return answer_as(out, data, qend, limit, tcp)
                if rcode != NXDOMAIN:
                    break  # SERVFAIL, REFUSED: not an answer to give for another name
                i += 1
            if i >= len(queries):
                break
            out = lookup(queries[i])
            if out is None:
                break
            if out.__class__ is not bytes:  # a Deferred
                return out.addCallback(self._next, data, qend, queries, i, lookup, limit,
                                       tcp)
        self.not_found += 1
        return None


def answer_as(reply: bytes, data: bytes, qend: int, limit: int, tcp: bool) -> bytes:
    """``reply`` (to another name) as the answer to ``data``: the question asked, and a
    CNAME from the asked name to the name answered before the answer's records, as
    CoreDNS's autopath writes it (none for NODATA). Spliced from the bytes as they are
    (a dnspython parse and render cost ~0.4 ms); rendered with dnspython when the reply
    has what splicing does not handle, or comes out over ``limit``."""
    try:
        out = spliced(reply, data, qend)
    except (Unsplicable, IndexError):
        out = None
    if out is None or len(out) > limit:
        return rendered(reply, data, limit, tcp)
    return out


class Unsplicable(Exception):
    """A reply ``spliced`` cannot move to another question (``rendered`` can)."""


CNAME = dns.rdatatype.CNAME
# Where rdata holds a name that may be compressed (RFC 1035, 2163, 2782, 3597): offsets of
# it. SOA's two names are read one after the other; the types of UNSPLICED may compress
# names too but are too rare to handle here.
_NAME_AT = {dns.rdatatype.CNAME: 0, dns.rdatatype.NS: 0, dns.rdatatype.PTR: 0,
            dns.rdatatype.DNAME: 0, dns.rdatatype.MX: 2, dns.rdatatype.AFSDB: 2,
            dns.rdatatype.RT: 2, dns.rdatatype.KX: 2, dns.rdatatype.SRV: 6}
UNSPLICED = {dns.rdatatype.MB, dns.rdatatype.MG, dns.rdatatype.MR, dns.rdatatype.MINFO,
             dns.rdatatype.RP, dns.rdatatype.PX, dns.rdatatype.MD, dns.rdatatype.MF}


def spliced(reply: bytes, data: bytes, qend: int) -> bytes:
    """``answer_as`` on bytes: the reply's sections are copied with every compression
    pointer moved to where what it pointed to is now (its question's name is the CNAME's
    target, or the same labels at the end of the asked name)."""
    old_qend = question_end(reply)
    if old_qend < 0:
        raise Unsplicable("no question")
    an = reply[6] << 8 | reply[7]
    counts = an + (reply[8] << 8 | reply[9]) + (reply[10] << 8 | reply[11])
    found = reply[12:old_qend - 4]
    asked = data[12:qend]
    cname_len = 12 + len(found) if an else 0
    body_start = 12 + len(asked) + cname_len
    delta = body_start - old_qend
    target_at = 12 + len(asked) + 12  # the CNAME's rdata: the found name, whole
    asked_name = asked[:-4]

    def moved(p):
        if p >= old_qend:
            q = p + delta
        elif 12 <= p < old_qend - 4:
            if an:
                q = target_at + p - 12
            else:  # NODATA: an SOA owner like the zone, a suffix of both names
                suffix = found[p - 12:]
                q = _label_suffix(asked_name, suffix)
                if q is None:
                    raise Unsplicable("a pointer into the question only")
                q += 12
        else:
            raise Unsplicable("a pointer into the header or the question's type")
        if q >= 0x4000:
            raise Unsplicable("a pointer past 16 KiB")
        return q

    body = bytearray(reply[old_qend:])
    first_ttl = _move_all_pointers(body, counts, moved)
    header = reply[:6] + (an + 1 if an else 0).to_bytes(2, "big") + reply[8:12]
    if not an:
        return header + asked + bytes(body)
    cname = (b"\xc0\x0c" + CNAME.to_bytes(2, "big") + b"\x00\x01" + first_ttl
             + len(found).to_bytes(2, "big") + found)
    return header + asked + cname + bytes(body)


def _move_all_pointers(body: bytearray, counts: int, moved) -> bytes | None:
    """Move the pointers of the ``counts`` records ``body`` holds (owner names, and names
    in the data of the types that may compress them); the first record's TTL bytes."""
    first_ttl = None
    pos = 0
    for _ in range(counts):
        pos = _move_pointers(body, pos, moved)
        rdtype = body[pos] << 8 | body[pos + 1]
        if first_ttl is None:
            first_ttl = bytes(body[pos + 4:pos + 8])
        rdata = pos + 10
        end = rdata + (body[pos + 8] << 8 | body[pos + 9])
        if rdtype == dns.rdatatype.SOA:
            _move_pointers(body, _move_pointers(body, rdata, moved), moved)
        elif rdtype in _NAME_AT:
            _move_pointers(body, rdata + _NAME_AT[rdtype], moved)
        elif rdtype in UNSPLICED:
            raise Unsplicable(f"a {dns.rdatatype.to_text(rdtype)} record")
        pos = end
    if pos != len(body):
        raise Unsplicable("bytes after the last record")
    return first_ttl


def _move_pointers(body: bytearray, pos: int, moved) -> int:
    """Rewrite the compression pointer ending the name at ``pos`` (if any) with
    ``moved``; where the name ends."""
    while True:
        length = body[pos]
        if length == 0:
            return pos + 1
        if length >= 0xC0:
            target = moved((length & 0x3F) << 8 | body[pos + 1])
            body[pos] = 0xC0 | target >> 8
            body[pos + 1] = target & 0xFF
            return pos + 2
        if length > 63:
            raise Unsplicable("a reserved label type")
        pos += length + 1


def _label_suffix(name: bytes, suffix: bytes) -> int | None:
    """Where ``suffix`` (whole labels to the root) starts in the wire name ``name``."""
    pos = 0
    while pos < len(name):
        if name[pos:] == suffix:
            return pos
        pos += name[pos] + 1
    return None


def rendered(reply: bytes, data: bytes, limit: int, tcp: bool) -> bytes:
    """``answer_as`` with dnspython (and its truncation to ``limit``)."""
    message = dns.message.from_wire(reply, ignore_trailing=True,
                                    one_rr_per_rrset=False)
    asked = dns.name.from_wire(data, 12)[0]
    question = message.question[0]
    found = question.name
    message.question = [dns.rrset.RRset(asked, question.rdclass, question.rdtype)]
    if message.answer and message.answer[0].name != asked:
        cname = dns.rrset.from_text(asked, message.answer[0].ttl, dns.rdataclass.IN,
                                    dns.rdatatype.CNAME, found.to_text())
        message.answer.insert(0, cname)
    return render(message, limit, tcp)
