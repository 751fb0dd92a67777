"""kube2sky's sync pipeline in process: the real ``Controller`` thread, with a real
``DesiredState`` and ``Layout``, fed the messages the reflectors put in its inbox (list
pages, the end of a list, watch events, and the election's calls), each object decoded by
the reflectors' own ``KindDecoder`` from the JSON the API server sends. etcd is an
in-memory stand-in for ``EtcdWriter`` (``MemoryEtcd``) that records every put and delete
and wakes the test through a Condition: no test sleeps for something to happen. A step
ends at a barrier (a service event fed after it, whose write shows that everything before
it was applied); only what the controller sets without writing (``synced``, its start-up
read taken over) is polled, with a deadline.

The table (``CASES``) reads: Kubernetes objects listed at start, then watch events or
relists, each step with the exact etcd writes it must cause (a key -> its new JSON value,
or DELETE). The expected keys and values are written out here from the record format as
the reference states it (/work/shared/reference/kubernetes.md: the value's fields and
their order, the FNV-1a leaf labels with their check values, the key layout); nothing
expected is computed by kube2sky's code.

The last tests run the Controller with the real EtcdWriter against a real etcd (the
conftest's), waiting on an etcd watch instead of sleeping, and one with etcd stopped and
started again under it.

"""

from __future__ import annotations

import gc
import json
import logging
import threading
import time
from collections import namedtuple
from types import SimpleNamespace

import pytest

from procs import wait_for
from kube2sky.controller import Controller
from kube2sky.etcdwriter import MARKER_PREFIX, SENT, EtcdWriter
from kube2sky.records import Layout, fingerprint, meta
from kube2sky.slim import KindDecoder
from kube2sky.state import DesiredState

WAIT = 10.0  # seconds any one wait may take before the test fails

# -- the record format, written out from the reference -------------------------------------

BASE = "/skydns/local/cluster"        # cluster.local. read backwards
ARPA4 = "/skydns/arpa/in-addr"
DELETE = None                          # a step's expected write: the key is deleted
OWNED = ',"owner":"kube2sky"}'         # the last field of every value kube2sky writes


def fnv1a32_hex(text: str) -> str:
    """FNV-1a 32-bit of the text's bytes, lower-case hex without zero padding (the
    reference's definition of kube2sky's leaf labels; checked below on its check values)."""
    h = 0x811C9DC5
    for byte in text.encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return format(h, "x")


def label(ip: str) -> str:
    """The leaf label of an address record: the hash of the value as the original kube2sky
    wrote it (no owner field)."""
    return fnv1a32_hex('{"host":"%s","priority":10,"weight":10,"ttl":30,"targetstrip":0}'
                       % ip)


def host(name: str, port: int = 0) -> str:
    """A value as kube2sky writes it: the original's fields in its order, ``port`` only
    when there is one, our owner field last."""
    port_field = f'"port":{port},' if port else ""
    return ('{"host":"%s",%s"priority":10,"weight":10,"ttl":30,"targetstrip":0,'
            '"owner":"kube2sky"}' % (name, port_field))


def ptr4(ip: str) -> str:
    """The PTR key of an IPv4 address: ``10.1.2.3.in-addr.arpa.`` read backwards."""
    return ARPA4 + "/" + ip.replace(".", "/")


DNS_VERSION = {f"{BASE}/dns-version": '{"text":"1.1.0","owner":"kube2sky"}'}


def test_the_label_function_gives_the_reference_check_values():
    assert label("10.0.0.1") == "c88f1059"
    assert label("10.3.0.214") == "6ead029a"
    assert label("10.244.1.10") == "eab4ec"
    assert host("10.0.0.1") == ('{"host":"10.0.0.1","priority":10,"weight":10,"ttl":30,'
                                '"targetstrip":0,"owner":"kube2sky"}')


# -- Kubernetes objects, as the API server sends them --------------------------------------

def _meta(name, ns, **more):
    out = {"name": name, "namespace": ns, "uid": f"uid-{ns}-{name}", "resourceVersion": "7",
           "creationTimestamp": "2024-01-01T00:00:00Z",
           "managedFields": [{"manager": "kubectl", "operation": "Update"}]}
    out.update(more)
    return out


def port(name, number, protocol="TCP"):
    out = {"port": number, "protocol": protocol, "targetPort": number}
    if name:
        out["name"] = name
    return out


def service(name, cluster_ip, *ports, ns="ns", **spec):
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(name, ns),
            "spec": {"type": "ClusterIP", "clusterIP": cluster_ip,
                     "clusterIPs": [cluster_ip], "ports": list(ports),
                     "sessionAffinity": "None", "selector": {"app": name}, **spec},
            "status": {"loadBalancer": {}}}


def headless(name, *ports, ns="ns", **spec):
    return service(name, "None", *ports, ns=ns, **spec)


def external_name(name, target, ns="ns"):
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(name, ns),
            "spec": {"type": "ExternalName", "externalName": target,
                     "sessionAffinity": "None"}, "status": {"loadBalancer": {}}}


def ep(ip, hostname=None, ready=True):
    """One EndpointSlice endpoint; ``ready=None`` leaves the conditions out."""
    out = {"addresses": [ip], "nodeName": "node-1",
           "targetRef": {"kind": "Pod", "name": hostname or "p", "namespace": "ns"}}
    if hostname:
        out["hostname"] = hostname
    if ready is not None:
        out["conditions"] = {"ready": ready, "serving": ready, "terminating": False}
    return out


def endpoint_slice(name, svc_name, endpoints, ports=(), ns="ns", address_type="IPv4"):
    labels = {"endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}
    if svc_name:
        labels["kubernetes.io/service-name"] = svc_name
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": _meta(name, ns, labels=labels), "addressType": address_type,
            "endpoints": list(endpoints), "ports": list(ports)}


def endpoints(name, ready=(), not_ready=(), ports=(), ns="ns", hostnames=None):
    """v1 Endpoints; ready/not_ready: (ip, hostname or None); ``hostnames``: the old
    hostnames-map annotation, {ip: hostname}."""
    def addresses(items):
        return [{"ip": ip, **({"hostname": h} if h else {}), "nodeName": "node-1"}
                for ip, h in items]
    subset = {"addresses": addresses(ready), "ports": list(ports)}
    if not_ready:
        subset["notReadyAddresses"] = addresses(not_ready)
    annotations = {}
    if hostnames:
        annotations["endpoints.beta.kubernetes.io/hostnames-map"] = json.dumps(
            {ip: {"HostName": h} for ip, h in hostnames.items()})
    return {"apiVersion": "v1", "kind": "Endpoints",
            "metadata": _meta(name, ns, annotations=annotations), "subsets": [subset]}


def pod(name, *ips, ns="ns", host_network=False):
    status = {"phase": "Running" if ips else "Pending", "hostIP": "10.0.0.5"}
    if ips:
        status["podIP"] = ips[0]
        status["podIPs"] = [{"ip": ip} for ip in ips]
    spec = {"containers": [{"name": "c", "image": "registry.invalid/app"}],
            "nodeName": "node-1"}
    if host_network:
        spec["hostNetwork"] = True
    return {"apiVersion": "v1", "kind": "Pod", "metadata": _meta(name, ns), "spec": spec,
            "status": status}


# -- the messages the reflectors put in the controller's inbox -----------------------------
# (kube2sky.reflector: ("page", kind, items), ("listed", kind, {(ns, name)}, version),
# ("event", kind, type, obj); every object decoded from the API's JSON by KindDecoder.)

LIST_KINDS = {"services": "ServiceList", "endpoints": "EndpointsList",
              "endpointslices": "EndpointSliceList", "pods": "PodList"}


def page(kind, *objects):
    body = json.dumps({"kind": LIST_KINDS[kind], "apiVersion": "v1",
                       "metadata": {"resourceVersion": "100"}, "items": list(objects)})
    items, _ = KindDecoder(kind).page(body.encode())
    return ("page", kind, items)


def listed(kind, *objects):
    """The end of a list that named ``objects`` (over one or several pages)."""
    items = page(kind, *objects)[2]
    return ("listed", kind, {meta(obj) for obj in items}, "100")


def event(kind, event_type, obj):
    decoded_type, decoded, _ = KindDecoder(kind).event(json.dumps(
        {"type": event_type, "object": obj}))
    return ("event", kind, decoded_type, decoded)


def added(kind, obj):
    return event(kind, "ADDED", obj)


def modified(kind, obj):
    return event(kind, "MODIFIED", obj)


def deleted(kind, obj):
    return event(kind, "DELETED", obj)


def relist(kind, *objects):
    """A relist in one page."""
    return [page(kind, *objects), listed(kind, *objects)]


# -- etcd in memory, with the interface the controller uses ---------------------------------

