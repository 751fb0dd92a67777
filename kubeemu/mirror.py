"""EndpointSlice mirroring, like the ``endpointslicemirroring-controller.k8s.io`` controller.

A real cluster mirrors Endpoints that clients write (for services without a selector)
into EndpointSlices.  The emulator has no pod-driven endpoints/endpointslice controllers,
so it mirrors *every* Endpoints object clients write, whether or not its service has a
selector: a consumer sees the same endpoints whether it watches Endpoints or
EndpointSlices.  Endpoints labelled ``endpointslice.kubernetes.io/skip-mirror: "true"``
are skipped, as in a real cluster.

Each subset becomes one slice per address family, named
``<endpoints-name>-mirror-<hash of family and ports>`` (a real cluster uses a random
``generateName`` suffix), labelled ``kubernetes.io/service-name`` and
``endpointslice.kubernetes.io/managed-by``.  Slices are not split at 1000 endpoints, and
slices edited by clients are not put back.
"""

from __future__ import annotations

import hashlib
import json

from .store import Event, Store

__all__ = ["MANAGED_BY", "SERVICE_NAME", "mirror_endpoints", "slices_for"]

MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
CONTROLLER = "endpointslicemirroring-controller.k8s.io"
SERVICE_NAME = "kubernetes.io/service-name"
SKIP_MIRROR = "endpointslice.kubernetes.io/skip-mirror"


def _family(ip: str) -> str:
    return "IPv6" if ":" in ip else "IPv4"


def _endpoint(address: dict, ready: bool) -> dict:
    endpoint = {"addresses": [address["ip"]], "conditions": {"ready": ready}}
    for key in ("hostname", "nodeName", "targetRef"):
        if address.get(key):
            endpoint[key] = address[key]
    return endpoint


def slices_for(endpoints: dict) -> list[dict]:
    """The EndpointSlices that mirror an Endpoints object (without store metadata)."""
    meta = endpoints["metadata"]
    name, namespace = meta["name"], meta.get("namespace", "default")
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k != SKIP_MIRROR}
    labels.update({SERVICE_NAME: name, MANAGED_BY: CONTROLLER})
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if k not in ("kubectl.kubernetes.io/last-applied-configuration",
                                "endpoints.kubernetes.io/last-change-trigger-time")}
    by_name: dict[str, dict] = {}
    for subset in endpoints.get("subsets") or []:
        ports = [{k: p[k] for k in ("name", "port", "protocol", "appProtocol") if k in p}
                 for p in subset.get("ports") or []]
        for family in ("IPv4", "IPv6"):
            eps = [_endpoint(a, True) for a in subset.get("addresses") or []
                   if _family(a["ip"]) == family]
            eps += [_endpoint(a, False) for a in subset.get("notReadyAddresses") or []
                    if _family(a["ip"]) == family]
            if not eps:
                continue
            digest = hashlib.sha256(json.dumps([family, ports], sort_keys=True).encode())
            slice_name = "%s-mirror-%s" % (name[:230], digest.hexdigest()[:8])
            if slice_name in by_name:        # same family and ports in two subsets
                by_name[slice_name]["endpoints"].extend(eps)
                continue
            body = {
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {
                    "name": slice_name, "namespace": namespace, "labels": dict(labels),
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Endpoints",
                                         "name": name, "uid": meta.get("uid", ""),
                                         "controller": True, "blockOwnerDeletion": True}],
                },
                "addressType": family, "endpoints": eps, "ports": ports,
            }
            if annotations:
                body["metadata"]["annotations"] = dict(annotations)
            by_name[slice_name] = body
    return list(by_name.values())


def mirror_endpoints(store: Store, event: Event) -> None:
    """Store listener: bring the mirrored slices in line with one Endpoints change."""
    if event.resource != "endpoints":
        return
    meta = event.object["metadata"]
    name, namespace = meta["name"], meta.get("namespace", "default")
    skip = (meta.get("labels") or {}).get(SKIP_MIRROR) == "true"
    wanted = {} if event.type == "DELETED" or skip else \
        {s["metadata"]["name"]: s for s in slices_for(event.object)}
    existing, _, _, _ = store.list(
        "endpointslices", namespace,
        lambda s: (s["metadata"].get("labels") or {}).get(SERVICE_NAME) == name and
        (s["metadata"].get("labels") or {}).get(MANAGED_BY) == CONTROLLER)
    have = {s["metadata"]["name"]: s for s in existing}
    for slice_name, old in have.items():
        if slice_name not in wanted:
            store.delete("endpointslices", namespace, slice_name)
    for slice_name, body in wanted.items():
        if slice_name in have:
            store.update("endpointslices", body, namespace, slice_name)
        else:
            store.create("endpointslices", body, namespace)
