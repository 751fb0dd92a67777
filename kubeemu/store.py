"""The object store: one global resourceVersion, a bounded event history, and watches.

Like etcd behind a real API server, every change (to any kind) takes the next integer
resourceVersion, which is written into the object's ``metadata.resourceVersion`` and
recorded in a history of the last ``history`` events.  A watch from resourceVersion N
replays the recorded events after N and then follows live ones; when N is older than the
history (events after N were dropped) the watch fails with 410 Expired, as a real API
server's watch cache does.  The history counts the changes of all kinds together (like
etcd compaction), not per kind.  Everything is in memory and lost at exit.

Listeners added with :meth:`Store.add_listener` run synchronously, under the store lock,
after each committed change; the EndpointSlice mirroring uses that to keep its slices in
step with the Endpoints they mirror.
"""

from __future__ import annotations

import base64
import bisect
import collections
import json
import threading
import time
from typing import Any, Callable, NamedTuple

from . import patch as patches
from .errors import ApiError
from .resources import RESOURCES, Defaulter, Resource, check_replacement, prepare_new

__all__ = ["Store", "Watch", "Event"]

Match = Callable[[dict], bool]


def _match_all(obj: dict) -> bool:
    return True



def copy_json(value):
    """A deep copy of API data (dicts, lists, immutable scalars): the store hands out and
    keeps copies, so that no caller shares its objects. Four times faster than
    copy.deepcopy, which took 90% of a 20-address EndpointSlice PUT (the emulator topped
    out at ~600 writes a second, under issue 9's churn)."""
    if value.__class__ is dict:
        return {key: copy_json(item) for key, item in value.items()}
    if value.__class__ is list:
        return [copy_json(item) for item in value]
    return value

class Event(NamedTuple):
    rv: int
    resource: str
    type: str            # ADDED, MODIFIED, DELETED
    object: dict
    old: dict | None     # the previous state, for MODIFIED and DELETED


