"""Fast unit tests of pure pieces: flags, the store trie, the wire cache, metrics."""

from __future__ import annotations

import random

import dns.message
import dns.rcode
import pytest

from skydns import config as cfg
from skydns.metrics import Metrics
from skydns.store import RecordStore
from skydns.wire import WireCache, formerr, question_end, render


# -- flags -----------------------------------------------------------------------------

def test_pod_manifest_arguments_parse_unchanged():
    c = cfg.from_args(["-machines=http://127.0.0.1:4001", "-addr=0.0.0.0:53",
                       "-ns-rotate=false", "-domain=cluster.local."], environ={})
    assert c.machines == ["http://127.0.0.1:4001"]
    assert c.listen == ("0.0.0.0", 53)
    assert c.ns_rotate is False
    assert c.domain == "cluster.local."


@pytest.mark.parametrize("argv, attr, value", [
    (["-no-rec"], "no_rec", True),
    (["-no-rec=true"], "no_rec", True),
    (["--round-robin=0"], "round_robin", False),
    (["-rtimeout", "500ms"], "rtimeout", 0.5),
    (["-rtimeout=1m30s"], "rtimeout", 90.0),
    (["-domain", "Example.ORG"], "domain", "example.org."),
    (["-nameservers=8.8.8.8,[2001:db8::1]:5353"], "nameservers",
     ["8.8.8.8:53", "[2001:db8::1]:5353"]),
])
def test_flag_spellings(argv, attr, value):
    assert getattr(cfg.from_args(argv, environ={}), attr) == value


def test_environment_then_flags():
    env = {"SKYDNS_DOMAIN": "env.local", "ETCD_MACHINES": "http://a:1,http://b:2",
           "SKYDNS_NDOTS": "3"}
    c = cfg.from_args([], environ=env)
    assert (c.domain, c.machines, c.ndots) == ("env.local.", ["http://a:1", "http://b:2"], 3)
    assert cfg.from_args(["-domain=flag.local"], environ=env).domain == "flag.local."


@pytest.mark.parametrize("argv", [["-ndots=-1"], ["-addr=nohost:99999"], ["-rtimeout=soon"],
                                  ["-no-rec=maybe"], ["-workers=0"]])
def test_bad_flags_are_refused(argv):
    with pytest.raises((cfg.ConfigError, SystemExit)):
        cfg.from_args(argv, environ={})


def test_etcd_config_overrides_and_validates():
    base = cfg.Config(nameservers=["192.0.2.53:53"])
    new = cfg.apply_etcd_config(base, b'{"domain":"x.local","ttl":5,"ndot":1,'
                                      b'"read_timeout":1500000000,"unknown":1}')
    assert (new.domain, new.ttl, new.ndots, new.rtimeout) == ("x.local.", 5, 1, 1.5)
    for bad in (b"nope", b"[]", b'{"ttl":"5"}', b'{"nameservers":"a"}', b'{"domain":"a..b"}'):
        with pytest.raises(cfg.ConfigError):
            cfg.apply_etcd_config(base, bad)


def test_live_config_is_followed_in_order_and_keeps_what_needs_a_restart(caplog):
    flags = cfg.Config(nameservers=["192.0.2.53:53"], ttl=3600)
    live = cfg.LiveConfig(flags, b'{"ttl":60,"dnssec":"/k/Kexample"}')
    assert (live.config.ttl, live.config.dnssec) == (60, "/k/Kexample")  # at start: all of it
    seen = []
    live.follow(lambda config: seen.append(("first", config.ttl)))
    live.follow(lambda config: seen.append(("second", config.ttl)))
    assert live.update(b'{"ttl":60,"dnssec":"/k/Kexample"}') is False  # the same value
    assert live.update(b'{"ttl":5,"dnssec":"/k/Kother","path_prefix":"dns"}') is True
    assert seen == [("first", 5), ("second", 5)]
    assert (live.config.dnssec, live.config.path_prefix) == ("/k/Kexample", "skydns")
    assert "changes dnssec: takes effect after a restart" in caplog.text
    assert live.update(b'{"ttl":"soon"}') is False  # logged, nothing changes
    assert live.config.ttl == 5 and len(seen) == 2
    assert "ignoring /skydns/config" in caplog.text
    assert live.update(None) is True  # deleted: the flags again (restart-only ones kept)
    assert (live.config.ttl, live.config.dnssec) == (3600, "/k/Kexample")
    assert seen[-2:] == [("first", 3600), ("second", 3600)]
    assert live.update(b'{"dnssec":"/k/Kexample"}') is False  # only a restart-only field


