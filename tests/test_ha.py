"""High availability on a real 3-member etcd cluster (loopback ports): several skydns and
kube2sky replicas, members and the leading kube2sky killed with SIGKILL under load.

The stack: kubeemu (in this process), an EtcdCluster of 3, two kube2sky with
``--leader-elect`` and every member in ``--etcd-server``, two skydns with every member in
``-machines``. A probe thread asks both skydns for names that exist, all the time; every
failed answer is kept with the phase it happened in. The desired state etcd must end in is
what a kube2sky without election writes from the same API into an etcd of its own (the
reference), not a list written out here.
"""

from __future__ import annotations

import json
import signal
import threading
import time

import dns.message
import dns.query
import dns.rcode
import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from procs import Etcd, EtcdCluster, Kube2sky, Skydns, wait_for  # noqa: E402
from kubeemu import Emulator  # noqa: E402

from kube2sky.election import LeaderElection  # noqa: E402
from kube2sky.etcdwriter import EtcdWriter  # noqa: E402
from types import SimpleNamespace  # noqa: E402

DOMAIN = "cluster.local"
TTL = 3          # --leader-elect-lease-duration of the tests (seconds)
NS = "ha"


def fqdn(name):
    return f"{name}.{NS}.svc.{DOMAIN}."


def answered(sky, name) -> bool:
    query = dns.message.make_query(fqdn(name), "A")
    reply = dns.query.udp(query, "127.0.0.1", port=sky.port, timeout=1.0)
    return reply.rcode() == dns.rcode.NOERROR and bool(reply.answer)


def dump(etcd_client, prefix="/skydns/"):
    return {meta.key.decode(): value.decode() for value, meta in etcd_client.get_prefix(prefix)}


class Probe(threading.Thread):
    """Asks every skydns for the existing names in turn, ~100 times a second each, until
    stopped (at most ``limit`` seconds); failures are (phase, server port, what)."""

    def __init__(self, servers, names, limit=120.0):
        super().__init__(name="probe", daemon=True)
        self.servers, self.names, self.limit = servers, names, limit
        self.phase = "start"
        self.asked = 0
        self.failures = []
        self.done = threading.Event()

    def run(self):
        deadline = time.monotonic() + self.limit
        i = 0
        while not self.done.is_set() and time.monotonic() < deadline:
            name = self.names[i % len(self.names)]
            for sky in self.servers:
                self.asked += 1
                try:
                    if not answered(sky, name):
                        self.failures.append((self.phase, sky.port, f"{name}: no answer"))
                except Exception as exc:
                    self.failures.append((self.phase, sky.port, f"{name}: {exc!r}"))
            i += 1
            time.sleep(0.01)

    def stop(self):
        self.done.set()
        self.join(timeout=10)


class HAStack:
    def __init__(self):
        self.cluster = EtcdCluster(3).start()
        self.emu = Emulator(port=0).start()
        self.api = client.ApiClient(client.Configuration(host=self.emu.url))
        self.core = client.CoreV1Api(self.api)
        self.k2s = []
        self.sky = []
        try:
            self.core.create_namespace({"metadata": {"name": NS}})
        except client.ApiException:
            pass
        for i in range(2):
            self.k2s.append(self.kube2sky(f"k2s-{i}"))
        for k in self.k2s:
            k.start(wait_ready=False)
        for k in self.k2s:
            wait_for(lambda: k.readiness()[0] == 200, timeout=30, what=f"{k} ready")
        for _ in range(2):
            self.sky.append(Skydns(self.cluster.machines, f"-domain={DOMAIN}.").start())

    def kube2sky(self, identity):
        return Kube2sky(self.emu.url, self.cluster.machines, "--leader-elect",
                        f"--leader-elect-lease-duration={TTL}s",
                        f"--leader-elect-identity={identity}")

    def service(self, name, ip):
        self.core.create_namespaced_service(NS, {
            "metadata": {"name": name},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]}})

    def leader(self):
        """The kube2sky process that says it leads, or None."""
        leading = [k for k in self.k2s if k.alive() and "leading as" in k.readiness()[1]]
        return leading[0] if len(leading) == 1 else None

    def close(self):
        for proc in self.sky + self.k2s:
            proc.close()
        self.emu.stop()
        self.cluster.close()


@pytest.fixture(scope="module")
def ha():
    stack = HAStack()
    yield stack
    stack.close()


def reference_state(emu_url):
    """What etcd must hold: a kube2sky without election, from the same API, into an etcd
    of its own."""
    etcd = Etcd().start()
    k2s = Kube2sky(emu_url, etcd.url)
    try:
        k2s.start()
        c = etcd.client()
        try:
            return dump(c)
        finally:
            c.close()
    finally:
        k2s.close()
        etcd.close()


