"""kube2sky's EtcdWriter against a real etcd: several transactions in flight, one key never
in two of them, failed batches back at the front of the line, paged reads of big prefixes.

The queue logic (``_take``/``_finished``) is also driven by hand, without the threads, so
the order it hands out is checked exactly.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from kube2sky import etcdwriter
from kube2sky.etcdwriter import KEYS_PER_TXN, MARKER_PREFIX, EtcdWriter
from skydns import etcdsync

PREFIX = "/skydns/local/writertest/"


def writer_for(etcd, writers=etcdwriter.WRITERS):
    config = SimpleNamespace(machines=[etcd.url], ca_cert="", tls_key="", tls_pem="",
                             username="", password="")
    return EtcdWriter(config, [PREFIX], timeout=5, writers=writers)


def wait_written(writer, timeout=30):
    deadline = time.monotonic() + timeout
    while writer.pending() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert writer.pending() == 0, f"{writer.pending()} keys still pending"


@pytest.fixture
def clean(etcd):
    client = etcd.client()
    client.delete_prefix(PREFIX)
    client.delete_prefix(MARKER_PREFIX + PREFIX)
    yield client
    client.delete_prefix(PREFIX)
    client.delete_prefix(MARKER_PREFIX + PREFIX)
    client.close()


def test_many_keys_written_with_their_markers_by_several_threads(etcd, clean):
    writer = writer_for(etcd)
    writer.start()
    try:
        want = {f"{PREFIX}k{i:05d}": f'{{"host":"10.0.{i // 256}.{i % 256}"}}'
                for i in range(3000)}
        writer.submit(want)
        wait_written(writer)
        got = {kv[1].key.decode(): kv[0].decode() for kv in clean.get_prefix(PREFIX)}
        markers = {kv[1].key.decode()[len(MARKER_PREFIX):]: kv[0].decode()
                   for kv in clean.get_prefix(MARKER_PREFIX + PREFIX)}
        assert got == want and markers == want
        assert writer.written == 3000 and len(writer.threads) == etcdwriter.WRITERS
        writer.submit({key: None for key in list(want)[:1000]})
        wait_written(writer)
        assert len(list(clean.get_prefix(PREFIX))) == 2000
        assert len(list(clean.get_prefix(MARKER_PREFIX + PREFIX))) == 2000
    finally:
        writer.stop()


def test_a_key_in_flight_is_not_taken_again_until_its_transaction_ends(etcd):
    writer = writer_for(etcd)  # threads not started: the test is the writer thread
    writer.submit({"/a": "1", "/b": "1"})
    first = writer._take()
    assert first == {"/a": "1", "/b": "1"}
    writer.submit({"/a": "2", "/c": "1"})  # /a changes while its write is in flight
    second = writer._take()
    assert second == {"/c": "1"}  # not /a: two transactions could land out of order
    assert writer.pending() == 4  # /a (waiting), and /a, /b, /c in flight
    writer._finished(first, ok=True)
    assert writer._take() == {"/a": "2"}  # the newer value, after the older landed


def test_a_failed_batch_goes_back_to_the_front_unless_a_newer_value_came(etcd):
    writer = writer_for(etcd)
    writer.submit({f"/k{i}": "old" for i in range(KEYS_PER_TXN + 10)})
    batch = writer._take()
    assert len(batch) == KEYS_PER_TXN
    writer.submit({"/k0": "new"})
    writer._finished(batch, ok=False)
    retry = writer._take()
    assert list(retry) == [f"/k{i}" for i in range(1, KEYS_PER_TXN)] + ["/k64"]
    rest = writer._take()
    assert rest["/k0"] == "new"  # the failed "old" never overwrote it
    assert writer._pending == {}


def test_read_state_pages_a_big_prefix(etcd, clean, monkeypatch):
    monkeypatch.setattr(etcdsync, "PAGE", 7)
    writer = writer_for(etcd, writers=2)
    writer.start()
    try:
        want = {f"{PREFIX}p{i:03d}": f'{{"host":"10.1.0.{i}"}}' for i in range(50)}
        writer.submit(want)
        wait_written(writer)
        markers, actual = writer.read_state()
        assert markers == want and actual == want
        assert writer.reconcile(want) == 0  # in sync: nothing to write
    finally:
        writer.stop()
