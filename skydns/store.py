"""The in-memory copy of the /skydns tree, fed by etcd (see etcdsync) and read by queries.

Records live in a trie keyed by key components (root-most first), so that a subdomain
query is one walk down plus a walk of the subtree, label boundaries are respected by
construction (``/dom`` never matches ``/dom1``), and a key and keys below it coexist.

A record is kept compact: a value of the plain shape (``record.plain_value``: every
value kube2sky writes) at a key of the plain form stays bytes, and its Record is built
when a query reads it; only other values are kept parsed. A key with nothing below it
has no node of its own: its value sits in its parent's dict. A cluster's hundreds of
thousands of records then cost little more than their bytes and their labels.

A full load is built off the reactor (``loader``, filled page by page as etcd sends them)
and put in place in one step (``install``). Apart from that the store only runs on the
reactor thread. Every change is reported to listeners with the changed key's labels, so
caches of computed answers can drop exactly what depends on it.
"""

from __future__ import annotations

import collections
import logging
import re
import sys
import time
import types

from .record import (MAX_NAME_WIRE, PLAIN_LABEL, PLAIN_LABEL_BYTES, Record, RecordError,
                     key_labels, parse_record, plain_record, plain_value)

log = logging.getLogger("skydns.store")

LABELS_SHARED = 4096  # leaf labels a load remembers to share equal ones (see Loader)

# The children of a node without any: one shared read-only mapping instead of a dict each.
NO_CHILDREN = types.MappingProxyType({})


class Node:
    """One key component with keys below it. ``value`` is None (no record here), a plain
    value's bytes, or a parsed Record; ``RecordStore.record_at`` gives the Record either
    way. A key with nothing below it (nearly every record) has no Node: its parent's
    ``children`` holds the bare value, and reads wrap it (``leaf``)."""

    __slots__ = ("children", "value")

    def __init__(self, value=None):
        self.children = NO_CHILDREN
        self.value = value


def leaf(entry) -> Node:
    """A child entry as a Node: itself, or a bare value wrapped for the reader."""
    return entry if entry.__class__ is Node else Node(entry)


