"""Command line: ``kubeemu [--host 127.0.0.1] [--port 0] [--seed FILE ...] [--history N]``.

Serves the Kubernetes API emulator until SIGTERM or SIGINT and prints, once it is
ready, ``kubeemu: serving the Kubernetes API emulator at http://HOST:PORT``.  An
emulator for tests and local runs only; see :mod:`kubeemu`.
"""

from __future__ import annotations

import argparse
import gc
import sys
import threading

from skydns.signals import stop_event_on_signals

from .errors import ApiError
from .server import Emulator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kubeemu",
        description="Serve the Kubernetes API emulator over plain HTTP, for tests and local "
                    "runs (not an API server: see `python -m pydoc kubeemu`).")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0,
                        help="port to listen on; 0 picks a free one (default 0)")
    parser.add_argument("--seed", nargs="+", default=[], metavar="FILE",
                        help="YAML or JSON manifests to create at start")
    parser.add_argument("--history", type=int, default=1000, metavar="N",
                        help="events kept for watch replay; older resourceVersions get "
                             "410 Expired (default 1000)")
    parser.add_argument("--service-cidr", default="10.96.0.0/16",
                        help="range for ClusterIP allocation (default 10.96.0.0/16)")
    parser.add_argument("--require-namespaces", action="store_true",
                        help="refuse objects in namespaces that do not exist, as a real "
                             "cluster does")
    parser.add_argument("--watch-timeout", type=float, default=1800.0, metavar="SECONDS",
                        help="end watches that give no timeoutSeconds after this long")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    if args.history < 1:
        parser.error("--history must be at least 1")

    try:
        emulator = Emulator(port=args.port, host=args.host, history=args.history,
                            seed=args.seed, service_cidr=args.service_cidr,
                            require_namespace=args.require_namespaces,
                            watch_timeout=args.watch_timeout, verbose=args.verbose)
    except (OSError, ValueError, ApiError) as exc:
        print("kubeemu: cannot start: %s" % exc, file=sys.stderr)
        return 2
    except Exception as exc:  # e.g. a YAML syntax error in a seed manifest
        print("kubeemu: cannot load the seed manifests: %s" % exc, file=sys.stderr)
        return 2
    emulator.store.add_listener(_freeze_kept_objects)
    gc.freeze()  # the seed
    stop = threading.Event()
    # Before the first thread (start's), and no earlier: whoever calls main() and gets a
    # return code for bad flags or seeds (a test) keeps its signals as they were.
    stop_event_on_signals(stop, "the emulator has nothing to reload",
                          lambda line: print("kubeemu: " + line, file=sys.stderr, flush=True))
    try:
        emulator.start()
    except OSError as exc:
        print("kubeemu: cannot listen on %s:%s: %s" % (args.host, args.port, exc),
              file=sys.stderr)
        return 1
    print("kubeemu: serving the Kubernetes API emulator at %s" % emulator.url, flush=True)
    try:
        stop.wait()
    finally:
        emulator.stop()
    print("kubeemu: stopped", flush=True)
    return 0


FREEZE_EVERY = 500  # writes


def _freeze_kept_objects(store, event) -> None:
    """Every FREEZE_EVERY writes, move what the process holds out of the cyclic collector's
    reach (``gc.freeze``, O(1)). The objects and the watch history are JSON, without
    cycles, freed by reference counting when replaced; full collections walked all of
    them again and again for nothing, each a pause of every request and watch that grew
    with the history (80 ms to 350 ms under 400 changes a second; still 20-130 ms when
    frozen every 5,000 writes), and the churn bench counted those pauses as kube2sky's
    and skydns's propagation time (p99 114-198 ms at 400/s, 22 ms without them)."""
    if event.rv % FREEZE_EVERY == 0:
        gc.freeze()


if __name__ == "__main__":
    sys.exit(main())
