"""Applies record changes to etcd: coalesced, in transactions of at most 128 operations,
retried with bounded jittered backoff while etcd is away (nothing pending is lost).

Ownership: next to every record it writes, kube2sky writes a marker key
``/kube2sky/keys<record key>`` holding the same value, in the same transaction. Keys without
a marker were written by someone else and are never changed or deleted; a reconcile deletes
exactly the marked keys that are no longer desired.
"""

from __future__ import annotations

import logging
import threading
import time

from skydns.etcdsync import Backoff, close_quietly, make_client

log = logging.getLogger("kube2sky.etcd")

MARKER_PREFIX = "/kube2sky/keys"
MAX_TXN_OPS = 128          # etcd's default --max-txn-ops
KEYS_PER_TXN = MAX_TXN_OPS // 2  # each key is written with its marker


class EtcdWriter:
    def __init__(self, config, scopes, timeout=10.0):
        """``scopes`` are the key prefixes kube2sky writes under (to read back at reconcile)."""
        self.config = config
        self.scopes = scopes
        self.timeout = timeout
        self._client = None
        self._pending = {}          # key -> value, or None to delete
        self._cond = threading.Condition()
        self._stop = False
        self._busy = False
        self.healthy = True
        self.last_error = ""
        self.written = 0
        self.deleted = 0
        self._thread = threading.Thread(target=self._run, name="etcd-writer", daemon=True)

    def start(self):
        self._thread.start()

    def stop(self):
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    @property
    def client(self):
        if self._client is None:
            self._client = make_client(self.config, timeout=self.timeout)
        return self._client

    def _drop_client(self):
        client, self._client = self._client, None
        close_quietly(client)

    # -- called by the controller thread -------------------------------------------------

    def submit(self, changes: dict):
        if not changes:
            return
        with self._cond:
            self._pending.update(changes)
            self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._pending) + (1 if self._busy else 0)

    def read_state(self):
        """(markers, actual values) under our scopes: {key: value}, all read at one etcd
        revision, so a write landing between the reads cannot make a record look unmarked
        (and be written again). Raises if etcd is away."""
        client = self.client
        try:
            response = client.get_prefix_response(MARKER_PREFIX + "/")
            revision = response.header.revision
            markers = {kv.key.decode()[len(MARKER_PREFIX):]: kv.value.decode()
                       for kv in response.kvs}
            actual = {}
            for scope in self.scopes:
                for kv in client.get_prefix_response(scope, revision=revision).kvs:
                    actual[kv.key.decode()] = kv.value.decode("utf-8", "replace")
        except Exception:
            self._drop_client()
            raise
        return markers, actual

    def reconcile(self, desired: dict) -> int:
        """Make etcd equal to ``desired`` for our keys; returns how many keys change."""
        markers, actual = self.read_state()
        changes = {}
        for key, value in desired.items():
            if actual.get(key) != value or markers.get(key) != value:
                changes[key] = value
        for key in markers:
            if key not in desired:
                changes[key] = None
        self.submit(changes)
        return len(changes)

    # -- the writer thread ---------------------------------------------------------------

    def _take(self):
        with self._cond:
            while not self._pending and not self._stop:
                self._cond.wait(timeout=1.0)
            if self._stop:
                return None
            batch = dict(list(self._pending.items())[:KEYS_PER_TXN])
            self._busy = True
            return batch

    def _done(self, batch):
        with self._cond:
            for key, value in batch.items():
                if key in self._pending and self._pending[key] == value:
                    del self._pending[key]
            self._busy = False

    def _run(self):
        backoff = Backoff(0.2, 10.0)
        started, done_keys, last_report = None, 0, 0.0
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                self._apply(batch)
            except Exception as exc:
                with self._cond:
                    self._busy = False
                self._drop_client()
                reason = " ".join(f"{exc.__class__.__name__}: {exc}".split())
                if self.healthy or reason != self.last_error:
                    log.warning("etcd write failed (%d keys pending, retrying): %s",
                                self.pending(), reason)
                self.healthy, self.last_error = False, reason
                with self._cond:
                    self._cond.wait(timeout=backoff.next())
                continue
            self._done(batch)
            backoff.reset()
            if not self.healthy:
                log.info("etcd writes succeed again")
            self.healthy, self.last_error = True, ""
            now = time.monotonic()
            started = started or now
            done_keys += len(batch)
            remaining = self.pending()
            if remaining and now - last_report > 2.0:
                log.info("writing to etcd: %d keys done, %d to go (%.1fs)", done_keys,
                         remaining, now - started)
                last_report = now
            if not remaining:
                if done_keys > KEYS_PER_TXN:
                    log.info("wrote %d keys to etcd in %.1fs", done_keys, now - started)
                started, done_keys = None, 0

    def _apply(self, batch):
        client = self.client
        ops = []
        for key, value in batch.items():
            marker = MARKER_PREFIX + key
            if value is None:
                ops += [client.transactions.delete(key), client.transactions.delete(marker)]
            else:
                ops += [client.transactions.put(key, value), client.transactions.put(marker, value)]
        ok, _ = client.transaction(compare=[], success=ops, failure=[])
        if not ok:
            raise RuntimeError("transaction not applied")
        for key, value in batch.items():
            if value is None:
                self.deleted += 1
            else:
                self.written += 1
