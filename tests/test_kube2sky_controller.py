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


def event(kind, etype, ns, name, version):
    return ("event", kind, etype, {"metadata": {"namespace": ns, "name": name,
                                                "resourceVersion": str(version)}})


def drain(inbox):
    out = []
    while not inbox.empty():
        out.append(inbox.get(timeout=1))
    return out


def test_an_event_replaces_the_waiting_event_of_its_object_in_its_place():
    inbox = Inbox(2)
    inbox.put(event("pods", "ADDED", "a", "p", 1))
    inbox.put(event("pods", "ADDED", "a", "q", 2))
    inbox.put(event("pods", "MODIFIED", "a", "p", 3))
    inbox.put(event("pods", "DELETED", "a", "p", 4))
    inbox.put(event("services", "ADDED", "a", "p", 5))  # another kind: another object
    inbox.put(event("pods", "ADDED", "b", "p", 6))      # another namespace: another object
    assert drain(inbox) == [event("pods", "DELETED", "a", "p", 4),
                            event("pods", "ADDED", "a", "q", 2),
                            event("services", "ADDED", "a", "p", 5),
                            event("pods", "ADDED", "b", "p", 6)]
    assert inbox.coalesced == 2
    inbox.put(event("pods", "MODIFIED", "a", "p", 7))  # taken already: queued anew
    assert drain(inbox) == [event("pods", "MODIFIED", "a", "p", 7)]


def test_an_event_never_moves_before_what_was_queued_after_the_one_it_would_replace():
    inbox = Inbox(2)
    inbox.put(event("pods", "MODIFIED", "a", "p", 1))
    inbox.put(("page", "pods", [{"metadata": {"namespace": "a", "name": "p"}}]))
    inbox.put(event("pods", "MODIFIED", "a", "p", 2))  # after the page: not into slot 1
    inbox.put(event("pods", "MODIFIED", "a", "p", 3))  # replaces 2, behind the page
    inbox.put(("listed", "pods", set(), "9"))
    inbox.put(event("pods", "DELETED", "a", "p", 4))
    assert drain(inbox) == [event("pods", "MODIFIED", "a", "p", 1),
                            ("page", "pods", [{"metadata": {"namespace": "a", "name": "p"}}]),
                            event("pods", "MODIFIED", "a", "p", 3),
                            ("listed", "pods", set(), "9"),
                            event("pods", "DELETED", "a", "p", 4)]


def test_objects_without_a_name_are_never_coalesced():
    inbox = Inbox(2)
    odd = ("event", "pods", "ADDED", {"metadata": {"namespace": "a"}})
    inbox.put(odd)
    inbox.put(odd)
    assert drain(inbox) == [odd, odd]


def test_the_records_after_coalesced_events_are_those_after_every_event():
    """The claim the coalescing rests on: kube2sky's handlers set or delete an object's
    records from the object as it is, so applying only each object's newest event gives
    the same records as applying every event in order. Random streams of service, slice
    and pod events, with renames of a slice's service and deletions."""
    import random

    from kube2sky.records import Layout
    from kube2sky.state import DesiredState

    def service(name, headless, port):
        return {"metadata": {"namespace": "ns", "name": name},
                "spec": {"clusterIP": "None" if headless else f"10.96.0.{port % 200 + 1}",
                         "ports": [{"name": "http", "port": port, "protocol": "TCP"}]}}

    def slice_(name, owner, ips, port):
        return {"metadata": {"namespace": "ns", "name": name,
                             "labels": {"kubernetes.io/service-name": owner}},
                "addressType": "IPv4", "ports": [{"name": "http", "port": port}],
                "endpoints": [{"addresses": [ip], "hostname": f"h{ip.rsplit('.', 1)[1]}"
                               if int(ip.rsplit(".", 1)[1]) % 2 else None,
                               "conditions": {"ready": True}} for ip in ips]}

    def pod(name, ip):
        return {"metadata": {"namespace": "ns", "name": name},
                "status": {"phase": "Running", "podIP": ip}}

    rng = random.Random(11)
    for _ in range(40):
        stream = []
        for _ in range(rng.randrange(5, 60)):
            etype = rng.choice(["ADDED", "MODIFIED", "MODIFIED", "DELETED"])
            pick = rng.randrange(3)
            if pick == 0:
                obj = service(rng.choice("abc"), rng.random() < 0.6, rng.randrange(1, 9000))
                kind = "services"
            elif pick == 1:
                ips = [f"10.64.0.{rng.randrange(1, 40)}" for _ in range(rng.randrange(4))]
                obj = slice_(rng.choice(["s1", "s2", "s3"]), rng.choice("abc"), ips,
                             rng.randrange(1, 9000))
                kind = "endpointslices"
            else:
                obj = pod(rng.choice(["p1", "p2"]), f"10.128.0.{rng.randrange(1, 9)}")
                kind = "pods"
            stream.append(("event", kind, etype, obj))
        every, newest = DesiredState(Layout()), DesiredState(Layout())
        inbox = Inbox(2)
        for item in stream:
            every.handle(item[1], item[2], item[3])
            inbox.put(item)
        for item in drain(inbox):
            newest.handle(item[1], item[2], item[3])
        assert dict(newest.desired().items()) == dict(every.desired().items())
        assert inbox.coalesced > 0 or len(stream) < 10
