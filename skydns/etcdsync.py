"""Keeps the RecordStore equal to etcd: one range read at start, then a watch from the next
revision; re-watch from the last revision after an outage, full reload when it was compacted.

The etcd3 client is blocking and runs its watch in a gRPC thread, so all of this runs in one
background thread and hands every change to the reactor with ``reactor.callFromThread``;
the store itself is only touched on the reactor thread.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import gc
import logging
import queue
import random
import threading
import time
from urllib.parse import urlparse

import etcd3
import etcd3.exceptions
import grpc

log = logging.getLogger("skydns.etcd")

# Keys per range request (all at one revision). Large, because etcd (3.5) counts every key
# left in the range for each limited request: 440k keys take 18 s in pages of 1,000, 4.8 s
# of 5,000 and 1.7 s of 50,000, as long as one unlimited read. A page is ~10 MB on the wire.
PAGE = 50000
HEALTH_INTERVAL = 3.0    # seconds between liveness checks of a quiet watch
RPC_TIMEOUT = 5.0
GRPC_OPTIONS = [("grpc.max_receive_message_length", 256 * 1024 * 1024)]


def parse_machines(machines):
    """``http://host:port`` URLs -> [(host, port, secure)]."""
    out = []
    for url in machines:
        if "://" not in url:
            url = "http://" + url
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"bad etcd URL {url!r}: want http(s)://host:port")
        out.append((parsed.hostname, parsed.port or 2379, parsed.scheme == "https"))
    return out


# gRPC metadata etcd reads as "fail this request, and end this watch, while the member
# has no raft leader" (Go clientv3's WithRequireLeader). Without it, a watch on a member cut
# off from the others stays open and silent, and the store would go stale unnoticed.
REQUIRE_LEADER = ("hasleader", "true")


def make_client(config, timeout=RPC_TIMEOUT, avoid=None):
    """An etcd3 client that fails over between machines and retries a failed one promptly.

    (The etcd3 default marks an endpoint failed for 300 s after one error, which would keep
    us away from an etcd that came back long ago.) ``avoid``: the ``host:port`` that just
    failed us; the new client starts on another member (for half a second, as any failed
    endpoint) instead of picking at random, maybe the dead one again.
    """
    creds = None
    machines = parse_machines(config.machines)
    if any(secure for _, _, secure in machines):
        ca = open(config.ca_cert, "rb").read() if config.ca_cert else None
        key = open(config.tls_key, "rb").read() if config.tls_key else None
        pem = open(config.tls_pem, "rb").read() if config.tls_pem else None
        creds = grpc.ssl_channel_credentials(ca, key, pem)
    endpoints = [etcd3.Endpoint(host, port, secure=secure, creds=creds if secure else None,
                                time_retry=0.5, opts=GRPC_OPTIONS)
                 for host, port, secure in machines]
    if avoid is not None and len(endpoints) > 1:
        for endpoint in endpoints:
            if endpoint.netloc == avoid:
                endpoint.fail()
    client = etcd3.MultiEndpointEtcd3Client(
        endpoints, timeout=timeout, failover=True,
        user=config.username or None, password=config.password or None)
    # The auth token already travels as request metadata; as gRPC call credentials too,
    # gRPC would refuse every call on a plain http:// channel.
    client.call_credentials = None
    client.metadata = (client.metadata or ()) + (REQUIRE_LEADER,)
    return client


def endpoint_of(client):
    """The ``host:port`` a client talks to now (None without one)."""
    try:
        return client.endpoint_in_use.netloc
    except Exception:
        return None


def read_prefix(client, prefix: str, each=None, revision: int = 0, progress=None,
                each_page=None) -> int:
    """Call ``each(kv)`` for every key under ``prefix`` (or ``each_page(kvs)`` for every
    page), read in pages of PAGE keys at one
    revision (``revision``, or the first page's), and return that revision. One range
    reply for a whole big prefix could pass gRPC's message limit and holds every key twice
    in memory while it is decoded. The next page is requested while ``each`` goes through
    this one, so etcd's work and ours overlap. ``progress(count)`` after every page but
    the last."""
    range_end = etcd3.utils.prefix_range_end(prefix.encode())

    def fetch(start):
        return client.get_range_response(start, range_end, limit=PAGE, revision=revision)
    response = fetch(prefix.encode())
    if not revision:
        revision = response.header.revision
    count = 0
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="etcd-page") as pool:
        while True:
            following = None
            if response.more and response.kvs:
                following = pool.submit(fetch, response.kvs[-1].key + b"\x00")
            if each_page is not None:
                each_page(response.kvs)
            else:
                for kv in response.kvs:
                    each(kv)
            count += len(response.kvs)
            if following is None:
                return revision
            if progress is not None:
                progress(count)
            response = following.result()


# glibc mallopt() parameters (malloc.h)
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def bound_malloc_arenas(arenas: int = 2, mmap_threshold: int = 128 * 1024):
    """Keep glibc from spreading the heap over an arena per thread; call before any
    thread starts (before the first etcd client).

    glibc gives each thread that allocates an arena of its own, up to 8 per core, and
    gRPC's threads and the page reader fill theirs with decoded etcd pages that are freed
    a moment later; the holes they leave between the records stay resident, and which
    thread allocated what changes from run to run. With 2 arenas, and buffers above
    128 KiB always mapped (so they go back to the OS when freed, instead of the dynamic
    threshold moving them into the heap after the first free), a load of 470,000 records
    stays at 143 MiB every run instead of 166-185 MiB, and is faster."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_ARENA_MAX, arenas)
        libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


class CollectorPause:
    """The cyclic garbage collector off while a few hundred thousand long-lived objects are
    built (a store loaded, kube2sky's first lists), then those objects frozen out of later
    collections (``gc.freeze``) and the collector on again. Each full collection walked
    the growing structure again, for nothing: it holds no cycles, and what it replaces is
    freed by reference counting (a quarter of a load's time, 4 s of a kube2sky restart)."""

    def __init__(self):
        self.active = False

    def pause(self):
        self.active = gc.isenabled()  # someone else's pause is theirs to end
        gc.disable()

    def resume(self, freeze: bool = True):
        """Idempotent; ``freeze=False`` when what was built is thrown away (a failed read)."""
        if self.active:
            self.active = False
            if freeze:
                gc.freeze()
            gc.enable()


def return_freed_memory():
    """Give the heap that decoding the pages used, now free, back to the OS (glibc keeps
    it, in the arenas of the gRPC threads: a third of a big load's resident size)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim): nothing to do
        pass


def close_quietly(client):
    """Close an etcd client that may already be broken (a new one replaces it). Returns
    the ``host:port`` it talked to (None without one), for ``make_client(avoid=...)``: the
    new client then starts on another member than the one that just failed us."""
    if client is None:
        return None
    endpoint = endpoint_of(client)
    try:
        client.close()
    except Exception:
        pass
    return endpoint


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


class Backoff:
    """Bounded, jittered exponential backoff."""

    def __init__(self, low=0.1, high=5.0):
        self.low, self.high = low, high
        self.current = low

    def next(self):
        delay = self.current * (0.5 + random.random() / 2)
        self.current = min(self.high, self.current * 2)
        return delay

    def reset(self):
        self.current = self.low


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


def describe_error(exc):
    """One line for operators: the gRPC status and details, not the multi-line repr."""
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        details = exc.details() if hasattr(exc, "details") else ""
        return f"{exc.code().name}: {details}".strip().rstrip(":")
    text = " ".join(str(exc).split())
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__
