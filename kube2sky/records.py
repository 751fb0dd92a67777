"""Kubernetes objects -> SkyDNS records: pure functions over the API's JSON (dicts).

Each function returns the records one object owns as ``{etcd key: JSON value}`` plus a list
of problems (one line each, naming what was skipped and why). Keys and values are exactly
kube2sky's (see the README's record layout); the format itself comes from skydns.record.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
import sys

from skydns.record import (HOST_NETWORK_LABEL, Fnv1a32Tail, dashed_ip, encode_record,
                           encode_text, fnv1a32, fnv1a32_label, name_to_key)

HOSTNAMES_ANNOTATION = "endpoints.beta.kubernetes.io/hostnames-map"
SCHEMA_VERSION = "1.1.0"
OWNER = "kube2sky"  # in every value written (skydns.record.owned_by): what a reconcile may delete
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class Endpoint:
    """One address of a service's endpoints, normalized from Endpoints or EndpointSlices."""

    __slots__ = ("ip", "hostname", "ready")

    def __init__(self, ip, hostname="", ready=True):
        self.ip = ip
        self.hostname = hostname or ""
        self.ready = ready

    def __eq__(self, other):
        return (self.ip, self.hostname, self.ready) == (other.ip, other.hostname, other.ready)

    def __repr__(self):
        return f"Endpoint({self.ip!r}, {self.hostname!r}, ready={self.ready})"


class Layout:
    """Where records go for one cluster domain, and how they are written."""

    def __init__(self, domain="cluster.local.", ttl=30, endpoint_ip_names=True,
                 external_zones=(), external_ttl=5, external_ns_service=None):
        self.domain = domain.lower().rstrip(".") + "."
        self.base = name_to_key(self.domain)
        self.ttl = ttl
        self.endpoint_ip_names = endpoint_ip_names  # dashed-IP leaves of headless endpoints
        # k8s_external: a Layout per zone the services' external addresses go in, and the
        # (namespace, name) of the service whose addresses are those zones' name servers.
        self.external = [Layout(zone, external_ttl, False) for zone in external_zones]
        self.external_ns_service = external_ns_service

    def scopes(self):
        """The key prefixes this layout writes under (what a reconcile reads back)."""
        return [self.base + "/", "/skydns/arpa/"] + [z.base + "/" for z in self.external]

    def value(self, host, port=0):
        return encode_record(host, port=port, ttl=self.ttl, owner=OWNER)

    def service_name(self, namespace, name):
        return f"{name}.{namespace}.svc.{self.domain}"

    def dns_version(self):
        return {f"{self.base}/dns-version": encode_text(SCHEMA_VERSION, owner=OWNER)}


# fingerprint(value: str) -> int: what kube2sky keeps of a value it need not keep (its
# desired values, and etcd's in the start-up snapshot): Python's own 64-bit SipHash of the
# text, computed in C and cached by the string, keyed afresh in every process (it is never
# stored or sent). The builtin itself, not a function around it: a change of a big
# service fingerprints every record of it again. A value and its fingerprint are only
# compared key by key, so with 490,000 keys (the cluster_scale bench's cluster) the odds
# that a changed value goes unnoticed are about 2^-45 a reconcile.
fingerprint = hash

# fingerprint_of_bytes(value: bytes) -> int: ``fingerprint`` of the text that ``value``
# encodes, when that text is ASCII (every value kube2sky writes is: its JSON escapes the
# rest): CPython hashes an ASCII str and its bytes with the same function over the same
# bytes, so a restart reads etcd's 490,000 values without decoding them. A value that is
# not ASCII may get another fingerprint; it is never one kube2sky wants, so it is
# rewritten either way.
fingerprint_of_bytes = hash


def meta(obj):
    """(namespace, name), interned: they key the objects and owners kube2sky keeps, and a
    name decoded afresh with every version of an object (and of its slices) would stay
    behind in each place it was used (a few MiB of copies at cluster scale)."""
    metadata = obj.get("metadata") or {}
    return interned(metadata.get("namespace") or ""), interned(metadata.get("name") or "")


def interned(text):
    """``text`` interned if it is a str (an odd object's name may be anything)."""
    return sys.intern(text) if text.__class__ is str else text