class MemoryEtcd:
    """Stands in for kube2sky.etcdwriter.EtcdWriter with every method and attribute
    kube2sky.controller uses: submit, discard, pending, wait_below, read_state, reconcile,
    failures.healthy, written, deleted. etcd is the dict ``store``; a submission is applied
    at once (so nothing is ever pending), and logged in ``log`` as (key, value or None).

    ``reconcile`` keeps EtcdWriter.reconcile's contract: etcd made equal to the desired
    keys for our keys (values with our owner field), compared by fingerprint with the
    state given (the controller's start-up snapshot, where SENT means "sent since, and the
    desired value"), else with etcd read now.

    ``fence`` (a standby's writer): while it returns false, submissions are dropped, as
    EtcdWriter's election fence drops them. ``read_gate``: the next read takes its picture
    of etcd, then waits for this Event (a slow start-up read). ``unreadable``: the
    exception every read raises (etcd away)."""

    def __init__(self, store=(), fence=None):
        self.cond = threading.Condition()
        self.store = dict(store)
        self.log = []
        self.submitted = []     # every key submitted, written or dropped by the fence
        self.reads = self.reconciles = self.discards = 0
        self.fence = fence
        self.read_gate = None
        self.read_entered = threading.Event()
        self.unreadable = None
        self.failures = SimpleNamespace(healthy=True, last_error="")
        self.written = self.deleted = self.discarded = 0

    def submit(self, changes):
        if not changes:
            return
        with self.cond:
            self.submitted.extend(changes)
            if self.fence is not None and not self.fence():
                self.discarded += len(changes)
            else:
                for key, value in changes.items():
                    self.log.append((key, value))
                    if value is None:
                        self.store.pop(key, None)
                        self.deleted += 1
                    else:
                        self.store[key] = value
                        self.written += 1
            self.cond.notify_all()

    def discard(self):
        with self.cond:
            self.discards += 1
            self.cond.notify_all()
        return 0  # nothing is ever pending

    def pending(self):
        return 0

    def wait_below(self, limit, timeout):
        return True

    def read_state(self):
        with self.cond:
            self.reads += 1
            picture, error = dict(self.store), self.unreadable
            gate, self.read_gate = self.read_gate, None
            self.cond.notify_all()
        self.read_entered.set()
        if gate is not None:
            assert gate.wait(WAIT), "the test never released the start-up read"
        if error is not None:
            raise error
        ours = {key for key, value in picture.items() if value.endswith(OWNED)}
        return ours, {key: fingerprint(value) for key, value in picture.items()}, set()

    def reconcile(self, desired, state=None):
        ours, actual, _ = self.read_state() if state is None else state
        changes = {key: value for key, value in desired.items()
                   if actual.get(key) not in (fingerprint(value), SENT)}
        changes.update(dict.fromkeys(ours - set(desired)))
        self.submit(changes)
        with self.cond:
            self.reconciles += 1
            self.cond.notify_all()
        return len(changes)


# -- the harness -----------------------------------------------------------------------------

SLICE_KINDS = ("services", "endpointslices", "pods")
ENDPOINTS_KINDS = ("services", "endpoints", "pods")
BARRIER_NS = "zz-barrier"   # the barrier services' namespace: left out of every comparison


def barrier_key(key):
    return key.startswith(f"{BASE}/svc/{BARRIER_NS}/")


class Pipeline:
    """A running Controller over a MemoryEtcd, as kube2sky.main.App.setup wires them."""

    def __init__(self, kinds=SLICE_KINDS, store=(), leading=None, fence=None, gate=None,
                 unreadable=None):
        self.kinds = kinds
        self.writer = MemoryEtcd(store, fence=fence)
        self.writer.read_gate, self.writer.unreadable = gate, unreadable
        self.gate = gate
        self.state = DesiredState(Layout("cluster.local", 30), pods="pods" in kinds,
                                  use_slices="endpoints" not in kinds)
        self.stop_event = threading.Event()
        self.controller = Controller(self.state, self.writer, kinds, self.stop_event,
                                     leading=leading)
        self.barriers = 0
        self.mark = 0   # where in the writer's log the current step began

    def start(self):
        self.controller.start()
        return self

    def close(self):
        self.stop_event.set()
        if self.gate is not None:
            self.gate.set()
        if self.controller.is_alive():  # wake it from its 0.2 s wait for the inbox: what a
            self.controller.queue.put(("snapshot", None))  # failed start-up read sends
        self.controller.join(WAIT)
        alive = self.controller.is_alive()
        # run() turns the cyclic collector off until every kind is listed, then freezes
        # what exists (gc.freeze): give this process its collector back as it was.
        self.controller.collector.resume(freeze=False)
        gc.unfreeze()
        assert not alive, "the controller thread did not stop"

    def feed(self, *messages):
        for message in messages:
            if isinstance(message, list):
                self.feed(*message)
            else:
                self.controller.queue.put(message)

    def wait(self, predicate, what, timeout=WAIT):
        """Until ``predicate()``: woken by every write; re-checked every 50 ms for what the
        controller sets without writing (``synced``)."""
        deadline = time.monotonic() + timeout
        with self.writer.cond:
            while not predicate():
                left = deadline - time.monotonic()
                assert left > 0, f"timed out waiting for {what}"
                assert self.controller.is_alive(), "the controller thread died"
                self.writer.cond.wait(min(left, 0.05))

    def settle(self):
        """Return once the controller has applied everything fed so far: a service event
        after it is submitted once those are (the inbox keeps order between objects)."""
        self.barriers += 1
        name = f"b{self.barriers}"
        self.feed(added("services", external_name(name, f"{name}.invalid.", ns=BARRIER_NS)))
        key = f"{BASE}/svc/{BARRIER_NS}/{name}"
        self.wait(lambda: key in self.writer.submitted, f"barrier {name}")

    def records(self):
        """What etcd holds now, barriers left out."""
        with self.writer.cond:
            return {k: v for k, v in self.writer.store.items() if not barrier_key(k)}

    def writes(self):
        """The writes since the last call: {key: value or DELETE}, each key written once
        (kube2sky applies differences: never a delete and a rewrite of one key)."""
        with self.writer.cond:
            log, self.mark = self.writer.log[self.mark:], len(self.writer.log)
        log = [(k, v) for k, v in log if not barrier_key(k)]
        keys = [k for k, _ in log]
        assert len(keys) == len(set(keys)), f"keys written more than once: {log}"
        return dict(log)

    def snapshot_taken(self):
        """Until the controller has taken over its start-up read of etcd. (It comes
        through the inbox, from the controller's own thread: only the controller's flag
        says when; polled.)"""
        self.wait(lambda: not self.controller._snapshot_pending, "the start-up read")

    def sync(self, objects=None, order="read first"):
        """The initial lists of every kind (``objects``: kind -> objects), until the
        controller has reconciled and is ready; the writes they caused.

        ``order``: whether the start-up read of etcd reaches the controller before the
        lists ("read first": what an etcd faster than the API server gives) or after them
        ("lists first": the Pipeline needs a ``gate``, released once they are applied).
        Either way, every key is written once at most."""
        objects = objects or {}
        if order == "read first" and self.controller.leading is None:
            self.snapshot_taken()
        for kind in self.kinds:
            self.feed(relist(kind, *objects.get(kind, ())))
        if order == "lists first":
            self.settle()
            assert self.writes() == {} and self.writer.reconciles == 0
            self.gate.set()
        self.wait(lambda: self.controller.synced, "the initial sync")
        assert self.controller.ready
        return self.writes()

    def step(self, *messages):
        """Feed ``messages``, wait until they are applied (and, when they end a relist,
        until the reconcile after it ran): the writes they caused."""
        reconciles = self.writer.reconciles
        self.feed(*messages)
        self.settle()
        flat = [m for item in messages for m in (item if isinstance(item, list) else [item])]
        if any(m[0] == "listed" for m in flat):
            self.wait(lambda: self.writer.reconciles > reconciles, "the relist's reconcile")
        return self.writes()


@pytest.fixture
def pipeline():
    made = []

    def make(**kwargs):
        made.append(Pipeline(**kwargs))
        return made[-1].start()
    yield make
    for p in made:
        p.close()


# -- the table -----------------------------------------------------------------------------

Case = namedtuple("Case", "id kinds listed records steps")
Step = namedtuple("Step", "what messages writes")

WEB = f"{BASE}/svc/ns/web"
WEB_FQDN = "web.ns.svc.cluster.local."
L_WEB = label("10.96.0.10")

DB = f"{BASE}/svc/ns/db"
L_2_7 = label("10.244.2.7")

PG_PORTS = [port("pg", 5432)]
DB_SLICE = endpoint_slice("db-abc", "db", [ep("10.244.1.5", "pg-0"), ep("10.244.2.7", ready=None),
                                            ep("10.244.3.9", "pg-2", ready=False)], PG_PORTS)