@pytest.mark.parametrize("text, zones", [
    ("", ()),
    ("cluster.local.=5", (("cluster.local.", "/skydns/local/cluster", 5, 5),)),
    # closest zone first whatever the order given; names lower-cased and made absolute
    ("Cluster.Local=30/10, pod.cluster.local.=5/2 ,1.10.in-addr.arpa=7",
     (("1.10.in-addr.arpa.", "/skydns/arpa/in-addr/10/1", 7, 7),
      ("pod.cluster.local.", "/skydns/local/cluster/pod", 5, 2),
      ("cluster.local.", "/skydns/local/cluster", 30, 10))),
    ("cluster.local.=0/0", (("cluster.local.", "/skydns/local/cluster", 0, 0),)),
])
def test_zone_ttl(text, zones):
    assert cfg.from_args([f"-zone-ttl={text}", "-domain=cluster.local."],
                         environ={}).zone_ttls == zones


@pytest.mark.parametrize("text", [
    "cluster.local.", "cluster.local.=", "cluster.local.=x", "cluster.local.=5/6/7",
    "cluster.local.=-1", f"cluster.local.={cfg.MAX_TTL + 1}", "=5",
    "example.com.=5",                       # not ours to answer
    "cluster.local.=5,CLUSTER.local=6",     # twice
])
def test_bad_zone_ttl_is_refused(text):
    with pytest.raises(cfg.ConfigError, match="zone-ttl"):
        cfg.Config(domain="cluster.local.", zone_ttl=text)
    with pytest.raises(cfg.ConfigError):
        cfg.apply_etcd_config(cfg.Config(domain="cluster.local."),
                              ('{"zone_ttl":"%s"}' % text).encode())


def test_hostmaster_becomes_a_name():
    assert cfg.Config().hostmaster_name.to_text() == "hostmaster.skydns.local."


# -- store -------------------------------------------------------------------------------

def loaded_store(records):
    store = RecordStore()
    store.replace_all([(k, v, 0) for k, v in records.items()], revision=1)
    return store


def test_label_boundaries_and_subtree():
    store = loaded_store({
        "/skydns/local/skydns/dom": '{"host":"10.0.0.1"}',
        "/skydns/local/skydns/dom/a": '{"host":"10.0.0.2"}',
        "/skydns/local/skydns/dom1/b": '{"host":"10.0.0.3"}',
    })
    node = store.node(("local", "skydns", "dom"))
    hosts = [r.host for _, r in store.subtree(node, ("local", "skydns", "dom"))]
    assert hosts == ["10.0.0.1", "10.0.0.2"]
    assert store.node(("local", "skydns", "do")) is None


def test_wildcard_match_and_underscore_skip():
    store = loaded_store({
        "/skydns/local/skydns/a/x": '{"host":"10.0.0.1"}',
        "/skydns/local/skydns/b/x": '{"host":"10.0.0.2"}',
        "/skydns/local/skydns/b/_tcp/_http/x": '{"host":"b.skydns.local","port":80}',
    })
    nodes = store.match(("local", "skydns", "*", "x"))
    assert sorted(store.record_at(n, labels).host for labels, n in nodes) == [
        "10.0.0.1", "10.0.0.2"]
    assert sorted(labels for labels, _ in nodes) == [
        ("local", "skydns", "a", "x"), ("local", "skydns", "b", "x")]
    b = store.node(("local", "skydns", "b"))
    assert len(store.subtree(b)) == 2
    assert len(store.subtree(b, skip_underscore=True)) == 1


def test_bad_value_is_skipped_counted_and_replaced():
    store = loaded_store({"/skydns/local/skydns/a/bad": "{not json",
                          "/skydns/local/skydns/a/good": '{"host":"10.0.0.1"}'})
    assert store.count == 1 and list(store.bad) == ["/skydns/local/skydns/a/bad"]
    store.apply_events([("put", "/skydns/local/skydns/a/bad", b'{"host":"10.0.0.2"}', 0)], 2)
    assert store.count == 2 and not store.bad


def test_delete_prunes_and_notifies():
    store = loaded_store({"/skydns/local/skydns/a/b/c": '{"host":"10.0.0.1"}'})
    changed = []
    store.change_listeners.append(changed.append)
    store.apply_events([("delete", "/skydns/local/skydns/a/b/c", None, 0)], 2)
    assert store.node(("local", "skydns", "a")) is None
    assert changed == [("local", "skydns", "a", "b", "c")]
    assert store.revision == 2


def test_config_key_is_not_a_record():
    seen = []
    store = RecordStore()
    store.config_listeners.append(seen.append)
    store.replace_all([("/skydns/config", b'{"ttl":5}', 0)], 1)
    assert store.count == 0 and seen == [b'{"ttl":5}']


# -- wire ----------------------------------------------------------------------------------

def query_wire(name, rdtype="A", **kw):
    return dns.message.make_query(name, rdtype, **kw).to_wire()


