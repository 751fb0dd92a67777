"""The SkyDNS record format and the etcd key <-> DNS name mapping.

This module is shared by the skydns server (which reads records) and kube2sky (which writes
them), so that both agree byte for byte on keys, values and the FNV-1a leaf labels.
"""

from __future__ import annotations

import ipaddress
import json
import re

__all__ = [
    "Record", "RecordError", "parse_record", "name_to_key", "key_to_name", "key_labels",
    "name_labels", "fnv1a32_label", "encode_record", "encode_text", "leaf_key",
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
    """A value in etcd that is not a usable SkyDNS record; the message says why."""


class Record:
    """One SkyDNS record: the JSON value stored at one etcd key, validated.

    ``ip`` is set when ``host`` is an address (then ``family`` is 4 or 6); otherwise
    ``target`` is the host as an absolute, lower-cased domain name (or None when there is
    no host at all, e.g. a TXT-only record).
    """

    __slots__ = ("key", "host", "port", "priority", "weight", "text", "mail", "ttl",
                 "targetstrip", "group", "lease", "ip", "family", "target", "depth")

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
        raise RecordError(f"host {host!r} is not a valid IP address")
    name = host.rstrip(".").lower()
    if not name:
        raise RecordError("host is empty after removing the trailing dot")
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL_RE.match(label) for label in labels):
        raise RecordError(f"host {host!r} is neither an IP address nor a valid domain name")
    return None, None, name + "."


def parse_record(key: str, value: bytes | str, lease: int = 0) -> Record:
    """Parse one etcd value into a Record, or raise RecordError naming what is wrong.

    Unknown JSON keys are ignored and known ones match case-insensitively, as in SkyDNS
    (Go's encoding/json). Wrong types are errors, not silently zeroed.
    """
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise RecordError("value is not UTF-8") from None
    try:
        obj = json.loads(value)
    except ValueError as exc:
        raise RecordError(f"value is not JSON ({exc.msg} at position {exc.pos})") from None
    if not isinstance(obj, dict):
        raise RecordError(f"value is JSON {type(obj).__name__}, not an object")
    fields = {}
    for name, val in obj.items():
        name = name.lower()
        if name in _INT_FIELDS:
            if isinstance(val, bool) or not isinstance(val, int):
                raise RecordError(f"{name} must be an integer, got {json.dumps(val)}")
            low, high = _INT_FIELDS[name]
            if not low <= val <= high:
                raise RecordError(f"{name} {val} is outside {low}..{high}")
            fields[name] = val
        elif name in _STR_FIELDS:
            if not isinstance(val, str):
                raise RecordError(f"{name} must be a string, got {json.dumps(val)}")
            fields[name] = val
        elif name == "mail":
            if not isinstance(val, bool):
                raise RecordError(f"mail must be true or false, got {json.dumps(val)}")
            fields[name] = val
    return Record(key, lease=lease, **fields)


def name_labels(name: str) -> list[str]:
    """Labels of a domain name, lower-cased, leftmost first, without the root."""
    name = name.rstrip(".").lower()
    return name.split(".") if name else []


def name_to_key(name: str, prefix: str = "skydns") -> str:
    """``a.b.skydns.local.`` -> ``/skydns/local/skydns/b/a`` (labels reversed under the prefix)."""
    return "/" + "/".join([prefix] + list(reversed(name_labels(name))))


def key_labels(key: str, prefix: str = "skydns") -> list[str]:
    """The path components of a key below the prefix, lower-cased, root-most first."""
    parts = key.strip("/").lower().split("/")
    if parts and parts[0] == prefix:
        parts = parts[1:]
    return [p for p in parts if p]


def key_to_name(key: str, prefix: str = "skydns") -> str:
    """``/skydns/local/skydns/b/a`` -> ``a.b.skydns.local.``."""
    return ".".join(reversed(key_labels(key, prefix))) + "."


def leaf_key(name: str, label: str, prefix: str = "skydns") -> str:
    """The key of leaf ``label`` below ``name``."""
    return name_to_key(name, prefix) + "/" + label


def fnv1a32_label(value: str) -> str:
    """kube2sky's leaf label: FNV-1a 32-bit of the value, lower-case hex, no zero padding."""
    h = 0x811C9DC5
    for byte in value.encode("utf-8"):
        h ^= byte
        h = (h * 0x01000193) & 0xFFFFFFFF
    return format(h, "x")


def encode_record(host: str, port: int = 0, priority: int = 10, weight: int = 10,
                  ttl: int = 30, targetstrip: int = 0) -> str:
    """A record value in kube2sky's exact field order, ``port`` omitted when 0."""
    fields = {"host": host}
    if port:
        fields["port"] = port
    fields.update(priority=priority, weight=weight, ttl=ttl, targetstrip=targetstrip)
    return json.dumps(fields, separators=(",", ":"))


def encode_text(text: str) -> str:
    """A TXT-only record value, e.g. ``{"text":"1.1.0"}``."""
    return json.dumps({"text": text}, separators=(",", ":"))
