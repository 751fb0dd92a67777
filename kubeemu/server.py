"""The HTTP layer of the emulator (what it is not: see :mod:`kubeemu`) and
:class:`Emulator`, its in-process handle.

Served paths::

    /version /api /apis /api/v1 /apis/discovery.k8s.io[/v1] /healthz /readyz /livez
    /api/v1/namespaces[/{name}[/status]]
    /api/v1/{services,endpoints,pods}                          (all namespaces)
    /api/v1/namespaces/{ns}/{services,endpoints,pods}[/{name}[/status]]
    /apis/discovery.k8s.io/v1/endpointslices
    /apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices[/{name}]
    ... and the same under a legacy ``/watch/`` segment (``/api/v1/watch/services``).

Verbs: GET (get, list, ``?watch=true``), POST (create), PUT (update), PATCH (merge,
strategic -- approximated, see :mod:`kubeemu.patch` -- and JSON patch; server-side apply
is 415), DELETE (item or collection).  Query parameters: ``labelSelector``,
``fieldSelector``, ``resourceVersion``, ``timeoutSeconds``, ``limit``/``continue``,
``dryRun``; ``allowWatchBookmarks``, ``fieldManager``, ``fieldValidation`` and
``resourceVersionMatch`` are accepted and ignored.
"""

from __future__ import annotations

import copy
import json
import select
import socket
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable, NamedTuple
from urllib.parse import parse_qs, urlsplit

from .errors import ApiError
from .manifests import load_documents
from .mirror import mirror_endpoints
from .resources import GROUPS, RESOURCES, Resource, resource_for
from .selectors import SelectorError, selector_matcher
from .store import Store

__all__ = ["Emulator", "Handler", "VERSION_INFO"]

VERSION_INFO = {
    "major": "1", "minor": "32", "gitVersion": "v1.32.0+kubeemu",
    "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
    "buildDate": "1970-01-01T00:00:00Z", "goVersion": "go1.23.0", "compiler": "gc",
    "platform": "linux/amd64",
}

DEFAULT_OBJECTS: list[dict[str, Any]] = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    for name in ("default", "kube-system", "kube-public", "kube-node-lease")
] + [{
    "apiVersion": "v1", "kind": "Service",
    "metadata": {"name": "kubernetes", "namespace": "default",
                 "labels": {"component": "apiserver", "provider": "kubernetes"}},
    "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.1",
             "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]},
}]

_PATCH_TYPES = {
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
    "application/json-patch+json": "json",
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address, emulator: "Emulator"):
        self.emulator = emulator
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, Handler)


