"""Unit tests for skydns.dnssec: signatures and NSEC3 proofs checked with dnspython's validator."""

from __future__ import annotations

import base64
import logging
import os
import time

import dns.dnssec
import dns.dnssecalgs.rsa
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from skydns.dnssec import DnssecKeyError, DnssecSigner, generate_key_files

ZONE = dns.name.from_text("cluster.local.")
MODERN = [8, 10, 13, 14, 15]
SHA1 = [5, 7]  # RSASHA1, RSASHA1-NSEC3-SHA1: accepted for old SkyDNS keys, with a warning
ALGORITHMS = SHA1 + MODERN
NOW = 1_700_000_000.0
DAY = 86400


@pytest.fixture(scope="module")
def keydir(tmp_path_factory):
    return tmp_path_factory.mktemp("keys")


class _KeyBases(dict):
    """algorithm -> base path of a generated pair, made on first use (so that a failure for
    one algorithm only fails the tests that use it)."""

    def __init__(self, directory):
        super().__init__()
        self.directory = directory

    def __missing__(self, alg):
        self[alg] = generate_key_files(self.directory, "cluster.local.", alg)
        return self[alg]


@pytest.fixture(scope="module")
def key_bases(keydir):
    return _KeyBases(str(keydir))


@pytest.fixture
def signer(key_bases):
    return DnssecSigner(key_bases[13], "cluster.local.")


def a_rrset(name="web.default.svc.cluster.local.", ttl=30, addr="10.0.0.1"):
    return dns.rrset.from_text(name, ttl, "IN", "A", addr)


def srv_rrset():
    return dns.rrset.from_text("_http._tcp.web.default.svc.cluster.local.", 30, "IN", "SRV",
                               "10 100 80 web.default.svc.cluster.local.")


def response(qname="web.default.svc.cluster.local.", qtype="A"):
    query = dns.message.make_query(qname, qtype, want_dnssec=True)
    return dns.message.make_response(query)


def sigs(msg, section="answer"):
    """{(owner, covered type): RRSIG RRset} of one section."""
    return {(rs.name, rs.covers): rs for rs in getattr(msg, section)
            if rs.rdtype == dns.rdatatype.RRSIG}


def keys_of(signer):
    return {signer.zone: signer.dnskey_rrset()}


# --- signing ---------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_signatures_validate_and_tampering_fails(key_bases, alg):
    signer = DnssecSigner(key_bases[alg], "cluster.local.")
    msg = response()
    a, srv = a_rrset(), srv_rrset()
    msg.answer.append(a)
    msg.additional.append(srv)
    now = time.time()
    signer.sign_response(msg, now=now)

    for rrset, section in ((a, "answer"), (srv, "additional")):
        sig_rrset = sigs(msg, section)[(rrset.name, rrset.rdtype)]
        assert len(sig_rrset) == 1 and sig_rrset.ttl == rrset.ttl
        sig = sig_rrset[0]
        assert sig.algorithm == alg and sig.signer == ZONE
        assert sig.key_tag == signer.key_tag
        assert sig.inception == int(now) - 3600
        assert sig.expiration == int(now) + 7 * DAY
        dns.dnssec.validate(rrset, sig_rrset, keys_of(signer))

    tampered_a = a_rrset(addr="10.0.0.2")
    with pytest.raises(dns.dnssec.ValidationFailure):
        dns.dnssec.validate(tampered_a, sigs(msg)[(a.name, a.rdtype)], keys_of(signer))
    tampered_srv = dns.rrset.from_text(srv.name, 30, "IN", "SRV",
                                       "10 100 81 web.default.svc.cluster.local.")
    with pytest.raises(dns.dnssec.ValidationFailure):
        dns.dnssec.validate(tampered_srv, sigs(msg, "additional")[(srv.name, srv.rdtype)],
                            keys_of(signer))


def test_signature_does_not_validate_with_another_key(tmp_path, key_bases):
    signer = DnssecSigner(key_bases[13], ZONE)
    other = DnssecSigner(generate_key_files(str(tmp_path), "cluster.local.", 13), ZONE)
    msg = response()
    msg.answer.append(a_rrset())
    signer.sign_response(msg)
    with pytest.raises(dns.dnssec.ValidationFailure):
        dns.dnssec.validate(msg.answer[0], msg.answer[1], keys_of(other))


