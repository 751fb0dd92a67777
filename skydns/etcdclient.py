"""etcd clients as skydns and kube2sky use them: several members with failover, TLS and
authentication from the flags, every request failing while its member has no leader, and
prefixes read in pages at one revision. Shared by both programs (kube2sky imports it)."""

from __future__ import annotations

import concurrent.futures
from urllib.parse import urlparse

import etcd3
import etcd3.utils
import grpc

# Keys per range request (all at one revision). Large, because etcd (3.5) counts every key
# left in the range for each limited request: 440k keys take 18 s in pages of 1,000, 4.8 s
# of 5,000 and 1.7 s of 50,000, as long as one unlimited read. A page is ~10 MB on the wire.
PAGE = 50000
RPC_TIMEOUT = 5.0
GRPC_OPTIONS = [("grpc.max_receive_message_length", 256 * 1024 * 1024)]


def parse_machines(machines):
    """``http://host:port`` URLs -> [(host, port, secure)]."""
    out = []
    for url in machines:
        if "://" not in url:
            url = "http://" + url
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"bad etcd URL {url!r}: want http(s)://host:port")
        out.append((parsed.hostname, parsed.port or 2379, parsed.scheme == "https"))
    return out


# gRPC metadata etcd reads as "fail this request, and end this watch, while the member
# has no raft leader" (Go clientv3's WithRequireLeader). Without it, a watch on a member cut
# off from the others stays open and silent, and the store would go stale unnoticed.
REQUIRE_LEADER = ("hasleader", "true")


def make_client(config, timeout=RPC_TIMEOUT, avoid=None):
    """An etcd3 client that fails over between machines and retries a failed one promptly.

    (The etcd3 default marks an endpoint failed for 300 s after one error, which would keep
    us away from an etcd that came back long ago.) ``avoid``: the ``host:port`` that just
    failed us; the new client starts on another member (for half a second, as any failed
    endpoint) instead of picking at random, maybe the dead one again.
    """
    creds = None
    machines = parse_machines(config.machines)
    if any(secure for _, _, secure in machines):
        ca = open(config.ca_cert, "rb").read() if config.ca_cert else None
        key = open(config.tls_key, "rb").read() if config.tls_key else None
        pem = open(config.tls_pem, "rb").read() if config.tls_pem else None
        creds = grpc.ssl_channel_credentials(ca, key, pem)
    endpoints = [etcd3.Endpoint(host, port, secure=secure, creds=creds if secure else None,
                                time_retry=0.5, opts=GRPC_OPTIONS)
                 for host, port, secure in machines]
    if avoid is not None and len(endpoints) > 1:
        for endpoint in endpoints:
            if endpoint.netloc == avoid:
                endpoint.fail()
    client = etcd3.MultiEndpointEtcd3Client(
        endpoints, timeout=timeout, failover=True,
        user=config.username or None, password=config.password or None)
    # The auth token already travels as request metadata; as gRPC call credentials too,
    # gRPC would refuse every call on a plain http:// channel.
    client.call_credentials = None
    client.metadata = (client.metadata or ()) + (REQUIRE_LEADER,)
    return client


def endpoint_of(client):
    """The ``host:port`` a client talks to now (None without one)."""
    try:
        return client.endpoint_in_use.netloc
    except Exception:
        return None


def read_prefix(client, prefix: str, each=None, revision: int = 0, progress=None,
                each_page=None) -> int:
    """Call ``each(kv)`` for every key under ``prefix`` (or ``each_page(kvs)`` for every
    page), read in pages of PAGE keys at one
    revision (``revision``, or the first page's), and return that revision. One range
    reply for a whole big prefix could pass gRPC's message limit and holds every key twice
    in memory while it is decoded. The next page is requested while ``each`` goes through
    this one, so etcd's work and ours overlap. ``progress(count)`` after every page but
    the last."""
    range_end = etcd3.utils.prefix_range_end(prefix.encode())

    def fetch(start):
        return client.get_range_response(start, range_end, limit=PAGE, revision=revision)
    response = fetch(prefix.encode())
    if not revision:
        revision = response.header.revision
    count = 0
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="etcd-page") as pool:
        while True:
            following = None
            if response.more and response.kvs:
                following = pool.submit(fetch, response.kvs[-1].key + b"\x00")
            if each_page is not None:
                each_page(response.kvs)
            else:
                for kv in response.kvs:
                    each(kv)
            count += len(response.kvs)
            if following is None:
                return revision
            if progress is not None:
                progress(count)
            response = following.result()


def close_quietly(client):
    """Close an etcd client that may already be broken (a new one replaces it). Returns
    the ``host:port`` it talked to (None without one), for ``make_client(avoid=...)``: the
    new client then starts on another member than the one that just failed us."""
    if client is None:
        return None
    endpoint = endpoint_of(client)
    try:
        client.close()
    except Exception:
        pass
    return endpoint
