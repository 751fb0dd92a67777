"""Forwarding-loop detection at run time, as CoreDNS's ``loop`` plugin: at start (and
after the upstreams change), each upstream that could send queries back to us (a
private, loopback or link-local address: a node's resolver, a cluster-internal one) is
asked for a name only this process knows. If that name arrives here as a query, the
upstream forwards to this server: a loop, where every forwarded name would circle until
it times out. skydns then reports itself unhealthy with the upstream's address (instead
of exiting, as CoreDNS does, which takes cluster DNS down with it) and answers the probe
with SERVFAIL, so it does not go round again.

Public upstreams are not probed: they cannot reach a cluster's DNS, and a probe would be
a query for a made-up name sent to the internet on every start. What the addresses alone
show (this server itself, systemd-resolved's stub) is refused at start (``config``).
"""

from __future__ import annotations

import ipaddress
import logging
import secrets

import dns.message
import dns.rdatatype

from .config import parse_hostport
from .forward import exchange

log = logging.getLogger("skydns.loop")

PROBE_TIMEOUT = 5.0


def may_loop(host: str) -> bool:
    """Whether an upstream at ``host`` could forward back to cluster DNS."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return True  # a name: we cannot tell
    return not address.is_global


class LoopProbe:
    """Sends the probes and recognises them when they come back."""

    def __init__(self, reactor):
        self.reactor = reactor
        # <nonce>-<upstream index>.<nonce2>. : two random labels, like CoreDNS's probe,
        # so that an upstream treats it as any other external name and forwards it.
        self.nonce = secrets.token_hex(8)
        self.suffix = f".{secrets.token_hex(8)}."
        self.sent = []       # the upstreams of the last round, by index
        self.loops = {}      # upstream "host:port" -> the problem reported for it

    def probe(self, nameservers):
        """One probe per upstream that may loop; forgets what an earlier round found."""
        self.sent = list(nameservers)
        self.loops = {}
        for index, upstream in enumerate(self.sent):
            host, port = parse_hostport(upstream, 53)
            if not may_loop(host):
                continue
            query = dns.message.make_query(f"{self.nonce}-{index}{self.suffix}",
                                           dns.rdatatype.HINFO)
            d = exchange(self.reactor, query.to_wire(), host, port, tcp=False,
                         timeout=PROBE_TIMEOUT)
            d.addErrback(lambda _: None)  # no answer is no loop; forwarding reports it

    def came_back(self, name: str) -> bool:
        """Whether ``name`` (lower-case text, absolute) is one of our probes; notes the
        loop once for its upstream."""
        if not name.endswith(self.suffix) or not name.startswith(self.nonce + "-"):
            return False
        index = name[len(self.nonce) + 1:-len(self.suffix)]
        upstream = self.sent[int(index)] if index.isdigit() and int(index) < len(
            self.sent) else "an upstream"
        if upstream not in self.loops:
            self.loops[upstream] = (f"forwarding loop: a probe sent to upstream {upstream} "
                                    f"came back to this server (does it forward to cluster "
                                    f"DNS?); forwarded names will fail")
            log.error("%s", self.loops[upstream])
        return True

    def problems(self) -> list:
        return list(self.loops.values())
