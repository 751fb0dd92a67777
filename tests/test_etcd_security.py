"""skydns against an etcd that wants TLS client certificates, or user/password auth.

A CA, a server certificate (127.0.0.1 / localhost) and a client certificate are made with
``cryptography`` for each run; etcd runs with ``--client-cert-auth`` on an https:// client
URL. skydns must load and watch records with ``-ca-cert/-tls-key/-tls-pem`` (or the
ETCD_CACERT/ETCD_TLSKEY/ETCD_TLSPEM environment variables), and with ``-username/-password``
when etcd auth is on. When the credentials are missing or wrong it must keep running, say
why on /healthz (503) and in its log, and answer SERVFAIL (never NXDOMAIN) for its domain.

Everything is on 127.0.0.1; every process is stopped by PID in a fixture's teardown.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import subprocess
import time

import dns.rcode
import etcd3
import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from procs import BIN, Etcd, Skydns, etcd_binary, wait_for

ROOT_PASSWORD = "rootpw"


# -- certificates --------------------------------------------------------------------------


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path, key):
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def _write_cert(path, cert):
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_pki(directory):
    """ca.pem, server.{pem,key} (SAN IP 127.0.0.1, DNS localhost), client.{pem,key}."""
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=1)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder()
          .subject_name(_name("skydns test CA")).issuer_name(_name("skydns test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False),
                         critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    _write_cert(directory / "ca.pem", ca)

    def leaf(stem, cn, usages, san=None):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder()
                   .subject_name(_name(cn)).issuer_name(ca.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(start).not_valid_after(end)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True,
                                                content_commitment=False,
                                                data_encipherment=False, key_agreement=False,
                                                key_cert_sign=False, crl_sign=False,
                                                encipher_only=False, decipher_only=False),
                                  critical=True)
                   .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       ca_key.public_key()), critical=False))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        _write_cert(directory / f"{stem}.pem", builder.sign(ca_key, hashes.SHA256()))
        _write_key(directory / f"{stem}.key", key)

    # etcd's gRPC gateway dials the server with the server certificate, hence clientAuth too.
    leaf("server", "127.0.0.1",
         [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
         san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    leaf("client", "skydns-client", [ExtendedKeyUsageOID.CLIENT_AUTH])
    return {name: str(directory / name) for name in
            ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


# -- etcd with TLS client certificates -----------------------------------------------------


class TlsEtcd(Etcd):
    """procs.Etcd, but clients must come over TLS with a certificate signed by our CA."""

    def __init__(self, pki):
        super().__init__()
        self.pki = pki

    @property
    def url(self):
        return f"https://127.0.0.1:{self.port}"

    def start(self, port=None):
        self.proc = subprocess.Popen([
            etcd_binary(), "--name", "test", "--data-dir", os.path.join(self.data_dir, "data"),
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--cert-file", self.pki["server.pem"], "--key-file", self.pki["server.key"],
            "--trusted-ca-file", self.pki["ca.pem"], "--client-cert-auth",
            "--listen-peer-urls", f"http://127.0.0.1:{self.peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_port}",
            "--initial-cluster", f"test=http://127.0.0.1:{self.peer_port}",
            "--log-level", "error",
        ], stdout=self.log, stderr=self.log)
        try:
            client = self.client()
            try:
                wait_for(lambda: client.status() is not None, timeout=15,
                         what="TLS etcd to start")
            finally:
                client.close()
        except Exception:
            self.stop()
            raise
        return self

    def client(self, port=None):
        def read(name):
            with open(self.pki[name], "rb") as fh:
                return fh.read()
        creds = grpc.ssl_channel_credentials(read("ca.pem"), read("client.key"),
                                             read("client.pem"))
        endpoint = etcd3.Endpoint("127.0.0.1", port or self.port, secure=True, creds=creds,
                                  time_retry=0.2)
        return etcd3.MultiEndpointEtcd3Client([endpoint], timeout=5, failover=True)


# -- helpers -------------------------------------------------------------------------------


def put(client, name, host):
    """A SkyDNS record for ``name`` (in skydns.local.) pointing at ``host``."""
    labels = name.rstrip(".").split(".")
    client.put("/skydns/" + "/".join(reversed(labels)), json.dumps({"host": host}))


def addresses(sky, name):
    reply = sky.query(name, "A")
    if reply.rcode() != dns.rcode.NOERROR:
        return None
    return sorted(rr.address for rrset in reply.answer for rr in rrset)


def wait_answer(sky, name, expected, timeout=10):
    return wait_for(lambda: addresses(sky, name) == expected, timeout=timeout,
                    what=f"{name} -> {expected}")


def wait_unhealthy(sky, timeout=15):
    """The first /healthz reply that says etcd is down with a reason, once one comes."""
    def check():
        status, body = sky.healthz()
        return (status, body) if status == 503 and "etcd watch down: " in body else None
    return wait_for(check, timeout=timeout, what="/healthz 503 with etcd down reason")


def assert_keeps_failing(sky, name):
    """skydns is alive, /healthz says why not, in-domain names are SERVFAIL (never NXDOMAIN)."""
    status, body = wait_unhealthy(sky)
    assert "records not loaded from etcd yet" in body
    reason = body.split("etcd watch down: ", 1)[1].strip()
    assert reason, body
    for tcp in (False, True):
        assert sky.query(name, "A", tcp=tcp).rcode() == dns.rcode.SERVFAIL
    assert sky.proc.poll() is None, sky.output()
    return reason


def wait_healthy(sky, timeout=8):
    """Wait for /healthz 200; on timeout fail with what skydns said."""
    try:
        wait_for(lambda: sky.healthz()[0] == 200, timeout=timeout, what="healthz 200")
    except TimeoutError:
        pytest.fail(f"skydns never became healthy; /healthz {sky.healthz()!r}; log tail:\n"
                    + "\n".join(sky.output().splitlines()[-6:]))


@pytest.fixture
def skydns_factory():
    started = []

    def start(url, *flags, env=None, wait_loaded=True):
        sky = Skydns(url, *flags, env=env)
        started.append(sky)
        return sky.start(wait_loaded=wait_loaded)
    yield start
    for sky in started:
        sky.close()


# -- TLS -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_etcd(pki):
    server = TlsEtcd(pki)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def tls_client(tls_etcd):
    client = tls_etcd.client()
    client.delete_prefix("/skydns/")
    yield client
    client.close()


def test_tls_etcd_refuses_plain_and_certless_clients(tls_etcd, pki):
    """The fixture really demands TLS with a client certificate (else the tests prove little)."""
    with open(pki["ca.pem"], "rb") as fh:
        ca = fh.read()
    certless = etcd3.MultiEndpointEtcd3Client([etcd3.Endpoint(
        "127.0.0.1", tls_etcd.port, secure=True, creds=grpc.ssl_channel_credentials(ca),
        time_retry=0.2)], timeout=3, failover=True)
    plain = etcd3.MultiEndpointEtcd3Client([etcd3.Endpoint(
        "127.0.0.1", tls_etcd.port, secure=False, time_retry=0.2)], timeout=3, failover=True)
    try:
        for client in (certless, plain):
            with pytest.raises(Exception):
                client.get("/skydns/x")
    finally:
        certless.close()
        plain.close()


def test_tls_client_cert_flags(tls_etcd, tls_client, pki, skydns_factory):
    put(tls_client, "web.skydns.local.", "10.1.0.1")
    sky = skydns_factory(tls_etcd.url, f"-ca-cert={pki['ca.pem']}",
                         f"-tls-key={pki['client.key']}", f"-tls-pem={pki['client.pem']}")
    wait_healthy(sky)
    assert addresses(sky, "web.skydns.local.") == ["10.1.0.1"]
    assert sky.query("nothere.skydns.local.", "A").rcode() == dns.rcode.NXDOMAIN

    # the watch over TLS: a new record, a changed one, a deleted one
    put(tls_client, "new.skydns.local.", "10.1.0.2")
    wait_answer(sky, "new.skydns.local.", ["10.1.0.2"])
    put(tls_client, "web.skydns.local.", "10.1.0.3")
    wait_answer(sky, "web.skydns.local.", ["10.1.0.3"])
    tls_client.delete("/skydns/local/skydns/new")
    wait_for(lambda: sky.query("new.skydns.local.", "A").rcode() == dns.rcode.NXDOMAIN,
             timeout=10, what="deleted record gone")
    assert sky.healthz() == (200, "ok\n")


def test_tls_client_cert_environment(tls_etcd, tls_client, pki, skydns_factory):
    put(tls_client, "env.skydns.local.", "10.2.0.1")
    sky = skydns_factory(tls_etcd.url, env={
        "ETCD_CACERT": pki["ca.pem"], "ETCD_TLSKEY": pki["client.key"],
        "ETCD_TLSPEM": pki["client.pem"]})
    assert not any(f.startswith(("-ca-cert", "-tls-")) for f in sky.argv())
    wait_healthy(sky)
    assert addresses(sky, "env.skydns.local.") == ["10.2.0.1"]
    put(tls_client, "env2.skydns.local.", "10.2.0.2")
    wait_answer(sky, "env2.skydns.local.", ["10.2.0.2"])


def test_tls_without_client_cert_fails_softly(tls_etcd, tls_client, pki, skydns_factory):
    put(tls_client, "web.skydns.local.", "10.3.0.1")
    sky = skydns_factory(tls_etcd.url, f"-ca-cert={pki['ca.pem']}", wait_loaded=False)
    reason = assert_keeps_failing(sky, "web.skydns.local.")
    out = sky.output()
    assert "etcd down" in out, out
    assert "Traceback" not in out, out
    # the server itself still answers what does not need etcd
    assert sky.query("version.bind.", "TXT", rdclass="CH").rcode() == dns.rcode.NOERROR
    assert reason


def test_tls_untrusted_server_fails_softly(tls_etcd, tls_client, pki, skydns_factory,
                                           tmp_path):
    """A CA that did not sign etcd's certificate: the server is not trusted, same soft fail."""
    other = make_pki(tmp_path)
    sky = skydns_factory(tls_etcd.url, f"-ca-cert={other['ca.pem']}",
                         f"-tls-key={pki['client.key']}", f"-tls-pem={pki['client.pem']}",
                         wait_loaded=False)
    assert_keeps_failing(sky, "web.skydns.local.")
    assert "Traceback" not in sky.output()


