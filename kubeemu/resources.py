"""The kinds the emulator serves, their discovery data, and their defaulting/validation.

Only what kube2sky, ``kubectl`` and the tests need: core/v1 ``namespaces``, ``services``,
``endpoints``, ``pods`` and discovery.k8s.io/v1 ``endpointslices``.  Validation is a
useful subset of the real one (names, required fields, ClusterIP range and immutability,
port names...), not all of it; there is no admission chain.
"""

from __future__ import annotations

import copy
import ipaddress
import random
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .errors import ApiError

__all__ = ["Resource", "RESOURCES", "resource_for", "ClusterIPAllocator",
           "NodePortAllocator", "now"]


@dataclass(frozen=True)
class Resource:
    name: str                 # plural, as in the URL
    singular: str
    kind: str
    group: str                # "" for the core group
    version: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ("create", "delete", "deletecollection", "get", "list",
                              "patch", "update", "watch")
    name_rule: str = "subdomain"   # subdomain | label | label1035

    @property
    def api_version(self) -> str:
        return "%s/%s" % (self.group, self.version) if self.group else self.version

    @property
    def qualified(self) -> str:
        """``services`` or ``endpointslices.discovery.k8s.io``, as in error messages."""
        return "%s.%s" % (self.name, self.group) if self.group else self.name

    def discovery(self) -> list[dict[str, Any]]:
        """APIResource entries for ``/api/v1`` or ``/apis/<group>/<version>``."""
        entries = [{
            "name": self.name, "singularName": self.singular, "namespaced": self.namespaced,
            "kind": self.kind, "verbs": list(self.verbs), "shortNames": list(self.short_names),
            "storageVersionHash": "",
        }]
        for sub in self.subresources:
            entries.append({"name": "%s/%s" % (self.name, sub), "singularName": "",
                            "namespaced": self.namespaced, "kind": self.kind,
                            "verbs": ["get", "patch", "update"]})
        return entries


RESOURCES: dict[str, Resource] = {r.name: r for r in (
    Resource("namespaces", "namespace", "Namespace", "", "v1", False, ("ns",), ("status",),
             ("create", "delete", "get", "list", "patch", "update", "watch"), "label"),
    Resource("services", "service", "Service", "", "v1", True, ("svc",), ("status",),
             name_rule="label1035"),
    Resource("endpoints", "endpoints", "Endpoints", "", "v1", True, ("ep",)),
    Resource("pods", "pod", "Pod", "", "v1", True, ("po",), ("status",)),
    Resource("endpointslices", "endpointslice", "EndpointSlice", "discovery.k8s.io", "v1",
             True),
)}
GROUPS: dict[str, str] = {"discovery.k8s.io": "v1"}


def resource_for(group: str, version: str, name: str) -> Resource | None:
    res = RESOURCES.get(name)
    if res is None or res.group != group or res.version != version:
        return None
    return res


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------- allocators

class ClusterIPAllocator:
    """Hands out service IPs from a CIDR.

    The network address, the first address (``kubernetes.default``'s, claimed
    explicitly at start) and the broadcast address are never handed out.
    """

    def __init__(self, cidr: str = "10.96.0.0/16"):
        self.network = ipaddress.ip_network(cidr)
        if self.network.version != 4 or self.network.num_addresses < 8:
            raise ValueError("the service CIDR must be an IPv4 range of at least 8 addresses")
        self.used: set[str] = set()
        self._next = 2

    @property
    def first(self) -> str:
        return str(self.network.network_address + 1)

    def claim(self, ip: str) -> None:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            raise ValueError("must be a valid IP address or \"None\"") from None
        if addr not in self.network:
            raise ValueError("provided IP is not in the valid range. The range of valid IPs "
                             "is %s" % self.network)
        if ip in self.used:
            raise ValueError("provided IP is already allocated")

    def allocate(self) -> str:
        size = self.network.num_addresses
        for step in range(size):
            offset = 2 + (self._next - 2 + step) % (size - 3)
            ip = str(self.network.network_address + offset)
            if ip not in self.used:
                self._next = offset + 1
                return ip
        raise ValueError("range is full")

    def release(self, ip: str | None) -> None:
        self.used.discard(ip)