# An IPv4 address as the API writes it (no leading zeros): kept as its text, which is
# already the canonical form. ipaddress took a third of computing a big cluster's records
# (parsing, then str() and reverse_pointer back); other forms (IPv6) still go through it.
_IPV4 = re.compile(r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
                   r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])")
# An endpoint change recomputes every address of its service: the addresses seen last are
# remembered hashed, a few MB at most; and the FNV state after an address's text up to
# its last separator (``10.64.3.``: a few hundred subnets in a cluster) is remembered, so
# one not seen lately hashes its last few bytes only (FNV-1a in Python is ~0.2 us a byte,
# and a cluster of 100,000 addresses misses the first cache on every change).
RECENT_ADDRESSES = 8192
RECENT_PREFIXES = 4096
_IN_ADDR = name_to_key("in-addr.arpa.")


def _ip(text):
    """The address ``text`` names: its text for IPv4, an ipaddress object otherwise; None
    when it is no address."""
    if text.__class__ is str and _IPV4.fullmatch(text):
        return text
    try:
        return ipaddress.ip_address(text)
    except (TypeError, ValueError):
        return None


def address_leaf(layout, ip):
    """An address record's value and its kube2sky leaf label: FNV-1a of the value as the
    original kube2sky wrote it (without our owner field), so the names stay the same."""
    host = str(ip)
    head, _, _, owned_tail = _address_template(layout.ttl)
    return _address_labeler(layout.ttl)(host), head + host + owned_tail


@functools.lru_cache(maxsize=None)
def _address_labeler(ttl):
    """The leaf label of a host's address value, for one TTL, with the last labels and
    subnet states remembered. Both caches are keyed and filled by plain strings and ints:
    lru_cache keeps a lone str argument as its key, and str and int are no containers, so
    what they keep is not the cyclic collector's to walk. A cache of (host, ttl) keys and
    (label, value) results added two tuples a missed address that lived on in generation
    0 (the addresses they replaced were freed, so its count stayed low): a churn of 700
    changes a second had kube2sky pause 30-90 ms in young collections every ~2 s."""
    _, head_state, tail_hash, _ = _address_template(ttl)

    @functools.lru_cache(maxsize=RECENT_PREFIXES)
    def prefix_state(prefix: str) -> int:  # FNV-1a of the text before the last label
        return fnv1a32(prefix.encode(), head_state)

    @functools.lru_cache(maxsize=RECENT_ADDRESSES)
    def label(host: str) -> str:
        cut = max(host.rfind("."), host.rfind(":")) + 1
        state = fnv1a32(host[cut:].encode(), prefix_state(host[:cut]))
        return format(tail_hash.extend(state), "x")
    return label


@functools.lru_cache(maxsize=None)
def _address_template(ttl):
    """An address value around its host, for one TTL: the text before the host and its FNV
    state, the Fnv1a32Tail of the text after it as the original kube2sky wrote it (no owner
    field), and the text after it as we write it (with our owner field). The text of an
    address needs no JSON escape, so a value is the three joined."""
    head, tail = _around_host(encode_record("X", ttl=ttl))
    owned_tail = _around_host(encode_record("X", ttl=ttl, owner=OWNER))[1]
    return head, fnv1a32(head.encode()), Fnv1a32Tail(tail.encode()), owned_tail


_HOST_HEAD = '{"host":"'  # how every encode_record value starts


def _around_host(template: str) -> tuple[str, str]:
    """A value whose host begins with ``X``: the text before that X and after it."""
    if not template.startswith(_HOST_HEAD + "X"):
        raise ValueError(f"not a value whose host starts with X: {template!r}")
    return _HOST_HEAD, template[len(_HOST_HEAD) + 1:]


