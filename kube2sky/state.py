"""The desired contents of etcd, kept incrementally from the Kubernetes objects seen.

Every record has owners (a Service or a Pod). A key stays while any owner needs it; when
owners disagree on a key's value (a PTR for an IP in two services, one hostname on two
addresses of two services), the owner that sorts first wins, so the choice is the same on
every run. Each object change recomputes only that owner's records and reports the keys
whose winning value changed: exactly the difference to write to etcd.

Values are not kept, only fingerprints (``OwnedKeys``): an owner's records are a pure
function of the objects held, so whenever a value is needed again it is computed again
(``records_of``). That holds because every change of an object goes through the owner's
``_set_owner`` with the records computed from the objects as they are now.

Objects are held as they are given, packed as their JSON text (``slim.Packed``): the
reflector hands them slim (``kube2sky.slim``), and slimming them again here cost a sixth
of a restart's list work.
"""

from __future__ import annotations

import logging
from array import array
from collections.abc import Mapping

from skydns.retry import describe_error

from .records import (Layout, fingerprint, from_endpoints, from_slices, interned, meta,
                      pod_records, service_records)
from .slim import Packed

log = logging.getLogger("kube2sky.state")

SERVICE_LABEL = "kubernetes.io/service-name"
DNS_VERSION = ("~", "dns-version")  # the owner of the schema version record


class OwnedKeys:
    """One owner's records without their values: the keys in order and the fingerprint
    of each value, packed in an array (~16 bytes a record instead of ~200)."""

    __slots__ = ("keys", "fingerprints")

    def __init__(self, records: dict):
        self.keys = tuple(records)
        self.fingerprints = array("q", map(fingerprint, records.values()))

    def __eq__(self, other):
        return (other.__class__ is OwnedKeys and self.fingerprints == other.fingerprints
                and self.keys == other.keys)

    def by_key(self) -> dict:
        return dict(zip(self.keys, self.fingerprints))


class Desired(Mapping):
    """The desired contents of etcd as a read-only mapping over a DesiredState. A value
    is computed again from its owner's objects when read (the last owner's records are
    remembered, so reading keys owner by owner computes each owner once), and
    ``differing()`` compares every key's fingerprint without computing any value: a
    reconcile with an etcd in sync reads no value at all."""

    def __init__(self, state):
        self.state = state
        self._owner, self._records = None, {}

    def __len__(self):
        return len(self.state.index)

    def __iter__(self):
        return iter(self.state.index)

    def __contains__(self, key):  # Mapping's would compute the value
        return key in self.state.index

    def keys(self):
        """The index's own keys view: set operations on it run in C (a reconcile subtracts
        490,000 keys)."""
        return self.state.index.keys()

    def __getitem__(self, key):
        entry = self.state.index[key]
        if entry.__class__ is dict:
            return entry[min(entry)]
        if entry != self._owner:
            self._owner, self._records = entry, self.state.records_of(entry)
        return self._records[key]

    def items(self):
        """(key, value) owner by owner, each owner's records computed once."""
        index = self.state.index
        for owner in list(self.state.owned):
            for key, value in self.state.records_of(owner).items():
                if index[key].__class__ is not dict:
                    yield key, value
        for key, entry in index.items():
            if entry.__class__ is dict:
                yield key, entry[min(entry)]

    def differing(self, actual: Mapping, in_sync=None) -> list:
        """The desired keys whose value's fingerprint is not the one ``actual`` (key ->
        fingerprint, or ``in_sync``: the desired value) holds, found without computing a
        value: each owner's fingerprints compared owner by owner in one comprehension each
        (a generator's step per key was most of a restart's reconcile, at 490,000 keys).
        A key several owners want is compared with its winning value, whatever its
        owner's fingerprint says."""
        index, get = self.state.index, actual.get
        out = []
        for owned in self.state.owned.values():
            out += [key for key, print_ in zip(owned.keys, owned.fingerprints)
                    if get(key) != print_]
        out = [key for key in out if index[key].__class__ is not dict]
        out += [key for key, entry in index.items() if entry.__class__ is dict
                and get(key) != fingerprint(entry[min(entry)])]
        return out if in_sync is None else [key for key in out if get(key) is not in_sync]