DB_SLICE_MOVED = endpoint_slice("db-abc", "db", [ep("10.244.1.6", "pg-0"),
                                                  ep("10.244.2.7", ready=None),
                                                  ep("10.244.3.9", "pg-2", ready=False)],
                                PG_PORTS)
DB_V6 = endpoint_slice("db-v6", "db", [ep("fd00:10:244::7", "pg-6")], PG_PORTS,
                       address_type="IPv6")
PTR_FD00_10_244__7 = "/skydns/arpa/ip6/" + "/".join("fd000010024400000000000000000007")

CLUSTER_IP = Case(
    "cluster-ip service: A, PTR, SRV per named port; port changes; delete",
    SLICE_KINDS,
    {"services": [service("web", "10.96.0.10", port("http", 80), port("dns", 53, "UDP"),
                          port(None, 8080))]},   # an unnamed port has no SRV
    {f"{WEB}/{L_WEB}": host("10.96.0.10"),
     ptr4("10.96.0.10"): host(WEB_FQDN),
     f"{WEB}/_tcp/_http/{L_WEB}": host(WEB_FQDN, 80),
     f"{WEB}/_udp/_dns/{L_WEB}": host(WEB_FQDN, 53)},
    [Step("new port numbers and names: only the SRV records change",
          [modified("services", service("web", "10.96.0.10", port("http", 8080),
                                        port("metrics", 9090)))],
          {f"{WEB}/_tcp/_http/{L_WEB}": host(WEB_FQDN, 8080),
           f"{WEB}/_udp/_dns/{L_WEB}": DELETE,
           f"{WEB}/_tcp/_metrics/{L_WEB}": host(WEB_FQDN, 9090)}),
     Step("a change the records do not read writes nothing",
          [modified("services", {**service("web", "10.96.0.10", port("http", 8080),
                                           port("metrics", 9090)),
                                 "metadata": _meta("web", "ns", labels={"tier": "x"})})],
          {}),
     Step("deleted: every record goes",
          [deleted("services", service("web", "10.96.0.10"))],
          {f"{WEB}/{L_WEB}": DELETE, ptr4("10.96.0.10"): DELETE,
           f"{WEB}/_tcp/_http/{L_WEB}": DELETE, f"{WEB}/_tcp/_metrics/{L_WEB}": DELETE})])

DUAL_STACK = Case(
    "dual-stack service: a leaf and a PTR per clusterIP, SRV on the first",
    SLICE_KINDS,
    {"services": [service("ds", "10.96.0.11", port("http", 80),
                          clusterIPs=["10.96.0.11", "fd00:96::11"])]},
    {f"{BASE}/svc/ns/ds/{label('10.96.0.11')}": host("10.96.0.11"),
     f"{BASE}/svc/ns/ds/{label('fd00:96::11')}": host("fd00:96::11"),
     ptr4("10.96.0.11"): host("ds.ns.svc.cluster.local."),
     "/skydns/arpa/ip6/" + "/".join("fd000096000000000000000000000011"):
         host("ds.ns.svc.cluster.local."),
     f"{BASE}/svc/ns/ds/_tcp/_http/{label('10.96.0.11')}":
         host("ds.ns.svc.cluster.local.", 80)},
    [])

HEADLESS = Case(
    "headless service from EndpointSlices: hostnames, hashes, readiness, moves, deletes",
    SLICE_KINDS,
    {"services": [headless("db", port("pg", 5432))], "endpointslices": [DB_SLICE]},
    {f"{DB}/pg-0": host("10.244.1.5"),
     f"{DB}/_tcp/_pg/pg-0": host("pg-0.db.ns.svc.cluster.local.", 5432),
     ptr4("10.244.1.5"): host("pg-0.db.ns.svc.cluster.local."),
     # no hostname, no conditions (ready): the hash label, and the dashed IP as CoreDNS
     f"{DB}/{L_2_7}": host("10.244.2.7"),
     f"{DB}/10-244-2-7": host("10.244.2.7"),
     f"{DB}/_tcp/_pg/{L_2_7}": host(f"{L_2_7}.db.ns.svc.cluster.local.", 5432),
     ptr4("10.244.2.7"): host(f"{L_2_7}.db.ns.svc.cluster.local.")},
    # (pg-2 is not ready: not published)
    [Step("publishNotReadyAddresses publishes the not-ready address",
          [modified("services", headless("db", port("pg", 5432),
                                         publishNotReadyAddresses=True))],
          {f"{DB}/pg-2": host("10.244.3.9"),
           f"{DB}/_tcp/_pg/pg-2": host("pg-2.db.ns.svc.cluster.local.", 5432),
           ptr4("10.244.3.9"): host("pg-2.db.ns.svc.cluster.local.")}),
     Step("and withdrawn again",
          [modified("services", headless("db", port("pg", 5432)))],
          {f"{DB}/pg-2": DELETE, f"{DB}/_tcp/_pg/pg-2": DELETE, ptr4("10.244.3.9"): DELETE}),
     Step("an address moves: its leaf and PTR change, its SRV stays",
          [modified("endpointslices", DB_SLICE_MOVED)],
          {f"{DB}/pg-0": host("10.244.1.6"), ptr4("10.244.1.5"): DELETE,
           ptr4("10.244.1.6"): host("pg-0.db.ns.svc.cluster.local.")}),
     Step("a second slice, IPv6: added to the same service",
          [added("endpointslices", DB_V6)],
          {f"{DB}/pg-6": host("fd00:10:244::7"),
           f"{DB}/_tcp/_pg/pg-6": host("pg-6.db.ns.svc.cluster.local.", 5432),
           PTR_FD00_10_244__7: host("pg-6.db.ns.svc.cluster.local.")}),
     Step("the first slice deleted: only its addresses go",
          [deleted("endpointslices", DB_SLICE_MOVED)],
          {f"{DB}/pg-0": DELETE, f"{DB}/_tcp/_pg/pg-0": DELETE, ptr4("10.244.1.6"): DELETE,
           f"{DB}/{L_2_7}": DELETE, f"{DB}/10-244-2-7": DELETE,
           f"{DB}/_tcp/_pg/{L_2_7}": DELETE, ptr4("10.244.2.7"): DELETE}),
     Step("the service deleted: the rest goes",
          [deleted("services", headless("db"))],
          {f"{DB}/pg-6": DELETE, f"{DB}/_tcp/_pg/pg-6": DELETE, PTR_FD00_10_244__7: DELETE}),
     Step("the service created again: the slice kept meanwhile serves again",
          [added("services", headless("db", port("pg", 5432)))],
          {f"{DB}/pg-6": host("fd00:10:244::7"),
           f"{DB}/_tcp/_pg/pg-6": host("pg-6.db.ns.svc.cluster.local.", 5432),
           PTR_FD00_10_244__7: host("pg-6.db.ns.svc.cluster.local.")})])

MOVE = f"{BASE}/svc/ns"
SLICE_MOVE = Case(
    "a slice relabelled to another service leaves the first; unlabelled, it serves none",
    SLICE_KINDS,
    {"services": [headless("one", port("http", 80)), headless("two", port("http", 80))],
     "endpointslices": [endpoint_slice("moving", "one", [ep("10.244.9.1", "m")],
                                       [port("http", 80)])]},
    {f"{MOVE}/one/m": host("10.244.9.1"),
     f"{MOVE}/one/_tcp/_http/m": host("m.one.ns.svc.cluster.local.", 80),
     ptr4("10.244.9.1"): host("m.one.ns.svc.cluster.local.")},
    [Step("relabelled to two",
          [modified("endpointslices", endpoint_slice("moving", "two", [ep("10.244.9.1", "m")],
                                                     [port("http", 80)]))],
          {f"{MOVE}/one/m": DELETE, f"{MOVE}/one/_tcp/_http/m": DELETE,
           f"{MOVE}/two/m": host("10.244.9.1"),
           f"{MOVE}/two/_tcp/_http/m": host("m.two.ns.svc.cluster.local.", 80),
           ptr4("10.244.9.1"): host("m.two.ns.svc.cluster.local.")}),
     Step("the label removed",
          [modified("endpointslices", endpoint_slice("moving", None, [ep("10.244.9.1", "m")],
                                                     [port("http", 80)]))],
          {f"{MOVE}/two/m": DELETE, f"{MOVE}/two/_tcp/_http/m": DELETE,
           ptr4("10.244.9.1"): DELETE})])

OLD = f"{BASE}/svc/ns/old"
L_4_2 = label("10.244.4.2")


def old_endpoints(web0_ip):
    return endpoints("old", ready=[(web0_ip, None), ("10.244.4.2", None)],
                     not_ready=[("10.244.4.3", "nr")], ports=[port("http", 80)],
                     hostnames={web0_ip: "web-0"})