def test_question_end_and_formerr():
    wire = query_wire("a.b.")
    assert question_end(wire) == len(wire)
    assert question_end(wire[:-1]) == -1
    bad = formerr(wire[:2] + b"\x01\x00" + b"\x00" * 8)
    assert bad[:2] == wire[:2] and bad[3] & 0x0F == dns.rcode.FORMERR and bad[2] & 0x80
    assert formerr(b"\x00" * 5) is None
    assert formerr(wire[:2] + b"\x80\x00" + b"\x00" * 8) is None  # a response: no answer


def cached_reply(cache, query):
    request = dns.message.from_wire(query)
    response = dns.message.make_response(request)
    response.answer.append(dns.rrset.from_text(request.question[0].name, 30, "IN", "A",
                                               "10.0.0.1"))
    return response.to_wire()


def test_wire_cache_keeps_client_case_and_id():
    cache = WireCache()
    first = query_wire("web.ns.svc.cluster.local.")
    cache.insert(first, [cached_reply(cache, first)], [("local", "cluster", "svc", "ns", "web")],
                 [0, 0, 0])
    second = dns.message.make_query("WEB.ns.SVC.cluster.local.", "A")
    reply = dns.message.from_wire(cache.answer(second.to_wire()))
    assert reply.id == second.id
    assert reply.answer[0].name.to_text() == "WEB.ns.SVC.cluster.local."
    assert reply.answer[0][0].address == "10.0.0.1"


def test_wire_cache_invalidates_ancestors_only():
    cache = WireCache()
    for name, labels in (("web.ns.svc.cluster.local.", ("local", "cluster", "svc", "ns", "web")),
                         ("db.ns.svc.cluster.local.", ("local", "cluster", "svc", "ns", "db"))):
        q = query_wire(name)
        cache.insert(q, [cached_reply(cache, q)], [labels], [0, 0, 0])
    cache.invalidate(("local", "cluster", "svc", "ns", "web", "leaf"))
    assert cache.answer(query_wire("web.ns.svc.cluster.local.")) is None
    assert cache.answer(query_wire("db.ns.svc.cluster.local.")) is not None


def test_wire_cache_is_bounded():
    cache = WireCache(max_entries=3)
    for i in range(10):
        q = query_wire(f"n{i}.x.")
        cache.insert(q, [cached_reply(cache, q)], [("x", f"n{i}")], [0, 0, 0])
    assert len(cache) == 3


def wide_reply(query, addresses):
    request = dns.message.from_wire(query)
    response = dns.message.make_response(request)
    response.answer.append(dns.rrset.from_text_list(
        request.question[0].name, 30, "IN", "A",
        [f"10.1.{i // 250}.{i % 250 + 1}" for i in range(addresses)]))
    return response.to_wire()


def counted_bytes(cache):
    """What ``cache.bytes`` must be: each entry held once, whichever tables hold it."""
    held = {id(e): e for table in (cache.table, cache.tcp_table) for e in table.values()}
    return sum(entry.cost for entry in held.values())


def test_wire_cache_keeps_to_its_byte_budget_through_any_mix_of_operations():
    """Entries of any width, in one table or both (a UDP cut and a TCP rendering of one
    name are two entries), replaced, invalidated and evicted: the bytes counted stay
    exactly those of the entries held, and within the budget."""
    rng = random.Random(9)
    cache = WireCache(max_entries=40, max_bytes=60000)
    names = [f"n{i}.x." for i in range(120)]
    last = None
    for step in range(3000):
        name = rng.choice(names)
        op = rng.random()
        if op < 0.1:
            cache.invalidate(("x", name.split(".")[0]))
        elif op < 0.12:
            cache.clear()
        else:
            query = query_wire(name)
            replies = [wide_reply(query, rng.choice((1, 5, 40)))] * rng.randint(1, 16)
            shared = rng.random() < 0.5
            cache.insert(query, replies, [("x", name.split(".")[0])], [0, 0, 0],
                         tcp=rng.random() < 0.5, shared=shared, negative=rng.random() < 0.1)
            last = query, shared
        assert cache.bytes == counted_bytes(cache) <= cache.max_bytes, step
        assert len(cache.table) <= cache.max_entries and len(cache.tcp_table) <= 40
    assert cache.evicted > 0
    query, shared = last
    assert not shared or cache.answer(query) is not None or cache.answer(query, tcp=True)


def test_wire_cache_byte_budget_evicts_oldest_first_and_refuses_what_cannot_fit():
    cache = WireCache(max_bytes=20000)
    queries = [query_wire(f"w{i}.x.") for i in range(40)]
    for i, query in enumerate(queries):
        cache.insert(query, [wide_reply(query, 20)] * 4, [("x", f"w{i}")], [0, 0, 0])
    assert 0 < cache.bytes <= 20000 and cache.evicted > 0
    assert cache.answer(queries[-1]) is not None and cache.answer(queries[0]) is None
    huge = query_wire("huge.x.")
    cache.insert(huge, [wide_reply(huge, 300)] * 16, [("x", "huge")], [0, 0, 0])
    assert cache.answer(huge) is None and cache.answer(queries[-1]) is not None
    off = WireCache(max_bytes=0)  # -answer-cache-mb=0: nothing kept
    off.insert(queries[0], [wide_reply(queries[0], 1)], [("x", "w0")], [0, 0, 0])
    assert len(off) == 0 and off.bytes == 0


