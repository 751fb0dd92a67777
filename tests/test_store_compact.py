"""The store's compact form: values of the plain shape kept as etcd's bytes and read back as
the Record ``parse_record`` would have built, everything else parsed as before; and the
streaming load (a tree filled page by page off the reactor, installed in one step) against
a real etcd.

The shape check is a regex standing in for a parse, so it is tested as tables in both
directions (what it accepts parses the same; what it must refuse goes the slow path) and
against a seeded generator of values near its edges.
"""

from __future__ import annotations

import json
import logging
import random
from types import SimpleNamespace

import pytest

from skydns import etcdclient, etcdsync
from skydns.record import Record, RecordError, encode_record, parse_record, plain_record, \
    plain_value
from skydns.store import RecordStore

KEY = "/skydns/local/cluster/svc/default/web/3f2a1b"


def fields(record: Record) -> dict:
    return {slot: getattr(record, slot) for slot in Record.__slots__}


ACCEPTED = [
    encode_record("10.0.0.1", owner="kube2sky"),
    encode_record("10.244.3.17", port=8080, owner="kube2sky"),
    encode_record("web.default.svc.cluster.local", port=80),
    encode_record("web.default.svc.cluster.local.", port=443, ttl=0, targetstrip=2),
    '{"host":"10.0.0.1"}',
    '{"host": "10.0.0.1", "port": 80}',
    '{ "host": "255.255.255.255", "ttl": 999999999 }',
    '{"host":"0.0.0.0","port":0,"priority":65535,"weight":65535,"targetstrip":99}',
    '{"host":"Server1"}',
    '{"host":"_srv.Example-1.ORG.","port":53}',
    '{"host":"1.2.3.4a"}',
    '{"host":"a' + ".a" * 126 + '"}',               # 253 characters
    '{"host":"' + "x" * 63 + '.example."}',
    '{"host":"10.0.0.1","port":1,"port":2}',        # the last one wins, in both
    '{"host":"10.0.0.1","owner":""}',
]

REFUSED = [  # (value, parses anyway): the slow path decides
    ('{"host":"10.0.0.01"}', False),                 # leading zero: not an address
    ('{"host":"1.2.3"}', False),                     # digits and dots only
    ('{"host":"256.0.0.1"}', False),
    ('{"host":"fd00::1"}', True),                    # IPv6 is parsed the slow way
    ('{"host":"*.example"}', True),
    ('{"host":"' + "x" * 64 + '.example"}', False),  # label of 64
    ('{"host":"a' + ".a" * 127 + '"}', False),       # 255 characters
    ('{"host":"a..b"}', False),
    ('{"host":"a.."}', True),                      # parse_record strips every dot
    ('{"host":""}', True),
    ('{"host":"a.."}', True),                      # parse_record strips every dot
    ('{"host":"caf\\u00e9"}', False),
    ('{"host":"10.0.0.1","port":65536}', False),
    ('{"host":"10.0.0.1","port":-1}', False),
    ('{"host":"10.0.0.1","port":08}', False),
    ('{"host":"10.0.0.1","port":8.0}', False),
    ('{"host":"10.0.0.1","port":true}', False),
    ('{"host":"10.0.0.1","ttl":1000000000}', True),  # in range, but past the regex's 9 digits
    ('{"host":"10.0.0.1","targetstrip":100}', True),
    ('{"Host":"10.0.0.1"}', True),                   # other case: Go's json matches it
    ('{"port":80,"host":"10.0.0.1"}', True),         # host not first
    ('{"host":"10.0.0.1","text":"hi"}', True),
    ('{"host":"10.0.0.1","mail":true}', True),
    ('{"host":"10.0.0.1","group":"g"}', True),
    ('{"host":"10.0.0.1","extra":1}', True),
    ('{"host":"10.0.0.1","owner":"kube2sky","port":80}', True),  # owner not last
    ('{"host":"10.0.0.1"}  ', True),
    ('{"host":"10.0.0.1"}\n', True),
    ('{"host":"10.0.0.1",}', False),
    ('{"host":"10.0.0.1"', False),
    ('{"host":"10.0.0.1"}{}', False),
    ('{"text":"1.1.0"}', True),
    ('[]', False),
]


@pytest.mark.parametrize("value", ACCEPTED)
def test_a_plain_value_reads_back_as_parse_record_builds_it(value):
    data = value.encode()
    compact = plain_value(data)
    assert compact is not None and b"owner" not in compact
    assert fields(plain_record(KEY, compact)) == fields(parse_record(KEY, data))