def old_records(web0_ip):
    """The records of the headless service "old" for its v1 Endpoints above."""
    return {f"{OLD}/web-0": host(web0_ip),
            f"{OLD}/_tcp/_http/web-0": host("web-0.old.ns.svc.cluster.local.", 80),
            ptr4(web0_ip): host("web-0.old.ns.svc.cluster.local."),
            f"{OLD}/{L_4_2}": host("10.244.4.2"),
            f"{OLD}/10-244-4-2": host("10.244.4.2"),
            f"{OLD}/_tcp/_http/{L_4_2}": host(f"{L_4_2}.old.ns.svc.cluster.local.", 80),
            ptr4("10.244.4.2"): host(f"{L_4_2}.old.ns.svc.cluster.local.")}


NOT_READY_NR = {f"{OLD}/nr": host("10.244.4.3"),
                f"{OLD}/_tcp/_http/nr": host("nr.old.ns.svc.cluster.local.", 80),
                ptr4("10.244.4.3"): host("nr.old.ns.svc.cluster.local.")}
V1_ENDPOINTS = Case(
    "v1 Endpoints (--endpoints-source=endpoints): before their service, the hostnames-map "
    "annotation, readiness, moves, deletion and re-creation",
    ENDPOINTS_KINDS,
    {"endpoints": [old_endpoints("10.244.4.1")]},   # no service yet: nothing to write
    {},
    [Step("the service appears: the endpoints held are used",
          [added("services", headless("old", port("http", 80)))],
          old_records("10.244.4.1")),
     Step("endpoints of a service that does not exist write nothing",
          [added("endpoints", endpoints("other", ready=[("10.244.4.9", None)]))], {}),
     Step("publishNotReadyAddresses publishes the not-ready address",
          [modified("services", headless("old", port("http", 80),
                                         publishNotReadyAddresses=True))],
          NOT_READY_NR),
     Step("and withdrawn again",
          [modified("services", headless("old", port("http", 80)))],
          dict.fromkeys(NOT_READY_NR, DELETE)),
     Step("an address moves: its leaf and PTR change, nothing else",
          [modified("endpoints", old_endpoints("10.244.4.4"))],
          {f"{OLD}/web-0": host("10.244.4.4"), ptr4("10.244.4.1"): DELETE,
           ptr4("10.244.4.4"): host("web-0.old.ns.svc.cluster.local.")}),
     Step("the service deleted: its records go",
          [deleted("services", headless("old"))],
          dict.fromkeys(old_records("10.244.4.4"), DELETE)),
     Step("the service created again: the endpoints kept meanwhile serve again",
          [added("services", headless("old", port("http", 80)))],
          old_records("10.244.4.4")),
     Step("the endpoints deleted: the service keeps no address",
          [deleted("endpoints", old_endpoints("10.244.4.4"))],
          dict.fromkeys(old_records("10.244.4.4"), DELETE))])

EXT = f"{BASE}/svc/ns/ext"
L_12 = label("10.96.0.12")
EXTERNAL_NAME = Case(
    "ExternalName: one leaf at the service key; retargeted; turned into a ClusterIP",
    SLICE_KINDS,
    {"services": [external_name("ext", "www.example.com")]},
    {EXT: host("www.example.com.")},
    [Step("retargeted (a trailing dot is not doubled)",
          [modified("services", external_name("ext", "db.example.org."))],
          {EXT: host("db.example.org.")}),
     Step("ExternalName -> ClusterIP: the leaf at the key goes, the address comes",
          [modified("services", service("ext", "10.96.0.12", port("http", 80)))],
          {EXT: DELETE, f"{EXT}/{L_12}": host("10.96.0.12"),
           ptr4("10.96.0.12"): host("ext.ns.svc.cluster.local."),
           f"{EXT}/_tcp/_http/{L_12}": host("ext.ns.svc.cluster.local.", 80)}),
     Step("deleted",
          [deleted("services", service("ext", "10.96.0.12"))],
          {f"{EXT}/{L_12}": DELETE, ptr4("10.96.0.12"): DELETE,
           f"{EXT}/_tcp/_http/{L_12}": DELETE})])

POD = f"{BASE}/pod/ns"
PODS = Case(
    "pod records: one per pod IP, while the pod has it",
    SLICE_KINDS,
    {"pods": [pod("one", "10.244.7.7"), pod("dual", "10.244.7.8", "fd00:10:244::7:8"),
              pod("pending")]},
    {f"{POD}/10-244-7-7/{label('10.244.7.7')}": host("10.244.7.7"),
     f"{POD}/10-244-7-8/{label('10.244.7.8')}": host("10.244.7.8"),
     f"{POD}/fd00-10-244--7-8/{label('fd00:10:244::7:8')}": host("fd00:10:244::7:8")},
    [Step("the pending pod gets its IP",
          [modified("pods", pod("pending", "10.244.7.9"))],
          {f"{POD}/10-244-7-9/{label('10.244.7.9')}": host("10.244.7.9")}),
     Step("a new IP replaces the old record",
          [modified("pods", pod("one", "10.244.7.17"))],
          {f"{POD}/10-244-7-7/{label('10.244.7.7')}": DELETE,
           f"{POD}/10-244-7-17/{label('10.244.7.17')}": host("10.244.7.17")}),
     Step("deleted",
          [deleted("pods", pod("dual", "10.244.7.8", "fd00:10:244::7:8"))],
          {f"{POD}/10-244-7-8/{label('10.244.7.8')}": DELETE,
           f"{POD}/fd00-10-244--7-8/{label('fd00:10:244::7:8')}": DELETE})])

HOSTNET = f"{POD}/10-0-0-5/host-network"
SHARED_POD_RECORD = Case(
    "two host-network pods share one record: it stays while either exists",
    SLICE_KINDS,
    {"pods": [pod("agent-a", "10.0.0.5", host_network=True)]},
    {HOSTNET: host("10.0.0.5")},
    [Step("a second pod with the node's IP", [added("pods", pod("agent-b", "10.0.0.5",
                                                                   host_network=True))], {}),
     Step("the first deleted", [deleted("pods", pod("agent-a", "10.0.0.5",
                                                       host_network=True))], {}),
     Step("the last deleted", [deleted("pods", pod("agent-b", "10.0.0.5",
                                                      host_network=True))],
          {HOSTNET: DELETE})])

L_50_5 = label("10.244.50.5")


def one_ip_service(name):
    return [headless(name), endpoint_slice(f"{name}-1", name, [ep("10.244.50.5")])]


SHARED_PTR = Case(
    "one IP in two headless services: the PTR names the service sorting first, whatever "
    "the order; the other takes over when it goes",
    SLICE_KINDS,
    {"services": [one_ip_service("beta")[0]], "endpointslices": [one_ip_service("beta")[1]]},
    {f"{BASE}/svc/ns/beta/{L_50_5}": host("10.244.50.5"),
     f"{BASE}/svc/ns/beta/10-244-50-5": host("10.244.50.5"),
     ptr4("10.244.50.5"): host(f"{L_50_5}.beta.ns.svc.cluster.local.")},
    [Step("alpha arrives after beta and takes the PTR",
          [added("services", one_ip_service("alpha")[0]),
           added("endpointslices", one_ip_service("alpha")[1])],
          {f"{BASE}/svc/ns/alpha/{L_50_5}": host("10.244.50.5"),
           f"{BASE}/svc/ns/alpha/10-244-50-5": host("10.244.50.5"),
           ptr4("10.244.50.5"): host(f"{L_50_5}.alpha.ns.svc.cluster.local.")}),
     Step("beta's address gets a hostname: its leaves change, the PTR stays alpha's",
          [modified("endpointslices", endpoint_slice("beta-1", "beta",
                                                     [ep("10.244.50.5", "b")]))],
          {f"{BASE}/svc/ns/beta/{L_50_5}": DELETE, f"{BASE}/svc/ns/beta/10-244-50-5": DELETE,
           f"{BASE}/svc/ns/beta/b": host("10.244.50.5")}),
     Step("alpha deleted: the PTR names beta's address",
          [deleted("services", one_ip_service("alpha")[0])],
          {f"{BASE}/svc/ns/alpha/{L_50_5}": DELETE, f"{BASE}/svc/ns/alpha/10-244-50-5": DELETE,
           ptr4("10.244.50.5"): host("b.beta.ns.svc.cluster.local.")}),
     Step("beta's slice deleted: the PTR goes with the last owner",
          [deleted("endpointslices", one_ip_service("beta")[1])],
          {f"{BASE}/svc/ns/beta/b": DELETE, ptr4("10.244.50.5"): DELETE})])

