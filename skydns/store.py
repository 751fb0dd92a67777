"""The in-memory copy of the /skydns tree, fed by etcd (see etcdsync) and read by queries.

Records live in a trie keyed by key components (root-most first), so that a subdomain
query is one walk down plus a walk of the subtree, label boundaries are respected by
construction (``/dom`` never matches ``/dom1``), and a key and keys below it coexist.

The store only runs on the reactor thread. Every change is reported to listeners with the
changed key's labels, so caches of computed answers can drop exactly what depends on it.
"""

from __future__ import annotations

import collections
import logging
import sys
import time

from .record import Record, RecordError, key_labels, parse_record

log = logging.getLogger("skydns.store")


class Node:
    __slots__ = ("children", "record")

    def __init__(self):
        self.children = {}
        self.record = None


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

    # -- feeding from etcd -------------------------------------------------------------

    def replace_all(self, items, revision: int, leases=None):
        """Load a full snapshot: ``items`` are (key, value, lease id) from one range read."""
        self.root = Node()
        self.count = 0
        old_bad, self.bad = self.bad, {}
        self.lease_expiry = dict(leases or {})
        config_value = None
        for key, value, lease in items:
            if self._is_config(key):
                config_value = value
                continue
            self._put(key, value, lease, quiet=old_bad.get(key))
        self.revision = revision
        self.loaded = True
        log.info("loaded %d records from etcd at revision %d (%d skipped)",
                 self.count, revision, len(self.bad))
        for listener in self.config_listeners:
            listener(config_value)
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
        node = self.root
        for label in labels:
            child = node.children.get(label)
            if child is None:
                # Interned: "svc", "cluster", namespaces... are shared by many keys.
                child = node.children[sys.intern(label)] = Node()
            node = child
        if node.record is None:
            self.count += 1
        node.record = record

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
        path = [self.root]
        node = self.root
        for label in labels:
            node = node.children.get(label)
            if node is None:
                return
            path.append(node)
        if node.record is not None:
            node.record = None
            self.count -= 1
        for i in range(len(labels), 0, -1):  # prune empty nodes
            if path[i].record is None and not path[i].children:
                del path[i - 1].children[labels[i - 1]]
            else:
                break

    # -- reading -----------------------------------------------------------------------

    def node(self, labels) -> Node | None:
        """The node at ``labels`` (root-most first), or None: the name does not exist."""
        node = self.root
        for label in labels:
            node = node.children.get(label)
            if node is None:
                return None
        return node

    def existing_depth(self, labels) -> int:
        """How many leading labels name a node that exists (the closest encloser's)."""
        node = self.root
        for depth, label in enumerate(labels):
            node = node.children.get(label)
            if node is None:
                return depth
        return len(labels)

    def exact(self, labels) -> Record | None:
        node = self.node(labels)
        return node.record if node else None

    def match(self, labels, wildcards=("*", "any")):
        """Nodes matching ``labels``, where a wildcard label matches any one label."""
        nodes = [self.root]
        for label in labels:
            if label in wildcards:
                nodes = [child for n in nodes for _, child in sorted(n.children.items())]
            else:
                nodes = [n.children[label] for n in nodes if label in n.children]
            if not nodes:
                break
        return nodes

    @staticmethod
    def subtree(node: Node, skip_underscore: bool = False):
        """(relative labels, record) at and below ``node`` in key order.

        With ``skip_underscore``, nothing below a label starting with ``_`` is returned
        (RFC 8552 attribute leaves are SRV data, see the query semantics).
        """
        out = []
        stack = [((), node)]
        while stack:
            rel, n = stack.pop()
            if n.record is not None:
                out.append((rel, n.record))
            for label in sorted(n.children, reverse=True):
                if skip_underscore and label.startswith("_"):
                    continue
                stack.append((rel + (label,), n.children[label]))
        return out

    def remaining_lease(self, lease: int) -> int | None:
        """Seconds left on an etcd lease, or None when it is not known."""
        expiry = self.lease_expiry.get(lease)
        if expiry is None:
            return None
        return max(0, int(expiry - self.clock()))
