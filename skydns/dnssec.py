"""DNSSEC for skydns's ``-dnssec KEYFILE``: on-line signing with one key and NSEC3 white lies.

Like SkyDNS, the server has no signed zone on disk: it signs each in-zone RRset of a response
as it goes out (with a signature cache so the common answers are signed once), answers DNSKEY
at the apex, and proves non-existence with NSEC3 records made up for the query ("white lies":
owners at hash-1/hash and next at hash+1), so the zone cannot be walked. NSEC3 uses SHA-1, no
salt and 0 iterations (RFC 9276).

The key is a BIND pair as written by ``dnssec-keygen``: ``<base>.key`` holds the DNSKEY RR,
``<base>.private`` the private key in "Private-key-format v1.2/v1.3".

RSASHA1 (5) and RSASHA1-NSEC3-SHA1 (7) keys are accepted so that existing SkyDNS deployments
keep working, with a warning at start: RFC 8624 says not to sign with SHA-1.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import struct
import threading
import time
from collections import OrderedDict

import dns.dnssec
import dns.message
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.NSEC3
import dns.rrset
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

__all__ = ["DnssecKeyError", "DnssecSigner", "generate_key_files"]

_RSASHA1, _RSASHA1_NSEC3 = 5, 7
_RSASHA256, _RSASHA512, _ECDSAP256, _ECDSAP384, _ED25519 = 8, 10, 13, 14, 15
_ALGORITHMS = {
    _RSASHA1: "RSASHA1",
    _RSASHA1_NSEC3: "RSASHA1-NSEC3-SHA1",
    _RSASHA256: "RSASHA256",
    _RSASHA512: "RSASHA512",
    _ECDSAP256: "ECDSAP256SHA256",
    _ECDSAP384: "ECDSAP384SHA384",
    _ED25519: "ED25519",
}
_RSA_ALGORITHMS = frozenset({_RSASHA1, _RSASHA1_NSEC3, _RSASHA256, _RSASHA512})
_SHA1_ALGORITHMS = frozenset({_RSASHA1, _RSASHA1_NSEC3})  # deprecated: warned about at start
_EC_CURVES = {_ECDSAP256: (ec.SECP256R1(), 32), _ECDSAP384: (ec.SECP384R1(), 48)}
_RSA_FIELDS = ("Modulus", "PublicExponent", "PrivateExponent", "Prime1", "Prime2",
               "Exponent1", "Exponent2", "Coefficient")

_KSK_FLAGS = 257  # ZONE | SEP: the single key is both KSK and ZSK, as SkyDNS used it
_INCEPTION_SKEW = 3600  # back-date inception for resolvers with slow clocks
_SIG_LIFETIME = 7 * 86400  # SkyDNS signed for one week...
_SIG_REFRESH = 86400  # ...and re-signed when less than a day was left

_NSEC3_SHA1 = 1
_HASH_MOD = 1 << 160
_APEX_TYPES = frozenset({dns.rdatatype.SOA, dns.rdatatype.NS, dns.rdatatype.DNSKEY,
                         dns.rdatatype.NSEC3PARAM, dns.rdatatype.RRSIG})
_UNSIGNED = frozenset({dns.rdatatype.RRSIG, dns.rdatatype.OPT, dns.rdatatype.TSIG})

log = logging.getLogger("skydns.dnssec")


class DnssecKeyError(Exception):
    """The -dnssec key pair cannot be used; the message names the file and the reason."""


# --- key files -------------------------------------------------------------------------


def _key_paths(key_base_path: str) -> tuple[str, str]:
    base = os.fspath(key_base_path)
    for suffix in (".key", ".private"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base + ".key", base + ".private"


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise DnssecKeyError(f"{path}: cannot read key file: {e}") from e


def _parse_public(path: str, text: str) -> tuple[dns.name.Name, dns.rdata.Rdata]:
    """Parse the DNSKEY RR of a BIND .key file: ``owner [ttl] [IN] DNSKEY flags 3 alg key``."""
    tokens = " ".join(line.split(";", 1)[0] for line in text.splitlines()).split()
    upper = [t.upper() for t in tokens]
    if "DNSKEY" not in upper or upper.index("DNSKEY") == 0:
        raise DnssecKeyError(f"{path}: no DNSKEY record found")
    i = upper.index("DNSKEY")
    try:
        owner = dns.name.from_text(tokens[0])
        rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.DNSKEY,
                                    " ".join(tokens[i + 1:]))
    except Exception as e:  # dnspython raises a variety of syntax errors
        raise DnssecKeyError(f"{path}: malformed DNSKEY record: {e}") from e
    return owner, rdata


def _parse_private_fields(path: str, text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(";"):
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise DnssecKeyError(f"{path}: malformed line {line[:40]!r}")
        fields[name.strip().lower()] = value.strip()
    version = fields.get("private-key-format")
    if version not in ("v1.2", "v1.3"):
        raise DnssecKeyError(f"{path}: not a BIND private key (Private-key-format "
                             f"{version!r}, want v1.2 or v1.3)")
    return fields


def _b64_field(path: str, fields: dict[str, str], name: str) -> bytes:
    value = fields.get(name.lower())
    if not value:
        raise DnssecKeyError(f"{path}: missing field {name}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise DnssecKeyError(f"{path}: field {name} is not valid base64") from e


def _parse_private(path: str, text: str):
    """Return (algorithm, cryptography private key) from a BIND .private file."""
    fields = _parse_private_fields(path, text)
    alg_text = fields.get("algorithm", "")
    try:
        algorithm = int(alg_text.split()[0])
    except (IndexError, ValueError):
        raise DnssecKeyError(f"{path}: missing or malformed Algorithm field") from None
    if algorithm not in _ALGORITHMS:
        raise DnssecKeyError(f"{path}: unsupported algorithm {alg_text!r} (supported: "
                             + ", ".join(f"{a} {n}" for a, n in _ALGORITHMS.items()) + ")")
    try:
        if algorithm in _RSA_ALGORITHMS:  # RFC 3110 (5), RFC 5155 (7), RFC 5702 (8, 10)
            n, e, d, p, q, dmp1, dmq1, iqmp = (
                int.from_bytes(_b64_field(path, fields, f), "big") for f in _RSA_FIELDS)
            key = rsa.RSAPrivateNumbers(p, q, d, dmp1, dmq1, iqmp,
                                        rsa.RSAPublicNumbers(e, n)).private_key()
        elif algorithm in _EC_CURVES:
            curve, size = _EC_CURVES[algorithm]
            raw = _b64_field(path, fields, "PrivateKey")
            if len(raw) != size:
                raise DnssecKeyError(f"{path}: PrivateKey is {len(raw)} bytes, want {size}")
            key = ec.derive_private_key(int.from_bytes(raw, "big"), curve)
        else:
            raw = _b64_field(path, fields, "PrivateKey")
            if len(raw) != 32:
                raise DnssecKeyError(f"{path}: PrivateKey is {len(raw)} bytes, want 32")
            key = ed25519.Ed25519PrivateKey.from_private_bytes(raw)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise DnssecKeyError(f"{path}: invalid key material: {e}") from e
    return algorithm, key


def _b64_int(value: int) -> str:
    return base64.b64encode(value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")).decode()


def generate_key_files(directory: str, zone: str, algorithm: int = _ECDSAP256) -> str:
    """Write a BIND-format K<zone>.+<alg>+<tag>.key/.private pair (as dnssec-keygen would,
    KSK/ZSK flag 257) and return the base path. For tests and docs. RSA keys are 2048 bits."""
    if algorithm not in _ALGORITHMS:
        raise ValueError(f"unsupported DNSSEC algorithm {algorithm}")
    origin = dns.name.from_text(zone) if isinstance(zone, str) else zone
    if algorithm in _RSA_ALGORITHMS:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        nums = key.private_numbers()
        values = (nums.public_numbers.n, nums.public_numbers.e, nums.d, nums.p, nums.q,
                  nums.dmp1, nums.dmq1, nums.iqmp)
        body = [f"{f}: {_b64_int(v)}" for f, v in zip(_RSA_FIELDS, values)]
    elif algorithm in _EC_CURVES:
        curve, size = _EC_CURVES[algorithm]
        key = ec.generate_private_key(curve)
        raw = key.private_numbers().private_value.to_bytes(size, "big")
        body = [f"PrivateKey: {base64.b64encode(raw).decode()}"]
    else:
        key = ed25519.Ed25519PrivateKey.generate()
        body = [f"PrivateKey: {base64.b64encode(key.private_bytes_raw()).decode()}"]

    dnskey = dns.dnssec.make_dnskey(key.public_key(), algorithm, flags=_KSK_FLAGS)
    tag = dns.dnssec.key_id(dnskey)
    name = _ALGORITHMS[algorithm]
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    base = os.path.join(os.fspath(directory), f"K{origin.to_text()}+{algorithm:03d}+{tag:05d}")
    with open(base + ".key", "w", encoding="ascii") as f:
        f.write(f"; This is a key-signing key, keyid {tag}, for {origin.to_text()}\n"
                f"; Created: {stamp}\n; Publish: {stamp}\n; Activate: {stamp}\n"
                f"{origin.to_text()} IN DNSKEY {dnskey.to_text(chunksize=0)}\n")
    private = "\n".join(["Private-key-format: v1.3", f"Algorithm: {algorithm} ({name})", *body,
                         f"Created: {stamp}", f"Publish: {stamp}", f"Activate: {stamp}", ""])
    fd = os.open(base + ".private", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(private)
    return base


# --- NSEC3 helpers ---------------------------------------------------------------------


def _nsec3_int(name: dns.name.Name) -> int:
    digest = base64.b32hexdecode(dns.dnssec.nsec3_hash(name, None, 0, _NSEC3_SHA1))
    return int.from_bytes(digest, "big")


def _hash_label(value: int) -> str:
    """base32hex of a 160-bit hash, lower-case; 20 bytes encode to exactly 32 chars, no pad."""
    return base64.b32hexencode((value % _HASH_MOD).to_bytes(20, "big")).decode().lower()


# --- the signer ------------------------------------------------------------------------


class DnssecSigner:
    """Signs responses for one zone with one key pair, caching signatures.

    Thread-safe: the signature cache is guarded by a lock (signing itself is pure).
    """

    def __init__(self, key_base_path: str, zone: str | dns.name.Name,
                 sig_cache_size: int = 10000, dnskey_ttl: int = 3600):
        self.zone = dns.name.from_text(zone) if isinstance(zone, str) else zone
        key_path, private_path = _key_paths(key_base_path)
        owner, dnskey = _parse_public(key_path, _read(key_path))
        algorithm, key = _parse_private(private_path, _read(private_path))
        if owner != self.zone:
            # As SkyDNS: the DNSKEY must live at the apex the server is authoritative for.
            raise DnssecKeyError(f"{key_path}: DNSKEY owner {owner} does not match the "
                                 f"DNSSEC zone {self.zone}")
        if dnskey.algorithm != algorithm:
            raise DnssecKeyError(f"{key_path}: algorithm {int(dnskey.algorithm)} does not "
                                 f"match {private_path} (algorithm {algorithm})")
        if not dnskey.flags & dns.dnssec.Flag.ZONE:
            raise DnssecKeyError(f"{key_path}: not a zone key (flags {dnskey.flags})")
        derived = dns.dnssec.make_dnskey(key.public_key(), algorithm, flags=dnskey.flags)
        if derived.key != dnskey.key:
            raise DnssecKeyError(f"{private_path}: private key does not match {key_path}")

        self.dnskey = dnskey
        self.key_tag = dns.dnssec.key_id(dnskey)
        self._signing_key = dns.dnssec.get_algorithm_cls_from_dnskey(dnskey)(key=key)
        if algorithm in _SHA1_ALGORITHMS:
            self._check_sha1(private_path, algorithm)
        self._dnskey_rrset = dns.rrset.from_rdata(self.zone, dnskey_ttl, dnskey)
        self._cache: OrderedDict[bytes, dns.rdata.Rdata] = OrderedDict()
        self._cache_size = max(0, sig_cache_size)
        self._lock = threading.Lock()
        self.cache_misses = 0  # signatures computed (for skydns_dns_cachemiss_count)

    def _check_sha1(self, private_path: str, algorithm: int) -> None:
        """Warn about a SHA-1 key, and fail now (not on every query) if the crypto library
        refuses SHA-1 signatures (as some system crypto policies do)."""
        extra = ""
        if algorithm == _RSASHA1:
            # RFC 5155 section 2: NSEC3 zones are to be signed with NSEC3-capable algorithms
            # only; 7 is the NSEC3-capable alias of 5. skydns always denies with NSEC3.
            extra = (" Algorithm 5 is not NSEC3-capable (RFC 5155) but skydns proves "
                     "non-existence with NSEC3, so validators may treat its denials as "
                     "insecure; algorithm 7 is the NSEC3-capable equivalent.")
        log.warning("DNSSEC key %s uses algorithm %d (%s): RFC 8624 says signing with "
                    "RSASHA1 and RSASHA1-NSEC3-SHA1 is NOT RECOMMENDED (SHA-1 is broken for "
                    "signatures), and validators that refuse SHA-1 treat the zone as "
                    "insecure.%s Generate a new key with ECDSAP256SHA256 (13), e.g. "
                    "'dnssec-keygen -a ECDSAP256SHA256 -f KSK %s', and roll the DS at the "
                    "parent.", private_path, algorithm, _ALGORITHMS[algorithm], extra,
                    self.zone.to_text())
        try:
            self._signing_key.sign(b"skydns SHA-1 signing probe")
        except Exception as e:  # OpenSSL policies raise various errors for SHA-1
            raise DnssecKeyError(f"{private_path}: cannot sign with algorithm {algorithm} "
                                 f"({_ALGORITHMS[algorithm]}) here: {e!r}") from e

    def dnskey_rrset(self) -> dns.rrset.RRset:
        """The DNSKEY RRset at the apex (a copy, so callers may put it in a message)."""
        return self._dnskey_rrset.copy()

    def ds(self, digest: str = "SHA256") -> dns.rdata.Rdata:
        """The DS record for the parent zone (e.g. to log at start-up for operators)."""
        return dns.dnssec.make_ds(self.zone, self.dnskey, digest)

    def nsec3param_rrset(self, ttl: int) -> dns.rrset.RRset:
        """NSEC3PARAM at the apex, matching the NSEC3 parameters used by add_denial."""
        return dns.rrset.from_text(self.zone, ttl, "IN", "NSEC3PARAM", f"{_NSEC3_SHA1} 0 0 -")

    # -- signing --

    def _in_zone(self, name: dns.name.Name) -> bool:
        return name.is_subdomain(self.zone)

    @staticmethod
    def _cache_key(rrset: dns.rrset.RRset) -> bytes:
        """SHA-256 of the canonical form (RFC 4034 6.2) plus TTL: what the signature covers."""
        h = hashlib.sha256(rrset.name.to_digestable())
        h.update(struct.pack("!HHHI", rrset.rdtype, rrset.rdclass, rrset.covers, rrset.ttl))
        for rd in sorted(rd.to_digestable() for rd in rrset):
            h.update(struct.pack("!H", len(rd)))
            h.update(rd)
        return h.digest()

    def _sign(self, rrset: dns.rrset.RRset, now: float) -> dns.rdata.Rdata:
        key = self._cache_key(rrset)
        with self._lock:
            sig = self._cache.get(key)
            if sig is not None and sig.inception <= now and sig.expiration - now > _SIG_REFRESH:
                self._cache.move_to_end(key)
                return sig
        self.cache_misses += 1
        inception = int(now) - _INCEPTION_SKEW
        sig = dns.dnssec.sign(rrset, self._signing_key, self.zone, self.dnskey,
                              inception=inception, expiration=int(now) + _SIG_LIFETIME)
        if self._cache_size:
            with self._lock:
                self._cache[key] = sig
                self._cache.move_to_end(key)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return sig

    def sign_response(self, response: dns.message.Message, now: float | None = None) -> None:
        """Add an RRSIG after every unsigned in-zone RRset of answer, authority and additional.

        Signatures run from now-1h to now+7d with signer = zone; a cached one is reused while it
        has more than a day left, so a busy name costs one signature per TTL/rdata change.
        """
        if now is None:
            now = time.time()
        for section in (response.answer, response.authority, response.additional):
            signed = {(rs.name, rs.covers) for rs in section
                      if rs.rdtype == dns.rdatatype.RRSIG}
            for rrset in list(section):
                if (rrset.rdtype in _UNSIGNED or not self._in_zone(rrset.name)
                        or (rrset.name, rrset.rdtype) in signed or len(rrset) == 0):
                    continue
                signed.add((rrset.name, rrset.rdtype))
                sig = self._sign(rrset, now)
                # find_rrset keeps the message's RRset index in step with the section.
                response.find_rrset(section, rrset.name, rrset.rdclass, dns.rdatatype.RRSIG,
                                    rrset.rdtype, create=True).add(sig, rrset.ttl)

    # -- denial of existence --

    def _nsec3(self, owner: int, next_: int, types, ttl: int) -> dns.rrset.RRset:
        rdata = dns.rdtypes.ANY.NSEC3.NSEC3(
            dns.rdataclass.IN, dns.rdatatype.NSEC3, _NSEC3_SHA1, 0, 0, b"",
            (next_ % _HASH_MOD).to_bytes(20, "big"),
            dns.rdtypes.ANY.NSEC3.Bitmap.from_rdtypes(sorted(types)))
        return dns.rrset.from_rdata(dns.name.from_text(_hash_label(owner), self.zone), ttl, rdata)

    def add_denial(self, response: dns.message.Message, qname: dns.name.Name, nxdomain: bool,
                   closest_encloser: dns.name.Name, types_at_qname: set[int],
                   minimum_ttl: int) -> None:
        """Append NSEC3 white lies proving NODATA (one matching record for qname) or NXDOMAIN
        (closest encloser match + covers for next closer and *.closest-encloser).

        For NODATA the bitmap is types_at_qname plus RRSIG. For NXDOMAIN types_at_qname is not
        used: the closest encloser's bitmap is RRSIG only, or the apex types when it is the
        apex; the two covering records have empty bitmaps (their owners do not exist).
        """
        if not self._in_zone(qname):
            raise ValueError(f"{qname} is not in zone {self.zone}")
        records = []
        if not nxdomain:
            h = _nsec3_int(qname)
            records.append(self._nsec3(h, h + 1, set(types_at_qname) | {dns.rdatatype.RRSIG},
                                       minimum_ttl))
        else:
            ce = closest_encloser
            if not (self._in_zone(ce) and qname.is_subdomain(ce) and qname != ce):
                raise ValueError(f"{ce} is not a closest encloser of {qname} in {self.zone}")
            h = _nsec3_int(ce)
            ce_types = _APEX_TYPES if ce == self.zone else {dns.rdatatype.RRSIG}
            records.append(self._nsec3(h, h + 1, ce_types, minimum_ttl))
            next_closer = qname.split(len(ce) + 1)[1]
            for name in (next_closer, dns.name.Name((b"*",) + ce.labels)):
                h = _nsec3_int(name)
                records.append(self._nsec3(h - 1, h + 1, (), minimum_ttl))
        present = {rs.name for rs in response.authority if rs.rdtype == dns.rdatatype.NSEC3}
        for rrset in records:
            if rrset.name not in present:
                present.add(rrset.name)
                response.find_rrset(response.authority, rrset.name, dns.rdataclass.IN,
                                    dns.rdatatype.NSEC3, create=True).update(rrset)