class NodePortAllocator:
    def __init__(self, low: int = 30000, high: int = 32767):
        self.low, self.high = low, high
        self.used: set[int] = set()

    def allocate(self) -> int:
        for port in range(self.low, self.high + 1):
            if port not in self.used:
                return port
        raise ValueError("node port range is full")


# ---------------------------------------------------------------------------- validation

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_GENERATE_CHARS = "bcdfghjklmnpqrstvwxz2456789"


def _check_name(res: Resource, name: str) -> str | None:
    if res.name_rule == "subdomain":
        ok = len(name) <= 253 and _SUBDOMAIN.match(name)
        rule = "a lowercase RFC 1123 subdomain"
    elif res.name_rule == "label":
        ok = len(name) <= 63 and _LABEL.match(name)
        rule = "a lowercase RFC 1123 label"
    else:
        ok = len(name) <= 63 and _LABEL1035.match(name)
        rule = "a DNS-1035 label"
    return None if ok else "Invalid value: %r: must be %s" % (name, rule)


def _string_map(value: Any) -> bool:
    return value is None or (isinstance(value, dict) and
                             all(isinstance(k, str) and isinstance(v, str)
                                 for k, v in value.items()))


def prepare_new(res: Resource, obj: Any, namespace: str | None) -> dict[str, Any]:
    """Common checks and metadata for a create; returns the object to store."""
    if not isinstance(obj, dict):
        raise ApiError.bad_request("the body of the request must be a JSON object")
    if obj.get("kind") not in (None, "", res.kind) or \
            obj.get("apiVersion") not in (None, "", res.api_version):
        raise ApiError.bad_request(
            "the API version in the data (%s) does not match the expected API version (%s) "
            "or kind %s does not match %s" % (obj.get("apiVersion"), res.api_version,
                                              obj.get("kind"), res.kind))
    obj["kind"], obj["apiVersion"] = res.kind, res.api_version
    meta = obj.get("metadata")
    if meta is None:
        meta = obj["metadata"] = {}
    if not isinstance(meta, dict):
        raise ApiError.bad_request("metadata must be an object")
    if not meta.get("name") and meta.get("generateName"):
        suffix = "".join(random.choice(_GENERATE_CHARS) for _ in range(5))
        meta["name"] = meta["generateName"] + suffix
    name = meta.get("name")
    if not name or not isinstance(name, str):
        raise ApiError.invalid(res.kind, "", [("metadata.name",
                                               "Required value: name or generateName is required")])
    problem = _check_name(res, name)
    if problem:
        raise ApiError.invalid(res.kind, name, [("metadata.name", problem)])
    if res.namespaced:
        if meta.get("namespace") and namespace and meta["namespace"] != namespace:
            raise ApiError.bad_request("the namespace of the provided object does not match "
                                       "the namespace sent on the request")
        meta["namespace"] = namespace or meta.get("namespace") or "default"
    else:
        meta.pop("namespace", None)
    for key in ("labels", "annotations"):
        if not _string_map(meta.get(key)):
            raise ApiError.invalid(res.kind, name, [("metadata.%s" % key,
                                                     "Invalid value: must map strings to strings")])
    for key in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds",
                "selfLink", "managedFields"):
        meta.pop(key, None)
    meta["uid"] = str(uuid.uuid4())
    meta["creationTimestamp"] = now()
    meta["generation"] = 1
    return obj


def check_replacement(res: Resource, old: dict, obj: Any, name: str,
                      namespace: str | None) -> dict[str, Any]:
    """Common checks for an update: identity fields come from the stored object."""
    if not isinstance(obj, dict):
        raise ApiError.bad_request("the body of the request must be a JSON object")
    if obj.get("kind") not in (None, "", res.kind) or \
            obj.get("apiVersion") not in (None, "", res.api_version):
        raise ApiError.bad_request("kind/apiVersion of the body (%s %s) do not match %s %s" % (
            obj.get("apiVersion"), obj.get("kind"), res.api_version, res.kind))
    meta = obj.get("metadata") or {}
    if not isinstance(meta, dict):
        raise ApiError.bad_request("metadata must be an object")
    if meta.get("name") not in (None, name):
        raise ApiError.bad_request("the name of the object (%s) does not match the name on "
                                   "the URL (%s)" % (meta.get("name"), name))
    if res.namespaced and meta.get("namespace") not in (None, "", namespace):
        raise ApiError.bad_request("the namespace of the provided object does not match "
                                   "the namespace sent on the request")
    for key in ("labels", "annotations"):
        if not _string_map(meta.get(key)):
            raise ApiError.invalid(res.kind, name, [("metadata.%s" % key,
                                                     "Invalid value: must map strings to strings")])
    obj["kind"], obj["apiVersion"] = res.kind, res.api_version
    old_meta = old["metadata"]
    meta = dict(meta)
    for key in ("name", "namespace", "uid", "creationTimestamp", "generation"):
        if key in old_meta:
            meta[key] = old_meta[key]
        else:
            meta.pop(key, None)
    meta.pop("managedFields", None)
    obj["metadata"] = meta
    return obj


