"""Leader election through etcd, so that of several kube2sky replicas exactly one writes.

The primitives are etcd's own, as in Go clientv3's ``concurrency`` package: a replica
campaigns by creating the election key (``/kube2sky/leader/<domain>``, its value the
replica's identity) in a transaction that succeeds only while the key does not exist
(``create_revision == 0``), attached to a lease of ``--leader-elect-lease-duration``. The
leader keeps its lease alive; when it dies or loses etcd, the lease expires, etcd deletes
the key, and a standby's next campaign creates it. A clean stop revokes the lease, so the
handover then takes one poll, not the lease's TTL.

Fencing: the key's create revision, unique to one term of leadership, is the fence. Every
write transaction compares it (``create_revision(key) == fence``), so etcd itself refuses a
write from a leader whose term is over, however late it arrives. Besides, a leader that
cannot refresh its lease stops writing (``write_fence``) once a third of the TTL is left,
before etcd can expire it.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

from skydns.etcdclient import close_quietly, make_client
from skydns.retry import Backoff, FailureLog, describe_error

log = logging.getLogger("kube2sky.election")

KEY_PREFIX = "/kube2sky/leader/"


def default_identity() -> str:
    """The hostname: a pod's name in Kubernetes, so ``kubectl`` shows who leads."""
    return socket.gethostname()