@pytest.mark.parametrize("value,parses", REFUSED)
def test_other_values_go_the_slow_path_and_keep_its_outcome(value, parses):
    data = value.encode()
    assert plain_value(data) is None
    if parses:
        parse_record(KEY, data)
    else:
        with pytest.raises(RecordError):
            parse_record(KEY, data)


@pytest.mark.parametrize("key", [
    "/skydns/local/cluster/" + "x" * 64,                      # a label too long for a name
    "/skydns/local/cluster/" + "/".join(["abcdefgh"] * 30),  # a name past 255
])
def test_a_key_that_is_no_name_is_skipped_whatever_its_value(key):
    store = RecordStore()
    store.replace_all([(key, b'{"host":"10.0.0.1"}', 0)], 1)
    assert store.count == 0 and "not a valid DNS name" in store.bad[key]


@pytest.mark.parametrize("key,labels", [
    ("/skydns/local/cluster/a b", ("local", "cluster", "a b")),
    ("/skydns/local/Cluster/upper", ("local", "cluster", "upper")),
    ("/skydns/local/cluster/slash/", ("local", "cluster", "slash")),
    ("/skydns/local//cluster/empty", ("local", "cluster", "empty")),
    ("skydns/local/cluster/relative", ("local", "cluster", "relative")),
])
def test_a_key_of_another_form_keeps_a_parsed_record_with_that_key(key, labels):
    """Only keys that ``key_of`` rebuilds exactly are kept compact: a Record's key (and
    the depth groups compare) is the one in etcd."""
    store = RecordStore()
    store.replace_all([(key, b'{"host":"10.0.0.1"}', 0)], 1)
    value = store.node(labels).value
    assert isinstance(value, Record) and value.key == key


def _near_plain_value(rng):
    """A value of the plain shape, or one small step off it."""
    hosts = ["10.0.0.1", "010.0.0.1", "10.0.0", "10.0.0.256", "1.2.3.4.", "web", "web.",
             "Web.Default", "a-b_c.d", "a..b", "-a.b", "a.-b", "9", "9.9", "x" * 63,
             "x" * 64, ".".join(["abc"] * 63), ".".join(["abc"] * 64), "a*b", "fd00::1", ""]
    parts = ['"host":"' + rng.choice(hosts) + '"']
    for _ in range(rng.randrange(5)):
        name = rng.choice(["port", "priority", "weight", "ttl", "targetstrip", "Port",
                           "text", "owner"])
        number = rng.choice(["0", "1", "99", "100", "255", "256", "65535", "65536",
                             "999999999", "2147483647", "2147483648", "-1", "01", "1.0",
                             "true", '"5"'])
        parts.append(f'"{name}":' + (f'"{rng.choice(["kube2sky", "x y"])}"'
                                     if name == "owner" else number))
    sep = rng.choice([",", ", ", " ,", ",  "])
    colon = rng.choice([":", ": "])
    body = sep.join(p.replace(":", colon, 1) for p in parts)
    return rng.choice(["{%s}", "{ %s }", "{%s }", "{%s} ", "%s"]) % body


def test_near_plain_values_accepted_only_when_they_parse_the_same():
    rng = random.Random(20261202)
    accepted = refused = 0
    for _ in range(5000):
        data = _near_plain_value(rng).encode()
        compact = plain_value(data)
        if compact is None:
            refused += 1
            continue
        accepted += 1
        assert fields(plain_record(KEY, compact)) == fields(parse_record(KEY, data)), data
    assert accepted > 200 and refused > 2000  # the generator reaches both sides


def test_kube2sky_values_of_any_fields_read_back_the_same():
    rng = random.Random(9)
    hosts = ["10.0.0.1", "255.1.0.9", "web.default.svc.cluster.local", "x" * 63, "Web-1.", "a_b"]
    numbers = [0, 1, 9, 10, 99, 100, 255, 65535, 65536, 999999999, 1000000000]
    accepted = 0
    for _ in range(3000):
        args = dict(host=rng.choice(hosts), port=rng.choice(numbers),
                    priority=rng.choice(numbers), weight=rng.choice(numbers),
                    ttl=rng.choice(numbers), targetstrip=rng.choice(numbers),
                    owner=rng.choice([None, "kube2sky"]))
        data = encode_record(**args).encode()
        compact = plain_value(data)
        if compact is None:  # a number out of range for the shape: parse_record decides
            continue
        accepted += 1
        assert fields(plain_record(KEY, compact)) == fields(parse_record(KEY, data)), args
    assert accepted > 300


