"""The sync loop: one thread owns the desired state, applies list/watch results to it and
hands the differences to the etcd writer; after the initial lists and after every relist
it reconciles etcd with the whole desired state.

No deletion is ever computed from a partial picture: incremental changes only move keys
between values this process has itself seen, and the reconcile that removes stale keys
waits until every resource has been listed.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from skydns.etcdsync import Backoff

log = logging.getLogger("kube2sky")


class Controller(threading.Thread):
    def __init__(self, state, writer, kinds, stop_event):
        super().__init__(name="controller", daemon=True)
        self.state = state
        self.writer = writer
        self.kinds = set(kinds)
        self.stop_event = stop_event
        self.queue = queue.Queue()
        self.listed = set()
        self.reconcile_needed = False
        self.synced = False          # the first full sync reached etcd
        self.started = time.monotonic()
        self._backoff = Backoff(0.5, 10.0)
        self._next_reconcile = 0.0
        self.reconcile_error = ""     # why the last reconcile could not read etcd, if it failed

    @property
    def ready(self) -> bool:
        return self.synced and self.writer.healthy and not self.reconcile_error

    def run(self):
        while not self.stop_event.is_set():
            try:
                item = self.queue.get(timeout=0.2)
            except queue.Empty:
                item = None
            if item is not None:
                self._apply(item)
            if self.reconcile_needed and self.listed >= self.kinds:
                if self.queue.empty() and time.monotonic() >= self._next_reconcile:
                    self._reconcile()
            if (not self.synced and self.listed >= self.kinds and not self.reconcile_needed
                    and self.writer.pending() == 0 and self.writer.healthy):
                self.synced = True
                log.info("initial sync done in %.1fs: %d keys desired, %d written, "
                         "%d deleted", time.monotonic() - self.started,
                         len(self.state.index), self.writer.written, self.writer.deleted)

    def _apply(self, item):
        if item[0] == "list":
            # Not written as such: the reconcile that follows compares the whole desired
            # state with etcd and writes only what differs (a restart against an etcd in
            # sync then writes nothing, instead of every key again).
            _, kind, items, version = item
            self.state.replace(kind, items)
            self.listed.add(kind)
            self.reconcile_needed = True
            return
        _, kind, event_type, obj = item
        changes = self.state.handle(kind, event_type, obj)
        if changes:
            meta = obj.get("metadata") or {}
            log.info("%s %s/%s %s: %d keys change", kind, meta.get("namespace"),
                     meta.get("name"), event_type.lower(), len(changes))
        self.writer.submit(changes)

    def _reconcile(self):
        try:
            count = self.writer.reconcile(self.state.desired())
        except Exception as exc:
            delay = self._backoff.next()
            self.reconcile_error = " ".join(str(exc).split())[:300] or exc.__class__.__name__
            log.warning("cannot reconcile with etcd yet (%s); retrying in %.1fs",
                        self.reconcile_error, delay)
            self._next_reconcile = time.monotonic() + delay
            return
        self.reconcile_error = ""
        self._backoff.reset()
        self.reconcile_needed = False
        log.info("reconciled etcd with %d desired keys: %d to write or delete",
                 len(self.state.index), count)
