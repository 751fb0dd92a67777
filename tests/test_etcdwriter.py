"""kube2sky's EtcdWriter against a real etcd: several transactions in flight, one key never
in two of them, failed batches back at the front of the line, paged reads of big prefixes,
ownership by the owner field in the value.

The queue logic (``_take``/``_finished``) is also driven by hand, without the threads, so
the order it hands out is checked exactly.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from kube2sky import etcdwriter
from kube2sky.etcdwriter import KEYS_PER_TXN, MARKER_PREFIX, EtcdWriter, fingerprint
from skydns import etcdclient
from skydns.record import encode_record

PREFIX = "/skydns/local/writertest/"


def writer_for(etcd, writers=etcdwriter.WRITERS):
    config = SimpleNamespace(machines=[etcd.url], ca_cert="", tls_key="", tls_pem="",
                             username="", password="")
    return EtcdWriter(config, [PREFIX], timeout=5, writers=writers)


def wait_written(writer, timeout=30):
    """Until no key is pending or in flight: woken by the writer whenever a transaction
    ends (its ``_drained`` condition, the one ``wait_below`` waits on), not by polling.
    (``wait_below`` itself returns at once after a failed transaction; this waits on.)"""
    with writer._drained:
        done = writer._drained.wait_for(
            lambda: not writer._pending and not writer._in_flight, timeout=timeout)
    assert done, f"{writer.pending()} keys still pending"


@pytest.fixture
def clean(etcd):
    client = etcd.client()
    client.delete_prefix(PREFIX)
    client.delete_prefix(MARKER_PREFIX + PREFIX)
    yield client
    client.delete_prefix(PREFIX)
    client.delete_prefix(MARKER_PREFIX + PREFIX)
    client.close()


def ours(i, prefix="10.0"):
    return encode_record(f"{prefix}.{i // 256}.{i % 256}", owner="kube2sky")


def test_many_keys_written_by_several_threads_without_markers(etcd, clean):
    writer = writer_for(etcd)
    writer.start()
    try:
        want = {f"{PREFIX}k{i:05d}": ours(i) for i in range(3000)}
        writer.submit(want)
        wait_written(writer)
        got = {kv[1].key.decode(): kv[0].decode() for kv in clean.get_prefix(PREFIX)}
        assert got == want
        assert list(clean.get_prefix(MARKER_PREFIX)) == []
        assert writer.written == 3000 and len(writer.threads) == etcdwriter.WRITERS
        writer.submit({key: None for key in list(want)[:1000]})
        wait_written(writer)
        assert len(list(clean.get_prefix(PREFIX))) == 2000
    finally:
        writer.stop()


def test_reconcile_deletes_only_values_with_our_owner_field(etcd, clean):
    writer = writer_for(etcd, writers=1)
    mine_gone = f"{PREFIX}mine-gone"
    foreign = {f"{PREFIX}plain": encode_record("192.0.2.1"),
               f"{PREFIX}theirs": encode_record("192.0.2.2", owner="someone"),
               f"{PREFIX}not-json": "hello"}
    for key, value in {**foreign, mine_gone: ours(7)}.items():
        clean.put(key, value)
    desired = {f"{PREFIX}wanted": ours(1), f"{PREFIX}plain": ours(2)}  # one foreign retaken
    assert writer.reconcile(desired) == 3  # two writes, one delete
    writer.start()
    try:
        wait_written(writer)
        got = {kv[1].key.decode(): kv[0].decode() for kv in clean.get_prefix(PREFIX)}
        assert got == {**foreign, **desired}
    finally:
        writer.stop()


def test_a_key_in_flight_is_not_taken_again_until_its_transaction_ends(etcd):
    writer = writer_for(etcd)  # threads not started: the test is the writer thread
    writer.submit({"/a": "1", "/b": "1"})
    first = writer._take()
    assert first == {"/a": "1", "/b": "1"}
    more = {f"/m{i}": "1" for i in range(KEYS_PER_TXN)}  # a full one goes out at once
    writer.submit({"/a": "2", **more})  # /a changes while its write is in flight
    second = writer._take()
    assert second == more  # not /a: two transactions could land out of order
    assert writer.pending() == 3 + KEYS_PER_TXN  # /a (waiting), /a, /b and more in flight
    writer._finished(first, ok=True)
    writer._finished(second, ok=True)
    assert writer._take() == {"/a": "2"}  # the newer value, after the older landed


def test_less_than_a_full_transaction_waits_for_the_one_out_and_goes_with_what_gathered(etcd):
    writer = writer_for(etcd)  # threads not started: the test is the writer thread
    writer.submit({"/a": "1"})
    first = writer._take()  # nothing out: a single change goes at once
    assert first == {"/a": "1"}
    writer.submit({"/b": "1"})
    taken = []
    thread = threading.Thread(target=lambda: taken.append(writer._take()), daemon=True)
    thread.start()
    thread.join(0.3)
    assert thread.is_alive() and not taken  # /b waits while /a's transaction is out
    writer.submit({"/c": "1"})
    writer._finished(first, ok=True)
    thread.join(5)
    assert taken == [{"/b": "1", "/c": "1"}]  # one transaction for what gathered


def test_a_failed_batch_goes_back_to_the_front_unless_a_newer_value_came(etcd):
    writer = writer_for(etcd)
    writer.submit({f"/k{i}": "old" for i in range(KEYS_PER_TXN + 10)})
    batch = writer._take()
    assert len(batch) == KEYS_PER_TXN
    writer.submit({"/k0": "new"})
    writer._finished(batch, ok=False)
    retry = writer._take()
    assert list(retry) == [f"/k{i}" for i in range(1, KEYS_PER_TXN + 1)]
    writer._finished(retry, ok=True)
    rest = writer._take()
    assert rest["/k0"] == "new"  # the failed "old" never overwrote it
    assert writer._pending == {}


def test_read_state_pages_a_big_prefix(etcd, clean, monkeypatch):
    monkeypatch.setattr(etcdclient, "PAGE", 7)
    writer = writer_for(etcd, writers=2)
    writer.start()
    try:
        want = {f"{PREFIX}p{i:03d}": ours(i, "10.1") for i in range(50)}
        writer.submit(want)
        wait_written(writer)
        mine, actual, marked = writer.read_state()
        assert mine == set(want) and not marked
        assert actual == {key: fingerprint(value) for key, value in want.items()}
        assert writer.reconcile(want) == 0  # in sync: nothing to write
    finally:
        writer.stop()


def test_etcd_values_are_fingerprinted_undecoded_as_their_text_would_be(etcd, clean):
    """read_state hashes etcd's bytes (kube2sky's values are ASCII): the same fingerprint
    as the desired text, so a restart in sync writes nothing; a value that is not ASCII
    (someone else's, under a key kube2sky wants) is rewritten."""
    from kube2sky.records import fingerprint_of_bytes
    from skydns.record import encode_text
    for text in (ours(1), encode_text("1.1.0", owner="kube2sky"), "", "{}",
                 encode_record("caf\u00e9.example.", port=80, owner="kube2sky")):
        assert text.isascii() and fingerprint_of_bytes(text.encode()) == fingerprint(text)
    writer = writer_for(etcd, writers=1)
    want = {f"{PREFIX}ascii": ours(1), f"{PREFIX}accent": ours(2)}
    clean.put(f"{PREFIX}ascii", ours(1))
    clean.put(f"{PREFIX}accent", '{"host":"café.example."}')
    writer.start()
    try:
        assert writer.reconcile(want) == 1
        wait_written(writer)
        assert clean.get(f"{PREFIX}accent")[0].decode() == ours(2)
        assert writer.reconcile(want) == 0
    finally:
        writer.stop()


def test_a_change_sent_before_the_start_up_snapshot_arrives_is_applied_to_it(etcd):
    """The snapshot read may miss a write sent while it was read; a later deletion of that
    key must still be sent (it was left out as "not in etcd" before). Values sent are
    noted SENT (the desired value, no fingerprint made); a value etcd holds already, by
    the fingerprint read, is not sent."""
    from kube2sky.controller import Controller
    from kube2sky.etcdwriter import SENT
    from kube2sky.records import Layout
    from kube2sky.state import DesiredState
    writer = writer_for(etcd)  # threads not started: submissions stay pending
    controller = Controller(DesiredState(Layout()), writer, ["services"], threading.Event())
    controller._send({"/skydns/x/early": ours(1), "/skydns/x/held": ours(2)})
    read = ({"/skydns/x/held", "/skydns/x/kept"},
            {"/skydns/x/held": fingerprint(ours(2)), "/skydns/x/kept": fingerprint(ours(4))},
            set())
    controller._apply(("snapshot", read))
    writer._pending.clear()
    controller._send({"/skydns/x/early": None, "/skydns/x/kept": ours(4),
                      "/skydns/x/new": ours(3)})
    assert dict(writer._pending) == {"/skydns/x/early": None, "/skydns/x/new": ours(3)}
    ours_now, actual, _ = controller._snapshot
    assert actual == {"/skydns/x/held": SENT, "/skydns/x/kept": fingerprint(ours(4)),
                      "/skydns/x/new": SENT}
    assert ours_now == {"/skydns/x/held", "/skydns/x/kept", "/skydns/x/new"}


def test_reconcile_with_a_snapshot_in_sync_computes_no_value():
    """kube2sky keeps only fingerprints of its desired values: a reconcile compares those
    and computes again only the values it must write (a membership test that computed
    the value made a restart at 440,000 keys take minutes)."""
    from kube2sky.records import Layout
    from kube2sky.state import DesiredState
    computed = []

    class CountingState(DesiredState):
        def records_of(self, owner):
            computed.append(owner)
            return super().records_of(owner)
    state = CountingState(Layout(), use_slices=False)
    for i in range(20):
        state.set_service({"metadata": {"namespace": "ns", "name": f"s{i}"},
                           "spec": {"clusterIP": f"10.0.0.{i + 1}",
                                    "ports": [{"name": "http", "port": 80}]}})
        state.set_pod({"metadata": {"namespace": "ns", "name": f"p{i}"},
                       "status": {"podIP": f"10.244.0.{i + 1}"}})
    desired = dict(state.desired().items())
    assert len(desired) == len(state.index) == 20 * 4 + 1
    computed.clear()
    writer = EtcdWriter(SimpleNamespace(), ["/skydns/"])  # never started: nothing is sent
    in_sync = (set(desired), {key: fingerprint(value) for key, value in desired.items()},
               set())
    assert writer.reconcile(state.desired(), in_sync) == 0 and computed == []

    changed = next(key for key in desired if "/svc/ns/s7/" in key)
    ours, actual, marked = in_sync
    actual[changed] = fingerprint("an older value")
    ours.add("/skydns/local/cluster/svc/ns/gone")
    assert writer.reconcile(state.desired(), (ours, actual, marked)) == 2
    assert dict(writer._pending) == {changed: desired[changed],
                                     "/skydns/local/cluster/svc/ns/gone": None}
    assert computed == [("svc", "ns", "s7")]


def test_reconcile_leaves_values_noted_sent_and_deletes_what_is_no_longer_desired():
    """After a sync into an empty etcd the snapshot holds SENT for every key written: the
    reconcile writes none of them again, computes no value, and deletes a key sent once
    that no owner wants any more."""
    from kube2sky.etcdwriter import SENT
    from kube2sky.records import Layout
    from kube2sky.state import DesiredState
    state = DesiredState(Layout(), use_slices=False)
    for i in range(5):
        state.set_service({"metadata": {"namespace": "ns", "name": f"s{i}"},
                           "spec": {"clusterIP": f"10.0.0.{i + 1}",
                                    "ports": [{"name": "http", "port": 80}]}})
    desired = dict(state.desired().items())
    gone = "/skydns/local/cluster/svc/ns/s9/0a0a0a0a"
    writer = EtcdWriter(SimpleNamespace(), ["/skydns/"])  # never started
    snapshot = (set(desired) | {gone}, dict.fromkeys([*desired, gone], SENT), set())
    assert writer.reconcile(state.desired(), snapshot) == 1
    assert dict(writer._pending) == {gone: None}


def test_wait_below_holds_a_list_back_only_while_etcd_drains(etcd, clean):
    """The controller applies the next list page once at most PENDING_LIMIT keys wait
    for etcd; while etcd writes fail nothing drains, and the wait must end at once."""
    writer = writer_for(etcd)  # not started yet: nothing drains
    writer.submit({f"{PREFIX}k{i:05d}": ours(i) for i in range(3000)})
    assert writer.wait_below(3000, timeout=0) and not writer.wait_below(10, timeout=0.05)
    writer.start()
    try:
        assert writer.wait_below(0, timeout=30) and writer.pending() == 0
        assert len(list(clean.get_prefix(PREFIX))) == 3000
    finally:
        writer.stop()

    failing = writer_for(etcd)
    failing.submit({f"{PREFIX}x": ours(1)})
    failing.failures.healthy = False  # as after a failed transaction
    done = []
    waiter = threading.Thread(target=lambda: done.append(failing.wait_below(0, 600)))
    waiter.start()
    waiter.join(10)
    assert done == [False]


def test_a_transaction_is_the_message_the_etcd3_client_builds():
    """txn_request builds the same TxnRequest as the client's transaction(), puts, deletes
    and a fencing comparison included (the bytes etcd receives are the same)."""
    from etcd3 import etcdrpc
    from etcd3.client import MultiEndpointEtcd3Client
    from etcd3.transactions import Create, Delete, Put
    batch = {f"{PREFIX}k{i}": (None if i % 3 == 0 else ours(i)) for i in range(300)}
    batch[f"{PREFIX}caf\u00e9"] = '{"text":"caf\u00e9"}'
    compare = [Create("/kube2sky/leader/cluster.local") == 4711]
    ops = [Delete(key) if value is None else Put(key, value) for key, value in batch.items()]
    builder = MultiEndpointEtcd3Client.__new__(MultiEndpointEtcd3Client)
    expected = etcdrpc.TxnRequest(compare=[c.build_message() for c in compare],
                                  success=builder._ops_to_requests(ops), failure=[])
    assert etcdwriter.txn_request(batch, compare).SerializeToString() == \
        expected.SerializeToString()
    assert etcdwriter.txn_request({}).SerializeToString() == b""
