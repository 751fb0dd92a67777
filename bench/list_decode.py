#!/usr/bin/env python3
"""kube2sky's list decoding (issue 9): msgspec straight into the slim form, against
json.loads + slim(), on the same pages in the same process.

The cluster of cluster_scale.py (``--services``, ``--addresses``, ``--pods``), as the API
serves it: services with a clusterIP, EndpointSlices mirrored from the Endpoints by the
emulator's own code (``kubeemu.mirror.slices_for``), running pods, each with the metadata
the API adds (uid, resourceVersion, creationTimestamp) and, with ``--managed-fields``, a
server-side-apply managedFields entry per object as real API servers send (kubeemu does
not). Rendered in pages of 500 (kube2sky's LIST_PAGE) as JSON, then decoded ``--rounds``
times each way, alternating, with the cyclic collector off (as kube2sky lists); the best
round of each is printed, with the ratio. Both ways must give equal objects (checked on
every page), and a DesiredState fed by each the same records (checked once).

    .venv/bin/python bench/list_decode.py
    .venv/bin/python bench/list_decode.py --managed-fields
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cluster_scale import add_cluster_flags, cluster_items  # noqa: E402
from kube2sky.records import Layout  # noqa: E402
from kube2sky.reflector import LIST_PAGE  # noqa: E402
from kube2sky.slim import KindDecoder, slim, slim_pod  # noqa: E402
from kube2sky.state import DesiredState  # noqa: E402
from kubeemu.mirror import slices_for  # noqa: E402

MANAGED = {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
           "time": "2026-12-04T19:05:43Z", "fieldsType": "FieldsV1",
           "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                        "f:spec": {"f:ports": {".": {}, 'k:{"port":80,"protocol":"TCP"}': {
                            ".": {}, "f:name": {}, "f:port": {}, "f:protocol": {}}}}}}


def api_objects(a) -> dict[str, list[dict]]:
    """The cluster's services, slices and pods as the API serves them."""
    out: dict[str, list[dict]] = {"services": [], "endpointslices": [], "pods": []}
    serial = 0
    for obj in cluster_items(a):
        kind = obj["kind"]
        if kind == "Namespace":
            continue
        if kind == "Service" and obj["spec"].get("clusterIP") != "None":
            serial += 1
            ip = f"10.96.{serial // 256}.{serial % 256}"
            obj["spec"].update(clusterIP=ip, clusterIPs=[ip], sessionAffinity="None",
                               ipFamilies=["IPv4"], ipFamilyPolicy="SingleStack")
        objects = slices_for(obj) if kind == "Endpoints" else [obj]
        for item in objects:
            serial += 1
            meta = item["metadata"]
            meta.update(uid=f"00000000-0000-4000-8000-{serial:012d}",
                        resourceVersion=str(serial), creationTimestamp="2026-12-04T19:05:42Z")
            if a.managed_fields:
                meta["managedFields"] = [MANAGED]
            key = {"Service": "services", "EndpointSlice": "endpointslices",
                   "Pod": "pods"}[item["kind"]]
            out[key].append(item)
    return out


def pages(objects: list[dict]) -> list[bytes]:
    return [json.dumps({"kind": "List", "apiVersion": "v1",
                        "metadata": {"resourceVersion": "1"},
                        "items": objects[at:at + LIST_PAGE]}).encode()
            for at in range(0, len(objects), LIST_PAGE)]


def json_and_slim(kind: str):
    slimmer = slim_pod if kind == "pods" else slim

    def decode(body: bytes) -> list[dict]:
        return [slimmer(obj) for obj in json.loads(body)["items"]]
    return decode


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_cluster_flags(ap, 10000, 20000)
    ap.add_argument("--managed-fields", action="store_true",
                    help="a managedFields entry in every object, as real API servers send")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of each way (3)")
    a = ap.parse_args(argv)
    started = time.perf_counter()
    bodies = {kind: pages(objs) for kind, objs in api_objects(a).items()}
    print(f"pages built in {time.perf_counter() - started:.1f} s", flush=True)
    rows, totals = [], {"json.loads + slim": 0.0, "msgspec": 0.0}
    layout = Layout()
    for kind, kind_pages in bodies.items():
        ways = {"json.loads + slim": json_and_slim(kind), "msgspec": KindDecoder(kind).page}
        best = {name: float("inf") for name in ways}
        results = {}
        for _ in range(max(1, a.rounds)):
            for name, decode in ways.items():
                results.pop(name, None)
                gc.disable()
                t0 = time.perf_counter()
                results[name] = [decode(body) for body in kind_pages]
                best[name] = min(best[name], time.perf_counter() - t0)
                gc.enable()
        old, new = results["json.loads + slim"], [items for items, _ in results["msgspec"]]
        if old != new:
            raise SystemExit(f"{kind}: the two ways decode different objects")
        states = []
        for decoded in (old, new):
            state = DesiredState(layout)
            for items in decoded:
                state.apply_page(kind, items)
            states.append(dict(state.desired().items()))
        if states[0] != states[1]:
            raise SystemExit(f"{kind}: the two ways give different records")
        for name in totals:
            totals[name] += best[name]
        size = sum(map(len, kind_pages)) / 1e6
        rows.append(f"| {kind} | {sum(map(len, old))} objects, {len(kind_pages)} pages, "
                    f"{size:.1f} MB | {best['msgspec']:.3f} s | "
                    f"{best['json.loads + slim']:.3f} s | "
                    f"{best['msgspec'] / best['json.loads + slim']:.2f} |")
    print(f"\nmanagedFields: {'one entry an object' if a.managed_fields else 'none (as kubeemu)'}"
          f"; best of {a.rounds} rounds\n")
    print("| kind | pages | msgspec (KindDecoder.page) | json.loads + slim (same run) | ratio |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    old, new = totals["json.loads + slim"], totals["msgspec"]
    print(f"| all | | {new:.3f} s | {old:.3f} s | {new / old:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
