"""The SkyDNS record format and the etcd key <-> DNS name mapping.

This module is shared by the skydns server (which reads records) and kube2sky (which writes
them), so that both agree byte for byte on keys, values and the FNV-1a leaf labels.
"""

from __future__ import annotations

import ipaddress
import json
import re

import dns.name

__all__ = [
    "Record", "RecordError", "parse_record", "name_to_key", "key_to_name", "key_labels",
    "name_labels", "labels_to_name", "fnv1a32_label", "encode_record", "encode_text",
    "plain_value", "plain_record",
]

# Keys of the JSON object and the Python types they must have. bool is checked separately
# because in Python it is an int.
_INT_FIELDS = {
    "port": (0, 65535),
    "priority": (0, 65535),
    "weight": (0, 65535),
    "ttl": (0, 2**31 - 1),
    "targetstrip": (0, 255),
}
_STR_FIELDS = ("host", "text", "group")
_LABEL_RE = re.compile(r"^[A-Za-z0-9_*\-]([A-Za-z0-9_\-]{0,61}[A-Za-z0-9_\-])?$")
_IPV4ISH = re.compile(r"^[0-9.]+$")


class RecordError(ValueError):
    """A value in etcd that is not a usable SkyDNS record; the message says why.

    ``kind`` is a short, stable reason for metrics labels: encoding, json, type, range,
    host, key or size.
    """

    def __init__(self, message, kind="type"):
        super().__init__(message)
        self.kind = kind


# A record must fit in one DNS message (65535 bytes) next to a header (12), the longest
# question (255 + 4) and its owner and fixed RR fields (2 + 10): that leaves this much RDATA.
MAX_RDATA = 65535 - 12 - 259 - 12
MAX_TEXT_BYTES = MAX_RDATA - -(-MAX_RDATA // 256)  # text + one length byte per 255 bytes
MAX_NAME_WIRE = 255  # RFC 1035: a name is at most 255 bytes in wire form
# A key of plain labels of at most 63 characters: when the whole key is at most 255 long,
# its name (the labels below the prefix) is a valid DNS name without building one.
_PLAIN_KEY = re.compile(r"(?:/[A-Za-z0-9_*\-]{0,63})*/?")


def _shorten(text: str, limit: int) -> str:
    """Error messages quote what they complain about, but never more than ``limit`` chars."""
    return text if len(text) <= limit else text[:limit] + "..."


def _show(value, limit=40):
    """A JSON value as it appears in an error message."""
    try:
        return _shorten(json.dumps(value), limit)
    except (ValueError, RecursionError):
        return type(value).__name__


class Record:
    """One SkyDNS record: the JSON value stored at one etcd key, validated.

    ``ip`` is set when ``host`` is an address (then ``family`` is 4 or 6); otherwise
    ``target`` is the host as an absolute, lower-cased domain name (or None when there is
    no host at all, e.g. a TXT-only record).
    """

    __slots__ = ("key", "host", "port", "priority", "weight", "text", "mail", "ttl",
                 "targetstrip", "group", "lease", "ip", "family", "target", "depth", "name")

    def __init__(self, key, host="", port=0, priority=0, weight=0, text="", mail=False,
                 ttl=0, targetstrip=0, group="", lease=0):
        self.key = key
        self.host = host
        self.port = port
        self.priority = priority
        self.weight = weight
        self.text = text
        self.mail = mail
        self.ttl = ttl
        self.targetstrip = targetstrip
        self.group = group
        self.lease = lease
        self.ip = None
        self.name = None  # the DNS name of the key, filled on first use (SRV/MX/NS targets)
        self.family = None
        self.target = None
        self.depth = key.strip("/").count("/")  # how deep the key is: groups compare it
        if host:
            self.ip, self.family, self.target = _classify_host(host)

    def identity(self):
        """What makes two records duplicates (SkyDNS collapses them before weighting)."""
        return (self.host.lower(), self.port, self.priority, self.weight, self.text)

    def __repr__(self):
        return f"Record({self.key!r}, host={self.host!r}, port={self.port})"


def _classify_host(host):
    try:
        ip = ipaddress.ip_address(host)
        return ip, ip.version, None
    except ValueError:
        pass
    if _IPV4ISH.match(host) or ":" in host:
        raise RecordError(f"host {_show(host)} is not a valid IP address", "host")
    name = host.rstrip(".").lower()
    if not name:
        raise RecordError("host is empty after removing the trailing dot", "host")
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL_RE.match(label) for label in labels):
        raise RecordError(f"host {_show(host)} is neither an IP address nor a valid domain "
                          "name", "host")
    return None, None, name + "."


