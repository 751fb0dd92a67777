"""kube2sky.controller's queue: list pages wait for room, nothing else ever does."""

from __future__ import annotations

import threading

from kube2sky.controller import Inbox


def test_a_page_waits_for_room_and_everything_else_goes_in_at_once():
    inbox = Inbox(2)
    inbox.put(("page", "pods", [1]))
    inbox.put(("page", "pods", [2]))
    third = threading.Thread(target=inbox.put, args=(("page", "pods", [3]),), daemon=True)
    third.start()
    third.join(0.3)
    assert third.is_alive()  # two pages wait: the third reflector waits too
    inbox.put(("event", "pods", "ADDED", {}))  # events, the snapshot and the election never
    inbox.put(("snapshot", None))              # wait, whatever is queued
    inbox.put(("elected",))
    assert inbox.get(timeout=1) == ("page", "pods", [1])
    third.join(5)
    assert not third.is_alive()
    got = [inbox.get(timeout=1) for _ in range(5)]
    assert got == [("page", "pods", [2]), ("event", "pods", "ADDED", {}), ("snapshot", None),
                   ("elected",), ("page", "pods", [3])]
    assert inbox.empty()