class Handler(BaseHTTPRequestHandler):
    """One connection; requests are routed to the emulator's :class:`Store`."""

    protocol_version = "HTTP/1.1"
    server_version = "kubeemu"
    # Headers and body go out in two writes (and a watch writes one chunk per event): with
    # Nagle on, the second waits for the client's delayed ACK, ~40 ms on every request of a
    # kept-alive connection, which is what the kubernetes client's pool uses.
    disable_nagle_algorithm = True
    server: _Server

    # -- plumbing ------------------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, fmt: str, *args: Any) -> None:
        if self.server.emulator.verbose:
            sys.stderr.write("kubeemu: %s %s\n" % (self.address_string(), fmt % args))

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _read_body(self) -> bytes:
        """Read (drain) the request body; kubectl sends one even with DELETE."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, code: int, body: Any, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        try:
            raw = self._read_body()
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            self._route(method, url.path, query, raw)
        except ApiError as exc:
            self._send(exc.code, exc.status())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # pragma: no cover - a bug in the emulator
            traceback.print_exc()
            self._send(500, ApiError(500, "kubeemu internal error: %r" % exc).status())

    # -- routing -------------------------------------------------------------------------

    def _route(self, method: str, path: str, query: dict[str, str], raw: bytes) -> None:
        """Health, discovery, then the resource the path names, by method (``_METHODS``)."""
        parts = [p for p in path.split("/") if p]
        if path in ("/healthz", "/readyz", "/livez"):
            return self._send(200, b"ok", "text/plain")
        if method == "GET":
            discovery = self._discovery(parts)
            if discovery is not None:
                return self._send(200, discovery)
        target = _target(parts)
        handler = _METHODS.get(method)
        if handler is None:
            raise ApiError(405, "method %s is not supported" % method, "MethodNotAllowed")
        return handler(self, target, query, raw)

    def _get(self, target: "Target", query: dict[str, str], raw: bytes) -> None:
        res, namespace, name = target.res, target.namespace, target.name
        store = self.server.emulator.store
        if target.watch or query.get("watch") in ("true", "1"):
            selector = query.get("fieldSelector")
            if name is not None:
                selector = ",".join(filter(None, [selector, "metadata.name=%s" % name]))
            return self._watch(res, namespace, query, selector)
        if name is not None:
            return self._send(200, store.get(res, namespace, name))
        items, rv, token, remaining = store.list_json(
            res, namespace, _matcher(query.get("labelSelector"), query.get("fieldSelector")),
            _int(query.get("limit"), "limit"), query.get("continue") or None)
        meta: dict[str, Any] = {"resourceVersion": rv}
        if token:
            meta["continue"] = token
            meta["remainingItemCount"] = remaining
        head = json.dumps({"kind": res.kind + "List", "apiVersion": res.api_version,
                           "metadata": meta})
        return self._send(200, b"".join((head[:-1].encode(), b', "items": [',
                                         b", ".join(items), b"]}")))

    def _create(self, target: "Target", query: dict[str, str], raw: bytes) -> None:
        res = target.res
        if target.name is not None:
            raise ApiError(405, "POST is not supported on a named %s" % res.kind,
                           "MethodNotAllowed")
        if res.namespaced and target.namespace is None:
            raise ApiError(404, "the server could not find the requested resource "
                                "(create needs a namespace path)", "NotFound")
        return self._send(201, self.server.emulator.store.create(
            res, _json(raw, self.headers), target.namespace, bool(query.get("dryRun")),
            handoff=True))

    def _replace(self, target: "Target", query: dict[str, str], raw: bytes) -> None:
        if target.name is None:
            raise ApiError(405, "PUT needs an object name", "MethodNotAllowed")
        return self._send(200, self.server.emulator.store.update(
            target.res, _json(raw, self.headers), target.namespace, target.name,
            target.subresource, bool(query.get("dryRun")), handoff=True))

    def _patch(self, target: "Target", query: dict[str, str], raw: bytes) -> None:
        if target.name is None:
            raise ApiError(405, "PATCH needs an object name", "MethodNotAllowed")
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        patch_type = _PATCH_TYPES.get(ctype)
        if patch_type is None:
            raise ApiError(415, "the body of the request was in an unknown format - "
                                "accepted media types include: %s (server-side apply is "
                                "not implemented by this emulator)" % ", ".join(_PATCH_TYPES),
                           "UnsupportedMediaType")
        return self._send(200, self.server.emulator.store.patch(
            target.res, target.namespace, target.name, _json(raw, None), patch_type,
            target.subresource, bool(query.get("dryRun"))))

    def _delete(self, target: "Target", query: dict[str, str], raw: bytes) -> None:
        res, namespace, name = target.res, target.namespace, target.name
        store = self.server.emulator.store
        try:        # DeleteOptions; drained always, used when readable
            options = _json(raw, self.headers) if raw.strip() else {}
        except ApiError:
            options = {}
        if name is None:
            if res.name == "namespaces":
                raise ApiError(405, "deleting all namespaces is not supported",
                               "MethodNotAllowed")
            gone = store.delete_collection(res, namespace, _matcher(
                query.get("labelSelector"), query.get("fieldSelector")))
            return self._send(200, {"kind": res.kind + "List", "apiVersion": res.api_version,
                                    "metadata": {"resourceVersion":
                                                 str(store.resource_version)},
                                    "items": gone})
        preconditions = options.get("preconditions") if isinstance(options, dict) else None
        dry_run = bool(query.get("dryRun")) or bool(isinstance(options, dict)
                                                    and options.get("dryRun"))
        return self._send(200, store.delete(res, namespace, name, preconditions, dry_run))

    def _discovery(self, parts: list[str]) -> dict[str, Any] | None:
        if parts == ["version"]:
            return dict(VERSION_INFO)
        if parts == ["api"]:
            host, port = self.server.server_address[:2]
            return {"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                    "serverAddress": "%s:%s" % (host, port)}]}
        if parts == ["apis"]:
            return {"kind": "APIGroupList", "apiVersion": "v1",
                    "groups": [_group(name, version) for name, version in GROUPS.items()]}
        if len(parts) == 2 and parts[0] == "apis" and parts[1] in GROUPS:
            return {"kind": "APIGroup", "apiVersion": "v1", **_group(parts[1], GROUPS[parts[1]])}
        if parts == ["api", "v1"]:
            return _resource_list("", "v1")
        if len(parts) == 3 and parts[0] == "apis" and GROUPS.get(parts[1]) == parts[2]:
            return _resource_list(parts[1], parts[2])
        return None

    # -- watch ---------------------------------------------------------------------------

    def _watch(self, res: Resource, namespace: str | None, query: dict[str, str],
               field_selector: str | None) -> None:
        emulator = self.server.emulator
        match = _matcher(query.get("labelSelector"), field_selector)
        timeout = _int(query.get("timeoutSeconds"), "timeoutSeconds")
        deadline = time.monotonic() + (timeout if timeout and timeout > 0
                                       else emulator.watch_timeout)
        try:
            watch = emulator.store.watch(res, namespace, query.get("resourceVersion"), match)
            error = None
        except ApiError as exc:
            if exc.code != 410:
                raise
            watch, error = None, exc
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        try:
            if error is not None:
                self._chunk({"type": "ERROR", "object": error.status()})
            while watch is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._client_gone():
                    break
                try:
                    batch = watch.next(min(remaining, 1.0), shared=True)
                except ApiError as exc:
                    self._chunk({"type": "ERROR", "object": exc.status()})
                    break
                if batch is None:
                    break
                for etype, obj in batch:
                    self._chunk({"type": etype, "object": obj})
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True

    def _chunk(self, event: dict[str, Any]) -> None:
        data = json.dumps(event).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True


def _group(name: str, version: str) -> dict[str, Any]:
    gv = {"groupVersion": "%s/%s" % (name, version), "version": version}
    return {"name": name, "versions": [gv], "preferredVersion": gv}


def _resource_list(group: str, version: str) -> dict[str, Any]:
    resources = []
    for res in RESOURCES.values():
        if res.group == group and res.version == version:
            resources.extend(res.discovery())
    return {"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": "%s/%s" % (group, version) if group else version,
            "resources": resources}


class Target(NamedTuple):
    """What a resource path names: the resource, its namespace, object name and
    subresource (each None when absent), and whether it is a ``/watch/`` path."""
    res: Resource
    namespace: str | None
    name: str | None
    subresource: str | None
    watch: bool


_NOT_FOUND = "the server could not find the requested resource"


def _target(parts: list[str]) -> Target:
    """``/api/v1/...`` or ``/apis/GROUP/VERSION/...``, as the API server reads them."""
    if parts[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        raise ApiError(404, _NOT_FOUND, "NotFound")
    watch = bool(rest) and rest[0] == "watch"
    if watch:
        rest = rest[1:]
    namespace = None
    if rest[:1] == ["namespaces"] and len(rest) >= 3 and not (
            group == "" and len(rest) == 3 and rest[2] == "status"):
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        raise ApiError(404, _NOT_FOUND, "NotFound")
    res = resource_for(group, version, rest[0])
    if res is None or (namespace and not res.namespaced):
        raise ApiError(404, _NOT_FOUND, "NotFound")
    name = rest[1] if len(rest) > 1 else None
    subresource = rest[2] if len(rest) > 2 else None
    if subresource is not None and subresource not in res.subresources:
        raise ApiError(404, _NOT_FOUND, "NotFound")
    if name is not None and res.namespaced and namespace is None:
        raise ApiError(404, _NOT_FOUND, "NotFound")
    return Target(res, namespace, name, subresource, watch)


# The handler method for each HTTP method on a resource path.
_METHODS = {"GET": Handler._get, "POST": Handler._create, "PUT": Handler._replace,
            "PATCH": Handler._patch, "DELETE": Handler._delete}


def _matcher(label_selector: str | None, field_selector: str | None):
    if not label_selector and not field_selector:
        return None  # everything (and the store can count what remains of a paged list)
    try:
        return selector_matcher(label_selector, field_selector)
    except SelectorError as exc:
        raise ApiError.bad_request("unable to parse requirement: %s" % exc) from None


def _int(value: str | None, name: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ApiError.bad_request("invalid %s %r" % (name, value)) from None


def _json(raw: bytes, headers) -> Any:
    ctype = ((headers.get("Content-Type") if headers is not None else "") or "").lower()
    if "protobuf" in ctype or "cbor" in ctype:
        raise ApiError(415, "the body of the request was in an unsupported format (%s): this "
                            "emulator accepts JSON and YAML only (kubectl: create objects from "
                            "manifests with -f; its imperative generators send protobuf)"
                       % ctype, "UnsupportedMediaType")
    try:
        if "yaml" in ctype:
            import yaml
            return yaml.safe_load(raw.decode("utf-8"))
        return json.loads(raw.decode("utf-8") or "null")
    except Exception as exc:
        raise ApiError.bad_request("the body of the request cannot be decoded: %s" % exc) \
            from None


class Emulator:
    """An emulated Kubernetes API on ``http://HOST:PORT`` (for tests and local runs).

    >>> emu = Emulator(port=0).start()        # serves on a free port, in a thread
    >>> emu.url                               # 'http://127.0.0.1:PORT'
    >>> emu.store.create("services", {...}, "default")   # direct, in-process access
    >>> emu.stop()

    ``history`` bounds the event history: watches from a resourceVersion older than
    that many changes get ``ERROR 410 Expired``.  ``seed`` names manifest files (YAML or
    JSON) created at start, after the built-in namespaces and ``default/kubernetes``
    service.  ``watch_timeout`` ends watches that give no ``timeoutSeconds``.
    """

    def __init__(self, port: int = 0, host: str = "127.0.0.1", history: int = 1000,
                 seed: Iterable[str] = (), service_cidr: str = "10.96.0.0/16",
                 require_namespace: bool = False, watch_timeout: float = 1800.0,
                 verbose: bool = False):
        self.host, self.requested_port = host, port
        self.verbose = verbose
        self.watch_timeout = watch_timeout
        self.store = Store(history=history, service_cidr=service_cidr,
                           require_namespace=require_namespace)
        self.store.add_listener(mirror_endpoints)
        for obj in copy.deepcopy(DEFAULT_OBJECTS):
            if obj["kind"] == "Service":
                obj["spec"]["clusterIP"] = self.store.defaulter.ips.first
            self.store.apply(obj)
        for path in seed:
            self.load(path)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def load(self, path: str) -> list[dict[str, Any]]:
        """Create (or replace) the objects of a manifest file; returns them as stored."""
        return [self.store.apply(doc) for doc in load_documents(path)]

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace one object, the resource picked from its ``kind``."""
        return self.store.apply(obj)

    def start(self) -> "Emulator":
        if self._server is not None:
            return self
        self._server = _Server((self.host, self.requested_port), self)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.2},
                                        name="kubeemu-%d" % self.port, daemon=True)
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the emulator is not started")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        host = self.host if ":" not in self.host else "[%s]" % self.host
        return "http://%s:%d" % (host, self.port)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving: end watches, close connections, join the server thread."""
        self.store.close()
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        with server.connections_lock:
            connections = list(server.connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> "Emulator":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