class RecordStore:
    """All valid records under the path prefix, plus what was skipped and why."""

    def __init__(self, prefix: str = "skydns", clock=time.monotonic):
        self.prefix = prefix
        self.clock = clock
        self.root = Node()
        self.count = 0
        self.bad = {}                  # key -> reason, for keys whose value was skipped
        self.skipped = collections.Counter()  # reason kind -> values skipped (a counter)
        self.lease_expiry = {}         # lease id -> clock() when it runs out
        self.revision = 0
        self.loaded = False
        self.change_listeners = []     # f(labels: tuple) after a key changed
        self.reset_listeners = []      # f() after the whole tree was replaced
        self.config_listeners = []     # f(value: bytes | None) when /<prefix>/config changed
        # Keys whose values may be kept compact: ``key_of`` their labels gives them back.
        plain_key = re.escape("/" + prefix) + f"(?:{PLAIN_LABEL})+"
        self.plain_key = re.compile(plain_key)
        # The path above a plain key's last label (the prefix, then labels).
        self.plain_path_bytes = re.compile((re.escape("/" + prefix) +
                                            f"(?:{PLAIN_LABEL})*").encode())
        self.labels_start = len(prefix) + 2  # where the labels begin in such a key

    # -- feeding from etcd -------------------------------------------------------------

    def replace_all(self, items, revision: int, leases=None):
        """Load a full snapshot: ``items`` are (key, value, lease id) from one range read."""
        loader = self.loader()
        for key, value, lease in items:
            loader.add(key, value, lease)
        self.install(loader, revision, leases)

    def loader(self) -> "Loader":
        """A new, empty tree to fill with a full snapshot (on any thread), for ``install``."""
        return Loader(self)

    def install(self, loader: "Loader", revision: int, leases=None):
        """Serve the snapshot ``loader`` holds from now on (on the reactor thread)."""
        tree = loader.tree
        self.root, self.count, self.bad = tree.root, tree.count, tree.bad
        self.skipped.update(tree.skipped)
        self.lease_expiry = dict(leases or {})
        self.revision = revision
        self.loaded = True
        log.info("loaded %d records from etcd at revision %d (%d skipped)",
                 self.count, revision, len(self.bad))
        for listener in self.config_listeners:
            listener(loader.config_value)
        for listener in self.reset_listeners:
            listener()

    def apply_events(self, events, revision: int, leases=None):
        """Apply watch events: (kind, key, value, lease id), kind "put" or "delete"."""
        if leases:
            self.lease_expiry.update(leases)
        for kind, key, value, lease in events:
            try:
                self._apply_one(kind, key, value, lease)
            except Exception:  # never lose the other events of this response
                log.exception("could not apply the %s of %s; skipping it", kind, key)
        self.revision = max(self.revision, revision)

    def _apply_one(self, kind, key, value, lease):
        if self._is_config(key):
            for listener in self.config_listeners:
                listener(value if kind == "put" else None)
            return
        if kind == "put":
            self._put(key, value, lease)
        else:
            self._delete(key)
        labels = tuple(key_labels(key, self.prefix))
        for listener in self.change_listeners:
            listener(labels)

    def _is_config(self, key: str) -> bool:
        return key.strip("/") == self.prefix + "/config"

    def _put(self, key, value, lease, quiet=None):
        if (not lease and value.__class__ is bytes and len(key) <= MAX_NAME_WIRE
                and self.plain_key.fullmatch(key)):
            compact = plain_value(value)
            if compact is not None:  # valid by its shape; parsed when a query reads it
                self.bad.pop(key, None)
                self.insert(key[self.labels_start:].split("/"), compact)
                return
        labels = key_labels(key, self.prefix)
        if not labels:
            return
        try:
            record = parse_record(key, value, lease, labels)
        except RecordError as exc:
            self._skip(key, str(exc), exc.kind, quiet)
            return
        except Exception as exc:  # a bug or a value we did not foresee: still only this key
            self._skip(key, f"unexpected {exc.__class__.__name__} while parsing", "internal",
                       quiet)
            return
        self.bad.pop(key, None)
        self.insert(labels, record)

    def insert(self, labels, value):
        """Put ``value`` (a Record or a plain value's bytes) at ``labels``."""
        node = self.root
        for label in labels[:-1]:
            node = self.path_child(node, label)
        self.set_leaf(node, labels[-1], value)

    @staticmethod
    def path_child(node: Node, label: str) -> Node:
        """The child ``label`` of ``node`` as a Node, made (or made from a bare value) if
        needed. Labels on the way to a record ("svc", "cluster", namespaces, services) are
        shared by many keys: interned, one string each. Leaf labels (hashes, pod names)
        are mostly unique and are not."""
        children = node.children
        child = children.get(label)
        if child.__class__ is Node:
            return child
        if children is NO_CHILDREN:
            children = node.children = {}
        if child is None:
            label = sys.intern(label)
        child = children[label] = Node(child)
        return child

    def set_leaf(self, parent: Node, label: str, value):
        """Set the record ``label`` below ``parent``: a bare value unless keys lie below it."""
        children = parent.children
        entry = children.get(label)
        if entry.__class__ is Node:
            if entry.value is None:
                self.count += 1
            entry.value = value
            return
        if entry is None:
            if children is NO_CHILDREN:
                children = parent.children = {}
            self.count += 1
        children[label] = value

    def _skip(self, key, reason, kind, quiet=None):
        """Drop a bad value: the key serves nothing, and each distinct problem is logged
        and counted once (not on every rewrite of the same bad value)."""
        previous = self.bad.get(key, quiet)
        self._delete(key)
        if previous != reason:
            log.warning("skipping record %s: %s", key, reason)
            self.skipped[kind] += 1
        self.bad[key] = reason

    def _delete(self, key):
        self.bad.pop(key, None)
        labels = key_labels(key, self.prefix)
        if not labels:
            return
        path = [self.root]
        for label in labels[:-1]:
            node = path[-1].children.get(label)
            if node.__class__ is not Node:  # missing, or a leaf: nothing below it
                return
            path.append(node)
        parent, last = path[-1], labels[-1]
        entry = parent.children.get(last)
        if entry is None:
            return
        if entry.__class__ is Node:
            if entry.value is None:
                return
            entry.value = None
            self.count -= 1
            if entry.children:
                return
        else:
            self.count -= 1
        del parent.children[last]
        for i in range(len(path) - 1, 0, -1):  # prune the nodes left empty
            if path[i].value is not None or path[i].children:
                break
            del path[i - 1].children[labels[i - 1]]

    # -- reading -----------------------------------------------------------------------

    def node(self, labels) -> Node | None:
        """The node at ``labels`` (root-most first), or None: the name does not exist."""
        node = self.root
        for label in labels:
            if node.__class__ is not Node:
                return None
            node = node.children.get(label)
            if node is None:
                return None
        return leaf(node)

    def existing_depth(self, labels) -> int:
        """How many leading labels name a node that exists (the closest encloser's)."""
        node = self.root
        for depth, label in enumerate(labels):
            if node.__class__ is not Node:
                return depth
            node = node.children.get(label)
            if node is None:
                return depth
        return len(labels)

    def key_of(self, labels) -> str:
        """The key of ``labels`` as etcd holds it. Only values at keys of this exact form
        are kept as bytes, so the Record built from them has the key it came from."""
        return "/" + self.prefix + "/" + "/".join(labels)

    def record_at(self, node: Node, labels) -> Record | None:
        """The record of ``node``, found at ``labels``, or None. Plain values are parsed
        here, on every read, and not kept: answers are cached, records stay compact."""
        return self._record(node.value, labels)

    def _record(self, value, labels) -> Record | None:
        if value is None or value.__class__ is Record:
            return value
        return plain_record(self.key_of(labels), value)

    def exact(self, labels) -> Record | None:
        node = self.node(labels)
        return self.record_at(node, labels) if node else None

    def match(self, labels, wildcards=("*", "any")):
        """(labels, node) of the nodes matching ``labels``, where a wildcard label matches
        any one label."""
        found = [((), self.root)]
        for label in labels:
            nodes = [(path, n) for path, n in found if n.__class__ is Node]
            if label in wildcards:
                found = [(path + (child_label,), child) for path, n in nodes
                         for child_label, child in sorted(n.children.items())]
            else:
                found = [(path + (label,), n.children[label]) for path, n in nodes
                         if label in n.children]
            if not found:
                break
        return [(path, leaf(entry)) for path, entry in found]

    def subtree(self, node: Node, labels=(), skip_underscore: bool = False):
        """(relative labels, record) at and below ``node`` (found at ``labels``) in key
        order.

        With ``skip_underscore``, nothing below a label starting with ``_`` is returned
        (RFC 8552 attribute leaves are SRV data, see the query semantics).
        """
        out = []
        labels = tuple(labels)
        stack = [((), node)]
        while stack:
            rel, entry = stack.pop()
            if entry.__class__ is not Node:
                out.append((rel, self._record(entry, labels + rel)))
                continue
            if entry.value is not None:
                out.append((rel, self._record(entry.value, labels + rel)))
            children = entry.children
            for label in sorted(children, reverse=True):
                if skip_underscore and label.startswith("_"):
                    continue
                stack.append((rel + (label,), children[label]))
        return out

    def remaining_lease(self, lease: int) -> int | None:
        """Seconds left on an etcd lease, or None when it is not known."""
        expiry = self.lease_expiry.get(lease)
        if expiry is None:
            return None
        return max(0, int(expiry - self.clock()))