def test_dnskey_rrset_is_signed_by_itself(signer):
    msg = response("cluster.local.", "DNSKEY")
    msg.answer.append(signer.dnskey_rrset())
    signer.sign_response(msg)
    dnskey_rrset, sig_rrset = msg.answer
    assert dnskey_rrset.name == ZONE and dnskey_rrset.ttl == 3600
    assert sig_rrset.covers == dns.rdatatype.DNSKEY
    dns.dnssec.validate(dnskey_rrset, sig_rrset, {ZONE: dnskey_rrset})


def test_out_of_zone_rrsets_are_not_signed(signer):
    msg = response()
    msg.answer.append(dns.rrset.from_text("web.default.svc.cluster.local.", 30, "IN", "CNAME",
                                          "www.example.com."))
    msg.answer.append(dns.rrset.from_text("www.example.com.", 30, "IN", "A", "192.0.2.1"))
    msg.answer.append(dns.rrset.from_text("xcluster.local.", 30, "IN", "A", "192.0.2.2"))
    msg.authority.append(dns.rrset.from_text(
        "cluster.local.", 60, "IN", "SOA", "ns.dns.cluster.local. hostmaster.cluster.local. "
        "1 7200 1800 86400 60"))
    signer.sign_response(msg)
    assert set(sigs(msg)) == {(dns.name.from_text("web.default.svc.cluster.local."),
                               dns.rdatatype.CNAME)}
    assert set(sigs(msg, "authority")) == {(ZONE, dns.rdatatype.SOA)}
    soa = msg.authority[0]
    dns.dnssec.validate(soa, sigs(msg, "authority")[(ZONE, soa.rdtype)], keys_of(signer))


def test_already_signed_rrsets_are_not_signed_twice(signer):
    msg = response()
    msg.answer.append(a_rrset())
    signer.sign_response(msg, now=NOW)
    signer.sign_response(msg, now=NOW + 10)
    assert len(msg.answer) == 2
    assert len(msg.answer[1]) == 1
    # The message's RRset index knows about the RRSIG, so find_rrset sees it too.
    found = msg.find_rrset(msg.answer, msg.answer[0].name, "IN", "RRSIG", "A")
    assert found is msg.answer[1]


def test_response_round_trips_through_wire(signer):
    msg = response()
    msg.answer.append(a_rrset())
    msg.answer.append(srv_rrset())
    signer.sign_response(msg)
    parsed = dns.message.from_wire(msg.to_wire())
    for rrset in (a_rrset(), srv_rrset()):
        sig = parsed.find_rrset(parsed.answer, rrset.name, "IN", "RRSIG", rrset.rdtype)
        dns.dnssec.validate(rrset, sig, keys_of(signer))


# --- signature cache -------------------------------------------------------------------


def sign_one(signer, rrset, now):
    msg = response()
    msg.answer.append(rrset)
    signer.sign_response(msg, now=now)
    return sigs(msg)[(rrset.name, rrset.rdtype)][0]


def test_cache_reuses_signature_for_same_rrset(signer):
    first = sign_one(signer, a_rrset(), NOW)
    assert sign_one(signer, a_rrset(), NOW + 100) == first
    # Case of the owner does not matter: the key is the canonical form.
    assert sign_one(signer, a_rrset("WEB.default.svc.cluster.local."), NOW + 200) == first
    # Still more than a day left after 5 days: reused.
    assert sign_one(signer, a_rrset(), NOW + 5 * DAY) == first


def test_cache_misses_on_ttl_or_rdata_change(signer):
    first = sign_one(signer, a_rrset(), NOW)
    other_ttl = sign_one(signer, a_rrset(ttl=29), NOW + 100)
    other_rdata = sign_one(signer, a_rrset(addr="10.0.0.9"), NOW + 100)
    assert other_ttl != first and other_ttl.original_ttl == 29
    assert other_ttl.inception == int(NOW + 100) - 3600
    assert other_rdata != first and other_rdata.inception == int(NOW + 100) - 3600
    dns.dnssec.validate(a_rrset(ttl=29), _sig_rrset(a_rrset(ttl=29), other_ttl),
                        keys_of(signer), now=NOW + 100)


def _sig_rrset(rrset, sig):
    return dns.rrset.from_rdata(rrset.name, rrset.ttl, sig)


