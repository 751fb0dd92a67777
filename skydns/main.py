"""The ``skydns`` command: wires the store, etcd sync, resolvers and transports together."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

from . import __version__
from .authority import Authority
from .autopath import Autopath
from .config import ConfigError, LiveConfig, from_args
from .coremetrics import CoreDNSCollector
from .etcdsync import EtcdSync, read_config_value
from .memory import bound_malloc_arenas
from .forward import Forwarder
from .loop import LoopProbe
from .metrics import Metrics
from .ops import Health, listen
from .querylog import QueryLog
from .resolver import Resolver
from .relay import UDPRelay
from .server import DNSTCPFactory, QueryHandler, UDPServer, bind_udp
from .signals import hand_to_reactor
from .store import RecordStore
from .wire import WireCache

log = logging.getLogger("skydns")

MIB = 1024 * 1024


class App:
    """One skydns process: everything that lives for as long as the reactor runs."""

    def __init__(self, reactor, live: LiveConfig):
        self.reactor = reactor
        self.live = live
        config = live.config
        self.metrics = Metrics(coredns=bool(config.prometheus_port))
        self.store = RecordStore(config.path_prefix)
        self.cache = WireCache(max_bytes=config.answer_cache_mb * MIB)
        self.forwarder = Forwarder(reactor, config)
        self.authority = Authority(self.store, config)
        self.signer = None
        if config.dnssec:
            from .dnssec import DnssecSigner
            self.signer = DnssecSigner(config.dnssec, config.domain, config.scache,
                                       dnskey_ttl=config.ttl)
            self.metrics.signature_misses = lambda: self.signer.cache_misses
            log.info("DNSSEC: signing %s with key tag %d; DS for the parent: %s",
                     config.domain, self.signer.key_tag, self.signer.ds().to_text())
        self.resolver = Resolver(config, self.store, self.authority, self.forwarder,
                                 self.metrics, self.signer)
        # Targets outside the domain are looked up through the response cache.
        self.authority.upstream = self.resolver.lookup_target
        self.handler = QueryHandler(self.resolver, self.cache, self.metrics, config)
        self.sync = EtcdSync(reactor, self.store, config)
        self.health = Health(reactor, self.store, self.sync, config)
        if config.loop_probe:
            self.handler.loop = self.health.loop = LoopProbe(reactor)
        if config.autopath:
            self.handler.autopath = Autopath(self.store, config)
            log.info("autopath: walking pods' search paths on the server (then %s)",
                     ", ".join(self.handler.autopath.search) or "no node domains")
        self.store.change_listeners.append(self.cache.invalidate)
        self.store.reset_listeners.append(self.cache.clear)
        self.store.config_listeners.append(self.etcd_config_changed)
        for part in (self.authority, self.forwarder, self.resolver, self.handler,
                     self.handler.autopath, self.health):
            if part is not None:
                live.follow(part.reconfigure)
        live.follow(self._rebuild_answers)
        self.udp = None
        self.tcp = None
        self.dot = None
        self.http = []
        self._register_metrics()

    def _register_metrics(self):
        """What /metrics reads from the running parts, besides the query counts."""
        m = self.metrics
        if m.coredns:
            m.collectors.append(CoreDNSCollector(m, self.cache, self.resolver,
                                                 self.forwarder))
        m.gauge("skydns_records", "Records served from memory", lambda: self.store.count)
        m.gauge("skydns_skipped_records", "etcd values skipped as malformed",
                lambda: len(self.store.bad))
        m.labelled_counter("skydns_records_skipped", "etcd values skipped, by reason",
                           "reason", lambda: self.store.skipped)
        if self.handler.autopath is not None:
            walks = self.handler.autopath
            m.labelled_counter("skydns_autopath_answers", "Queries autopath walked, by "
                               "result (found: answered with a name further down the pod's "
                               "search path; found_kept: the same, kept from an earlier "
                               "walk; not_found: NXDOMAIN as asked)", "result",
                               lambda: {"found": walks.found, "found_kept": walks.cached,
                                        "not_found": walks.not_found})
        m.labelled_counter("skydns_zone_transfers", "AXFR requests, by result (sent: the "
                           "zone was sent; refused: not allowed by -transfer-to, or not "
                           "this server's zone)", "result", lambda: self.handler.transfers)
        m.labelled_counter("skydns_etcd_syncs", "Reads of the /skydns tree, by what "
                           "(load: a full read, at start and after a compaction or a lost "
                           "watch; watch: a watch stream started)", "what",
                           lambda: {"load": self.sync.reloads,
                                    "watch": self.sync.watch_restarts})
        m.gauge("skydns_etcd_watch_up", "1 while the etcd watch is live",
                lambda: 1 if self.sync.healthy else 0)
        m.gauge("skydns_etcd_revision", "Last etcd revision applied", lambda: self.store.revision)
        m.gauge("skydns_wire_cache_entries", "Prebuilt answers", lambda: len(self.cache))
        m.gauge("skydns_wire_cache_bytes", "Approximate memory of the prebuilt answers "
                "(at most -answer-cache-mb)", lambda: self.cache.bytes)
        m.labelled_counter("skydns_cache_evictions", "Cache entries evicted to make room, by "
                           "cache (wire: prebuilt answers; response: forwarded ones)", "cache",
                           lambda: {"wire": self.cache.evicted,
                                    "response": self.resolver.rcache.evicted})

    def start(self, reuse_port=False, tcp=True):
        """Bind and serve. Extra workers (``tcp=False``) share only the UDP port; TCP stays
        with the first process, which is enough for truncated-answer retries."""
        host, port = self.config.listen
        sock = bind_udp(host, port, reuse_port)
        querylog = QueryLog(self.config.log_queries) if self.config.log_queries else None
        self.udp = UDPServer(self.reactor, sock, self.handler, self.cache, self.metrics)
        self.handler.relay = UDPRelay(self.reactor, self.resolver, self.forwarder,
                                      self.metrics, sock.sendto)
        self.udp.querylog = self.handler.relay.querylog = querylog
        self.udp.start()
        if tcp:
            self.tcp = self.reactor.listenTCP(
                sock.getsockname()[1],
                DNSTCPFactory(self.handler, self.cache, "tcp", querylog),
                interface=host, backlog=128)
            if self.config.dot_addr:
                from .dot import listen_tls  # only with -dot-addr: it imports pyOpenSSL
                self.dot = listen_tls(self.reactor, self.config,
                                      DNSTCPFactory(self.handler, self.cache, "tls", querylog))
        log.info("skydns %s serving %s on %s:%d (%s), etcd %s", __version__,
                 self.config.domain, host, sock.getsockname()[1],
                 "udp, tcp" if tcp else "udp worker", ",".join(self.config.machines))
        self.http = listen(self.reactor, self.config, self.health, self.metrics,
                           alive=lambda: self.udp is not None and self.udp.sock.fileno() >= 0,
                           resolver=self.resolver)
        self.sync.start()
        self._schedule_hourly()
        self.reactor.callWhenRunning(self.probe_loops)

    def stop(self):
        self.sync.stop()
        if self.handler.relay is not None:
            self.handler.relay.stop()
        if self.udp:
            self.udp.stop()

    def _schedule_hourly(self):
        """SOA serials are the Unix time truncated to the hour: rebuild answers hourly."""
        delay = 3600 - time.time() % 3600 + 0.5
        self.reactor.callLater(delay, self._hourly)

    def _hourly(self):
        self.cache.clear()
        self._schedule_hourly()

    @property
    def config(self):
        return self.live.config

    def etcd_config_changed(self, value):
        upstreams = self.config.nameservers
        if self.live.update(value) and self.config.nameservers != upstreams:
            self.probe_loops()

    def _rebuild_answers(self, config):
        """The prebuilt answers carry the old TTLs and limits: drop them all."""
        self.cache.max_bytes = config.answer_cache_mb * MIB
        self.cache.clear()

    def probe_loops(self):
        """Ask the upstreams for the loop probe (skydns.loop), unless nothing is forwarded."""
        if self.handler.loop is not None and not self.config.no_rec:
            self.handler.loop.probe(self.config.nameservers)


class Shutdown:
    """How a signal stops skydns. SIGTERM (a rollout, a node drain) starts the lameduck:
    /healthz and /readyz fail at once, so the endpoints controller takes this replica out
    of the DNS Service, while DNS goes on answering for ``-lameduck`` seconds, the time
    kube-proxy needs to stop sending queries here; then skydns stops. Stopping at once
    dropped the queries still routed to a replica in every rollout (CoreDNS's health
    lameduck, coredns/deployment#199). SIGINT (Ctrl-C), a second signal, or
    ``-lameduck=0`` stop at once."""

    def __init__(self, reactor, app):
        self.reactor = reactor
        self.app = app
        self.state = "serving"  # then "lameduck", then "stopping"

    def signal(self, signum):
        if not self.reactor.running or self.state == "stopping":
            return
        seconds = self.app.config.lameduck
        if signum == signal.SIGTERM and self.state == "serving" and seconds > 0:
            self.state = "lameduck"
            self.app.health.lameduck = (f"shutting down: lameduck, DNS answers for "
                                        f"{seconds:g}s more")
            log.info("SIGTERM: lameduck for %gs (/healthz and /readyz fail, DNS answers); "
                     "a second signal stops at once", seconds)
            self.reactor.callLater(seconds, self.stop)
            return
        self.stop()

    def stop(self):
        if self.state != "stopping" and self.reactor.running:
            self.state = "stopping"
            log.info("stopping")
            self.reactor.stop()


def spawn_workers(argv, count):
    """Extra processes sharing the DNS port with SO_REUSEPORT (no HTTP endpoints). They
    have no lameduck of their own (the first process stops them after its own), send no
    loop probe (the first one does, and reports it) and serve no TLS (nor TCP)."""
    children = []
    for _ in range(count - 1):
        args = [sys.executable, "-m", "skydns"] + list(argv) + ["-workers=1",
                                                                 "-healthz-port=0",
                                                                 "-lameduck=0",
                                                                 "-loop-probe=false",
                                                                 "-dot-addr="]
        env = dict(os.environ, SKYDNS_REUSEPORT="1", PROMETHEUS_PORT="")
        children.append(subprocess.Popen(args, env=env))
    return children


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["explain"]:
        from .explain import command
        return command(argv[1:])
    try:
        flags_config = from_args(argv)
    except ConfigError as exc:
        print(f"skydns: {exc}", file=sys.stderr)
        return 2
    bound_malloc_arenas()  # before the first etcd client starts gRPC's threads
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("twisted").setLevel(logging.WARNING)
    live = LiveConfig(flags_config, read_config_value(flags_config))
    config = live.config

    if not config.dot_addr:
        # Twisted's TCP transport imports pyOpenSSL whenever it is installed (for DNS over
        # TLS here), and with it OpenSSL and cryptography's bindings: 11 MiB resident in
        # every process, for TLS that only -dot-addr uses.
        sys.modules.setdefault("OpenSSL", None)
    from twisted.internet import reactor
    try:
        app = App(reactor, live)
        worker = os.environ.get("SKYDNS_REUSEPORT") == "1"
        app.start(reuse_port=worker or config.workers > 1, tcp=not worker)
    except Exception as exc:  # bind errors, bad key files: say what and exit
        print(f"skydns: cannot start: {exc}", file=sys.stderr)
        return 1
    children = spawn_workers(argv, config.workers) if config.workers > 1 else []

    def shutdown():
        app.stop()
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
    reactor.addSystemEventTrigger("before", "shutdown", shutdown)

    hand_to_reactor(reactor, Shutdown(reactor, app).signal,
                    f"/{config.path_prefix}/config is applied whenever it changes in etcd")
    reactor.run(installSignalHandlers=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
