"""Label and field selectors, as the Kubernetes API accepts them in query strings.

Label selectors (``?labelSelector=``) support the grammar clients actually send:

* equality: ``a=b``, ``a==b``, ``a!=b``
* sets: ``a in (x,y)``, ``a notin (x,y)``
* existence: ``a`` and ``!a``

Requirements are separated by commas and all must hold.  Field selectors
(``?fieldSelector=``) support ``path=value``, ``path==value`` and ``path!=value``
on any dotted path of the object (``metadata.name``, ``metadata.namespace``,
``spec.nodeName``, ``status.phase`` ...); a real API server accepts only a few
documented fields per kind, this emulator is more lenient.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

__all__ = ["SelectorError", "parse_label_selector", "parse_field_selector", "selector_matcher"]


class SelectorError(ValueError):
    """The selector text cannot be parsed (the API answers 400 BadRequest)."""


_KEY = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
_SET_RE = re.compile(r"^(?P<key>%s)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$" % _KEY)
_CMP_RE = re.compile(r"^(?P<key>%s)\s*(?P<op>==|=|!=)\s*(?P<value>[-A-Za-z0-9_.]*)$" % _KEY)
_EXISTS_RE = re.compile(r"^(?P<neg>!?)\s*(?P<key>%s)$" % _KEY)


def _split_terms(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    terms, depth, current = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError("unbalanced parentheses in selector %r" % text)
        if ch == "," and depth == 0:
            terms.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth:
        raise SelectorError("unbalanced parentheses in selector %r" % text)
    terms.append("".join(current))
    return [t.strip() for t in terms]


def parse_label_selector(text: str | None) -> list[tuple[str, str, tuple[str, ...]]]:
    """Parse a label selector into ``(key, op, values)`` requirements.

    ``op`` is one of ``=``, ``!=``, ``in``, ``notin``, ``exists``, ``!exists``.
    An empty or missing selector selects everything.
    """
    if not text or not text.strip():
        return []
    requirements = []
    for term in _split_terms(text):
        if not term:
            raise SelectorError("empty requirement in selector %r" % text)
        m = _SET_RE.match(term)
        if m:
            values = tuple(v.strip() for v in m.group("values").split(",") if v.strip())
            requirements.append((m.group("key"), m.group("op"), values))
            continue
        m = _CMP_RE.match(term)
        if m:
            op = "!=" if m.group("op") == "!=" else "="
            requirements.append((m.group("key"), op, (m.group("value"),)))
            continue
        m = _EXISTS_RE.match(term)
        if m:
            requirements.append((m.group("key"), "!exists" if m.group("neg") else "exists", ()))
            continue
        raise SelectorError("unable to parse requirement %r" % term)
    return requirements


def labels_match(requirements, labels: Mapping[str, str] | None) -> bool:
    labels = labels or {}
    for key, op, values in requirements:
        present = key in labels
        value = labels.get(key)
        if op == "=":
            ok = present and value == values[0]
        elif op == "!=":
            ok = not present or value != values[0]
        elif op == "in":
            ok = present and value in values
        elif op == "notin":
            ok = not present or value not in values
        elif op == "exists":
            ok = present
        else:  # "!exists"
            ok = not present
        if not ok:
            return False
    return True


def parse_field_selector(text: str | None) -> list[tuple[str, str, str]]:
    """Parse ``path=value,path!=value`` into ``(path, op, value)`` requirements."""
    if not text or not text.strip():
        return []
    requirements = []
    for term in _split_terms(text):
        m = re.match(r"^([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*)$", term)
        if not m:
            raise SelectorError("invalid field selector requirement %r" % term)
        requirements.append((m.group(1), "!=" if m.group(2) == "!=" else "=", m.group(3).strip()))
    return requirements


def _field_value(obj: Mapping[str, Any], path: str) -> str:
    node: Any = obj
    for part in path.split("."):
        if not isinstance(node, Mapping):
            return ""
        node = node.get(part)
    if node is None:
        return ""
    if isinstance(node, bool):
        return "true" if node else "false"
    return str(node)


def fields_match(requirements, obj: Mapping[str, Any]) -> bool:
    for path, op, value in requirements:
        actual = _field_value(obj, path)
        if (actual == value) != (op == "="):
            return False
    return True


def selector_matcher(label_selector: str | None = None,
                     field_selector: str | None = None) -> Callable[[Mapping[str, Any]], bool]:
    """Return ``match(obj) -> bool`` for the given selector strings.

    Raises :class:`SelectorError` when either selector cannot be parsed.
    """
    labels_req = parse_label_selector(label_selector)
    fields_req = parse_field_selector(field_selector)
    if not labels_req and not fields_req:
        return lambda obj: True

    def match(obj):
        meta = obj.get("metadata") or {}
        return labels_match(labels_req, meta.get("labels")) and fields_match(fields_req, obj)

    return match
