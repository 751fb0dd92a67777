"""Operational HTTP endpoints: ``/healthz`` (the old exechealthz sidecar, built in),
``/readyz`` and ``/livez`` for probes, Prometheus ``/metrics``, and ``/explain`` (why a
name resolves as it does, see ``explain``).

``/healthz`` is 200 only when the records are loaded, the etcd watch is live and, when a
self-query name is configured, the server answers that name over real UDP on its own
port. Otherwise 503 with one line per problem, so ``curl`` says what is wrong.
"""

from __future__ import annotations

import logging

import dns.message
import dns.rcode
import dns.rdatatype
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from twisted.web import resource, server

from . import explain
from .forward import exchange

log = logging.getLogger("skydns.ops")


class Health:
    """Collects the health verdict from the store, the etcd sync and a self-query."""

    def __init__(self, reactor, store, sync, config):
        self.reactor = reactor
        self.store = store
        self.sync = sync
        self.config = config
        self.lameduck = None  # why probes must fail while DNS still answers (shutting down)
        self.loop = None      # a LoopProbe, when -loop-probe is on

    def reconfigure(self, config):
        """The self-query's name and address are read at each probe."""
        self.config = config

    def problems(self):
        out = [self.lameduck] if self.lameduck else []
        if self.loop is not None:
            out.extend(self.loop.problems())
        if not self.store.loaded:
            out.append("records not loaded from etcd yet")
        if not self.sync.healthy:
            detail = f": {self.sync.last_error}" if self.sync.last_error else ""
            out.append(f"etcd watch {self.sync.state}{detail}")
        return out

    def self_query(self):
        """A Deferred firing with None when the query name is answered, else a problem."""
        host, port = self.config.listen
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        query = dns.message.make_query(self.config.healthz_query, dns.rdatatype.A)
        d = exchange(self.reactor, query.to_wire(), host, port, tcp=False, timeout=2.0)

        def check(wire):
            reply = dns.message.from_wire(wire)
            if reply.rcode() != dns.rcode.NOERROR or not reply.answer:
                return (f"self-query {self.config.healthz_query} answered "
                        f"{dns.rcode.to_text(reply.rcode())} with {len(reply.answer)} answers")
            return None
        return d.addCallbacks(check, lambda f: f"self-query {self.config.healthz_query} "
                                               f"failed: {f.getErrorMessage()}")


class HealthResource(resource.Resource):
    isLeaf = True

    def __init__(self, health: Health):
        super().__init__()
        self.health = health

    def render_GET(self, request):
        problems = self.health.problems()
        if problems or not self.health.config.healthz_query:
            return self._answer(request, problems)
        d = self.health.self_query()

        def done(problem):
            if not request.finished and not request._disconnected:
                request.write(self._answer(request, [problem] if problem else []))
                request.finish()
        d.addCallback(done)
        return server.NOT_DONE_YET

    @staticmethod
    def _answer(request, problems):
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        if problems:
            request.setResponseCode(503)
            return ("\n".join(problems) + "\n").encode()
        return b"ok\n"


class ReadyResource(resource.Resource):
    """``/readyz``: 200 once the records are loaded, whatever etcd does after that (until
    a SIGTERM's lameduck); the body says when they may be stale. For readiness probes of
    several replicas that share one etcd cluster: when that cluster loses its quorum,
    ``/healthz`` fails on every replica at once and the DNS Service would have no
    endpoints left, an outage of every name, where the replicas could go on answering
    from memory (as SkyDNS does)."""

    isLeaf = True

    def __init__(self, health: Health, alive):
        super().__init__()
        self.health = health
        self.alive = alive

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        problems = self.health.problems()
        if not self.health.store.loaded or not self.alive() or self.health.lameduck:
            request.setResponseCode(503)
            return ("\n".join(problems or ["DNS listener closed"]) + "\n").encode()
        if problems:
            return (f"ok, serving the records of etcd revision {self.health.sync.revision} "
                    f"from memory: " + "; ".join(problems) + "\n").encode()
        return b"ok\n"


class LiveResource(resource.Resource):
    """``/livez``: 200 while the reactor runs and the DNS socket is open, whatever etcd
    does. For liveness probes: restarting skydns because etcd is away would throw away
    the records it is still serving from memory (use ``/healthz`` for readiness)."""

    isLeaf = True

    def __init__(self, alive):
        super().__init__()
        self.alive = alive

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        if self.alive():
            return b"ok\n"
        request.setResponseCode(503)
        return b"DNS listener closed\n"


class MetricsResource(resource.Resource):
    isLeaf = True

    def __init__(self, registry):
        super().__init__()
        self.registry = registry

    def render_GET(self, request):
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self.registry)


class ExplainResource(resource.Resource):
    """``/explain?name=NAME&type=TYPE``: the explanation as JSON; 400 with the reason for
    a name or type that cannot be asked."""

    isLeaf = True

    def __init__(self, resolver):
        super().__init__()
        self.resolver = resolver

    def render_GET(self, request):
        args = request.args
        name = (args.get(b"name") or [b""])[0].decode("utf-8", "replace")
        type_text = (args.get(b"type") or [b"A"])[0].decode("utf-8", "replace")
        try:
            qname, qtype = explain.parse_request(name, type_text)
        except explain.ExplainError as exc:
            request.setResponseCode(400)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return f"{exc}\n".encode()
        d = explain.explain(self.resolver, qname, qtype)

        def done(result):
            if request.finished or request._disconnected:
                return
            request.setHeader(b"content-type", b"application/json")
            request.write(explain.to_json(result))
            request.finish()

        def failed(failure):
            log.error("/explain %s %s failed: %s", name, type_text, failure.getErrorMessage())
            if not request.finished and not request._disconnected:
                request.setResponseCode(500)
                request.write(f"explain failed: {failure.getErrorMessage()}\n".encode())
                request.finish()
        d.addCallbacks(done, failed)
        return server.NOT_DONE_YET


def listen(reactor, config, health, metrics, alive=lambda: True, resolver=None):
    """Start the HTTP listeners; returns the ports (so tests and shutdown can stop them)."""
    sites = {}
    if config.healthz_port:
        root = sites.setdefault(config.healthz_port, resource.Resource())
        root.putChild(b"healthz", HealthResource(health))
        root.putChild(b"livez", LiveResource(alive))
        root.putChild(b"readyz", ReadyResource(health, alive))
        if resolver is not None:
            root.putChild(b"explain", ExplainResource(resolver))
    if config.prometheus_port:
        root = sites.setdefault(config.prometheus_port, resource.Resource())
        path = config.prometheus_path.strip("/").encode() or b"metrics"
        root.putChild(path, MetricsResource(metrics.registry()))
    ports = []
    for port, root in sites.items():
        site = server.Site(root)
        site.noisy = False
        ports.append(reactor.listenTCP(port, site, interface=config.healthz_addr))
        log.info("HTTP endpoints on %s:%d: %s", config.healthz_addr, port,
                 ", ".join("/" + c.decode() for c in root.children))
    return ports