# ---------------------------------------------------------------------- per-kind defaults

def _ports(kind: str, name: str, ports: Any, field_name: str, require_names: bool,
           default_target: bool) -> list[dict]:
    if ports is None:
        return []
    if not isinstance(ports, list) or not all(isinstance(p, dict) for p in ports):
        raise ApiError.invalid(kind, name, [(field_name, "Invalid value: must be a list")])
    seen = set()
    for i, port in enumerate(ports):
        number = port.get("port")
        if not isinstance(number, int) or not 0 < number < 65536:
            raise ApiError.invalid(kind, name, [("%s[%d].port" % (field_name, i),
                                                 "Invalid value: %r: must be between 1 and "
                                                 "65535, inclusive" % (number,))])
        port.setdefault("protocol", "TCP")
        if port["protocol"] not in ("TCP", "UDP", "SCTP"):
            raise ApiError.invalid(kind, name, [("%s[%d].protocol" % (field_name, i),
                                                 "Unsupported value: %r" % port["protocol"])])
        if default_target:
            port.setdefault("targetPort", number)
        if require_names and len(ports) > 1 and not port.get("name"):
            raise ApiError.invalid(kind, name, [("%s[%d].name" % (field_name, i),
                                                 "Required value")])
        if port.get("name"):
            if port["name"] in seen:
                raise ApiError.invalid(kind, name, [("%s[%d].name" % (field_name, i),
                                                     "Duplicate value: %r" % port["name"])])
            seen.add(port["name"])
    return ports