class TargetValues:
    """The values of the records that name ``<label>.<fqdn>`` (a headless service's PTR and
    SRV records) for one fqdn. The JSON around the label is the same for every endpoint:
    it is built once per service, and a value is three strings joined (``encode_record``
    for each was a third of computing a big cluster's records). Only for labels that JSON
    leaves as they are: DNS labels and hashes."""

    __slots__ = ("layout", "suffix", "tails")

    def __init__(self, layout, fqdn):
        self.layout, self.suffix = layout, "." + fqdn
        self.tails = {}  # port -> the text after the label

    def value(self, label: str, port: int = 0) -> str:
        return self.head(label) + self.tail(port)

    @staticmethod
    def head(label: str) -> str:
        """The text before the fqdn: the same for an endpoint's PTR and SRV values."""
        return _HOST_HEAD + label

    def tail(self, port: int = 0) -> str:
        """The text after the label, for ``port`` (0: none, as in a PTR)."""
        tail = self.tails.get(port)
        if tail is None:
            tail = self.tails[port] = _around_host(self.layout.value("X" + self.suffix,
                                                                     port=port))[1]
        return tail


def reverse_key(ip) -> str:
    """``10.0.0.1`` -> ``/skydns/arpa/in-addr/10/0/0/1``; IPv6 by nibbles under ip6."""
    if ip.__class__ is str:  # IPv4 (see _ip): its labels in order under in-addr.arpa
        return _IN_ADDR + "/" + ip.replace(".", "/")
    return name_to_key(ip.reverse_pointer + ".")  # e.g. 1.0.0.10.in-addr.arpa


pod_label = dashed_ip  # ``10-244-7-7``: pods and hostname-less endpoints (skydns.record)


# -- services ----------------------------------------------------------------------------

def service_records(layout: Layout, service: dict, endpoints: list | None):
    """Records owned by one Service (with its endpoints, for headless services).

    ``endpoints`` is a list of (addresses: [Endpoint], ports: [(name, port, protocol)])
    groups, as produced by ``from_endpoints`` / ``from_slices``; None when there are none.
    """
    namespace, name = meta(service)
    spec = service.get("spec") or {}
    problems = []
    if not namespace or not name:
        return {}, ["service without namespace or name"]
    fqdn = layout.service_name(namespace, name)
    key = f"{layout.base}/svc/{namespace}/{name}"
    if spec.get("type") == "ExternalName":
        target = spec.get("externalName") or ""
        if not target:
            return {}, [f"service {namespace}/{name}: ExternalName without externalName"]
        return {key: layout.value(target.rstrip(".") + ".")}, problems
    cluster_ips = [ip for ip in (spec.get("clusterIPs") or [spec.get("clusterIP")]) if ip]
    if not cluster_ips:
        return {}, [f"service {namespace}/{name}: no clusterIP yet"]
    if cluster_ips[0] == "None":
        return headless_records(layout, namespace, name, service, endpoints or [])
    records = {}
    first_label = None
    for text in cluster_ips:
        ip = _ip(text)
        if ip is None:
            problems.append(f"service {namespace}/{name}: bad clusterIP {text!r}")
            continue
        label, value = address_leaf(layout, ip)
        first_label = first_label or label
        records[f"{key}/{label}"] = value
        records[reverse_key(ip)] = layout.value(fqdn)
    if first_label is None:
        return {}, problems
    if layout.external:
        external, bad = external_records(layout, namespace, name, service)
        records.update(external)
        problems += bad
    ports, bad = srv_ports(spec, namespace, name)
    problems += bad
    for protocol, port_name, number in ports:
        records[f"{key}/_{protocol}/_{port_name}/{first_label}"] = layout.value(
            fqdn, port=number)
    return records, problems


def srv_ports(spec, namespace, name):
    """([(protocol, port name, number)], problems) of a service's named ports, lower-case,
    as SRV labels take them; unnamed ports get no SRV, and a named one without a valid
    number is a problem."""
    ports, problems = [], []
    for port in spec.get("ports") or []:
        port_name = port.get("name")
        number = port.get("port")
        if not port_name:
            continue
        if not isinstance(number, int) or not 0 < number < 65536:
            problems.append(f"service {namespace}/{name}: port {port_name} has no valid number")
            continue
        ports.append(((port.get("protocol") or "TCP").lower(), port_name.lower(), number))
    return ports, problems


