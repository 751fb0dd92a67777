"""Shared fixtures: a real etcd per test module, skydns processes, an upstream DNS server."""

from __future__ import annotations

import pytest

from procs import Etcd, Skydns, Upstream, wait_for


@pytest.fixture(scope="module")
def etcd():
    server = Etcd().start()
    yield server
    server.close()


@pytest.fixture
def etcd_client(etcd):
    """A client to the module's etcd; the /skydns tree is emptied before each test."""
    client = etcd.client()
    client.delete_prefix("/skydns/")
    yield client
    client.close()


@pytest.fixture
def upstream():
    server = Upstream({
        ("www.example.com.", "A"): ["192.0.2.10"],
        ("www.example.com.", "AAAA"): ["2001:db8::10"],
        ("mail.example.com.", "A"): ["192.0.2.25"],
        ("target.example.org.", "A"): ["192.0.2.77"],
    })
    yield server
    server.close()


@pytest.fixture
def start_skydns(etcd):
    """Factory: start_skydns(*flags, upstream=..., env=...) -> a running Skydns."""
    started = []

    def start(*flags, upstream=None, env=None, wait_loaded=True, etcd_url=None):
        server = Skydns(etcd_url or etcd.url, *flags, upstream=upstream, env=env)
        started.append(server)
        return server.start(wait_loaded=wait_loaded)
    yield start
    for server in started:
        server.close()


__all__ = ["wait_for"]
