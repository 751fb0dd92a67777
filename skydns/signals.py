"""How skydns, kube2sky and kubeemu take signals: SIGTERM and SIGINT stop them, SIGHUP is
logged and ignored. A closed terminal or an init system's "reload" sends SIGHUP, whose
default kills the process; none of the three has anything to reload, since each follows
its configuration and data continuously.

Nothing of the program's own runs inside a signal handler. skydns hands each signal to its
reactor (``callFromThread``, as Twisted's own handlers do); the threaded programs take them
with ``sigwait`` on a thread of their own, so a handler can never enter a lock (an Event's
included) that the interrupted main thread holds."""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def hand_to_reactor(reactor, on_stop, hup_reason):
    """skydns: ``on_stop(signum)`` and the SIGHUP line run in the reactor thread."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda sig, _frame: reactor.callFromThread(on_stop, sig))
    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(
        log.info, "SIGHUP ignored: %s", hup_reason))


def stop_event_on_signals(stopped: threading.Event, hup_reason, say=log.info) -> None:
    """kube2sky, kubeemu: SIGTERM or SIGINT sets ``stopped``; SIGHUP is told with
    ``say(line)``. Call it before any thread starts, and only in a process that will
    serve: the signals are blocked here and in every thread started afterwards (they
    inherit the mask, as would any child process), and one daemon thread waits for
    them."""
    taken = {*STOP_SIGNALS, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, taken)

    def take():
        while True:
            signum = signal.sigwait(taken)
            if signum == signal.SIGHUP:
                say(f"SIGHUP ignored: {hup_reason}")
            else:
                stopped.set()
    threading.Thread(target=take, name="signals", daemon=True).start()
