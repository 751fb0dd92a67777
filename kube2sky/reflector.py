"""List-then-watch for one resource with the official kubernetes client (one thread each).

The idiom of client-go's reflector: list, watch from the list's resourceVersion, re-watch
from the last seen resourceVersion when the server ends a watch normally, and relist when
the version is too old (410 Gone) or the stream breaks. Lists are paged (``limit`` and
``continue``, LIST_PAGE objects a page, as client-go's pager); every page is decoded
straight into slim objects (``slim.KindDecoder``: a list of 20,000 pods never holds their
full specs) and handed to the controller as it arrives, so the records of the first pages
are computed (and written) while the next are fetched. The end of a list names every
object listed: those the controller holds beyond them were deleted meanwhile. Events go,
as slim API JSON, to the controller's queue; this thread keeps no objects.
"""

from __future__ import annotations

import logging
import threading
import time

from kubernetes.watch.watch import iter_resp_lines
from kubernetes.client.rest import ApiException

from skydns.retry import Backoff, FailureLog, describe_error

from .records import meta
from .slim import CHANGES, KindDecoder

log = logging.getLogger("kube2sky.reflector")

WATCH_TIMEOUT = 300      # seconds the API server keeps one watch open (timeoutSeconds)
LIST_TIMEOUT = 120
LIST_PAGE = 500          # objects per list request (client-go's pager default)


class Reflector(threading.Thread):
    def __init__(self, kind, list_func, out, stop_event, watch_timeout=WATCH_TIMEOUT):
        super().__init__(name=f"reflector-{kind}", daemon=True)
        self.kind = kind
        self.decoder = KindDecoder(kind)
        self.list_func = list_func
        self.out = out
        self.stop_event = stop_event
        self.watch_timeout = watch_timeout
        self.failures = FailureLog(log)  # list/watch failing, and why
        self.relists = 0

    def stop(self):
        """Nothing to close: closing the response from another thread blocks in http.client
        while this thread reads it. The thread is a daemon and sees stop_event on its next
        event; the process exits without waiting for it."""

    def run(self):
        backoff = Backoff(0.5, 30.0)
        version = None
        while not self.stop_event.is_set():
            try:
                if version is None:
                    version = self._list()
                version = self._watch_from(version)
                backoff.reset()
            except ApiException as exc:
                if exc.status == 410:
                    log.info("%s: resourceVersion %s expired (410 Gone): relisting",
                             self.kind, version)
                    version = None
                    continue
                self._failed(f"API error {exc.status} {exc.reason}".strip())
                version = None
            except Exception as exc:  # connection refused, broken stream, bad JSON...
                self._failed(describe_error(exc)[:300])
                version = None
            self.stop_event.wait(backoff.next())

    def _failed(self, reason):
        if self.stop_event.is_set():
            return  # our own shutdown closed the stream
        self.failures.failed(reason, "%s: list/watch failed, will relist: %s", self.kind)

    def _list(self):
        """All objects of the kind, page by page at the first page's resourceVersion (the
        API keeps one snapshot across ``continue`` tokens; an expired token is a 410, and
        the list starts over)."""
        started = time.monotonic()
        listed, token, version, pages = set(), None, None, 0
        while True:
            kwargs = {"_continue": token} if token else {}
            response = self.list_func(limit=LIST_PAGE, _preload_content=False,
                                      _request_timeout=LIST_TIMEOUT, **kwargs)
            items, metadata = self.decoder.page(response.data)
            listed.update(meta(obj) for obj in items)
            self.out.put(("page", self.kind, items))  # applied while the next is fetched
            version = metadata.get("resourceVersion") or version
            token = metadata.get("continue")
            pages += 1
            if not token:
                break
            if pages % 20 == 0:
                log.info("listing %s: %d so far (%.1fs)", self.kind, len(listed),
                         time.monotonic() - started)
        self.relists += 1
        log.info("listed %d %s at resourceVersion %s in %.2fs (%d pages)", len(listed),
                 self.kind, version, time.monotonic() - started, pages)
        self.out.put(("listed", self.kind, listed, version))
        self.failures.recovered()
        return version

    def _watch_from(self, version):
        """Watch until the server ends the stream; returns the last resourceVersion seen.
        Raises ApiException(410) when the version is too old.

        The list function is called with ``watch=True`` and the response read line by line
        as raw JSON (the client's ``iter_resp_lines``): no model objects are built, and an
        ERROR event reaches us as the API sent it (Watch.stream(deserialize=False) fails on
        those)."""
        response = self.list_func(watch=True, resource_version=version,
                                  timeout_seconds=self.watch_timeout,
                                  allow_watch_bookmarks=True, _preload_content=False,
                                  _request_timeout=self.watch_timeout + 30)
        try:
            for line in iter_resp_lines(response):
                if self.stop_event.is_set():
                    break
                kind, obj, seen = self.decoder.event(line)
                if kind == "ERROR":
                    raise ApiException(status=obj.get("code"),
                                       reason=obj.get("reason") or obj.get("message"))
                version = seen or version
                if kind in CHANGES:
                    self.out.put(("event", self.kind, kind, obj))
        finally:
            response.release_conn()
        return version
