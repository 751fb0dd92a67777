"""The flags of one member of a static etcd cluster, checked against the cluster it should
form; shared by the compose and the manifest checks of the HA layout."""

from __future__ import annotations

from urllib.parse import urlsplit


def member_flag_problems(name, flags, peers, client_url) -> list:
    """``flags``: the member's etcd flags (name -> value); ``peers``: member name -> peer
    URL, what ``--initial-cluster`` must say; ``client_url``: what it must advertise."""
    problems = []
    cluster = dict(item.split("=", 1) for item in flags.get("initial-cluster", "").split(",")
                   if "=" in item)
    if cluster != peers:
        problems.append(f"{name}: --initial-cluster {cluster} is not {peers}")
    if flags.get("name") != name:
        problems.append(f"{name}: --name {flags.get('name')}")
    if flags.get("initial-advertise-peer-urls") != peers.get(name):
        problems.append(f"{name}: advertises {flags.get('initial-advertise-peer-urls')}")
    if flags.get("advertise-client-urls") != client_url:
        problems.append(f"{name}: advertises clients at {flags.get('advertise-client-urls')}")
    if flags.get("initial-cluster-state") != "new":
        problems.append(f"{name}: --initial-cluster-state {flags.get('initial-cluster-state')}")
    for flag, url in (("listen-peer-urls", peers.get(name, "")),
                      ("listen-client-urls", client_url)):
        listen = {(u.hostname, u.port) for u in map(urlsplit, flags.get(flag, "").split(","))}
        if listen != {("0.0.0.0", urlsplit(url).port)}:
            problems.append(f"{name}: --{flag} {flags.get(flag)}")
    return problems