def external_records(layout, namespace, name, service):
    """k8s_external (as CoreDNS's plugin): ``<svc>.<ns>.<zone>`` for each external zone,
    an A/AAAA leaf per external address (``spec.externalIPs``, then the load balancer's
    ingress IPs), or a CNAME to the first ingress hostname when there is no address; SRV
    ``_<port>._<proto>.<svc>.<ns>.<zone>`` per named port, the service's own port number.
    For the service named by ``external_ns_service``, the same addresses also as
    ``ns1.ns.dns.<zone>``, ``ns2...``: skydns answers the zone's NS with the names under
    ``ns.dns.<zone>`` and their addresses as glue (SkyDNS's rule)."""
    spec = service.get("spec") or {}
    status = service.get("status")
    balancer = status.get("loadBalancer") if isinstance(status, dict) else None
    ingress = balancer.get("ingress") if isinstance(balancer, dict) else None
    ingress = [i for i in ingress if isinstance(i, dict)] if isinstance(ingress, list) else []
    external_ips = spec.get("externalIPs")
    texts = list(external_ips) if isinstance(external_ips, list) else []
    texts += [i["ip"] for i in ingress if i.get("ip")]
    hostnames = [i["hostname"] for i in ingress if isinstance(i.get("hostname"), str)
                 and not i.get("ip")]
    records, problems, ips = {}, [], []
    for text in dict.fromkeys(t for t in texts if isinstance(t, str)):
        ip = _ip(text)
        if ip is None:
            problems.append(f"service {namespace}/{name}: bad external IP {text!r}")
        else:
            ips.append(ip)
    if not ips and not hostnames:
        return records, problems
    is_ns = layout.external_ns_service == (namespace, name)
    ports, _ = srv_ports(spec, namespace, name)  # (bad ports: the cluster records say so)
    for zone in layout.external:
        key = f"{zone.base}/{namespace}/{name}"
        first = None
        for number, ip in enumerate(ips, 1):
            label, value = address_leaf(zone, ip)
            first = first or label
            records[f"{key}/{label}"] = value
            if is_ns:  # named ns1, ns2... as the zone's NS answer names them
                records[f"{zone.base}/dns/ns/ns{number}"] = value
        if first is None:
            target = hostnames[0].rstrip(".").lower() + "."
            first = fnv1a32_label(encode_record(target, ttl=zone.ttl))
            records[f"{key}/{first}"] = zone.value(target)
        fqdn = f"{name}.{namespace}.{zone.domain}"
        for protocol, port_name, number in ports:
            records[f"{key}/_{protocol}/_{port_name}/{first}"] = zone.value(fqdn, port=number)
    return records, problems


def headless_records(layout, namespace, name, service, groups):
    """Per published address (ready, or any with ``publishNotReadyAddresses``): an A/AAAA
    leaf named by its hostname, or by the FNV label when it has no (valid) hostname; SRV
    per address x named port and a PTR, both naming that leaf. An address without a
    hostname also answers under its dashed IP, as in CoreDNS (``10-244-1-10``, IPv6
    ``fd00--1``): a second leaf with the same value, named by no SRV or PTR. A hostname
    equal to such a dashed label keeps its leaf (the dashed one is not written)."""
    fqdn = layout.service_name(namespace, name)
    key = f"{layout.base}/svc/{namespace}/{name}"
    publish_not_ready = bool((service.get("spec") or {}).get("publishNotReadyAddresses"))
    targets = TargetValues(layout, fqdn)
    records, problems = {}, []
    dashed = {}  # the dashed-IP leaves, added once every hostname has its leaf
    # Sorted so that duplicate hostnames resolve the same way every time.
    ptr_tail = targets.tail()
    for addresses, ports in groups:
        srv = [(f"{key}/_{(protocol or 'TCP').lower()}/_{port_name.lower()}/",
                targets.tail(number))
               for port_name, number, protocol in ports
               if port_name and isinstance(port_name, str) and isinstance(number, int)]
        for endpoint in sorted(addresses, key=lambda e: (e.hostname, e.ip)):
            if not endpoint.ready and not publish_not_ready:
                continue
            ip = _ip(endpoint.ip)
            if ip is None:
                problems.append(f"endpoints {namespace}/{name}: bad IP {endpoint.ip!r}")
                continue
            hashed, value = address_leaf(layout, ip)
            label = endpoint.hostname.lower()
            if label and not _DNS_LABEL.match(label):
                problems.append(f"endpoints {namespace}/{name}: hostname {endpoint.hostname!r}"
                                " is not a DNS label; using the hashed name")
                label = ""
            if not label:
                label = hashed
                if layout.endpoint_ip_names:
                    dashed.setdefault(f"{key}/{pod_label(ip)}", value)
            leaf = f"{key}/{label}"
            if records.get(leaf, value) != value and endpoint.hostname:
                # A dual-stack hostname: the second address goes just below the first,
                # where a query for the hostname still finds it.
                leaf = f"{leaf}/{hashed}"
            records.setdefault(leaf, value)
            head = targets.head(label)
            records.setdefault(reverse_key(ip), head + ptr_tail)
            for srv_key, srv_tail in srv:
                records.setdefault(srv_key + label, head + srv_tail)
    for leaf, value in dashed.items():
        # A dashed label never equals a hash label (those have no "-") nor an SRV label;
        # it may equal a hostname (a valid DNS label), and the hostname's leaf wins.
        records.setdefault(leaf, value)
    return records, problems


