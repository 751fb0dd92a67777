"""What kube2sky keeps of an API object, and the decoders that build it from the API's JSON.

``slim()`` and ``slim_pod()`` keep the fields the records read (no managedFields, owner
references, unrelated annotations or spec fields: big clusters carry kilobytes of those
per object), in the API's shape, so slimming a slim object changes nothing. kube2sky holds
its services, slices and pods for as long as they exist, 35,000 of them in a big cluster.

``Packed`` holds such objects as their JSON text and decodes one when it is read: a big
cluster's 35,000 slim objects are ~65 MiB as Python dicts, lists and strings, and ~13 MiB
as text, while kube2sky reads an object only to compute its owner's records again.

``KindDecoder`` decodes a list page or a watch event with msgspec into only those fields
(msgspec skips the unknown ones in C, without building them), then slims that. json.loads
of the whole page and slim() of every object were a quarter of a restart's CPU at 490,000
records. An object msgspec will not take in the schema's shape (a spec that is a string, a
port that is not an object) sends its page back through json.loads and slim(), so an odd
object gives exactly what it gave before.
"""

from __future__ import annotations

import json
import logging
from collections.abc import MutableMapping
from typing import Any, Optional, TypedDict

import msgspec

from .records import HOSTNAMES_ANNOTATION, meta

log = logging.getLogger("kube2sky.slim")

# What the records read: of an object's metadata, of the object itself, of a Service's spec,
# of a port, of a slice's endpoint, and of a pod's status. The msgspec schemas further
# down are made from these, so they decode exactly what the slimmers read.
METADATA_FIELDS = ("namespace", "name", "labels")
OBJECT_FIELDS = ("subsets", "addressType")
SERVICE_SPEC = ("type", "clusterIP", "clusterIPs", "externalName", "ports",
                "publishNotReadyAddresses", "externalIPs")
INGRESS_FIELDS = ("ip", "hostname")  # of a Service's status.loadBalancer.ingress[]
PORT_FIELDS = ("name", "port", "protocol")
ENDPOINT_FIELDS = ("addresses", "hostname")
POD_STATUS = ("podIP", "podIPs")
NOT_READY = {"ready": False}  # shared by every not-ready endpoint (never changed)
POD_SPEC = ("hostNetwork",)
HOST_NETWORK = {"hostNetwork": True}  # shared by every hostNetwork pod (never changed)


def slim(obj: dict) -> dict:
    """A Service, Endpoints or EndpointSlice reduced to what its records read."""
    metadata = _mapping(obj.get("metadata"))
    kept = {k: metadata[k] for k in METADATA_FIELDS if k in metadata}
    hostnames = _mapping(metadata.get("annotations")).get(HOSTNAMES_ANNOTATION)
    if hostnames:
        kept["annotations"] = {HOSTNAMES_ANNOTATION: hostnames}
    out = {k: obj[k] for k in OBJECT_FIELDS if k in obj}
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
    ingress = _mapping(_mapping(obj.get("status")).get("loadBalancer")).get("ingress")
    if ingress:  # a LoadBalancer's addresses (k8s_external, see records.external_records)
        out["status"] = {"loadBalancer": {"ingress": (
            [_slim_ingress(i) for i in ingress] if isinstance(ingress, list) else ingress)}}
    out["metadata"] = kept
    return out


def _slim_ingress(ingress):
    if not isinstance(ingress, dict):
        return ingress
    return {k: ingress[k] for k in INGRESS_FIELDS if k in ingress}


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
    slimmed = {"metadata": {"namespace": ns, "name": name}, "status": kept}
    if _mapping(obj.get("spec")).get("hostNetwork") is True:  # its record is marked so
        slimmed["spec"] = HOST_NETWORK                         # (records.pod_records)
    return slimmed


# -- the same fields as msgspec schemas ---------------------------------------------------

def _schema(name, fields=(), **nested):
    """A TypedDict of ``fields``, any JSON value each (as json.loads gives it), and of
    ``nested`` ones, of the type given or null; any field may be absent. Only the nesting
    the slimmers walk is typed, and that is what lets msgspec skip everything else."""
    types = dict.fromkeys(fields, Any)
    types.update((key, Optional[kind]) for key, kind in nested.items())
    return TypedDict(name, types, total=False)


_RESOURCE_VERSION = ("resourceVersion",)  # where a watch goes on from (slim drops it)
_Port = _schema("_Port", PORT_FIELDS)
_OBJECT = _schema(  # a Service, Endpoints or EndpointSlice: what ``slim`` keeps
    "_Object", OBJECT_FIELDS,
    metadata=_schema("_Metadata", METADATA_FIELDS + _RESOURCE_VERSION,
                     annotations=_schema("_Annotations", (HOSTNAMES_ANNOTATION,))),
    spec=_schema("_Spec", SERVICE_SPEC, ports=list[_Port]),
    ports=list[_Port],
    endpoints=list[_schema("_Endpoint", ENDPOINT_FIELDS,
                           conditions=_schema("_Conditions", ("ready",)))],
    status=_schema("_Status", loadBalancer=_schema(
        "_LoadBalancer", ingress=list[_schema("_Ingress", INGRESS_FIELDS)])))
_POD = _schema("_Pod", metadata=_schema("_PodMetadata", ("namespace", "name")
                                        + _RESOURCE_VERSION),
               status=_schema("_PodStatus", POD_STATUS),
               spec=_schema("_PodSpec", POD_SPEC))
_LIST_METADATA = _schema("_ListMetadata", _RESOURCE_VERSION + ("continue",))
# A watch event's object is decoded by its type: an ERROR event carries a Status.
_EVENT = msgspec.json.Decoder(TypedDict("_Event", {"type": Any, "object": msgspec.Raw},
                                        total=False))


CHANGES = ("ADDED", "MODIFIED", "DELETED")  # the watch events that carry an object


class KindDecoder:
    """List pages and watch events of one kind, decoded straight into the slim form."""

    def __init__(self, kind: str):
        self.kind = kind
        schema, self.slimmer = (_POD, slim_pod) if kind == "pods" else (_OBJECT, slim)
        page = _schema(f"_{kind}List", items=list[schema], metadata=_LIST_METADATA)
        self._page = msgspec.json.Decoder(page)
        self._object = msgspec.json.Decoder(schema)

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
            event = _EVENT.decode(line)
            kind, raw = event.get("type"), event.get("object")
            obj = {} if raw is None else (self._object.decode(raw) if kind in CHANGES
                                          else json.loads(bytes(raw)) or {})
        except msgspec.DecodeError:
            event = json.loads(line)
            kind, obj = event.get("type"), event.get("object") or {}
        version = (obj.get("metadata") or {}).get("resourceVersion")
        return kind, self.slimmer(obj) if kind in CHANGES else obj, version


class Packed(MutableMapping):
    """Objects by key, each kept as its JSON text (msgspec); reading one decodes a fresh
    copy (so nothing a reader does to it changes what is kept)."""

    __slots__ = ("_texts",)
    _encode = msgspec.json.Encoder().encode
    _decode = msgspec.json.Decoder().decode

    def __init__(self):
        self._texts = {}

    def __getitem__(self, key):
        return self._decode(self._texts[key])

    def __setitem__(self, key, obj):
        self._texts[key] = self._encode(obj)

    def __delitem__(self, key):
        del self._texts[key]

    def __iter__(self):
        return iter(self._texts)

    def __len__(self):
        return len(self._texts)

    def __contains__(self, key):  # MutableMapping's would decode the object
        return key in self._texts

    def text(self, key) -> bytes:
        """The JSON text kept for ``key``."""
        return self._texts[key]