class Defaulter:
    """Per-kind defaulting and validation, with the allocators of one store."""

    def __init__(self, service_cidr: str = "10.96.0.0/16"):
        self.ips = ClusterIPAllocator(service_cidr)
        self.node_ports = NodePortAllocator()

    # -- entry points used by the store ------------------------------------------------

    def on_create(self, res: Resource, obj: dict, commit: bool) -> None:
        getattr(self, "_create_" + res.name, lambda o, c: None)(obj, commit)

    def on_update(self, res: Resource, old: dict, obj: dict, subresource: str | None,
                  commit: bool) -> None:
        if res.subresources and "status" in res.subresources:
            if subresource == "status":    # only status changes through /status
                status = obj.get("status")
                meta = obj["metadata"]
                obj.clear()
                obj.update({k: copy.deepcopy(v) for k, v in old.items() if k != "status"})
                obj["metadata"] = {**old["metadata"], "labels": meta.get("labels",
                                   old["metadata"].get("labels")),
                                   "annotations": meta.get("annotations",
                                                           old["metadata"].get("annotations"))}
                for key in ("labels", "annotations"):
                    if obj["metadata"][key] is None:
                        del obj["metadata"][key]
                if status is not None:
                    obj["status"] = status
                return
            if "status" in old:            # the main resource ignores status changes
                obj["status"] = old["status"]
            else:
                obj.pop("status", None)
        if res.name == "services":
            self._update_service(old, obj, commit)
        else:
            getattr(self, "_create_" + res.name, lambda o, c: None)(obj, False)
        if obj.get("spec") != old.get("spec"):
            obj["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1

    def on_delete(self, res: Resource, obj: dict) -> None:
        if res.name == "services":
            spec = obj.get("spec") or {}
            for ip in spec.get("clusterIPs") or [spec.get("clusterIP")]:
                self.ips.release(ip)
            for port in spec.get("ports") or []:
                self.node_ports.used.discard(port.get("nodePort"))

    # -- namespaces ---------------------------------------------------------------------

    def _create_namespaces(self, obj: dict, commit: bool) -> None:
        name = obj["metadata"]["name"]
        obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = name
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj.setdefault("status", {}).setdefault("phase", "Active")

    # -- services -----------------------------------------------------------------------

    def _service_spec(self, obj: dict) -> tuple[str, dict, str]:
        name = obj["metadata"]["name"]
        spec = obj.get("spec")
        if spec is None:
            spec = obj["spec"] = {}
        if not isinstance(spec, dict):
            raise ApiError.invalid("Service", name, [("spec", "Invalid value: must be an object")])
        stype = spec.setdefault("type", "ClusterIP")
        if stype not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
            raise ApiError.invalid("Service", name, [("spec.type",
                                                      "Unsupported value: %r" % stype)])
        spec.setdefault("sessionAffinity", "None")
        _ports("Service", name, spec.get("ports"), "spec.ports", True, True)
        if stype == "ExternalName":
            if not spec.get("externalName"):
                raise ApiError.invalid("Service", name, [("spec.externalName",
                                                          "Required value")])
            if spec.get("clusterIP") not in (None, ""):
                raise ApiError.invalid("Service", name, [(
                    "spec.clusterIP", "Invalid value: %r: may not be set for ExternalName "
                    "services" % spec["clusterIP"])])
            for key in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
                spec.pop(key, None)
        else:
            if not spec.get("clusterIP") and spec.get("clusterIPs"):
                spec["clusterIP"] = spec["clusterIPs"][0]
            if spec.get("clusterIP") != "None" and not spec.get("ports"):
                raise ApiError.invalid("Service", name, [("spec.ports", "Required value")])
            spec.setdefault("internalTrafficPolicy", "Cluster")
        return name, spec, stype

    def _set_ips(self, name: str, spec: dict, stype: str, commit: bool) -> None:
        if stype == "ExternalName":
            return
        ip = spec.get("clusterIP") or ""
        given = [x for x in (spec.get("clusterIPs") or [])[1:] if isinstance(x, str)]
        if ip == "None":
            spec["clusterIPs"] = ["None"]
        else:
            try:
                if ip:
                    self.ips.claim(ip)
                else:
                    ip = self.ips.allocate()
            except ValueError as exc:
                raise ApiError.invalid("Service", name, [("spec.clusterIPs",
                                                          "Invalid value: [%r]: %s" % (ip, exc))])
            if commit:
                self.ips.used.add(ip)
            spec["clusterIP"] = ip
            # Dual stack, simplified: a secondary IPv6 address is accepted as given (there
            # is no IPv6 pool to allocate from).
            secondary = [x for x in given if _is_ipv6(x)][:1]
            spec["clusterIPs"] = [ip] + secondary
            if secondary:
                spec["ipFamilies"] = ["IPv4", "IPv6"]
                spec.setdefault("ipFamilyPolicy", "PreferDualStack")
                return
        spec["ipFamilies"] = ["IPv4"]
        spec.setdefault("ipFamilyPolicy", "SingleStack")

    def _set_node_ports(self, spec: dict, stype: str, commit: bool) -> None:
        if stype not in ("NodePort", "LoadBalancer"):
            for port in spec.get("ports") or []:
                port.pop("nodePort", None)
            return
        spec.setdefault("externalTrafficPolicy", "Cluster")
        for port in spec.get("ports") or []:
            if not port.get("nodePort"):
                port["nodePort"] = self.node_ports.allocate()
            if commit:
                self.node_ports.used.add(port["nodePort"])

    def _create_services(self, obj: dict, commit: bool) -> None:
        name, spec, stype = self._service_spec(obj)
        self._set_ips(name, spec, stype, commit)
        self._set_node_ports(spec, stype, commit)
        obj.setdefault("status", {"loadBalancer": {}})

    def _update_service(self, old: dict, obj: dict, commit: bool) -> None:
        name, spec, stype = self._service_spec(obj)
        old_spec = old.get("spec") or {}
        old_type = old_spec.get("type", "ClusterIP")
        old_ip = old_spec.get("clusterIP")
        if stype != "ExternalName" and old_type != "ExternalName":
            if not spec.get("clusterIP"):
                spec["clusterIP"] = old_ip
            if spec["clusterIP"] != old_ip:
                raise ApiError.invalid("Service", name, [(
                    "spec.clusterIPs[0]", "Invalid value: [%r]: may not change once set"
                    % spec["clusterIP"])])
            spec["clusterIPs"] = list(old_spec.get("clusterIPs") or [old_ip])
            spec["ipFamilies"] = list(old_spec.get("ipFamilies") or ["IPv4"])
            spec.setdefault("ipFamilyPolicy", old_spec.get("ipFamilyPolicy", "SingleStack"))
        elif stype != "ExternalName":       # ExternalName -> ClusterIP: allocate now
            self._set_ips(name, spec, stype, commit)
        elif commit:                        # -> ExternalName: release the old address
            self.ips.release(old_ip)
        old_node_ports = {p.get("port"): p.get("nodePort") for p in old_spec.get("ports") or []}
        for port in spec.get("ports") or []:
            if not port.get("nodePort") and old_node_ports.get(port["port"]):
                port["nodePort"] = old_node_ports[port["port"]]
        self._set_node_ports(spec, stype, commit)

    # -- pods ---------------------------------------------------------------------------

    def _create_pods(self, obj: dict, commit: bool) -> None:
        name = obj["metadata"]["name"]
        spec = obj.get("spec")
        containers = spec.get("containers") if isinstance(spec, dict) else None
        if not containers or not isinstance(containers, list) or \
                not all(isinstance(c, dict) and c.get("name") for c in containers):
            raise ApiError.invalid("Pod", name, [("spec.containers",
                                                  "Required value: containers with names")])
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("dnsPolicy", "ClusterFirst")
        spec.setdefault("terminationGracePeriodSeconds", 30)
        spec.setdefault("schedulerName", "default-scheduler")
        obj.setdefault("status", {}).setdefault("phase", "Pending")

    # -- endpoints ----------------------------------------------------------------------

    def _create_endpoints(self, obj: dict, commit: bool) -> None:
        name = obj["metadata"]["name"]
        subsets = obj.get("subsets")
        if subsets is None:
            return
        if not isinstance(subsets, list):
            raise ApiError.invalid("Endpoints", name, [("subsets", "Invalid value: not a list")])
        for i, subset in enumerate(subsets):
            if not isinstance(subset, dict):
                raise ApiError.invalid("Endpoints", name, [("subsets[%d]" % i,
                                                            "Invalid value: not an object")])
            for key in ("addresses", "notReadyAddresses"):
                for j, address in enumerate(subset.get(key) or []):
                    ip = address.get("ip") if isinstance(address, dict) else None
                    try:
                        ipaddress.ip_address(ip or "")
                    except ValueError:
                        raise ApiError.invalid("Endpoints", name, [(
                            "subsets[%d].%s[%d].ip" % (i, key, j),
                            "Invalid value: %r: must be a valid IP address" % (ip,))]) from None
            _ports("Endpoints", name, subset.get("ports"), "subsets[%d].ports" % i, True, False)

    # -- endpointslices -------------------------------------------------------------------

    def _create_endpointslices(self, obj: dict, commit: bool) -> None:
        name = obj["metadata"]["name"]
        if obj.get("addressType") not in ("IPv4", "IPv6", "FQDN"):
            raise ApiError.invalid("EndpointSlice", name, [(
                "addressType", "Unsupported value: %r: supported values: \"FQDN\", \"IPv4\", "
                "\"IPv6\"" % (obj.get("addressType"),))])
        endpoints = obj.setdefault("endpoints", [])
        if not isinstance(endpoints, list):
            raise ApiError.invalid("EndpointSlice", name, [("endpoints",
                                                            "Invalid value: not a list")])
        for i, endpoint in enumerate(endpoints):
            addresses = endpoint.get("addresses") if isinstance(endpoint, dict) else None
            if not addresses or not isinstance(addresses, list) or len(addresses) > 100:
                raise ApiError.invalid("EndpointSlice", name, [(
                    "endpoints[%d].addresses" % i, "Required value: 1 to 100 addresses")])
            endpoint.setdefault("conditions", {})
        for port in obj.get("ports") or []:
            if isinstance(port, dict):
                port.setdefault("protocol", "TCP")


def _is_ipv6(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 6
    except ValueError:
        return False