# -- etcd user/password auth ---------------------------------------------------------------
#
# Over plain http the etcd3 client cannot use a token at all: it sends the token both as
# metadata and as gRPC call credentials, and gRPC refuses call credentials on an insecure
# channel (UNAUTHENTICATED "Established channel does not have a sufficient security level to
# transfer call credential"). The tests' own root client drops the call credentials (the
# metadata alone carries the token); skydns does not, see test_auth_username_password_http.


def etcdctl(url, *args, tls=None):
    argv = [os.path.join(BIN, "etcdctl"), f"--endpoints={url}", "--dial-timeout=3s",
            "--command-timeout=5s"]
    if tls:
        argv += [f"--cacert={tls['ca.pem']}", f"--cert={tls['client.pem']}",
                 f"--key={tls['client.key']}"]
    result = subprocess.run(argv + list(args), capture_output=True, text=True, timeout=15)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


def enable_auth(server, tls=None):
    etcdctl(server.url, "user", "add", f"root:{ROOT_PASSWORD}", tls=tls)
    etcdctl(server.url, "user", "grant-role", "root", "root", tls=tls)
    etcdctl(server.url, "auth", "enable", tls=tls)


def root_client(server):
    """etcd3 as root over plain http (call credentials dropped, see above)."""
    endpoint = etcd3.Endpoint("127.0.0.1", server.port, secure=False, time_retry=0.2)
    client = etcd3.MultiEndpointEtcd3Client([endpoint], timeout=5, failover=True,
                                            user="root", password=ROOT_PASSWORD)
    client.call_credentials = None
    return client


