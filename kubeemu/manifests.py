"""Reading Kubernetes manifests (YAML or JSON, multi-document, ``kind: List``)."""

from __future__ import annotations

import json
from typing import Any, Iterable

__all__ = ["load_documents", "parse_documents"]


def parse_documents(text: str) -> list[dict[str, Any]]:
    """The objects in a manifest text; ``List`` objects are flattened into their items."""
    stripped = text.lstrip()
    if stripped.startswith("{") or stripped.startswith("["):
        data = json.loads(text)
        docs: Iterable[Any] = data if isinstance(data, list) else [data]
    else:
        try:
            import yaml
        except ImportError:  # pragma: no cover - PyYAML comes with the kubernetes client
            raise RuntimeError("YAML manifests need PyYAML (pip install pyyaml)") from None
        docs = list(yaml.safe_load_all(text))
    out: list[dict[str, Any]] = []
    for doc in docs:
        if not doc:
            continue
        if not isinstance(doc, dict):
            raise ValueError("a manifest document must be an object, not %r" % type(doc).__name__)
        if str(doc.get("kind", "")).endswith("List") and isinstance(doc.get("items"), list):
            out.extend(item for item in doc["items"] if item)
        else:
            out.append(doc)
    return out


def load_documents(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return parse_documents(handle.read())