class DesiredState:
    def __init__(self, layout: Layout, pods: bool = True, use_slices: bool = True):
        self.layout = layout
        self.pods_enabled = pods
        self.use_slices = use_slices
        self.services = Packed()   # (ns, name) -> Service
        self.endpoints = Packed()  # (ns, name) -> Endpoints
        self.slices = {}           # (ns, service name) -> Packed {slice name: EndpointSlice}
        self.slice_owner = {}      # (ns, slice name) -> service name it was filed under
        self.pods = Packed()       # (ns, name) -> Pod
        self.owned = {}         # owner -> OwnedKeys: its keys and fingerprints, no values
        self.index = {}         # key -> its only owner, or {owner: value} (see _set_owner)
        self.problems = {}      # owner -> last problems logged (log each once)
        self._set_owner(DNS_VERSION, layout.dns_version())

    # -- an owner's records, computed again from the objects held ------------------------

    def records_of(self, owner) -> dict:
        """What ``owner`` wants now, from the objects held: the values are not kept (they
        were two fifths of kube2sky's memory at 440,000 keys), only their fingerprints."""
        kind = owner[0]
        if kind == "svc":
            return self._service_records(owner[1], owner[2])[0]
        if kind == "pod":
            return self._pod_records(owner[1], owner[2])[0]
        return self.layout.dns_version() if owner == DNS_VERSION else {}

    # -- the index -----------------------------------------------------------------------

    def value(self, key):
        entry = self.index.get(key)
        if entry is None:
            return None
        if entry.__class__ is dict:
            return entry[min(entry)]
        return self.records_of(entry)[key]

    def desired(self) -> "Desired":
        """Every desired key and its value, as a read-only mapping that computes values
        on demand and knows every key's fingerprint without computing it."""
        return Desired(self)

    def _set_owner(self, owner, records) -> dict:
        """Replace ``owner``'s records; return {key: new winning value or None}. One pass
        over the keys, each looked up once (a sync of 440,000 keys goes through here).

        ``index`` maps a key to its only owner (nearly every key), or to {owner: value}
        when several owners want it; a dict per key would double kube2sky's memory. The
        values of single-owner keys are not kept: a changed value shows as a changed
        fingerprint in ``owned[owner]``, and the rare key that becomes shared asks its
        other owner for its value again (``records_of``)."""
        old = self.owned.get(owner)
        new = OwnedKeys(records)
        if old == new:
            return {}
        index, changes = self.index, {}
        old_fingerprints = old.by_key() if old else {}
        # Only keys new to the owner or with another value: an endpoint change of a
        # headless service keeps nearly all of its records, and a key whose value stays
        # keeps its entry as it is (one comprehension instead of a loop step per key).
        get = old_fingerprints.get
        for key in [key for key, print_ in zip(new.keys, new.fingerprints)
                    if get(key) != print_]:
            value = records[key]
            entry = index.get(key)
            if entry is None:
                index[key] = owner
                changes[key] = value
            elif entry.__class__ is dict:
                was = entry[min(entry)]
                entry[owner] = value
                now = entry[min(entry)]
                if now != was:
                    changes[key] = now
            elif entry == owner:  # ours alone, and its value changed
                changes[key] = value
            else:  # another owner's alone until now: shared from here on
                was = self.records_of(entry)[key]
                entry = index[key] = {entry: was, owner: value}
                now = entry[min(entry)]
                if now != was:
                    changes[key] = now
        if old:
            for key in old_fingerprints.keys() - records.keys():
                entry = index[key]
                if entry.__class__ is not dict:  # ours alone
                    del index[key]
                    changes[key] = None
                    continue
                was = entry[min(entry)]
                del entry[owner]
                now = entry[min(entry)]
                if len(entry) == 1:
                    index[key] = next(iter(entry))  # one owner again
                if now != was:
                    changes[key] = now
        if records:
            self.owned[owner] = new
        else:
            self.owned.pop(owner, None)
        return changes

    def _report(self, owner, problems):
        """Log each of an owner's problems once, while it lasts."""
        if problems and self.problems.get(owner) != problems:
            before = self.problems.get(owner) or ()
            for problem in problems:
                if problem not in before:
                    log.warning("skipping %s", problem)
        if problems:
            self.problems[owner] = problems
        else:
            self.problems.pop(owner, None)

    # -- services and their endpoints ----------------------------------------------------

    def _service_records(self, ns, name):
        """(records, problems) of the service ``ns/name`` from the objects held."""
        service = self.services.get((ns, name))
        if service is None:
            return {}, []
        fqdn_slices = []
        try:  # an odd object (its own or an endpoint's) must never stop the sync
            if self.use_slices:
                slices = dict(self.slices.get((ns, name)) or {})  # decoded once
                groups = from_slices(slices.values()) if slices else None
                fqdn_slices = [f"endpointslice {ns}/{slice_name}: addressType FQDN is not "
                               "served" for slice_name, obj in sorted(slices.items())
                               if obj.get("addressType") == "FQDN"]
            else:
                endpoints = self.endpoints.get((ns, name))
                groups = from_endpoints(endpoints) if endpoints else None
            records, problems = service_records(self.layout, service, groups)
        except Exception as exc:
            records, problems = {}, [f"service {ns}/{name}: {describe_error(exc)}"]
        return records, problems + fqdn_slices

    def _service_changed(self, ns, name) -> dict:
        owner = ("svc", ns, name)
        records, problems = self._service_records(ns, name)
        if (ns, name) not in self.services:
            self.problems.pop(owner, None)
        else:
            self._report(owner, problems)
        return self._set_owner(owner, records)

    def set_service(self, obj):
        ns, name = meta(obj)
        self.services[(ns, name)] = obj
        return self._service_changed(ns, name)

    def delete_service(self, obj):
        ns, name = meta(obj)
        self.services.pop((ns, name), None)
        return self._service_changed(ns, name)

    def set_endpoints(self, obj):
        ns, name = meta(obj)
        self.endpoints[(ns, name)] = obj
        return {} if self.use_slices else self._service_changed(ns, name)

    def delete_endpoints(self, obj):
        ns, name = meta(obj)
        self.endpoints.pop((ns, name), None)
        return {} if self.use_slices else self._service_changed(ns, name)

    @staticmethod
    def _slice_service(obj):
        ns, slice_name = meta(obj)
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return ns, interned(labels.get(SERVICE_LABEL)), slice_name

    def set_slice(self, obj):
        ns, service, slice_name = self._slice_service(obj)
        changes = {}
        previous = self.slice_owner.get((ns, slice_name))
        if previous is not None and previous != service:
            # The slice's service-name label changed: detach it from the old service.
            old = {"metadata": {"namespace": ns, "name": slice_name,
                                "labels": {SERVICE_LABEL: previous}}}
            changes.update(self.delete_slice(old))
        if not service:
            return changes
        slices = self.slices.get((ns, service))
        if slices is None:
            slices = self.slices[(ns, service)] = Packed()
        slices[slice_name] = obj
        self.slice_owner[(ns, slice_name)] = service
        if self.use_slices:
            changes.update(self._service_changed(ns, service))
        return changes

    def delete_slice(self, obj):
        ns, service, slice_name = self._slice_service(obj)
        service = self.slice_owner.pop((ns, slice_name), service)
        slices = self.slices.get((ns, service))
        if slices is None:
            return {}
        slices.pop(slice_name, None)
        if not slices:
            del self.slices[(ns, service)]
        return self._service_changed(ns, service) if self.use_slices else {}

    # -- pods ----------------------------------------------------------------------------

    def set_pod(self, obj):
        if not self.pods_enabled:
            return {}
        ns, name = meta(obj)
        self.pods[(ns, name)] = obj
        records, problems = self._pod_records(ns, name)
        self._report(("pod", ns, name), problems)
        return self._set_owner(("pod", ns, name), records)

    def _pod_records(self, ns, name):
        """(records, problems) of the pod ``ns/name`` from the objects held; as for a
        service, an odd object empties its records instead of stopping the sync."""
        pod = self.pods.get((ns, name))
        if pod is None:
            return {}, []
        try:
            return pod_records(self.layout, pod)
        except Exception as exc:
            return {}, [f"pod {ns}/{name}: {describe_error(exc)}"]

    def delete_pod(self, obj):
        ns, name = meta(obj)
        self.pods.pop((ns, name), None)
        self.problems.pop(("pod", ns, name), None)
        return self._set_owner(("pod", ns, name), {})

    # -- relists -------------------------------------------------------------------------

    def _handlers(self, kind):
        return {
            "services": (self.set_service, self.delete_service),
            "endpoints": (self.set_endpoints, self.delete_endpoints),
            "pods": (self.set_pod, self.delete_pod),
            "endpointslices": (self.set_slice, self.delete_slice),
        }[kind]

    def _kept(self, kind) -> Packed:
        """The objects of one kind (not slices: those are kept per service)."""
        return {"services": self.services, "endpoints": self.endpoints, "pods": self.pods}[kind]

    def _held(self, kind) -> list:
        """The (namespace, name) of every object of one kind held now."""
        return list(self.slice_owner if kind == "endpointslices" else self._kept(kind))

    def _object(self, kind, key) -> dict:
        """The object of one kind held at ``key`` (namespace, name)."""
        if kind == "endpointslices":
            return self.slices[(key[0], self.slice_owner[key])][key[1]]
        return self._kept(kind)[key]

    def replace(self, kind, objects) -> dict:
        """A fresh list of one kind: apply deletions and changes, return the difference."""
        changes = self.apply_page(kind, objects)
        changes.update(self.end_list(kind, {meta(o) for o in objects}))
        return changes

    def apply_page(self, kind, objects) -> dict:
        """One page of a fresh list: every object set, none deleted yet."""
        setter, _ = self._handlers(kind)
        changes = {}
        for obj in objects:
            try:
                changes.update(setter(obj))
            except Exception as exc:
                self._cannot_take(kind, obj, exc)
        return changes

    def end_list(self, kind, listed) -> dict:
        """The list is complete: delete the objects held that it did not name."""
        _, deleter = self._handlers(kind)
        changes = {}
        for key in self._held(kind):
            if key not in listed:
                obj = self._object(kind, key)
                try:
                    changes.update(deleter(obj))
                except Exception as exc:
                    self._cannot_take(kind, obj, exc)
        return changes

    def handle(self, kind, event_type, obj) -> dict:
        """One watch event (ADDED/MODIFIED/DELETED) of one kind."""
        setter, deleter = self._handlers(kind)
        try:
            return deleter(obj) if event_type == "DELETED" else setter(obj)
        except Exception as exc:
            self._cannot_take(kind, obj, exc)
            return {}

    @staticmethod
    def _cannot_take(kind, obj, exc):
        """An object its handler cannot take (one no API server sends: labels that are a
        list, metadata that is a string) is skipped with a line saying which and why;
        raising would end the sync thread, and with it every record's updates."""
        metadata = obj.get("metadata") if isinstance(obj, Mapping) else None
        if isinstance(metadata, Mapping):
            name = f"{metadata.get('namespace')}/{metadata.get('name')}"
        else:
            name = "(without metadata)"
        log.warning("skipping %s %s: %s", kind, name, describe_error(exc))
