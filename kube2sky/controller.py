"""The sync loop: one thread owns the desired state, applies list/watch results to it and
hands the differences to the etcd writer; after the initial lists and after every relist
it reconciles etcd with the whole desired state.

No deletion is ever computed from a partial picture: incremental changes only move keys
between values this process has itself seen, and the reconcile that removes stale keys
waits until every resource has been listed.

At start, etcd is read once in the background while the API is listed (the snapshot):
each initial list's new records are then written as soon as the list is applied, those
etcd already holds skipped, and the first reconcile compares with the snapshot (kept up to
date with everything sent since) instead of reading etcd a second time. A restart against
an etcd in sync so costs the longer of the lists and the read, not their sum, and writes
nothing; on an empty etcd the writes overlap the lists.

List pages wait for room in the queue (``Inbox``): the records of a page take longer to
compute than its decode, and the reflectors would otherwise hold the whole cluster there.

The cyclic garbage collector is off until every resource has been listed
(``skydns.memory.CollectorPause``: a restart's lists spent 4 s in 1,300-1,600 collections),
then the state is frozen out of later collections and the collector runs again, for the
watches. It also runs again after COLLECTOR_PAUSE seconds without every list (an API
server away: each failed list leaves a traceback).
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time

from skydns.memory import CollectorPause, return_freed_memory
from skydns.retry import Backoff, describe_error

from .etcdwriter import SENT
from .records import fingerprint, meta

log = logging.getLogger("kube2sky")

PAGES_QUEUED = 4       # list pages waiting for the controller before a reflector waits too
PENDING_LIMIT = 20000  # keys waiting for etcd before the next list page is applied
PENDING_WAIT = 30.0    # seconds a page waits at most for them (then it goes on anyway)
COLLECTOR_PAUSE = 120.0  # seconds the cyclic collector may stay off for the first lists


class Controller(threading.Thread):
    def __init__(self, state, writer, kinds, stop_event, leading=None):
        """``leading`` (with leader election): whether this replica leads now. A standby
        keeps its state current from the API but neither reads nor writes etcd; each time
        it is elected (``elected()``), it reconciles etcd with the whole state first."""
        super().__init__(name="controller", daemon=True)
        self.leading = leading
        self.state = state
        self.writer = writer
        self.kinds = set(kinds)
        self.stop_event = stop_event
        self.queue = Inbox(PAGES_QUEUED)
        self.listed = set()
        self.reconcile_needed = False
        self.synced = False          # the first full sync reached etcd
        self.started = time.monotonic()
        self._backoff = Backoff(0.5, 10.0)
        self._next_reconcile = 0.0
        self.reconcile_error = ""     # why the last reconcile could not read etcd, if it failed
        self._snapshot = None        # (ours, actual, marked) read at start, until the 1st reconcile
        self._snapshot_pending = True  # its read has not reached the queue yet
        self._early = {}             # changes sent before the snapshot arrived
        self._starting = True        # until the first reconcile: the snapshot is in use
        self._list_seconds = {}      # kind -> seconds spent applying its list's pages
        self.collector = CollectorPause()  # paused by run() for the first lists
        self.change_log = ChangeLog()
        self._handlers = {"snapshot": self._adopt_snapshot, "elected": self._on_elected,
                          "lost": self._on_lost, "page": self._on_page,
                          "listed": self._on_listed, "event": self._on_event}

    def _read_snapshot(self):
        """In its own thread; the result goes through the queue, so only the controller
        thread ever touches the snapshot."""
        started = time.monotonic()
        snapshot = None
        try:
            snapshot = self.writer.read_state()
        except Exception as exc:  # the first reconcile reads (and retries) itself
            log.warning("cannot read etcd at start (%s): the reconcile will",
                        describe_error(exc)[:300])
        else:
            log.info("read %d keys from etcd in %.2fs (%d of them ours)", len(snapshot[1]),
                     time.monotonic() - started, len(snapshot[0]))
        self.queue.put(("snapshot", snapshot))

    def _adopt_snapshot(self, snapshot):
        """Take over the snapshot, with what was sent meanwhile applied to it (the read
        may have missed those writes): a later deletion of such a key must still reach
        etcd."""
        self._snapshot_pending = False
        if snapshot is not None and self._starting:
            self._snapshot = snapshot
            self._note(snapshot, self._early)
        self._early = {}

    @staticmethod
    def _note(snapshot, changes):
        """Apply what was sent to the snapshot. A value sent is noted as SENT, not by its
        fingerprint: while the snapshot stands every later change of a desired value is
        sent too, so a key noted SENT holds its desired value (and a sync into an empty
        etcd does not make 490,000 fingerprints whose heap stayed resident after it)."""
        ours, actual, _ = snapshot
        for key, value in changes.items():
            if value is None:
                actual.pop(key, None)
                ours.discard(key)
            else:
                actual[key] = SENT
                ours.add(key)

    def _send(self, changes):
        """Submit ``changes``; while the snapshot stands, keep it equal to what etcd will
        hold, and leave out what it holds already."""
        if self._snapshot is not None:
            actual = self._snapshot[1]
            changes = {key: value for key, value in changes.items()
                       if actual.get(key) != (None if value is None else fingerprint(value))}
            self._note(self._snapshot, changes)
        elif self._snapshot_pending:  # applied to the snapshot when it arrives
            self._early.update(changes)
        self.writer.submit(changes)

    @property
    def ready(self) -> bool:
        return self.synced and self.writer.failures.healthy and not self.reconcile_error

    def elected(self):
        """From the election thread: this replica leads from now on."""
        self.queue.put(("elected",))

    def lost(self):
        """From the election thread: this replica's term is over."""
        self.queue.put(("lost",))

    def run(self):
        self.collector.pause()  # see the module's docstring
        if self.leading is None:
            threading.Thread(target=self._read_snapshot, name="etcd-snapshot",
                             daemon=True).start()
        else:
            # Who leads is not known yet, and a standby's snapshot would be stale when it is
            # elected: the reconcile after the election reads etcd.
            self._snapshot_pending = False
        while not self.stop_event.is_set():
            try:
                item = self.queue.get(timeout=0.2)
            except queue.Empty:
                item = None
                self.change_log.flush()
            if item is not None:
                self._apply(item)
            if self.collector.active and time.monotonic() - self.started > COLLECTOR_PAUSE:
                self.collector.resume()
            if self.reconcile_needed and self.listed >= self.kinds:
                if self.queue.empty() and time.monotonic() >= self._next_reconcile:
                    self._reconcile()
            if (not self.synced and self.listed >= self.kinds and not self.reconcile_needed
                    and self.writer.pending() == 0 and self.writer.failures.healthy):
                self.synced = True
                log.info("initial sync done in %.1fs: %d keys desired, %d written, "
                         "%d deleted", time.monotonic() - self.started,
                         len(self.state.index), self.writer.written, self.writer.deleted)
                return_freed_memory()  # the snapshot and the list pages are gone by now

    def _apply(self, item):
        """One inbox message, ``(what, *arguments)``: what the reflectors, the start-up
        read of etcd and the election put in ``queue``, each to its method (``_handlers``)."""
        self._handlers[item[0]](*item[1:])

    def _on_elected(self):
        log.info("leading: reconciling etcd with the whole state once every resource "
                 "is listed")
        self.reconcile_needed = True
        self.synced = False
        self._backoff.reset()
        self._next_reconcile = 0.0

    def _on_lost(self):
        dropped = self.writer.discard()
        log.info("standing by: %d changes not written (the leader writes them)", dropped)
        self.reconcile_needed = True
        self.synced = False

    def _on_page(self, kind, items):
        """At start a list's changes are everything (the state was empty): only what the
        snapshot of etcd lacks is written (new records at once, deletions after all
        lists); without a snapshot, nothing until the reconcile, which writes only what
        differs from etcd (a restart against an etcd in sync writes nothing). A relist's
        changes are real differences and go out at once, as events do."""
        # A list outruns etcd: its values would wait in the writer's queue (all 440,000
        # of them at cluster scale, and the heap they leave behind stays fragmented). Let
        # the queue drain to a bound first, unless etcd is failing.
        self.writer.wait_below(PENDING_LIMIT, timeout=PENDING_WAIT)
        started = time.monotonic()
        changes = self.state.apply_page(kind, items)
        self._list_seconds[kind] = self._list_seconds.get(kind, 0.0) + \
            time.monotonic() - started
        if not self._starting:
            self._send(changes)
        elif self._snapshot is not None:
            self._send({key: value for key, value in changes.items() if value is not None})

    def _on_listed(self, kind, listed, version):
        started = time.monotonic()
        changes = self.state.end_list(kind, listed)
        if not self._starting:
            self._send(changes)
        log.info("%s: %d listed objects applied in %.2fs (%d keys desired)", kind,
                 len(listed), self._list_seconds.pop(kind, 0.0) + time.monotonic() -
                 started, len(self.state.index))
        self.listed.add(kind)
        self.reconcile_needed = True
        if self.listed >= self.kinds:
            self.collector.resume()

    def _on_event(self, kind, event_type, obj):
        changes = self.state.handle(kind, event_type, obj)
        if changes:
            self.change_log.note(kind, obj, event_type, len(changes))
        self._send(changes)

    def _reconcile(self):
        if self._snapshot_pending:
            return  # the start-up read is still going: it spares the reconcile its own
        if self.leading is not None and not self.leading():
            return  # a standby: the reconcile waits for its election
        started = time.monotonic()
        snapshot, self._snapshot, self._starting = self._snapshot, None, False
        try:
            count = self.writer.reconcile(self.state.desired(), snapshot)
        except Exception as exc:
            delay = self._backoff.next()
            self.reconcile_error = describe_error(exc)[:300]
            log.warning("cannot reconcile with etcd yet (%s); retrying in %.1fs",
                        self.reconcile_error, delay)
            self._next_reconcile = time.monotonic() + delay
            return
        self.reconcile_error = ""
        self._backoff.reset()
        self.reconcile_needed = False
        log.info("reconciled etcd with %d desired keys in %.2fs: %d to write or delete",
                 len(self.state.index), time.monotonic() - started, count)