def wait_equal(etcd_client, expected, timeout=20.0):
    state = {}

    def check():
        state["actual"] = dump(etcd_client)
        return state["actual"] == expected
    try:
        wait_for(check, timeout=timeout, interval=0.1, what="etcd to equal the reference")
    except TimeoutError:
        actual = state.get("actual", {})
        raise AssertionError(
            f"etcd differs: missing/wrong "
            f"{ {k: v for k, v in expected.items() if actual.get(k) != v} }, stale "
            f"{ {k: v for k, v in actual.items() if k not in expected} }") from None


def served_everywhere(ha, name, timeout):
    for sky in ha.sky:
        wait_for(lambda: answered(sky, name), timeout=timeout, interval=0.01,
                 what=f"{name} on skydns :{sky.port}")


def leader_metric(k2s):
    """The value of each kube2sky_leader sample of a kube2sky's /metrics, parsed."""
    return [sample.value
            for family in text_string_to_metric_families(k2s._get("/metrics")[1])
            for sample in family.samples if sample.name == "kube2sky_leader"]


def test_one_kube2sky_leads_and_both_report_it(ha):
    leader = wait_for(ha.leader, timeout=10, what="one leading kube2sky")
    standby = [k for k in ha.k2s if k is not leader][0]
    status, body = standby.readiness()
    assert status == 200 and "standing by as" in body and "leads" in body, body
    assert "kube2sky_leader{" in leader._get("/metrics")[1]
    assert leader_metric(leader) == [1]
    assert leader_metric(standby) == [0]


def test_answers_survive_etcd_member_deaths_and_new_names_follow_the_new_leader(ha):
    names = [f"old-{i}" for i in range(5)]
    for i, name in enumerate(names):
        ha.service(name, f"10.96.10.{i + 1}")
    for name in names:
        served_everywhere(ha, name, timeout=15)
    loads = [sky.output().count("loaded ") for sky in ha.sky]
    probe = Probe(ha.sky, names)
    probe.start()
    cluster = ha.cluster
    figures = {}
    try:
        # 1. the etcd leader dies; a service created at once is served soon after the new
        # leader's election
        probe.phase = "leader killed"
        dead = cluster.leader()
        cluster.kill(dead)
        killed = time.monotonic()
        ha.service("after-leader", "10.96.11.1")
        wait_for(cluster.leader, timeout=15, interval=0.02, what="a new etcd leader")
        elected = time.monotonic()
        served_everywhere(ha, "after-leader", timeout=10)
        figures["leader"] = (elected - killed, time.monotonic() - elected)
        cluster.start_member(dead)

        # 2. a follower dies: nothing to elect
        probe.phase = "follower killed"
        follower = cluster.followers()[0]
        cluster.kill(follower)
        killed = time.monotonic()
        ha.service("after-follower", "10.96.11.2")
        served_everywhere(ha, "after-follower", timeout=10)
        figures["follower"] = (0.0, time.monotonic() - killed)

        # 3. a second member dies: no quorum; answers go on from memory; then both return
        probe.phase = "quorum lost"
        second = cluster.followers()[0] if cluster.followers() else cluster.leader()
        cluster.kill(second)
        ha.service("during-outage", "10.96.11.3")
        time.sleep(2 * TTL)  # longer than the leading kube2sky's lease can be kept
        # no quorum: unhealthy, but still ready (serving from memory), so a DNS Service
        # probed on /readyz keeps its endpoints
        for sky in ha.sky:
            assert sky.healthz()[0] == 503
            status, body = sky.status("/readyz")
            assert status == 200 and "from memory" in body, body
        probe.phase = "members restarted"
        cluster.start_member(follower, wait=False)
        cluster.start_member(second, wait=False)
        restarted = time.monotonic()
        wait_for(cluster.leader, timeout=15, interval=0.02, what="quorum again")
        elected = time.monotonic()
        served_everywhere(ha, "during-outage", timeout=15)
        figures["quorum"] = (elected - restarted, time.monotonic() - elected)
    finally:
        probe.stop()
    print("HA figures (election s, served after election s):", figures,
          f"probe: {probe.asked} asked, {len(probe.failures)} failed")
    assert probe.failures == [], probe.failures[:10]
    assert probe.asked > 100
    for phase, (_, served) in figures.items():
        assert served <= 2.0, f"{phase}: served {served:.2f}s after the election"
    # the watches resumed from their revision: no skydns loaded its records again
    assert [sky.output().count("loaded ") for sky in ha.sky] == loads
    for sky in ha.sky:
        wait_for(lambda: sky.healthz()[0] == 200, timeout=10, what="skydns healthy again")