def parse_record(key: str, value: bytes | str, lease: int = 0,
                 labels: list[str] | None = None) -> Record:
    """Parse one etcd value into a Record, or raise RecordError naming what is wrong.

    Unknown JSON keys are ignored and known ones match case-insensitively, as in SkyDNS
    (Go's encoding/json). Wrong types are errors, not silently zeroed. Anything that could
    not be put in a DNS answer (a key that is no DNS name, text too long for a message) is
    refused here, once, rather than failing every query that reaches it. ``labels`` are
    the key's labels below the prefix (``key_labels``), when the caller has them already.
    """
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise RecordError("value is not UTF-8", "encoding") from None
    try:
        obj = json.loads(value)
    except json.JSONDecodeError as exc:
        raise RecordError(f"value is not JSON ({exc.msg} at position {exc.pos})",
                          "json") from None
    except RecursionError:
        raise RecordError("value is not usable JSON (nested too deeply)", "json") from None
    except ValueError as exc:  # e.g. an integer past Python's digit limit
        raise RecordError(f"value is not usable JSON ({_first_words(exc)})", "json") from None
    if not isinstance(obj, dict):
        raise RecordError(f"value is JSON {type(obj).__name__}, not an object", "type")
    fields = {}
    for name, val in obj.items():
        name = name.lower()
        if name in _INT_FIELDS:
            if isinstance(val, bool) or not isinstance(val, int):
                raise RecordError(f"{name} must be an integer, got {_show(val)}", "type")
            low, high = _INT_FIELDS[name]
            if not low <= val <= high:
                raise RecordError(f"{name} {_show(val)} is outside {low}..{high}", "range")
            fields[name] = val
        elif name in _STR_FIELDS:
            if not isinstance(val, str):
                raise RecordError(f"{name} must be a string, got {_show(val)}", "type")
            fields[name] = val
        elif name == "mail":
            if not isinstance(val, bool):
                raise RecordError(f"mail must be true or false, got {_show(val)}", "type")
            fields[name] = val
    if "text" in fields:
        _check_text(fields["text"])
    _check_key(key, labels)
    return Record(key, lease=lease, **fields)


# The shape of nearly every value in a cluster: kube2sky's (``encode_record``) and the usual
# hand-written ``{"host": "10.0.0.1", "port": 80}``: a lower-case "host" first (an IPv4
# address or a domain name), then any of port/priority/weight/ttl/targetstrip with
# in-range integers, then kube2sky's owner. A value of this shape is valid by
# construction, so the store keeps its bytes (``plain_value``), checked by this one regex
# instead of parsed, and builds the Record when a query reads it (``plain_record``).
# Everything else (text, mail, group, other cases or spellings) goes through
# ``parse_record``. The table tests check that every value this accepts parses the same.
_OCTET = rb"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_U16 = (rb"(?:0|[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]"
        rb"|6553[0-5])")
_IPV4 = rb"(?:" + _OCTET + rb"\.){3}" + _OCTET
_NAME = (rb'(?=[^"]*[A-Za-z_-])'                               # not all digits and dots,
         rb"(?:[A-Za-z0-9_-]{1,63}\.)*[A-Za-z0-9_-]{1,63}\.?")  # in plain labels
_HOST = rb"(?:" + _IPV4 + rb'|(?=[^"]{1,253}\.?")' + _NAME + rb")"  # a name <= 253 characters
_PLAIN_VALUE = re.compile(  # (the comma outside the alternatives: a third faster)
    rb'\{ ?"host": ?"' + _HOST + rb'"'
    rb'(?:, ?"(?:(?:port|priority|weight)": ?' + _U16 +
    rb'|ttl": ?(?:0|[1-9][0-9]{0,8})'
    rb'|targetstrip": ?(?:0|[1-9][0-9]?)))*'
    rb'(, ?"owner": ?"[A-Za-z0-9._-]{0,253}")? ?\}')
# kube2sky's own values (``encode_record``, fields in its order): kept in a shorter form
# still, the six numbers and the host separated by spaces, half the bytes of the JSON.
_TTL = rb"(0|[1-9][0-9]{0,8})"
_STRIP = rb"(0|[1-9][0-9]?)"
_KUBE2SKY_VALUE = re.compile(
    rb'\{"host":"(' + _HOST + rb')"(?:,"port":(' + _U16 + rb'))?,"priority":(' + _U16 +
    rb'),"weight":(' + _U16 + rb'),"ttl":' + _TTL + rb',"targetstrip":' + _STRIP +
    rb'(?:,"owner":"[A-Za-z0-9._-]{0,253}")?\}')
# Labels of a key whose name needs no further check (see ``_check_key``), in the one form a
# Record's key can be rebuilt from: lower case, no empty label, no trailing slash.
PLAIN_LABEL_BYTES = b"abcdefghijklmnopqrstuvwxyz0123456789_*-"
PLAIN_LABEL = "/[" + re.escape(PLAIN_LABEL_BYTES.decode()) + "]{1,63}"


