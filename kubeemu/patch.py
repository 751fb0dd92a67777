"""PATCH bodies: JSON merge patch, strategic merge patch (approximated) and JSON patch.

* ``application/merge-patch+json`` -- RFC 7386, exactly.
* ``application/strategic-merge-patch+json`` -- what ``kubectl apply``/``kubectl patch``
  and the Python client send for dict bodies.  A real API server drives it from the Go
  struct tags of every type; this emulator knows the merge keys of the lists that matter
  for the kinds it serves (service ports by ``port``, containers/env/volumes by ``name``,
  status conditions by ``type``, owner references by ``uid`` ...) and treats every other
  list as atomic (replaced whole), which is what the real strategy is for most lists
  anyway.  Directives ``$patch: replace|delete``, ``$retainKeys``,
  ``$setElementOrder/<field>`` and ``$deleteFromPrimitiveList/<field>`` are honoured.
* ``application/json-patch+json`` -- RFC 6902, by the ``jsonpatch`` library.

Server-side apply (``application/apply-patch+yaml``) is not implemented; the HTTP layer
answers 415 for it.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch

__all__ = ["PatchError", "merge_patch", "strategic_merge_patch", "json_patch"]


class PatchError(ValueError):
    """The patch cannot be applied (the API answers 422 or 400)."""


# ---------------------------------------------------------------------------- merge patch

def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch; returns a new value and leaves both inputs alone."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# ------------------------------------------------------------------ strategic merge patch

# Field path (list indexes omitted) -> the patchMergeKey of that list in the Go types.
MERGE_KEYS: dict[tuple[str, ...], str] = {
    ("metadata", "ownerReferences"): "uid",
    ("spec", "ports"): "port",                      # Service
    ("spec", "volumes"): "name",                    # Pod
    ("spec", "imagePullSecrets"): "name",
    ("spec", "hostAliases"): "ip",
    ("status", "conditions"): "type",
    ("status", "podIPs"): "ip",
    ("status", "hostIPs"): "ip",
}
for _containers in ("containers", "initContainers", "ephemeralContainers"):
    MERGE_KEYS[("spec", _containers)] = "name"
    MERGE_KEYS[("spec", _containers, "ports")] = "containerPort"
    MERGE_KEYS[("spec", _containers, "env")] = "name"
    MERGE_KEYS[("spec", _containers, "volumeMounts")] = "mountPath"
    MERGE_KEYS[("spec", _containers, "volumeDevices")] = "devicePath"

# Lists of scalars whose strategy is "merge" (union) rather than replace.
PRIMITIVE_MERGE: set[tuple[str, ...]] = {("metadata", "finalizers")}

_SET_ORDER = "$setElementOrder/"
_DELETE_PRIMITIVE = "$deleteFromPrimitiveList/"


def _strip(value: Any) -> Any:
    """Remove patch directives from a value that is inserted as is."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def strategic_merge_patch(original: Any, patch: Any) -> Any:
    """Apply a strategic merge patch to ``original`` (see the module doc for the scope)."""
    if not isinstance(patch, dict):
        raise PatchError("a strategic merge patch must be a JSON object")
    result = _smp_map(original if isinstance(original, dict) else {}, patch, ())
    return result if result is not None else {}


def _smp_map(original: dict, patch: dict, path: tuple[str, ...]) -> dict | None:
    directive = patch.get("$patch")
    if directive == "replace":
        return _strip(patch)
    if directive == "delete":
        return None
    if directive is not None:
        raise PatchError("unknown patch directive %r" % directive)
    result = copy.deepcopy(original) if isinstance(original, dict) else {}
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith(_SET_ORDER):
            continue
        if key.startswith(_DELETE_PRIMITIVE):
            field = key[len(_DELETE_PRIMITIVE):]
            if isinstance(result.get(field), list):
                result[field] = [v for v in result[field] if v not in (value or [])]
            continue
        if value is None:
            result.pop(key, None)
            continue
        sub = path + (key,)
        if isinstance(value, dict):
            merged = _smp_map(result.get(key), value, sub)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            result[key] = _smp_list(result.get(key), value, sub)
        else:
            result[key] = value
    for key, order in patch.items():
        if key.startswith(_SET_ORDER) and isinstance(result.get(key[len(_SET_ORDER):]), list):
            field = key[len(_SET_ORDER):]
            result[field] = _reorder(result[field], order or [], MERGE_KEYS.get(path + (field,)))
    retain = patch.get("$retainKeys")
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _smp_list(original: Any, patch: list, path: tuple[str, ...]) -> list:
    original = copy.deepcopy(original) if isinstance(original, list) else []
    if path in PRIMITIVE_MERGE:
        return original + [v for v in patch if v not in original]
    merge_key = MERGE_KEYS.get(path)
    if merge_key is None or not all(isinstance(item, dict) for item in patch):
        return [_strip(item) for item in patch
                if not (isinstance(item, dict) and item.get("$patch") == "replace" and len(item) == 1)]
    if any(item.get("$patch") == "replace" for item in patch):
        return [_strip(item) for item in patch if item.get("$patch") != "replace"]
    result = original
    for item in patch:
        key = item.get(merge_key)
        index = next((i for i, old in enumerate(result)
                      if isinstance(old, dict) and old.get(merge_key) == key), None)
        if item.get("$patch") == "delete":
            result = [old for old in result
                      if not (isinstance(old, dict) and old.get(merge_key) == key)]
            continue
        if index is None:
            result.append(_strip(item))
        else:
            merged = _smp_map(result[index], item, path)
            if merged is None:
                del result[index]
            else:
                result[index] = merged
    return result


def _reorder(items: list, order: list, merge_key: str | None) -> list:
    def ident(item):
        return item.get(merge_key) if merge_key and isinstance(item, dict) else item
    wanted = [ident(o) if merge_key else o for o in order]
    ranked = [(wanted.index(ident(item)) if ident(item) in wanted else len(wanted) + i, item)
              for i, item in enumerate(items)]
    return [item for _, item in sorted(ranked, key=lambda pair: pair[0])]


# ---------------------------------------------------------------------------- JSON patch

def json_patch(document: Any, operations: Any) -> Any:
    """Apply an RFC 6902 JSON patch; returns a new document.

    A JSON patch is a list (``jsonpatch`` would also read a JSON text). TypeError is the
    error of jsonpatch 1.33 for operations of the wrong shape (a non-string ``from``...)."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a list of operations")
    try:
        return jsonpatch.apply_patch(document, operations)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError) as exc:
        raise PatchError(str(exc)) from None
