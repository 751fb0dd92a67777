"""Configuration: SkyDNS's single-dash flags, their environment variables, and /skydns/config.

Precedence is SkyDNS's: built-in default < environment variable < command-line flag <
the JSON object at ``/skydns/config`` in etcd.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import ipaddress
import json
import logging
import os
import re
from typing import NamedTuple

import dns.name

from .record import name_labels, name_to_key

DEFAULT_RESOLV_CONF = "/etc/resolv.conf"
SYSTEMD_RESOLV_CONF = "/run/systemd/resolve/resolv.conf"  # what resolved itself asks
RESOLVED_STUBS = ("127.0.0.53", "127.0.0.54")  # systemd-resolved's stub listeners
_WILDCARDS = ("0.0.0.0", "::", "")
_LOOPBACKS = ("127.0.0.1", "::1", "0.0.0.0", "::", "localhost")

log = logging.getLogger("skydns.config")


class ConfigError(ValueError):
    """A flag, environment variable or /skydns/config value that cannot be used."""


def _absolute(name: str) -> str:
    name = name.strip().lower()
    if not name.endswith("."):
        name += "."
    try:
        dns.name.from_text(name)
    except Exception as exc:  # dnspython raises several types for bad names
        raise ConfigError(f"{name!r} is not a valid domain name: {exc}") from None
    return name


MAX_TTL = 2**31 - 1  # RFC 2181 8


class ZoneTTL(NamedTuple):
    """One ``-zone-ttl`` zone: its name, its etcd key prefix, and its two TTLs."""
    name: str
    key_prefix: str
    ttl: int
    negative: int


def parse_zone_ttls(text: str, domain: str) -> list:
    """``NAME=TTL[/NEGATIVE],...`` -> [(name, ttl, negative)], longest name first.

    Like CoreDNS's ``ttl`` for the zones of a server block: one TTL for the records at and
    below NAME, whatever their own ``ttl``, and one for the SOA of negative answers there
    (the record TTL when not given). NAME is the domain, a name below it, or a reverse
    zone (below ``arpa.``, answered from /skydns/arpa)."""
    zones = {}
    for item in _split_list(text or ""):
        name, sep, ttls = item.partition("=")
        try:
            values = [int(v) for v in ttls.split("/")] if sep else []
        except ValueError:
            values = []
        if not name or not 1 <= len(values) <= 2 or not all(0 <= v <= MAX_TTL for v in values):
            raise ConfigError(f"zone-ttl {item!r}: want NAME=TTL or NAME=TTL/NEGATIVE_TTL "
                              f"(seconds, 0..{MAX_TTL})")
        name = _absolute(name)
        if not (name == domain or name.endswith("." + domain) or name.endswith(".arpa.")):
            raise ConfigError(f"zone-ttl {item!r}: {name} is neither in {domain} nor a "
                              "reverse zone below arpa.")
        if name in zones:
            raise ConfigError(f"zone-ttl: {name} given twice")
        zones[name] = (values[0], values[-1])
    return [(name, *zones[name]) for name in sorted(zones, key=lambda n: (-len(n), n))]


def parse_hostport(value: str, default_port: int) -> tuple[str, int]:
    """``host:port``, ``[v6]:port``, ``host`` or bare ``v6`` -> (host, port)."""
    value = value.strip()
    m = re.match(r"^\[([^\]]+)\](?::(\d+))?$", value)
    if m:
        host, port = m.group(1), m.group(2)
    elif value.count(":") == 1:
        host, port = value.split(":")
    else:
        host, port = value, None
    try:
        port = int(port) if port else default_port
    except ValueError:
        raise ConfigError(f"bad port in {value!r}") from None
    if not host or not 0 <= port <= 65535:
        raise ConfigError(f"bad address {value!r}: want host:port")
    return host, port


def _format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_bool(value) -> bool:
    """Go's strconv.ParseBool."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "t", "true"):
        return True
    if text in ("0", "f", "false"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {value!r}")


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value) -> float:
    """Go durations (``2s``, ``500ms``, ``1m30s``) or plain seconds -> seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise argparse.ArgumentTypeError(f"invalid duration {value!r}")
    return total


def _split_list(value: str) -> list:
    return [v.strip() for v in value.split(",") if v.strip()]


def resolv_conf_nameservers(path: str = DEFAULT_RESOLV_CONF,
                            resolved_path: str = SYSTEMD_RESOLV_CONF) -> list:
    """``nameserver`` lines of resolv.conf as host:53 (SkyDNS's default upstreams). A
    systemd-resolved stub listener in it is replaced by the servers resolved itself uses
    (``resolved_path``, as kubelet's ``--resolv-conf`` advice), or left out."""
    servers = _nameserver_lines(path)
    stubs = [s for s in servers if parse_hostport(s, 53)[0] in RESOLVED_STUBS]
    if stubs:
        real = [s for s in _nameserver_lines(resolved_path)
                if parse_hostport(s, 53)[0] not in RESOLVED_STUBS]
        log.warning("%s lists systemd-resolved's stub %s (a loop or unreachable from a "
                    "pod): using %s", path, ", ".join(stubs),
                    f"the servers of {resolved_path}: {', '.join(real)}" if real
                    else "the other servers only")
        servers = real or [s for s in servers if s not in stubs]
    return servers


def parse_networks(entries) -> list:
    """``-transfer-to`` entries as networks: ``*`` (anyone), addresses and CIDRs."""
    networks = []
    for entry in entries:
        if entry == "*":
            networks += [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
        else:
            networks.append(ipaddress.ip_network(entry, strict=False))
    return networks


def peer_ip(host: str):
    """A client's address as a socket gives it (``fe80::1%eth0``, ``::ffff:10.0.0.1`` from a
    dual-stack socket), as the address it is: IPv4 for a mapped one; None for no address."""
    try:
        ip = ipaddress.ip_address((host or "").split("%")[0])
    except ValueError:
        return None
    return getattr(ip, "ipv4_mapped", None) or ip


def in_networks(networks, host: str) -> bool:
    """Whether the client at ``host`` is in one of ``networks`` (``parse_networks``)."""
    ip = peer_ip(host)
    return ip is not None and any(ip in net for net in networks if net.version == ip.version)


def resolv_conf_search(path: str = DEFAULT_RESOLV_CONF) -> list:
    """The ``search`` domains of resolv.conf (the last such line counts, as in glibc):
    what kubelet appends to every pod's search path, and so what autopath walks after the
    cluster's own domains, as CoreDNS's autopath does."""
    domains = []
    try:
        with open(path) as fh:
            for line in fh:
                parts = line.split()
                if parts and parts[0] in ("search", "domain"):
                    domains = parts[1:]
    except OSError:
        pass
    return domains


def _nameserver_lines(path: str) -> list:
    servers = []
    try:
        with open(path) as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    servers.append(_format_hostport(parts[1].split("%")[0], 53))
    except OSError:
        pass
    return servers


def forwarding_loop(upstream: str, listen: str) -> str | None:
    """Why forwarding to ``upstream`` is a loop we can tell from the addresses alone (this
    server itself, or systemd-resolved's stub, which forwards to whatever the node's
    resolv.conf names: cluster DNS, coredns#2087), or None. Other loops are found at run
    time by the probe (skydns.loop)."""
    host, port = parse_hostport(upstream, 53)
    own_host, own_port = parse_hostport(listen, 53)
    if port == own_port and (host == own_host or (own_host in _WILDCARDS
                                                  and host in _LOOPBACKS)):
        return (f"upstream {upstream} is this server itself (-addr {listen}): every "
                f"forwarded query would come back; set -nameservers to the real upstreams")
    if host in RESOLVED_STUBS and port == 53:
        return (f"upstream {upstream} is systemd-resolved's stub listener: from a pod it is "
                f"not there, and on a node it forwards to the node's resolv.conf, maybe "
                f"back to cluster DNS; use the servers of {SYSTEMD_RESOLV_CONF}")
    return None


def option(default, helptext: str, parse=str, env: str | None = None, etcd=None,
           flag=True, restart=False):
    """A setting's field, described once: its default (a list is copied for each
    instance), its help, how a flag's or an environment variable's text is parsed, the
    variable (``env``), the /skydns/config key and the type it must have there (``etcd``:
    (key, type), type None for read_timeout's Go duration), whether a change in
    /skydns/config takes effect only after a restart (``restart``), and whether it is a
    flag (named as the attribute, ``_`` -> ``-``). kube2sky's flags
    (``kube2sky.main.Settings``) are described the same way."""
    metadata = {"help": helptext, "parse": parse, "env": env, "etcd": etcd, "flag": flag,
                "restart": restart}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class Config:
    """skydns's settings: defaults, then environment variables, then flags (``from_args``),
    then /skydns/config (``apply_etcd_config``), all built from the fields' metadata."""

    addr: str = option(
        "127.0.0.1:53", "ip:port to serve DNS on (UDP and TCP)",
        env="SKYDNS_ADDR", etcd=("dns_addr", str), restart=True)
    domain: str = option(
        "skydns.local.", "domain to be authoritative for",
        env="SKYDNS_DOMAIN", etcd=("domain", str))
    machines: list = option(
        ["http://127.0.0.1:2379"], "comma-separated etcd URLs",
        parse=_split_list, env="ETCD_MACHINES")
    nameservers: list = option(
        [], "comma-separated upstream host:port (default: from /etc/resolv.conf)",
        parse=_split_list, env="SKYDNS_NAMESERVERS", etcd=("nameservers", list))
    local: str = option("", "name that local.dns.<domain> answers for", etcd=("local", str))
    hostmaster: str = option(
        "hostmaster@skydns.local.", "SOA hostmaster mailbox",
        etcd=("hostmaster", str))
    dnssec: str = option(
        "", "base path of a BIND DNSSEC key pair; enables signing",
        etcd=("dnssec", str), restart=True)
    no_rec: bool = option(
        False, "do not forward names outside the domain",
        parse=parse_bool, etcd=("no_rec", parse_bool))
    round_robin: bool = option(
        True, "rotate A/AAAA/SRV answers",
        parse=parse_bool, etcd=("round_robin", parse_bool))
    ns_rotate: bool = option(
        True, "rotate the upstream name servers per query",
        parse=parse_bool, etcd=("ns_rotate", parse_bool))
    rtimeout: float = option(
        2.0, "upstream read timeout (Go duration)",
        parse=parse_duration, etcd=("read_timeout", None))
    rcache: int = option(
        10000, "response cache size for forwarded answers (0: off)",
        parse=int, etcd=("rcache", int))
    rcache_ttl: int = option(
        60, "longest time in seconds a forwarded answer is cached (upstream TTLs can only "
        "lower it)",
        parse=int, etcd=("rcache_ttl", int))
    rcache_stale: int = option(
        3600, "seconds past expiry a cached answer is served (TTL 30) when no upstream "
        "answers (0: off)",
        parse=int, etcd=("rcache_stale", int))
    rcache_prefetch: int = option(
        3, "hits after which an entry is refreshed shortly before it expires (0: off)",
        parse=int, etcd=("rcache_prefetch", int))
    rcache_mb: int = option(
        16, "most MiB the forwarded answers may take; the least recently used go first (0: "
        "off)",
        parse=int, etcd=("rcache_mb", int))
    answer_cache_mb: int = option(
        32, "most MiB the prebuilt answers for the domain's names may take; the oldest go "
        "first (0: every answer computed afresh)",
        parse=int, etcd=("answer_cache_mb", int))
    max_concurrent: int = option(
        1000, "most queries upstream at once; more get SERVFAIL at once (0: no limit)",
        parse=int, etcd=("max_concurrent", int))
    scache: int = option(
        10000, "DNSSEC signature cache size",
        parse=int, etcd=("scache", int))
    ndots: int = option(
        2, "names with fewer labels are not forwarded",
        parse=int, env="SKYDNS_NDOTS", etcd=("ndot", int))
    path_prefix: str = option("skydns", "etcd key prefix", env="SKYDNS_PATH_PREFIX")
    stubzones: bool = option(
        False, "forward stub zones from stub.dns.<domain>",
        parse=parse_bool)
    verbose: bool = option(False, "log every query", parse=parse_bool)
    log_queries: int = option(
        0, "log one line per answered query in CoreDNS's common log format, at most this "
        "many a second (the rest are counted; 0: off)",
        parse=int, env="SKYDNS_LOG_QUERIES")
    tls_key: str = option("", "etcd client TLS key", env="ETCD_TLSKEY")
    tls_pem: str = option("", "etcd client TLS certificate", env="ETCD_TLSPEM")
    ca_cert: str = option("", "CA certificate for etcd TLS", env="ETCD_CACERT")
    username: str = option("", "etcd user", env="ETCD_USERNAME")
    password: str = option("", "etcd password", env="ETCD_PASSWORD")
    ttl: int = option(3600, "default record TTL", parse=int, etcd=("ttl", int))
    min_ttl: int = option(
        60, "TTL of the SOA in negative answers",
        parse=int, etcd=("min_ttl", int))
    zone_ttl: str = option(
        "", "NAME=TTL[/NEGATIVE],...: TTL of every record at and below NAME (instead of its "
        "own ttl; a lease still caps it) and of the SOA in negative answers there, as "
        "CoreDNS's ttl (e.g. cluster.local.=5)",
        env="SKYDNS_ZONE_TTL", etcd=("zone_ttl", str))
    priority: int = option(
        10, "default SRV priority / MX preference",
        parse=int, etcd=("priority", int))
    healthz_port: int = option(
        8080, "HTTP port for /healthz (0: off)",
        parse=int, env="SKYDNS_HEALTHZ_PORT")
    healthz_addr: str = option("0.0.0.0", "address for the /healthz listener")
    healthz_query: str = option(
        "", "name that /healthz resolves through the server itself (A query)",
        env="SKYDNS_HEALTHZ_QUERY")
    workers: int = option(
        1, "processes sharing the DNS port with SO_REUSEPORT",
        parse=int, env="SKYDNS_WORKERS")
    max_udp_size: int = option(
        1232, "largest UDP reply whatever buffer a client claims; larger ones are truncated "
        "(TC)",
        parse=int, env="SKYDNS_MAX_UDP_SIZE", etcd=("max_udp_size", int))
    nsid: str = option(
        "", "name server identifier (RFC 5001, e.g. the pod name) sent to queries that ask "
        "for it, so a client can tell which replica answered (empty: off)",
        env="SKYDNS_NSID")
    dot_addr: str = option(
        "", "ip:port to serve DNS over TLS on (RFC 7858, port 853 by default; empty: off)",
        env="SKYDNS_DOT_ADDR")
    dot_cert: str = option(
        "", "PEM file with the DNS-over-TLS certificate, then any intermediates",
        env="SKYDNS_DOT_CERT")
    dot_key: str = option("", "PEM file with its private key", env="SKYDNS_DOT_KEY")
    loop_probe: bool = option(
        True, "at start, send each private upstream a probe name and report a forwarding loop "
        "(unhealthy, with the upstream) if it comes back to this server",
        parse=parse_bool)
    transfer_to: list = option(
        [], "comma-separated addresses and CIDRs (* for anyone) allowed to transfer the "
        "domain (AXFR over TCP), as CoreDNS's transfer plugin (empty: refused to all)",
        parse=_split_list, env="SKYDNS_TRANSFER_TO")
    autopath: bool = option(
        False, "answer a pod's query for NAME.<its namespace>.svc.<domain> that does not exist "
        "with the first name of its search path that does (a CNAME to it), as CoreDNS's "
        "autopath; the pod is told by its IP from the pod records in etcd",
        parse=parse_bool, env="SKYDNS_AUTOPATH")
    autopath_search: list = option(
        [], "comma-separated search domains autopath tries after the cluster's own, as "
        "kubelet appends them to pods (default: the search line of /etc/resolv.conf)",
        parse=_split_list, env="SKYDNS_AUTOPATH_SEARCH")
    lameduck: float = option(
        5.0, "on SIGTERM, keep answering DNS this long (Go duration) while /healthz and "
        "/readyz fail, so the Service drops this replica first; SIGINT or a second "
        "signal stops at once (0: no lameduck)",
        parse=parse_duration, env="SKYDNS_LAMEDUCK")
    prometheus_port: int = option(
        0, "HTTP port serving Prometheus metrics (0: off)", parse=int, env="PROMETHEUS_PORT",
        flag=False)
    prometheus_path: str = option(
        "/metrics", "path of the Prometheus metrics", env="PROMETHEUS_PATH", flag=False)

    def __post_init__(self):
        self.normalize()

    def normalize(self):
        """Canonical forms (absolute lower-case domain, hostmaster as a name) and checks."""
        self.domain = _absolute(self.domain)
        if self.local:
            self.local = _absolute(self.local)
        if not re.match(r"^[A-Za-z0-9_\-]+$", self.path_prefix):
            raise ConfigError(f"path prefix {self.path_prefix!r} must be a single key component")
        parse_hostport(self.addr, 53)
        self.nameservers = [_format_hostport(*parse_hostport(ns, 53)) for ns in self.nameservers]
        for upstream in self.nameservers:
            problem = forwarding_loop(upstream, self.addr)
            if problem:
                raise ConfigError(problem)
        for name in ("ndots", "ttl", "min_ttl", "priority", "rcache", "rcache_ttl", "scache",
                     "healthz_port", "prometheus_port", "workers", "rcache_stale",
                     "rcache_prefetch", "max_concurrent", "rcache_mb", "answer_cache_mb",
                     "log_queries"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative")
        if self.workers < 1:
            raise ConfigError("workers must be at least 1")
        if not 512 <= self.max_udp_size <= 65535:
            raise ConfigError("max-udp-size must be within 512..65535")
        if self.rtimeout <= 0:
            raise ConfigError("rtimeout must be positive")
        if self.lameduck < 0:
            raise ConfigError("lameduck must not be negative")
        if len(self.nsid.encode()) > 512:
            raise ConfigError("nsid must be at most 512 bytes")
        if self.dot_addr:
            parse_hostport(self.dot_addr, 853)
            if not (self.dot_cert and self.dot_key):
                raise ConfigError("-dot-addr needs -dot-cert and -dot-key (PEM files)")
        self.autopath_search = [_absolute(name) for name in self.autopath_search]
        self.zone_ttls  # parsed (and checked) once per Config
        self.transfer_networks  # the same

    # Derived names, parsed once per Config (a reconfiguration makes a new Config), since
    # the general query path asks for them on every query.
    @functools.cached_property
    def domain_name(self) -> dns.name.Name:
        return dns.name.from_text(self.domain)

    @functools.cached_property
    def hostmaster_name(self) -> dns.name.Name:
        """``hostmaster@skydns.local.`` -> ``hostmaster.skydns.local.`` (SOA rname)."""
        return dns.name.from_text(_absolute(self.hostmaster.replace("@", ".", 1)))

    @functools.cached_property
    def local_dns_name(self) -> dns.name.Name:
        return dns.name.from_text("local.dns", self.domain_name)

    # The same names as lower-case absolute text, which the query semantics work with.
    @functools.cached_property
    def domain_text(self) -> str:
        return self.domain_name.to_text().lower()

    @functools.cached_property
    def hostmaster_text(self) -> str:
        return self.hostmaster_name.to_text().lower()

    @functools.cached_property
    def local_dns_text(self) -> str:
        return self.local_dns_name.to_text().lower()

    @functools.cached_property
    def stub_labels(self) -> tuple:
        """Key labels of stub.dns.<domain>, where stub-zone servers are stored."""
        return tuple(reversed(name_labels("stub.dns." + self.domain)))

    @functools.cached_property
    def transfer_networks(self) -> list:
        """``-transfer-to`` as networks."""
        try:
            return parse_networks(self.transfer_to)
        except ValueError as exc:
            raise ConfigError(f"transfer-to: {exc}") from None

    @functools.cached_property
    def zone_ttls(self) -> tuple:
        """``-zone-ttl`` as ZoneTTLs, longest name first, so the first match is the
        closest zone."""
        return tuple(ZoneTTL(name, name_to_key(name, self.path_prefix), ttl, negative)
                     for name, ttl, negative in parse_zone_ttls(self.zone_ttl, self.domain))

    @property
    def listen(self) -> tuple[str, int]:
        return parse_hostport(self.addr, 53)


def add_option(parser: argparse.ArgumentParser, field, spellings, default) -> None:
    """One setting (an ``option`` field) as an argument of ``parser``: its help, with its
    environment variable; how its text is parsed (``parse_bool``: the flag alone means
    true; a tuple: the values it may take). kube2sky's parser is built with it too."""
    metadata = field.metadata
    kwargs = {"dest": field.name, "default": default, "help": metadata["help"]}
    if metadata["env"]:
        kwargs["help"] += f" [${metadata['env']}]"
    parse = metadata["parse"]
    if parse is parse_bool:
        kwargs.update(nargs="?", const=True, type=parse_bool, metavar="BOOL")
    elif isinstance(parse, tuple):
        kwargs.update(choices=parse)
    else:
        kwargs.update(type=parse, metavar=field.name.upper())
    parser.add_argument(*spellings, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skydns",
        description="DNS server for the SkyDNS records in etcd (flags in SkyDNS's Go style: "
                    "-flag=value, -flag value, or --flag=value)",
        allow_abbrev=False)
    for field in dataclasses.fields(Config):
        if field.metadata["flag"]:
            flag = field.name.replace("_", "-")
            add_option(parser, field, ["-" + flag, "--" + flag], argparse.SUPPRESS)
    return parser


def from_args(argv=None, environ=None) -> Config:
    """Config from defaults, then environment variables, then flags."""
    environ = os.environ if environ is None else environ
    values = {}
    for field in dataclasses.fields(Config):
        env = field.metadata["env"]
        if env and environ.get(env):
            try:
                values[field.name] = field.metadata["parse"](environ[env])
            except (ValueError, argparse.ArgumentTypeError) as exc:
                raise ConfigError(f"${env}: {exc}") from None
    args = build_parser().parse_args(argv)
    values.update(vars(args))
    if not values.get("nameservers"):
        values["nameservers"] = resolv_conf_nameservers()
    if values.get("autopath") and "autopath_search" not in values:
        values["autopath_search"] = resolv_conf_search()  # what kubelet gives pods too
    # (SkyDNS kept hostmaster@skydns.local. as the default whatever the domain.)
    return Config(**values)


# Keys of /skydns/config: the attribute each sets, and the type its value must have.
_ETCD_KEYS = {f.metadata["etcd"][0]: (f.name, f.metadata["etcd"][1])
              for f in dataclasses.fields(Config) if f.metadata["etcd"]}


def apply_etcd_config(base: Config, value: bytes | str) -> Config:
    """A new Config: ``base`` overridden by the JSON object stored at /skydns/config.

    ``read_timeout`` is a Go duration: nanoseconds as a number, or a string like ``2s``.
    Raises ConfigError (and changes nothing) when the object is unusable.
    """
    try:
        obj = json.loads(value)
    except ValueError as exc:
        raise ConfigError(f"/config is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ConfigError("/config is not a JSON object")
    changes = {}
    for key, val in obj.items():
        if key not in _ETCD_KEYS:
            continue
        attr, typ = _ETCD_KEYS[key]
        try:
            if typ is None:  # a Go duration: nanoseconds, or text such as "2s"
                val = val / 1e9 if isinstance(val, (int, float)) else parse_duration(val)
            elif typ is list:
                if not isinstance(val, list) or not all(isinstance(v, str) for v in val):
                    raise ValueError("want a list of host:port strings")
            elif typ is int:
                if isinstance(val, bool) or not isinstance(val, int):
                    raise ValueError("want an integer")
            elif typ is str:
                if not isinstance(val, str):
                    raise ValueError("want a string")
            else:
                val = typ(val)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            raise ConfigError(f"/config key {key}: {exc}") from None
        changes[attr] = val
    try:
        return dataclasses.replace(base, **changes)
    except ConfigError as exc:
        raise ConfigError(f"/config: {exc}") from None


# Settings /skydns/config may set that are bound or loaded once, at start.
RESTART_ONLY = tuple(f.name for f in dataclasses.fields(Config) if f.metadata["restart"])


class LiveConfig:
    """The configuration in force, and the one place that holds it: the flags, with the
    JSON object at /skydns/config over them, followed as etcd changes it.

    The parts that read the configuration ``follow`` it: each gives its
    ``reconfigure(config)``, called in the order given whenever the configuration in force
    changes, so that what they derive from it (the response cache's size, autopath's
    search names, the answers built with the old TTLs) changes with it."""

    def __init__(self, flags: Config, value: bytes | str | None = None):
        """``value``: /skydns/config as read at start, which may set everything."""
        self.flags = flags
        self.value = value
        self.config = flags
        self._followers = []
        if value is not None:
            try:
                self.config = apply_etcd_config(flags, value)
                log.info("using /%s/config from etcd over the flags", flags.path_prefix)
            except ConfigError as exc:
                log.error("ignoring /%s/config: %s", flags.path_prefix, exc)

    def follow(self, reconfigure) -> None:
        self._followers.append(reconfigure)

    def update(self, value: bytes | str | None) -> bool:
        """/skydns/config changed to ``value`` (None: deleted, the flags alone again).
        True when the configuration in force changed. An unusable object is logged and
        changes nothing; settings in RESTART_ONLY keep their value until a restart."""
        if value == self.value:
            return False
        self.value = value
        prefix = self.config.path_prefix
        try:
            new = self.flags if value is None else apply_etcd_config(self.flags, value)
        except ConfigError as exc:
            log.error("ignoring /%s/config: %s", prefix, exc)
            return False
        for field in RESTART_ONLY:
            if getattr(new, field) != getattr(self.config, field):
                log.warning("/%s/config changes %s: takes effect after a restart", prefix,
                            field)
                new = dataclasses.replace(new, **{field: getattr(self.config, field)})
        if new == self.config:
            return False
        log.info("applying /%s/config", prefix)
        self.config = new
        for reconfigure in self._followers:
            reconfigure(new)
        return True