DUP = f"{BASE}/svc/ns/dup"
DUPLICATE_HOSTNAMES = Case(
    "two addresses with one hostname: both answer under it; one left, it takes the leaf",
    SLICE_KINDS,
    {"services": [headless("dup", port("pg", 5432))],
     "endpointslices": [endpoint_slice("dup-1", "dup", [ep("10.244.67.2", "h"),
                                                         ep("10.244.67.1", "h")], PG_PORTS)]},
    {f"{DUP}/h": host("10.244.67.1"),      # sorted by (hostname, IP): .1 gets the leaf
     f"{DUP}/h/{label('10.244.67.2')}": host("10.244.67.2"),   # .2 just below it
     f"{DUP}/_tcp/_pg/h": host("h.dup.ns.svc.cluster.local.", 5432),
     ptr4("10.244.67.1"): host("h.dup.ns.svc.cluster.local."),
     ptr4("10.244.67.2"): host("h.dup.ns.svc.cluster.local.")},
    [Step("only .2 left",
          [modified("endpointslices", endpoint_slice("dup-1", "dup", [ep("10.244.67.2", "h")],
                                                     PG_PORTS))],
          {f"{DUP}/h": host("10.244.67.2"), f"{DUP}/h/{label('10.244.67.2')}": DELETE,
           ptr4("10.244.67.1"): DELETE})])

L_20_1, L_20_2, L_20_3 = label("10.96.20.1"), label("10.96.20.2"), label("10.96.20.3")
SVC = f"{BASE}/svc/ns"
RELIST = Case(
    "relists: changes applied page by page, deletions only once the list is complete",
    SLICE_KINDS,
    {"services": [service("a", "10.96.20.1", port("http", 80)),
                  service("b", "10.96.20.2", port("http", 80))],
     "pods": [pod("p1", "10.244.21.1"), pod("p2", "10.244.21.2")]},
    {f"{SVC}/a/{L_20_1}": host("10.96.20.1"), ptr4("10.96.20.1"): host("a.ns.svc.cluster.local."),
     f"{SVC}/a/_tcp/_http/{L_20_1}": host("a.ns.svc.cluster.local.", 80),
     f"{SVC}/b/{L_20_2}": host("10.96.20.2"), ptr4("10.96.20.2"): host("b.ns.svc.cluster.local."),
     f"{SVC}/b/_tcp/_http/{L_20_2}": host("b.ns.svc.cluster.local.", 80),
     f"{POD}/10-244-21-1/{label('10.244.21.1')}": host("10.244.21.1"),
     f"{POD}/10-244-21-2/{label('10.244.21.2')}": host("10.244.21.2")},
    [Step("a relist's first page (a changed, b missing from it): no deletion yet",
          [page("services", service("a", "10.96.20.1", port("http", 8080)))],
          {f"{SVC}/a/_tcp/_http/{L_20_1}": host("a.ns.svc.cluster.local.", 8080)}),
     Step("its last page and its end: c new, b gone",
          [page("services", service("c", "10.96.20.3", port("dns", 53, "UDP"))),
           listed("services", service("a", "10.96.20.1"), service("c", "10.96.20.3"))],
          {f"{SVC}/c/{L_20_3}": host("10.96.20.3"),
           ptr4("10.96.20.3"): host("c.ns.svc.cluster.local."),
           f"{SVC}/c/_udp/_dns/{L_20_3}": host("c.ns.svc.cluster.local.", 53),
           f"{SVC}/b/{L_20_2}": DELETE, ptr4("10.96.20.2"): DELETE,
           f"{SVC}/b/_tcp/_http/{L_20_2}": DELETE}),
     Step("a relist of pods in which p1 is gone",
          relist("pods", pod("p2", "10.244.21.2")),
          {f"{POD}/10-244-21-1/{label('10.244.21.1')}": DELETE}),
     Step("a relist that changes nothing writes nothing",
          relist("pods", pod("p2", "10.244.21.2")), {})])


ODD_SERVICES = [
    {"apiVersion": "v1", "kind": "Service", "metadata": _meta("nospec", "ns")},
    {"kind": "Service", "metadata": {"namespace": "ns"}, "spec": {"clusterIP": "10.96.70.9"}},
    {"kind": "Service", "spec": {"clusterIP": "10.96.70.8"}},          # no metadata at all
    service("badip", "10.96.300.1", port("http", 80)),
    {**service("specstr", "10.96.70.7"), "spec": "oops"},
    {**external_name("extnone", ""), "spec": {"type": "ExternalName"}},
    service("badport", "10.96.70.3", {"name": "http"}, port("grpc", 9000),
            {"name": "big", "port": 10 ** 30}),
    headless("mixed", port("http", 80)),
    headless("noports"),
    service("fine", "10.96.70.1", port("http", 80)),
]
ODD_SLICES = [
    endpoint_slice("orphan", None, [ep("10.244.70.9")]),           # no service label
    endpoint_slice("mixed-v4", "mixed", [ep("10.244.70.300"), ep("10.244.70.2"),
                                         {"addresses": None}, "not-an-endpoint"],
                   [port("http", 80)]),
    endpoint_slice("mixed-fqdn", "mixed", [{"addresses": ["backend.example.com"]}],
                   [port("http", 80)], address_type="FQDN"),
    {**endpoint_slice("mixed-null", "mixed", []), "endpoints": None, "ports": None},
    endpoint_slice("noports-1", "noports", [ep("10.244.70.1")]),
]
ODD_PODS = [
    pod("badpod", "not-an-ip"),
    {**pod("statusnull"), "status": None},
    {**pod("specstr", "10.244.70.6"), "spec": "oops", "status": {"podIPs": "x"}},
    pod("good", "10.244.70.7"),
]
L_70_2, L_70_1 = label("10.244.70.2"), label("10.244.70.1")
ODD = Case(
    "odd objects (missing or ill-typed fields, bad addresses) write nothing of theirs and "
    "never stop the sync",
    SLICE_KINDS,
    {"services": ODD_SERVICES, "endpointslices": ODD_SLICES, "pods": ODD_PODS},
    {f"{SVC}/fine/{label('10.96.70.1')}": host("10.96.70.1"),
     ptr4("10.96.70.1"): host("fine.ns.svc.cluster.local."),
     f"{SVC}/fine/_tcp/_http/{label('10.96.70.1')}": host("fine.ns.svc.cluster.local.", 80),
     # a port without a (valid) number has no SRV; the rest of the service is written
     f"{SVC}/badport/{label('10.96.70.3')}": host("10.96.70.3"),
     ptr4("10.96.70.3"): host("badport.ns.svc.cluster.local."),
     f"{SVC}/badport/_tcp/_grpc/{label('10.96.70.3')}":
         host("badport.ns.svc.cluster.local.", 9000),
     # the good address of a slice with a bad one; FQDN slices are not served
     f"{SVC}/mixed/{L_70_2}": host("10.244.70.2"),
     f"{SVC}/mixed/10-244-70-2": host("10.244.70.2"),
     f"{SVC}/mixed/_tcp/_http/{L_70_2}": host(f"{L_70_2}.mixed.ns.svc.cluster.local.", 80),
     ptr4("10.244.70.2"): host(f"{L_70_2}.mixed.ns.svc.cluster.local."),
     # a headless service without ports: addresses, no SRV
     f"{SVC}/noports/{L_70_1}": host("10.244.70.1"),
     f"{SVC}/noports/10-244-70-1": host("10.244.70.1"),
     ptr4("10.244.70.1"): host(f"{L_70_1}.noports.ns.svc.cluster.local."),
     f"{POD}/10-244-70-7/{label('10.244.70.7')}": host("10.244.70.7")},
    [Step("odd watch events: no metadata, an unknown object deleted, a spec that is text",
          [added("services", {"kind": "Service", "spec": {"clusterIP": "10.96.70.5"}}),
           deleted("services", {}),
           deleted("pods", {"metadata": {"namespace": "ns", "name": "never-seen"}}),
           modified("endpointslices", {**endpoint_slice("orphan", None, []),
                                       "endpoints": "x"})],
          {}),
     Step("and the next service is written as usual",
          [added("services", service("fine2", "10.96.70.2", port("http", 80)))],
          {f"{SVC}/fine2/{label('10.96.70.2')}": host("10.96.70.2"),
           ptr4("10.96.70.2"): host("fine2.ns.svc.cluster.local."),
           f"{SVC}/fine2/_tcp/_http/{label('10.96.70.2')}":
               host("fine2.ns.svc.cluster.local.", 80)})])

CASES = [CLUSTER_IP, DUAL_STACK, HEADLESS, SLICE_MOVE, V1_ENDPOINTS, EXTERNAL_NAME, PODS,
         SHARED_POD_RECORD, SHARED_PTR, DUPLICATE_HOSTNAMES, RELIST, ODD]


