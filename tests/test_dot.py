"""DNS over TLS (RFC 7858, -dot-addr): a real skydns, a real TLS handshake against a
certificate made here, queries through dnspython's DoT client and through kdig +tls."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import ssl
import subprocess

import dns.flags
import dns.message
import dns.query
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from procs import Skydns, free_port, wait_for
from resolvers import require
from test_operations import put

D = "skydns.local."
HOST = "dns.cluster.test"


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory):
    """A CA, and a server certificate it signed for HOST and 127.0.0.1; the server's
    file holds its certificate, then the CA's (an intermediate's place)."""
    tmp = tmp_path_factory.mktemp("dot")
    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(subject, issuer, key, signer, ca, sans=()):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), True))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), False)
        return builder.sign(signer, hashes.SHA256())
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = cert(ca_name, ca_name, ca_key, ca_key, True)
    server = cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]), ca_name, key,
                  ca_key, False, [x509.DNSName(HOST),
                                  x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    pem = serialization.Encoding.PEM
    (tmp / "ca.pem").write_bytes(ca.public_bytes(pem))
    (tmp / "tls.crt").write_bytes(server.public_bytes(pem) + ca.public_bytes(pem))
    (tmp / "tls.key").write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return tmp


@pytest.fixture(scope="module")
def dot_server(etcd, cert_files):
    port = free_port()
    sky = Skydns(etcd.url, f"-dot-addr=127.0.0.1:{port}", f"-dot-cert={cert_files}/tls.crt",
                 f"-dot-key={cert_files}/tls.key")
    sky.start()
    sky.dot_port = port
    yield sky
    sky.close()


def client_context(cert_files):
    context = ssl.create_default_context(cafile=str(cert_files / "ca.pem"))
    return context


def test_answers_over_tls_whole_and_pipelined(etcd_client, dot_server, cert_files):
    put(etcd_client, f"tls.{D}", {"host": "10.5.0.1"})
    for i in range(40):  # wider than any UDP reply: TLS answers it whole, as TCP does
        put(etcd_client, f"w{i}.wide.{D}", {"host": f"10.5.1.{i + 1}"})
    wait_for(lambda: dot_server.query(f"tls.{D}").answer, what="record")
    context = client_context(cert_files)
    reply = dns.query.tls(dns.message.make_query(f"tls.{D}", "A"), "127.0.0.1",
                          port=dot_server.dot_port, ssl_context=context,
                          server_hostname=HOST, timeout=5)
    assert [rd.address for rd in reply.answer[0]] == ["10.5.0.1"]
    wide = dns.query.tls(dns.message.make_query(f"wide.{D}", "A"), "127.0.0.1",
                         port=dot_server.dot_port, ssl_context=context,
                         server_hostname=HOST, timeout=5)
    assert len(wide.answer[0]) == 40 and not wide.flags & dns.flags.TC
    # Several queries on one TLS connection, sent before reading (RFC 7858 3.3).
    with ssl.create_connection(("127.0.0.1", dot_server.dot_port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=HOST) as tls:
        queries = [dns.message.make_query(f"tls.{D}", "A") for _ in range(5)]
        tls.sendall(b"".join(len(w).to_bytes(2, "big") + w
                             for w in (q.to_wire() for q in queries)))
        ids = set()
        for _ in queries:
            length = int.from_bytes(_read(tls, 2), "big")
            ids.add(dns.message.from_wire(_read(tls, length)).id)
        assert ids == {q.id for q in queries}


def _read(sock, n):
    data = b""
    for _ in range(1000):  # bounded
        if len(data) == n:
            return data
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("connection closed")
        data += chunk
    raise AssertionError("short read")


def test_untrusted_or_misnamed_certificate_is_refused_by_the_client(dot_server, cert_files):
    with pytest.raises(ssl.SSLCertVerificationError):
        dns.query.tls(dns.message.make_query(f"tls.{D}", "A"), "127.0.0.1",
                      port=dot_server.dot_port, ssl_context=client_context(cert_files),
                      server_hostname="other.example", timeout=5)


def test_kdig_over_tls(etcd_client, dot_server, cert_files):
    kdig = shutil.which("kdig")
    require(kdig, "kdig (Debian knot-dnsutils) for the DNS-over-TLS interop test")
    put(etcd_client, f"kdig.{D}", {"host": "10.5.0.2"})
    wait_for(lambda: dot_server.query(f"kdig.{D}").answer, what="record")
    out = subprocess.run([kdig, f"@127.0.0.1", "-p", str(dot_server.dot_port), "+tls",
                          f"+tls-ca={cert_files}/ca.pem", f"+tls-hostname={HOST}", "+short",
                          f"kdig.{D}", "A"], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["10.5.0.2"], out.stdout + out.stderr


@pytest.mark.parametrize("flags, says", [
    (["-dot-cert={d}/missing.crt", "-dot-key={d}/tls.key"], "cannot read"),
    (["-dot-cert={d}/tls.key", "-dot-key={d}/tls.key"], "no PEM certificate"),
    (["-dot-cert={d}/tls.crt", "-dot-key={d}/ca.pem"], "unusable"),
    ([], "needs -dot-cert and -dot-key"),
])
def test_unusable_certificates_stop_skydns_at_start(etcd, cert_files, flags, says):
    sky = Skydns(etcd.url, f"-dot-addr=127.0.0.1:{free_port()}",
                 *(f.format(d=cert_files) for f in flags))
    try:
        proc = subprocess.run(sky.argv(), capture_output=True, text=True, timeout=30)
    finally:
        sky.close()
    assert proc.returncode != 0 and says in proc.stderr, proc.stderr[-800:]


def test_tls_libraries_are_loaded_only_with_dot(etcd, dot_server):
    """Twisted's TCP transport would load pyOpenSSL (and OpenSSL, ~11 MiB) in every
    skydns; only one that serves DNS over TLS has it."""
    plain = Skydns(etcd.url)
    try:
        plain.start()
        assert "_rust.abi3" not in open(f"/proc/{plain.proc.pid}/maps").read()
    finally:
        plain.close()
    assert "_rust.abi3" in open(f"/proc/{dot_server.proc.pid}/maps").read()