def test_a_known_value_ending_leaves_the_host_to_the_full_check():
    """Once a kube2sky value's ending is remembered, the next value with it has only its
    host checked: that check must accept exactly the hosts the whole regex accepts."""
    from skydns import record
    hosts = ["10.0.0.1", "010.0.0.1", "10.0.0", "10.0.0.256", "1.2.3.4.", "1.2.3.4a", "web",
             "web.", "a..b", "-a.b", ".a", "9", "9.9", "x" * 63, "x" * 64, "a" + ".a" * 126,
             "a" + ".a" * 126 + ".", "a" + ".a" * 127, "a*b", "fd00::1", "", "caf\u00e9",
             'a\\"b', "a b"]
    for port in (0, 80):
        record.plain_value(encode_record("10.9.9.9", port=port, owner="kube2sky").encode())
        for host in hosts:
            data = encode_record(host, port=port, owner="kube2sky").encode()
            whole = record._KUBE2SKY_VALUE.fullmatch(data)
            expected = (None if whole is None else
                        b" ".join(g or b"0" for g in whole.groups()))
            assert record.plain_value(data) == expected, host


# -- in the store ------------------------------------------------------------------------

def test_the_store_keeps_plain_bytes_and_parses_the_rest():
    store = RecordStore()
    plain = encode_record("10.0.0.1", port=80, owner="kube2sky").encode()
    store.replace_all([
        (KEY, plain, 0),
        ("/skydns/local/cluster/leased", plain, 7),                  # a lease: parsed
        ("/skydns/local/cluster/text", b'{"text":"1.1.0"}', 0),
        ("/skydns/local/cluster/bad", b'{"host":"10.0.0.01"}', 0),
    ], revision=3)
    assert store.count == 3 and list(store.bad) == ["/skydns/local/cluster/bad"]
    labels = ("local", "cluster", "svc", "default", "web", "3f2a1b")
    assert store.node(labels).value == b"10.0.0.1 80 10 10 30 0"  # kube2sky's, shortened
    assert fields(store.exact(labels)) == fields(parse_record(KEY, plain))
    leased = store.node(("local", "cluster", "leased")).value
    assert isinstance(leased, Record) and leased.lease == 7
    assert isinstance(store.node(("local", "cluster", "text")).value, Record)
    store.apply_events([("put", "/skydns/local/cluster/text", plain, 0)], 4)
    assert store.node(("local", "cluster", "text")).value == store.node(labels).value


def test_a_wildcard_read_builds_each_record_with_its_own_key():
    store = RecordStore()
    store.replace_all([(f"/skydns/local/cluster/svc/ns{i}/web/x",
                        encode_record(f"10.0.0.{i}").encode(), 0) for i in range(3)], 1)
    found = store.match(("local", "cluster", "svc", "*", "web"))
    keys = [record.key for labels, node in found for _, record in store.subtree(node, labels)]
    assert keys == [f"/skydns/local/cluster/svc/ns{i}/web/x" for i in range(3)]


def test_a_plain_value_replaced_by_a_bad_one_is_skipped_and_reported():
    store = RecordStore()
    store.replace_all([(KEY, b'{"host":"10.0.0.1"}', 0)], 1)
    store.apply_events([("put", KEY, b'{"host":"10.0.0.1","port":"80"}', 0)], 2)
    assert store.count == 0 and "port must be an integer" in store.bad[KEY]


def test_the_plain_label_bytes_are_the_characters_of_plain_label():
    import re
    from skydns.record import PLAIN_LABEL, PLAIN_LABEL_BYTES
    for byte in range(256):
        assert (bytes([byte]) in PLAIN_LABEL_BYTES) == \
            bool(re.fullmatch(PLAIN_LABEL, "/" + chr(byte))), byte


def _page(items):
    """A range reply's KeyValues, as etcd sends them (sorted by key)."""
    from etcd3 import etcdrpc
    reply = etcdrpc.RangeResponse()
    for key, value, lease in sorted(items):
        reply.kvs.add(key=key.encode(), value=value.encode(), lease=lease)
    return reply.kvs


def _contents(store):
    return sorted((labels, fields(record)) for labels, record in store.subtree(store.root)), \
        dict(store.bad), store.count


