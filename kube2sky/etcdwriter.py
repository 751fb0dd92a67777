"""Applies record changes to etcd: coalesced, in transactions of at most 128 operations,
several in flight at once (only full ones: less than a full transaction waits for the one
out, so that changes arriving one by one share transactions), retried with bounded jittered
backoff while etcd is away (nothing pending is lost).

Ownership: every value kube2sky writes carries ``"owner":"kube2sky"`` as its last JSON field
(``skydns.record.owned_by``; SkyDNS and CoreDNS ignore fields they do not know). Keys whose
value does not were written by someone else: a reconcile never deletes them. Earlier
versions wrote a marker key ``/kube2sky/keys<record key>`` next to every record instead,
which doubled every write and every read; a reconcile still treats a marked key as ours,
rewrites it with the owner field if it is desired (deletes it if not) and deletes the
marker, so an etcd written by an older kube2sky converts itself on the first start.

Pending changes are kept in first-submitted order and taken from the front in O(1) per key
(an OrderedDict: taking the first keys of a plain dict copies or rescans it, which made a
sync of 340,000 keys quadratic). WRITERS threads each send one transaction at a time: etcd
commits concurrent requests in one raft batch, so a few in flight write faster than one.
A key is never in two transactions at once, so writes to one key land in the order they
were submitted.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

from etcd3 import etcdrpc

from skydns.etcdclient import close_quietly, make_client, read_prefix
from skydns.retry import Backoff, FailureLog, describe_error
from skydns.record import owner_suffix

from .records import OWNER, fingerprint, fingerprint_of_bytes

log = logging.getLogger("kube2sky.etcd")

MARKER_PREFIX = "/kube2sky/keys"  # ownership markers of older versions (converted away)
MAX_TXN_OPS = 128          # etcd's default --max-txn-ops
KEYS_PER_TXN = MAX_TXN_OPS
WRITERS = 4                # transactions in flight at once
# In a snapshot's fingerprints (``read_state``): this value was sent since, and it is the
# desired one (kube2sky.controller keeps the snapshot so); a reconcile leaves it alone.
SENT = "sent"


class EtcdWriter:
    def __init__(self, config, scopes, timeout=10.0, writers=WRITERS, election=None):
        """``scopes`` are the key prefixes kube2sky writes under (to read back at reconcile).
        ``election`` (a kube2sky.election.LeaderElection, with --leader-elect): changes are
        taken and sent only while it leads, each transaction fenced with its term."""
        self.config = config
        self.scopes = scopes
        self.timeout = timeout
        self.election = election
        self.discarded = 0        # changes dropped while not leading (the leader writes them)
        self.fenced = 0           # transactions etcd refused because another replica led
        self._client = None
        self._avoid = None
        self._client_lock = threading.Lock()
        self._pending = collections.OrderedDict()  # key -> value, or None to delete
        self._in_flight = {}                       # key -> value being written now
        # Both on one lock: ``_cond`` wakes one writer per batch to take (waking all four
        # for every watch event's change was a tenth of kube2sky's CPU under churn), and
        # ``_drained`` wakes whoever waits for the queue to shrink (``wait_below``).
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._drained = threading.Condition(self._lock)
        self._stop = False
        self.failures = FailureLog(log)  # writes failing, and why
        self.written = 0
        self.deleted = 0
        self._done_keys, self._started, self._last_report = 0, None, 0.0
        self.threads = [threading.Thread(target=self._run, name=f"etcd-writer-{i}",
                                          daemon=True) for i in range(writers)]

    def start(self):
        for thread in self.threads:
            thread.start()

    def stop(self):
        with self._lock:
            self._stop = True
            self._cond.notify_all()
            self._drained.notify_all()
        for thread in self.threads:
            thread.join(timeout=5)

    @property
    def client(self):
        """One client (one gRPC channel) shared by the writer threads."""
        with self._client_lock:
            if self._client is None:
                self._client = make_client(self.config, timeout=self.timeout,
                                           avoid=self._avoid)
            return self._client

    def _drop_client(self, client=None):
        """Close the client after a failure (only if it is still ``client``, when given:
        another thread may have replaced it already)."""
        with self._client_lock:
            if self._client is None or (client is not None and self._client is not client):
                return
            client, self._client = self._client, None
        self._avoid = close_quietly(client) or self._avoid

    # -- called by the controller thread -------------------------------------------------

    def submit(self, changes: dict):
        if not changes:
            return
        if self.election is not None and not self.election.write_fence():
            self.discarded += len(changes)  # a standby: the leader writes them
            return
        with self._lock:
            self._pending.update(changes)
            self._cond.notify()  # the writer that takes them wakes the next (``_take``)

    def discard(self) -> int:
        """Drop every pending change (leadership is lost: the next leader reconciles);
        returns how many. Transactions in flight carry the old fence: etcd refuses them if
        another replica leads by now."""
        with self._cond:
            count = len(self._pending)
            self._pending = collections.OrderedDict()
            self.discarded += count
            self._drained.notify_all()
        return count

    def pending(self) -> int:
        """Keys not written yet, those in transactions now included."""
        with self._cond:
            return len(self._pending) + len(self._in_flight)

    def wait_below(self, limit: int, timeout: float) -> bool:
        """Wait until at most ``limit`` keys are pending; True when they are. Returns at
        once (False) while etcd writes fail: then nothing drains, and the caller must go
        on (what is pending stays pending, nothing is lost)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._pending) + len(self._in_flight) > limit:
                left = deadline - time.monotonic()
                if self._stop or not self.failures.healthy or left <= 0:
                    return False
                self._drained.wait(timeout=min(left, 0.5))
            return True

    def read_state(self):
        """(our keys, ``fingerprint`` of the actual value of every key under our scopes,
        keys with an old-style marker), all read at one etcd revision and paged, however
        many keys there are. Ours: a value with our owner field, or a marker. Raises if
        etcd is away."""
        client = self.client
        ours, actual, marked = set(), {}, set()
        skip = len(MARKER_PREFIX)

        def marker(kv):
            marked.add(kv.key.decode()[skip:])

        # ``owned_by`` on the raw bytes, its suffix built once: a restart reads every key
        suffix = owner_suffix(OWNER).encode()

        def records(kvs):
            for kv in kvs:
                key, value = kv.key.decode(), kv.value
                actual[key] = fingerprint_of_bytes(value)
                if value.endswith(suffix):
                    ours.add(key)
        try:
            revision = read_prefix(client, MARKER_PREFIX + "/", marker)
            for scope in self.scopes:
                read_prefix(client, scope, revision=revision, each_page=records)
        except Exception:
            self._drop_client(client)
            raise
        return ours | marked, actual, marked

    def reconcile(self, desired, state=None) -> int:
        """Make etcd equal to ``desired`` (a mapping of key -> value) for our keys; returns
        how many keys change. ``state``: what ``read_state`` gave, when the caller has it
        (else etcd is read). A ``desired`` with ``differing()`` (kube2sky.state's
        Desired) is compared by fingerprints, and only the values that differ are read."""
        ours, actual, marked = self.read_state() if state is None else state
        if hasattr(desired, "differing"):
            changes = {key: desired[key] for key in desired.differing(actual, SENT)}
        else:
            get = actual.get
            changes = {key: value for key, value in desired.items()
                       if get(key) not in (fingerprint(value), SENT)}
        changes.update(dict.fromkeys(ours - desired.keys()))  # a set operation, in C
        if marked:
            log.info("converting %d keys from ownership markers to the owner field",
                     len(marked))
            changes.update((MARKER_PREFIX + key, None) for key in marked)
        self.submit(changes)
        return len(changes)

    # -- the writer threads ---------------------------------------------------------------

    def _take(self):
        """Up to KEYS_PER_TXN pending changes, oldest first, none of a key in flight."""
        with self._cond:
            while True:
                if self._stop:
                    return None
                pending, in_flight = self._pending, self._in_flight
                if in_flight and len(pending) < KEYS_PER_TXN:
                    # Less than a full transaction waits while one is out: it goes when
                    # that one is back, with what gathers meanwhile. Under churn, changes
                    # sent one a transaction each cost a round trip in kube2sky and a raft
                    # entry in etcd apiece; a sync's full batches still go four at once.
                    self._cond.wait(timeout=1.0)
                    continue
                batch, busy = {}, []
                while pending and len(batch) < KEYS_PER_TXN:
                    key, value = pending.popitem(last=False)
                    if key in in_flight:
                        busy.append((key, value))  # after its transaction: back in line
                    else:
                        batch[key] = value
                for key, value in busy:
                    pending[key] = value
                if not pending:
                    # Drained: a dict never shrinks, and the table that held a sync's
                    # 440,000 changes would stay (23 MB) for good. A new one costs ~1 us.
                    self._pending = collections.OrderedDict()
                if batch:
                    in_flight.update(batch)
                    if len(pending) >= KEYS_PER_TXN:
                        self._cond.notify()  # a full one more: the next writer takes it
                    return batch
                self._cond.wait(timeout=1.0)

    def _finished(self, batch, ok: bool):
        """Release a batch; on failure its changes go back to the front of the line,
        unless a newer value for the key was submitted meanwhile."""
        with self._cond:
            for key in batch:
                del self._in_flight[key]
            if not ok:
                for key, value in reversed(batch.items()):
                    if key not in self._pending:
                        self._pending[key] = value
                        self._pending.move_to_end(key, last=False)
            if self._pending:
                self._cond.notify()  # keys that waited for this batch, or a retry
            self._drained.notify_all()

    def _run(self):
        backoff = Backoff(0.1, 1.0)  # retries are one small transaction per writer
        while True:
            batch = self._take()
            if batch is None:
                return
            client = None
            try:
                client = self.client
                written = self._apply(client, batch)
            except Exception as exc:
                self._finished(batch, ok=False)
                self._drop_client(client)
                self.failures.failed(describe_error(exc),
                                     "etcd write failed (%d keys pending, retrying): %s",
                                     self.pending())
                with self._cond:
                    if not self._stop:
                        self._cond.wait(timeout=backoff.next())
                continue
            self._finished(batch, ok=True)
            backoff.reset()
            self.failures.recovered("etcd writes succeed again")
            if written:
                self._progress(len(batch))

    def _drop_batch(self, batch):
        with self._cond:
            self.discarded += len(batch)
        self.discard()

    def _progress(self, count):
        """One line every 2 s while a long write goes on, one at its end."""
        with self._cond:
            now = time.monotonic()
            self._started = self._started or now
            self._done_keys += count
            remaining = len(self._pending) + len(self._in_flight)
            done, started = self._done_keys, self._started
            report = remaining and now - self._last_report > 2.0
            if report:
                self._last_report = now
            if not remaining:
                self._done_keys, self._started = 0, None
        if report:
            log.info("writing to etcd: %d keys done, %d to go (%.1fs)", done, remaining,
                     now - started)
        elif not remaining and done > KEYS_PER_TXN:
            log.info("wrote %d keys to etcd in %.1fs", done, now - started)

    def _apply(self, client, batch):
        compare, fence = [], 0
        if self.election is not None:
            fence = self.election.write_fence()
            if not fence:
                self._drop_batch(batch)  # leadership ended since the batch was taken
                return False
            compare = [self.election.compare(client, fence)]
        ok = client.kvstub.Txn(txn_request(batch, compare), client.timeout,
                               credentials=client.call_credentials,
                               metadata=client.metadata).succeeded
        if not ok:
            if fence:
                with self._cond:
                    self.fenced += 1
                self.election.lost(fence, "etcd refused a write fenced with this term's "
                                          "revision: another replica leads")
                self._drop_batch(batch)
                return False
            raise RuntimeError("transaction not applied")
        with self._cond:
            for value in batch.values():
                if value is None:
                    self.deleted += 1
                else:
                    self.written += 1
        return True


def txn_request(batch: dict, compare=()) -> etcdrpc.TxnRequest:
    """One transaction of ``batch`` (key -> value, None to delete), built straight into the
    protobuf: the etcd3 client's ``transaction()`` builds an object per operation, then a
    message from each, in Python, and that was a fifth of kube2sky's CPU in a sync of
    490,000 keys (4.4 us a key; this is about 1). ``compare``: etcd3 comparisons."""
    request = etcdrpc.TxnRequest(compare=[c.build_message() for c in compare])
    add = request.success.add
    for key, value in batch.items():
        if value is None:
            add().request_delete_range.key = key.encode()
        else:
            put = add().request_put
            put.key, put.value = key.encode(), value.encode()
    return request