class Loader:
    """A full snapshot being read: a tree of its own, filled by ``add_page`` on the loading
    thread while the store goes on serving the old one, then ``RecordStore.install``-ed.
    Keys arrive sorted, so most share the parent of the one before: it is kept, and a
    plain record costs one regex for its key, one for its value and one dict insert. Equal
    values below one node (a headless endpoint's hashed and dashed-IP names) share one
    bytes object. A bad value already known to the store is not logged again."""

    def __init__(self, store: RecordStore):
        self.tree = RecordStore(store.prefix, store.clock)
        self.known_bad = dict(store.bad)
        self.config_value = None
        self.config_key = ("/" + store.prefix + "/config").encode()
        self.leases = set()
        self.keys = 0  # read, whether they became records or not
        self._parent_key = None  # the key of the node the last record went below, and it
        self._parent = None
        self._values = {}  # the values below that node: equal ones share one bytes object
        self._labels = {}  # leaf labels seen lately: equal ones share one str (see below)

    def add(self, key: str, value, lease: int = 0):
        self.keys += 1
        self._parent_key = None  # a bad value may prune the tree: walk afresh after it
        tree = self.tree
        if tree._is_config(key):
            self.config_value = value
            return
        if lease:
            self.leases.add(lease)
        tree._put(key, value, lease, quiet=self.known_bad.get(key))

    def add_page(self, kvs):
        """``add`` for each etcd KeyValue of a range reply: the common case inline. Keys
        come sorted, so the path above a key's last label is checked, and its node found,
        once for all the keys below it; each key's own label is checked by deleting the
        plain characters from it (what is left, if anything, is not plain)."""
        tree = self.tree
        plain_path, start, config_key = tree.plain_path_bytes.fullmatch, tree.labels_start, \
            self.config_key
        parent_key, parent, values = self._parent_key, self._parent, self._values
        labels = self._labels
        checked_path, path_ok = None, False
        keys = 0
        for kv in kvs:
            key = kv.key
            path, _, label = key.rpartition(b"/")
            if path != checked_path:
                checked_path, path_ok = path, plain_path(path) is not None
            compact = None
            if (path_ok and 0 < len(label) <= 63 and not label.translate(None, PLAIN_LABEL_BYTES)
                    and len(key) <= MAX_NAME_WIRE and not kv.lease and key != config_key):
                compact = plain_value(kv.value)
            if compact is None:
                self.add(key.decode("utf-8", "replace"), kv.value, kv.lease)
                parent_key = None
                continue
            keys += 1
            if path != parent_key:
                parent_key, parent, values = path, tree.root, {}
                for part in (path[start:].decode("ascii").split("/")
                             if len(path) >= start else ()):
                    parent = tree.path_child(parent, part)
            compact = values.setdefault(compact, compact)
            label = label.decode("ascii")
            label = labels.setdefault(label, label)
            if len(labels) > LABELS_SHARED:
                labels.clear()
            tree.set_leaf(parent, label, compact)
        self.keys += keys
        self._parent_key, self._parent, self._values = parent_key, parent, values