class Store:
    """In-memory objects of the kinds in :data:`kubeemu.resources.RESOURCES`."""

    def __init__(self, history: int = 1000, service_cidr: str = "10.96.0.0/16",
                 require_namespace: bool = False):
        if history < 1:
            raise ValueError("history must be at least 1")
        lock = threading.RLock()
        self._cond = threading.Condition(lock)
        # The watches of one resource wait on its own condition: a write wakes only them
        # (waking every watch for every write was a wake-up per other kind per event).
        self._written = {r: threading.Condition(lock) for r in RESOURCES}
        self._rv = 0
        self._objects: dict[str, dict[tuple[str, str], dict]] = {r: {} for r in RESOURCES}
        # What a list serves, kept between lists as the API server's watch cache keeps it:
        # each object's JSON, and each resource's keys in order, until a write changes them.
        self._encoded: dict[str, dict[tuple[str, str], bytes]] = {r: {} for r in RESOURCES}
        self._sorted: dict[str, list[tuple[str, str]]] = {}
        self._history: collections.deque[Event] = collections.deque()
        self.history_size = history
        self._compacted = 0          # events with rv <= this may be gone from the history
        self._listeners: list[Callable[["Store", Event], None]] = []
        self.defaulter = Defaulter(service_cidr)
        self.require_namespace = require_namespace
        self.closed = False

    # -- bookkeeping ---------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        with self._cond:
            return self._rv

    def add_listener(self, listener: Callable[["Store", Event], None]) -> None:
        self._listeners.append(listener)

    def close(self) -> None:
        """End every watch (they return ``None``)."""
        with self._cond:
            self.closed = True
            for written in self._written.values():
                written.notify_all()

    @staticmethod
    def _res(resource: str | Resource) -> Resource:
        if isinstance(resource, Resource):
            return resource
        try:
            return RESOURCES[resource]
        except KeyError:
            raise ApiError(404, "the server could not find the requested resource "
                                "(%s)" % resource, "NotFound") from None

    @staticmethod
    def _key(res: Resource, namespace: str | None, name: str) -> tuple[str, str]:
        return (namespace or "default") if res.namespaced else "", name

    def _commit(self, res: Resource, etype: str, obj: dict, old: dict | None,
                handoff: bool = False) -> dict:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        key = self._key(res, obj["metadata"].get("namespace"), obj["metadata"]["name"])
        self._encoded[res.name].pop(key, None)
        if etype != "MODIFIED":
            self._sorted.pop(res.name, None)
        if etype == "DELETED":
            self._objects[res.name].pop(key, None)
        else:
            self._objects[res.name][key] = obj
        event = Event(self._rv, res.name, etype, obj, old)
        self._history.append(event)
        while len(self._history) > self.history_size:
            self._compacted = self._history.popleft().rv
        self._written[res.name].notify_all()
        for listener in self._listeners:
            listener(self, event)
        return obj if handoff else copy_json(obj)

    def _current(self, res: Resource, namespace: str | None, name: str) -> dict:
        obj = self._objects[res.name].get(self._key(res, namespace, name))
        if obj is None:
            raise ApiError.not_found(res.qualified, name)
        return obj

    # -- reads ---------------------------------------------------------------------------

    def get(self, resource: str | Resource, namespace: str | None, name: str) -> dict:
        res = self._res(resource)
        with self._cond:
            return copy_json(self._current(res, namespace, name))

    def list(self, resource: str | Resource, namespace: str | None = None,
             match: Match | None = None, limit: int | None = None,
             continue_token: str | None = None) -> tuple[list[dict], str, str | None, int | None]:
        """Return ``(items, resourceVersion, continue, remainingItemCount)``.

        Pages after the first are read from the current state (a real server reads them
        from the snapshot of the first page); a token older than the history is 410.
        """
        with self._cond:
            items, rv, token, remaining = self._page(resource, namespace, match, limit,
                                                     continue_token)
            return [copy_json(obj) for _, obj in items], rv, token, remaining

    def list_json(self, resource: str | Resource, namespace: str | None = None,
                  match: Match | None = None, limit: int | None = None,
                  continue_token: str | None = None) -> tuple[list[bytes], str, str | None,
                                                              int | None]:
        """``list`` with each item as its JSON text, encoded once and kept until the
        object changes (a committed object is replaced, never changed in place): a big
        cluster's lists cost the emulator a join instead of a copy and an encode of every
        object, as the API server serves them from its watch cache."""
        with self._cond:
            items, rv, token, remaining = self._page(resource, namespace, match, limit,
                                                     continue_token)
            encoded = self._encoded[self._res(resource).name]
            out = []
            for key, obj in items:
                text = encoded.get(key)
                if text is None:
                    text = encoded[key] = json.dumps(obj).encode()
                out.append(text)
            return out, rv, token, remaining

    def _page(self, resource, namespace, match, limit, continue_token):
        """(the page's (key, stored object) pairs, resourceVersion, continue, remaining)."""
        res = self._res(resource)
        match = match or _match_all
        list_rv, start = self._rv, None
        if continue_token:
            try:
                token = json.loads(base64.urlsafe_b64decode(continue_token.encode()))
                list_rv, start = int(token["rv"]), tuple(token["start"])
            except (ValueError, KeyError, TypeError):
                raise ApiError.bad_request("invalid continue token") from None
            if list_rv < self._compacted:
                raise ApiError.expired(
                    "The provided continue parameter is too old to display a consistent "
                    "list result. You can start a new list without the continue "
                    "parameter.")
        objects = self._objects[res.name]
        keys = self._sorted.get(res.name)
        if keys is None:
            keys = self._sorted[res.name] = sorted(objects)
        first = 0 if start is None else bisect.bisect_right(keys, start)
        want = limit if limit and limit > 0 else None
        items, position = [], first
        # A page reads from where the last one ended, up to one item past the limit
        # (which says whether there is more): not every object's match and copy again
        # for every page.
        for position in range(first, len(keys)):
            key = keys[position]
            if res.namespaced and namespace and key[0] != namespace:
                continue
            obj = objects[key]
            if match(obj):
                items.append((key, obj))
                if want is not None and len(items) > want:
                    break
        token_out = remaining = None
        if want is not None and len(items) > want:
            items = items[:want]
            token_out = base64.urlsafe_b64encode(json.dumps(
                {"rv": list_rv, "start": list(items[-1][0])}).encode()).decode()
            if match is _match_all:  # as the API: only without selectors
                end = len(keys)
                if res.namespaced and namespace:  # keys sort by namespace first
                    end = bisect.bisect_right(keys, (namespace, chr(0x10FFFF)))
                remaining = end - position
        return items, str(list_rv), token_out, remaining

    # -- writes --------------------------------------------------------------------------

    def create(self, resource: str | Resource, obj: dict, namespace: str | None = None,
               dry_run: bool = False, handoff: bool = False) -> dict:
        """Create an object (POST). ``handoff``: see :meth:`update`."""
        res = self._res(resource)
        obj = prepare_new(res, obj if handoff else copy_json(obj), namespace)
        meta = obj["metadata"]
        with self._cond:
            if res.namespaced and self.require_namespace and \
                    ("", meta["namespace"]) not in self._objects["namespaces"]:
                raise ApiError.not_found("namespaces", meta["namespace"])
            if self._key(res, meta.get("namespace"), meta["name"]) in self._objects[res.name]:
                raise ApiError.already_exists(res.qualified, meta["name"])
            self.defaulter.on_create(res, obj, commit=not dry_run)
            if dry_run:
                return copy_json(obj)
            return self._commit(res, "ADDED", obj, None, handoff)

    def update(self, resource: str | Resource, obj: dict, namespace: str | None = None,
               name: str | None = None, subresource: str | None = None,
               dry_run: bool = False, handoff: bool = False) -> dict:
        """Replace an object (PUT).  A stale ``metadata.resourceVersion`` is 409 Conflict.

        ``handoff``: ``obj`` is the caller's to give up (a request body just decoded) and
        the result is only read, at once (serialized): the object is kept and returned
        without a copy of either (two of a churned EndpointSlice PUT's three copies). The
        store never changes an object it keeps: a write replaces it."""
        res = self._res(resource)
        obj = obj if handoff else copy_json(obj)
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        name = name or (meta or {}).get("name")
        if not name:
            raise ApiError.bad_request("name is required")
        namespace = (namespace or (meta or {}).get("namespace") or "default") \
            if res.namespaced else None
        with self._cond:
            old = self._current(res, namespace, name)
            wanted_rv = (meta or {}).get("resourceVersion")
            if wanted_rv and wanted_rv != old["metadata"]["resourceVersion"]:
                raise ApiError.conflict(res.qualified, name,
                                        "the object has been modified; please apply your "
                                        "changes to the latest version and try again")
            obj = check_replacement(res, old, obj, name, namespace)
            self.defaulter.on_update(res, old, obj, subresource, commit=not dry_run)
            if dry_run:
                obj["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
                return copy_json(obj)
            if _same_content(old, obj):      # a no-op write does not bump the version
                return copy_json(old)
            return self._commit(res, "MODIFIED", obj, old, handoff)

    def patch(self, resource: str | Resource, namespace: str | None, name: str, body: Any,
              patch_type: str = "merge", subresource: str | None = None,
              dry_run: bool = False) -> dict:
        """Apply a ``merge``, ``strategic`` or ``json`` patch (see :mod:`kubeemu.patch`)."""
        res = self._res(resource)
        with self._cond:
            current = copy_json(self._current(res, namespace, name))
            current_rv = current["metadata"]["resourceVersion"]
            try:
                if patch_type == "json":
                    patched = patches.json_patch(current, body)
                elif patch_type == "strategic":
                    patched = patches.strategic_merge_patch(current, body)
                else:
                    if not isinstance(body, dict):
                        raise patches.PatchError("a merge patch must be a JSON object")
                    patched = patches.merge_patch(current, body)
            except patches.PatchError as exc:
                raise ApiError(422, str(exc), "Invalid") from None
            if not isinstance(patched, dict):
                raise ApiError(422, "the patch does not yield an object", "Invalid")
            meta = patched.setdefault("metadata", {})
            if not isinstance(meta, dict):
                raise ApiError(422, "metadata must be an object", "Invalid")
            meta.setdefault("resourceVersion", current_rv)   # no precondition unless given
            return self.update(res, patched, namespace, name, subresource, dry_run)

    def delete(self, resource: str | Resource, namespace: str | None, name: str,
               preconditions: dict | None = None, dry_run: bool = False) -> dict:
        """Delete at once (no finalizers, no grace period) and return the last state."""
        res = self._res(resource)
        with self._cond:
            old = self._current(res, namespace, name)
            pre = preconditions or {}
            if pre.get("uid") and pre["uid"] != old["metadata"].get("uid"):
                raise ApiError.conflict(res.qualified, name, "Precondition failed: UID in "
                                        "precondition: %s, UID in object meta: %s"
                                        % (pre["uid"], old["metadata"].get("uid")))
            if pre.get("resourceVersion") and \
                    pre["resourceVersion"] != old["metadata"]["resourceVersion"]:
                raise ApiError.conflict(res.qualified, name, "Precondition failed: "
                                        "ResourceVersion in precondition: %s, ResourceVersion "
                                        "in object meta: %s" % (pre["resourceVersion"],
                                                                old["metadata"]["resourceVersion"]))
            if dry_run:
                return copy_json(old)
            if res.name == "namespaces":     # no Terminating phase: contents go at once
                for other in RESOURCES.values():
                    if other.namespaced:
                        for key in [k for k in self._objects[other.name] if k[0] == name]:
                            if key in self._objects[other.name]:
                                self._delete_locked(other, self._objects[other.name][key])
            return self._delete_locked(res, old)

    def _delete_locked(self, res: Resource, old: dict) -> dict:
        self.defaulter.on_delete(res, old)
        gone = copy_json(old)
        return self._commit(res, "DELETED", gone, old)

    def delete_collection(self, resource: str | Resource, namespace: str | None = None,
                          match: Match | None = None) -> list[dict]:
        res = self._res(resource)
        with self._cond:
            items, _, _, _ = self.list(res, namespace, match)
            return [self.delete(res, item["metadata"].get("namespace"),
                                item["metadata"]["name"]) for item in items]

    def apply(self, obj: dict) -> dict:
        """Create ``obj`` (kind/apiVersion pick the resource) or replace it if it exists."""
        res = resource_of(obj)
        meta = obj.get("metadata") or {}
        with self._cond:
            key = self._key(res, meta.get("namespace"), meta.get("name", ""))
            if meta.get("name") and key in self._objects[res.name]:
                body = copy_json(obj)
                body["metadata"] = {k: v for k, v in meta.items() if k != "resourceVersion"}
                return self.update(res, body, meta.get("namespace"), meta["name"])
            return self.create(res, obj, meta.get("namespace"))

    # -- watch ---------------------------------------------------------------------------

    def watch(self, resource: str | Resource, namespace: str | None = None,
              resource_version: str | None = None, match: Match | None = None) -> "Watch":
        """Start a watch.  ``resource_version`` None/""/"0": ADDED for current objects first.
        Raises 410 Expired when ``resource_version`` is older than the history."""
        res = self._res(resource)
        match = match or _match_all
        with self._cond:
            if resource_version in (None, "", "0"):
                initial = [("ADDED", copy_json(obj))
                           for key, obj in sorted(self._objects[res.name].items())
                           if not (res.namespaced and namespace and key[0] != namespace)
                           and match(obj)]
                return Watch(self, res, namespace, match, self._rv, initial)
            try:
                start = int(resource_version)
            except ValueError:
                raise ApiError.bad_request("invalid resourceVersion %r" % resource_version) \
                    from None
            if start < self._compacted:
                raise ApiError.expired("too old resource version: %d (%d)"
                                       % (start, self._compacted + 1))
            return Watch(self, res, namespace, match, start, [])

    def _events_after(self, position: int) -> list[Event]:
        events = []
        for event in reversed(self._history):
            if event.rv <= position:
                break
            events.append(event)
        events.reverse()
        return events


def _same_content(old: dict, new: dict) -> bool:
    def strip(obj):
        body = dict(obj)
        body["metadata"] = {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}
        return body
    return strip(old) == strip(new)


def resource_of(obj: dict) -> Resource:
    """The resource for a manifest, from its ``kind`` (and ``apiVersion``)."""
    for res in RESOURCES.values():
        if res.kind == obj.get("kind") and obj.get("apiVersion") in (None, res.api_version):
            return res
    raise ApiError.bad_request("no kind %r in %r is served by this emulator"
                               % (obj.get("kind"), obj.get("apiVersion")))


class Watch:
    """One watch on one resource: call :meth:`next` until it returns ``None``."""

    def __init__(self, store: Store, res: Resource, namespace: str | None, match: Match,
                 position: int, initial: list[tuple[str, dict]]):
        self.store, self.res, self.namespace, self.match = store, res, namespace, match
        self.position = position
        self._pending = list(initial)

    def _translate(self, event: Event) -> tuple[str, dict] | None:
        meta = event.object["metadata"]
        if event.resource != self.res.name or \
                (self.res.namespaced and self.namespace and meta.get("namespace") != self.namespace):
            return None
        now_matches = self.match(event.object)
        was_matching = event.old is not None and self.match(event.old)
        if event.type == "MODIFIED":
            if now_matches and was_matching:
                return "MODIFIED", event.object
            if now_matches:
                return "ADDED", event.object
            if was_matching:
                return "DELETED", event.object
            return None
        if event.type == "DELETED":
            return ("DELETED", event.object) if (was_matching or now_matches) else None
        return (event.type, event.object) if now_matches else None

    def next(self, timeout: float, shared: bool = False) -> list[tuple[str, dict]] | None:
        """Events as ``(type, object)``; ``[]`` after ``timeout`` seconds with none;
        ``None`` once the store is closed.  Raises 410 if the watch fell behind the history.
        ``shared``: the objects the store keeps, not copies, for a caller that only reads
        them at once (the HTTP handler serializes them; the store never changes them).
        """
        if self._pending:
            pending, self._pending = self._pending, []
            return pending
        deadline = time.monotonic() + max(0.0, timeout)
        store = self.store
        with store._cond:
            while True:
                if store.closed:
                    return None
                if self.position < store._compacted:
                    raise ApiError.expired("too old resource version: %d (%d)"
                                           % (self.position, store._compacted + 1))
                out = []
                for event in store._events_after(self.position):
                    self.position = event.rv
                    translated = self._translate(event)
                    if translated:
                        out.append(translated if shared else
                                   (translated[0], copy_json(translated[1])))
                if out:
                    return out
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                store._written[self.res.name].wait(remaining)