# kube2sky's values differ in their host alone, nearly all of them: what follows the host
# (its closing quote, the numbers, the owner) is one of a few texts. Each such text that
# _KUBE2SKY_VALUE accepted is kept (at most KUBE2SKY_ENDS_KEPT) with the end of the compact
# form it gives, so the next value with that end has only its host checked, by _HOST's own
# parts (8% of a big load's parse time went to the rest of the regex).
_HOST_HEAD = b'{"host":"'
_IPV4_HOST = re.compile(_IPV4)
_NAME_HOST = re.compile(_NAME)
_KUBE2SKY_ENDS: dict[bytes, bytes] = {}
KUBE2SKY_ENDS_KEPT = 1024


def _plain_host(host: bytes) -> bool:
    """``_HOST`` for a host cut out at its closing quote (where its length lookahead, which
    needs the quote, is done here)."""
    if _IPV4_HOST.fullmatch(host) is not None:
        return True
    return (_NAME_HOST.fullmatch(host) is not None
            and (len(host) <= 253 or (len(host) == 254 and host.endswith(b"."))))


def plain_value(value: bytes) -> bytes | None:
    """What the store keeps of a value of the plain shape (see above), or None for a value
    of any other shape: for kube2sky's, ``host port priority weight ttl targetstrip``; for
    others, the JSON without the owner field, which serves nothing."""
    if value.startswith(_HOST_HEAD):
        end = value.find(b'"', len(_HOST_HEAD))
        compact_end = _KUBE2SKY_ENDS.get(value[end + 1:]) if end > 0 else None
        if compact_end is not None:
            host = value[len(_HOST_HEAD):end]
            if _plain_host(host):
                return host + compact_end
    match = _KUBE2SKY_VALUE.fullmatch(value)
    if match is not None:
        host, port, priority, weight, ttl, strip = match.groups()
        compact = b" ".join((host, port or b"0", priority, weight, ttl, strip))
        if len(_KUBE2SKY_ENDS) < KUBE2SKY_ENDS_KEPT:
            _KUBE2SKY_ENDS[value[match.end(1) + 1:]] = compact[len(host):]
        return compact
    match = _PLAIN_VALUE.fullmatch(value)
    if match is None:
        return None
    owner = match.start(1)
    return value if owner < 0 else value[:owner] + b"}"


def plain_record(key: str, value: bytes) -> Record:
    """The Record of a ``plain_value``: what ``parse_record`` returns, without its checks
    (the shape guarantees them)."""
    if value[0] == 0x7B:  # "{": JSON
        return Record(key, **json.loads(value))
    host, port, priority, weight, ttl, strip = value.split(b" ")
    return Record(key, host.decode("ascii"), port=int(port), priority=int(priority),
                  weight=int(weight), ttl=int(ttl), targetstrip=int(strip))


def _first_words(exc, limit=80):
    return _shorten(" ".join(str(exc).split()), limit)


def _check_text(text: str):
    """TXT data is sent as 255-byte strings, each with a length byte: it must fit a message."""
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise RecordError("text is not valid Unicode (lone surrogate)", "encoding") from None
    if size > MAX_TEXT_BYTES:
        raise RecordError(f"text of {size} bytes cannot fit in a DNS message "
                          f"(at most {MAX_TEXT_BYTES} bytes)", "size")


def _check_key(key: str, labels: list[str] | None):
    """The key's name is used as an owner and as SRV/MX/NS targets: it must be a DNS name."""
    if len(key) <= MAX_NAME_WIRE and _PLAIN_KEY.fullmatch(key):
        return  # the common case, checked without building a name
    if labels is None:
        labels = key_labels(key)
    try:
        dns.name.from_text(labels_to_name(labels))
    except Exception as exc:  # dnspython has several error types for bad names
        raise RecordError(f"key is not a valid DNS name ({exc.__class__.__name__}: "
                          f"{_first_words(exc)})", "key") from None


def name_labels(name: str) -> list[str]:
    """Labels of a domain name, lower-cased, leftmost first, without the root."""
    name = name.rstrip(".").lower()
    return name.split(".") if name else []


# The leaf label of a hostNetwork pod's address record (instead of the value's FNV label):
# such a pod has its node's IP, so a query from that IP tells nothing of its namespace, and
# autopath must not answer it as that pod (see skydns.autopath).
HOST_NETWORK_LABEL = "host-network"


def dashed_ip(ip) -> str:
    """``10.244.7.7`` -> ``10-244-7-7``; IPv6 ``:`` -> ``-`` in its compressed text
    (``fd00::1`` -> ``fd00--1``): the label CoreDNS names pods and hostname-less endpoints
    by, which kube2sky writes and skydns recognises (``authority.address_alias``)."""
    return str(ip).replace(".", "-").replace(":", "-")