def test_cache_resigns_when_less_than_a_day_is_left(signer):
    first = sign_one(signer, a_rrset(), NOW)
    later = NOW + 6 * DAY + 1
    fresh = sign_one(signer, a_rrset(), later)
    assert fresh != first and fresh.inception == int(later) - 3600
    dns.dnssec.validate(a_rrset(), _sig_rrset(a_rrset(), fresh), keys_of(signer), now=later)


def test_cache_is_a_bounded_lru(key_bases):
    signer = DnssecSigner(key_bases[13], ZONE, sig_cache_size=2)
    r1, r2, r3 = (a_rrset(addr=f"10.0.0.{i}") for i in (1, 2, 3))
    s1 = sign_one(signer, r1, NOW)
    s2 = sign_one(signer, r2, NOW)
    assert sign_one(signer, r1, NOW + 1) == s1  # r1 becomes most recently used
    sign_one(signer, r3, NOW + 2)  # evicts r2, the least recently used
    assert sign_one(signer, r1, NOW + 3) == s1
    again = sign_one(signer, r2, NOW + 4)
    assert again != s2 and again.inception == int(NOW + 4) - 3600
    assert len(signer._cache) == 2


def test_cache_can_be_disabled(key_bases):
    signer = DnssecSigner(key_bases[13], ZONE, sig_cache_size=0)
    first = sign_one(signer, a_rrset(), NOW)
    assert sign_one(signer, a_rrset(), NOW + 1) != first


# --- NSEC3 -----------------------------------------------------------------------------


def h(name) -> int:
    digest = base64.b32hexdecode(dns.dnssec.nsec3_hash(name, None, 0, 1))
    return int.from_bytes(digest, "big")


def owner_hash(rrset) -> int:
    return int.from_bytes(base64.b32hexdecode(rrset.name.labels[0].upper()), "big")


def nsec3s(msg):
    return [rs for rs in msg.authority if rs.rdtype == dns.rdatatype.NSEC3]


def types_in(nsec3):
    return {t for window, bitmap in nsec3.windows
            for i, byte in enumerate(bitmap) for bit in range(8)
            if byte & (0x80 >> bit) for t in [window * 256 + i * 8 + bit]}


def test_nsec3_nodata(signer):
    qname = dns.name.from_text("web.default.svc.cluster.local.")
    msg = response(qname.to_text(), "AAAA")
    signer.add_denial(msg, qname, False, qname, {dns.rdatatype.A}, 60)
    (rrset,) = nsec3s(msg)
    label = rrset.name.labels[0].decode()
    assert label == dns.dnssec.nsec3_hash(qname, None, 0, 1).lower()
    assert rrset.name.parent() == ZONE and rrset.ttl == 60
    (rd,) = rrset
    assert (rd.algorithm, rd.flags, rd.iterations, rd.salt) == (1, 0, 0, b"")
    assert int.from_bytes(rd.next, "big") == h(qname) + 1
    assert types_in(rd) == {dns.rdatatype.A, dns.rdatatype.RRSIG}

    signer.sign_response(msg)
    dns.dnssec.validate(rrset, sigs(msg, "authority")[(rrset.name, dns.rdatatype.NSEC3)],
                        keys_of(signer))


def test_nsec3_nodata_at_apex(signer):
    apex_types = {dns.rdatatype.SOA, dns.rdatatype.NS, dns.rdatatype.DNSKEY,
                  dns.rdatatype.NSEC3PARAM}
    msg = response("cluster.local.", "TXT")
    signer.add_denial(msg, ZONE, False, ZONE, apex_types, 60)
    (rrset,) = nsec3s(msg)
    assert owner_hash(rrset) == h(ZONE)
    assert types_in(rrset[0]) == apex_types | {dns.rdatatype.RRSIG}


def covers(rrset, target: int) -> bool:
    owner, nxt = owner_hash(rrset), int.from_bytes(rrset[0].next, "big")
    return owner < target < nxt


