"""Keeps the RecordStore equal to etcd: one range read at start, then a watch from the next
revision; re-watch from the last revision after an outage, full reload when it was compacted.

The etcd3 client is blocking and runs its watch in a gRPC thread, so all of this runs in one
background thread and hands every change to the reactor with ``reactor.callFromThread``;
the store itself is only touched on the reactor thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

import etcd3
import etcd3.exceptions

from .etcdclient import close_quietly, make_client, read_prefix
from .memory import CollectorPause, return_freed_memory
from .retry import Backoff, describe_error

log = logging.getLogger("skydns.etcd")

HEALTH_INTERVAL = 3.0    # seconds between liveness checks of a quiet watch


def read_config_value(config, timeout=2.0):
    """The value at /<prefix>/config, for applying it before binding; None if unavailable."""
    try:
        client = make_client(config, timeout=timeout)
        try:
            value, _ = client.get("/" + config.path_prefix + "/config")
        finally:
            client.close()
        return value
    except Exception as exc:  # etcd not reachable yet: the flags stand for now
        log.warning("could not read /%s/config from etcd (%s); using flags", config.path_prefix,
                    exc.__class__.__name__)
        return None


class EtcdSync:
    """The loader/watcher thread; ``state`` and ``healthy`` are read by /healthz."""

    def __init__(self, reactor, store, config):
        self.reactor = reactor
        self.store = store
        self.config = config
        self.prefix = "/" + config.path_prefix + "/"
        self.state = "starting"
        self.last_error = ""
        self.revision = 0         # last revision handed to the store
        self.reloads = 0
        self.watch_restarts = 0
        self._stop = threading.Event()
        self._thread = None
        self._events = queue.Queue()
        self._client = None
        self._avoid = None        # the member that failed us last
        self._failed_over = 0     # immediate retries on another member since the last watch

    @property
    def healthy(self) -> bool:
        return self.state == "watching"

    def start(self):
        self._thread = threading.Thread(target=self._run, name="etcd-sync", daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._events.put(None)
        if self._thread:
            self._thread.join(timeout=5)
        close_quietly(self._client)

    def _set_state(self, state, error=""):
        if state != self.state:
            if error:
                log.warning("etcd %s: %s", state, error)
            else:
                log.info("etcd %s (revision %d)", state, self.revision)
        self.state = state
        self.last_error = error

    def _run(self):
        # At most 1 s between attempts: a retry is one connection and a watch resumed from
        # our revision (no reload), cheap for etcd, and the cap is how long after etcd's
        # return (a member restarted, quorum regained) the store may still lag.
        backoff = Backoff(0.1, 1.0)
        need_load = True
        while not self._stop.is_set():
            try:
                if self._client is None:
                    self._client = make_client(self.config, avoid=self._avoid)
                if need_load:
                    self._set_state("loading")
                    self._load()
                    need_load = False
                self._watch(backoff)
            except etcd3.exceptions.RevisionCompactedError as exc:
                log.warning("etcd compacted revision %d we watch from (now %d): reloading",
                            self.revision + 1, exc.compacted_revision)
                need_load = True
                continue
            except Exception as exc:
                self._set_state("down", describe_error(exc))
                self._drop_client()  # a new client logs in again (etcd tokens die with it)
                if len(self.config.machines) > 1 and self._failed_over < 1:
                    self._failed_over += 1  # another member may serve at once: no wait
                    continue
            if self._stop.wait(backoff.next()):
                break

    def _drop_client(self):
        """Close the client; the next one starts on another member than this one's."""
        client, self._client = self._client, None
        self._avoid = close_quietly(client) or self._avoid

    def _lease_expiry(self, lease_ids):
        """Remaining lifetime of each lease, as monotonic deadlines for the store."""
        now = time.monotonic()
        out = {}
        for lease in lease_ids:
            info = self._client.get_lease_info(lease)
            if info.TTL >= 0:
                out[lease] = now + info.TTL
        return out

    def _load(self):
        """One consistent read of the prefix (paged at a single revision), parsed into a
        new tree page by page while the store serves the old one, then put in place."""
        started = time.monotonic()
        loader = self.store.loader()

        def progress(count):
            log.info("loading from etcd: %d keys so far", count)
        collector = CollectorPause()  # off while the tree is built, frozen once in place
        collector.pause()
        try:
            revision = read_prefix(self._client, self.prefix, each_page=loader.add_page,
                                   progress=progress)
            self._install(loader, revision)
            collector.resume()
        finally:
            collector.resume(freeze=False)  # the load failed: nothing to keep frozen
        return_freed_memory()
        log.info("read %d keys under %s in %.2fs", loader.keys, self.prefix,
                 time.monotonic() - started)

    def _install(self, loader, revision):
        """Put a loaded tree in place, on the reactor thread, and wait until it is."""
        leases = self._lease_expiry(loader.leases)
        self.revision = revision
        self.reloads += 1
        done = threading.Event()

        def install():
            try:
                self.store.install(loader, revision, leases)
            finally:
                done.set()
        self.reactor.callFromThread(install)
        done.wait(timeout=60)

    def _watch(self, backoff):
        """Watch from revision+1 until the stream breaks or etcd stops answering."""
        events = self._events = queue.Queue()
        watch_id = self._client.add_watch_prefix_callback(
            self.prefix, events.put, start_revision=self.revision + 1)
        self.watch_restarts += 1
        self._set_state("watching")
        healthy_since = time.monotonic()
        try:
            while not self._stop.is_set():
                try:
                    item = events.get(timeout=HEALTH_INTERVAL)
                except queue.Empty:
                    # A read, not status(): etcd checks the auth token on reads, so a token
                    # lost in an etcd restart shows up here instead of a silent dead watch.
                    self._client.get_response(self.prefix + "config", count_only=True)
                    if time.monotonic() - healthy_since > 10:
                        backoff.reset()
                        self._failed_over = 0
                    continue
                if item is None:
                    return
                if isinstance(item, Exception):
                    if isinstance(item, etcd3.exceptions.RevisionCompactedError):
                        raise item
                    raise ConnectionError(f"watch ended with {describe_error(item)}")
                self._apply(item)
        finally:
            try:
                self._client.cancel_watch(watch_id)
            except Exception:
                pass

    def _apply(self, response):
        changes = []
        leases = set()
        for event in response.events:
            key = event.key.decode("utf-8", "replace")
            if isinstance(event, etcd3.events.PutEvent):
                changes.append(("put", key, event.value, event.lease))
                if event.lease:
                    leases.add(event.lease)
            else:
                changes.append(("delete", key, None, 0))
        revision = response.header.revision
        lease_expiry = self._lease_expiry(leases) if leases else None
        self.revision = max(self.revision, revision)
        if changes:
            self.reactor.callFromThread(self.store.apply_events, changes, revision,
                                        lease_expiry)