@pytest.mark.parametrize("case", CASES, ids=[c.id.split(":")[0] for c in CASES])
def test_objects_and_events_to_etcd_writes(pipeline, case):
    p = pipeline(kinds=case.kinds)
    expected = {**DNS_VERSION, **case.records}
    assert p.sync(case.listed) == expected, "initial sync"
    assert p.records() == expected
    for step in case.steps:
        assert p.step(*step.messages) == step.writes, step.what
        for key, value in step.writes.items():
            if value is DELETE:
                expected.pop(key, None)
            else:
                expected[key] = value
        assert p.records() == expected, step.what
    assert p.controller.is_alive() and p.controller.ready


# -- start-up: the etcd snapshot, restarts, etcd unreadable ---------------------------------

RESTART_OBJECTS = {"services": [service("web", "10.96.0.10", port("http", 80))],
                   "pods": [pod("one", "10.244.7.7")]}
RESTART_RECORDS = {
    **DNS_VERSION,
    f"{WEB}/{L_WEB}": host("10.96.0.10"),
    ptr4("10.96.0.10"): host(WEB_FQDN),
    f"{WEB}/_tcp/_http/{L_WEB}": host(WEB_FQDN, 80),
    f"{POD}/10-244-7-7/{label('10.244.7.7')}": host("10.244.7.7"),
}
FOREIGN = {
    # no owner field: another writer's (or the original kube2sky's), never deleted
    f"{BASE}/svc/default/manual/x": '{"host":"192.0.2.1","priority":10,"weight":10,'
                                    '"ttl":30,"targetstrip":0}',
    # ... also where kube2sky writes, looking like its own: a service's hash leaf, a PTR,
    # a pod's record, and a key of another domain
    f"{SVC}/gone/{label('10.96.40.9')}": '{"host":"10.96.40.9","priority":10,"weight":10,'
                                         '"ttl":30,"targetstrip":0}',
    ptr4("10.96.40.7"): '{"host":"gone.ns.svc.cluster.local.","priority":10,"weight":10,'
                        '"ttl":30,"targetstrip":0}',
    f"{POD}/10-244-40-1/{label('10.244.40.1')}": '{"host":"10.244.40.1","priority":10,'
                                                 '"weight":10,"ttl":30,"targetstrip":0}',
    "/skydns/local/other/x": '{"host":"192.0.2.3","priority":10,"weight":10,"ttl":30,'
                             '"targetstrip":0}',
    # another writer's own owner field
    f"{SVC}/gone/other": '{"host":"192.0.2.4","priority":10,"weight":10,"ttl":30,'
                         '"targetstrip":0,"owner":"someone"}',
}


ORDERS = ["read first", "lists first"]


def restarted(pipeline, order, store):
    """A Pipeline on ``store`` whose start-up read can be held back for ``order``."""
    return pipeline(store=store, gate=threading.Event() if order == "lists first" else None)


@pytest.mark.parametrize("order", ORDERS)
def test_a_restart_against_an_etcd_in_sync_writes_nothing(pipeline, order):
    p = restarted(pipeline, order, {**RESTART_RECORDS, **FOREIGN})
    assert p.sync(RESTART_OBJECTS, order) == {}
    assert [k for k in p.writer.submitted if not barrier_key(k)] == []
    assert p.writer.reads == 1  # the start-up read only
    assert p.records() == {**RESTART_RECORDS, **FOREIGN}


@pytest.mark.parametrize("order", ORDERS)
def test_a_restart_deletes_our_stale_keys_rewrites_changed_ones_and_keeps_foreign_ones(
        pipeline, order):
    stale = {f"{SVC}/gone/{label('10.96.40.8')}": host("10.96.40.8"),
             ptr4("10.96.40.8"): host("gone.ns.svc.cluster.local.")}
    outdated = {f"{WEB}/_tcp/_http/{L_WEB}": host(WEB_FQDN, 8080)}
    p = restarted(pipeline, order, {**RESTART_RECORDS, **outdated, **FOREIGN, **stale})
    assert p.sync(RESTART_OBJECTS, order) == {**dict.fromkeys(stale, DELETE),
                                       f"{WEB}/_tcp/_http/{L_WEB}": host(WEB_FQDN, 80)}
    assert p.records() == {**RESTART_RECORDS, **FOREIGN}


L_10_10, L_10_11, L_10_12 = label("10.96.10.10"), label("10.96.10.11"), label("10.96.10.12")
L_2_8 = label("10.244.2.8")
DOWN_BEFORE = {   # what kube2sky wrote before it stopped (scenario_one of the e2e tests)
    **DNS_VERSION,
    f"{SVC}/web/{L_10_10}": host("10.96.10.10"),
    ptr4("10.96.10.10"): host("web.ns.svc.cluster.local."),
    f"{SVC}/web/_tcp/_http/{L_10_10}": host("web.ns.svc.cluster.local.", 80),
    f"{SVC}/web/_tcp/_alt/{L_10_10}": host("web.ns.svc.cluster.local.", 8080),
    f"{SVC}/plain/{L_10_11}": host("10.96.10.11"),
    ptr4("10.96.10.11"): host("plain.ns.svc.cluster.local."),
    f"{DB}/pg-0": host("10.244.1.5"),
    f"{DB}/_tcp/_pg/pg-0": host("pg-0.db.ns.svc.cluster.local.", 5432),
    ptr4("10.244.1.5"): host("pg-0.db.ns.svc.cluster.local."),
    f"{DB}/{L_2_7}": host("10.244.2.7"),
    f"{DB}/10-244-2-7": host("10.244.2.7"),
    f"{DB}/_tcp/_pg/{L_2_7}": host(f"{L_2_7}.db.ns.svc.cluster.local.", 5432),
    ptr4("10.244.2.7"): host(f"{L_2_7}.db.ns.svc.cluster.local."),
    EXT: host("www.example.com."),
    f"{POD}/10-244-9-9/{label('10.244.9.9')}": host("10.244.9.9"),
}
DOWN_AFTER = {    # the objects when it starts again
    "services": [service("web", "10.96.10.10", port("http", 80)),   # alt port removed
                 headless("db", port("pg", 5432)),
                 external_name("ext", "other.example."),             # retargeted
                 service("new", "10.96.10.12", port("grpc", 9000))],  # new; plain deleted
    "endpointslices": [endpoint_slice("db-1", "db", [ep("10.244.1.5", "pg-0"),
                                                     ep("10.244.2.8")],
                                      [port("pg", 5433)])],        # .7 -> .8, new port
    "pods": [pod("p-pending", "10.244.9.10")],                     # p1 deleted
}


@pytest.mark.parametrize("order", ORDERS)
def test_a_restart_after_changes_made_while_down_writes_exactly_the_difference(pipeline,
                                                                               order):
    p = restarted(pipeline, order, {**DOWN_BEFORE, **FOREIGN})
    assert p.sync(DOWN_AFTER, order) == {
        f"{SVC}/web/_tcp/_alt/{L_10_10}": DELETE,
        f"{SVC}/plain/{L_10_11}": DELETE, ptr4("10.96.10.11"): DELETE,
        f"{DB}/_tcp/_pg/pg-0": host("pg-0.db.ns.svc.cluster.local.", 5433),
        f"{DB}/{L_2_7}": DELETE, f"{DB}/10-244-2-7": DELETE,
        f"{DB}/_tcp/_pg/{L_2_7}": DELETE, ptr4("10.244.2.7"): DELETE,
        f"{DB}/{L_2_8}": host("10.244.2.8"), f"{DB}/10-244-2-8": host("10.244.2.8"),
        f"{DB}/_tcp/_pg/{L_2_8}": host(f"{L_2_8}.db.ns.svc.cluster.local.", 5433),
        ptr4("10.244.2.8"): host(f"{L_2_8}.db.ns.svc.cluster.local."),
        EXT: host("other.example."),
        f"{SVC}/new/{L_10_12}": host("10.96.10.12"),
        ptr4("10.96.10.12"): host("new.ns.svc.cluster.local."),
        f"{SVC}/new/_tcp/_grpc/{L_10_12}": host("new.ns.svc.cluster.local.", 9000),
        f"{POD}/10-244-9-9/{label('10.244.9.9')}": DELETE,
        f"{POD}/10-244-9-10/{label('10.244.9.10')}": host("10.244.9.10")}
    assert set(p.records()) - set(FOREIGN) == set(DOWN_BEFORE) - {
        f"{SVC}/web/_tcp/_alt/{L_10_10}", f"{SVC}/plain/{L_10_11}", ptr4("10.96.10.11"),
        f"{DB}/{L_2_7}", f"{DB}/10-244-2-7", f"{DB}/_tcp/_pg/{L_2_7}", ptr4("10.244.2.7"),
        f"{POD}/10-244-9-9/{label('10.244.9.9')}"} | {
        f"{DB}/{L_2_8}", f"{DB}/10-244-2-8", f"{DB}/_tcp/_pg/{L_2_8}", ptr4("10.244.2.8"),
        f"{SVC}/new/{L_10_12}", ptr4("10.96.10.12"), f"{SVC}/new/_tcp/_grpc/{L_10_12}",
        f"{POD}/10-244-9-10/{label('10.244.9.10')}"}