class Inbox(queue.Queue):
    """The controller's queue. A list page waits for room (at most ``pages`` of them in
    it): reflectors decode pages faster than the records are computed, and without the
    bound a big cluster's 35,000 objects were all in the queue at once, decoded (the
    sync's peak, and the heap it left half empty stayed resident). Everything else goes
    in at once: events, the snapshot, and the election's calls, which must never block.

    A watch event for an object that already has one waiting replaces it in its place, as
    client-go's work queues hold a key once: the handlers set or delete an object's
    records from the object as it is, so only its newest state matters. A controller that
    falls behind (a churn faster than it computes records) so holds one event per object
    changed, not every version of it, and catches up by skipping the versions it missed;
    without this the queue grew by ~350 MiB a minute at 1,000 changes a second and the
    answers fell minutes behind. An event never moves past anything else queued after
    the one it replaces (a page, a list's end, the snapshot, an election): it is queued
    anew behind it instead."""

    def __init__(self, pages: int):
        super().__init__()
        self.page_room = threading.Semaphore(pages)
        self.coalesced = 0  # events that replaced a waiting one

    def put(self, item, block=True, timeout=None):
        if item[0] == "page":
            self.page_room.acquire()
        super().put(item, block, timeout)

    def get(self, block=True, timeout=None):
        item = super().get(block, timeout)
        if item[0] == "page":
            self.page_room.release()
        return item

    # queue.Queue's own extension points, called under its lock

    def _init(self, maxsize):
        self.queue = collections.deque()  # items, and [event, epoch, key] for events
        self.waiting = {}                 # (kind, namespace, name) -> its event's entry
        self.epoch = 0                    # bumped by everything queued but an event

    def _qsize(self):
        return len(self.queue)

    def _put(self, item):
        if item[0] != "event":
            self.epoch += 1
            self.queue.append(item)
            return
        namespace, name = meta(item[3])
        key = (item[1], namespace, name)
        entry = self.waiting.get(key) if name else None
        if entry is not None and entry[1] == self.epoch:
            entry[0] = item
            self.coalesced += 1
            return
        entry = [item, self.epoch, key]
        if name:
            self.waiting[key] = entry
        self.queue.append(entry)

    def _get(self):
        entry = self.queue.popleft()
        if entry.__class__ is not list:
            return entry
        if self.waiting.get(entry[2]) is entry:
            del self.waiting[entry[2]]
        return entry[0]


class ChangeLog:
    """One line per object change, up to LINES a WINDOW; past that, one line at the end of
    the window with how many more there were. Under churn (a thousand endpoint changes a
    second) a line each was a third of the sync thread's time, and no operator reads them."""

    LINES = 20
    WINDOW = 10.0

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.window_end = 0.0
        self.lines = 0
        self.more = self.more_keys = 0

    def note(self, kind, obj, event_type, keys):
        self.flush()
        if self.lines < self.LINES:
            self.lines += 1
            meta = obj.get("metadata") or {}
            log.info("%s %s/%s %s: %d keys change", kind, meta.get("namespace"),
                     meta.get("name"), event_type.lower(), keys)
        else:
            self.more += 1
            self.more_keys += keys

    def flush(self):
        """Start a new window if this one is over, saying first what it did not log."""
        now = self.clock()
        if now < self.window_end:
            return
        if self.more:
            log.info("... and %d more object changes (%d keys) in the last %.0fs",
                     self.more, self.more_keys, self.WINDOW)
        self.window_end = now + self.WINDOW
        self.lines = self.more = self.more_keys = 0