class LeaderElection(threading.Thread):
    """Campaigns, keeps the lease while leading, and says who leads.

    A term is (lease, fence). While it is valid, ``write_fence()`` gives the fence; when
    the lease cannot be refreshed in time (etcd away, or without quorum), writes stop but
    the term is kept: if the next refresh finds the lease alive and the key still ours
    (etcd extends every lease when it elects a new raft leader), the term resumes, else it
    ends. ``on_elected()`` (the caller reconciles etcd: writes were dropped meanwhile) and
    ``on_lost()`` are called at each change, from this thread or the writer's.
    """

    def __init__(self, config, key, identity, ttl=15, on_elected=None, on_lost=None,
                 clock=time.monotonic):
        super().__init__(name="leader-election", daemon=True)
        self.config = config
        self.key = key
        self.identity = identity
        self.ttl = max(2, int(round(ttl)))
        self.on_elected = on_elected or (lambda: None)
        self.on_lost = on_lost or (lambda: None)
        self.clock = clock
        self.poll = min(1.0, self.ttl / 5)   # seconds between a standby's looks at the key
        self.leader = ""                     # identity of the current leader, as last seen
        self.fence = 0                       # the term's fence while writes may go out
        self.transitions = 0                 # times this replica became (or resumed as) leader
        self.failures = FailureLog(log)      # etcd failing, and why
        self._term = None                    # (lease id, fence) of our term, if any
        self._valid_until = 0.0              # monotonic: no writes past this
        self._client = None
        self._avoid = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    @property
    def is_leader(self) -> bool:
        return self.fence != 0

    def write_fence(self) -> int:
        """The fence for a write now: this term's, while this replica leads and its lease
        surely has not expired; else 0 (do not write)."""
        with self._lock:
            return self.fence if self.fence and self.clock() < self._valid_until else 0

    def compare(self, client, fence):
        """The fence, as the comparison every write transaction carries."""
        return client.transactions.create(self.key) == fence

    # -- the thread ---------------------------------------------------------------------

    def run(self):
        backoff = Backoff(0.1, self.poll)
        while not self._stopping.is_set():
            try:
                client = self._connect()
                if self._term is not None:
                    self._keep_alive(client)
                else:
                    self._campaign(client)
                backoff.reset()
                self.failures.recovered()
                wait = self.ttl / 3 if self._term is not None else self.poll
            except Exception as exc:
                self.failures.failed(describe_error(exc)[:300],
                                     "leader election: etcd failed (%s)")
                self._drop_client()
                wait = backoff.next()
            if self.fence and self.clock() >= self._valid_until:
                self._suspend()
            if self.fence:
                wait = min(wait, max(0.05, self._valid_until - self.clock()))
            if self._stopping.wait(wait):
                break

    def stop(self):
        """Stop campaigning; a leader revokes its lease, so a standby takes over at once
        (call it after the writes have stopped)."""
        self._stopping.set()
        self.join(timeout=5)
        term, self._term, self.fence = self._term, None, 0
        if term is not None:
            try:
                self._connect().revoke_lease(term[0])
                log.info("gave up leadership of %s (fence %d)", self.key, term[1])
            except Exception as exc:
                log.warning("could not revoke the leader lease (%s): the next leader "
                            "takes over when it expires", exc.__class__.__name__)
        self._drop_client()

    def _connect(self):
        if self._client is None:
            self._client = make_client(self.config, timeout=max(1.0, self.ttl / 4),
                                       avoid=self._avoid)
        return self._client

    def _drop_client(self):
        client, self._client = self._client, None
        self._avoid = close_quietly(client) or self._avoid

    def _campaign(self, client):
        """One attempt: while the key exists, note who holds it; when it is gone, create
        it on a new lease, unless another replica was quicker."""
        txn = client.transactions
        value, meta = client.get(self.key)
        if meta is None:
            asked = self.clock()
            lease = client.lease(self.ttl)
            ok, responses = client.transaction(
                compare=[txn.create(self.key) == 0],
                success=[txn.put(self.key, self.identity, lease=lease.id), txn.get(self.key)],
                failure=[txn.get(self.key)])
            kvs = responses[-1]
            if ok and kvs:
                fence = kvs[0][1].create_revision
                self._begin((lease.id, fence), asked + max(self.ttl, lease.ttl) * 2 / 3,
                            f"elected leader of {self.key} as {self.identity} (fence "
                            f"{fence}, lease {lease.ttl}s)")
                return
            client.revoke_lease(lease.id)
            value = kvs[0][0] if kvs else None
        holder = value.decode("utf-8", "replace") if value is not None else ""
        if holder != self.leader:
            log.info("standing by: %s leads (%s)", holder or "nobody", self.key)
        self.leader = holder

    def _keep_alive(self, client):
        """Refresh the lease; end the term if etcd says it is gone or the key is not ours;
        resume a suspended term that turns out to be alive."""
        lease, fence = self._term
        sent = self.clock()
        replies = list(client.refresh_lease(lease))
        remaining = replies[-1].TTL if replies else 0
        if remaining <= 0:
            self._end(fence, "its lease expired")
            return
        value, meta = client.get(self.key)
        if meta is None or meta.create_revision != fence:
            self._end(fence, "the election key was deleted or replaced")
            return
        valid_until = sent + remaining * 2 / 3
        if self.fence:
            with self._lock:
                if self.fence == fence:
                    self._valid_until = valid_until
        else:
            self._begin((lease, fence), valid_until,
                        f"leading {self.key} again (fence {fence}): its lease outlived "
                        f"the etcd outage")

    def _begin(self, term, valid_until, message):
        with self._lock:
            self._term = term
            self.fence = term[1]
            self._valid_until = valid_until
            self.leader = self.identity
            self.transitions += 1
        log.info("%s", message)
        self.on_elected()

    def _suspend(self):
        """The lease was not refreshed in time: no writes until it is (or the term ends)."""
        with self._lock:
            if not self.fence:
                return
            self.fence = 0
        log.warning("leadership of %s suspended: its lease could not be refreshed in time; "
                    "writes stop", self.key)
        self.on_lost()

    def _end(self, fence, reason):
        """End the term ``fence`` (once: the writer and this thread may both notice)."""
        with self._lock:
            if self._term is None or self._term[1] != fence:
                return
            writing = self.fence != 0
            self._term, self.fence, self.leader = None, 0, ""
        log.warning("lost leadership of %s: %s%s", self.key, reason,
                    "; writes stop" if writing else "")
        if writing:
            self.on_lost()

    def lost(self, fence, reason):
        """Called by the writer when etcd refused a write fenced with ``fence``."""
        self._end(fence, reason)