@pytest.fixture(scope="module")
def auth_etcd():
    server = Etcd()
    try:
        server.start()
        enable_auth(server)
        yield server
    finally:
        server.close()


@pytest.fixture
def auth_client(auth_etcd):
    client = root_client(auth_etcd)
    client.delete_prefix("/skydns/")
    yield client
    client.close()


def test_auth_is_enforced(auth_etcd, auth_client):
    put(auth_client, "probe.skydns.local.", "10.4.0.9")
    anonymous = auth_etcd.client()
    try:
        with pytest.raises(Exception):
            anonymous.get("/skydns/local/skydns/probe")
    finally:
        anonymous.close()


def test_auth_username_password_http(auth_etcd, auth_client, skydns_factory):
    put(auth_client, "web.skydns.local.", "10.4.0.1")
    sky = skydns_factory(auth_etcd.url, "-username=root", f"-password={ROOT_PASSWORD}",
                         wait_loaded=False)
    wait_healthy(sky, timeout=6)
    assert addresses(sky, "web.skydns.local.") == ["10.4.0.1"]
    put(auth_client, "late.skydns.local.", "10.4.0.2")
    wait_answer(sky, "late.skydns.local.", ["10.4.0.2"])


@pytest.fixture
def wrong_password_skydns(auth_etcd, auth_client, skydns_factory):
    put(auth_client, "web.skydns.local.", "10.4.2.1")
    return skydns_factory(auth_etcd.url, "-username=root", "-password=wrong",
                          wait_loaded=False)


def test_auth_wrong_password_fails_softly(wrong_password_skydns):
    sky = wrong_password_skydns
    reason = assert_keeps_failing(sky, "web.skydns.local.")
    assert "authentication failed" in reason, reason
    out = sky.output()
    assert "etcd down" in out and "authentication failed" in out, out
    assert "Traceback" not in out, out
    time.sleep(1.0)  # it keeps retrying (with backoff) and stays up
    assert sky.proc.poll() is None
    assert sky.healthz()[0] == 503