@pytest.mark.parametrize("qname, ce", [
    ("nope.cluster.local.", "cluster.local."),
    ("a.b.nope.svc.cluster.local.", "svc.cluster.local."),
])
def test_nsec3_nxdomain(signer, qname, ce):
    qname, ce = dns.name.from_text(qname), dns.name.from_text(ce)
    msg = response(qname.to_text())
    msg.set_rcode(dns.rcode.NXDOMAIN)
    signer.add_denial(msg, qname, True, ce, set(), 30)
    records = nsec3s(msg)
    assert len(records) == 3 and all(rs.ttl == 30 for rs in records)

    matching = [rs for rs in records if owner_hash(rs) == h(ce)]
    assert len(matching) == 1
    assert matching[0].name.labels[0].decode() == dns.dnssec.nsec3_hash(ce, None, 0, 1).lower()
    assert int.from_bytes(matching[0][0].next, "big") == h(ce) + 1
    expected = ({dns.rdatatype.SOA, dns.rdatatype.NS, dns.rdatatype.DNSKEY,
                 dns.rdatatype.NSEC3PARAM, dns.rdatatype.RRSIG} if ce == ZONE
                else {dns.rdatatype.RRSIG})
    assert types_in(matching[0][0]) == expected

    next_closer = qname.split(len(ce) + 1)[1]
    wildcard = dns.name.from_text("*", ce)
    assert [rs for rs in records if covers(rs, h(next_closer))]
    assert [rs for rs in records if covers(rs, h(wildcard))]
    # No record matches qname itself, or the denial would be NODATA.
    assert all(owner_hash(rs) != h(qname) for rs in records)

    signer.sign_response(msg)
    auth_sigs = sigs(msg, "authority")
    for rrset in records:
        dns.dnssec.validate(rrset, auth_sigs[(rrset.name, dns.rdatatype.NSEC3)], keys_of(signer))


def test_nsec3_records_are_not_duplicated(signer):
    qname = dns.name.from_text("nope.cluster.local.")
    msg = response(qname.to_text())
    signer.add_denial(msg, qname, True, ZONE, set(), 30)
    signer.add_denial(msg, qname, True, ZONE, set(), 30)
    assert len(nsec3s(msg)) == 3 and all(len(rs) == 1 for rs in nsec3s(msg))


def test_denial_outside_zone_is_rejected(signer):
    with pytest.raises(ValueError):
        signer.add_denial(response(), dns.name.from_text("example.com."), False,
                          dns.name.from_text("example.com."), set(), 30)
    with pytest.raises(ValueError):
        signer.add_denial(response(), dns.name.from_text("a.cluster.local."), True,
                          dns.name.from_text("b.cluster.local."), set(), 30)


# --- key files -------------------------------------------------------------------------


def dnskey_from_key_file(base):
    """Parse the .key file with dnspython's own master-file reader, independently of ours."""
    with open(base + ".key") as f:
        line = next(ln for ln in f if ln.strip() and not ln.startswith(";"))
    owner, _class, _type, rdata = line.split(None, 3)
    return dns.rrset.from_text(owner, 3600, "IN", "DNSKEY", rdata)


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_key_files_round_trip(key_bases, alg):
    base = key_bases[alg]
    tag = int(os.path.basename(base).rsplit("+", 1)[1])
    assert os.path.basename(base).startswith(f"Kcluster.local.+{alg:03d}+")
    for path in (base, base + ".key", base + ".private"):
        signer = DnssecSigner(path, "cluster.local")
        assert signer.zone == ZONE
        assert signer.key_tag == tag == dns.dnssec.key_id(signer.dnskey_rrset()[0])
    from_file = dnskey_from_key_file(base)
    assert signer.dnskey_rrset()[0] == from_file[0]
    assert from_file[0].flags == 257 and from_file[0].algorithm == alg
    assert oct(os.stat(base + ".private").st_mode & 0o777) == "0o600"
    # The private key read back from .private signs what the public key in .key validates.
    msg = response()
    msg.answer.append(a_rrset())
    signer.sign_response(msg)
    dns.dnssec.validate(msg.answer[0], msg.answer[1], {ZONE: from_file})
    ds = signer.ds()
    assert ds.key_tag == tag and ds == dns.dnssec.make_ds(ZONE, from_file[0], "SHA256")


def test_rsa_private_file_has_bind_fields(key_bases):
    with open(key_bases[8] + ".private") as f:
        text = f.read()
    assert text.startswith("Private-key-format: v1.3\nAlgorithm: 8 (RSASHA256)\n")
    for field in ("Modulus", "PublicExponent", "PrivateExponent", "Prime1", "Prime2",
                  "Exponent1", "Exponent2", "Coefficient"):
        assert f"\n{field}: " in text


