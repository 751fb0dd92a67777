"""DNS over TLS (RFC 7858): the TCP protocol (two-byte length, pipelined queries, the same
limits on queries in flight and unread replies) behind Twisted's TLS transport, on a port
of its own. The certificate file holds the server's certificate, then any intermediates
(as cert-manager and kubeadm write ``tls.crt``); TLS 1.2 is the oldest version offered
(RFC 8310 5.1), and ALPN "dot" is negotiated with clients that offer it."""

from __future__ import annotations

import logging
import re

from twisted.internet import ssl

from .config import parse_hostport

log = logging.getLogger("skydns.dot")

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def tls_options(cert_file: str, key_file: str) -> ssl.CertificateOptions:
    """Server TLS options from PEM files; ValueError saying which file is unusable."""
    try:
        with open(cert_file, "rb") as fh:
            cert_pem = fh.read()
        with open(key_file, "rb") as fh:
            key_pem = fh.read()
    except OSError as exc:
        raise ValueError(f"DNS over TLS: cannot read {exc.filename}: {exc.strerror}") from None
    blocks = _PEM_CERT.findall(cert_pem)
    if not blocks:
        raise ValueError(f"DNS over TLS: no PEM certificate in {cert_file}")
    try:
        certificate = ssl.PrivateCertificate.loadPEM(blocks[0] + b"\n" + key_pem)
        chain = [ssl.Certificate.loadPEM(block).original for block in blocks[1:]]
    except Exception as exc:  # pyOpenSSL's errors name no file
        raise ValueError(f"DNS over TLS: {cert_file} / {key_file} unusable: "
                         f"{' '.join(str(exc).split())[:200]}") from None
    # ALPN "dot" (RFC 7858's registered protocol id): kdig and OpenSSL offer it, and
    # without a protocol of its own the server answered their handshake with an alert.
    return ssl.CertificateOptions(privateKey=certificate.privateKey.original,
                                  certificate=certificate.original, extraCertChain=chain,
                                  raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
                                  acceptableProtocols=[b"dot"])


def listen_tls(reactor, config, factory):
    """Serve ``factory`` (the DNS TCP factory) over TLS on ``-dot-addr``; returns the
    listening port."""
    host, port = parse_hostport(config.dot_addr, 853)
    listening = reactor.listenSSL(port, factory, tls_options(config.dot_cert, config.dot_key),
                                  interface=host, backlog=128)
    log.info("DNS over TLS on %s:%d (certificate %s)", host, listening.getHost().port,
             config.dot_cert)
    return listening
