"""What kube2sky keeps of an API object, and the decoders that build it from the API's JSON.

``slim()`` and ``slim_pod()`` keep the fields the records read (no managedFields, owner
references, unrelated annotations or spec fields: big clusters carry kilobytes of those
per object), in the API's shape, so slimming a slim object changes nothing. kube2sky holds
its services, slices and pods for as long as they exist, 35,000 of them in a big cluster.

``KindDecoder`` decodes a list page or a watch event with msgspec into only those fields
(msgspec skips the unknown ones in C, without building them), then slims that. json.loads
of the whole page and slim() of every object were a quarter of a restart's CPU at 490,000
records. An object msgspec will not take in the schema's shape (a spec that is null, a port
that is not an object) sends its page back through json.loads and slim(), so an odd object
gives exactly what it gave before.
"""

from __future__ import annotations

import json
import logging
from typing import Any, TypedDict

import msgspec

from .records import HOSTNAMES_ANNOTATION, meta

log = logging.getLogger("kube2sky.slim")

# What the records read of a Service's spec, of its ports, and of a slice's endpoints.
SERVICE_SPEC = ("type", "clusterIP", "clusterIPs", "externalName", "ports",
                "publishNotReadyAddresses")
PORT_FIELDS = ("name", "port", "protocol")
NOT_READY = {"ready": False}  # shared by every not-ready endpoint (never changed)


def slim(obj: dict) -> dict:
    """A Service, Endpoints or EndpointSlice reduced to what its records read."""
    metadata = _mapping(obj.get("metadata"))
    kept = {k: metadata[k] for k in ("namespace", "name", "labels") if k in metadata}
    hostnames = _mapping(metadata.get("annotations")).get(HOSTNAMES_ANNOTATION)
    if hostnames:
        kept["annotations"] = {HOSTNAMES_ANNOTATION: hostnames}
    out = {k: v for k, v in obj.items() if k in ("subsets", "addressType")}
    spec = obj.get("spec")
    if isinstance(spec, dict):
        out["spec"] = {k: spec[k] for k in SERVICE_SPEC if k in spec}
        if isinstance(spec.get("ports"), list):
            out["spec"]["ports"] = [_slim_port(p) for p in spec["ports"]]
    elif spec is not None:
        out["spec"] = spec
    if "ports" in obj:
        out["ports"] = ([_slim_port(p) for p in obj["ports"]]
                        if isinstance(obj["ports"], list) else obj["ports"])
    if "endpoints" in obj:
        out["endpoints"] = ([_slim_endpoint(e) for e in obj["endpoints"]]
                            if isinstance(obj["endpoints"], list) else obj["endpoints"])
    out["metadata"] = kept
    return out


def _mapping(value) -> dict:
    """A JSON object, or {} for null and for what is no object (an odd object must not stop
    the list it is in)."""
    return value if isinstance(value, dict) else {}


def _slim_port(port):
    return {k: port[k] for k in PORT_FIELDS if k in port} if isinstance(port, dict) else port


def _slim_endpoint(endpoint):
    """A slice endpoint: its addresses, hostname and readiness (absent means ready)."""
    if not isinstance(endpoint, dict):
        return endpoint
    out = {"addresses": endpoint.get("addresses")}
    if endpoint.get("hostname"):
        out["hostname"] = endpoint["hostname"]
    ready = _mapping(endpoint.get("conditions")).get("ready")
    if ready is not None and not ready:
        out["conditions"] = NOT_READY
    return out


def slim_pod(obj: dict) -> dict:
    """What a pod's records need: thousands of pods must not cost their full specs."""
    ns, name = meta(obj)
    status = _mapping(obj.get("status"))
    kept = {"podIP": status.get("podIP")}
    pod_ips = status.get("podIPs")
    if pod_ips is not None and pod_ips != [{"ip": kept["podIP"]}]:  # the usual pod says
        kept["podIPs"] = pod_ips                                     # its one IP twice
    return {"metadata": {"namespace": ns, "name": name}, "status": kept}