# -- endpoints ---------------------------------------------------------------------------

def _ports(raw_ports):
    return [(p.get("name") or "", p.get("port"), p.get("protocol") or "TCP")
            for p in raw_ports or [] if isinstance(p, dict)]


def from_endpoints(endpoints: dict):
    """v1 Endpoints -> [(addresses, ports)], with hostnames from addresses[].hostname or
    the old hostnames-map annotation."""
    annotations = (endpoints.get("metadata") or {}).get("annotations") or {}
    hostnames = {}
    if annotations.get(HOSTNAMES_ANNOTATION):
        try:
            raw = json.loads(annotations[HOSTNAMES_ANNOTATION])
            hostnames = {ip: (entry or {}).get("HostName", "") for ip, entry in raw.items()
                         if isinstance(entry, dict)}
        except (ValueError, AttributeError):
            hostnames = {}
    groups = []
    for subset in endpoints.get("subsets") or []:
        addresses = []
        for field, ready in (("addresses", True), ("notReadyAddresses", False)):
            for address in subset.get(field) or []:
                ip = address.get("ip")
                if ip:
                    hostname = address.get("hostname") or hostnames.get(ip, "")
                    addresses.append(Endpoint(ip, hostname, ready))
        groups.append((addresses, _ports(subset.get("ports"))))
    return groups


def from_slices(slices):
    """All EndpointSlices of one service -> [(addresses, ports)]. A missing
    ``conditions.ready`` means ready, as the API documents."""
    groups = []
    for item in sorted(slices, key=lambda s: (s.get("metadata") or {}).get("name", "")):
        if item.get("addressType") == "FQDN":
            continue
        addresses = []
        for endpoint in item.get("endpoints") or []:
            if not isinstance(endpoint, dict):
                continue  # not an endpoint: the API server never sends one
            ready = (endpoint.get("conditions") or {}).get("ready")
            for ip in endpoint.get("addresses") or []:
                addresses.append(Endpoint(ip, endpoint.get("hostname") or "",
                                          ready is None or bool(ready)))
        groups.append((addresses, _ports(item.get("ports"))))
    return groups


# -- pods --------------------------------------------------------------------------------

def pod_records(layout: Layout, pod: dict):
    """``a-b-c-d.<ns>.pod.<domain>`` A/AAAA for each pod IP (while the pod exists)."""
    namespace, name = meta(pod)
    status = pod.get("status") or {}
    ips = [entry.get("ip") for entry in status.get("podIPs") or [] if isinstance(entry, dict)]
    if not ips and status.get("podIP"):
        ips = [status["podIP"]]
    spec = pod.get("spec")
    host_network = isinstance(spec, dict) and spec.get("hostNetwork") is True
    records, problems = {}, []
    for text in ips:
        ip = _ip(text)
        if ip is None:
            problems.append(f"pod {namespace}/{name}: bad IP {text!r}")
            continue
        label, value = address_leaf(layout, ip)
        if host_network:  # its node's IP: marked so autopath never takes it for this pod
            label = HOST_NETWORK_LABEL
        records[f"{layout.base}/pod/{namespace}/{pod_label(ip)}/{label}"] = value
    return records, problems