@pytest.mark.parametrize("order", [("alpha", "beta"), ("beta", "alpha")])
def test_the_ptr_of_an_ip_in_two_services_is_the_same_whatever_the_list_order(pipeline,
                                                                               order):
    """A restart lists the services in any order: the PTR names the same one."""
    p = pipeline()
    assert p.sync({"services": [one_ip_service(name)[0] for name in order],
                   "endpointslices": [one_ip_service(name)[1] for name in order]}) == {
        **DNS_VERSION,
        f"{BASE}/svc/ns/alpha/{L_50_5}": host("10.244.50.5"),
        f"{BASE}/svc/ns/alpha/10-244-50-5": host("10.244.50.5"),
        f"{BASE}/svc/ns/beta/{L_50_5}": host("10.244.50.5"),
        f"{BASE}/svc/ns/beta/10-244-50-5": host("10.244.50.5"),
        ptr4("10.244.50.5"): host(f"{L_50_5}.alpha.ns.svc.cluster.local.")}


def test_an_odd_object_is_logged_once_not_again_while_its_problem_stays(pipeline, caplog):
    caplog.set_level(logging.WARNING, logger="kube2sky")
    p = pipeline()
    p.sync({"services": [headless("badip", port("http", 80)),
                         headless("mixed", port("http", 80))],
            "endpointslices": [
                endpoint_slice("badip-x", "badip", [ep("10.244.70.300"), ep("10.244.70.2")],
                               [port("http", 80)]),
                endpoint_slice("mixed-fqdn", "mixed", [{"addresses": ["backend.example."]}],
                               [port("http", 80)], address_type="FQDN"),
                endpoint_slice("mixed-v4", "mixed", [ep("10.244.71.1")], [port("http", 80)])],
            "pods": [pod("badpod", "not-an-ip")]})

    def lines(*words):
        return [r.getMessage() for r in caplog.records
                if all(word in r.getMessage() for word in words)]
    problems = [("ns/badip", "10.244.70.300"), ("ns/badpod", "not-an-ip"),
                ("ns/mixed-fqdn", "FQDN")]
    for words in problems:
        assert len(lines(*words)) == 1, (words, [r.getMessage() for r in caplog.records])
    # changes that leave each problem as it is log nothing new
    p.step(modified("services", {**headless("badip", port("http", 80)),
                                 "metadata": _meta("badip", "ns", labels={"a": "b"})}),
           modified("pods", {**pod("badpod", "not-an-ip"),
                             "metadata": _meta("badpod", "ns", labels={"a": "b"})}),
           added("endpointslices", endpoint_slice("mixed-v4b", "mixed", [ep("10.244.71.2")],
                                                  [port("http", 80)])))
    for words in problems:
        assert len(lines(*words)) == 1, (words, [r.getMessage() for r in caplog.records])
    # a new problem of a service is logged once, and the one it had is not logged again
    p.step(added("endpointslices", endpoint_slice("mixed-bad", "mixed", [ep("10.244.71.300")],
                                                  [port("http", 80)])))
    for words in problems + [("ns/mixed", "10.244.71.300")]:
        assert len(lines(*words)) == 1, (words, [r.getMessage() for r in caplog.records])


def test_lists_applied_before_the_start_up_read_ends_are_written_by_the_reconcile(pipeline):
    """The start-up read of etcd is slow: the lists are applied meanwhile, nothing is
    written until the read is there, then only what etcd lacks (once each)."""
    stale = {f"{SVC}/gone/{label('10.96.40.8')}": host("10.96.40.8")}
    p = restarted(pipeline, "lists first", {**stale, f"{WEB}/{L_WEB}": host("10.96.0.10")})
    assert p.sync(RESTART_OBJECTS, "lists first") == {
        **dict.fromkeys(stale, DELETE),
        **{k: v for k, v in RESTART_RECORDS.items() if k != f"{WEB}/{L_WEB}"}}
    assert p.records() == RESTART_RECORDS


def test_a_record_sent_while_the_start_up_read_runs_is_deleted_when_it_must_be(pipeline):
    """The read may miss a write sent while it runs; the deletion of that record after
    the read arrived must still reach etcd (not be skipped as "not in etcd")."""
    gate = threading.Event()
    p = pipeline(gate=gate)
    assert p.writer.read_entered.wait(WAIT)   # its picture of etcd is taken: empty
    late = service("late", "10.96.0.44", port("http", 80))
    late_records = {f"{SVC}/late/{label('10.96.0.44')}": host("10.96.0.44"),
                    ptr4("10.96.0.44"): host("late.ns.svc.cluster.local."),
                    f"{SVC}/late/_tcp/_http/{label('10.96.0.44')}":
                        host("late.ns.svc.cluster.local.", 80)}
    assert p.step(added("services", late)) == late_records
    gate.set()
    # (the snapshot reaches the controller through its inbox; nothing else says when)
    p.snapshot_taken()
    assert p.step(deleted("services", late)) == dict.fromkeys(late_records, DELETE)
    assert p.sync() == DNS_VERSION
    assert p.records() == DNS_VERSION


def test_etcd_unreadable_at_start_then_back(pipeline):
    """Neither the start-up read nor the reconcile can read etcd: not ready, with the
    reason; the reconcile is retried and succeeds once etcd answers."""
    p = pipeline(unreadable=ConnectionError("etcd away"))
    for kind in p.kinds:
        p.feed(relist(kind, *RESTART_OBJECTS.get(kind, ())))
    p.wait(lambda: p.controller.reconcile_error, "the reconcile to fail")
    assert "etcd away" in p.controller.reconcile_error
    assert not p.controller.ready and p.writes() == {}
    with p.writer.cond:
        p.writer.unreadable = None
    p.wait(lambda: p.controller.synced, "the reconcile retried", timeout=WAIT + 10)
    assert p.controller.ready and p.controller.reconcile_error == ""
    assert p.writes() == RESTART_RECORDS


# -- leader election: a standby keeps its state, reconciles when elected -----------------

def test_a_standby_writes_nothing_and_reconciles_each_time_it_is_elected(pipeline):
    leads = threading.Event()
    stale = {f"{SVC}/gone/{label('10.96.40.8')}": host("10.96.40.8")}
    p = pipeline(store={**stale, **FOREIGN}, leading=leads.is_set, fence=leads.is_set)
    for kind in p.kinds:
        p.feed(relist(kind, *RESTART_OBJECTS.get(kind, ())))
    p.settle()    # a standby's barrier is submitted, and dropped by the fence
    assert p.controller.listed == set(p.kinds)
    assert p.writer.reads == 0 and p.writer.reconciles == 0 and not p.controller.synced
    assert p.records() == {**stale, **FOREIGN}

    leads.set()
    p.controller.elected()
    p.wait(lambda: p.controller.synced, "the reconcile after the election")
    assert p.writes() == {**RESTART_RECORDS, **dict.fromkeys(stale, DELETE)}
    assert p.records() == {**RESTART_RECORDS, **FOREIGN}

    leads.clear()
    p.controller.lost()
    p.wait(lambda: p.writer.discards == 1, "the pending changes to be dropped")
    pod_key = f"{POD}/10-244-7-8/{label('10.244.7.8')}"
    assert p.step(added("pods", pod("two", "10.244.7.8"))) == {}   # the leader writes it
    assert not p.controller.synced

    leads.set()
    p.controller.elected()
    p.wait(lambda: p.controller.synced, "the reconcile after the second election")
    assert p.writes() == {pod_key: host("10.244.7.8")}
    assert p.records() == {**RESTART_RECORDS, **FOREIGN, pod_key: host("10.244.7.8")}


# -- the controller thread and an object its handlers cannot take ---------------------------

@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_an_object_a_handler_cannot_take_does_not_stop_the_sync(pipeline, caplog):
    """An EndpointSlice whose labels are a list (no API server sends one) raised in
    DesiredState._slice_service and ended the controller thread: the sync stopped for
    good. It is skipped with a line saying which and why."""
    p = pipeline()
    p.sync()
    bad = {**endpoint_slice("weird", "web", []),
           "metadata": {"namespace": "ns", "name": "weird", "labels": ["not", "a", "map"]}}
    p.feed(added("endpointslices", bad))
    assert p.step(added("services", service("after", "10.96.0.45"))) == {
        f"{SVC}/after/{label('10.96.0.45')}": host("10.96.0.45"),
        ptr4("10.96.0.45"): host("after.ns.svc.cluster.local.")}
    assert [r.getMessage() for r in caplog.records if "weird" in r.getMessage()] == [
        "skipping endpointslices ns/weird: AttributeError: 'list' object has no attribute "
        "'get'"]