# -- the same fields as msgspec schemas (total=False: a field may be absent) -------------
# Leaves are Any, so any JSON value passes as json.loads gives it; only the nesting the
# slimmers walk is typed (or null), and that is what lets msgspec skip everything else.

class _Port(TypedDict, total=False):
    name: Any
    port: Any
    protocol: Any


class _Conditions(TypedDict, total=False):
    ready: Any


class _Endpoint(TypedDict, total=False):
    addresses: Any
    hostname: Any
    conditions: _Conditions | None


class _Spec(TypedDict, total=False):
    type: Any
    clusterIP: Any
    clusterIPs: Any
    externalName: Any
    ports: list[_Port] | None
    publishNotReadyAddresses: Any


_Annotations = TypedDict("_Annotations", {HOSTNAMES_ANNOTATION: Any}, total=False)


class _Metadata(TypedDict, total=False):
    namespace: Any
    name: Any
    labels: Any
    annotations: _Annotations | None
    resourceVersion: Any  # where a watch goes on from (slim drops it)


class _Object(TypedDict, total=False):
    """A Service, Endpoints or EndpointSlice: the fields ``slim`` keeps."""
    metadata: _Metadata | None
    spec: _Spec | None
    subsets: Any
    addressType: Any
    ports: list[_Port] | None
    endpoints: list[_Endpoint] | None


class _PodMetadata(TypedDict, total=False):
    namespace: Any
    name: Any
    resourceVersion: Any


class _PodStatus(TypedDict, total=False):
    podIP: Any
    podIPs: Any


class _Pod(TypedDict, total=False):
    metadata: _PodMetadata | None
    status: _PodStatus | None


_ListMetadata = TypedDict("_ListMetadata", {"resourceVersion": Any, "continue": Any},
                          total=False)


class _Event(TypedDict, total=False):
    type: Any
    object: msgspec.Raw  # decoded by its type: an ERROR event carries a Status


CHANGES = ("ADDED", "MODIFIED", "DELETED")  # the watch events that carry an object


class KindDecoder:
    """List pages and watch events of one kind, decoded straight into the slim form."""

    def __init__(self, kind: str):
        self.kind = kind
        schema, self.slimmer = (_Pod, slim_pod) if kind == "pods" else (_Object, slim)
        page = TypedDict(f"_{kind}List", {"items": list[schema], "metadata": _ListMetadata},
                         total=False)
        self._page = msgspec.json.Decoder(page)
        self._object = msgspec.json.Decoder(schema)
        self._event = msgspec.json.Decoder(_Event)

    def page(self, data: bytes) -> tuple[list[dict], dict]:
        """(slim items, the list's metadata) of one list response body."""
        try:
            decoded = self._page.decode(data)
        except msgspec.DecodeError as exc:
            log.info("%s: a list page not in the usual shape (%s): decoded with json",
                     self.kind, exc)
            decoded = json.loads(data)
            if not isinstance(decoded, dict):
                raise ValueError(f"a list of {self.kind} that is not a JSON object") from None
        slimmer = self.slimmer
        items = [slimmer(obj) for obj in decoded.get("items") or []]
        return items, decoded.get("metadata") or {}

    def event(self, line: bytes | str) -> tuple[Any, dict, Any]:
        """(type, object, resourceVersion) of one watch event: the object slim, an ERROR's
        Status and a BOOKMARK as sent."""
        try:
            event = self._event.decode(line)
            kind, raw = event.get("type"), event.get("object")
            obj = {} if raw is None else (self._object.decode(raw) if kind in CHANGES
                                          else json.loads(bytes(raw)) or {})
        except msgspec.DecodeError:
            event = json.loads(line)
            kind, obj = event.get("type"), event.get("object") or {}
        version = (obj.get("metadata") or {}).get("resourceVersion")
        return kind, self.slimmer(obj) if kind in CHANGES else obj, version
