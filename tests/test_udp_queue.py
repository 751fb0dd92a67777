"""The UDP reader's queue of misses, in-process: hits first, misses within a budget.

A real UDP socket on 127.0.0.1 and the real QueryHandler on a loaded RecordStore; the
reactor is a stand-in that records ``callLater`` so the test decides when the next turn
comes. The time budget is set to zero, so each turn answers exactly one queued miss.
"""

from __future__ import annotations

import socket

import dns.message
import dns.rcode
import pytest

import test_encoder as te
from skydns import server as srv


class Turns:
    """A reactor stand-in: ``callLater(0, f)`` calls are kept until ``run_one``."""

    def __init__(self):
        self.calls = []

    def callLater(self, delay, func, *args):
        call = _Call(func, args)
        self.calls.append(call)
        return call

    def addReader(self, reader):
        pass

    def removeReader(self, reader):
        pass

    def run_one(self):
        call = self.calls.pop(0)
        call.active_ = False
        call.func(*call.args)


class _Call:
    def __init__(self, func, args):
        self.func, self.args, self.active_ = func, args, True

    def active(self):
        return self.active_

    def cancel(self):
        self.active_ = False


@pytest.fixture
def udp(monkeypatch):
    monkeypatch.setattr(srv, "MISS_BUDGET", 0.0)
    handler = te.handler_for("cluster")
    sock = srv.bind_udp("127.0.0.1", 0)
    turns = Turns()
    reader = srv.UDPServer(turns, sock, handler, handler.cache, handler.metrics)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(2)
    yield reader, turns, client, sock.getsockname()
    client.close()
    reader.stop()


def send(client, address, name, qid):
    query = dns.message.make_query(name, "A")
    query.id = qid
    client.sendto(query.to_wire(), address)


def replies(client, count):
    return [dns.message.from_wire(client.recv(65535)) for _ in range(count)]


def test_hits_are_answered_before_queued_misses(udp):
    reader, turns, client, address = udp
    hit = "web.default.svc.cluster.local."
    send(client, address, hit, 1)
    reader.doRead()  # the first answer fills the wire cache
    assert replies(client, 1)[0].id == 1
    for i in range(10):
        send(client, address, f"u{i}.default.svc.cluster.local.", 100 + i)
    send(client, address, hit, 2)
    reader.doRead()  # the hit at once, one miss (zero budget), the rest queued
    got = replies(client, 2)
    assert [r.id for r in got] == [2, 100]
    assert len(reader.pending) == 9 and len(turns.calls) == 1
    while turns.calls:  # one miss per reactor turn
        turns.run_one()
    got = replies(client, 9)
    assert [r.id for r in got] == list(range(101, 110))
    assert all(r.rcode() == dns.rcode.NXDOMAIN for r in got)


def test_the_queue_is_bounded_oldest_dropped_and_counted(udp, monkeypatch):
    reader, turns, client, address = udp
    monkeypatch.setattr(srv, "MAX_PENDING", 5)
    reader.pending.extend([(b"\x00" * 12, ("127.0.0.1", 9))] * 5)  # a backlog
    reader._drain_call = turns.callLater(0, reader._drain)
    send(client, address, "u1.default.svc.cluster.local.", 7)
    reader.doRead()  # queued behind the backlog, the oldest dropped
    assert len(reader.pending) == 5 and reader.metrics.errors["dropped"] == 1
    assert reader.pending[-1][0][:2] == (7).to_bytes(2, "big")


def test_the_reader_bench_runs():
    """bench/udp_reader_hits.py drives UDPServer.doRead with a stand-in socket; it must
    keep running as the reader changes (it asserts every query was answered from the
    wire cache), and its --against measures another tree (here this one again)."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, str(root / "bench" / "udp_reader_hits.py"),
                          "--against", str(root), "--alternations", "1", "--batches", "2",
                          "--rounds", "1"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ns a query" in out.stdout and "ratio (this tree / --against)" in out.stdout