def test_auth_wrong_password_log_line_is_clear(wrong_password_skydns):
    sky = wrong_password_skydns
    status, body = wait_unhealthy(sky)
    assert status == 503
    lines = [line for line in sky.output().splitlines() if "etcd down" in line]
    assert lines, sky.output()
    # one log line that names the cause; /healthz: one line per problem
    assert "authentication failed" in lines[0], sky.output()
    assert len(body.strip().splitlines()) == 2, body


def test_auth_without_credentials_fails_softly(auth_etcd, auth_client, skydns_factory):
    put(auth_client, "web.skydns.local.", "10.4.3.1")
    sky = skydns_factory(auth_etcd.url, wait_loaded=False)
    reason = assert_keeps_failing(sky, "web.skydns.local.")
    assert "user name is empty" in reason or "permission denied" in reason, reason
    assert "Traceback" not in sky.output()


# -- TLS client certificates and auth together ---------------------------------------------


@pytest.fixture(scope="module")
def tls_auth_etcd(pki):
    server = TlsEtcd(pki)
    try:
        server.start()
        enable_auth(server, tls=pki)
        yield server
    finally:
        server.close()


def tls_root_client(server):
    client = server.client()  # a TLS channel (unauthenticated so far)
    client.close()
    endpoint = next(iter(client.endpoints.values()))
    return etcd3.MultiEndpointEtcd3Client(
        [etcd3.Endpoint("127.0.0.1", server.port, secure=True, creds=endpoint.credentials,
                        time_retry=0.2)],
        timeout=5, failover=True, user="root", password=ROOT_PASSWORD)


@pytest.fixture
def tls_auth_client(tls_auth_etcd):
    client = tls_root_client(tls_auth_etcd)
    client.delete_prefix("/skydns/")
    yield client
    client.close()


def tls_flags(pki):
    return (f"-ca-cert={pki['ca.pem']}", f"-tls-key={pki['client.key']}",
            f"-tls-pem={pki['client.pem']}")


def test_tls_auth_username_password(tls_auth_etcd, tls_auth_client, pki, skydns_factory):
    put(tls_auth_client, "web.skydns.local.", "10.5.0.1")
    sky = skydns_factory(tls_auth_etcd.url, *tls_flags(pki), "-username=root",
                         f"-password={ROOT_PASSWORD}")
    wait_healthy(sky)
    assert addresses(sky, "web.skydns.local.") == ["10.5.0.1"]
    put(tls_auth_client, "late.skydns.local.", "10.5.0.2")
    wait_answer(sky, "late.skydns.local.", ["10.5.0.2"])


def test_tls_auth_environment(tls_auth_etcd, tls_auth_client, pki, skydns_factory):
    put(tls_auth_client, "web.skydns.local.", "10.5.1.1")
    sky = skydns_factory(tls_auth_etcd.url, *tls_flags(pki), env={
        "ETCD_USERNAME": "root", "ETCD_PASSWORD": ROOT_PASSWORD})
    wait_healthy(sky)
    assert addresses(sky, "web.skydns.local.") == ["10.5.1.1"]


def test_tls_auth_wrong_password_fails_softly(tls_auth_etcd, tls_auth_client, pki,
                                              skydns_factory):
    put(tls_auth_client, "web.skydns.local.", "10.5.2.1")
    sky = skydns_factory(tls_auth_etcd.url, *tls_flags(pki), "-username=root",
                         "-password=wrong", wait_loaded=False)
    reason = assert_keeps_failing(sky, "web.skydns.local.")
    assert "authentication failed" in reason, reason


def test_tls_auth_survives_etcd_restart(tls_auth_etcd, tls_auth_client, pki, skydns_factory):
    put(tls_auth_client, "web.skydns.local.", "10.5.3.1")
    sky = skydns_factory(tls_auth_etcd.url, *tls_flags(pki), "-username=root",
                         f"-password={ROOT_PASSWORD}")
    assert addresses(sky, "web.skydns.local.") == ["10.5.3.1"]
    tls_auth_etcd.stop()
    wait_for(lambda: sky.healthz()[0] == 503, timeout=10, what="healthz 503 while etcd down")
    tls_auth_etcd.start()
    client = tls_root_client(tls_auth_etcd)
    try:
        put(client, "after.skydns.local.", "10.5.3.2")
    finally:
        client.close()
    try:
        wait_answer(sky, "after.skydns.local.", ["10.5.3.2"], timeout=8)
    except TimeoutError:
        rcode = dns.rcode.to_text(sky.query("after.skydns.local.", "A").rcode())
        pytest.fail(f"a record written after the etcd restart is not served ({rcode}); "
                    f"/healthz {sky.healthz()!r}; log tail:\n"
                    + "\n".join(sky.output().splitlines()[-4:]))
    assert sky.healthz() == (200, "ok\n")
