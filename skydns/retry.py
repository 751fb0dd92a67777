"""Living with a dependency that fails (etcd, the API server, upstream DNS): a bounded,
jittered backoff between attempts, one line that says what failed, and a log that says
each distinct failure once and the recovery once. Shared by skydns and kube2sky."""

from __future__ import annotations

import random

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

    def recovered(self, message: str = "", *args) -> bool:
        """Note a success; log ``message`` when it follows a failure. Whether it did."""
        was_failing = not self.healthy
        if was_failing and message:
            self.logger.info(message, *args)
        self.healthy, self.last_error = True, ""
        return was_failing