def test_nsec3param_matches_denial_parameters(signer):
    (rd,) = signer.nsec3param_rrset(60)
    assert (rd.algorithm, rd.flags, rd.iterations, rd.salt) == (1, 0, 0, b"")


def copy_pair(src_base, dst_dir, private_text=None, key_text=None):
    """Copy a key pair under a new base name, optionally replacing one file's contents."""
    dst = os.path.join(dst_dir, os.path.basename(src_base))
    for suffix, text in ((".key", key_text), (".private", private_text)):
        if text is None:
            with open(src_base + suffix) as f:
                text = f.read()
        with open(dst + suffix, "w") as f:
            f.write(text)
    return dst


def private_text(base):
    with open(base + ".private") as f:
        return f.read()


def drop_line(text, prefix):
    return "".join(ln for ln in text.splitlines(True) if not ln.startswith(prefix))


@pytest.mark.parametrize("alg, mutate, reason", [
    (13, lambda t: drop_line(t, "PrivateKey:"), "missing field PrivateKey"),
    (8, lambda t: drop_line(t, "Prime2:"), "missing field Prime2"),
    (13, lambda t: t.replace("Algorithm: 13 (ECDSAP256SHA256)", "Algorithm: 1 (RSAMD5)"),
     "unsupported algorithm"),
    (13, lambda t: t.replace("Algorithm: 13 (ECDSAP256SHA256)", "Algorithm: 3 (DSA)"),
     "unsupported algorithm"),
    (13, lambda t: t.replace("Algorithm: 13 (ECDSAP256SHA256)", "Algorithm: 5 (RSASHA1)"),
     "missing field Modulus"),  # 5 is read as an RSA key now
    (7, lambda t: drop_line(t, "Coefficient:"), "missing field Coefficient"),
    (13, lambda t: t.replace("Algorithm: 13 (ECDSAP256SHA256)", "Algorithm: 99"),
     "unsupported algorithm"),
    (13, lambda t: drop_line(t, "Algorithm:"), "Algorithm"),
    (13, lambda t: "this is not a key file\n", "malformed line"),
    (13, lambda t: "\x00\x01garbage: \xff\n", ""),
    (13, lambda t: t.replace("v1.3", "v2.0"), "Private-key-format"),
    (13, lambda t: t.replace("PrivateKey: ", "PrivateKey: !!"), "not valid base64"),
    (15, lambda t: t.replace("PrivateKey: ", "PrivateKey: AAAA"), "bytes, want 32"),
    (8, lambda t: t.replace("Prime1: ", "Prime1: AQAB"), "invalid key material"),
])
def test_malformed_private_file(tmp_path, key_bases, alg, mutate, reason):
    base = copy_pair(key_bases[alg], str(tmp_path),
                     private_text=mutate(private_text(key_bases[alg])))
    with pytest.raises(DnssecKeyError) as err:
        DnssecSigner(base, ZONE)
    assert base + ".private" in str(err.value) and reason in str(err.value)


def test_missing_files(tmp_path, key_bases):
    base = copy_pair(key_bases[13], str(tmp_path))
    os.unlink(base + ".private")
    with pytest.raises(DnssecKeyError, match="cannot read") as err:
        DnssecSigner(base, ZONE)
    assert base + ".private" in str(err.value)
    with pytest.raises(DnssecKeyError, match="cannot read"):
        DnssecSigner(str(tmp_path / "Knothing.+013+00001"), ZONE)


def test_malformed_key_file(tmp_path, key_bases):
    base = copy_pair(key_bases[13], str(tmp_path), key_text="; only a comment\n")
    with pytest.raises(DnssecKeyError, match="no DNSKEY") as err:
        DnssecSigner(base, ZONE)
    assert base + ".key" in str(err.value)
    base = copy_pair(key_bases[13], str(tmp_path), key_text="cluster.local. IN DNSKEY 257 x\n")
    with pytest.raises(DnssecKeyError, match="malformed DNSKEY"):
        DnssecSigner(base, ZONE)


