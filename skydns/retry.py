"""Living with a dependency that fails (etcd, the API server, upstream DNS): a bounded,
jittered backoff between attempts, one line that says what failed, a log that says each
distinct failure once and the recovery once, and one that says a recurring failure once
per interval. Shared by skydns and kube2sky."""

from __future__ import annotations

import random
import time

import grpc


class Backoff:
    """Bounded, jittered exponential backoff."""

    def __init__(self, low=0.1, high=5.0):
        self.low, self.high = low, high
        self.current = low

    def next(self):
        delay = self.current * (0.5 + random.random() / 2)
        self.current = min(self.high, self.current * 2)
        return delay

    def reset(self):
        self.current = self.low


def describe_error(exc):
    """One line for operators: the gRPC status and details, not the multi-line repr."""
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        details = exc.details() if hasattr(exc, "details") else ""
        return f"{exc.code().name}: {details}".strip().rstrip(":")
    text = " ".join(str(exc).split())
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


class FailureLog:
    """Whether something works, and the last reason it did not, logged once per distinct
    reason: a dependency retried every second for an hour is one line, not 3,600."""

    def __init__(self, logger):
        self.logger = logger
        self.healthy = True
        self.last_error = ""

    def failed(self, reason: str, message: str, *args):
        """Note a failure; log ``message % (*args, reason)`` unless it is the failure
        logged last (and nothing worked in between)."""
        if self.healthy or reason != self.last_error:
            self.logger.warning(message, *args, reason)
        self.healthy, self.last_error = False, reason

    def recovered(self, message: str = "", *args):
        """Note a success; log ``message`` when it follows a failure."""
        if not self.healthy and message:
            self.logger.info(message, *args)
        self.healthy, self.last_error = True, ""


class RateLimitedLog:
    """One line per ``interval`` for a recurring failure, with how many were not logged:
    an upstream outage is one event for the operator, not one line per query."""

    def __init__(self, logger, interval=10.0, clock=time.monotonic):
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self.next_time = 0.0
        self.suppressed = 0

    def warn(self, msg, *args):
        now = self.clock()
        if now < self.next_time:
            self.suppressed += 1
            return
        if self.suppressed:
            msg += f" (and {self.suppressed} similar failures in the last {self.interval:g}s)"
        self.logger.warning(msg, *args)
        self.suppressed = 0
        self.next_time = now + self.interval
