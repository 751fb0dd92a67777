"""The ``kube2sky`` command: flags, Kubernetes client set-up, threads, health endpoints."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

from skydns.config import add_option, option, parse_bool, parse_duration
from skydns.memory import bound_malloc_arenas
from skydns.retry import Backoff, FailureLog, describe_error
from skydns.record import OWNER_FIELD
from skydns.signals import stop_event_on_signals

from .api import collection, slices_served
from .controller import Controller
from .election import KEY_PREFIX, LeaderElection, default_identity
from .etcdwriter import EtcdWriter
from .metrics import exposition
from .records import OWNER, Layout
from .reflector import Reflector
from .state import DesiredState

log = logging.getLogger("kube2sky")

@dataclasses.dataclass
class Settings:
    """kube2sky's flags, each described once (``skydns.config.option``): its help, how
    its text is parsed (``parse_bool``: the flag alone means true; a tuple: the values it
    may take), and the environment variable read when the flag is not given. A flag is
    accepted as --a-b, -a-b, --a_b and -a_b. ``parse_args`` gives them as a Namespace."""

    domain: str = option("cluster.local", "domain the records are for")
    etcd_server: str = option("http://127.0.0.1:4001", "etcd URL(s), comma-separated")
    kube_master_url: str = option("", "Kubernetes API URL ($VARS expanded)")
    kubecfg_file: str = option(
        "", "kubeconfig file (else in-cluster, else $KUBECONFIG or ~/.kube/config)")
    etcd_mutation_timeout: float = option(
        2.0, "timeout of each etcd write attempt (a write a dying etcd leader took is lost: it "
        "is retried after this)", parse=parse_duration)
    healthz_port: int = option(8081, "port for /healthz and /readiness (0: off)", parse=int)
    healthz_addr: str = option("0.0.0.0", "address for the health endpoints")
    ttl: int = option(30, "TTL of the records written", parse=int)
    pod_records: bool = option(
        True, "write a-b-c-d.<ns>.pod.<domain> records", parse=parse_bool)
    endpoint_ip_names: bool = option(
        True, "also name a headless endpoint without a hostname by its dashed IP "
        "(a-b-c-d.<svc>.<ns>.svc.<domain>, as CoreDNS)", parse=parse_bool)
    endpoints_source: str = option(
        "auto", "auto, endpointslices or endpoints", parse=("auto", "endpointslices", "endpoints"))
    external_zone: str = option(
        "", "k8s_external: comma-separated zones under which each service's external "
        "addresses (externalIPs, load balancer ingress) are written as <svc>.<ns>.<zone> "
        "(serve them with a skydns -domain=<zone>)")
    external_ttl: int = option(
        5, "TTL of the external zones' records (CoreDNS's default)", parse=int)
    external_ns_service: str = option(
        "", "NAMESPACE/NAME of the service whose external addresses are the external zones' "
        "name servers (ns.dns.<zone>: NS and glue at the zone's apex)")
    ca_cert: str = option("", "CA certificate for etcd TLS", env="ETCD_CACERT")
    tls_key: str = option("", "etcd client TLS key", env="ETCD_TLSKEY")
    tls_pem: str = option("", "etcd client TLS certificate", env="ETCD_TLSPEM")
    username: str = option("", "etcd user", env="ETCD_USERNAME")
    password: str = option("", "etcd password", env="ETCD_PASSWORD")
    leader_elect: bool = option(
        False, "elect one writer among several replicas through etcd; the others keep their "
        "state and stand by", parse=parse_bool)
    leader_elect_lease_duration: float = option(
        15.0, "TTL of the leader's etcd lease: a dead leader is replaced within it",
        parse=parse_duration)
    leader_elect_key: str = option("", "election key (default /kube2sky/leader/<domain>)")
    leader_elect_identity: str = option(
        "", "this replica's name in the election key (default: the hostname, a pod's name)")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="kube2sky", allow_abbrev=False,
        description="Sync Kubernetes Services, Endpoints/EndpointSlices and Pods into "
                    "SkyDNS records in etcd. Flags: --a-b or -a_b (both spellings).")
    for field in dataclasses.fields(Settings):
        under = field.name
        name = under.replace("_", "-")
        spellings = list(dict.fromkeys([f"--{name}", f"-{name}", f"--{under}", f"-{under}"]))
        add_option(parser, field, spellings, field.default)
    return parser


def parse_args(argv=None, environ=None):
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    for field in dataclasses.fields(Settings):
        env = field.metadata["env"]
        if env and not getattr(args, field.name) and environ.get(env):
            setattr(args, field.name, environ[env])
    args.external_zones = [z.strip().lower().rstrip(".") + "."
                           for z in args.external_zone.split(",") if z.strip()]
    domain = args.domain.strip(".").lower()
    for zone in args.external_zones:
        if zone == domain + "." or zone.endswith("." + domain + "."):
            raise SystemExit(f"kube2sky: --external-zone {zone} is inside --domain")
    if args.external_ns_service:
        parts = args.external_ns_service.split("/")
        if len(parts) != 2 or not all(parts):
            raise SystemExit("kube2sky: --external-ns-service must be NAMESPACE/NAME")
        args.external_ns_service = tuple(parts)
    else:
        args.external_ns_service = None
    if args.external_ttl < 0:
        raise SystemExit("kube2sky: --external-ttl must not be negative")
    args.kube_master_url = os.path.expandvars(args.kube_master_url)
    args.machines = [m.strip() for m in args.etcd_server.split(",") if m.strip()]
    if args.leader_elect_lease_duration < 2:
        raise SystemExit("kube2sky: --leader-elect-lease-duration must be at least 2s")
    args.leader_elect_key = args.leader_elect_key or KEY_PREFIX + domain
    args.leader_elect_identity = args.leader_elect_identity or default_identity()
    return args


def kubernetes_client(args):
    """ApiClient from --kubecfg-file, else in-cluster, else KUBECONFIG/~/.kube/config;
    --kube-master-url overrides the server."""
    from kubernetes import client, config
    configuration = client.Configuration()
    if args.kubecfg_file:
        config.load_kube_config(config_file=args.kubecfg_file,
                                client_configuration=configuration)
    elif args.kube_master_url:
        pass
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(client_configuration=configuration)
    if args.kube_master_url:
        configuration.host = args.kube_master_url.rstrip("/")
    return client.ApiClient(configuration)


def wait_for_discovery(api_client, stop_event) -> bool | None:
    """Ask the API until it answers (bounded, jittered backoff); None when stopped."""
    backoff, failures = Backoff(0.5, 15.0), FailureLog(log)
    while not stop_event.is_set():
        try:
            return slices_served(api_client)
        except Exception as exc:
            failures.failed(describe_error(exc)[:200], "API discovery failed, retrying: %s")
        stop_event.wait(backoff.next())
    return None


class HealthHandler(BaseHTTPRequestHandler):
    app = None

    def do_GET(self):
        if self.path.startswith("/readiness"):
            ok, body = self.app.readiness()
        elif self.path.startswith("/healthz"):
            ok, body = self.app.liveness()
        elif self.path.startswith("/metrics"):
            ok, body = True, exposition(self.app)
            self.send_response(200)
        else:
            ok, body = False, "not found"
            self.send_response(404)
        if self.path.startswith(("/readiness", "/healthz")):
            self.send_response(200 if ok else 503)
        data = (body + "\n").encode()
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class App:
    def __init__(self, args, stop_event):
        self.args = args
        self.stop_event = stop_event  # set by a signal: ends the discovery wait and main()
        self.api = kubernetes_client(args)
        self.controller = None
        self.reflectors = []
        self.writer = None
        self.election = None
        self.http = None

    def setup(self, use_slices):
        """Build the sync machinery once we know where endpoint data comes from."""
        args = self.args
        log.info("endpoint data from %s", "EndpointSlices (discovery.k8s.io/v1)"
                 if use_slices else "v1 Endpoints")
        layout = Layout(args.domain, args.ttl, endpoint_ip_names=args.endpoint_ip_names,
                        external_zones=args.external_zones, external_ttl=args.external_ttl,
                        external_ns_service=args.external_ns_service)
        for zone in layout.external:
            log.info("k8s_external: services' external addresses under %s (%s)",
                     zone.domain, zone.base)
        self.state = DesiredState(layout, pods=args.pod_records, use_slices=use_slices)
        etcd_config = SimpleNamespace(machines=args.machines, ca_cert=args.ca_cert,
                                      tls_key=args.tls_key, tls_pem=args.tls_pem,
                                      username=args.username, password=args.password)
        if args.leader_elect:
            self.election = LeaderElection(etcd_config, args.leader_elect_key,
                                           args.leader_elect_identity,
                                           ttl=args.leader_elect_lease_duration)
        self.writer = EtcdWriter(etcd_config, layout.scopes(),
                                 timeout=args.etcd_mutation_timeout, election=self.election)
        kinds = ["services", "endpointslices" if use_slices else "endpoints"]
        if args.pod_records:
            kinds.append("pods")
        sources = {kind: collection(self.api, kind) for kind in kinds}
        leading = self.election.write_fence if self.election else None
        self.controller = Controller(self.state, self.writer, sources, self.stop_event,
                                     leading=leading)
        if self.election:
            self.election.on_elected = self.controller.elected
            self.election.on_lost = self.controller.lost
        self.reflectors = [Reflector(kind, func, self.controller.queue, self.stop_event)
                           for kind, func in sources.items()]

    def role(self) -> str:
        """Who writes, for /readiness and the log."""
        election = self.election
        if election is None:
            return ""
        if election.is_leader:
            return f"leading as {election.identity} ({election.key})"
        return (f"standing by as {election.identity}: {election.leader or 'nobody'} leads "
                f"({election.key})")

    def readiness(self):
        """200 once the records are in etcd (the leader: once it reconciled); a standby is
        ready once it has listed everything, so a rollout of replicas completes."""
        if self.controller is None:
            return False, "waiting for the API server (discovery)"
        role = self.role()
        missing = sorted(set(r.kind for r in self.reflectors) - self.controller.listed)
        standby = self.election is not None and not self.election.is_leader
        if standby and not missing:
            return True, "ok: " + role
        if self.controller.ready and not standby:
            return True, "ok" + (": " + role if role else "")
        reasons = [role] if role else []
        if missing:
            reasons.append("not listed yet: " + ", ".join(missing))
        if self.election is not None and not self.election.failures.healthy:
            reasons.append(f"leader election: etcd failing: "
                           f"{self.election.failures.last_error}")
        if not self.writer.failures.healthy:
            reasons.append(f"etcd writes failing: {self.writer.failures.last_error}")
        if self.controller.reconcile_error:
            reasons.append(f"etcd not readable for the reconcile: "
                           f"{self.controller.reconcile_error}")
        if not reasons:
            reasons.append(f"initial sync in progress ({self.writer.pending()} keys to write)")
        return False, "\n".join(reasons)

    def liveness(self):
        if self.controller is None:
            return True, "ok (waiting for the API server)"
        threads = [self.controller, *self.writer.threads, *self.reflectors]
        if self.election is not None:
            threads.append(self.election)
        dead = [t.name for t in threads if not t.is_alive()]
        if dead:
            return False, "threads stopped: " + ", ".join(dead)
        return True, "ok"

    def start(self):
        """Health endpoints first (so probes see "waiting"), then discovery, then sync."""
        if self.args.healthz_port:
            HealthHandler.app = self
            self.http = ThreadingHTTPServer((self.args.healthz_addr, self.args.healthz_port),
                                            HealthHandler)
            threading.Thread(target=self.http.serve_forever, name="healthz",
                             daemon=True).start()
        use_slices = {"endpointslices": True, "endpoints": False}.get(
            self.args.endpoints_source)
        if use_slices is None:
            use_slices = wait_for_discovery(self.api, self.stop_event)
            if use_slices is None:
                return
        self.setup(use_slices)
        self.writer.start()
        self.controller.start()
        if self.election is not None:
            self.election.start()
        for reflector in self.reflectors:
            reflector.start()
        log.info("kube2sky syncing %s into etcd %s (its values carry \"%s\":\"%s\")%s",
                 self.state.layout.domain, ",".join(self.args.machines), OWNER_FIELD, OWNER,
                 f"; leader election on {self.args.leader_elect_key} as "
                 f"{self.args.leader_elect_identity}" if self.election else "")

    def stop(self):
        self.stop_event.set()
        for reflector in self.reflectors:
            reflector.stop()
        if self.http:
            self.http.shutdown()
        if self.writer:
            self.writer.stop()
        if self.election:
            self.election.stop()  # after the writes: revoking hands over at once


def main(argv=None):
    args = parse_args(argv)
    bound_malloc_arenas()  # before the first thread and etcd client
    stop_event = threading.Event()
    stop_event_on_signals(stop_event, "records follow the API server's watch continuously",
                          log.info)  # before the first thread too
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    try:
        app = App(args, stop_event)
    except Exception as exc:  # an unreadable kubeconfig, no credentials at all
        print(f"kube2sky: cannot start: {exc}", file=sys.stderr)
        return 1
    try:
        app.start()  # a signal during the discovery wait ends it
    except OSError as exc:  # e.g. the health port is taken
        print(f"kube2sky: cannot start: {exc}", file=sys.stderr)
        return 1
    app.stop_event.wait()
    log.info("stopping")
    app.stop()
    return 0