def test_key_pair_mismatches(tmp_path, key_bases):
    with open(key_bases[14] + ".key") as f:
        other_alg = f.read()
    base = copy_pair(key_bases[13], str(tmp_path), key_text=other_alg)
    with pytest.raises(DnssecKeyError, match="does not match"):
        DnssecSigner(base, ZONE)

    other_key = generate_key_files(str(tmp_path), "cluster.local.", 13)
    with open(other_key + ".key") as f:
        same_alg_other_key = f.read()
    base = copy_pair(key_bases[13], str(tmp_path), key_text=same_alg_other_key)
    with pytest.raises(DnssecKeyError, match="private key does not match"):
        DnssecSigner(base, ZONE)

    with pytest.raises(DnssecKeyError, match="does not match the DNSSEC zone"):
        DnssecSigner(key_bases[13], "skydns.local.")


@pytest.mark.parametrize("alg", [1, 3, 6, 16])
def test_generate_rejects_unsupported_algorithm(tmp_path, alg):
    with pytest.raises(ValueError):
        generate_key_files(str(tmp_path), "cluster.local.", alg)


def test_reads_rfc8080_example_key(tmp_path):
    """The Ed25519 key pair of RFC 8080 section 6, in BIND's own file layout (with a TTL)."""
    base = str(tmp_path / "Kexample.com.+015+03613")
    with open(base + ".key", "w") as f:
        f.write("; This is a key-signing key, keyid 3613, for example.com.\n"
                "example.com. 3600 IN DNSKEY 257 3 15 "
                "l02Woi0iS8Aa25FQkUd9RMzZHJpBoRQwAQEX1SxZJA4=\n")
    with open(base + ".private", "w") as f:
        f.write("Private-key-format: v1.2\nAlgorithm: 15 (ED25519)\n"
                "PrivateKey: ODIyNjAzODQ2MjgwODAxMjI2NDUxOTAyMDQxNDIyNjI=\n")
    signer = DnssecSigner(base, "example.com.")
    assert signer.key_tag == 3613
    expected = dns.rrset.from_text("example.com.", 3600, "IN", "DNSKEY",
                                   "257 3 15 l02Woi0iS8Aa25FQkUd9RMzZHJpBoRQwAQEX1SxZJA4=")
    msg = response("example.com.", "MX")
    mx = dns.rrset.from_text("example.com.", 3600, "IN", "MX", "10 mail.example.com.")
    msg.answer.append(mx)
    signer.sign_response(msg)
    dns.dnssec.validate(mx, msg.answer[1], {dns.name.from_text("example.com."): expected})


# --- SHA-1 algorithms (5, 7) kept for existing SkyDNS keys -----------------------------------


def dnssec_warnings(caplog):
    return [r for r in caplog.records
            if r.name == "skydns.dnssec" and r.levelno >= logging.WARNING]


@pytest.mark.parametrize("alg, name, nsec3_capable", [
    (5, "RSASHA1", False),
    (7, "RSASHA1-NSEC3-SHA1", True),
])
def test_sha1_key_loads_signs_and_warns(key_bases, caplog, alg, name, nsec3_capable):
    base = key_bases[alg]
    with open(base + ".private") as f:
        assert f.read().startswith(f"Private-key-format: v1.3\nAlgorithm: {alg} ({name})\n")
    caplog.set_level(logging.INFO)
    signer = DnssecSigner(base + ".key", "cluster.local.")

    (record,) = dnssec_warnings(caplog)
    text = record.getMessage()
    assert record.levelno == logging.WARNING
    assert base + ".private" in text and f"algorithm {alg} ({name})" in text
    assert "RFC 8624" in text and "NOT RECOMMENDED" in text
    assert "RSASHA1 and RSASHA1-NSEC3-SHA1" in text and "ECDSAP256SHA256 (13)" in text
    assert ("not NSEC3-capable" in text) is not nsec3_capable

    dnskey = signer.dnskey_rrset()
    assert dnskey[0].algorithm == alg and dnskey[0].protocol == 3 and dnskey[0].flags == 257
    assert dnskey[0] == dnskey_from_key_file(base)[0]
    msg = response()
    msg.answer.append(a_rrset())
    msg.answer.append(signer.dnskey_rrset())
    signer.sign_response(msg)
    for rrset in (a_rrset(), dnskey):
        sig_rrset = sigs(msg)[(rrset.name, rrset.rdtype)]
        assert sig_rrset[0].algorithm == alg and sig_rrset[0].key_tag == signer.key_tag
        assert len(sig_rrset[0].signature) == 256  # RSA-2048, PKCS#1 v1.5
        dns.dnssec.validate(rrset, sig_rrset, {ZONE: dnskey})
    with pytest.raises(dns.dnssec.ValidationFailure):
        tampered = a_rrset(addr="10.0.0.2")
        dns.dnssec.validate(tampered, sigs(msg)[(tampered.name, tampered.rdtype)], {ZONE: dnskey})