# -- with the real EtcdWriter, against a real etcd ---------------------------------------------

class EtcdWatch:
    """Wakes the test on every change under /skydns/ and /kube2sky/ (an etcd watch), so it
    waits for etcd's contents without sleeping: each wake re-reads and compares."""

    def __init__(self, client):
        self.client = client
        self.cond = threading.Condition()
        self.changes = 0
        self.ids = [client.add_watch_prefix_callback(prefix, self._changed)
                    for prefix in ("/skydns/", MARKER_PREFIX + "/")]

    def _changed(self, _response):
        with self.cond:
            self.changes += 1
            self.cond.notify_all()

    def contents(self, prefix="/skydns/"):
        return {meta_.key.decode(): value.decode()
                for value, meta_ in self.client.get_prefix(prefix)}

    def wait_equal(self, expected, timeout=WAIT):
        deadline = time.monotonic() + timeout
        while True:
            with self.cond:
                seen = self.changes
            actual = self.contents()
            markers = self.contents(MARKER_PREFIX + "/")
            if actual == expected and not markers:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                missing = {k: v for k, v in expected.items() if actual.get(k) != v}
                stale = {k: v for k, v in actual.items() if k not in expected}
                raise AssertionError(f"etcd differs: missing/wrong {missing}, stale {stale}, "
                                     f"markers {markers}")
            with self.cond:
                self.cond.wait_for(lambda: self.changes != seen, timeout=left)

    def close(self):
        for watch_id in self.ids:
            self.client.cancel_watch(watch_id)


class EtcdPipeline(Pipeline):
    """A Controller over the real EtcdWriter (its threads running) on a real etcd."""

    def __init__(self, etcd_url, kinds=SLICE_KINDS, timeout=5.0):
        layout = Layout("cluster.local", 30)
        config = SimpleNamespace(machines=[etcd_url], ca_cert="", tls_key="", tls_pem="",
                                 username="", password="")
        self.kinds, self.gate, self.barriers, self.mark = kinds, None, 0, 0
        self.writer = EtcdWriter(config, layout.scopes(), timeout=timeout)
        self.state = DesiredState(layout, pods="pods" in kinds,
                                  use_slices="endpoints" not in kinds)
        self.stop_event = threading.Event()
        self.controller = Controller(self.state, self.writer, kinds, self.stop_event)

    def start(self):
        self.writer.start()
        return super().start()

    def close(self):
        try:
            super().close()
        finally:
            self.writer.stop()

    def sync(self, objects=None):
        """As Pipeline.sync "read first" (its waits polled: EtcdWriter has no Condition
        to wait on for these)."""
        objects = objects or {}
        wait_for(lambda: not self.controller._snapshot_pending, timeout=WAIT,
                 interval=0.02, what="the start-up read")
        for kind in self.kinds:
            self.feed(relist(kind, *objects.get(kind, ())))
        wait_for(lambda: self.controller.synced, timeout=WAIT, interval=0.02,
                 what="the initial sync")

    def drained(self):
        """Until no key is pending or in flight (the writer's counters are final): woken
        by the writer whenever a transaction ends."""
        writer = self.writer
        with writer._drained:
            assert writer._drained.wait_for(
                lambda: not writer._pending and not writer._in_flight, timeout=WAIT)


@pytest.fixture
def etcd_pipeline(etcd_client):
    """Factory of EtcdPipelines on the conftest's etcd (its /skydns/ emptied); the
    markers of older versions emptied too."""
    etcd_client.delete_prefix(MARKER_PREFIX + "/")
    watch = EtcdWatch(etcd_client)
    made = []

    def make(etcd_url, **kwargs):
        made.append(EtcdPipeline(etcd_url, **kwargs))
        return made[-1].start()
    make.watch = watch
    yield make
    for p in made:
        p.close()
    watch.close()
    etcd_client.delete_prefix(MARKER_PREFIX + "/")


SCENARIO = {  # the objects of a small cluster, and what etcd must hold for them
    "services": [service("web", "10.96.0.10", port("http", 80), port("dns", 53, "UDP")),
                 headless("db", port("pg", 5432)), external_name("ext", "www.example.com")],
    "endpointslices": [DB_SLICE],
    "pods": [pod("one", "10.244.7.7")],
}
SCENARIO_RECORDS = {**DNS_VERSION, **CLUSTER_IP.records, **HEADLESS.records,
                    **EXTERNAL_NAME.records,
                    f"{POD}/10-244-7-7/{label('10.244.7.7')}": host("10.244.7.7")}


def test_real_etcd_exact_contents_ownership_markers_and_a_restart_in_sync(etcd, etcd_client,
                                                                          etcd_pipeline):
    """Into an etcd left by an older kube2sky (values without the owner field, a marker
    key beside each), with other writers' keys: etcd ends holding exactly the desired
    records with our owner field, the other writers' keys, and no marker. Watch events
    then change exactly their records. A restart against it writes and deletes nothing."""
    old_style = {key: value.replace(OWNED, "}") for key, value in CLUSTER_IP.records.items()}
    gone = {f"{SVC}/gone/{label('10.96.41.9')}":
            '{"host":"10.96.41.9","priority":10,"weight":10,"ttl":30,"targetstrip":0}'}
    stale_ours = {f"{SVC}/stale/{label('10.96.41.8')}": host("10.96.41.8")}
    for key, value in {**old_style, **gone}.items():
        etcd_client.put(key, value)
        etcd_client.put(MARKER_PREFIX + key, value)
    for key, value in {**FOREIGN, **stale_ours}.items():
        etcd_client.put(key, value)

    first = etcd_pipeline(etcd.url)
    first.sync(SCENARIO)
    etcd_pipeline.watch.wait_equal({**SCENARIO_RECORDS, **FOREIGN})
    first.drained()
    assert first.writer.written == len(SCENARIO_RECORDS)   # each once
    assert first.writer.deleted == len(old_style) + 2 * len(gone) + len(stale_ours)

    first.feed(modified("services", service("web", "10.96.0.10", port("http", 8080))),
               deleted("pods", pod("one", "10.244.7.7")))
    after = {**SCENARIO_RECORDS, f"{WEB}/_tcp/_http/{L_WEB}": host(WEB_FQDN, 8080)}
    del after[f"{WEB}/_udp/_dns/{L_WEB}"]
    del after[f"{POD}/10-244-7-7/{label('10.244.7.7')}"]
    etcd_pipeline.watch.wait_equal({**after, **FOREIGN})
    first.close()

    second = etcd_pipeline(etcd.url)
    second.sync({**SCENARIO, "services": [service("web", "10.96.0.10", port("http", 8080)),
                                          *SCENARIO["services"][1:]], "pods": []})
    assert (second.writer.written, second.writer.deleted) == (0, 0)
    assert etcd_pipeline.watch.contents() == {**after, **FOREIGN}


def test_etcd_gone_keeps_the_changes_and_reports_not_ready_until_it_is_back(etcd,
                                                                           etcd_client):
    """etcd stopped under a synced kube2sky: the changes made meanwhile wait, the writer
    reports the failure (not ready), nothing is lost; etcd started again on its data, the
    writes land and kube2sky is ready again. (The module's etcd, started again whatever
    happens.)"""
    server = etcd
    p = None
    try:
        p = EtcdPipeline(server.url, timeout=1.0).start()
        p.sync(RESTART_OBJECTS)
        client = server.client()
        try:
            watch = EtcdWatch(client)
            watch.wait_equal(RESTART_RECORDS)
            watch.close()
        finally:
            client.close()
        server.stop()
        p.feed(added("services", service("new", "10.96.60.2", port("http", 80))),
               deleted("services", service("web", "10.96.0.10")))
        wait_for(lambda: not p.writer.failures.healthy, timeout=WAIT, interval=0.02,
                 what="the writer to report etcd's failure")
        assert not p.controller.ready and p.writer.pending() > 0
        server.start()
        wanted = {**DNS_VERSION, f"{POD}/10-244-7-7/{label('10.244.7.7')}": host("10.244.7.7"),
                  f"{SVC}/new/{label('10.96.60.2')}": host("10.96.60.2"),
                  ptr4("10.96.60.2"): host("new.ns.svc.cluster.local."),
                  f"{SVC}/new/_tcp/_http/{label('10.96.60.2')}":
                      host("new.ns.svc.cluster.local.", 80)}
        client = server.client()
        try:
            watch = EtcdWatch(client)
            watch.wait_equal(wanted, timeout=30)
            watch.close()
        finally:
            client.close()
        wait_for(lambda: p.controller.ready, timeout=WAIT, interval=0.02,
                 what="ready again")
    finally:
        if p is not None:
            p.close()
        if server.proc is None:
            server.start()
