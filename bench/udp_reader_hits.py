"""The UDP reader's wire-cache hits in process: nanoseconds a query through
``UDPServer.doRead`` (the hot path), with a stand-in socket holding batches of 512 queries
for 1,000 names, a quarter of them with three round-robin rotations. No network, so the
figure moves only with the code (and the machine's load, hence the reference).

    .venv/bin/python bench/udp_reader_hits.py                      # this tree
    git worktree add /tmp/base REV
    .venv/bin/python bench/udp_reader_hits.py --against /tmp/base  # and REV, alternated

Each measurement runs in its own process with PYTHONPATH at the tree measured; with
``--against`` the two trees alternate and the ratio of their medians is printed
(this tree / the other: below 1 is faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = 1000
BATCH = 512


def measure(batches: int, rounds: int) -> float:
    """Median over ``rounds`` of the mean ns/query of ``batches`` reader calls."""
    import dns.message
    import dns.rrset
    from skydns.authority import Authority
    from skydns.config import Config
    from skydns.forward import Forwarder
    from skydns.metrics import Metrics
    from skydns.resolver import Resolver
    from skydns.server import QueryHandler, UDPServer
    from skydns.store import RecordStore
    from skydns.wire import WireCache

    config = Config()
    store = RecordStore("skydns")
    authority = Authority(store, config)
    metrics = Metrics()
    resolver = Resolver(config, store, authority, Forwarder(None, config), metrics)
    cache = WireCache()
    handler = QueryHandler(resolver, cache, metrics, config)
    queries = []
    for i in range(NAMES):
        query = dns.message.make_query(f"n{i}.skydns.local.", "A")
        query.id = 0
        replies = []
        for k in range(1 if i % 4 else 3):
            reply = dns.message.make_response(query)
            reply.answer.append(dns.rrset.from_text_list(
                query.question[0].name, 30, "IN", "A", [f"10.0.{k}.{j}" for j in (1, 2, 3)]))
            replies.append(reply.to_wire())
        wire = query.to_wire()
        cache.insert(wire, replies, [("local", "skydns", f"n{i}")], [0, 0, 0])
        queries.append(wire)

    class Socket:
        items: list = []
        sent = 0

        def recvfrom(self, _size):
            if not self.items:
                raise BlockingIOError
            return self.items.pop()

        def sendto(self, _data, _addr):
            self.sent += 1

    sock = Socket()
    reader = UDPServer(None, sock, handler, cache, metrics)
    batch = [(queries[i * 7 % NAMES], ("127.0.0.1", 5353)) for i in range(BATCH)]
    results = []
    for _ in range(rounds):
        spent = 0.0
        for _ in range(batches):
            sock.items = list(batch)
            started = time.perf_counter()
            reader.doRead()
            spent += time.perf_counter() - started
        results.append(spent / (batches * BATCH) * 1e9)
    assert sock.sent == rounds * batches * BATCH, "a query was not answered from the cache"
    return statistics.median(results)


def in_process(tree: str, batches: int, rounds: int) -> float:
    env = dict(os.environ, PYTHONPATH=tree)
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child",
                          "--batches", str(batches), "--rounds", str(rounds)],
                         env=env, cwd="/", check=True, capture_output=True, text=True,
                         timeout=300)
    return float(out.stdout.strip())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", metavar="DIR", help="another tree to measure too")
    parser.add_argument("--alternations", type=int, default=3, help="measurements per tree")
    parser.add_argument("--batches", type=int, default=200, help="reader calls per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per measurement")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import skydns
        tree = os.path.dirname(os.path.dirname(os.path.abspath(skydns.__file__)))
        assert tree == os.path.abspath(os.environ["PYTHONPATH"]), f"skydns from {tree}"
        print(f"{measure(args.batches, args.rounds):.1f}")
        return
    trees = [("this tree", ROOT)] + ([("--against", args.against)] if args.against else [])
    figures = {name: [] for name, _ in trees}
    for _ in range(args.alternations):
        for name, tree in trees:
            figures[name].append(in_process(tree, args.batches, args.rounds))
    for name, values in figures.items():
        print(f"{name}: {statistics.median(values):.0f} ns a query "
              f"({', '.join(f'{v:.0f}' for v in values)})")
    if args.against:
        ratio = statistics.median(figures["this tree"]) / statistics.median(figures["--against"])
        print(f"ratio (this tree / --against): {ratio:.2f}")


if __name__ == "__main__":
    main()