def big_response():
    request = dns.message.make_query("big.x.", "A")
    response = dns.message.make_response(request)
    response.answer.append(dns.rrset.from_text_list(
        "big.x.", 30, "IN", "A", [f"10.0.{i // 250}.{i % 250}" for i in range(100)]))
    return response


def test_render_truncates_udp_and_servfails_tcp():
    wire = render(big_response(), 512, tcp=False)
    udp = dns.message.from_wire(wire)
    assert udp.flags & dns.flags.TC and len(wire) <= 512
    assert 20 < len(udp.answer[0]) < 100  # cut to what fits, not dropped whole
    assert len(render(big_response(), 512 + 16, tcp=False)) > len(wire)
    full = dns.message.from_wire(render(big_response(), 65535, tcp=True))
    assert len(full.answer[0]) == 100 and not full.flags & dns.flags.TC
    assert render(big_response(), 512, tcp=True)[3] & 0x0F == dns.rcode.SERVFAIL


# -- metrics -------------------------------------------------------------------------------

def test_metrics_merge_fast_path_counts():
    from prometheus_client import generate_latest
    m = Metrics()
    m.observe("auth", 0.001, bytes(100))
    slot = m.slot("auth", bytes(80), bytes(30))
    slot[0] += 5
    slot[1] += 400
    m.error("nxdomain")
    text = generate_latest(m.registry()).decode()
    assert 'skydns_dns_request_count_total{system="auth"} 6.0' in text
    assert 'skydns_dns_error_count_total{cause="nxdomain"} 1.0' in text
    assert 'skydns_dns_response_size_bytes_sum{system="auth"} 500.0' in text


def test_rate_limited_log_counts_what_it_suppressed(caplog):
    import logging
    from skydns.retry import RateLimitedLog
    now = [0.0]
    limited = RateLimitedLog(logging.getLogger("t"), interval=10, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            limited.warn("forwarding %s failed", "x.")
        now[0] = 11
        limited.warn("forwarding %s failed", "y.")
    assert [r.getMessage() for r in caplog.records] == [
        "forwarding x. failed",
        "forwarding y. failed (and 4 similar failures in the last 10s)"]


# -- glibc heap arenas ---------------------------------------------------------------------

ARENA_PROBE = r"""
import ctypes, os, sys, tempfile, threading
if sys.argv[1] == "bound":
    from skydns.memory import bound_malloc_arenas
    bound_malloc_arenas()
keep, barrier = [], threading.Barrier(8)
def work():  # eight threads allocating at the same time, as gRPC's and ours do
    barrier.wait()
    keep.append([bytes(4096) for _ in range(200)])
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
fd, path = tempfile.mkstemp(); os.close(fd)
fp = libc.fopen(path.encode(), b"w"); libc.malloc_info(0, fp); libc.fclose(fp)
print(open(path).read().count("<heap nr=")); os.unlink(path)
"""


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc only")
def test_bound_malloc_arenas_keeps_threads_in_two_heaps():
    import subprocess
    import sys

    def heaps(mode):
        out = subprocess.run([sys.executable, "-c", ARENA_PROBE, mode], capture_output=True,
                             text=True, timeout=60, check=True).stdout
        return int(out)
    assert heaps("free") > 2   # what glibc does by itself: an arena per thread
    assert heaps("bound") <= 2


# -- the collector paused while a big structure is built ----------------------------------

def test_collector_pause_freezes_what_was_built_and_leaves_others_pauses_alone():
    import gc

    from skydns.memory import CollectorPause
    assert gc.isenabled()
    try:
        frozen = gc.get_freeze_count()
        pause = CollectorPause()
        pause.pause()
        assert not gc.isenabled()
        built = [{"key": i} for i in range(1000)]
        pause.resume()
        assert gc.isenabled() and gc.get_freeze_count() >= frozen + len(built)
        frozen = gc.get_freeze_count()
        pause.resume()  # idempotent
        assert gc.get_freeze_count() == frozen

        failed = CollectorPause()
        failed.pause()
        failed.resume(freeze=False)
        assert gc.isenabled() and gc.get_freeze_count() == frozen

        gc.disable()  # someone else's pause: ours must not end it
        inner = CollectorPause()
        inner.pause()
        inner.resume()
        assert not gc.isenabled() and gc.get_freeze_count() == frozen
    finally:
        gc.enable()