def name_to_key(name: str, prefix: str = "skydns") -> str:
    """``a.b.skydns.local.`` -> ``/skydns/local/skydns/b/a`` (labels reversed under the prefix)."""
    return "/" + "/".join([prefix] + list(reversed(name_labels(name))))


def key_labels(key: str, prefix: str = "skydns") -> list[str]:
    """The path components of a key below the prefix, lower-cased, root-most first."""
    parts = key.strip("/").lower().split("/")
    if parts and parts[0] == prefix:
        parts = parts[1:]
    return [p for p in parts if p]


def labels_to_name(labels) -> str:
    """Key labels (root-most first) -> the absolute name they spell: ``("local", "b")`` ->
    ``b.local.``; none -> ``.``."""
    return ".".join(reversed(labels)) + "."


def key_to_name(key: str, prefix: str = "skydns") -> str:
    """``/skydns/local/skydns/b/a`` -> ``a.b.skydns.local.``."""
    return labels_to_name(key_labels(key, prefix))


FNV_OFFSET, FNV_PRIME = 0x811C9DC5, 0x01000193


def fnv1a32(data: bytes, h: int = FNV_OFFSET) -> int:
    """FNV-1a 32-bit of ``data``, continued from state ``h``."""
    for byte in data:
        h ^= byte
        h = (h * FNV_PRIME) & 0xFFFFFFFF
    return h


def fnv1a32_label(value: str) -> str:
    """kube2sky's leaf label: FNV-1a 32-bit of the value, lower-case hex, no zero padding."""
    return format(fnv1a32(value.encode("utf-8")), "x")


class Fnv1a32Tail:
    """FNV-1a 32-bit over a fixed ``tail``, continued from any state in three operations
    instead of a step per byte: a value kube2sky hashes is a few bytes of address between
    the same ~60 bytes of JSON, and the per-byte loop was half of computing a big
    cluster's records.

    Why it works: a step is ``h = (h ^ byte) * PRIME mod 2**32``, and both the XOR with a
    byte and the product mod 2**32 leave the low 8 bits depending on the low 8 bits
    alone. So the low bytes along the tail follow from ``h``'s low byte, the XORs add
    amounts fixed by it, and the whole tail is ``PRIME**len * h + table[h & 0xFF]``."""

    __slots__ = ("multiplier", "table")

    def __init__(self, tail: bytes):
        self.multiplier = pow(FNV_PRIME, len(tail), 1 << 32)
        self.table = [(fnv1a32(tail, low) - self.multiplier * low) & 0xFFFFFFFF
                      for low in range(256)]

    def extend(self, h: int) -> int:
        """``fnv1a32(tail, h)``."""
        return (self.multiplier * h + self.table[h & 0xFF]) & 0xFFFFFFFF


_json_string = json.encoder.encode_basestring_ascii  # json.dumps of a str, in C


def encode_record(host: str, port: int = 0, priority: int = 10, weight: int = 10,
                  ttl: int = 30, targetstrip: int = 0, owner: str | None = None) -> str:
    """A record value in kube2sky's exact field order, ``port`` omitted when 0, ``owner``
    last when given (see ``owned_by``). The same text as ``json.dumps`` with compact
    separators, assembled directly: a cluster sync writes hundreds of thousands."""
    out = f'{{"host":{_json_string(host)}'
    if port:
        out += f',"port":{int(port)}'
    out += (f',"priority":{int(priority)},"weight":{int(weight)},"ttl":{int(ttl)},'
            f'"targetstrip":{int(targetstrip)}')
    if owner is not None:
        out += f',"{OWNER_FIELD}":{_json_string(owner)}'
    return out + "}"


def encode_text(text: str, owner: str | None = None) -> str:
    """A TXT-only record value, e.g. ``{"text":"1.1.0"}``."""
    fields = {"text": text}
    if owner is not None:
        fields[OWNER_FIELD] = owner
    return json.dumps(fields, separators=(",", ":"))


# The writer of a value, recorded in it: SkyDNS, CoreDNS and this server ignore JSON fields
# they do not know, so the value serves unchanged, and whoever reads it with etcdctl sees
# who wrote it. Always the last field, so checking it needs no JSON parse.
OWNER_FIELD = "owner"


def owner_suffix(owner: str) -> str:
    return f',"{OWNER_FIELD}":{_json_string(owner)}}}'


def owned_by(value: str, owner: str) -> bool:
    """Whether ``value`` was written by ``owner`` through ``encode_record``/``encode_text``."""
    return value.endswith(owner_suffix(owner))