def test_a_page_loads_as_the_keys_one_by_one_do():
    """add_page's inline path (the path checked once per parent, the label by its
    characters) gives the same tree, counts and skipped keys as ``add`` of each key."""
    rng = random.Random(7)
    labels = ["a", "web", "3f2a", "_tcp", "_http", "*", "x" * 63, "x" * 64, "Up", "a b",
              "caf\u00e9", "", "host-1", "10-0-0-1"]
    values = [encode_record("10.0.0.1", owner="kube2sky"), encode_record("w.ns.svc.x.", 80),
              '{"host":"10.0.0.01"}', '{"text":"hi"}', '{"host":"fd00::1"}']
    items = {}
    for _ in range(3000):
        key = "/skydns/" + "/".join(rng.choice(labels) for _ in range(rng.randrange(1, 6)))
        items[key] = (rng.choice(values), rng.choice([0, 0, 0, 0, 9]))
    items["/skydns/config"] = ('{"ttl":7}', 0)
    items["/skydns/local/" + "/".join(["abcdefgh"] * 30)] = (values[0], 0)
    page = _page([(key, value, lease) for key, (value, lease) in items.items()])
    one_by_one = RecordStore().loader()
    for kv in page:
        one_by_one.add(kv.key.decode(), kv.value, kv.lease)
    for cut in (len(page), 1, 97):  # one page, a page a key, pages cutting through a parent
        paged = RecordStore().loader()
        for at in range(0, len(page), cut):
            paged.add_page(page[at:at + cut])
        assert _contents(paged.tree) == _contents(one_by_one.tree)
        assert paged.keys == one_by_one.keys == len(items)
        assert paged.config_value == one_by_one.config_value == b'{"ttl":7}'


def test_a_load_shares_equal_leaf_labels_and_equal_values():
    """A headless endpoint's label names its address and its SRV records: one str for all
    (and one for a hostname that recurs in other services); equal values below one node
    (a hostname-less endpoint's hashed and dashed names), one bytes object."""
    base = "/skydns/local/cluster/svc/ns"
    value = encode_record("10.0.0.1", owner="kube2sky")
    srv = encode_record("host-1.web.ns.svc.cluster.local.", 80, owner="kube2sky")
    loader = RecordStore().loader()
    loader.add_page(_page([(f"{base}/web/host-1", value, 0),
                           (f"{base}/web/3f2a9c01", value, 0),
                           (f"{base}/web/10-0-0-1", value, 0),
                           (f"{base}/web/_tcp/_http/host-1", srv, 0),
                           (f"{base}/db/host-1", value, 0)]))
    root = loader.tree.root.children["local"].children["cluster"].children["svc"].children["ns"]
    web, db = root.children["web"], root.children["db"]
    srv_parent = web.children["_tcp"].children["_http"]

    def label(node, text):
        return next(key for key in node.children if key == text)
    assert label(web, "host-1") is label(srv_parent, "host-1") is label(db, "host-1")
    assert web.children["3f2a9c01"] is web.children["10-0-0-1"]


# -- the streaming load against a real etcd ---------------------------------------------

class CallNow:
    """Stands in for the reactor: runs what is handed to it at once, on the caller."""

    @staticmethod
    def callFromThread(f, *args):
        f(*args)


def test_the_load_streams_pages_into_a_new_tree_and_installs_it(etcd, etcd_client, monkeypatch,
                                                                  caplog):
    prefix = "/streamtest/"
    etcd_client.delete_prefix(prefix)
    want = {f"{prefix}local/cluster/svc/ns/s{i:03d}/x": encode_record(f"10.1.0.{i}",
                                                                       owner="kube2sky")
            for i in range(40)}
    want[prefix + "local/cluster/bad"] = '{"host":1}'
    want[prefix + "config"] = json.dumps({"ttl": 7})
    for key, value in want.items():
        etcd_client.put(key, value)
    monkeypatch.setattr(etcdclient, "PAGE", 7)
    store = RecordStore(prefix="streamtest")
    store.replace_all([(prefix + "local/old", b'{"host":"10.9.9.9"}', 0)], 1)
    configs, resets = [], []
    store.config_listeners.append(configs.append)
    store.reset_listeners.append(lambda: resets.append(store.count))
    config = SimpleNamespace(machines=[etcd.url], ca_cert="", tls_key="", tls_pem="",
                             username="", password="", path_prefix="streamtest")
    sync = etcdsync.EtcdSync(CallNow(), store, config)
    sync._client = etcdclient.make_client(config)
    try:
        with caplog.at_level(logging.INFO, logger="skydns.etcd"):
            sync._load()
    finally:
        etcdclient.close_quietly(sync._client)
        etcd_client.delete_prefix(prefix)
    assert store.count == 40 and resets == [40]
    assert store.node(("local", "old")) is None  # the old tree is gone, not merged
    assert list(store.bad) == [prefix + "local/cluster/bad"]
    assert configs == [want[prefix + "config"].encode()]
    assert store.revision == sync.revision > 1
    record = store.exact(("local", "cluster", "svc", "ns", "s039", "x"))
    assert record.host == "10.1.0.39"
    progress = [r.message for r in caplog.records if "keys so far" in r.message]
    assert progress == [f"loading from etcd: {n} keys so far" for n in range(7, 42, 7)]
    assert "read 42 keys under /streamtest/" in caplog.text