def test_kill_the_leading_kube2sky_during_churn(ha):
    leader = wait_for(ha.leader, timeout=15, what="one leading kube2sky")
    standby = [k for k in ha.k2s if k is not leader][0]
    stop = threading.Event()
    created = []

    def churn():
        # create and delete services all the time, bounded in count and time
        deadline = time.monotonic() + 30
        i = 0
        while not stop.is_set() and time.monotonic() < deadline and i < 2000:
            name = f"churn-{i}"
            try:
                ha.service(name, f"10.96.{20 + i // 250}.{i % 250 + 1}")
                created.append(name)
                if i % 3 == 2:
                    ha.core.delete_namespaced_service(created.pop(0), NS)
            except client.ApiException:
                pass
            i += 1
            time.sleep(0.01)
    churner = threading.Thread(target=churn, daemon=True)
    churner.start()
    try:
        time.sleep(1.0)
        leader.proc.send_signal(signal.SIGKILL)
        leader.proc.wait(timeout=10)
        killed = time.monotonic()
        wait_for(lambda: "leading as" in standby.readiness()[1], timeout=TTL + 5,
                 interval=0.05, what="the standby to take over")
        took_over = time.monotonic() - killed
        time.sleep(1.0)
    finally:
        stop.set()
        churner.join(timeout=10)
    print(f"kube2sky takeover {took_over:.2f}s after SIGKILL (lease {TTL}s)")
    assert took_over <= TTL + 1.5
    c = ha.cluster.client()
    try:
        wait_equal(c, reference_state(ha.emu.url))
    finally:
        c.close()
    # the killed replica comes back as a standby
    leader.start(wait_ready=True)
    assert "standing by as" in leader.readiness()[1]


def test_clean_stop_hands_over_at_once(ha):
    leader = wait_for(ha.leader, timeout=15, what="one leading kube2sky")
    standby = [k for k in ha.k2s if k is not leader][0]
    leader.stop(timeout=10)
    stopped = time.monotonic()
    wait_for(lambda: "leading as" in standby.readiness()[1], timeout=TTL + 5, interval=0.05,
             what="the standby to take over")
    handover = time.monotonic() - stopped
    assert handover < TTL, f"handover took {handover:.2f}s: the lease was not revoked"
    ha.service("after-handover", "10.96.12.1")
    served_everywhere(ha, "after-handover", timeout=5)
    leader.start(wait_ready=True)


# -- fencing, in this process, on the real cluster ----------------------------------------

def test_a_write_of_an_ended_term_is_refused_by_etcd(ha):
    """Replica A leads; its term ends behind its back (its lease revoked, as when it
    expires while A is paused); B is elected. A's writer, which still believes in its term,
    writes: etcd must refuse it (the fence), and A must step down."""
    config = SimpleNamespace(machines=ha.cluster.urls, ca_cert="", tls_key="", tls_pem="",
                             username="", password="")
    key = "/kube2sky/leader/fencing-test"
    events = []
    a = LeaderElection(config, key, "a", ttl=TTL, on_lost=lambda: events.append("a lost"))
    b = LeaderElection(config, key, "b", ttl=TTL)
    writer = EtcdWriter(config, ["/fencing-test/"], timeout=2.0, writers=1, election=a)
    c = ha.cluster.client()
    try:
        a.start()
        wait_for(lambda: a.is_leader, timeout=10, what="a to lead")
        b.start()
        writer.start()
        writer.submit({"/fencing-test/before": "a"})
        wait_for(lambda: c.get("/fencing-test/before")[0] == b"a", timeout=10)
        # A's term ends in etcd, while A does not know yet (no refresh before TTL/3)
        c.revoke_lease(a._term[0])
        wait_for(lambda: b.is_leader, timeout=10, what="b to be elected")
        assert a.write_fence(), "a should still believe in its term for this test"
        writer.submit({"/fencing-test/after": "a"})
        wait_for(lambda: writer.fenced >= 1, timeout=10, what="the fenced refusal")
        assert c.get("/fencing-test/after")[0] is None
        assert not a.is_leader and events == ["a lost"]
        assert b.is_leader
    finally:
        writer.stop()
        for e in (a, b):
            e.stop()
        c.delete_prefix("/fencing-test/")
        c.close()


def test_writes_without_election_carry_no_fence(ha):
    """Without --leader-elect nothing compares: the writer of a single kube2sky is as
    before (guards the fence against leaking into the default mode)."""
    config = SimpleNamespace(machines=ha.cluster.urls, ca_cert="", tls_key="", tls_pem="",
                             username="", password="")
    writer = EtcdWriter(config, ["/nofence-test/"], timeout=2.0, writers=1)
    c = ha.cluster.client()
    try:
        writer.start()
        writer.submit({"/nofence-test/k": json.dumps({"host": "10.0.0.1"})})
        wait_for(lambda: c.get("/nofence-test/k")[0] is not None, timeout=10)
        assert writer.fenced == 0
    finally:
        writer.stop()
        c.delete_prefix("/nofence-test/")
        c.close()