@pytest.mark.parametrize("alg", SHA1)
def test_sha1_signature_is_pkcs1_v15_with_sha1(key_bases, alg):
    """Checked with `cryptography` directly, not through dnspython: RFC 3110 section 3."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    signer = DnssecSigner(key_bases[alg], ZONE)
    msg = response()
    msg.answer.append(a_rrset())
    signer.sign_response(msg, now=NOW)
    sig = msg.answer[1][0]
    data = dns.dnssec._make_rrsig_signature_data(a_rrset(), sig)  # RFC 4034 section 3.1.8.1
    public = dns.dnssecalgs.get_algorithm_cls(alg).public_cls.from_dnskey(signer.dnskey).key
    public.verify(sig.signature, data, padding.PKCS1v15(), hashes.SHA1())
    with pytest.raises(InvalidSignature):  # and it is not a SHA-256 signature
        public.verify(sig.signature, data, padding.PKCS1v15(), hashes.SHA256())


@pytest.mark.parametrize("alg", SHA1)
def test_sha1_nsec3_denials_validate(key_bases, alg):
    signer = DnssecSigner(key_bases[alg], ZONE)
    qname = dns.name.from_text("nope.svc.cluster.local.")
    msg = response(qname.to_text())
    msg.set_rcode(dns.rcode.NXDOMAIN)
    signer.add_denial(msg, qname, True, dns.name.from_text("svc.cluster.local."), set(), 30)
    nodata = dns.name.from_text("web.default.svc.cluster.local.")
    signer.add_denial(msg, nodata, False, nodata, {dns.rdatatype.A}, 30)
    signer.sign_response(msg)
    records = nsec3s(msg)
    assert len(records) == 4
    auth_sigs = sigs(msg, "authority")
    for rrset in records:
        assert (rrset[0].algorithm, rrset[0].iterations, rrset[0].salt) == (1, 0, b"")
        sig_rrset = auth_sigs[(rrset.name, dns.rdatatype.NSEC3)]
        assert sig_rrset[0].algorithm == alg
        dns.dnssec.validate(rrset, sig_rrset, keys_of(signer))


@pytest.mark.parametrize("alg", MODERN)
def test_modern_algorithms_do_not_warn(key_bases, caplog, alg):
    caplog.set_level(logging.DEBUG)
    signer = DnssecSigner(key_bases[alg], ZONE)
    assert signer.dnskey.algorithm == alg
    assert dnssec_warnings(caplog) == []


def test_sha1_key_with_other_algorithm_number_is_refused(tmp_path, key_bases):
    """Same RSA key material, but the .key says 7 and the .private says 5."""
    with open(key_bases[5] + ".key") as f:
        relabelled = f.read().replace(" DNSKEY 257 3 5 ", " DNSKEY 257 3 7 ")
    base = copy_pair(key_bases[5], str(tmp_path), key_text=relabelled)
    with pytest.raises(DnssecKeyError, match=r"algorithm 7 does not match .*algorithm 5"):
        DnssecSigner(base, ZONE)


def test_sha1_key_fails_at_start_when_sha1_signing_is_refused(key_bases, monkeypatch):
    """A crypto policy that forbids SHA-1 signatures (as e.g. RHEL 9's DEFAULT does) must
    stop skydns at start with the file named, not fail every signed answer later."""
    def refuse(self, data, verify=False, deterministic=True):
        raise ValueError("SHA1 signatures are disabled by policy")
    monkeypatch.setattr(dns.dnssecalgs.rsa.PrivateRSASHA1NSEC3SHA1, "sign", refuse)
    with pytest.raises(DnssecKeyError, match="cannot sign with algorithm 7") as err:
        DnssecSigner(key_bases[7], ZONE)
    assert key_bases[7] + ".private" in str(err.value)
